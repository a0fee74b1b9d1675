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
//!
//! A bit lock has no lockdep map, so lockdep would not see the bucket
//! locks at all; each table of [`HlistBl`] buckets therefore carries a
//! [`BitClass`]: on `CONFIG_DEBUG_LOCK_ALLOC` kernels a lockdep map in the
//! table's lock class (one class per kind of table), acquired and released
//! around the bit by the C helpers.

use crate::bindings as sys;
use crate::logic::exception_table::BucketLock;
use core::sync::atomic::AtomicUsize;
use kernel::bindings;
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::LockClassKey;
use kernel::types::Opaque;

/// The lock class of one table's bit-locked buckets, as lockdep sees them.
pub struct BitClass {
    #[cfg(CONFIG_DEBUG_LOCK_ALLOC)]
    map: KBox<Opaque<bindings::lockdep_map>>,
}

// SAFETY: the map is only handed to lockdep, which serialises its own use
// of it; it never moves while the class exists (boxed).
unsafe impl Sync for BitClass {}
// SAFETY: the map holds no thread-bound state; lockdep may be handed it
// from any thread, and it is freed (with the class) on whichever drops it.
unsafe impl Send for BitClass {}

impl BitClass {
    /// A class named `name` with the static key `key`: every table made
    /// with the same key is one class to lockdep.
    #[cfg(CONFIG_DEBUG_LOCK_ALLOC)]
    pub fn new(name: &'static CStr, key: &'static LockClassKey) -> Result<Self> {
        let map = KBox::new(Opaque::<bindings::lockdep_map>::uninit(), GFP_KERNEL)?;
        // `LockClassKey` is a transparent wrapper over `lock_class_key`.
        let key = key as *const LockClassKey as *mut bindings::lock_class_key;
        // SAFETY: `map` is fresh, boxed (it never moves) and initialised
        // here once; `name` and `key` are static, as lockdep requires.
        unsafe { sys::dmsr_bl_class_init(map.get(), name.as_char_ptr(), key) };
        Ok(Self { map })
    }

    /// Without lockdep there is nothing to set up.
    #[cfg(not(CONFIG_DEBUG_LOCK_ALLOC))]
    pub fn new(_name: &'static CStr, _key: &'static LockClassKey) -> Result<Self> {
        Ok(Self {})
    }

    fn map(&self) -> *mut bindings::lockdep_map {
        #[cfg(CONFIG_DEBUG_LOCK_ALLOC)]
        return self.map.get();
        #[cfg(not(CONFIG_DEBUG_LOCK_ALLOC))]
        return core::ptr::null_mut();
    }
}

/// `hlist_bl_lock`/`hlist_bl_unlock` on a bucket head.
pub struct HlistBl;

fn bl_head(head: &AtomicUsize) -> *mut bindings::hlist_bl_head {
    head.as_ptr().cast::<bindings::hlist_bl_head>()
}

impl BucketLock for HlistBl {
    type Head = AtomicUsize;
    type Class = BitClass;
    const LOCK_BITS: usize = 1;

    fn word(head: &AtomicUsize) -> &AtomicUsize {
        head
    }

    fn lock(class: &BitClass, head: &AtomicUsize) {
        // SAFETY: a bucket head is one pointer-sized word, the layout of
        // `struct hlist_bl_head`, and bit 0 is its lock bit; the map is
        // the table's, initialised in `BitClass::new` (or null).
        unsafe { sys::dmsr_hlist_bl_lock(bl_head(head), class.map()) };
    }

    fn unlock(class: &BitClass, head: &AtomicUsize) {
        // SAFETY: as in `lock`; we hold the bit, taken with this map.
        unsafe { sys::dmsr_hlist_bl_unlock(bl_head(head), class.map()) };
    }

    fn lock_pair(ca: &BitClass, a: &AtomicUsize, cb: &BitClass, b: &AtomicUsize) {
        // SAFETY: as in `lock`, for both heads.
        unsafe { sys::dmsr_hlist_bl_lock2(bl_head(a), ca.map(), bl_head(b), cb.map()) };
    }

    fn unlock_pair(ca: &BitClass, a: &AtomicUsize, cb: &BitClass, b: &AtomicUsize) {
        // SAFETY: as in `unlock`; we hold both bits, taken with these maps.
        unsafe { sys::dmsr_hlist_bl_unlock2(bl_head(a), ca.map(), bl_head(b), cb.map()) };
    }
}

impl HlistBl {
    /// `n` empty, unlocked buckets.
    pub fn new_heads(n: usize, _key: &'static LockClassKey) -> Result<KVVec<AtomicUsize>> {
        let mut v = KVVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            v.push(AtomicUsize::new(0), GFP_KERNEL)?;
        }
        Ok(v)
    }

    /// The lock class of a table whose buckets use `key`.
    pub fn new_class(name: &'static CStr, key: &'static LockClassKey) -> Result<BitClass> {
        BitClass::new(name, key)
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
// SAFETY: a `spinlock_t` and a word hold no thread-bound state: an
// unlocked bucket may move to, and be freed on, any thread.
unsafe impl Send for RtHead {}

/// A spinlock per bucket, for `PREEMPT_RT` kernels.
pub struct RtSpin;

impl BucketLock for RtSpin {
    type Head = RtHead;
    /// Each bucket's spinlock carries its own lockdep class.
    type Class = ();
    const LOCK_BITS: usize = 0;

    fn word(head: &RtHead) -> &AtomicUsize {
        &head.word
    }

    fn lock(_class: &(), head: &RtHead) {
        // SAFETY: initialised by `new_heads`; the heads never move after.
        unsafe { bindings::spin_lock(head.lock.get()) };
    }

    fn unlock(_class: &(), head: &RtHead) {
        // SAFETY: as in `lock`; we hold it.
        unsafe { bindings::spin_unlock(head.lock.get()) };
    }
}

impl RtSpin {
    /// Nothing per table: the spinlocks have their class (see `new_heads`).
    pub fn new_class(_name: &'static CStr, _key: &'static LockClassKey) -> Result<()> {
        Ok(())
    }

    /// `n` empty buckets with initialised spinlocks in lockdep class `key`
    /// (one class per table: a chunk's complete and pending buckets are
    /// held together).
    pub fn new_heads(n: usize, key: &'static LockClassKey) -> Result<KVVec<RtHead>> {
        let mut v = KVVec::with_capacity(n, GFP_KERNEL)?;
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
