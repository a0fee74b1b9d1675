//! Locks the kernel crate of 6.12 does not wrap: the read-write semaphore
//! ([`rwsem`]) that guards mostly-read snapshot state, and the `hlist_bl`
//! bit lock ([`bitlock`]) of each exception-table bucket.
//!
//! As with `kernel::sync::Mutex`, protected values are reachable only
//! through a guard, so "touched it without the lock" does not compile.

pub mod bitlock;
pub mod rwsem;

pub use bitlock::{BucketLocks, HlistBl, RtSpin};
pub use rwsem::RwSem;
