//! The global origin registry: how an origin write finds every snapshot of
//! its device, and how a resuming snapshot finds its origin's mapped device
//! (upstream's `_origins`, `_dm_origins` and `_origins_lock`).
//!
//! Lock order (outer to inner), as upstream's:
//!
//! ```text
//! Registry::origins (rwsem)
//!   -> Snap::state (rwsem)
//!        -> complete-table bucket bit lock -> pending-table bucket bit lock
//!             -> Exceptions::alloc (spinlock: pe_allocation_lock; the
//!                store's allocation, reached by `Snap::alloc`)
//! leaves: the throttle lock
//! ```
//!
//! The registry holds a reference to each registered snapshot; a snapshot
//! unregisters itself (under the write lock) in its target's teardown.

use super::copy::SharedCopy;
use super::cow::Snap;
use crate::dm::mempool::Slab;
use crate::dm::{BdevKey, OwnedBio, TargetRef};
use crate::logic::exception_table::Exception;
use crate::new_rwsem;
use crate::sync::{Global, KVecExt, RwSem};
use core::sync::atomic::{AtomicUsize, Ordering};
use kernel::new_condvar;
use kernel::new_spinlock;
use kernel::prelude::*;
use kernel::sync::{Arc, CondVar, SpinLock};

/// The snapshots of one origin device, largest chunk size first.
pub(crate) struct OriginSnaps {
    bdev: BdevKey,
    snaps: KVec<Arc<Snap>>,
}

impl OriginSnaps {
    /// Each snapshot (while the registry lock is held, which the borrow of
    /// `self`, from [`Origins`], stands for).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Snap>> {
        self.snaps.iter()
    }
}

/// A resumed `snapshot-origin` target of a device.
struct DmOrigin {
    bdev: BdevKey,
    ti: TargetRef,
}

/// Everything the registry lock protects.
#[derive(Default)]
pub(crate) struct Origins {
    origins: KVec<OriginSnaps>,
    dm_origins: KVec<DmOrigin>,
    /// Constructed origin targets: `dm_origins` keeps room for all of them,
    /// so that resume, which may run under memory pressure with devices
    /// suspended, never allocates.
    origin_targets: usize,
}

impl Origins {
    /// The snapshots of origin `bdev`, if any.
    pub(crate) fn find(&self, bdev: BdevKey) -> Option<&OriginSnaps> {
        self.origins.iter().find(|o| o.bdev == bdev)
    }

    /// Each registered snapshot of origin `bdev`.
    pub(crate) fn snaps(&self, bdev: BdevKey) -> impl Iterator<Item = &Snap> {
        self.find(bdev)
            .into_iter()
            .flat_map(|o| o.iter().map(|s| &**s))
    }

    /// The snapshots sharing `snap`'s origin and COW, itself included:
    /// the active one (the handover source) and the inactive one (the
    /// destination), as `__find_snapshots_sharing_cow`.
    pub(crate) fn sharing_cow(&self, snap: &Snap) -> (Option<&Snap>, Option<&Snap>) {
        let (mut src, mut dest) = (None, None);
        for s in self.snaps(snap.origin.key()) {
            if !s.cow.same_bdev(&snap.cow) {
                continue;
            }
            if s.state.read().active {
                src = Some(s);
            } else {
                dest = Some(s);
            }
        }
        (src, dest)
    }

    /// The mapped device of a resumed origin target on `bdev`.
    pub(crate) fn dm_origin(&self, bdev: BdevKey) -> Option<&TargetRef> {
        self.dm_origins
            .iter()
            .find(|o| o.bdev == bdev)
            .map(|o| &o.ti)
    }

    /// Smallest chunk size of the snapshots of `bdev` in sectors, 2^31 if
    /// none (`__minimum_chunk_size`).
    pub(crate) fn minimum_chunk_size(&self, bdev: BdevKey) -> u32 {
        self.snaps(bdev)
            .map(|s| s.chunk_sectors())
            .filter(|&c| c != 0)
            .fold(1 << 31, u32::min)
    }
}

/// Why a snapshot could not be registered.
pub(crate) enum HandoverError {
    /// Out of memory for the origin's list.
    NoMem,
    /// A third table on one COW, or a second handover destination.
    Pairing,
    /// A second `snapshot-merge` on one origin.
    AlreadyMerging,
    /// A merge of a store that cannot merge (transient).
    CannotMerge,
}

