//! A read-write semaphore owning the data it protects.
//!
//! C header: [`include/linux/rwsem.h`](srctree/include/linux/rwsem.h).
//!
//! Sleeping lock: never take it with a spinlock or bit lock held.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use kernel::bindings;
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::LockClassKey;
use kernel::types::Opaque;

/// Creates an [`RwSem`] initialiser with a lockdep class of its own for this
/// call site.
#[macro_export]
macro_rules! new_rwsem {
    ($data:expr, $name:literal) => {
        $crate::sync::RwSem::new($data, kernel::c_str!($name), kernel::static_lock_class!())
    };
}

/// `struct rw_semaphore` protecting a `T`.
#[pin_data]
pub struct RwSem<T> {
    #[pin]
    sem: Opaque<bindings::rw_semaphore>,
    data: UnsafeCell<T>,
}

// SAFETY: the semaphore hands out `&T` to many readers at once only (needs
// `Sync`) and `&mut T` to one writer, possibly on another thread (`Send`).
unsafe impl<T: Send + Sync> Sync for RwSem<T> {}
// SAFETY: moving the owner moves the `T`; the semaphore itself is pinned.
unsafe impl<T: Send> Send for RwSem<T> {}

impl<T> RwSem<T> {
    /// An initialiser for a semaphore holding `data`, in lockdep class `key`.
    pub fn new(data: T, name: &'static CStr, key: &'static LockClassKey) -> impl PinInit<Self> {
        // `LockClassKey` is a transparent wrapper over `lock_class_key`.
        let key = key as *const LockClassKey as *mut bindings::lock_class_key;
        pin_init!(Self {
            // SAFETY: `slot` is valid, pinned memory for the semaphore; `name`
            // and `key` are 'static.
            sem <- Opaque::ffi_init(|slot| unsafe {
                bindings::__init_rwsem(slot, name.as_char_ptr(), key)
            }),
            data: UnsafeCell::new(data),
        })
    }

    /// Shared access; sleeps while a writer holds it.
    pub fn read(&self) -> ReadGuard<'_, T> {
        // SAFETY: the semaphore was initialised in `new` and is pinned.
        unsafe { bindings::down_read(self.sem.get()) };
        ReadGuard { lock: self }
    }

    /// Exclusive access; sleeps while anyone else holds it.
    pub fn write(&self) -> WriteGuard<'_, T> {
        // SAFETY: as in `read`.
        unsafe { bindings::down_write(self.sem.get()) };
        WriteGuard { lock: self }
    }

    /// Exclusive access to a second semaphore of the same lockdep class held
    /// together with a first one (`down_write_nested`, single depth).
    pub fn write_nested(&self) -> WriteGuard<'_, T> {
        // SAFETY: as in `read`.
        unsafe { crate::bindings::dmsr_down_write_nested(self.sem.get()) };
        WriteGuard { lock: self }
    }
}

/// Shared access to an [`RwSem`]'s data; released on drop.
pub struct ReadGuard<'a, T> {
    lock: &'a RwSem<T>,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: readers only get `&T`, and no writer exists while we hold
        // the read side.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: we took the read side in `read`.
        unsafe { bindings::up_read(self.lock.sem.get()) };
    }
}

/// Exclusive access to an [`RwSem`]'s data; released on drop.
pub struct WriteGuard<'a, T> {
    lock: &'a RwSem<T>,
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: we hold the write side: no one else has access.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: we hold the write side: no one else has access.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: we took the write side in `write`.
        unsafe { bindings::up_write(self.lock.sem.get()) };
    }
}
