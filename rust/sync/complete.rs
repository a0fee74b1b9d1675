//! A snapshot's completed exceptions, owned by their table.
//!
//! Two shapes behind one interface ([`CompleteTable`]):
//!
//! - the compact index ([`crate::logic::exception_index`]): a B+tree of
//!   4 KiB nodes per shard, an isolated exception in 8 bytes and a run of
//!   any length in 16, found in O(log n). Its nodes come from a mempool
//!   per snapshot, allocated with no lock held (`GFP_NOIO`: waits, never
//!   fails) and handed to the shard under its lock: a change that finds
//!   too few spare nodes changes nothing, and the caller drops its locks,
//!   [`refill`](CompleteTable::refill)s and retries. So no completion ever
//!   invalidates a snapshot for want of memory, as upstream's can;
//! - upstream's hash table of slab entries (`exception_cache`), kept for
//!   what the index cannot number (origins over 2^31 chunks, COWs over
//!   2^30 data chunks) and for comparison (`snapshot_exception_index=0`).
//!   A table whose index meets a chunk it cannot number (the origin or the
//!   COW grew since activation, a table reload took the index over, a COW
//!   holds an exception past the origin) moves its exceptions into a hash
//!   table then ([`CompleteTable::outgrow_index`]) and carries on, as the C
//!   driver does, instead of failing the copy.
//!
//! A [`NewException`] is what a completion hands to a locked bucket: a
//! slab entry for the hash table, a plain pair for the index.

use super::tables::ChunkBuckets;
use super::tables::{class_of, new_raw, Kind, PendingData, PendingTable, Raw};
use super::BucketLocks;
use crate::dm::mempool::{Mempool, Slab};
use crate::logic::chunk::Chunk;
use crate::logic::exception_index::{CowLayout, ExceptionIndex, IndexError, Shard, ShardPair};
use crate::logic::exception_table::{
    Bucket, BucketLock, BucketPair, Exception, Locked, RemoveChunkError,
};
use crate::logic::index_node::Node;
use core::ptr::{self, NonNull};
use kernel::prelude::*;

type Index = ExceptionIndex<KVVec<<BucketLocks as BucketLock>::Head>, BucketLocks>;

/// Nodes each snapshot's pool keeps in reserve: one split of the deepest
/// tree the index builds, plus a new root.
const NODE_RESERVE: i32 = 10;

enum Shape {
    Index { ix: Index, nodes: Mempool<Node> },
    Hash(Raw),
}

/// Most inserts of a bulk load under one lock hold.
const BULK_RUN: usize = 256;

/// Completed exceptions, owned by the table.
pub struct CompleteTable {
    shape: Shape,
    slab: &'static Slab<Exception>,
}

/// A completed exception not in a table yet (or left over by a merge).
///
/// # Invariants
///
/// A `New::Slab` entry `e` is a valid, initialized object allocated from
/// `slab`, linked in no table and owned by this value alone (so it may be
/// read, and is freed to `slab` on drop).
pub struct NewException(New);

enum New {
    /// A hash-table entry of `slab`, freed to it on drop.
    Slab {
        e: NonNull<Exception>,
        slab: &'static Slab<Exception>,
    },
    /// For the index, which stores the chunks themselves.
    Plain { old: Chunk, new: Chunk },
}

// SAFETY: the entry is owned; slab objects may be freed anywhere.
unsafe impl Send for NewException {}

impl NewException {
    fn chunks(&self) -> (Chunk, Chunk) {
        match &self.0 {
            // SAFETY: the entry is ours and valid (type invariant).
            New::Slab { e, .. } => unsafe {
                let r = e.as_ref();
                (r.old_chunk, r.new_chunk)
            },
            New::Plain { old, new } => (*old, *new),
        }
    }
}

impl Drop for NewException {
    fn drop(&mut self) {
        if let New::Slab { e, slab } = self.0 {
            // SAFETY: `e` came from `slab` and is in no table (type
            // invariant).
            unsafe { slab.free(e) };
        }
    }
}

