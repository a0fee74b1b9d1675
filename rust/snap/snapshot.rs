//! `snapshot` and `snapshot-merge`: the targets a snapshot's reader and
//! writer see (upstream's `snapshot_ctr`, `snapshot_map`, `snapshot_status`
//! and friends). The copy-on-write machinery is in [`super::cow`].

use super::copy::{Found, Pending, PendingTicket};
use super::cow::{Snap, SnapArgs, SnapInitError, State};
use super::persistent::{LoadError, Loaded, PersistentIo};
use super::registry::{HandoverError, Registry};
use super::store::Store;
use crate::dm::target::{BLK_OPEN_READ, BLK_OPEN_WRITE};
use crate::dm::{
    Bio, CtrError, DeviceVisitor, Mapped, OwnedBio, QueueLimits, Setup, StatusBuf, StatusType,
    TableDev, Target, TargetOps,
};
use crate::logic::chunk::{Chunk, ChunkGeometry};
use crate::logic::persistent::Allocator;
use crate::logic::table::{
    parse_chunk_size, parse_snapshot, parse_store_kind, SnapshotArgs, StoreKind,
};
use crate::logic::transient::TransientStore;
use crate::sync::tables::ChunkBuckets;
use core::fmt::Write;
use kernel::c_str;
use kernel::ffi::c_int;
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::Arc;

