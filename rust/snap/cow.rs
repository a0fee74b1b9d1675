//! A snapshot's copy-on-write state and pipeline (the heart of upstream's
//! `dm-snap.c`): the two exception tables, pending exceptions, copies
//! through dm-kcopyd, and their completion.
//!
//! Locking follows the fine-grained design (see [`super::registry`] for
//! the order): `state` (rwsem) is taken for read by every per-chunk
//! operation and for write by state changes; a chunk's complete and pending
//! buckets are bit-locked as a pair ([`ChunkLocks`]); the store's allocator
//! is a spinlock inside them. Nothing sleeps under a bucket lock: pending
//! exceptions are allocated (mempool, may sleep) with the buckets unlocked
//! and the tables re-checked after; copies are started, bios submitted and
//! ended, and conflicting reads waited for only with the buckets unlocked.

use super::persistent::PersistentIo;
use super::registry::{do_origin, HandoverError, Registry};
use super::store::Store;
use crate::dm::kcopyd::{CopyJob, FullBio, Kcopyd, Region};
use crate::dm::mempool::Mempool;
use crate::dm::{BioList, OwnedBio, TableDev, TargetRef};
use crate::logic::chunk::{
    complete_hash_shift, table_sizes, Chunk, ChunkGeometry, MAX_TABLE_BYTES,
};
use crate::logic::completion_order::{CompletionOrder, OrderLink, Ordered};
use crate::logic::exception_table::{
    Bucket, BucketLock, BucketPair, Exception, ExceptionTable, Locked,
};
use crate::new_rwsem;
use crate::sync::{BucketLocks, RwSem};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use kernel::new_spinlock;
use kernel::prelude::*;
use kernel::sync::SpinLock;

/// What a handover moves from the old table's snapshot to the new one's:
/// the completed exceptions, the store and its chunk geometry (upstream
/// swaps `s->complete` and `s->store`).
#[pin_data(PinnedDrop)]
pub(crate) struct Exceptions {
    complete: Table,
    /// The store's allocator and the order of what it allocated
    /// (`pe_allocation_lock`).
    #[pin]
    alloc: SpinLock<Allocation>,
    geometry: ChunkGeometry,
    /// The persistent store's metadata I/O; `None` for `N`.
    pio: Option<Pin<KBox<PersistentIo>>>,
}

#[pinned_drop]
impl PinnedDrop for Exceptions {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: only the table, which is not structurally pinned, is
        // reached; its entries are freed, nothing is moved.
        let this = unsafe { self.get_unchecked_mut() };
        this.complete.drain(|e| {
            // SAFETY: completed exceptions come from the registry's slab.
            unsafe { Registry::get().exceptions.free(e) }
        });
    }
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
    order: CompletionOrder<Pending>,
}

/// Snapshot state read per chunk and written rarely (`s->lock`).
pub(crate) struct State {
    /// Not invalidated (COW full or failed).
    pub(crate) valid: bool,
    /// Resumed at least once: origin writes COW into it only then.
    pub(crate) active: bool,
    /// A `PO` store ran out of space: writes fail, reads work.
    pub(crate) overflowed: bool,
    /// A merge stopped on an error (`Merge failed` in status); set by the
    /// merge, which is not implemented yet, so it stays false.
    pub(crate) merge_failed: bool,
    /// Waiting to take over the exceptions of an older table on the same
    /// COW at its first resume (a handover destination).
    pub(crate) handover_dest: bool,
    pub(crate) exc: Pin<KBox<Exceptions>>,
}

impl State {
    /// The chunk geometry of the current store.
    pub(crate) fn geometry(&self) -> ChunkGeometry {
        self.exc.geometry
    }

    /// The store and the completion order, under the allocation lock.
    pub(crate) fn alloc(
        &self,
    ) -> kernel::sync::lock::Guard<'_, Allocation, kernel::sync::lock::spinlock::SpinLockBackend>
    {
        self.exc.alloc.lock()
    }

    /// Metadata sectors of the store (0 for `N`).
    pub(crate) fn metadata_sectors(&self) -> u64 {
        self.exc.pio.as_ref().map_or(0, |p| p.metadata_sectors())
    }
}

type Table = ExceptionTable<KVec<<BucketLocks as BucketLock>::Head>, BucketLocks>;

/// Reads tracked per snapshot by hash slot; see [`Snap::track`].
const TRACK_SLOTS: usize = 1024;
/// Pending exceptions reserved in the mempool (upstream's `MIN_IOS`).
const MIN_IOS: i32 = 256;

/// The two kinds of table, each one lock class for lockdep: a chunk's
/// complete bucket is always taken before its pending one.
#[derive(Clone, Copy)]
enum TableKind {
    Complete,
    Pending,
}

