//! A snapshot's copy-on-write state (upstream's `struct dm_snapshot`): the
//! two exception tables, the store, validity, and the changes of state
//! (invalidation, handover, overflow, loading the metadata). The copy
//! pipeline is [`super::copy`], throttling and read tracking
//! [`super::throttle`].
//!
//! Locking follows the fine-grained design (see [`super::registry`] for
//! the order): `state` (rwsem) is taken for read by every per-chunk
//! operation and for write by state changes; a chunk's complete and pending
//! buckets are bit-locked as a pair ([`ChunkBuckets`]); the store's
//! allocator is a spinlock inside them. Nothing sleeps under a bucket lock.
//!
//! A `Snap` is shared (`Arc`) by its target, the registry, each pending
//! exception and whoever works on one of them for a moment (an origin
//! writer starting a shared copy, a copy completion). [`Snap::shutdown`],
//! from the target's drop, takes it out of the registry, waits for its
//! pending exceptions and closes its kcopyd client (which waits for every
//! callback to return). It cannot wait for the callbacks of other
//! snapshots' clients, which complete this one's part of a shared copy and
//! may hold the last reference after its target is gone.
//!
//! The lifetime rule: **a `Snap` owns nothing that dies with its target.**
//! The table devices (`dm_get_device`, put against the target's table)
//! belong to the target ([`super::snapshot::Snapshot`]); a `Snap` holds
//! references to the block devices ([`Bdev`]), which outlive any table.
//! Its `TargetRef` is used only while it is registered or has a pending
//! exception, both of which the target's shutdown waits out; dropping it
//! touches nothing.

use super::copy::{Pending, MIN_IOS};
use super::persistent::PersistentIo;
use super::registry::{HandoverError, Registry};
use super::store::Store;
use super::throttle::Tracking;
use crate::dm::kcopyd::Kcopyd;
use crate::dm::{Bdev, BioList, TargetRef};
use crate::logic::chunk::{
    complete_hash_shift, table_sizes, Chunk, ChunkGeometry, MAX_TABLE_BYTES,
};
use crate::logic::exception_index::CowLayout;
use crate::logic::sort::radix_sort_by_key;
use crate::new_rwsem;
use crate::sync::complete::{CompleteBucket, CompleteTable, LoadError};
use crate::sync::tables::{ChunkBuckets, Order, PendingTable};
use crate::sync::{KVecExt, RwSem};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use kernel::alloc::VVec;
use kernel::new_spinlock;
use kernel::prelude::*;
use kernel::sync::lock::{spinlock::SpinLockBackend, Guard};
use kernel::sync::{Arc, SpinLock};

/// Exceptions sorted and inserted at once when a persistent COW is loaded
/// (256 areas of 4 KiB chunks; the batch and the sort's other buffer take
/// 1 MiB each while the COW loads). The more a leaf gets of one batch,
/// the less of it moves per exception.
const LOAD_BATCH: usize = 65536;

/// The chunks of `origin`, a partial last one included.
fn origin_chunks(origin: &Bdev, g: ChunkGeometry) -> u64 {
    g.chunk_of(
        origin
            .nr_sectors()
            .saturating_add(u64::from(g.sectors()) - 1),
    )
}

/// What a handover moves from the old table's snapshot to the new one's:
/// the completed exceptions, the store and its chunk geometry (upstream
/// swaps `s->complete` and `s->store`). Not pinned itself (the lock has
/// its own pinned box): a table outgrowing the index changes `complete`
/// in place, through the state lock held for write.
pub(crate) struct Exceptions {
    pub(super) complete: CompleteTable,
    /// The store's allocator and the order of what it allocated
    /// (`pe_allocation_lock`).
    alloc: Pin<KBox<SpinLock<Allocation>>>,
    /// The chunk size, stored once: the store and its I/O are given it.
    geometry: ChunkGeometry,
}

/// What the allocation lock protects: the store, and for the persistent
/// store the pending exceptions in the order their COW chunks were
/// allocated, which is the order their copies complete in (upstream's
/// exception sequence numbers: an area written while an earlier-allocated
/// chunk is still being copied would record a later one first, and after a
/// crash the earlier chunk would be allocated to nothing). The transient
/// store has nothing on disk to keep in order, so its copies complete as
/// they finish. The order is empty whenever no pending exception exists, so
/// a handover moves it empty.
pub(crate) struct Allocation {
    pub(crate) store: Store,
    pub(super) order: Order<Pending>,
    /// A copy completion is committing what the order yields: others only
    /// record theirs, and it commits them too (see `Snap::copy_done`).
    pub(super) committing: bool,
}

