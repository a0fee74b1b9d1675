//! Safe abstractions over device-mapper and the block layer.
//!
//! C header: [`include/linux/device-mapper.h`](srctree/include/linux/device-mapper.h).
//!
//! This module owns every call into the C device-mapper API used by the
//! targets: the target trait and its registration ([`target`]), the table
//! devices a target opens ([`device`]), the bios it maps ([`bio`]) and the
//! status buffer it fills ([`status`]). The targets above it are safe code.

pub mod bio;
pub mod device;
pub mod dmio;
pub mod kcopyd;
pub mod log;
pub mod mempool;
pub mod status;
pub mod target;

pub use bio::Bio;
pub use bio::{BioList, Mapped, OwnedBio};
pub use device::{Bdev, BdevKey, DevName, TableDev};
pub use status::{StatusBuf, StatusType};
pub use target::{
    CtrError, DeviceVisitor, QueueLimits, Registration, Setup, Target, TargetOps, TargetRef,
};

/// Sleeps about `usecs` microseconds (`fsleep`). Never call it with a
/// spinlock or bucket lock held.
pub fn fsleep_us(usecs: u64) {
    // SAFETY: a plain sleep; the callers are in process context with no
    // spinlock held (the atomic-sleep checks of the test kernel prove it).
    unsafe { crate::bindings::dmsr_fsleep(usecs as _) };
}

/// Sleeps in steps of `step_us` microseconds until `done()` holds:
/// upstream's `msleep(1)` loops, for waits on in-flight work that signals
/// no one (the end of a merge, a table's last pending exception, a tracked
/// read, a kcopyd submission). Never call it with a spinlock or bucket
/// lock held.
pub fn poll_until(step_us: u64, mut done: impl FnMut() -> bool) {
    while !done() {
        fsleep_us(step_us);
    }
}

/// Lets the scheduler run others if it wants to (`cond_resched`): for
/// long loops in process context with no lock held. Sleeps.
pub fn cond_resched() {
    // SAFETY: process context, no spinlock held (callers).
    unsafe { crate::bindings::dmsr_cond_resched() };
}

/// The `snapshot_cow_threshold` module parameter, read once (`READ_ONCE`).
pub fn cow_threshold() -> u32 {
    // SAFETY: the parameter's variable lives as long as the module; sysfs
    // may store to it at any time, so it is read once, volatile, as C's
    // `READ_ONCE` (an aligned `u32`, never torn).
    unsafe { core::ptr::read_volatile(&raw const crate::bindings::dmsr_cow_threshold) }
}

/// The `snapshot_exception_index` module parameter, read once: whether new
/// snapshots keep their completed exceptions in the compact index.
pub fn exception_index() -> bool {
    // SAFETY: as in `cow_threshold`: a module-lifetime `bool` that sysfs
    // stores 0 or 1 to, read once, volatile (one byte, never torn).
    unsafe { core::ptr::read_volatile(&raw const crate::bindings::dmsr_exception_index) }
}

/// The `test_copy_done_delay_ms` module parameter (testing only): how long
/// a copy completion waits, still holding its snapshot, after completing
/// the snapshot's exception. 0 in production.
pub fn test_copy_done_delay_ms() -> u32 {
    // SAFETY: as in `cow_threshold`.
    unsafe { core::ptr::read_volatile(&raw const crate::bindings::dmsr_test_copy_done_delay_ms) }
}

/// The `snapshot_shared_copy` module parameter: whether an origin write
/// copies a chunk for several snapshots with one origin read.
pub fn shared_copies() -> bool {
    // SAFETY: as in `exception_index`.
    unsafe { core::ptr::read_volatile(&raw const crate::bindings::dmsr_shared_copy) }
}