/// The registry: one per module.
#[pin_data]
pub(crate) struct Registry {
    #[pin]
    origins: RwSem<Origins>,
    /// COW throttle waiters sleep here; see [`Registry::wait_for_wake`].
    #[pin]
    throttle_lock: SpinLock<()>,
    #[pin]
    throttle_wait: CondVar,
    throttle_waiters: AtomicUsize,
    throttle_gen: AtomicUsize,
    /// Completed exceptions of every snapshot (upstream's `exception_cache`).
    pub(crate) exceptions: Slab<Exception>,
}

/// The module's registry: installed at init, dropped at exit after the
/// targets are unregistered (`rust/dm_snap.rs`).
pub(crate) static REGISTRY: Global<Registry> = Global::new();

impl Registry {
    /// Creates the module's registry and makes it reachable from the
    /// targets ([`Registry::get`]).
    pub(crate) fn install() -> Result {
        let exceptions = Slab::new(kernel::c_str!("dm_snap_rs_exception"))?;
        let r = KBox::pin_init(
            pin_init!(Registry {
                origins <- new_rwsem!(Origins::default(), "dm_snap_rs:origins"),
                throttle_lock <- new_spinlock!((), "dm_snap_rs:throttle"),
                throttle_wait <- new_condvar!("dm_snap_rs:throttle_wait"),
                throttle_waiters: AtomicUsize::new(0),
                throttle_gen: AtomicUsize::new(0),
                exceptions,
            }),
            GFP_KERNEL,
        )?;
        REGISTRY.install(r)
    }

