//! Pending exceptions and their copies (upstream's
//! `__find_pending_exception`, `start_copy`, `start_full_bio`,
//! `copy_callback`, `complete_exception` and `pending_complete`): a write
//! to a chunk not yet copied gets a pending exception, its COW chunk is
//! allocated, the origin chunk is copied through dm-kcopyd (or the whole
//! chunk written at once), and on completion the exception moves to the
//! complete table and the writes that waited are released.
//!
//! Nothing sleeps under a bucket lock: a pending exception is allocated
//! from the mempool without sleeping under the locks when memory is at
//! hand, else with the buckets unlocked and both tables looked at again;
//! copies are started, bios submitted and ended, and conflicting reads
//! waited for only with the buckets unlocked.

use super::cow::{Snap, State};
use super::persistent::PersistentIo;
use super::registry::do_origin;
use crate::dm::kcopyd::{CopyJob, MultiCopyJob, Region, ZeroJob, MAX_DESTS};
use crate::dm::{shared_copies, BioList, OwnedBio};
use crate::logic::chunk::{Chunk, ChunkGeometry};
use crate::sync::complete::InsertError;
use crate::sync::tables::{ChunkBuckets, PendingBox, PendingData, Ticket};
use crate::sync::KVecExt;
use kernel::prelude::*;
use kernel::sync::Arc;

/// Pending exceptions reserved in the mempool (upstream's `MIN_IOS`).
pub(crate) const MIN_IOS: i32 = 256;

/// What a pending exception knows from its allocation on.
pub(crate) struct PendingCtx {
    snap: Arc<Snap>,
    geometry: ChunkGeometry,
}

/// The bios waiting for a copy (under the chunk's bucket locks).
pub(crate) struct Pending {
    origin_bios: BioList,
    snapshot_bios: BioList,
}

impl PendingData for Pending {
    type Ctx = PendingCtx;
}

/// A pending exception in flight.
pub(crate) type PendingTicket = Ticket<Pending>;

/// What a write that found no completed exception finds.
pub(crate) enum Found {
    /// A pending exception whose copy is already started, with its COW chunk.
    Pending(Chunk),
    /// A new pending exception: the caller starts its copy.
    Created(PendingTicket),
    /// The chunk got copied while the buckets were unlocked.
    Copied,
    /// The COW is full.
    Full,
}

impl Snap {
    fn new_pending(s: &Arc<Snap>, st: &State) -> (PendingCtx, Pending) {
        let ctx = PendingCtx {
            snap: s.clone(),
            geometry: st.geometry(),
        };
        let data = Pending {
            origin_bios: BioList::new(),
            snapshot_bios: BioList::new(),
        };
        (ctx, data)
    }

    /// Allocates a COW chunk for `pe` and inserts it in the pending table
    /// (`__insert_pending_exception`); [`Found::Full`] (and `pe` freed)
    /// when the COW is full.
    fn insert_pending(
        &self,
        st: &State,
        locks: &mut ChunkBuckets<'_, Pending>,
        mut pe: PendingBox<Pending>,
    ) -> Found {
        let cow_sectors = self.cow.nr_sectors();
        {
            let mut guard = st.alloc();
            let a = &mut *guard;
            let Some(c) = a.store.prepare_exception(st.geometry(), cow_sectors) else {
                return Found::Full;
            };
            pe.set_new_chunk(c);
            if let Some(p) = a.store.io() {
                a.order.push(&mut pe);
                p.prepared();
            }
        }
        match locks.pending_insert(pe) {
            Ok(t) => Found::Created(t),
            Err(_) => {
                crate::dm_err!("pending exception in the wrong bucket\n");
                Found::Full
            }
        }
    }