/// Snapshot state read per chunk and written rarely (`s->lock`).
pub(crate) struct State {
    /// Not invalidated (COW full or failed).
    pub(crate) valid: bool,
    /// Resumed at least once: origin writes COW into it only then.
    pub(crate) active: bool,
    /// A `PO` store ran out of space: writes fail, reads work.
    pub(crate) overflowed: bool,
    /// A merge stopped on an error (`Merge failed` in status); only a new
    /// table clears it.
    pub(crate) merge_failed: bool,
    /// The chunks being merged now (`first_merging_chunk`,
    /// `num_merging_chunks`): writes to them wait in `queued`.
    pub(crate) merging: Option<(Chunk, usize)>,
    /// Writes that came while their chunk was being merged
    /// (`bios_queued_during_merge`), already pointed at the origin.
    pub(crate) queued: BioList,
    /// Waiting to take over the exceptions of an older table on the same
    /// COW at its first resume (a handover destination).
    pub(crate) handover_dest: bool,
    pub(crate) exc: KBox<Exceptions>,
}

impl State {
    /// The completed exceptions, to change their table's shape: the state
    /// is locked for write (`&mut`), so no one else is in the table.
    fn complete_mut(&mut self) -> &mut CompleteTable {
        &mut self.exc.complete
    }

    /// The chunk geometry of the current store.
    pub(crate) fn geometry(&self) -> ChunkGeometry {
        self.exc.geometry
    }

    /// The store and the completion order, under the allocation lock.
    pub(crate) fn alloc(&self) -> Guard<'_, Allocation, SpinLockBackend> {
        self.exc.alloc.lock()
    }

    /// The persistent store's I/O (`None` for `N`), out of the allocation
    /// lock, to use with it dropped.
    pub(crate) fn io(&self) -> Option<Arc<PersistentIo>> {
        self.alloc().store.io().cloned()
    }
}

/// One snapshot's COW state, shared by its target, the registry (for the
/// origin's writers) and its pending exceptions.
#[pin_data]
pub(crate) struct Snap {
    /// Closed by [`Snap::shutdown`]; first, so that even a snapshot dropped
    /// without it (a failed constructor, which started no copy) closes the
    /// client before the store its callbacks use.
    pub(super) kcopyd: Kcopyd,
    #[pin]
    pub(crate) state: RwSem<State>,
    /// Unlocked fast-path copy of `state.valid`.
    pub(super) valid_hint: AtomicBool,
    pub(super) pending: PendingTable<Pending>,
    pub(super) tracking: Tracking,
    pub(super) in_progress: AtomicU32,
    registered: AtomicBool,
    /// A `snapshot-merge` target: origin writes make no exceptions in it.
    pub(crate) merge: bool,
    /// The merge runs (`RUNNING_MERGE`) / is asked to stop
    /// (`SHUTDOWN_MERGE`).
    pub(super) merge_running: AtomicBool,
    pub(super) merge_stop: AtomicBool,
    pub(crate) reg: &'static Registry,
    pub(crate) ti: TargetRef,
    pub(crate) discard_zeroes_cow: bool,
    pub(crate) discard_passdown_origin: bool,
    /// `PO`: a full COW on a snapshot write overflows instead of
    /// invalidating (a property of the table, kept across a handover).
    pub(crate) po: bool,
    /// The devices, as references to the block devices, not the target's
    /// table devices: a `Snap` can outlive its target (see [`Snap`]'s
    /// lifetime rule), and what it holds must not die with the target.
    pub(crate) cow: Bdev,
    pub(crate) origin: Bdev,
}

/// Construction arguments of a [`Snap`].
pub(crate) struct SnapArgs {
    pub(crate) origin: Bdev,
    pub(crate) cow: Bdev,
    pub(crate) store: Store,
    pub(crate) geometry: ChunkGeometry,
    pub(crate) po: bool,
    pub(crate) merge: bool,
    pub(crate) ti: TargetRef,
    pub(crate) reg: &'static Registry,
    pub(crate) discard_zeroes_cow: bool,
    pub(crate) discard_passdown_origin: bool,
}