    /// The module's registry (targets take it in their constructor and
    /// keep it: it outlives them).
    pub(crate) fn get() -> Option<&'static Registry> {
        REGISTRY.get()
    }

    /// Read access (`down_read(&_origins_lock)`).
    pub(crate) fn read(&self) -> crate::sync::rwsem::ReadGuard<'_, Origins> {
        self.origins.read()
    }

    /// Room for one more snapshot of origin `bdev`, allocated before the
    /// write lock is taken (see [`Registry::register`]).
    fn room_for(&self, bdev: BdevKey) -> Result<Room, HandoverError> {
        let (origins, snaps) = {
            let o = self.origins.read();
            (o.origins.len(), o.find(bdev).map_or(0, |l| l.snaps.len()))
        };
        Ok(Room {
            origins: KVec::with_capacity(origins + 1, GFP_KERNEL)
                .map_err(|_| HandoverError::NoMem)?,
            snaps: KVec::with_capacity(snaps + 1, GFP_KERNEL).map_err(|_| HandoverError::NoMem)?,
        })
    }

    /// Adds `snap` to its origin's list, sorted by chunk size, largest first
    /// (`register_snapshot`). If an active snapshot of the same origin uses
    /// the same COW, `snap` becomes its handover destination: `Ok(true)`.
    /// A third table on one COW, or a second destination, is refused.
    ///
    /// Nothing is allocated under the write lock (upstream allocates before
    /// `down_write(&_origins_lock)`): direct reclaim that writes back
    /// through a snapshotted origin waits in `do_origin` for this lock's
    /// readers' side, so it must never wait behind this writer. The room is
    /// made first; if the lists grew past it meanwhile, the lock is dropped
    /// and room made again.
    pub(crate) fn register(&self, snap: &Arc<Snap>) -> Result<bool, HandoverError> {
        let bdev = snap.origin.key();
        loop {
            let room = self.room_for(bdev)?;
            if let Some(r) = self.try_register(snap, bdev, room)? {
                return Ok(r);
            }
        }
    }

    /// [`Registry::register`] with the room made: `Ok(None)` if the lists
    /// outgrew it before the lock was taken.
    fn try_register(
        &self,
        snap: &Arc<Snap>,
        bdev: BdevKey,
        room: Room,
    ) -> Result<Option<bool>, HandoverError> {
        let me = &**snap;
        let mut o = self.origins.write();
        let mut sharing = 0;
        let mut dest = false;
        for s in o.snaps(bdev) {
            if s.cow.same_bdev(&me.cow) {
                sharing += 1;
                dest |= !s.state.read().active;
            }
        }
        if sharing >= 2 || dest {
            return Err(HandoverError::Pairing);
        }
        let is_dest = sharing == 1;
        // `__validate_exception_handover`: one merging snapshot per origin,
        // and only from a store that can merge.
        if is_dest && me.merge {
            if o.snaps(bdev).any(|s| s.merge) {
                return Err(HandoverError::AlreadyMerging);
            }
            let transient = o
                .snaps(bdev)
                .filter(|s| s.cow.same_bdev(&me.cow))
                .any(|s| s.state.read().io().is_none());
            if transient {
                return Err(HandoverError::CannotMerge);
            }
        }
        let Room { origins, snaps } = room;
        let idx = match o.origins.iter().position(|e| e.bdev == bdev) {
            Some(i) => {
                if !fits_or_moved(&mut o.origins[i].snaps, snaps) {
                    return Ok(None);
                }
                i
            }
            None => {
                if !fits_or_moved(&mut o.origins, origins) {
                    return Ok(None);
                }
                // The room's list, empty, with room for this snapshot.
                push_in_room(&mut o.origins, OriginSnaps { bdev, snaps })?;
                o.origins.len() - 1
            }
        };
        if is_dest {
            me.state.write().handover_dest = true;
        }
        let list = &mut o.origins[idx].snaps;
        push_in_room(list, snap.clone())?;
        sort_by_chunk(list);
        Ok(Some(is_dest))
    }

    /// Re-sorts after a snapshot learnt its chunk size (`reregister_snapshot`).
    pub(crate) fn resort(&self, bdev: BdevKey) {
        let mut o = self.origins.write();
        if let Some(e) = o.origins.iter_mut().find(|e| e.bdev == bdev) {
            sort_by_chunk(&mut e.snaps);
        }
    }

    /// Removes `snap`; after this returns no origin write can reach it.
    pub(crate) fn unregister(&self, snap: &Snap) {
        let mut o = self.origins.write();
        for i in 0..o.origins.len() {
            let list = &mut o.origins[i].snaps;
            if let Some(j) = list.iter().position(|p| core::ptr::eq(&**p, snap)) {
                // Not the last reference: the caller holds one.
                drop(list.remove_at(j));
                if list.is_empty() {
                    drop(o.origins.remove_at(i));
                }
                return;
            }
        }
    }

    /// Makes room for one more origin target's entry (origin `ctr`).
    pub(crate) fn reserve_dm_origin(&self) -> Result {
        let mut o = self.origins.write();
        let want = o.origin_targets + 1;
        let len = o.dm_origins.len();
        if want > len {
            o.dm_origins.reserve(want - len, GFP_KERNEL)?;
        }
        o.origin_targets = want;
        Ok(())
    }

    /// An origin target is gone (origin `dtr`).
    pub(crate) fn release_dm_origin(&self) {
        let mut o = self.origins.write();
        o.origin_targets = o.origin_targets.saturating_sub(1);
    }

    /// Records a resumed origin target (`origin_resume`); returns the split
    /// boundary for its writes. Never allocates (see `reserve_dm_origin`).
    pub(crate) fn add_dm_origin(&self, bdev: BdevKey, ti: TargetRef) -> Result<u32> {
        let mut o = self.origins.write();
        if !o.dm_origins.iter().any(|d| d.ti == ti) {
            o.dm_origins.push(DmOrigin { bdev, ti }, GFP_NOWAIT)?;
        }
        Ok(o.minimum_chunk_size(bdev))
    }

    /// Forgets a suspended origin target (`origin_postsuspend`).
    pub(crate) fn remove_dm_origin(&self, ti: TargetRef) {
        let mut o = self.origins.write();
        if let Some(i) = o.dm_origins.iter().position(|d| d.ti == ti) {
            let _ = o.dm_origins.remove_at(i);
        }
    }

    /// The current wake generation: read it under the lock that made the
    /// caller decide to wait, then [`Registry::wait_for_wake`] with it.
    pub(crate) fn wake_generation(&self) -> usize {
        self.throttle_gen.load(Ordering::SeqCst)
    }

    /// Sleeps until some snapshot finishes a copy after generation `gen`
    /// (upstream's `wait_for_in_progress` sleep). The caller holds no lock
    /// and re-evaluates everything afterwards. Waiters count themselves
    /// before checking the generation, and wakers bump it before checking
    /// for waiters, so a wakeup cannot fall between check and sleep.
    pub(crate) fn wait_for_wake(&self, gen: usize) {
        let mut t = self.throttle_lock.lock();
        self.throttle_waiters.fetch_add(1, Ordering::SeqCst);
        if self.throttle_gen.load(Ordering::SeqCst) == gen {
            self.throttle_wait.wait(&mut t);
        }
        self.throttle_waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// A copy finished: wake the throttled writers to re-check.
    pub(crate) fn throttle_wake(&self) {
        self.throttle_gen.fetch_add(1, Ordering::SeqCst);
        if self.throttle_waiters.load(Ordering::SeqCst) != 0 {
            let _t = self.throttle_lock.lock();
            self.throttle_wait.notify_all();
        }
    }
}

