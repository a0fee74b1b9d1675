// SPDX-License-Identifier: GPL-2.0

//! dm_snap_rs: the device-mapper snapshot targets in Rust.
//!
//! Registers `snapshot`, `snapshot-origin` and `snapshot-merge`, a drop-in
//! for upstream's `drivers/md/dm-snap*.c`: same table lines, status strings,
//! `ti->error` texts and target versions. Like the C module, it cannot be
//! loaded while `dm-snapshot.ko` is (dm refuses a second registration of the
//! same target name).
//!
//! Layout: [`dm`] and [`sync`] hold the FFI (device-mapper, the block
//! layer, kcopyd, locks) and its `unsafe`; [`logic`] is code free of kernel
//! types, shared with userspace tests, whose exception tables and index
//! manage their own memory and lock words with `unsafe` of their own;
//! `snap` holds the targets, written against [`dm`]'s and [`sync`]'s safe
//! types with no `unsafe` at all (`scripts/layer-check`). See
//! `Documentation/design.rst`.

// `pin_init!` over `Snap`'s fields expands past the default limit.
#![recursion_limit = "256"]

use kernel::prelude::*;

mod bindings;
pub mod dm;
pub mod logic;
mod snap;
pub mod sync;

module! {
    type: DmSnapModule,
    name: "dm_snap_rs",
    author: "dm-snap-rs developers",
    description: "device-mapper snapshot, snapshot-origin and snapshot-merge targets (Rust)",
    license: "GPL",
    // What device-mapper's request_module("dm-<target>") and lvm2's
    // "modprobe dm-snapshot" ask for (dist/dm-snap-rs.conf makes them
    // resolve here rather than to the C module).
    alias: ["dm-snapshot", "dm-snapshot-origin", "dm-snapshot-merge"],
}

/// The module: holds the three target registrations; dropping it
/// unregisters them, which dm only allows once no table uses them (the
/// module reference each table holds makes `rmmod` fail before that).
struct DmSnapModule {
    // Fields drop in order: the targets go before the registry they use.
    _snapshot: dm::Registration<snap::snapshot::Snapshot>,
    _origin: dm::Registration<snap::origin::Origin>,
    _merge: dm::Registration<snap::merge_target::SnapshotMerge>,
    _registry: RegistryHolder,
}

/// Drops the origin registry when the module goes, after the targets.
struct RegistryHolder;

impl Drop for RegistryHolder {
    fn drop(&mut self) {
        // SAFETY: the target registrations, declared before this field in
        // `DmSnapModule`, are already dropped: dm unregisters a target type
        // only once no table uses it, so no target (and no kcopyd job of
        // one, closed in its teardown) can reach the registry any more.
        unsafe { snap::registry::REGISTRY.uninstall() };
    }
}

impl kernel::Module for DmSnapModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        snap::registry::Registry::install()?;
        let registry = RegistryHolder;
        // Same registration order as dm_snapshot_init().
        let snapshot = dm::Registration::new(module)?;
        let origin = dm::Registration::new(module)?;
        let merge = dm::Registration::new(module)?;
        Ok(Self {
            _snapshot: snapshot,
            _origin: origin,
            _merge: merge,
            _registry: registry,
        })
    }
}

/// Called by the `bucket_lockdep_selftest` module parameter (test only,
/// lockdep kernels; see `rust/bucket_locks.c`): 0 or a negative errno.
#[no_mangle]
extern "C" fn dmsr_bucket_lockdep_inversion() -> kernel::ffi::c_int {
    match sync::tables::lockdep_inversion_selftest() {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}