/// Why [`ChunkBuckets::complete_insert`] did not insert.
pub enum InsertError {
    /// The shard needs nodes: drop every lock, call
    /// [`CompleteTable::refill`] for the chunk, and retry with this.
    NeedNodes(NewException),
    /// The chunks are beyond what the index can number (an origin or COW
    /// grown past its range since activation): drop every lock, call
    /// [`CompleteTable::outgrow_index`] and retry with a new exception.
    Unrepresentable,
}

/// What [`CompleteTable::remove_chunk`] did.
pub enum Removed {
    /// The chunk is out; a hash-table entry it left empty, to free.
    Done(Option<NewException>),
    /// Nothing: the index needs nodes for it first.
    NeedNodes,
}

/// Why [`CompleteTable::insert_sorted`] stopped.
pub enum LoadError {
    /// The index cannot number the batch's item at this position (those
    /// before it are in): [`CompleteTable::outgrow_index`], then load the
    /// rest.
    Outgrown(usize),
    /// No memory, or an entry the table refuses.
    Failed(Error),
}

impl CompleteTable {
    /// Upstream's hash table: `buckets` (a power of two) buckets, runs
    /// within `1 << hash_shift` chunks (0: no runs); entries from `slab`.
    pub fn new_hash(
        buckets: usize,
        hash_shift: u32,
        slab: &'static Slab<Exception>,
    ) -> Result<Self> {
        Ok(Self {
            shape: Shape::Hash(new_raw(buckets, hash_shift, Kind::Complete)?),
            slab,
        })
    }

    /// The compact index over `shards` (a power of two) shards, for a COW
    /// laid out as `layout`.
    pub fn new_index(
        shards: usize,
        layout: CowLayout,
        slab: &'static Slab<Exception>,
    ) -> Result<Self> {
        let (class, heads) = class_of(Kind::Complete, shards)?;
        let ix = Index::with_class(heads, layout, class).ok_or(EINVAL)?;
        Ok(Self {
            shape: Shape::Index {
                ix,
                nodes: Mempool::new(NODE_RESERVE)?,
            },
            slab,
        })
    }

    /// True if an origin of `origin_chunks` and a COW of `cow_chunks` can
    /// use the index; half the origin range is kept for an origin that
    /// grows.
    pub fn index_fits(origin_chunks: u64, cow_chunks: u64) -> bool {
        Index::fits(origin_chunks.saturating_mul(2), cow_chunks)
    }

    /// Shards of the index for an origin of `origin_chunks`.
    pub fn index_shards(origin_chunks: u64) -> usize {
        // Few enough that a sequentially filled COW costs well under
        // 0.01 B/chunk (each shard holds at least a node), plenty for the
        // lock to be uncontended.
        Index::shards_for(origin_chunks, 32)
    }

    /// A completed exception `old` -> `new`, for a locked bucket. May sleep:
    /// call with no bucket lock held. For the hash table a slab entry
    /// (`GFP_NOIO`, then `GFP_ATOMIC`, as upstream: `None` if both fail);
    /// for the index never `None` and free: an insert that finds too few
    /// nodes says so, and its caller refills with no lock held and retries.
    pub fn new_exception(&self, old: Chunk, new: Chunk) -> Option<NewException> {
        match &self.shape {
            Shape::Hash(_) => {
                let e = self.slab.alloc(Exception::new(old, new))?;
                // INVARIANT: freshly allocated from `self.slab`, in no table.
                Some(NewException(New::Slab { e, slab: self.slab }))
            }
            // Nodes come only when an insert asks (one in hundreds: a
            // leaf split): a refill here would cost every completion a
            // shard lock and a descent more.
            Shape::Index { .. } => Some(NewException(New::Plain { old, new })),
        }
    }