    /// Finds or creates the pending exception of `chunk` for a write that
    /// found no completed exception under `locks` (`__find_pending_exception`
    /// and its callers). A new one comes from the mempool without sleeping,
    /// under the locks, when memory is at hand; else, as upstream always
    /// does, with the buckets unlocked, and both tables are checked again.
    pub(crate) fn find_or_make_pending<'a>(
        s: &'a Arc<Snap>,
        st: &'a State,
        mut locks: ChunkBuckets<'a, Pending>,
        chunk: Chunk,
    ) -> (ChunkBuckets<'a, Pending>, Found) {
        if let Some((new, _)) = locks.pending_find(chunk) {
            return (locks, Found::Pending(new));
        }
        // No unlock since the caller's lookups: nothing changed for this
        // chunk, the new exception goes straight in.
        let (ctx, data) = Self::new_pending(s, st);
        if let Some(pe) = s.pending.try_alloc(chunk, ctx, data) {
            let r = s.insert_pending(st, &mut locks, pe);
            return (locks, r);
        }
        drop(locks);
        let (ctx, data) = Self::new_pending(s, st);
        let pe = s.pending.alloc(chunk, ctx, data);
        let mut locks = s.lock_chunk(st, chunk);
        if let Some((new, _)) = locks.pending_find(chunk) {
            return (locks, Found::Pending(new));
        }
        if locks.complete_lookup(chunk).is_some() {
            return (locks, Found::Copied);
        }
        let r = s.insert_pending(st, &mut locks, pe);
        (locks, r)
    }

    /// Queues `bio` on the pending exception of `chunk` (an origin write
    /// if `origin`, else a snapshot write); gives it back if there is none.
    pub(crate) fn queue_bio(
        locks: &mut ChunkBuckets<'_, Pending>,
        chunk: Chunk,
        bio: OwnedBio,
        origin: bool,
    ) -> Option<OwnedBio> {
        let Some((_, p)) = locks.pending_find(chunk) else {
            return Some(bio);
        };
        if origin {
            p.origin_bios.push(bio);
        } else {
            p.snapshot_bios.push(bio);
        }
        None
    }

    /// One snapshot's part of an origin write to `sector` (`__origin_write`
    /// loop body): makes sure the chunk is copied and queues `bio` on the
    /// first pending exception it needs. A copy it creates is returned, not
    /// started, with whether `bio` waits on it: the caller starts the copies
    /// of all snapshots together ([`SharedCopy`]). The flag says whether a
    /// copy of the chunk is in flight (found or created): what a merge
    /// waits for. A merging snapshot gets no new exceptions. Holds the
    /// registry lock.
    pub(crate) fn origin_write_one(
        s: &Arc<Snap>,
        sector: u64,
        bio: &mut Option<OwnedBio>,
    ) -> (bool, Option<(PendingTicket, bool)>) {
        if s.merge || sector >= s.ti.table_size() {
            return (false, None);
        }
        let state = s.state.read();
        let chunk = state.geometry().chunk_of(sector);
        let c = s.lock_complete(&state, chunk);
        if !state.valid || !state.active {
            return (false, None);
        }
        // Copied, and no snapshot read still reading the origin chunk: the
        // write may go on, and the pending bucket need not be locked (the
        // rewrite of a copied chunk, the common case). A pending exception
        // that still exists for a copied chunk (`pending_complete` waiting
        // for such reads) shows as a tracked read here, and so does not
        // escape the check below.
        let copied = c.lookup(chunk).is_some();
        if copied && !s.maybe_tracked(&c, chunk) {
            return (false, None);
        }
        // The complete bucket stays locked: `copied` still holds.
        let mut locks = c.with_pending(&s.pending, chunk);
        if copied && locks.pending_find(chunk).is_none() {
            return (false, None);
        }
        let (mut locks, found) = Self::find_or_make_pending(s, &state, locks, chunk);
        match found {
            Found::Copied => (false, None),
            Found::Full => {
                drop(locks);
                drop(state);
                s.invalidate(true);
                (false, None)
            }
            Found::Pending(_) => {
                if let Some(b) = bio.take() {
                    *bio = Self::queue_bio(&mut locks, chunk, b, true);
                }
                (true, None)
            }
            Found::Created(t) => {
                let waits = match bio.take() {
                    Some(b) => {
                        *bio = Self::queue_bio(&mut locks, chunk, b, true);
                        bio.is_none()
                    }
                    None => false,
                };
                (true, Some((t, waits)))
            }
        }
    }

    /// Copies the origin chunk of `t` to its COW chunk (`start_copy`). Call
    /// with no bucket lock held.
    pub(crate) fn start_copy(&self, t: PendingTicket) {
        let (old, new, g) = (t.old_chunk(), t.new_chunk(), t.ctx().geometry);
        let count = g.copy_len(old, self.origin.nr_sectors());
        self.account_start_copy();
        // The devices of the ticket's snapshot (this one), which the
        // ticket keeps until its completion.
        let r = self.kcopyd.copy(t, |t| {
            let s = &t.ctx().snap;
            [
                Region {
                    dev: &s.origin,
                    sector: g.sector_of(old),
                    count,
                },
                Region {
                    dev: &s.cow,
                    sector: g.sector_of(new),
                    count,
                },
            ]
        });
        if let Err(t) = r {
            self.copy_done(t, false);
        }
    }

    /// Writes a whole-chunk snapshot write straight to the COW instead of
    /// copying the origin chunk first (`start_full_bio`); `bio` already
    /// points at the COW chunk of `t`. Call with no bucket lock held.
    pub(crate) fn start_full_bio(&self, t: PendingTicket, bio: OwnedBio) {
        self.account_start_copy();
        if let Err((bio, t)) = self.kcopyd.write_full(bio, t) {
            bio.end(false);
            self.copy_done(t, false);
        }
    }

    /// Zeroes a whole copied chunk for a discard (`zero_exception`); the
    /// bio, already pointing at the COW chunk, completes when it is done.
    pub(crate) fn zero_chunk(s: &Arc<Snap>, bio: OwnedBio, chunk_sectors: u32) {
        let sector = bio.sector();
        s.account_start_copy();
        let r = s.kcopyd.zero_bio(bio, s.clone(), |s| Region {
            dev: &s.cow,
            sector,
            count: u64::from(chunk_sectors),
        });
        if let Err((bio, job)) = r {
            job.zeroed(bio, false);
        }
    }

    /// A copy finished (`copy_callback`). The transient store completes it
    /// at once; the persistent store completes it and the copies that
    /// finished before it and waited for it, in allocation order (see
    /// [`super::cow::Allocation`]).
    ///
    /// Completions of one snapshot come from more than one kcopyd worker (a
    /// shared copy runs on the client of the snapshot that started it), and
    /// one may even nest in another (a released origin write whose new copy
    /// cannot start). So one caller at a time commits: the others record
    /// their result in the order and leave, and the committing one takes
    /// what became ready until nothing is left, oldest first.
    fn copy_done(&self, t: PendingTicket, ok: bool) {
        // No handover happens while a pending exception exists (both tables
        // are quiesced for it), so the store cannot change while the taken
        // ones are completed; the state lock must not be held across
        // `pending_complete`, which takes it again.
        let st = self.state.read();
        let g = st.geometry();
        let mut a = st.alloc();
        let Some(pio) = a.store.io().cloned() else {
            drop(a);
            drop(st);
            self.pending_complete(t, ok);
            self.account_end_copy();
            return;
        };
        let unordered = a.order.finish(t, ok).err();
        let mut ready =
            (!core::mem::replace(&mut a.committing, true)).then(|| a.order.take_ready());
        drop(a);
        drop(st);
        if let Some(t) = unordered {
            crate::dm_err!("pending exception out of the allocation order\n");
            self.pending_complete(t, false);
        }
        while let Some(r) = ready.take() {
            for (q, ok) in r {
                self.commit(&pio, g, q, ok);
            }
            let st = self.state.read();
            let mut a = st.alloc();
            let next = a.order.take_ready();
            if next.is_empty() {
                a.committing = false;
            } else {
                ready = Some(next);
            }
        }
        self.account_end_copy();
    }

    /// Commits the exception of a finished copy to the persistent store and
    /// completes what the commit made durable (`complete_exception` ->
    /// `commit_exception` -> `pending_complete`), oldest first.
    fn commit(&self, p: &PersistentIo, g: ChunkGeometry, t: PendingTicket, ok: bool) {
        let (old, new) = (t.old_chunk(), t.new_chunk());
        if let Some((mut done, valid)) = p.commit(&self.cow, g, t, old, new, ok) {
            done.as_mut_slice().reverse();
            while let Some(q) = done.pop_last() {
                self.pending_complete(q, valid);
            }
            p.recycle(done);
        }
    }

    /// Takes `t` out of the pending table (buckets locked).
    fn take_pending(
        locks: &mut ChunkBuckets<'_, Pending>,
        t: Option<PendingTicket>,
    ) -> Option<PendingBox<Pending>> {
        match locks.pending_remove(t?) {
            Ok(b) => Some(b),
            Err(_) => {
                crate::dm_err!("finished pending exception not in its table\n");
                None
            }
        }
    }

    /// Moves the exception of `t` to the complete table, then releases or
    /// fails the bios that waited for it (`pending_complete`).
    fn pending_complete(&self, t: PendingTicket, success: bool) {
        let (old, new) = (t.old_chunk(), t.new_chunk());
        let mut error = !success;
        if error {
            self.invalidate(false);
        }
        let (pe, nomem, unrepresentable) =
            self.move_to_complete(t, (!error).then_some(new), &mut error);
        if nomem {
            self.invalidate(true);
        }
        if unrepresentable {
            crate::dm_err!("chunk {} beyond the exception table\n", old);
            self.invalidate(false);
        }
        if let Some(pe) = pe {
            self.release_bios(pe, error);
        }
    }

    /// Inserts the exception of `t` (to COW chunk `new`, unless the copy
    /// failed) in the complete table and takes `t` out of the pending one;
    /// returns it, whether memory for the entry ran out, and whether the
    /// complete table could not hold the chunks.
    ///
    /// The bucket guards borrow the tables the state lock protects, so the
    /// lock is held (for read) while they are. When the index needs nodes,
    /// both are dropped to allocate them and the insert is retried (nothing
    /// changed meanwhile: the pending entry still holds the chunk); when
    /// the index cannot number the chunks, both are dropped for
    /// [`Snap::outgrow_index`] and the insert is retried. When
    /// tracked reads must drain, both are dropped before sleeping, as
    /// upstream drops `s->lock` before `__check_for_conflicting_io`, and
    /// retaken to remove the pending exception. No handover can swap the
    /// tables meanwhile: it waits for every pending exception.
    fn move_to_complete(
        &self,
        t: PendingTicket,
        new: Option<Chunk>,
        error: &mut bool,
    ) -> (Option<PendingBox<Pending>>, bool, bool) {
        let old = t.old_chunk();
        let mut ticket = Some(t);
        let (mut nomem, mut unrepresentable) = (false, false);
        let mut e = None;
        let mut first = true;
        let mut outgrown = false;
        loop {
            let state = self.state.read();
            if core::mem::take(&mut first) {
                // May sleep (a slab entry): before the bucket locks.
                e = new.and_then(|n| state.exc.complete.new_exception(old, n));
                if new.is_some() && e.is_none() {
                    nomem = true;
                    *error = true;
                }
            }
            let mut locks = self.lock_chunk(&state, old);
            let mut wait = false;
            match e.take() {
                Some(_) if !state.valid => *error = true,
                // Snapshot reads of this chunk go to the COW from now on;
                // the pending entry keeps origin writes out meanwhile.
                Some(x) => match locks.complete_insert(x) {
                    Ok(()) => wait = self.tracking.busy(old),
                    Err(InsertError::NeedNodes(back)) => {
                        drop(locks);
                        state.exc.complete.refill(old, 1);
                        e = Some(back);
                        continue;
                    }
                    // The index cannot number it: once in the table's
                    // life it becomes a hash table (no lock may be held),
                    // and the exception is made again for it.
                    Err(InsertError::Unrepresentable) if !outgrown => {
                        drop(locks);
                        drop(state);
                        outgrown = true;
                        match self.outgrow_index(old, new.unwrap_or_default()) {
                            Ok(()) => first = true,
                            Err(_) => {
                                nomem = true;
                                *error = true;
                            }
                        }
                        continue;
                    }
                    Err(InsertError::Unrepresentable) => {
                        *error = true;
                        unrepresentable = true;
                    }
                },
                None => {}
            }
            if wait {
                drop(locks);
                drop(state);
                self.wait_for_tracked(old);
                let state = self.state.read();
                let mut locks = self.lock_chunk(&state, old);
                return (
                    Self::take_pending(&mut locks, ticket.take()),
                    nomem,
                    unrepresentable,
                );
            }
            return (
                Self::take_pending(&mut locks, ticket.take()),
                nomem,
                unrepresentable,
            );
        }
    }

    /// Ends the whole-chunk write and the snapshot writes of a completed
    /// pending exception, or submits them, and retries its origin writes;
    /// then frees it.
    fn release_bios(&self, mut pe: PendingBox<Pending>, error: bool) {
        let data = pe.data();
        let mut snapshot_bios = data.snapshot_bios.take();
        let mut origin_bios = data.origin_bios.take();
        if let Some(f) = pe.full_slot().take() {
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
            if let Some(b) = do_origin(self.reg, self.origin.key(), b, false) {
                b.submit();
            }
        }
        drop(pe);
    }
}