fn new_table(buckets: usize, hash_shift: u32, kind: TableKind) -> Result<Table> {
    let (name, key) = match kind {
        TableKind::Complete => (
            kernel::c_str!("dm_snap_rs:complete_bucket"),
            kernel::static_lock_class!(),
        ),
        TableKind::Pending => (
            kernel::c_str!("dm_snap_rs:pending_bucket"),
            kernel::static_lock_class!(),
        ),
    };
    let class = BucketLocks::new_class(name, key)?;
    Table::with_class(BucketLocks::new_heads(buckets, key)?, hash_shift, class).ok_or(EINVAL)
}

/// Test only (`bucket_lockdep_selftest`, lockdep kernels): takes a complete
/// and a pending bucket in the design's order, then in the reverse order,
/// on two small tables of the snapshots' own lock classes. Lockdep must
/// report the inversion; if it does not, the bucket locks are invisible to
/// it. Returns 0, or a negative errno when the tables cannot be made.
pub(crate) fn bucket_lockdep_inversion() -> Result {
    let complete = new_table(64, 0, TableKind::Complete)?;
    let pending = new_table(64, 0, TableKind::Pending)?;
    drop(complete.lock_pair(&pending, 1));
    let p = pending.lock(1);
    let c = complete.lock(1);
    drop(c);
    drop(p);
    Ok(())
}

/// The COW chunk of `chunk` in locked complete-table bucket `b`, if copied.
fn remapped(b: &Locked<'_, BucketLocks>, chunk: Chunk) -> Option<Chunk> {
    // SAFETY: an entry found under its bucket lock is valid.
    b.lookup(chunk).map(|e| unsafe { e.as_ref() }.remap(chunk))
}

/// A chunk's complete bucket alone. Enough to find the chunk copied (a
/// chunk is never in both tables as far as a holder of this lock can see:
/// `pending_complete` moves it under both locks) and to track a snapshot
/// read of it; [`CompleteLock::with_pending`] adds the pending bucket.
/// Upstream always takes both; the second is a random cache line of the
/// pending table per I/O that rewrites and reads of copied chunks do not
/// need.
pub(crate) struct CompleteLock<'a>(Bucket<'a, BucketLocks>);

impl<'a> CompleteLock<'a> {
    /// The COW chunk of `chunk` if it is already copied.
    pub(crate) fn lookup(&self, chunk: Chunk) -> Option<Chunk> {
        remapped(&self.0, chunk)
    }

    /// Locks the pending bucket of `chunk` of snapshot `s` too (the lock
    /// order is kept: complete, then pending); `s` is the snapshot whose
    /// state this lock came from.
    pub(crate) fn with_pending(self, s: &'a Snap, chunk: Chunk) -> ChunkLocks<'a> {
        ChunkLocks(self.0.and_lock(&s.pending, chunk))
    }
}

/// A chunk's complete and pending buckets, locked in that order (one C
/// call for both where the lock is `hlist_bl_lock`) and unlocked together.
pub(crate) struct ChunkLocks<'a>(BucketPair<'a, BucketLocks>);

impl<'a> ChunkLocks<'a> {
    fn complete(&self) -> &Locked<'a, BucketLocks> {
        &self.0.first
    }

    fn complete_mut(&mut self) -> &mut Locked<'a, BucketLocks> {
        &mut self.0.first
    }

    fn pending(&self) -> &Locked<'a, BucketLocks> {
        &self.0.second
    }

    fn pending_mut(&mut self) -> &mut Locked<'a, BucketLocks> {
        &mut self.0.second
    }
}

/// A copy of one chunk in flight; the table entry is its first field, so a
/// pending-table lookup yields the whole `Pending` (`container_of`).
#[repr(C)]
pub(crate) struct Pending {
    e: Exception,
    snap: NonNull<Snap>,
    geometry: ChunkGeometry,
    /// Fields below are protected by the chunk's bucket locks.
    started: bool,
    origin_bios: BioList,
    snapshot_bios: BioList,
    full_bio: Option<FullBio>,
    /// Place in the allocation order (under the allocation lock).
    order: OrderLink<Pending>,
}

// SAFETY: `link` returns the `order` field of the pending exception itself.
unsafe impl Ordered for Pending {
    unsafe fn link(this: NonNull<Self>) -> NonNull<OrderLink<Self>> {
        // SAFETY: `this` is valid (caller); a field of it is not null.
        unsafe { NonNull::new_unchecked(core::ptr::addr_of_mut!((*this.as_ptr()).order)) }
    }
}

// SAFETY: a pending exception moves between CPUs with its bios; its fields
// are only touched under its chunk's bucket locks or by its sole owner.
unsafe impl Send for Pending {}

