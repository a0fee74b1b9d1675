//! The kernel's bucket lock for the exception tables: `hlist_bl_lock()`,
//! a bit spinlock on bit 0 of the bucket head with preemption disabled
//! while held (see [`crate::logic::exception_table`]).
//!
//! C header: [`include/linux/list_bl.h`](srctree/include/linux/list_bl.h).

use crate::bindings as sys;
use crate::logic::exception_table::BucketLock;
use core::sync::atomic::AtomicUsize;
use kernel::bindings;

/// `hlist_bl_lock`/`hlist_bl_unlock` on a bucket head.
pub struct HlistBl;

impl BucketLock for HlistBl {
    fn lock(head: &AtomicUsize) {
        // SAFETY: a bucket head is one pointer-sized word, the layout of
        // `struct hlist_bl_head`, and bit 0 is its lock bit.
        unsafe { sys::dmsr_hlist_bl_lock(head.as_ptr().cast::<bindings::hlist_bl_head>()) };
    }

    fn unlock(head: &AtomicUsize) {
        // SAFETY: as in `lock`; we hold the bit.
        unsafe { sys::dmsr_hlist_bl_unlock(head.as_ptr().cast::<bindings::hlist_bl_head>()) };
    }
}