    /// Gives the shard of `chunk` the nodes a change needing `room` more
    /// slots there may split off (a no-op for the hash table). May sleep:
    /// call with no bucket lock held.
    pub fn refill(&self, chunk: Chunk, room: usize) {
        let Shape::Index { ix, nodes } = &self.shape else {
            return;
        };
        let want = ix.lock(chunk).needs(chunk, room);
        let mut got = [None; NODE_RESERVE as usize];
        for slot in got.iter_mut().take(want) {
            // SAFETY: an all-zero `Node` is a valid empty leaf.
            *slot = Some(unsafe { nodes.alloc_zeroed() });
        }
        let mut s = ix.lock(chunk);
        for n in got.into_iter().flatten() {
            // SAFETY: a fresh node, in no index; the index owns it until
            // `drop` drains it back to the pool.
            unsafe { s.give(n) };
        }
    }

    /// [`CompleteTable::refill`] for a constructor: nodes that may fail to
    /// come (`ENOMEM`) rather than wait for the pool's reserve, which only
    /// teardown refills: an index too big for memory fails the table's
    /// load instead of hanging it in D state.
    fn refill_at_load(&self, chunk: Chunk, room: usize) -> Result {
        let Shape::Index { ix, nodes } = &self.shape else {
            return Ok(());
        };
        let want = ix.lock(chunk).needs(chunk, room);
        let mut got = [None; NODE_RESERVE as usize];
        for slot in got.iter_mut().take(want) {
            // SAFETY: an all-zero `Node` is a valid empty leaf.
            match unsafe { nodes.alloc_zeroed_or_fail() } {
                Some(n) => *slot = Some(n),
                None => {
                    for n in got.into_iter().flatten() {
                        // SAFETY: a fresh node from this pool, never given.
                        unsafe { nodes.free(n) };
                    }
                    return Err(ENOMEM);
                }
            }
        }
        let mut s = ix.lock(chunk);
        for n in got.into_iter().flatten() {
            // SAFETY: a fresh node, in no index; the index owns it until
            // `drop` drains it back to the pool.
            unsafe { s.give(n) };
        }
        Ok(())
    }

    /// Inserts `e`, with no lock held (loading the metadata): locks the
    /// bucket, refilling the shard as often as it asks. May sleep.
    pub fn insert(&self, mut e: NewException) -> Result {
        loop {
            let (old, _) = e.chunks();
            let r = self.lock_bucket(old).insert(e);
            match r {
                Ok(()) => return Ok(()),
                Err(InsertError::NeedNodes(back)) => {
                    self.refill_at_load(old, 1)?;
                    e = back;
                }
                Err(InsertError::Unrepresentable) => return Err(EINVAL),
            }
        }
    }

    /// Inserts a batch of exceptions `(origin chunk, COW chunk)` sorted by
    /// origin chunk (for equal ones, the first to win first), with no lock
    /// held: a bulk load at activation. Consecutive chunks of one shard go
    /// in under one lock hold (at most [`BULK_RUN`] of them, to keep the
    /// spin short) and descend the same few nodes, which stay in cache.
    /// May sleep.
    pub fn insert_sorted<T>(
        &self,
        batch: &[T],
        chunks: impl Fn(&T) -> (Chunk, Chunk),
    ) -> Result<(), LoadError> {
        let Shape::Index { ix, .. } = &self.shape else {
            for (old, new) in batch.iter().map(&chunks) {
                let e = self
                    .new_exception(old, new)
                    .ok_or(LoadError::Failed(ENOMEM))?;
                self.insert(e).map_err(LoadError::Failed)?;
            }
            return Ok(());
        };
        let mut rest = batch;
        while let Some((first, _)) = rest.first().map(&chunks) {
            let shard = ix.shard_of(first);
            let mut s = ix.lock(first);
            let n = rest
                .iter()
                .take(BULK_RUN)
                .position(|t| ix.shard_of(chunks(t).0) != shard)
                .unwrap_or(rest.len().min(BULK_RUN));
            let (done, r) = s.insert_sorted(rest.get(..n).unwrap_or(rest), &chunks);
            let need = match r {
                Ok(()) => None,
                Err(IndexError::NeedNodes(_)) => rest.get(done).map(|t| chunks(t).0),
                // Beyond the index: the caller moves what is in to a hash
                // table, which loads the rest (the module refused metadata
                // chunks before, so it is the size of a number).
                Err(_) => return Err(LoadError::Outgrown(batch.len() - rest.len() + done)),
            };
            drop(s);
            rest = rest.get(done..).unwrap_or_default();
            if let Some(old) = need {
                self.refill_at_load(old, 1).map_err(LoadError::Failed)?;
            }
        }
        Ok(())
    }

