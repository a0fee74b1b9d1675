//! `snapshot` and `snapshot-merge`: the targets a snapshot's reader and
//! writer see (upstream's `snapshot_ctr`, `snapshot_map`, `snapshot_status`
//! and friends). A snapshot's state and its changes are in [`super::cow`],
//! pending exceptions and their copies in [`super::copy`].

use super::copy::{Found, Pending, PendingTicket};
use super::cow::{Snap, SnapArgs, State};
use super::ctr::{open_devices, open_store, register_error, snap_init_error};
use super::persistent::Loaded;
use super::registry::Registry;
use crate::dm::{
    Bio, CtrError, DeviceVisitor, Mapped, OwnedBio, QueueLimits, Setup, StatusBuf, StatusType,
    TableDev, Target, TargetOps,
};
use crate::logic::chunk::{Chunk, ChunkGeometry};
use crate::logic::table::{parse_snapshot, StoreKind};
use crate::sync::tables::ChunkBuckets;
use kernel::c_str;
use kernel::ffi::c_int;
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::Arc;

/// Per-bio data: the chunk a snapshot read of the origin is tracked under.
#[derive(Default)]
pub(crate) struct Tracked {
    pub(super) chunk: Option<u64>,
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
    pub(super) snap: Arc<Snap>,
    /// The table's devices, put when the target goes (after `snap` is
    /// shut down): the target owns them, never the `Snap`, which holds
    /// references to the block devices only.
    pub(super) origin_dev: TableDev,
    pub(super) cow_dev: TableDev,
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
                crate::dm_warn!("Snapshot is marked invalid.\n");
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

impl Snapshot {
    /// `snapshot_ctr` of either target.
    pub(super) fn build(
        setup: &mut Setup<'_>,
        argv: &[&[u8]],
        merge: bool,
    ) -> Result<Pin<KBox<Self>>, CtrError> {
        let reg = Registry::get().ok_or(CtrError::new(c"Snapshot registry missing", EINVAL))?;
        let args = parse_snapshot(argv)?;
        let (origin, cow, kind, chunk) = open_devices(setup, &args, merge)?;
        let (store, geometry, loaded) = open_store(kind, chunk, &origin, &cow)?;
        if merge && store.io().is_none() {
            return Err(CtrError::new(
                c"Snapshot exception store does not support snapshot-merge.",
                EINVAL,
            ));
        }
        let po = matches!(kind, StoreKind::Persistent { overflow: true });
        let (zeroes, passdown) = (args.discard_zeroes_cow, args.discard_passdown_origin);
        let snap = Snap::new(SnapArgs {
            origin: origin.share(),
            cow: cow.share(),
            store,
            geometry,
            po,
            merge,
            ti: setup.target().handle(),
            reg,
            discard_zeroes_cow: zeroes,
            discard_passdown_origin: passdown,
        })
        .map_err(snap_init_error)?;
        setup.set_num_flush_bios(if merge { 2 } else { 1 });
        setup.set_num_discard_bios(match (zeroes, passdown) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        });
        let dest = Snap::register(&snap).map_err(register_error)?;
        // From here on, a failure drops the target, which unregisters.
        let this = KBox::pin(
            Snapshot {
                snap,
                origin_dev: origin,
                cow_dev: cow,
            },
            GFP_KERNEL,
        )
        .map_err(|_| CtrError::new(c"Cannot allocate private snapshot structure", ENOMEM))?;
        if !dest {
            // A handover destination learns its chunk size (and
            // max_io_len) when it takes over the exceptions at resume.
            this.load(setup, loaded, chunk)?;
        }
        Ok(this)
    }