/// The copies of one origin chunk for several snapshots with the same chunk
/// size, started as one dm-kcopyd job: the origin is read once and written
/// to every COW (up to [`MAX_DESTS`]). Gathered by an origin write under
/// the registry lock, one snapshot after another in registry order.
pub(crate) struct SharedCopy {
    tickets: [Option<PendingTicket>; MAX_DESTS],
    len: usize,
    /// An origin write waits on one of these copies.
    waits: bool,
}

impl SharedCopy {
    /// Nothing gathered yet.
    pub(crate) fn new() -> Self {
        Self {
            tickets: [const { None }; MAX_DESTS],
            len: 0,
            waits: false,
        }
    }

    /// The copy of `t` alone, to which others may be added.
    pub(crate) fn of(t: PendingTicket, waits: bool) -> Self {
        let mut c = Self::new();
        c.tickets[0] = Some(t);
        c.len = 1;
        c.waits = waits;
        c
    }

    /// Whether an origin write waits on one of the copies.
    pub(crate) fn waits(&self) -> bool {
        self.waits
    }

    /// Adds the copy of `t` (`waits`: an origin write waits on it); gives
    /// it back when it cannot share this job: full, or another chunk size
    /// (then another origin region).
    pub(crate) fn add(&mut self, t: PendingTicket, waits: bool) -> Result<(), PendingTicket> {
        if let Some(Some(first)) = self.tickets.first() {
            let (a, b) = (first.ctx(), t.ctx());
            let same = a.geometry.sectors() == b.geometry.sectors()
                && first.old_chunk() == t.old_chunk()
                && a.snap.origin.nr_sectors() == b.snap.origin.nr_sectors();
            if !same || self.len == MAX_DESTS || !shared_copies() {
                return Err(t);
            }
        }
        self.tickets[self.len] = Some(t);
        self.len += 1;
        self.waits |= waits;
        Ok(())
    }