    /// True while the table is the compact index.
    pub fn is_index(&self) -> bool {
        matches!(self.shape, Shape::Index { .. })
    }

    /// Moves every exception of the index into a new hash table of
    /// `buckets` buckets and runs within `1 << hash_shift` chunks, which
    /// the table is from then on; `Ok(None)` if it is one already, else
    /// how many chunks moved. The index is kept if an entry cannot be
    /// allocated (`ENOMEM`). `&mut self`: the caller holds the snapshot's
    /// state lock for write, so no bio path or completion is in the table.
    /// Sleeps (entries as upstream's, `GFP_NOIO` then `GFP_ATOMIC`: a
    /// completion may be what reclaim waits for).
    pub fn outgrow_index(&mut self, buckets: usize, hash_shift: u32) -> Result<Option<u64>> {
        let slab = self.slab;
        let Shape::Index { ix, .. } = &mut self.shape else {
            return Ok(None);
        };
        let mut raw = new_raw(buckets, hash_shift, Kind::Complete)?;
        let (mut moved, mut failed) = (0u64, false);
        ix.for_each(|old, new| {
            if failed {
                return;
            }
            let Some(e) = slab.alloc(Exception::new(old, new)) else {
                failed = true;
                return;
            };
            // A chunk extending a run comes back, freed on drop.
            // INVARIANT: freshly allocated from `slab`, in no table.
            let r = hash_insert(
                &mut raw.lock(old),
                slab,
                NewException(New::Slab { e, slab }),
            );
            drop(r);
            moved += 1;
            if moved % u64::from(FREES_PER_RESCHED) == 0 {
                crate::dm::cond_resched();
            }
        });
        if failed {
            raw.drain(|e| {
                // SAFETY: every entry came from `slab` above and went into
                // this table only; unlinked now, it is ours.
                unsafe { slab.free(e) }
            });
            return Err(ENOMEM);
        }
        let old = core::mem::replace(&mut self.shape, Shape::Hash(raw));
        if let Shape::Index { mut ix, nodes } = old {
            ix.drain(|n| {
                // SAFETY: every node came from this pool (`refill`); the
                // index handed it back and holds it no more.
                unsafe { nodes.free(n) }
            });
        }
        Ok(Some(moved))
    }

    /// Takes `chunk` out of the exception covering it, as a merge does
    /// (upstream's `__remove_single_exception_chunk`); a hash-table entry
    /// left empty comes back, to be freed by the caller (no lock is held
    /// when this returns). Never allocates nor sleeps: the merge calls it
    /// with the state lock held for write, which every bio of the snapshot
    /// and of its origin waits for, and a wait for memory there (a node
    /// pool whose reserve only teardown refills) would stall them all. A
    /// cut in the middle of a run that needs nodes changes nothing and
    /// says [`Removed::NeedNodes`]: drop the write hold, [`refill`] the
    /// chunk for 2 slots under a read hold, and retry.
    ///
    /// [`refill`]: CompleteTable::refill
    pub fn remove_chunk(&self, chunk: Chunk) -> Result<Removed, RemoveChunkError> {
        match &self.shape {
            Shape::Hash(raw) => {
                let slab = self.slab;
                // INVARIANT: an entry of this table's `slab`, unlinked by
                // `remove_chunk` under its bucket lock: now in no table.
                raw.lock(chunk)
                    .remove_chunk(chunk)
                    .map(|e| Removed::Done(e.map(|e| NewException(New::Slab { e, slab }))))
            }
            Shape::Index { ix, .. } => match ix.lock(chunk).remove(chunk) {
                Ok(()) => Ok(Removed::Done(None)),
                Err(IndexError::NeedNodes(_)) => Ok(Removed::NeedNodes),
                Err(_) => Err(RemoveChunkError::NotFound),
            },
        }
    }