/// Which construction step failed, for `ti->error`.
pub(crate) enum SnapInitError {
    HashTables,
    Kcopyd(Error),
    Mempool,
}

impl Snap {
    /// Allocates the tables (sized as upstream), the kcopyd client and the
    /// pending-exception pool, in upstream's order.
    pub(crate) fn new(a: SnapArgs) -> Result<Arc<Snap>, SnapInitError> {
        let geometry = a.geometry;
        let (nc, np) = table_sizes(a.cow.nr_sectors(), geometry.shift(), MAX_TABLE_BYTES / 8);
        let origin_chunks = origin_chunks(&a.origin, geometry);
        let complete = if crate::dm::exception_index()
            && CompleteTable::index_fits(origin_chunks, a.cow.nr_sectors() >> geometry.shift())
        {
            let layout = match &a.store {
                Store::Persistent { .. } => CowLayout::persistent(geometry.sectors()),
                Store::Transient(_) => CowLayout::transient(),
            };
            let shards = CompleteTable::index_shards(origin_chunks);
            CompleteTable::new_index(shards, layout, &a.reg.exceptions)
        } else {
            let shift = complete_hash_shift(origin_chunks, nc as u64);
            CompleteTable::new_hash(nc, shift, &a.reg.exceptions)
        }
        .map_err(|_| SnapInitError::HashTables)?;
        let tracking = Tracking::new().map_err(|_| SnapInitError::HashTables)?;
        let kcopyd = Kcopyd::new().map_err(SnapInitError::Kcopyd)?;
        let pending = PendingTable::new(np, MIN_IOS).map_err(|_| SnapInitError::Mempool)?;
        let alloc = KBox::pin_init(
            new_spinlock!(
                Allocation {
                    store: a.store,
                    order: Order::new(),
                    committing: false,
                },
                "dm_snap_rs:pe_allocation"
            ),
            GFP_KERNEL,
        )
        .map_err(|_| SnapInitError::HashTables)?;
        let exc = KBox::new(
            Exceptions {
                complete,
                alloc,
                geometry,
            },
            GFP_KERNEL,
        )
        .map_err(|_| SnapInitError::HashTables)?;
        let state = State {
            valid: true,
            active: false,
            overflowed: false,
            merge_failed: false,
            merging: None,
            queued: BioList::new(),
            handover_dest: false,
            exc,
        };
        Arc::pin_init(
            pin_init!(Snap {
                kcopyd,
                state <- new_rwsem!(state, "dm_snap_rs:snap"),
                valid_hint: AtomicBool::new(true),
                pending,
                tracking,
                in_progress: AtomicU32::new(0),
                registered: AtomicBool::new(false),
                merge: a.merge,
                merge_running: AtomicBool::new(false),
                merge_stop: AtomicBool::new(false),
                reg: a.reg,
                ti: a.ti,
                discard_zeroes_cow: a.discard_zeroes_cow,
                discard_passdown_origin: a.discard_passdown_origin,
                po: a.po,
                cow: a.cow,
                origin: a.origin,
            }),
            GFP_KERNEL,
        )
        .map_err(|_| SnapInitError::Mempool)
    }

    /// Adds the snapshot to the origin registry (`register_snapshot`);
    /// `Ok(true)` if it is to take over an older table's exceptions.
    pub(crate) fn register(this: &Arc<Self>) -> Result<bool, HandoverError> {
        let dest = this.reg.register(this)?;
        this.registered.store(true, Ordering::Release);
        Ok(dest)
    }

    /// `snapshot_dtr`: no new origin-triggered exceptions after
    /// unregistering (cancelling a handover this one was the source of);
    /// then wait for the pending ones to finish, and close the kcopyd
    /// client, which waits until every callback has returned. Sleeps.
    pub(crate) fn shutdown(&self) {
        if self.merge {
            self.stop_merge();
        }
        if self.registered.swap(false, Ordering::AcqRel) {
            {
                let o = self.reg.read();
                let (src, dest) = o.sharing_cow(self);
                if let (Some(src), Some(dest)) = (src, dest) {
                    if core::ptr::eq(src, self) {
                        dest.cancel_handover();
                    }
                }
            }
            self.reg.unregister(self);
        }
        crate::dm::poll_until(1000, || self.pending.in_use() == 0);
        self.kcopyd.close();
    }

