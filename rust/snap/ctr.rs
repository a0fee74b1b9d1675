//! Constructor steps of the `snapshot` and `snapshot-merge` targets
//! (upstream's `snapshot_ctr` up to the snapshot's own state): opening the
//! devices, the exception store and its header, and the `ti->error` texts
//! of each failure, in upstream's order.

use super::cow::SnapInitError;
use super::persistent::{LoadError, Loaded, PersistentIo};
use super::registry::HandoverError;
use super::store::Store;
use crate::dm::target::{BLK_OPEN_READ, BLK_OPEN_WRITE};
use crate::dm::{CtrError, Setup, TableDev};
use crate::logic::chunk::ChunkGeometry;
use crate::logic::persistent::Allocator;
use crate::logic::table::{parse_chunk_size, parse_store_kind, SnapshotArgs, StoreKind};
use crate::logic::transient::TransientStore;
use kernel::prelude::*;

/// Opens the devices and checks the store arguments in `snapshot_ctr`'s
/// order; returns what the store needs.
///
/// The COW is opened first, with the table's mode, then the origin with a
/// narrower one. Upstream opens the origin first: when both name the same
/// device, the COW's wider mode makes dm core replace the table device the
/// origin got (`upgrade_mode` puts the old `dm_dev`), and the check that
/// they differ reads freed memory (KASAN: slab-use-after-free in
/// `snapshot_ctr`). Opened the other way round, the second open finds the
/// device's mode wide enough and both get the same live `dm_dev`. The
/// errors keep upstream's precedence: a bad origin is reported first.
pub(super) fn open_devices(
    setup: &mut Setup<'_>,
    args: &SnapshotArgs<'_>,
    merge: bool,
) -> Result<(TableDev, TableDev, StoreKind, u32), CtrError> {
    let origin_mode = if merge { BLK_OPEN_WRITE } else { BLK_OPEN_READ };
    let cow = setup.get_device(args.cow);
    let origin = setup
        .get_device_mode(args.origin, origin_mode)
        .map_err(|e| CtrError::new(c"Cannot get origin device", e))?;
    let cow = cow.map_err(|e| CtrError::new(c"Cannot get COW device", e))?;
    if cow.same_bdev(&origin) {
        return Err(CtrError::new(
            c"COW device cannot be the same as origin device",
            EINVAL,
        ));
    }
    let store_err = CtrError::new(c"Couldn't create exception store", EINVAL);
    let kind = parse_store_kind(args.store).map_err(|_| store_err)?;
    let chunk = parse_chunk_size(
        args.chunk_size,
        cow.logical_block_size() >> 9,
        origin.logical_block_size() >> 9,
    )
    .map_err(|_| store_err)?;
    Ok((origin, cow, kind, chunk))
}

/// A store, its chunk geometry and what its header said (persistent).
pub(super) type OpenedStore = (Store, ChunkGeometry, Option<Loaded>);

/// Opens the store named by the table: a transient store, or a persistent
/// one with its header read (`dm_exception_store_create` and the store's
/// `ctr`, reading only the header). Returns the store, its I/O and what the
/// header said, for [`Snapshot::ctr`] to finish after registration.
pub(super) fn open_store(
    kind: StoreKind,
    chunk: u32,
    origin: &TableDev,
    cow: &TableDev,
) -> Result<OpenedStore, CtrError> {
    let StoreKind::Persistent { .. } = kind else {
        // Chunk 0 is refused ("Chunk size not set") only after
        // registration, as upstream: a handover destination takes its chunk
        // size from the source at resume, so `N 0` is fine there. Until
        // then the tables are sized as for one-sector chunks, as upstream
        // sizes them for 0.
        let g =
            ChunkGeometry::new(chunk.max(1)).ok_or(CtrError::new(c"Chunk size not set", EINVAL))?;
        return Ok((Store::Transient(TransientStore::new()), g, None));
    };
    let (cow_lbs, origin_lbs) = (
        cow.logical_block_size() >> 9,
        origin.logical_block_size() >> 9,
    );
    let valid_chunk = |c: u32| {
        c.is_power_of_two()
            && c % cow_lbs.max(1) == 0
            && c % origin_lbs.max(1) == 0
            && c <= crate::logic::table::MAX_CHUNK_SECTORS
    };
    let (pio, l) = PersistentIo::open(cow, chunk, valid_chunk).map_err(|e| {
        let err = match e {
            LoadError::Io(e) => e,
            LoadError::Corrupt => ENXIO,
            LoadError::Version | LoadError::ChunkSize => EINVAL,
        };
        CtrError::new(c"Failed to read snapshot metadata", err)
    })?;
    let g = ChunkGeometry::new(l.chunk)
        .ok_or(CtrError::new(c"Failed to read snapshot metadata", EINVAL))?;
    let store = Store::Persistent {
        alloc: Allocator::new(),
        io: pio,
    };
    Ok((store, g, Some(l)))
}

/// `ti->error` of a failed [`Snap::new`].
pub(super) fn snap_init_error(e: SnapInitError) -> CtrError {
    match e {
        SnapInitError::HashTables => CtrError::new(c"Unable to allocate hash table space", ENOMEM),
        SnapInitError::Kcopyd(e) => CtrError::new(c"Could not create kcopyd client", e),
        SnapInitError::Mempool => {
            CtrError::new(c"Could not allocate mempool for pending exceptions", ENOMEM)
        }
    }
}

/// `ti->error` of a failed registration.
pub(super) fn register_error(e: HandoverError) -> CtrError {
    match e {
        HandoverError::NoMem => CtrError::new(c"Snapshot origin struct allocation failed", ENOMEM),
        HandoverError::Pairing => CtrError::new(
            c"Snapshot cow pairing for exception table handover failed",
            EINVAL,
        ),
        HandoverError::AlreadyMerging => CtrError::new(c"A snapshot is already merging.", EINVAL),
        HandoverError::CannotMerge => CtrError::new(
            c"Snapshot exception store does not support snapshot-merge.",
            EINVAL,
        ),
    }
}