    /// `snapshot_map`.
    fn map_snapshot(&self, mut bio: OwnedBio, tracked: &mut Tracked) -> Mapped {
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

    /// `snapshot_end_io`.
    pub(super) fn end_io_impl(&self, tracked: &mut Tracked) {
        if let Some(chunk) = tracked.chunk.take() {
            self.snap.untrack(chunk);
        }
    }

    /// `snapshot_preresume`.
    pub(super) fn preresume_impl(&self) -> Result {
        let s = &*self.snap;
        let o = s.reg.read();
        if let (Some(src), Some(_)) = o.sharing_cow(s) {
            if core::ptr::eq(src, s) {
                crate::dm_err!("Unable to resume snapshot source until handover completes.\n");
                return Err(EINVAL);
            }
            if !src.ti.is_suspended() {
                crate::dm_err!("Unable to perform snapshot handover until source is suspended.\n");
                return Err(EINVAL);
            }
        }
        Ok(())
    }

    /// `snapshot_resume`.
    pub(super) fn resume_impl(&self, target: &Target) {
        // As upstream: quiesce the origin device (if it is a resumed
        // snapshot-origin) while this snapshot becomes active, so no origin
        // write is half-way through the COW decision.
        let s = &*self.snap;
        let reg = s.reg;
        // The device to quiesce: the origin's, or else a merging
        // snapshot's (it stands for the origin), unless it is this one.
        let (held, merging) = {
            let o = reg.read();
            let merging = o
                .find(s.origin.key())
                .and_then(|os| os.iter().find(|t| t.merge).cloned());
            let md = o
                .dm_origin(s.origin.key())
                .or(merging.as_ref().map(|m| &m.ti))
                .map(|ti| ti.md())
                .filter(|md| *md != target.handle().md());
            (md.and_then(|md| md.hold()), merging)
        };
        // Without a hold (no origin device, or dm_hold failed because it
        // is going away) the merging snapshot is not touched: its clone
        // goes now. Keeping it longer would be harmless too: a `Snap` owns
        // nothing that dies with its target (see `Snap`).
        let merging = merging.filter(|_| held.is_some());
        let mut held = held;
        let mut restart = None;
        if let Some(h) = held.as_mut() {
            h.suspend_fast();
            if let Some(m) = merging.filter(|m| m.merge_running()) {
                m.stop_merge();
                restart = Some(m);
            }
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
        if let Some(m) = restart {
            Snap::start_merge(&m);
        }
        drop(held);
        reg.resort(s.origin.key());
        s.activate();
    }

    /// `snapshot_iterate_devices`.
    pub(super) fn iterate_impl(&self, target: &Target, visit: &mut DeviceVisitor<'_>) -> c_int {
        let r = visit.visit(&self.origin_dev, 0, target.len());
        if r != 0 {
            return r;
        }
        visit.visit(&self.cow_dev, 0, self.cow_dev.nr_sectors())
    }

    /// `snapshot_io_hints`.
    pub(super) fn io_hints_impl(&self, limits: &mut QueueLimits<'_>) {
        let s = &*self.snap;
        if s.discard_zeroes_cow {
            // Upstream's values (a sector count in the byte-sized granularity
            // field, which the block layer raises to the block size).
            limits.set_discard(s.chunk_sectors(), s.chunk_sectors());
        }
    }
}

#[vtable]
impl TargetOps for Snapshot {
    const NAME: &'static CStr = c_str!("snapshot");
    const VERSION: [u32; 3] = [1, 16, 0];
    type PerBio = Tracked;

    fn ctr(setup: &mut Setup<'_>, argv: &[&[u8]]) -> Result<Pin<KBox<Self>>, CtrError> {
        Self::build(setup, argv, false)
    }

    fn map(&self, _target: &Target, bio: OwnedBio, tracked: &mut Tracked) -> Mapped {
        self.map_snapshot(bio, tracked)
    }

    fn end_io(&self, _target: &Target, _bio: &Bio, tracked: &mut Tracked) {
        self.end_io_impl(tracked)
    }

    fn preresume(&self, _target: &Target) -> Result {
        self.preresume_impl()
    }

    fn resume(&self, target: &Target) {
        self.resume_impl(target)
    }

    fn status(&self, _target: &Target, kind: StatusType, out: &mut StatusBuf<'_>) {
        self.status_impl(kind, out, Self::NAME, Self::VERSION)
    }

    fn iterate_devices(&self, target: &Target, visit: &mut DeviceVisitor<'_>) -> c_int {
        self.iterate_impl(target, visit)
    }

    fn io_hints(&self, _target: &Target, limits: &mut QueueLimits<'_>) {
        self.io_hints_impl(limits)
    }
}
