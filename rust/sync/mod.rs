//! What the kernel crate of 6.12 does not wrap and the targets need, as
//! safe types: the read-write semaphore ([`rwsem`]) that guards mostly-read
//! snapshot state, the `hlist_bl` bit lock ([`bitlock`]) of each
//! exception-table bucket, the exception tables that own their entries
//! ([`complete`], [`tables`]), a module-wide value ([`global`]) and `KVec` helpers
//! ([`kvec`]).
//!
//! As with `kernel::sync::Mutex`, protected values are reachable only
//! through a guard, so "touched it without the lock" does not compile.

pub mod bitlock;
pub mod complete;
pub mod global;
pub mod kvec;
pub mod rwsem;
pub mod tables;

pub use bitlock::{BucketLocks, HlistBl, RtSpin};
pub use global::Global;
pub use kvec::KVecExt;
pub use rwsem::RwSem;
