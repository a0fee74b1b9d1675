//! Locks the kernel crate of 6.12 does not wrap: the read-write semaphore
//! ([`rwsem`]) that guards mostly-read snapshot state.
//!
//! As with `kernel::sync::Mutex`, the protected value is reachable only
//! through a guard, so "touched it without the lock" does not compile.

pub mod rwsem;

pub use rwsem::RwSem;