    fn lock_bucket(&self, chunk: Chunk) -> Guard<'_> {
        match &self.shape {
            Shape::Hash(raw) => Guard::Hash(raw.lock(chunk), self.slab),
            Shape::Index { ix, .. } => Guard::Index(ix.lock(chunk)),
        }
    }

    /// Locks the bucket of `chunk`. Keep the guard short: it spins other
    /// CPUs, with preemption off.
    pub fn lock(&self, chunk: Chunk) -> CompleteBucket<'_> {
        CompleteBucket(self.lock_bucket(chunk))
    }

    /// Locks the bucket of `chunk` here, then in `pending` (upstream's
    /// `dm_exception_table_lock`: complete, then pending).
    pub fn lock_pair<'a, P: PendingData>(
        &'a self,
        pending: &'a PendingTable<P>,
        chunk: Chunk,
    ) -> ChunkBuckets<'a, P> {
        let pair = match &self.shape {
            Shape::Hash(raw) => Pair::Hash(raw.lock_pair(pending.raw(), chunk), self.slab),
            Shape::Index { ix, .. } => Pair::Index(ix.lock_pair(pending.raw(), chunk)),
        };
        ChunkBuckets::new(pair, pending)
    }
}

/// Objects freed between two scheduling points when a table is emptied.
/// A million exceptions take tens of seconds to free on the debug kernel
/// under TCG; with voluntary preemption and one CPU, a loop without
/// `cond_resched` starved the RCU grace-period kthread (an RCU stall
/// report in the full tier's scale suite, at `dmsetup remove`). Upstream's
/// `dm_exception_table_exit` has the same loop, without it.
const FREES_PER_RESCHED: u32 = 1024;

impl Drop for CompleteTable {
    fn drop(&mut self) {
        let slab = self.slab;
        let mut n = 0u32;
        let mut pace = || {
            n += 1;
            if n % FREES_PER_RESCHED == 0 {
                crate::dm::cond_resched();
            }
        };
        match &mut self.shape {
            Shape::Hash(raw) => raw.drain(|e| {
                // SAFETY: every entry was a `NewException` of this slab,
                // which the table owned since `insert`; unlinked now, it is
                // ours.
                unsafe { slab.free(e) };
                pace();
            }),
            Shape::Index { ix, nodes } => ix.drain(|n| {
                // SAFETY: every node came from this pool (`refill`); the
                // index handed it back and holds it no more.
                unsafe { nodes.free(n) };
                pace();
            }),
        }
    }
}

/// A locked bucket of either shape.
enum Guard<'a> {
    Hash(Bucket<'a, BucketLocks>, &'static Slab<Exception>),
    Index(Shard<'a, BucketLocks>),
}

/// Looks `chunk` up in a locked hash bucket.
fn hash_lookup(b: &Locked<'_, BucketLocks>, chunk: Chunk) -> Option<Chunk> {
    // SAFETY: an entry linked in a bucket whose lock we hold is valid until
    // unlinked, which needs that lock; the reference ends here.
    b.lookup(chunk).map(|e| unsafe { e.as_ref() }.remap(chunk))
}

/// Inserts `e` in a locked hash bucket of `slab`'s entries
/// (`dm_insert_exception`); one that extended a run instead comes back.
fn hash_insert(
    b: &mut Locked<'_, BucketLocks>,
    slab: &'static Slab<Exception>,
    e: NewException,
) -> Result<Option<NewException>, InsertError> {
    let (p, s) = match &e.0 {
        New::Slab { e, slab } => (*e, *slab),
        New::Plain { .. } => return Err(InsertError::Unrepresentable),
    };
    // The entry moves on as `p`: no free on drop.
    core::mem::forget(e);
    if !ptr::eq(s, slab) {
        // INVARIANT: `p` is still the entry of `s` that `e` owned, in no
        // table.
        return Ok(Some(NewException(New::Slab { e: p, slab: s })));
    }
    // SAFETY: `p` is a valid exception in no table; the table owns it from
    // now on (freed in `CompleteTable::drop`), or hands it back merged.
    // INVARIANT: an entry handed back is `p`, which `insert` did not link
    // (it extended a run instead): an object of `slab` in no table.
    Ok(unsafe { b.insert(p) }.map(|e| NewException(New::Slab { e, slab })))
}