    /// Chunk size in sectors (takes the state lock for read).
    pub(crate) fn chunk_sectors(&self) -> u32 {
        self.state.read().geometry().sectors()
    }

    /// Unlocked validity check for the fast path (`if (!s->valid)`).
    pub(crate) fn valid_hint(&self) -> bool {
        self.valid_hint.load(Ordering::Relaxed)
    }

    /// Locks the bucket pair of `chunk`; `st` is the state, locked.
    pub(crate) fn lock_chunk<'a>(
        &'a self,
        st: &'a State,
        chunk: Chunk,
    ) -> ChunkBuckets<'a, Pending> {
        st.exc.complete.lock_pair(&self.pending, chunk)
    }

    /// Locks the complete bucket of `chunk` only; `st` is the state,
    /// locked. Enough to find the chunk copied (a chunk is never in both
    /// tables as far as a holder of this lock can see: completion moves it
    /// under both locks) and to track a snapshot read of it; upstream
    /// always takes both, the second a random cache line of the pending
    /// table per I/O that rewrites and reads of copied chunks do not need.
    pub(crate) fn lock_complete<'a>(&'a self, st: &'a State, chunk: Chunk) -> CompleteBucket<'a> {
        st.exc.complete.lock(chunk)
    }

    /// Marks the snapshot invalid (`__invalidate_snapshot`): I/O to it fails
    /// from now on, and a table event tells userspace. Sleeps.
    pub(crate) fn invalidate(&self, nomem: bool) {
        let mut st = self.state.write();
        if !st.valid {
            return;
        }
        if nomem {
            crate::dm_err!("Invalidating snapshot: Unable to allocate exception.\n");
        } else {
            crate::dm_err!("Invalidating snapshot: Error reading/writing.\n");
        }
        if let Some(p) = st.io() {
            p.drop_snapshot(&self.cow, st.geometry());
        }
        st.valid = false;
        self.valid_hint.store(false, Ordering::Relaxed);
        drop(st);
        self.ti.table_event();
    }

    /// Moves the exceptions, store and validity of `src` (the snapshot of
    /// an older table on the same COW) to `dst` (`__handover_exceptions`).
    /// Both are write-locked and quiesced: no pending exceptions exist.
    pub(crate) fn handover(src: &Snap, src_st: &mut State, dst: &Snap, dst_st: &mut State) {
        core::mem::swap(&mut src_st.exc, &mut dst_st.exc);
        dst_st.valid = src_st.valid;
        dst_st.overflowed = src_st.overflowed;
        dst_st.handover_dest = false;
        src_st.valid = false;
        src.valid_hint.store(false, Ordering::Relaxed);
        dst.valid_hint.store(dst_st.valid, Ordering::Relaxed);
    }

    /// Invalidates a handover destination whose source went away
    /// (`snapshot_dtr`: "Cancelling snapshot handover.").
    pub(crate) fn cancel_handover(&self) {
        let mut st = self.state.write();
        st.valid = false;
        self.valid_hint.store(false, Ordering::Relaxed);
        crate::dm_err!("Cancelling snapshot handover.\n");
    }

    /// The compact index cannot number exception `old` -> `new` (the origin
    /// or the COW grew past its range since activation, a reload took the
    /// index over, or a loaded COW maps a chunk past the origin): moves its
    /// exceptions into a hash table sized for the devices as they are now,
    /// as upstream's would have been, and carries on. A no-op if another
    /// completion did it first. Takes the state lock for write (bio paths
    /// and completions wait meanwhile, once in the table's life); sleeps.
    pub(crate) fn outgrow_index(&self, old: Chunk, new: Chunk) -> Result {
        let mut st = self.state.write();
        let g = st.geometry();
        let (buckets, _) = table_sizes(self.cow.nr_sectors(), g.shift(), MAX_TABLE_BYTES / 8);
        let shift = complete_hash_shift(origin_chunks(&self.origin, g), buckets as u64);
        match st.complete_mut().outgrow_index(buckets, shift) {
            Ok(Some(moved)) => {
                crate::dm_info!(
                    "exception {} -> {} is beyond the exception index: its {} chunks moved to a hash table\n",
                    old,
                    new,
                    moved
                );
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                crate::dm_err!(
                    "exception {} -> {} is beyond the exception index, and no memory to move it to a hash table\n",
                    old,
                    new
                );
                Err(e)
            }
        }
    }

    /// A `PO` store is full: writes fail from now on, reads still work.
    pub(crate) fn overflow(&self) {
        let mut st = self.state.write();
        if st.valid && !st.overflowed {
            st.overflowed = true;
            crate::dm_err!("Snapshot overflowed: Unable to allocate exception.\n");
        }
    }

    /// Reads a persistent store's exceptions into the complete table and
    /// its allocator (`read_metadata`, at construction); a no-op for `N`.
    ///
    /// No I/O under the state lock: upstream's constructor reads and
    /// writes the store's metadata holding no snapshot lock, and a COW
    /// stacked on another snapshot sends that I/O through the other
    /// snapshot's `map`, which takes its own state lock of the same lock
    /// class (lockdep: possible recursive locking, lvm2's
    /// `snapshot-remove-dmsetup`). The lock is taken around each batch's
    /// insertion only; nothing else writes the state meanwhile (the target
    /// is not resumed yet, so no handover; an origin write skips a
    /// snapshot that is not active).
    pub(crate) fn read_metadata(&self) -> Result {
        let (mut alloc, pio, g) = {
            let st = self.state.read();
            let g = st.geometry();
            let a = st.alloc();
            match &a.store {
                Store::Persistent { alloc, io } => (*alloc, io.clone(), g),
                Store::Transient(_) => return Ok(()),
            }
        };
        // A bulk load from sorted batches: exceptions come in allocation
        // order, scattered over the origin; sorted by a stable radix sort
        // (equal chunks keep their order, and the first mapping wins), they
        // go in shard by shard, a leaf's share in one pass.
        let mut batch = VVec::with_capacity(LOAD_BATCH, GFP_KERNEL)?;
        let mut scratch = VVec::from_elem((0, 0), LOAD_BATCH, GFP_KERNEL)?;
        let mut flush = |b: &mut VVec<(Chunk, Chunk)>| -> Result {
            radix_sort_by_key(b, &mut scratch, |&(old, _)| old);
            let mut from = 0;
            let r = loop {
                let rest = b.get(from..).unwrap_or_default();
                let st = self.state.read();
                let r = st
                    .exc
                    .complete
                    .insert_sorted(rest, |&(old, new)| (old, new));
                drop(st);
                match r {
                    Ok(()) => break Ok(()),
                    Err(LoadError::Failed(e)) => break Err(e),
                    // The hash table takes the rest: once, then never
                    // again, so this loops at most twice.
                    Err(LoadError::Outgrown(at)) => {
                        let Some(&(old, new)) = rest.get(at) else {
                            break Err(EINVAL);
                        };
                        if let Err(e) = self.outgrow_index(old, new) {
                            break Err(e);
                        }
                        from += at;
                    }
                }
            };
            b.clear_keep();
            r
        };
        pio.read_exceptions(&self.cow, g, &mut alloc, |old, new| {
            batch.push((old, new), GFP_KERNEL)?;
            if batch.len() == LOAD_BATCH {
                flush(&mut batch)?;
            }
            Ok(())
        })?;
        flush(&mut batch)?;
        let st = self.state.read();
        if let Store::Persistent { alloc: a, .. } = &mut st.alloc().store {
            *a = alloc;
        }
        Ok(())
    }

    /// Writes the header and first area of a new persistent COW, with no
    /// lock held (see [`Snap::read_metadata`]).
    pub(crate) fn init_new_cow(&self) -> Result {
        let (io, g) = {
            let st = self.state.read();
            (st.io(), st.geometry())
        };
        match io {
            Some(p) => p.init_new(&self.cow, g),
            None => Ok(()),
        }
    }

    /// Loads as invalid: the header says so (a previous invalidation).
    pub(crate) fn mark_invalid_at_load(&self) {
        self.state.write().valid = false;
        self.valid_hint.store(false, Ordering::Relaxed);
    }

    /// Marks the snapshot active after its first resume.
    pub(crate) fn activate(&self) {
        self.state.write().active = true;
    }
}
