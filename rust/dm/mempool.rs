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
pub struct Mempool<T> {
    pool: NonNull<bindings::mempool_t>,
    _p: PhantomData<T>,
}

// SAFETY: mempool_alloc/free may be called from any thread.
unsafe impl<T: Send> Send for Mempool<T> {}
// SAFETY: as above; the pool has its own lock.
unsafe impl<T: Send> Sync for Mempool<T> {}

impl<T> Mempool<T> {
    /// A pool reserving `min` objects.
    pub fn new(min: i32) -> Result<Self> {
        // SAFETY: plain constructor.
        let p = unsafe { sys::dmsr_mempool_create(min, core::mem::size_of::<T>()) };
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
                // kmalloc-aligned, which suits any `T` of ours.
                unsafe { p.as_ptr().write(value) };
                return p;
            }
        }
    }

    /// Drops and frees an object from [`Mempool::alloc`].
    ///
    /// # Safety
    ///
    /// `p` came from this pool's `alloc` and is not used afterwards.
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

/// Allocates a `T` on the I/O path without a reserve: `GFP_NOIO`, then
/// `GFP_ATOMIC`, as upstream allocates completed exceptions. May fail.
pub fn alloc_noio<T>(value: T) -> Option<NonNull<T>> {
    // SAFETY: plain allocation of `size_of::<T>()` bytes.
    let p = NonNull::new(
        unsafe { sys::dmsr_alloc_noio_atomic(core::mem::size_of::<T>()) }.cast::<T>(),
    )?;
    // SAFETY: fresh, kmalloc-aligned buffer of the right size.
    unsafe { p.as_ptr().write(value) };
    Some(p)
}

/// Frees what [`alloc_noio`] returned.
///
/// # Safety
///
/// `p` came from `alloc_noio::<T>` and is not used afterwards.
pub unsafe fn free_noio<T>(p: NonNull<T>) {
    // SAFETY: contract.
    unsafe {
        core::ptr::drop_in_place(p.as_ptr());
        bindings::kfree(p.as_ptr().cast());
    }
}