/// Vectors allocated before [`Registry::register`] takes the lock.
struct Room {
    origins: KVec<OriginSnaps>,
    snaps: KVec<Arc<Snap>>,
}

/// True if `v` can take one more element without allocating: it has room,
/// or `room` (empty) is big enough and takes `v`'s elements, in order.
fn fits_or_moved<T>(v: &mut KVec<T>, mut room: KVec<T>) -> bool {
    if v.len() < v.capacity() {
        return true;
    }
    if room.capacity() <= v.len() {
        return false;
    }
    core::mem::swap(v, &mut room);
    for x in room {
        // Cannot fail: `v` has the capacity, so nothing is allocated.
        let _ = v.push(x, GFP_NOWAIT);
    }
    true
}

/// Pushes into a vector [`fits_or_moved`] made room in: never allocates.
fn push_in_room<T>(v: &mut KVec<T>, x: T) -> Result<(), HandoverError> {
    v.push(x, GFP_NOWAIT).map_err(|_| HandoverError::NoMem)
}

fn sort_by_chunk(list: &mut KVec<Arc<Snap>>) {
    // Insertion sort: lists are a handful long. Largest chunk first.
    for i in 1..list.len() {
        let mut j = i;
        while j > 0 && list[j - 1].chunk_sectors() < list[j].chunk_sectors() {
            list.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// An origin write: copy the chunk in every snapshot that still shares it,
/// queueing `bio` until they all have (`do_origin`). Returns the bio when
/// it can go to the origin now. `limit` applies the COW throttle (writes
/// through the origin target; not retries).
pub(crate) fn do_origin(
    reg: &Registry,
    bdev: BdevKey,
    bio: OwnedBio,
    limit: bool,
) -> Option<OwnedBio> {
    loop {
        let origins = reg.read();
        // One registry lookup per write, as upstream's `__lookup_origin`.
        let Some(o) = origins.find(bdev) else {
            return Some(bio);
        };
        // As `Snap::throttle`: the generation is read before the check
        // that decides to sleep, so a copy finishing in between bumps it
        // and the sleep does not happen (read after, the wakeup could be
        // lost with no copy left to send another).
        if limit && o.iter().any(|s| s.over_cow_threshold()) {
            let gen = reg.wake_generation();
            if o.iter().any(|s| s.over_cow_threshold()) {
                drop(origins);
                reg.wait_for_wake(gen);
                continue;
            }
        }
        return origin_write(o, bio);
    }
}

fn origin_write(o: &OriginSnaps, bio: OwnedBio) -> Option<OwnedBio> {
    let sector = bio.sector();
    let mut bio = Some(bio);
    copy_for_write(o, sector, &mut bio);
    bio
}

/// Makes every snapshot of `o` copy the chunk holding `sector` before it is
/// written (`__origin_write`), queueing `bio`, if any, on the first copy it
/// needs; true if a copy of it is in flight there (found or started).
/// Holds the registry lock.
pub(crate) fn copy_for_write(o: &OriginSnaps, sector: u64, bio: &mut Option<OwnedBio>) -> bool {
    // Snapshots are sorted by chunk size, so those that can share a copy
    // (one origin read for all their COWs) come one after another.
    let mut batch = SharedCopy::new();
    let mut last: Option<SharedCopy> = None;
    let mut in_flight = false;
    for s in o.iter() {
        let (busy, created) = Snap::origin_write_one(s, sector, bio);
        in_flight |= busy;
        let Some((t, waits)) = created else {
            continue;
        };
        if let Err(t) = batch.add(t, waits) {
            // It cannot share this batch: it begins the next one.
            let full = core::mem::replace(&mut batch, SharedCopy::of(t, waits));
            start_or_defer(full, &mut last);
        }
    }
    start_or_defer(batch, &mut last);
    // The copy the write waits on starts last, as upstream's
    // `pe_to_start_last`: the others are under way by then.
    if let Some(b) = last {
        b.start();
    }
    in_flight
}

/// Starts `b`, unless the origin write waits on it: that one is kept in
/// `last`, to start after all the others.
fn start_or_defer(b: SharedCopy, last: &mut Option<SharedCopy>) {
    if b.waits() && last.is_none() {
        *last = Some(b);
    } else {
        b.start();
    }
}