/// One snapshot's COW state, shared by its target and, through the
/// registry, by the origin's writers.
#[pin_data(PinnedDrop)]
pub(crate) struct Snap {
    /// Dropped first (fields drop in declaration order): destroying the
    /// client waits until every job's callback has returned, and those
    /// callbacks use the store in `state` (a persistent commit and its
    /// `recycle`, after the last pending exception was freed), so the
    /// store must outlive it, as upstream's `__free_exceptions` destroys
    /// the client before `dm_exception_store_destroy`.
    kcopyd: Kcopyd,
    #[pin]
    pub(crate) state: RwSem<State>,
    /// Unlocked fast-path copy of `state.valid`.
    valid_hint: AtomicBool,
    pending: Table,
    pending_pool: Mempool<Pending>,
    pending_count: AtomicUsize,
    tracked: KVec<AtomicU32>,
    in_progress: AtomicU32,
    registered: AtomicBool,
    pub(crate) ti: TargetRef,
    pub(crate) discard_zeroes_cow: bool,
    pub(crate) discard_passdown_origin: bool,
    /// `PO`: a full COW on a snapshot write overflows instead of
    /// invalidating (a property of the table, kept across a handover).
    pub(crate) po: bool,
    pub(crate) cow: TableDev,
    pub(crate) origin: TableDev,
}

// SAFETY: all shared mutable state is behind locks or atomics; raw pointers
// inside (pending exceptions, bios) are owned by the snapshot.
unsafe impl Sync for Snap {}
// SAFETY: as above.
unsafe impl Send for Snap {}

