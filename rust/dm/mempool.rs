//! Mempools: allocations on the I/O path that wait for memory instead of
//! failing, so a snapshot under memory pressure still makes progress.
//!
//! C header: [`include/linux/mempool.h`](srctree/include/linux/mempool.h).

use crate::bindings as sys;
use core::marker::PhantomData;
use core::ptr::NonNull;
use kernel::bindings;
use kernel::prelude::*;

/// A pool of `T`-sized kmalloc buffers with `min` reserved.
///
/// # Invariants
///
/// `pool` is a live mempool of `size_of::<T>()`-byte kmalloc buffers,
/// owned by this value and destroyed only by its drop.
pub struct Mempool<T> {
    pool: NonNull<bindings::mempool_t>,
    _p: PhantomData<T>,
}

// SAFETY: mempool_alloc/free may be called from any thread.
unsafe impl<T: Send> Send for Mempool<T> {}
// SAFETY: as above; the pool has its own lock.
unsafe impl<T: Send> Sync for Mempool<T> {}

impl<T> Mempool<T> {
    /// The alignment a kmalloc buffer is guaranteed whatever its size
    /// (`ARCH_KMALLOC_MINALIGN`, that of `unsigned long long` on the
    /// architectures this module builds for).
    const KMALLOC_MINALIGN: usize = 8;

    /// A pool reserving `min` objects. A `T` that needs more alignment than
    /// kmalloc guarantees does not build (the writes below rely on it).
    pub fn new(min: i32) -> Result<Self> {
        const { assert!(core::mem::align_of::<T>() <= Self::KMALLOC_MINALIGN) };
        // SAFETY: plain constructor.
        let p = unsafe { sys::dmsr_mempool_create(min, core::mem::size_of::<T>()) };
        // INVARIANT: a pool just created for `T`-sized buffers.
        NonNull::new(p)
            .map(|pool| Self {
                pool,
                _p: PhantomData,
            })
            .ok_or(ENOMEM)
    }

    /// Allocates and moves `value` in, with `GFP_NOIO`: may sleep, never
    /// fails. Call with no spinlock held.
    pub fn alloc(&self, value: T) -> NonNull<T> {
        loop {
            // SAFETY: the pool is live; GFP_NOIO mempool allocations wait.
            let p = unsafe { sys::dmsr_mempool_alloc_noio(self.pool.as_ptr()) }.cast::<T>();
            if let Some(p) = NonNull::new(p) {
                // SAFETY: `p` is a fresh buffer of `size_of::<T>()` bytes,
                // kmalloc-aligned, which suits `T` (asserted in `new`).
                unsafe { p.as_ptr().write(value) };
                return p;
            }
        }
    }

    /// Allocates a zeroed `T` with `GFP_NOIO`: may sleep, never fails. Call
    /// with no spinlock held. For values too big to build on the stack.
    ///
    /// # Safety
    ///
    /// All-zero bytes must be a valid `T`.
    pub unsafe fn alloc_zeroed(&self) -> NonNull<T> {
        loop {
            // SAFETY: the pool is live; GFP_NOIO mempool allocations wait.
            let p = unsafe { sys::dmsr_mempool_alloc_noio(self.pool.as_ptr()) }.cast::<T>();
            if let Some(p) = NonNull::new(p) {
                // SAFETY: `p` is a fresh buffer of `size_of::<T>()` bytes;
                // zeroes are a valid `T` (caller).
                unsafe { core::ptr::write_bytes(p.as_ptr(), 0, 1) };
                return p;
            }
        }
    }

    /// Allocates a zeroed `T` that may fail instead of waiting: `kzalloc`
    /// with `GFP_KERNEL | __GFP_NORETRY`, past the pool (whose reserve is
    /// for the I/O path and comes back only at teardown). For a
    /// constructor, which reports `ENOMEM` rather than wait in D state for
    /// memory that will not come. Freed with [`Mempool::free`] like the
    /// pool's own objects (they are kmalloc buffers too).
    ///
    /// # Safety
    ///
    /// All-zero bytes must be a valid `T`.
    pub unsafe fn alloc_zeroed_or_fail(&self) -> Option<NonNull<T>> {
        // SAFETY: a plain allocation; the size is `T`'s, as the pool's.
        let p = unsafe { sys::dmsr_kzalloc_noretry(core::mem::size_of::<T>()) }.cast::<T>();
        // Zeroed by the allocator: a valid `T` (caller).
        NonNull::new(p)
    }