/// Inserts `e` in a locked shard.
fn index_insert(
    s: &mut crate::logic::exception_index::ShardRef<'_, BucketLocks>,
    e: NewException,
) -> Result<(), InsertError> {
    let (old, new) = e.chunks();
    match s.insert(old, new) {
        // `Present` cannot happen (a chunk is completed once, under its
        // pending entry); keeping the first mapping is what upstream's
        // lookup, which finds the first, would do.
        Ok(()) | Err(IndexError::Present) => Ok(()),
        Err(IndexError::NeedNodes(_)) => Err(InsertError::NeedNodes(e)),
        Err(_) => Err(InsertError::Unrepresentable),
    }
}

impl Guard<'_> {
    fn lookup(&self, chunk: Chunk) -> Option<Chunk> {
        match self {
            Guard::Hash(b, _) => hash_lookup(b, chunk),
            Guard::Index(s) => s.lookup(chunk),
        }
    }

    /// Inserts `e`; a hash entry that extended a run is freed here, under
    /// the lock, as upstream's `dm_insert_exception` does (a slab free does
    /// not sleep).
    fn insert(&mut self, e: NewException) -> Result<(), InsertError> {
        match self {
            Guard::Hash(b, slab) => hash_insert(b, slab, e).map(drop),
            Guard::Index(s) => index_insert(s, e),
        }
    }
}

/// A locked bucket of a [`CompleteTable`]; unlocked on drop.
pub struct CompleteBucket<'a>(Guard<'a>);

impl<'a> CompleteBucket<'a> {
    /// The COW chunk of `chunk` if it is copied.
    pub fn lookup(&self, chunk: Chunk) -> Option<Chunk> {
        self.0.lookup(chunk)
    }

    /// Also locks the bucket of `chunk` in `pending`, keeping this one (the
    /// pair [`CompleteTable::lock_pair`] takes, in the same order).
    pub fn with_pending<P: PendingData>(
        self,
        pending: &'a PendingTable<P>,
        chunk: Chunk,
    ) -> ChunkBuckets<'a, P> {
        let pair = match self.0 {
            Guard::Hash(b, slab) => Pair::Hash(b.and_lock(pending.raw(), chunk), slab),
            Guard::Index(s) => Pair::Index(s.and_lock(pending.raw(), chunk)),
        };
        ChunkBuckets::new(pair, pending)
    }
}

/// A chunk's complete bucket (of either shape) and pending bucket, locked
/// together.
pub(super) enum Pair<'a> {
    Hash(BucketPair<'a, BucketLocks>, &'static Slab<Exception>),
    Index(ShardPair<'a, BucketLocks>),
}

impl<'a> Pair<'a> {
    pub(super) fn lookup(&self, chunk: Chunk) -> Option<Chunk> {
        match self {
            Pair::Hash(p, _) => hash_lookup(&p.first, chunk),
            Pair::Index(p) => p.first.lookup(chunk),
        }
    }

    pub(super) fn insert(&mut self, e: NewException) -> Result<(), InsertError> {
        match self {
            Pair::Hash(p, slab) => hash_insert(&mut p.first, slab, e).map(drop),
            Pair::Index(p) => index_insert(&mut p.first, e),
        }
    }

    pub(super) fn pending(&self) -> &Locked<'a, BucketLocks> {
        match self {
            Pair::Hash(p, _) => &p.second,
            Pair::Index(p) => &p.second,
        }
    }

    pub(super) fn pending_mut(&mut self) -> &mut Locked<'a, BucketLocks> {
        match self {
            Pair::Hash(p, _) => &mut p.second,
            Pair::Index(p) => &mut p.second,
        }
    }
}