/// Construction arguments of a [`Snap`].
pub(crate) struct SnapArgs {
    pub(crate) origin: TableDev,
    pub(crate) cow: TableDev,
    pub(crate) store: Store,
    pub(crate) pio: Option<Pin<KBox<PersistentIo>>>,
    pub(crate) po: bool,
    pub(crate) ti: TargetRef,
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
    pub(crate) fn new(a: SnapArgs) -> Result<Pin<KBox<Snap>>, SnapInitError> {
        let geometry = a.store.geometry();
        let (nc, np) = table_sizes(a.cow.nr_sectors(), geometry.shift(), MAX_TABLE_BYTES / 8);
        // The origin's chunks, a partial last one included.
        let origin_chunks =
            geometry.chunk_of(a.origin.nr_sectors() + u64::from(geometry.sectors()) - 1);
        let shift = complete_hash_shift(origin_chunks, nc as u64);
        let complete =
            new_table(nc, shift, TableKind::Complete).map_err(|_| SnapInitError::HashTables)?;
        let pending =
            new_table(np, 0, TableKind::Pending).map_err(|_| SnapInitError::HashTables)?;
        let mut tracked =
            KVec::with_capacity(TRACK_SLOTS, GFP_KERNEL).map_err(|_| SnapInitError::HashTables)?;
        for _ in 0..TRACK_SLOTS {
            tracked
                .push(AtomicU32::new(0), GFP_KERNEL)
                .map_err(|_| SnapInitError::HashTables)?;
        }
        let kcopyd = Kcopyd::new().map_err(SnapInitError::Kcopyd)?;
        let pending_pool = Mempool::new(MIN_IOS).map_err(|_| SnapInitError::Mempool)?;
        let exc = KBox::pin_init(
            pin_init!(Exceptions {
                complete,
                alloc <- new_spinlock!(
                    Allocation {
                        store: a.store,
                        order: CompletionOrder::new(),
                    },
                    "dm_snap_rs:pe_allocation"
                ),
                geometry,
                pio: a.pio,
            }),
            GFP_KERNEL,
        )
        .map_err(|_| SnapInitError::HashTables)?;
        let state = State {
            valid: true,
            active: false,
            overflowed: false,
            merge_failed: false,
            handover_dest: false,
            exc,
        };
        KBox::pin_init(
            pin_init!(Snap {
                kcopyd,
                state <- new_rwsem!(state, "dm_snap_rs:snap"),
                valid_hint: AtomicBool::new(true),
                pending,
                pending_pool,
                pending_count: AtomicUsize::new(0),
                tracked,
                in_progress: AtomicU32::new(0),
                registered: AtomicBool::new(false),
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
    pub(crate) fn register(self: Pin<&Self>) -> Result<bool, HandoverError> {
        let p = NonNull::from(self.get_ref());
        let dest = Registry::get().register(p, self.origin.raw_bdev())?;
        self.registered.store(true, Ordering::Release);
        Ok(dest)
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
    pub(crate) fn lock_chunk<'a>(&'a self, st: &'a State, chunk: Chunk) -> ChunkLocks<'a> {
        ChunkLocks(st.exc.complete.lock_pair(&self.pending, chunk))
    }

    /// Locks the complete bucket of `chunk` only; `st` is the state, locked.
    pub(crate) fn lock_complete<'a>(&'a self, st: &'a State, chunk: Chunk) -> CompleteLock<'a> {
        CompleteLock(st.exc.complete.lock(chunk))
    }

    /// More copies in flight than `snapshot_cow_threshold`.
    pub(crate) fn over_cow_threshold(&self) -> bool {
        let limit = crate::dm::cow_threshold();
        self.in_progress.load(Ordering::Relaxed) > limit
    }

    /// Throttles a snapshot write (`wait_for_in_progress(s, false)`).
    pub(crate) fn throttle(&self) {
        let reg = Registry::get();
        while self.over_cow_threshold() {
            let gen = reg.wake_generation();
            if !self.over_cow_threshold() {
                break;
            }
            reg.wait_for_wake(gen);
        }
    }

    fn account_start_copy(&self) {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
    }

    fn account_end_copy(&self) {
        self.in_progress.fetch_sub(1, Ordering::Relaxed);
        Registry::get().throttle_wake();
    }

    fn track_slot(&self, chunk: Chunk) -> &AtomicU32 {
        &self.tracked[(chunk as usize) & (TRACK_SLOTS - 1)]
    }

    /// Notes a snapshot read of `chunk` going to the origin (`track_chunk`);
    /// call with the chunk's complete bucket locked (`_lock`), under which
    /// the read found the chunk not copied. Slots are shared by chunks with
    /// the same hash, which can only make a completion wait a little longer.
    pub(crate) fn track(&self, _lock: &CompleteLock<'_>, chunk: Chunk) {
        self.track_slot(chunk).fetch_add(1, Ordering::AcqRel);
    }

    /// Whether a snapshot read that went to the origin may still be reading
    /// `chunk` (or a chunk sharing its slot). Call with the complete bucket
    /// locked: a read tracks itself under that lock, so it either tracked
    /// before, and shows here until it completes, or comes after and finds
    /// the chunk copied.
    fn maybe_tracked(&self, _lock: &CompleteLock<'_>, chunk: Chunk) -> bool {
        self.track_slot(chunk).load(Ordering::Acquire) != 0
    }

    /// That read completed (`stop_tracking_chunk`; IRQ context is fine).
    pub(crate) fn untrack(&self, chunk: Chunk) {
        self.track_slot(chunk).fetch_sub(1, Ordering::AcqRel);
    }

    /// Marks the snapshot invalid (`__invalidate_snapshot`): I/O to it fails
    /// from now on, and a table event tells userspace. Sleeps.
    pub(crate) fn invalidate(&self, nomem: bool) {
        let mut st = self.state.write();
        if !st.valid {
            return;
        }
        if nomem {
            pr_err!("snapshots: Invalidating snapshot: Unable to allocate exception.\n");
        } else {
            pr_err!("snapshots: Invalidating snapshot: Error reading/writing.\n");
        }
        if let Some(p) = st.exc.pio.as_ref() {
            p.drop_snapshot(&self.cow);
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
        pr_err!("snapshots: Cancelling snapshot handover.\n");
    }

    /// A `PO` store is full: writes fail from now on, reads still work.
    pub(crate) fn overflow(&self) {
        let mut st = self.state.write();
        if st.valid && !st.overflowed {
            st.overflowed = true;
            pr_err!("snapshots: Snapshot overflowed: Unable to allocate exception.\n");
        }
    }

    /// Reads a persistent store's exceptions into the complete table and
    /// its allocator (`read_metadata`, at construction); a no-op for `N`.
    pub(crate) fn read_metadata(&self) -> Result {
        let st = self.state.read();
        let Some(pio) = st.exc.pio.as_ref() else {
            return Ok(());
        };
        let mut alloc = match &st.alloc().store {
            Store::Persistent { alloc, .. } => *alloc,
            Store::Transient(_) => return Ok(()),
        };
        let slab = &Registry::get().exceptions;
        pio.read_exceptions(&self.cow, &mut alloc, |old, new| {
            let e = slab.alloc(Exception::new(old, new)).ok_or(ENOMEM)?;
            let mut b = st.exc.complete.lock(old);
            // SAFETY: `e` is fresh; the table owns it unless merged.
            let merged = unsafe { b.insert(e) };
            drop(b);
            if let Some(m) = merged {
                // SAFETY: from this slab, in no table.
                unsafe { slab.free(m) };
            }
            Ok(())
        })?;
        if let Store::Persistent { alloc: a, .. } = &mut st.alloc().store {
            *a = alloc;
        }
        Ok(())
    }

    /// Writes the header and first area of a new persistent COW.
    pub(crate) fn init_new_cow(&self) -> Result {
        let st = self.state.read();
        match st.exc.pio.as_ref() {
            Some(p) => p.init_new(&self.cow),
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

    /// A new pending exception for `chunk`, from the mempool; may sleep, so
    /// call with no bucket lock held.
    fn alloc_pending(&self, geometry: ChunkGeometry, chunk: Chunk) -> NonNull<Pending> {
        self.pending_count.fetch_add(1, Ordering::AcqRel);
        self.pending_pool.alloc(self.new_pending(geometry, chunk))
    }

    /// A pending exception of `chunk`, not started, no bios, no COW chunk
    /// yet (`insert_pending` assigns it).
    fn new_pending(&self, geometry: ChunkGeometry, chunk: Chunk) -> Pending {
        Pending {
            e: Exception::new(chunk, 0),
            snap: NonNull::from(self),
            geometry,
            started: false,
            origin_bios: BioList::new(),
            snapshot_bios: BioList::new(),
            full_bio: None,
            order: OrderLink::new(),
        }
    }

    /// The same without sleeping, under the bucket locks; `None` when no
    /// memory is at hand (then drop the locks and use `alloc_pending`).
    fn try_alloc_pending(&self, geometry: ChunkGeometry, chunk: Chunk) -> Option<NonNull<Pending>> {
        self.pending_count.fetch_add(1, Ordering::AcqRel);
        let pe = self
            .pending_pool
            .try_alloc(self.new_pending(geometry, chunk));
        if pe.is_none() {
            self.pending_count.fetch_sub(1, Ordering::AcqRel);
        }
        pe
    }

    /// Frees an unused or finished pending exception; does not sleep.
    ///
    /// # Safety
    ///
    /// `pe` came from `alloc_pending` of this snapshot, is in no table, and
    /// is not used afterwards.
    unsafe fn free_pending(&self, pe: NonNull<Pending>) {
        // SAFETY: contract.
        unsafe { self.pending_pool.free(pe) };
        self.pending_count.fetch_sub(1, Ordering::AcqRel);
    }

    /// The pending exception of `chunk`, if any (buckets locked).
    fn lookup_pending(locks: &ChunkLocks<'_>, chunk: Chunk) -> Option<NonNull<Pending>> {
        locks.pending().lookup(chunk).map(|e| e.cast::<Pending>())
    }

    /// The COW chunk of `chunk` if it is already copied (buckets locked).
    pub(crate) fn lookup_complete(locks: &ChunkLocks<'_>, chunk: Chunk) -> Option<Chunk> {
        remapped(locks.complete(), chunk)
    }

    /// Allocates a COW chunk for `pe` and inserts it in the pending table
    /// (`__insert_pending_exception`); `None` (and `pe` freed) when the COW
    /// is full.
    fn insert_pending(
        &self,
        st: &State,
        locks: &mut ChunkLocks<'_>,
        pe: NonNull<Pending>,
    ) -> Option<NonNull<Pending>> {
        let mut a = st.alloc();
        let Some(c) = a.store.prepare_exception() else {
            drop(a);
            // SAFETY: never inserted.
            unsafe { self.free_pending(pe) };
            return None;
        };
        // SAFETY: `pe` is ours and in no table or order yet.
        unsafe { (*pe.as_ptr()).e.new_chunk = c };
        if let Some(p) = st.exc.pio.as_ref() {
            // SAFETY: `pe` is in no order; it stays valid until
            // `pending_complete` frees it, after `copy_done` took it out of
            // the order.
            unsafe { a.order.push(pe) };
            p.prepared();
        }
        drop(a);
        // SAFETY: `pe` is in no table; it stays valid until
        // `pending_complete` removes it and frees it.
        let _ = unsafe { locks.pending_mut().insert(pe.cast::<Exception>()) };
        Some(pe)
    }

    /// Finds or creates the pending exception of `chunk` for a write that
    /// found no completed exception under `locks` (`__find_pending_exception`
    /// and its callers). A new one comes from the mempool without sleeping,
    /// under the locks, when memory is at hand; else, as upstream always
    /// does, with the buckets unlocked, and both tables are checked again.
    /// `Ok(None)` means the chunk got copied meanwhile; `Err` that the COW
    /// is full.
    pub(crate) fn find_or_make_pending<'a>(
        &'a self,
        st: &'a State,
        mut locks: ChunkLocks<'a>,
        chunk: Chunk,
    ) -> (ChunkLocks<'a>, Result<Option<NonNull<Pending>>, ()>) {
        if let Some(pe) = Self::lookup_pending(&locks, chunk) {
            return (locks, Ok(Some(pe)));
        }
        // No unlock since the caller's lookups: nothing changed for this
        // chunk, the new exception goes straight in.
        if let Some(pe) = self.try_alloc_pending(st.geometry(), chunk) {
            let r = self.insert_pending(st, &mut locks, pe).map(Some).ok_or(());
            return (locks, r);
        }
        drop(locks);
        let pe = self.alloc_pending(st.geometry(), chunk);
        let mut locks = self.lock_chunk(st, chunk);
        if let Some(raced) = Self::lookup_pending(&locks, chunk) {
            // SAFETY: never inserted.
            unsafe { self.free_pending(pe) };
            return (locks, Ok(Some(raced)));
        }
        if locks.complete().lookup(chunk).is_some() {
            // SAFETY: never inserted.
            unsafe { self.free_pending(pe) };
            return (locks, Ok(None));
        }
        let r = self.insert_pending(st, &mut locks, pe).map(Some).ok_or(());
        (locks, r)
    }

    /// COW chunk of a pending exception.
    pub(crate) fn pending_cow_chunk(pe: NonNull<Pending>) -> Chunk {
        // SAFETY: a pending exception is valid until completed; `new_chunk`
        // is set before it is published and never changes.
        unsafe { (*pe.as_ptr()).e.new_chunk }
    }

    /// Queues a snapshot write on `pe`; returns true if the caller must now
    /// start the copy (it was not started yet). Buckets locked.
    pub(crate) fn queue_snapshot_bio(
        _locks: &ChunkLocks<'_>,
        pe: NonNull<Pending>,
        bio: OwnedBio,
    ) -> bool {
        // SAFETY: `pe`'s queue fields are protected by the bucket locks the
        // caller holds (`_locks`).
        let pe = unsafe { &mut *pe.as_ptr() };
        pe.snapshot_bios.push(bio);
        !core::mem::replace(&mut pe.started, true)
    }

    /// Claims `pe` for a whole-chunk write when no copy started yet
    /// (`!pe->started && io_overlaps_chunk`). Buckets locked.
    pub(crate) fn claim_for_full_write(_locks: &ChunkLocks<'_>, pe: NonNull<Pending>) -> bool {
        // SAFETY: as in `queue_snapshot_bio`.
        let pe = unsafe { &mut *pe.as_ptr() };
        !core::mem::replace(&mut pe.started, true)
    }

    /// One snapshot's part of an origin write to `sector` (`__origin_write`
    /// loop body): makes sure the chunk is copied, queues `bio` on the first
    /// pending exception it needs, starts copies. Holds the registry lock.
    pub(crate) fn origin_write_one(
        &self,
        sector: u64,
        bio: &mut Option<OwnedBio>,
        start_last: &mut Option<NonNull<Pending>>,
    ) {
        if sector >= self.ti.table_size() {
            return;
        }
        let state = self.state.read();
        let chunk = state.geometry().chunk_of(sector);
        let c = self.lock_complete(&state, chunk);
        if !state.valid || !state.active {
            return;
        }
        // Copied, and no snapshot read still reading the origin chunk: the
        // write may go on, and the pending bucket need not be locked (the
        // rewrite of a copied chunk, the common case). A pending exception
        // that still exists for a copied chunk (`pending_complete` waiting
        // for such reads) shows as a tracked read here, and so does not
        // escape the check below.
        let copied = c.lookup(chunk).is_some();
        if copied && !self.maybe_tracked(&c, chunk) {
            return;
        }
        // The complete bucket stays locked: `copied` still holds.
        let locks = c.with_pending(self, chunk);
        if copied && Self::lookup_pending(&locks, chunk).is_none() {
            return;
        }
        let (locks, r) = self.find_or_make_pending(&state, locks, chunk);
        let pe = match r {
            Ok(Some(pe)) => pe,
            Ok(None) => return,
            Err(()) => {
                drop(locks);
                drop(state);
                self.invalidate(true);
                return;
            }
        };
        // SAFETY: `pe`'s fields are protected by the bucket locks we hold.
        let p = unsafe { &mut *pe.as_ptr() };
        let mut start_now = false;
        if let Some(b) = bio.take() {
            p.origin_bios.push(b);
            if !core::mem::replace(&mut p.started, true) {
                *start_last = Some(pe);
            }
        } else if !core::mem::replace(&mut p.started, true) {
            start_now = true;
        }
        drop(locks);
        drop(state);
        if start_now {
            // SAFETY: we marked it started; it completes only after its copy.
            unsafe { Self::start_copy(pe) };
        }
    }

    /// Copies the origin chunk of `pe` to its COW chunk (`start_copy`).
    ///
    /// # Safety
    ///
    /// `pe` is a pending exception the caller just marked started (so it is
    /// valid, and nobody else starts it); call with no bucket lock held.
    pub(crate) unsafe fn start_copy(pe: NonNull<Pending>) {
        // SAFETY: contract; `snap` outlives its pending exceptions (dtr waits).
        let (s, old, new, g) = unsafe {
            let p = pe.as_ref();
            (p.snap.as_ref(), p.e.old_chunk, p.e.new_chunk, p.geometry)
        };
        let count = g.copy_len(old, s.origin.nr_sectors());
        let src = Region {
            dev: &s.origin,
            sector: g.sector_of(old),
            count,
        };
        let dest = Region {
            dev: &s.cow,
            sector: g.sector_of(new),
            count,
        };
        s.account_start_copy();
        // SAFETY: `pe` stays valid until its `done` (it is freed only in
        // `pending_complete`, which that call leads to), and nobody else
        // starts it (our contract).
        unsafe { s.kcopyd.copy(&src, &dest, pe) };
    }

    /// Writes a whole-chunk snapshot write straight to the COW instead of
    /// copying the origin chunk first (`start_full_bio`).
    ///
    /// # Safety
    ///
    /// As [`Snap::start_copy`]; `bio` already points at the COW chunk.
    pub(crate) unsafe fn start_full_bio(pe: NonNull<Pending>, mut bio: OwnedBio) {
        // SAFETY: contract.
        let s = unsafe { pe.as_ref().snap.as_ref() };
        s.account_start_copy();
        // SAFETY: as in `start_copy`: `pe` lives until its `done`.
        let full = unsafe { s.kcopyd.redirect_completion(&mut bio, pe) };
        // SAFETY: we started `pe`, so nobody else touches `full_bio` until
        // its completion, which cannot run before the bio is submitted below.
        unsafe { (*pe.as_ptr()).full_bio = Some(full) };
        bio.submit();
    }

    /// Zeroes a whole copied chunk for a discard (`zero_exception`); the
    /// bio, already pointing at the COW chunk, completes when it is done.
    pub(crate) fn zero_chunk(&self, mut bio: OwnedBio, chunk_sectors: u32) {
        let region = Region {
            dev: &self.cow,
            sector: bio.sector(),
            count: u64::from(chunk_sectors),
        };
        self.account_start_copy();
        bio.set_private(NonNull::from(self).as_ptr().cast());
        let job = ZeroJob::from_bio(bio);
        // SAFETY: the job is the bio itself, handed over to kcopyd: nothing
        // else ends it until `ZeroJob::done` takes it back.
        unsafe { self.kcopyd.zero(&region, job) };
    }

    /// A copy finished (`copy_callback`). The transient store completes it
    /// at once; the persistent store completes it and the copies that
    /// finished before it and waited for it, in allocation order (see
    /// [`Allocation`]). Runs in kcopyd's worker, one call at a time per
    /// snapshot, so what one call takes out of the order is completed before
    /// the next call takes anything.
    fn copy_done(&self, pe: NonNull<Pending>, ok: bool) {
        // No handover happens while a pending exception exists (both tables
        // are quiesced for it), so the store cannot change while the taken
        // ones are completed; the state lock must not be held across
        // `pending_complete`, which takes it again.
        let st = self.state.read();
        match st.exc.pio.as_ref().map(|p| NonNull::from(&**p)) {
            None => {
                drop(st);
                self.pending_complete(pe, ok);
            }
            Some(pio) => {
                let ready = {
                    let mut a = st.alloc();
                    // SAFETY: every persistent pending exception was pushed
                    // in `insert_pending` and leaves the order only here.
                    unsafe { a.order.finish(pe, ok) };
                    a.order.take_ready()
                };
                drop(st);
                for (q, ok) in ready {
                    // SAFETY: read under the state lock while `q` was
                    // pending; the store stays while it is (see above).
                    self.commit(unsafe { pio.as_ref() }, q, ok);
                }
            }
        }
        self.account_end_copy();
    }

    /// Commits the exception of a finished copy to the persistent store and
    /// completes what the commit made durable (`complete_exception` ->
    /// `commit_exception` -> `pending_complete`).
    fn commit(&self, p: &PersistentIo, pe: NonNull<Pending>, ok: bool) {
        // SAFETY: `pe` is live until `pending_complete` frees it.
        let (old, new) = unsafe { (pe.as_ref().e.old_chunk, pe.as_ref().e.new_chunk) };
        if let Some((done, valid)) = p.commit(&self.cow, pe, old, new, ok) {
            for &q in done.iter() {
                self.pending_complete(q, valid);
            }
            p.recycle(done);
        }
    }

    fn pending_complete(&self, pe: NonNull<Pending>, success: bool) {
        // SAFETY: `pe` is valid until we free it below; its chunk fields
        // never change after insertion.
        let (old, new) = unsafe { (pe.as_ref().e.old_chunk, pe.as_ref().e.new_chunk) };
        let mut error = !success;
        let mut merged = None;
        let e = if error {
            self.invalidate(false);
            None
        } else {
            let e = Registry::get().exceptions.alloc(Exception::new(old, new));
            if e.is_none() {
                self.invalidate(true);
                error = true;
            }
            e
        };
        // The bucket guards borrow the tables the state lock protects, so
        // the lock is held (for read) while they are; when tracked reads
        // must drain, both are dropped before sleeping, as upstream drops
        // `s->lock` before `__check_for_conflicting_io`, and retaken to
        // remove the pending exception. No handover can swap the tables
        // meanwhile: it waits for every pending exception.
        let must_wait = {
            let state = self.state.read();
            let mut locks = self.lock_chunk(&state, old);
            let mut wait = false;
            if let Some(e) = e {
                if !state.valid {
                    merged = Some(e);
                    error = true;
                } else {
                    // SAFETY: `e` is fresh and ours; the table owns it from
                    // now on (or hands it back merged, to free after
                    // unlocking).
                    merged = unsafe { locks.complete_mut().insert(e) };
                    // Snapshot reads of this chunk go to the COW from now
                    // on; the pending entry keeps origin writes out
                    // meanwhile.
                    wait = self.track_slot(old).load(Ordering::Acquire) != 0;
                }
            }
            if !wait {
                locks.pending_mut().remove(pe.cast::<Exception>());
            }
            wait
        };
        if must_wait {
            while self.track_slot(old).load(Ordering::Acquire) != 0 {
                crate::dm::fsleep_us(1000);
            }
            let state = self.state.read();
            let mut locks = self.lock_chunk(&state, old);
            locks.pending_mut().remove(pe.cast::<Exception>());
        }
        if let Some(e) = merged {
            // SAFETY: came from the registry's slab and is in no table.
            unsafe { Registry::get().exceptions.free(e) };
        }
        // SAFETY: removed from the table: we are the only user of `pe` now.
        let p = unsafe { &mut *pe.as_ptr() };
        let mut snapshot_bios = p.snapshot_bios.take();
        let mut origin_bios = p.origin_bios.take();
        // SAFETY: the copy (or full write) finished before this callback.
        let full = p.full_bio.take().map(|f| unsafe { f.finish() });
        if let Some(f) = full {
            f.end(!error);
        }
        while let Some(b) = snapshot_bios.pop() {
            if error {
                b.end(false);
            } else {
                b.submit();
            }
        }
        while let Some(b) = origin_bios.pop() {
            if let Some(b) = do_origin(self.origin.raw_bdev(), b, false) {
                b.submit();
            }
        }
        // SAFETY: unlinked and drained above.
        unsafe { self.free_pending(pe) };
    }
}

/// A discard zeroing its COW chunk: the bio itself is the kcopyd job, its
/// snapshot in `bi_private`, as upstream does.
#[repr(transparent)]
struct ZeroJob(kernel::types::Opaque<kernel::bindings::bio>);

impl ZeroJob {
    fn from_bio(bio: OwnedBio) -> NonNull<ZeroJob> {
        bio.into_job().cast::<ZeroJob>()
    }
}

impl CopyJob for ZeroJob {
    unsafe fn done(job: NonNull<Self>, ok: bool) {
        // SAFETY: the job is the bio handed over in `zero_chunk`, whose
        // completion we own again now; its private field is the snapshot,
        // alive while its copies are in flight.
        let bio = unsafe { OwnedBio::from_job(job.cast()) };
        // SAFETY: see above.
        let s = unsafe { &*bio.private().cast::<Snap>() };
        s.account_end_copy();
        bio.end(ok);
    }
}

impl CopyJob for Pending {
    unsafe fn done(job: NonNull<Self>, ok: bool) {
        // SAFETY: the job is a live pending exception; its snapshot outlives it.
        let s = unsafe { job.as_ref().snap.as_ref() };
        s.copy_done(job, ok);
    }
}

#[pinned_drop]
impl PinnedDrop for Snap {
    fn drop(self: Pin<&mut Self>) {
        // `snapshot_dtr`: no new origin-triggered exceptions after
        // unregistering; then wait for the pending ones to finish. The
        // fields then drop in order: kcopyd (waits until every callback
        // returned), then the state with its store, the tables...
        if self.registered.load(Ordering::Acquire) {
            let reg = Registry::get();
            {
                let o = reg.read();
                let (src, dest) = o.sharing_cow(&self);
                if let (Some(src), Some(dest)) = (src, dest) {
                    if core::ptr::eq(src, &*self) {
                        dest.cancel_handover();
                    }
                }
            }
            reg.unregister(NonNull::from(&*self));
        }
        while self.pending_count.load(Ordering::Acquire) != 0 {
            crate::dm::fsleep_us(1000);
        }
    }
}