/// Per-bio data: the chunk a snapshot read of the origin is tracked under.
#[derive(Default)]
pub(crate) struct Tracked {
    chunk: Option<u64>,
}

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
fn open_devices(
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
type OpenedStore = (Store, ChunkGeometry, Option<Loaded>);

/// Opens the store named by the table: a transient store, or a persistent
/// one with its header read (`dm_exception_store_create` and the store's
/// `ctr`, reading only the header). Returns the store, its I/O and what the
/// header said, for [`Snapshot::ctr`] to finish after registration.
fn open_store(
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
fn snap_init_error(e: SnapInitError) -> CtrError {
    match e {
        SnapInitError::HashTables => CtrError::new(c"Unable to allocate hash table space", ENOMEM),
        SnapInitError::Kcopyd(e) => CtrError::new(c"Could not create kcopyd client", e),
        SnapInitError::Mempool => {
            CtrError::new(c"Could not allocate mempool for pending exceptions", ENOMEM)
        }
    }
}

/// `ti->error` of a failed registration.
fn register_error(e: HandoverError) -> CtrError {
    match e {
        HandoverError::NoMem => CtrError::new(c"Snapshot origin struct allocation failed", ENOMEM),
        HandoverError::Pairing => CtrError::new(
            c"Snapshot cow pairing for exception table handover failed",
            EINVAL,
        ),
    }
}

/// What a snapshot write to an uncopied chunk leaves to do once the state
/// lock is dropped.
enum After {
    /// Nothing: the bio is mapped (or queued).
    Mapped(Mapped),
    /// Start the copy the bio was queued on.
    Copy(PendingTicket),
    /// Write the whole chunk in place of the copy.
    FullWrite(PendingTicket, OwnedBio),
    /// The COW is full.
    NoSpace(OwnedBio),
}

/// A `snapshot` target. Dropping it shuts its snapshot down (see
/// [`Snap::shutdown`]) before letting go of it.
pub(crate) struct Snapshot {
    snap: Arc<Snap>,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.snap.shutdown();
    }
}

impl Snapshot {
    /// Reads or initialises a persistent store's metadata (after
    /// registration, as upstream), then sets the split boundary.
    fn load(
        &self,
        setup: &mut Setup<'_>,
        loaded: Option<Loaded>,
        chunk: u32,
    ) -> Result<(), CtrError> {
        let snap = &self.snap;
        if loaded.is_none() && chunk == 0 {
            return Err(CtrError::new(c"Chunk size not set", EINVAL));
        }
        if let Some(l) = loaded {
            l.warn_overridden();
            let r = if l.new_cow {
                snap.init_new_cow()
            } else if !l.valid {
                pr_warn!("snapshots: Snapshot is marked invalid.\n");
                snap.mark_invalid_at_load();
                Ok(())
            } else {
                snap.read_metadata()
            };
            r.map_err(|e| CtrError::new(c"Failed to read snapshot metadata", e))?;
        }
        setup
            .set_max_io_len(snap.chunk_sectors())
            .map_err(|e| CtrError::new(c"Maximum size of target IO is too large", e))
    }

    /// A snapshot write to a chunk not copied yet (the second half of
    /// `snapshot_map`): queue it on the chunk's pending exception, creating
    /// one if needed. What needs the state lock dropped (starting a copy or
    /// a whole-chunk write, invalidating) is returned for the caller to do
    /// once it has dropped it.
    fn map_uncopied_write(
        &self,
        state: &State,
        locks: ChunkBuckets<'_, Pending>,
        chunk: Chunk,
        mut bio: OwnedBio,
    ) -> After {
        let s = &self.snap;
        let g = state.geometry();
        let (mut locks, found) = Snap::find_or_make_pending(s, state, locks, chunk);
        let cow_chunk = match &found {
            Found::Pending(c) => *c,
            Found::Created(t) => t.new_chunk(),
            // Copied while we allocated: seen under these very locks.
            Found::Copied => match locks.complete_lookup(chunk) {
                Some(c) => c,
                None => return After::Mapped(bio.kill()),
            },
            Found::Full => return After::NoSpace(bio),
        };
        let sector = g.remap(bio.sector(), cow_chunk);
        bio.set_dev(&s.cow);
        bio.set_sector(sector);
        match found {
            Found::Created(t) if u64::from(bio.sectors()) == u64::from(g.sectors()) => {
                After::FullWrite(t, bio)
            }
            Found::Created(t) => {
                if let Some(b) = Snap::queue_bio(&mut locks, chunk, bio, false) {
                    b.end(false);
                }
                After::Copy(t)
            }
            Found::Pending(_) => {
                if let Some(b) = Snap::queue_bio(&mut locks, chunk, bio, false) {
                    b.end(false);
                }
                After::Mapped(Mapped::submitted())
            }
            Found::Copied | Found::Full => After::Mapped(bio.remap()),
        }
    }

    /// A bio to a chunk already copied: to the COW, where a discard of the
    /// whole chunk zeroes it (`zero_exception`) and a partial one is passed
    /// down.
    fn map_copied(
        &self,
        g: ChunkGeometry,
        cow_chunk: Chunk,
        mut bio: OwnedBio,
    ) -> Result<Mapped, OwnedBio> {
        let sector = g.remap(bio.sector(), cow_chunk);
        bio.set_dev(&self.snap.cow);
        bio.set_sector(sector);
        if bio.is_discard()
            && u64::from(bio.sectors()) == u64::from(g.sectors())
            && g.offset_in_chunk(sector) == 0
        {
            return Err(bio);
        }
        Ok(bio.remap())
    }
}

#[vtable]
impl TargetOps for Snapshot {
    const NAME: &'static CStr = c_str!("snapshot");
    const VERSION: [u32; 3] = [1, 16, 0];
    type PerBio = Tracked;

    fn ctr(setup: &mut Setup<'_>, argv: &[&[u8]]) -> Result<Pin<KBox<Self>>, CtrError> {
        let reg = Registry::get().ok_or(CtrError::new(c"Snapshot registry missing", EINVAL))?;
        let args = parse_snapshot(argv)?;
        let (origin, cow, kind, chunk) = open_devices(setup, &args, false)?;
        let (store, geometry, loaded) = open_store(kind, chunk, &origin, &cow)?;
        let po = matches!(kind, StoreKind::Persistent { overflow: true });
        let (zeroes, passdown) = (args.discard_zeroes_cow, args.discard_passdown_origin);
        let snap = Snap::new(SnapArgs {
            origin,
            cow,
            store,
            geometry,
            po,
            ti: setup.target().handle(),
            reg,
            discard_zeroes_cow: zeroes,
            discard_passdown_origin: passdown,
        })
        .map_err(snap_init_error)?;
        setup.set_num_flush_bios(1);
        setup.set_num_discard_bios(match (zeroes, passdown) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        });
        let dest = Snap::register(&snap).map_err(register_error)?;
        // From here on, a failure drops the target, which unregisters.
        let this = KBox::pin(Snapshot { snap }, GFP_KERNEL)
            .map_err(|_| CtrError::new(c"Cannot allocate private snapshot structure", ENOMEM))?;
        if !dest {
            // A handover destination learns its chunk size (and
            // max_io_len) when it takes over the exceptions at resume.
            this.load(setup, loaded, chunk)?;
        }
        Ok(this)
    }

    fn map(&self, _target: &Target, mut bio: OwnedBio, tracked: &mut Tracked) -> Mapped {
        let s = &*self.snap;
        if bio.is_preflush() {
            bio.set_dev(&s.cow);
            return bio.remap();
        }
        if !s.valid_hint() {
            return bio.kill();
        }
        if bio.is_write() {
            s.throttle();
        }
        let state = s.state.read();
        let g = state.geometry();
        let chunk = g.chunk_of(bio.sector());
        // The complete bucket first: copied chunks and reads need no more.
        let c = s.lock_complete(&state, chunk);
        if !state.valid || (state.overflowed && bio.is_write()) {
            return bio.kill();
        }
        let passdown = bio.is_discard() && s.discard_passdown_origin && bio.target_nr() != 0;
        if let Some(cow_chunk) = c.lookup(chunk).filter(|_| !passdown) {
            return match self.map_copied(g, cow_chunk, bio) {
                Ok(m) => m,
                Err(discard) => {
                    drop(c);
                    drop(state);
                    Snap::zero_chunk(&self.snap, discard, g.sectors());
                    Mapped::submitted()
                }
            };
        }
        if bio.is_discard() && !passdown {
            // Nothing copied: nothing to discard, and no COW for it.
            bio.end(true);
            return Mapped::submitted();
        }
        if !bio.is_write() || passdown {
            // A read, or the origin half of a passed-down discard: to the
            // origin, tracked until it completes.
            bio.set_dev(&s.origin);
            s.track(&c, chunk);
            tracked.chunk = Some(chunk);
            return bio.remap();
        }
        let locks = c.with_pending(&s.pending, chunk);
        let after = self.map_uncopied_write(&state, locks, chunk, bio);
        drop(state);
        match after {
            After::Mapped(m) => return m,
            After::Copy(t) => s.start_copy(t),
            After::FullWrite(t, bio) => s.start_full_bio(t, bio),
            After::NoSpace(bio) => {
                // The COW is full: `PO` overflows (writes fail, reads
                // work), anything else invalidates.
                if s.po {
                    s.overflow();
                } else {
                    s.invalidate(true);
                }
                return bio.kill();
            }
        }
        Mapped::submitted()
    }

    fn end_io(&self, _target: &Target, _bio: &Bio, tracked: &mut Tracked) {
        if let Some(chunk) = tracked.chunk.take() {
            self.snap.untrack(chunk);
        }
    }

    fn preresume(&self, _target: &Target) -> Result {
        let s = &*self.snap;
        let o = s.reg.read();
        if let (Some(src), Some(_)) = o.sharing_cow(s) {
            if core::ptr::eq(src, s) {
                pr_err!("snapshots: Unable to resume snapshot source until handover completes.\n");
                return Err(EINVAL);
            }
            if !src.ti.is_suspended() {
                pr_err!(
                    "snapshots: Unable to perform snapshot handover until source is suspended.\n"
                );
                return Err(EINVAL);
            }
        }
        Ok(())
    }

    fn resume(&self, target: &Target) {
        // As upstream: quiesce the origin device (if it is a resumed
        // snapshot-origin) while this snapshot becomes active, so no origin
        // write is half-way through the COW decision.
        let s = &*self.snap;
        let reg = s.reg;
        let held = {
            let o = reg.read();
            o.dm_origin(s.origin.key())
                .map(|ti| ti.md())
                .filter(|md| *md != target.handle().md())
                .and_then(|md| md.hold())
        };
        let mut held = held;
        if let Some(h) = held.as_mut() {
            h.suspend_fast();
        }
        {
            let o = reg.read();
            if let (Some(src), Some(dest)) = o.sharing_cow(s) {
                let mut src_st = src.state.write();
                let mut dest_st = dest.state.write_nested();
                Snap::handover(src, &mut src_st, dest, &mut dest_st);
                dest.ti.set_max_io_len(dest_st.geometry().sectors());
            }
        }
        drop(held);
        reg.resort(s.origin.key());
        s.activate();
    }

    fn status(&self, _target: &Target, kind: StatusType, out: &mut StatusBuf<'_>) {
        let s = &*self.snap;
        let _ = match kind {
            StatusType::Info => {
                let st = s.state.write();
                if !st.valid {
                    out.write_str("Invalid")
                } else if st.merge_failed {
                    out.write_str("Merge failed")
                } else if st.overflowed {
                    out.write_str("Overflow")
                } else if st.handover_dest {
                    // Not resumed yet: upstream's store has chunk size 0
                    // and nothing allocated, and counts the COW's size.
                    write!(out, "0/{} 0", s.cow.nr_sectors())
                } else {
                    let u = st.alloc().store.usage(st.geometry(), s.cow.nr_sectors());
                    write!(out, "{}/{} {}", u.allocated, u.total, u.metadata)
                }
            }
            StatusType::Table => {
                let _ = write!(out, "{} {}", s.origin.name(), s.cow.name());
                let st = s.state.read();
                // A destination not yet resumed has no chunk size yet.
                let chunk = if st.handover_dest {
                    0
                } else {
                    st.geometry().sectors()
                };
                let _ = st.alloc().store.status_table(out, chunk, s.po);
                let n = u32::from(s.discard_zeroes_cow) + u32::from(s.discard_passdown_origin);
                if n > 0 {
                    let _ = write!(out, " {}", n);
                    if s.discard_zeroes_cow {
                        let _ = out.write_str(" discard_zeroes_cow");
                    }
                    if s.discard_passdown_origin {
                        let _ = out.write_str(" discard_passdown_origin");
                    }
                }
                Ok(())
            }
            StatusType::Ima => {
                let st = s.state.read();
                let yn = |b: bool| if b { 'y' } else { 'n' };
                let [major, minor, patch] = Self::VERSION;
                write!(
                    out,
                    "target_name={},target_version={}.{}.{},snap_origin_name={},snap_cow_name={},snap_valid={},snap_merge_failed={},snapshot_overflowed={};",
                    Self::NAME,
                    major,
                    minor,
                    patch,
                    s.origin.name(),
                    s.cow.name(),
                    yn(st.valid),
                    yn(st.merge_failed),
                    yn(st.overflowed)
                )
            }
        };
    }

    fn iterate_devices(&self, target: &Target, visit: &mut DeviceVisitor<'_>) -> c_int {
        let s = &*self.snap;
        let r = visit.visit(&s.origin, 0, target.len());
        if r != 0 {
            return r;
        }
        visit.visit(&s.cow, 0, s.cow.nr_sectors())
    }

    fn io_hints(&self, _target: &Target, limits: &mut QueueLimits<'_>) {
        let s = &*self.snap;
        if s.discard_zeroes_cow {
            // Upstream's values (a sector count in the byte-sized granularity
            // field, which the block layer raises to the block size).
            limits.set_discard(s.chunk_sectors(), s.chunk_sectors());
        }
    }
}

/// A `snapshot-merge` target: table checks as upstream; merging itself
/// needs the persistent store, so construction stops there for now.
pub(crate) struct SnapshotMerge;

#[vtable]
impl TargetOps for SnapshotMerge {
    const NAME: &'static CStr = c_str!("snapshot-merge");
    const VERSION: [u32; 3] = [1, 5, 0];
    type PerBio = ();

    fn ctr(setup: &mut Setup<'_>, argv: &[&[u8]]) -> Result<Pin<KBox<Self>>, CtrError> {
        let args = parse_snapshot(argv)?;
        let (_origin, _cow, kind, _chunk) = open_devices(setup, &args, true)?;
        Err(match kind {
            StoreKind::Transient => CtrError::new(
                c"Snapshot exception store does not support snapshot-merge.",
                EINVAL,
            ),
            StoreKind::Persistent { .. } => CtrError::new(
                c"snapshot-merge is not implemented by dm_snap_rs yet",
                EINVAL,
            ),
        })
    }

    fn map(&self, _target: &Target, bio: OwnedBio, _data: &mut ()) -> Mapped {
        bio.kill()
    }
}
