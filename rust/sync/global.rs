//! A module-wide value reachable from every target hook (upstream's file
//! statics such as `_origins`): installed at module init, taken down at
//! module exit, after the targets are unregistered.

use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::prelude::*;

/// Holds one `T` for the module's lifetime.
///
/// # Invariants
///
/// The pointer is null or a pinned `T` from [`Global::install`]'s
/// `KBox::into_raw`, valid and never moved until [`Global::uninstall`].
pub struct Global<T>(AtomicPtr<T>);

// SAFETY: hands out shared references only, to any thread: `T: Sync`; the
// value is dropped on the thread that uninstalls it: `T: Send`.
unsafe impl<T: Send + Sync> Sync for Global<T> {}

impl<T> Default for Global<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Global<T> {
    /// Empty.
    pub const fn new() -> Self {
        Self(AtomicPtr::new(ptr::null_mut()))
    }

    /// Installs `value`; `EBUSY` if one is already there.
    pub fn install(&self, value: Pin<KBox<T>>) -> Result {
        // SAFETY: the value stays pinned: it is only ever reached by
        // shared reference and dropped in place by `uninstall`.
        let p = KBox::into_raw(unsafe { Pin::into_inner_unchecked(value) });
        if self
            .0
            .compare_exchange(ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: `p` came from `into_raw` just above and was not
            // published.
            drop(unsafe { KBox::from_raw(p) });
            return Err(EBUSY);
        }
        Ok(())
    }

    /// The value, if installed.
    pub fn get(&'static self) -> Option<&'static T> {
        let p = self.0.load(Ordering::Acquire);
        // SAFETY: an installed value lives until `uninstall`, whose caller
        // promises no reference from here is used after it.
        unsafe { p.as_ref() }
    }

    /// Drops the value.
    ///
    /// # Safety
    ///
    /// No reference returned by [`Global::get`] is used after this (module
    /// exit, once nothing that could call `get` is left).
    pub unsafe fn uninstall(&self) {
        let p = self.0.swap(ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            // SAFETY: `p` came from `install`'s `into_raw`; no user is left
            // (our contract).
            drop(unsafe { KBox::from_raw(p) });
        }
    }
}