    /// Starts the gathered copies: one alone as usual, several with one
    /// origin read. Call with no bucket lock held; may sleep.
    pub(crate) fn start(mut self) {
        if self.len <= 1 {
            if let Some(t) = self.tickets[0].take() {
                let s = t.ctx().snap.clone();
                s.start_copy(t);
            }
            return;
        }
        let Some(Some(head)) = self.tickets.first() else {
            return;
        };
        let (g, old) = (head.ctx().geometry, head.old_chunk());
        // Our own reference to the first snapshot, whose client runs the
        // job: the tickets travel into it.
        let first = head.ctx().snap.clone();
        let count = g.copy_len(old, first.origin.nr_sectors());
        for t in self.tickets.iter().flatten() {
            t.ctx().snap.account_start_copy();
        }
        // Chain the tickets, last first: the head owns the rest.
        let mut chain: Option<PendingTicket> = None;
        for slot in self.tickets.iter_mut().rev() {
            if let Some(t) = slot.take() {
                if let Some(next) = chain.take() {
                    if let Err(next) = t.link(next) {
                        // A fresh ticket has no link: cannot happen.
                        crate::dm_err!("shared copy ticket linked twice\n");
                        next.done_multi(false, 0);
                    }
                }
                chain = Some(t);
            }
        }
        let Some(head) = chain else {
            return;
        };
        // The regions come from the chain itself: each ticket keeps its
        // snapshot's devices until the shared copy completes.
        let r = first.kcopyd.copy_multi(head, |head| {
            let mut dests = [const { None }; MAX_DESTS];
            let mut slots = dests.iter_mut();
            head.for_each_linked(|ctx, n| {
                if let Some(d) = slots.next() {
                    *d = Some(Region {
                        dev: &ctx.snap.cow,
                        sector: g.sector_of(n),
                        count,
                    });
                }
            });
            let src = Region {
                dev: &head.ctx().snap.origin,
                sector: g.sector_of(old),
                count,
            };
            (src, dests)
        });
        if let Err(job) = r {
            job.done_multi(false, 0);
        }
    }
}

