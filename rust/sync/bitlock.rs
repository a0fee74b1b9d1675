//! The bucket locks of the exception tables (see
//! [`crate::logic::exception_table`]).
//!
//! C header: [`include/linux/list_bl.h`](srctree/include/linux/list_bl.h).
//!
//! [`HlistBl`] is the design of the 2019 fine-grained-locking series:
//! `hlist_bl_lock()`, a bit spinlock on bit 0 of the bucket head with
//! preemption disabled while held. On `CONFIG_PREEMPT_RT` a spinlock is a
//! sleeping lock and may not be taken with preemption off, which the store
//! allocator's spinlock inside a bucket lock would do; there the tables use
//! [`RtSpin`], a `spinlock_t` beside each bucket's word. [`BucketLocks`]
//! names the one this kernel uses.

use crate::bindings as sys;
use crate::logic::exception_table::BucketLock;
use core::sync::atomic::AtomicUsize;
use kernel::bindings;
use kernel::prelude::*;
use kernel::sync::LockClassKey;
use kernel::types::Opaque;

/// `hlist_bl_lock`/`hlist_bl_unlock` on a bucket head.
pub struct HlistBl;

impl BucketLock for HlistBl {
    type Head = AtomicUsize;
    const LOCK_BITS: usize = 1;

    fn word(head: &AtomicUsize) -> &AtomicUsize {
        head
    }

    fn lock(head: &AtomicUsize) {
        // SAFETY: a bucket head is one pointer-sized word, the layout of
        // `struct hlist_bl_head`, and bit 0 is its lock bit.
        unsafe { sys::dmsr_hlist_bl_lock(head.as_ptr().cast::<bindings::hlist_bl_head>()) };
    }

    fn unlock(head: &AtomicUsize) {
        // SAFETY: as in `lock`; we hold the bit.
        unsafe { sys::dmsr_hlist_bl_unlock(head.as_ptr().cast::<bindings::hlist_bl_head>()) };
    }

    fn lock_pair(a: &AtomicUsize, b: &AtomicUsize) {
        let (a, b) = (a.as_ptr(), b.as_ptr());
        // SAFETY: as in `lock`, for both heads.
        unsafe { sys::dmsr_hlist_bl_lock2(a.cast(), b.cast()) };
    }

    fn unlock_pair(a: &AtomicUsize, b: &AtomicUsize) {
        let (a, b) = (a.as_ptr(), b.as_ptr());
        // SAFETY: as in `unlock`; we hold both bits.
        unsafe { sys::dmsr_hlist_bl_unlock2(a.cast(), b.cast()) };
    }
}

impl HlistBl {
    /// `n` empty, unlocked buckets.
    pub fn new_heads(n: usize, _key: &'static LockClassKey) -> Result<KVec<AtomicUsize>> {
        let mut v = KVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            v.push(AtomicUsize::new(0), GFP_KERNEL)?;
        }
        Ok(v)
    }
}

/// A bucket with a `spinlock_t` beside its word (`PREEMPT_RT`).
#[repr(C)]
pub struct RtHead {
    word: AtomicUsize,
    lock: Opaque<bindings::spinlock_t>,
}

// SAFETY: the spinlock and the atomic word are made for concurrent use.
unsafe impl Sync for RtHead {}
// SAFETY: as above.
unsafe impl Send for RtHead {}

/// A spinlock per bucket, for `PREEMPT_RT` kernels.
pub struct RtSpin;

impl BucketLock for RtSpin {
    type Head = RtHead;
    const LOCK_BITS: usize = 0;

    fn word(head: &RtHead) -> &AtomicUsize {
        &head.word
    }

    fn lock(head: &RtHead) {
        // SAFETY: initialised by `new_heads`; the heads never move after.
        unsafe { bindings::spin_lock(head.lock.get()) };
    }

    fn unlock(head: &RtHead) {
        // SAFETY: as in `lock`; we hold it.
        unsafe { bindings::spin_unlock(head.lock.get()) };
    }
}

impl RtSpin {
    /// `n` empty buckets with initialised spinlocks in lockdep class `key`
    /// (one class per table: a chunk's complete and pending buckets are
    /// held together).
    pub fn new_heads(n: usize, key: &'static LockClassKey) -> Result<KVec<RtHead>> {
        let mut v = KVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            v.push(
                RtHead {
                    word: AtomicUsize::new(0),
                    lock: Opaque::uninit(),
                },
                GFP_KERNEL,
            )?;
        }
        // `LockClassKey` is a transparent wrapper over `lock_class_key`.
        let key = key as *const LockClassKey as *mut bindings::lock_class_key;
        for h in v.iter() {
            // SAFETY: the capacity was reserved up front, so the heads stay
            // where they are from now on; each lock is initialised once.
            unsafe {
                bindings::__spin_lock_init(
                    h.lock.get(),
                    kernel::c_str!("dm_snap_rs:bucket").as_char_ptr(),
                    key,
                )
            };
        }
        Ok(v)
    }
}

/// The bucket lock of this kernel's exception tables. `make
/// DMSR_RT_BUCKETS=y` selects the `PREEMPT_RT` variant on any kernel, to
/// test it.
#[cfg(not(any(CONFIG_PREEMPT_RT, dmsr_rt_buckets)))]
pub type BucketLocks = HlistBl;
/// The bucket lock of this kernel's exception tables.
#[cfg(any(CONFIG_PREEMPT_RT, dmsr_rt_buckets))]
pub type BucketLocks = RtSpin;