    /// Allocates and moves `value` in without sleeping (`GFP_NOWAIT`: the
    /// allocator if it has memory at hand, else the pool's reserve), so it
    /// may be called under a spinlock; `None` (and `value` dropped) when
    /// both are empty, for the caller to fall back to [`Mempool::alloc`]
    /// with its locks dropped.
    pub fn try_alloc(&self, value: T) -> Option<NonNull<T>> {
        // SAFETY: the pool is live; a GFP_NOWAIT allocation never sleeps.
        let p = unsafe { sys::dmsr_mempool_alloc_nowait(self.pool.as_ptr()) }.cast::<T>();
        let p = NonNull::new(p)?;
        // SAFETY: as in `alloc`.
        unsafe { p.as_ptr().write(value) };
        Some(p)
    }

    /// Drops and frees an object from [`Mempool::alloc`] or
    /// [`Mempool::try_alloc`].
    ///
    /// # Safety
    ///
    /// `p` came from this pool's `alloc` or `try_alloc` and is not used
    /// afterwards.
    pub unsafe fn free(&self, p: NonNull<T>) {
        // SAFETY: `p` is a live `T` from this pool (contract).
        unsafe {
            core::ptr::drop_in_place(p.as_ptr());
            bindings::mempool_free(p.as_ptr().cast(), self.pool.as_ptr());
        }
    }
}

impl<T> Drop for Mempool<T> {
    fn drop(&mut self) {
        // SAFETY: every object went back to the pool (owners free theirs
        // before the pool's owner drops it).
        unsafe { bindings::mempool_destroy(self.pool.as_ptr()) };
    }
}

/// A slab cache of `T`s for the I/O path, sized exactly (upstream's
/// `exception_cache`): no kmalloc size-class rounding.
///
/// # Invariants
///
/// `cache` is a live kmem cache of objects of `T`'s size and alignment,
/// owned by this value and destroyed only by its drop.
pub struct Slab<T> {
    cache: NonNull<bindings::kmem_cache>,
    _p: PhantomData<T>,
}

// SAFETY: slab caches are used from any context.
unsafe impl<T: Send> Send for Slab<T> {}
// SAFETY: as above; the cache has its own locking.
unsafe impl<T: Send> Sync for Slab<T> {}

impl<T> Slab<T> {
    /// A cache named `name` (shown in /proc/slabinfo), of objects aligned
    /// as `T` needs.
    pub fn new(name: &'static kernel::str::CStr) -> Result<Self> {
        let (size, align) = (core::mem::size_of::<T>(), core::mem::align_of::<T>());
        // SAFETY: `name` is 'static and NUL-terminated.
        let c = unsafe { sys::dmsr_kmem_cache_create(name.as_char_ptr(), size, align) };
        // INVARIANT: a cache just created with `T`'s size and alignment.
        NonNull::new(c)
            .map(|cache| Self {
                cache,
                _p: PhantomData,
            })
            .ok_or(ENOMEM)
    }

    /// Allocates and moves `value` in: `GFP_NOIO`, then `GFP_ATOMIC`, as
    /// upstream allocates completed exceptions. May fail; may sleep.
    pub fn alloc(&self, value: T) -> Option<NonNull<T>> {
        // SAFETY: the cache is live.
        let p = NonNull::new(
            unsafe { sys::dmsr_kmem_cache_alloc_noio(self.cache.as_ptr()) }.cast::<T>(),
        )?;
        // SAFETY: a fresh object of `size_of::<T>()` bytes, aligned for
        // `T` (the cache was made with its alignment).
        unsafe { p.as_ptr().write(value) };
        Some(p)
    }

    /// Drops and frees an object of this cache; does not sleep.
    ///
    /// # Safety
    ///
    /// `p` came from this cache's `alloc` and is not used afterwards.
    pub unsafe fn free(&self, p: NonNull<T>) {
        // SAFETY: `p` is a live `T` of this cache that nobody uses any
        // more (the caller's promise), so it may be dropped and freed.
        unsafe {
            core::ptr::drop_in_place(p.as_ptr());
            bindings::kmem_cache_free(self.cache.as_ptr(), p.as_ptr().cast());
        }
    }
}

impl<T> Drop for Slab<T> {
    fn drop(&mut self) {
        // SAFETY: every object went back (the module drops the cache after
        // its targets, which free theirs).
        unsafe { bindings::kmem_cache_destroy(self.cache.as_ptr()) };
    }
}