/// A shared copy in flight is its first ticket, owning the others through
/// their links, in destination order.
impl MultiCopyJob for PendingTicket {
    fn done_multi(self, read_ok: bool, write_err: u64) {
        let mut all: [Option<PendingTicket>; MAX_DESTS] = [const { None }; MAX_DESTS];
        let mut next = Some(self);
        let mut n = 0;
        while let Some(mut t) = next {
            next = t.unlink();
            if n == MAX_DESTS {
                // Never longer than the job's destinations: fail the rest.
                t.done(false);
                continue;
            }
            all[n] = Some(t);
            n += 1;
        }
        // Last first: the origin write waits on the first (the first
        // snapshot that needed the chunk), so when it is retried the others
        // are done and it walks the snapshots once more, not once per copy.
        for (i, t) in all.iter_mut().enumerate().rev() {
            if let Some(t) = t.take() {
                t.done(read_ok && write_err & (1 << i) == 0);
            }
        }
    }
}

impl CopyJob for PendingTicket {
    fn done(self, ok: bool) {
        // Our own reference: the ticket's goes with its pending exception,
        // freed before `copy_done` returns. It may be the last one: the
        // part of a shared copy that belongs to another snapshot completes
        // on this client's worker, and that snapshot's target may be gone
        // as soon as its exception is (its shutdown waits for its own
        // pending exceptions and its own client only). That is why a
        // `Snap` holds nothing that dies with its target (see `Snap`).
        let s = self.ctx().snap.clone();
        s.copy_done(self, ok);
        let delay = crate::dm::test_copy_done_delay_ms();
        if delay != 0 {
            // Testing only: holds `s` while the target may go away.
            crate::dm::fsleep_us(u64::from(delay) * 1000);
        }
    }
}

impl ZeroJob for Arc<Snap> {
    fn zeroed(self, bio: OwnedBio, ok: bool) {
        self.account_end_copy();
        bio.end(ok);
    }
}
