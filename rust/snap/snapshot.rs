//! `snapshot` and `snapshot-merge`: table parsing and device checks as
//! upstream's `snapshot_ctr`. The exception stores and the COW data path
//! come in the following steps; until then the constructor validates the
//! line exactly as upstream and then refuses it at the store step with a
//! message that says so.

use crate::dm::target::{BLK_OPEN_READ, BLK_OPEN_WRITE};
use crate::dm::{Bio, CtrError, MapResult, Setup, Target, TargetOps};
use crate::logic::table::{parse_chunk_size, parse_snapshot, parse_store_kind};
use kernel::c_str;
use kernel::prelude::*;
use kernel::str::CStr;

/// Runs `snapshot_ctr`'s checks, in upstream's order, up to the store.
fn construct(setup: &mut Setup<'_>, argv: &[&[u8]], merge: bool) -> Result<(), CtrError> {
    let args = parse_snapshot(argv)?;
    let origin_mode = if merge { BLK_OPEN_WRITE } else { BLK_OPEN_READ };
    let origin = setup
        .get_device_mode(args.origin, origin_mode)
        .map_err(|e| CtrError::new(c"Cannot get origin device", e))?;
    let cow = setup
        .get_device(args.cow)
        .map_err(|e| CtrError::new(c"Cannot get COW device", e))?;
    if cow.same_bdev(&origin) {
        return Err(CtrError::new(
            c"COW device cannot be the same as origin device",
            EINVAL,
        ));
    }
    let store_err = CtrError::new(c"Couldn't create exception store", EINVAL);
    parse_store_kind(args.store).map_err(|_| store_err)?;
    parse_chunk_size(
        args.chunk_size,
        cow.logical_block_size() >> 9,
        origin.logical_block_size() >> 9,
    )
    .map_err(|_| store_err)?;
    Err(CtrError::new(
        c"Couldn't create exception store: not implemented by dm_snap_rs yet",
        EINVAL,
    ))
}

/// A `snapshot` target.
pub(crate) struct Snapshot;

#[vtable]
impl TargetOps for Snapshot {
    const NAME: &'static CStr = c_str!("snapshot");
    const VERSION: [u32; 3] = [1, 16, 0];

    fn ctr(setup: &mut Setup<'_>, argv: &[&[u8]]) -> Result<Pin<KBox<Self>>, CtrError> {
        construct(setup, argv, false)?;
        KBox::pin(Snapshot, GFP_KERNEL).map_err(|_| {
            CtrError::new(
                c"Cannot allocate snapshot context private structure",
                ENOMEM,
            )
        })
    }

    fn map(&self, _target: &Target, _bio: &mut Bio) -> MapResult {
        MapResult::Kill
    }
}

/// A `snapshot-merge` target.
pub(crate) struct SnapshotMerge;

#[vtable]
impl TargetOps for SnapshotMerge {
    const NAME: &'static CStr = c_str!("snapshot-merge");
    const VERSION: [u32; 3] = [1, 5, 0];

    fn ctr(setup: &mut Setup<'_>, argv: &[&[u8]]) -> Result<Pin<KBox<Self>>, CtrError> {
        construct(setup, argv, true)?;
        KBox::pin(SnapshotMerge, GFP_KERNEL).map_err(|_| {
            CtrError::new(
                c"Cannot allocate snapshot context private structure",
                ENOMEM,
            )
        })
    }

    fn map(&self, _target: &Target, _bio: &mut Bio) -> MapResult {
        MapResult::Kill
    }
}
