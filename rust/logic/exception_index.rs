//! The compact index of completed exceptions: an ordered B+tree of 4 KiB
//! [`Node`]s keyed by origin chunk, storing runs of consecutive chunks, and
//! sharded by chunk range, each shard locked like a bucket of
//! [`super::exception_table`].
//!
//! Why: upstream's complete table is a hash of 32-byte objects, at most
//! 131,072 buckets, so at millions of exceptions every lookup walks a long
//! chain, and a run can cover at most 256 chunks. Here an isolated
//! exception costs one 8-byte leaf slot and a run of any length two, and a
//! lookup is a binary search per level (at most four levels for 2^32
//! chunks).
//!
//! - **Dense COW numbers.** A persistent COW interleaves a metadata chunk
//!   every `exceptions_per_area` data chunks, so chunks allocated in order
//!   are not consecutive across an area's end; the index stores each COW
//!   chunk as its number among data chunks only ([`CowLayout`]), so an
//!   origin written sequentially is one run per shard range whatever the
//!   areas.
//! - **Shards.** Shard `s` holds the chunks `c` with `(c >> RANGE_SHIFT) &
//!   mask == s`: ranges of 4,096 chunks dealt round the shards, so that
//!   neighbouring chunks share a shard (and a run) and random writes spread
//!   over all of them. The shard's lock word is the bucket head of
//!   [`BucketLock`] (an `hlist_bl` bit lock in the kernel): the root pointer
//!   with the lock in bit 0. Nothing else locks the tree.
//! - **No allocation under the lock.** A split takes nodes from the shard's
//!   spare list (kept in its root). When an insert (or the removal of a
//!   chunk from the middle of a run) needs more than the list holds, it
//!   changes nothing and returns [`IndexError::NeedNodes`]: the caller
//!   drops the lock, allocates that many zeroed nodes (from a reserve that
//!   cannot fail, in the kernel), hands them over with
//!   [`Shard::give`] under the lock, and retries.
//! - **Removal** (a merge) never frees a node: emptied leaves stay until
//!   the index is drained, so a removal needs at most the nodes of one
//!   split (a run cut in the middle becomes two).
//!
//! Limits: origin chunks below 2^32 and dense COW chunks below 2^30
//! ([`ExceptionIndex::fits`]); beyond, the caller keeps the hash table.

use super::chunk::Chunk;
use super::disk_format::exceptions_per_area;
use super::exception_table::{BucketLock, ExceptionTable, Locked};
use super::index_node::{
    free_tree, insert_at, key_of, pack, remove_at, single, tree_for_each, tree_stats, val_of, Node,
    DENSE_MASK, END, INNER_CAP, LEAF_CAP, START,
};
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;

/// log2 of the chunks of one shard range.
pub const RANGE_SHIFT: u32 = 12;
/// Deepest tree the index builds (four levels hold 2^32 chunks even with
/// half-full nodes).
const MAX_DEPTH: usize = 8;

/// Where a COW's data chunks are, to number them densely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CowLayout {
    /// Data chunks between two metadata chunks; 0: every chunk is data.
    per_area: u64,
}

impl CowLayout {
    /// A transient COW: chunks are allocated from 0 with no metadata.
    pub const fn transient() -> Self {
        Self { per_area: 0 }
    }

    /// A persistent COW of `chunk_sectors` chunks: the header, then areas
    /// of one metadata chunk and its data chunks.
    pub fn persistent(chunk_sectors: u32) -> Self {
        Self {
            per_area: exceptions_per_area(chunk_sectors),
        }
    }

    /// Dense number of data chunk `cow`; `None` for the header or a
    /// metadata chunk.
    pub fn dense(self, cow: Chunk) -> Option<u64> {
        let pa = self.per_area;
        if pa == 0 {
            return Some(cow);
        }
        let x = cow.checked_sub(2)?;
        let (area, r) = (x / (pa + 1), x % (pa + 1));
        (r < pa).then_some(area * pa + r)
    }

    /// COW chunk of dense number `d`.
    pub fn cow(self, d: u64) -> Chunk {
        let pa = self.per_area;
        match pa {
            0 => d,
            _ => 2 + d / pa * (pa + 1) + d % pa,
        }
    }
}

/// Why an index operation did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexError {
    /// Give the shard this many more nodes ([`Shard::give`]) and retry.
    NeedNodes(usize),
    /// No exception for the chunk (removal).
    NotFound,
    /// The chunk has an exception already (insertion).
    Present,
    /// Beyond [`ExceptionIndex::fits`].
    OutOfRange,
}

/// What an index holds ([`ExceptionIndex::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Nodes in the trees and spare lists.
    pub nodes: usize,
    /// Leaf slots in use.
    pub slots: usize,
    /// Runs (two slots each); the rest are single chunks.
    pub runs: usize,
    /// Chunks with an exception.
    pub chunks: u64,
}

/// The index over shard heads `H` (a power of two of zeroed `L::Head`s).
pub struct ExceptionIndex<H: Deref<Target = [L::Head]>, L: BucketLock> {
    heads: H,
    class: L::Class,
    mask: u64,
    layout: CowLayout,
    _lock: PhantomData<L>,
}

impl<H: Deref<Target = [L::Head]>, L: BucketLock> ExceptionIndex<H, L> {
    /// An empty index over `heads`; `None` unless their count is a power
    /// of two and every head is zero (an empty, unlocked shard: the index
    /// would otherwise follow whatever a head holds as a tree pointer).
    pub fn new(heads: H, layout: CowLayout) -> Option<Self>
    where
        L::Class: Default,
    {
        Self::with_class(heads, layout, L::Class::default())
    }

    /// The same, with the lock class its shards are checked as.
    pub fn with_class(heads: H, layout: CowLayout, class: L::Class) -> Option<Self> {
        let n = heads.len();
        let empty = heads
            .iter()
            .all(|h| L::word(h).load(core::sync::atomic::Ordering::Relaxed) == 0);
        (n.is_power_of_two() && empty).then(|| Self {
            heads,
            class,
            mask: n as u64 - 1,
            layout,
            _lock: PhantomData,
        })
    }

    /// True if an origin of `origin_chunks` and a COW of `cow_chunks` fit
    /// the index's 32-bit origin and 30-bit COW numbers.
    pub fn fits(origin_chunks: u64, cow_chunks: u64) -> bool {
        origin_chunks <= 1 << 32 && cow_chunks <= u64::from(DENSE_MASK)
    }

    /// Shards worth having for an origin of `origin_chunks`: one per range,
    /// at most `max` (a power of two).
    pub fn shards_for(origin_chunks: u64, max: usize) -> usize {
        let ranges = (origin_chunks >> RANGE_SHIFT).max(1);
        let want = ranges.min(max as u64);
        1 << (63 - want.leading_zeros())
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.heads.len()
    }

    /// The shard `chunk` lives in: chunks of one shard can be inserted
    /// under one [`ExceptionIndex::lock`].
    pub fn shard_of(&self, chunk: Chunk) -> usize {
        ((chunk >> RANGE_SHIFT) & self.mask) as usize
    }

    fn shard(&self, chunk: Chunk) -> ShardRef<'_, L> {
        ShardRef {
            head: &self.heads[self.shard_of(chunk)],
            class: &self.class,
            layout: self.layout,
        }
    }

    /// Locks the shard of `chunk`. Keep the guard short: it spins other
    /// CPUs, with preemption off in the kernel.
    pub fn lock(&self, chunk: Chunk) -> Shard<'_, L> {
        let s = self.shard(chunk);
        L::lock(s.class, s.head);
        Shard(s)
    }

    /// Locks the shard of `chunk`, then its bucket in `pending` (upstream's
    /// `dm_exception_table_lock`: complete, then pending).
    pub fn lock_pair<'a, H2: Deref<Target = [L::Head]>>(
        &'a self,
        pending: &'a ExceptionTable<H2, L>,
        chunk: Chunk,
    ) -> ShardPair<'a, L> {
        let (first, second) = (self.shard(chunk), pending.locked(chunk));
        L::lock_pair(first.class, first.head, second.class, second.head);
        ShardPair { first, second }
    }

    /// What the index holds; takes each shard's lock in turn.
    pub fn stats(&self) -> IndexStats {
        let mut s = IndexStats::default();
        for i in 0..self.heads.len() {
            let shard = self.lock((i as u64) << RANGE_SHIFT);
            let root = shard.root();
            // SAFETY: the tree of a locked shard is ours to read.
            unsafe { tree_stats(root, &mut s) };
            s.nodes += shard.spares();
        }
        s
    }

    /// Calls `f(origin chunk, COW chunk)` for every chunk the index maps,
    /// shard by shard (each in origin order); needs no lock, since `&mut
    /// self` excludes every other user. For a table that outgrows the
    /// index: its exceptions move to a hash table.
    pub fn for_each(&mut self, mut f: impl FnMut(Chunk, Chunk)) {
        let layout = self.layout;
        for head in self.heads.iter() {
            let root = (L::word(head).load(Ordering::Relaxed) & !1) as *mut Node;
            // SAFETY: `&mut self`: no one else reads or changes the tree.
            unsafe {
                tree_for_each(root, &mut |k, d| {
                    f(Chunk::from(k), layout.cow(u64::from(d)))
                })
            };
        }
    }

    /// Empties the index, handing every node to `free`; needs no lock,
    /// since `&mut self` excludes every other user.
    pub fn drain(&mut self, mut free: impl FnMut(NonNull<Node>)) {
        for head in self.heads.iter() {
            let root = (L::word(head).swap(0, Ordering::Relaxed) & !1) as *mut Node;
            // SAFETY: the tree is unlinked from the index: ours alone.
            unsafe { free_tree(root, &mut free) };
        }
    }
}

/// The inner nodes from the root down to a leaf, with the child taken in
/// each.
struct Path {
    steps: [(*mut Node, usize); MAX_DEPTH],
    depth: usize,
}

impl Path {
    /// Nodes a split of the leaf at the end takes: the leaf's new sibling,
    /// one per full inner node above it, and a new root if all are full.
    fn split_cost(&self) -> usize {
        let steps = &self.steps[..self.depth];
        // SAFETY: the path was walked in a shard whose lock is held, which
        // keeps its nodes.
        let full = steps
            .iter()
            .rev()
            .take_while(|&&(n, _)| unsafe { (*n).len() } == INNER_CAP)
            .count();
        1 + full + usize::from(full == steps.len())
    }
}

/// A shard whose lock the holder of this value owns: what may be done in
/// a locked shard. Only [`Shard`] and [`ShardPair`] make one, and they
/// unlock it when dropped.
pub struct ShardRef<'a, L: BucketLock> {
    head: &'a L::Head,
    class: &'a L::Class,
    layout: CowLayout,
}

/// A locked shard; unlocked on drop.
pub struct Shard<'a, L: BucketLock>(ShardRef<'a, L>);

impl<'a, L: BucketLock> Deref for Shard<'a, L> {
    type Target = ShardRef<'a, L>;
    fn deref(&self) -> &ShardRef<'a, L> {
        &self.0
    }
}

impl<'a, L: BucketLock> DerefMut for Shard<'a, L> {
    fn deref_mut(&mut self) -> &mut ShardRef<'a, L> {
        &mut self.0
    }
}

impl<L: BucketLock> Drop for Shard<'_, L> {
    fn drop(&mut self) {
        L::unlock(self.0.class, self.0.head);
    }
}

impl<'a, L: BucketLock> Shard<'a, L> {
    /// Also locks the bucket of `chunk` in `pending`, keeping this shard:
    /// the pair [`ExceptionIndex::lock_pair`] would have taken, in the same
    /// order.
    pub fn and_lock<H2: Deref<Target = [L::Head]>>(
        self,
        pending: &'a ExceptionTable<H2, L>,
        chunk: Chunk,
    ) -> ShardPair<'a, L> {
        // The pair takes over this guard's lock: no unlock on our drop.
        let this = ManuallyDrop::new(self);
        let first = ShardRef {
            head: this.0.head,
            class: this.0.class,
            layout: this.0.layout,
        };
        let second = pending.locked(chunk);
        L::lock(second.class, second.head);
        ShardPair { first, second }
    }
}

/// A chunk's shard and its bucket of the pending table, locked together by
/// [`ExceptionIndex::lock_pair`]; unlocked together on drop.
pub struct ShardPair<'a, L: BucketLock> {
    /// The shard (locked first).
    pub first: ShardRef<'a, L>,
    /// The pending table's bucket.
    pub second: Locked<'a, L>,
}

impl<L: BucketLock> Drop for ShardPair<'_, L> {
    fn drop(&mut self) {
        L::unlock_pair(
            self.first.class,
            self.first.head,
            self.second.class,
            self.second.head,
        );
    }
}

impl<L: BucketLock> ShardRef<'_, L> {
    fn root(&self) -> *mut Node {
        (L::word(self.head).load(Ordering::Relaxed) & !1) as *mut Node
    }

    fn set_root(&mut self, n: *mut Node) {
        // Keep the lock's bits (a bit lock: ours, held).
        L::word(self.head).store(n as usize | L::LOCK_BITS, Ordering::Relaxed);
    }

    /// Spare nodes of the shard.
    fn spares(&self) -> usize {
        let mut n = 0;
        let mut p = self.root();
        // SAFETY: the root and its spare list belong to this locked shard.
        unsafe {
            if !p.is_null() {
                p = (*p).spare;
            }
            while !p.is_null() {
                n += 1;
                p = (*p).spare;
            }
        }
        n
    }

    /// Takes a spare node, which [`Shard::split`] made sure exists.
    fn pop_spare(&mut self) -> Option<&mut Node> {
        let root = self.root();
        // SAFETY: the root and its spare list belong to this locked shard,
        // and a spare is in no tree: ours to hand out, once.
        unsafe {
            let s = (*root).spare.as_mut()?;
            (*root).spare = s.spare;
            s.spare = ptr::null_mut();
            Some(s)
        }
    }

    /// Takes `node`, a zeroed node from the caller, as a spare (or as the
    /// root of an empty shard).
    ///
    /// # Safety
    ///
    /// `node` is valid, in no index, and stays valid until the index hands
    /// it back through [`ExceptionIndex::drain`].
    pub unsafe fn give(&mut self, node: NonNull<Node>) {
        let n = node.as_ptr();
        let root = self.root();
        // SAFETY: `n` is ours (caller); the root belongs to the locked shard.
        unsafe {
            (*n).spare = ptr::null_mut();
            if root.is_null() {
                (*n).len = 0;
                (*n).inner = 0;
                self.set_root(n);
            } else {
                (*n).spare = (*root).spare;
                (*root).spare = n;
            }
        }
    }

    /// Nodes to [`give`](ShardRef::give) before a change that needs `room`
    /// more slots in the leaf of `chunk` (1 for an insert, 2 for a
    /// removal) cannot ask for more: a split of the leaf and the full
    /// nodes above it, less the spares at hand. Lets the caller allocate
    /// before it takes the locks that the change happens under.
    pub fn needs(&self, chunk: Chunk, room: usize) -> usize {
        let Ok(key) = u32::try_from(chunk) else {
            return 0;
        };
        let Ok((path, leaf)) = self.path_to(key) else {
            return 1;
        };
        // SAFETY: a leaf of the locked shard's tree.
        if unsafe { (*leaf).len() } + room <= LEAF_CAP {
            return 0;
        }
        path.split_cost().saturating_sub(self.spares())
    }

    /// The leaf that holds `key`, and the way to it.
    fn descend(&self, key: u32, path: &mut Path) -> Option<*mut Node> {
        let mut n = self.root();
        path.depth = 0;
        loop {
            // SAFETY: nodes of the locked shard's tree are valid and ours.
            let node = unsafe { n.as_ref()? };
            if node.is_leaf() {
                return Some(n);
            }
            let i = node.child_for(u64::from(key));
            *path.steps.get_mut(path.depth)? = (n, i);
            path.depth += 1;
            n = node.kid(i);
        }
    }

    /// The COW chunk of origin chunk `chunk`, if it has an exception.
    pub fn lookup(&self, chunk: Chunk) -> Option<Chunk> {
        let key = u32::try_from(chunk).ok()?;
        // The bio path: a plain descent, no way back recorded.
        let mut n = self.root();
        let leaf = loop {
            // SAFETY: nodes of the locked shard's tree are valid while its
            // lock is held, which this guard's `&self` keeps for the borrow.
            let node = unsafe { n.as_ref()? };
            if node.is_leaf() {
                break node;
            }
            n = node.kid(node.child_for(u64::from(key)));
        };
        let i = leaf.leaf_upper(key);
        let s = *leaf.leaf().get(i.checked_sub(1)?)?;
        let (k, v) = (key_of(s), val_of(s));
        let d = if k == key {
            v & DENSE_MASK
        } else if v & START != 0 {
            (v & DENSE_MASK) + (key - k)
        } else {
            return None;
        };
        Some(self.layout.cow(u64::from(d)))
    }

    /// Records that origin chunk `chunk` is in COW chunk `cow`, joining the
    /// runs it extends.
    pub fn insert(&mut self, chunk: Chunk, cow: Chunk) -> Result<(), IndexError> {
        let (key, dense) = self.slot_of(chunk, cow)?;
        loop {
            let (path, leaf) = self.path_to(key)?;
            // SAFETY: a leaf of the locked shard's tree, ours to change.
            let leaf = unsafe { &mut *leaf };
            let i = leaf.leaf_upper(key);
            let prev = i.checked_sub(1).map(|j| leaf.slots[j]);
            if prev.is_some_and(|p| key_of(p) == key || val_of(p) & START != 0) {
                return Err(IndexError::Present);
            }
            let left = prev.filter(|&p| {
                val_of(p) & START == 0
                    && key_of(p) + 1 == key
                    && (val_of(p) & DENSE_MASK) + 1 == dense
            });
            let next = (i < leaf.len()).then(|| leaf.slots[i]);
            let right = next.filter(|&n| {
                val_of(n) & END == 0
                    && u64::from(key) + 1 == u64::from(key_of(n))
                    && dense + 1 == val_of(n) & DENSE_MASK
            });
            let grows = match (left, right) {
                (None, None) => true,
                (Some(l), None) => single(val_of(l)),
                (None, Some(r)) => single(val_of(r)),
                (Some(_), Some(_)) => false,
            };
            if grows && leaf.len() == LEAF_CAP {
                self.split(&path, leaf)?;
                continue;
            }
            insert_at(leaf, i, key, dense, left, right);
            return Ok(());
        }
    }

    /// Inserts `items` (by `chunks`: origin and COW chunk), sorted by
    /// origin chunk, all of this shard; of equal chunks, and for a chunk
    /// the index has already, the first mapping stays (the rest are
    /// skipped, as [`insert`](ShardRef::insert) refuses them). Returns how
    /// many items it consumed and, if it stopped before the end, why: on
    /// [`IndexError::NeedNodes`], give the nodes and call again with the
    /// rest.
    ///
    /// Why: activation loads millions of exceptions, and one insert at a
    /// time pays a descent and a shift of the leaf's tail per exception.
    /// Here the items of one leaf that join no run (all of them when the
    /// COW was written randomly) go in with one pass from the leaf's end:
    /// one descent and one tail move per leaf and batch. An item that
    /// joins a run, or a full leaf, takes the single insert.
    pub fn insert_sorted<T>(
        &mut self,
        items: &[T],
        chunks: impl Fn(&T) -> (Chunk, Chunk),
    ) -> (usize, Result<(), IndexError>) {
        let mut done = 0;
        while done < items.len() {
            match self.insert_leaf_run(&items[done..], &chunks) {
                Ok(0) => {
                    let (old, cow) = chunks(&items[done]);
                    match self.insert(old, cow) {
                        Ok(()) | Err(IndexError::Present) => done += 1,
                        Err(e) => return (done, Err(e)),
                    }
                }
                Ok(n) => done += n,
                Err(e) => return (done, Err(e)),
            }
        }
        (done, Ok(()))
    }

    /// The key and dense COW number an insert of `(chunk, cow)` stores.
    fn slot_of(&self, chunk: Chunk, cow: Chunk) -> Result<(u32, u32), IndexError> {
        let key = u32::try_from(chunk).map_err(|_| IndexError::OutOfRange)?;
        let dense = self
            .layout
            .dense(cow)
            .filter(|&d| d <= u64::from(DENSE_MASK))
            .ok_or(IndexError::OutOfRange)? as u32;
        Ok((key, dense))
    }

    /// The longest prefix of `items` that [`insert_sorted`] can put into
    /// the leaf of the first one in one pass, put there: items of that
    /// leaf, each already present (skipped) or joining no run of the leaf
    /// nor the item before it, as many as the leaf has free slots. Returns
    /// how many it consumed; 0 if the first item needs the single insert.
    ///
    /// [`insert_sorted`]: ShardRef::insert_sorted
    fn insert_leaf_run<T>(
        &mut self,
        items: &[T],
        chunks: &impl Fn(&T) -> (Chunk, Chunk),
    ) -> Result<usize, IndexError> {
        let Some(first) = items.first() else {
            return Ok(0);
        };
        let (k0, _) = chunks(first);
        let (path, leaf) = self.path_to(u32::try_from(k0).map_err(|_| IndexError::OutOfRange)?)?;
        // Keys from `hi` on belong to leaves further right: the tightest
        // separator above the way down.
        let hi = path.steps[..path.depth]
            .iter()
            // SAFETY: inner nodes of the locked shard's tree.
            .filter_map(|&(n, i)| unsafe { (i < (*n).len()).then(|| (*n).slots[i]) })
            .min()
            .unwrap_or(u64::MAX);
        // SAFETY: a leaf of the locked shard's tree, ours to change.
        let leaf = unsafe { &mut *leaf };
        let len = leaf.len();
        let free = LEAF_CAP - len;
        // What the old slot before position `p` says of key `k`.
        let present = |leaf: &Node, p: usize, k: u32| {
            p.checked_sub(1)
                .map(|j| leaf.slots[j])
                .is_some_and(|s| key_of(s) == k || val_of(s) & START != 0)
        };
        // Pass 1: how far the run goes, and how many slots it adds.
        let (mut end, mut adds) = (0, 0);
        // The previous item's key, and its mapping if it is new here.
        let mut last: Option<u32> = None;
        let mut prev: Option<(u32, u32)> = None;
        for item in items {
            let (old, cow) = chunks(item);
            let (k, d) = self.slot_of(old, cow)?;
            if u64::from(k) >= hi {
                break;
            }
            if last == Some(k) {
                // A later mapping of the same chunk: skipped.
                end += 1;
                continue;
            }
            last = Some(k);
            let p = leaf.leaf_upper(k);
            if present(leaf, p, k) {
                prev = None;
                end += 1;
                continue;
            }
            let joins_prev = prev.is_some_and(|(pk, pd)| pk + 1 == k && pd + 1 == d);
            let joins_left = p.checked_sub(1).map(|j| leaf.slots[j]).is_some_and(|s| {
                val_of(s) & START == 0 && key_of(s) + 1 == k && (val_of(s) & DENSE_MASK) + 1 == d
            });
            let joins_right = (p < len).then(|| leaf.slots[p]).is_some_and(|s| {
                val_of(s) & END == 0
                    && u64::from(k) + 1 == u64::from(key_of(s))
                    && d + 1 == val_of(s) & DENSE_MASK
            });
            if joins_prev || joins_left || joins_right || adds == free {
                break;
            }
            adds += 1;
            prev = Some((k, d));
            end += 1;
        }
        if adds == 0 {
            // Nothing to move: only skips (consumed), or nothing at all.
            return Ok(end);
        }
        // Pass 2, from the end: the old slots above each new key move up
        // (one `copy_within` per gap) by the new slots still to place
        // below them; the old slots at or below the first new key stay.
        // `slots[..r]` is still the old leaf's start, where each new key's
        // place is found as in pass 1.
        let (mut r, mut w) = (len, len + adds);
        for j in (0..end).rev() {
            let (old, cow) = chunks(&items[j]);
            let (k, d) = self.slot_of(old, cow)?;
            if j > 0 && key_of_item(chunks, &items[j - 1]) == Some(k) {
                continue;
            }
            let p = leaf.slots[..r].partition_point(|&s| key_of(s) <= k);
            if present(leaf, p, k) {
                continue;
            }
            let up = w - r;
            leaf.slots.copy_within(p..r, p + up);
            r = p;
            w = p + up - 1;
            leaf.slots[w] = pack(k, d);
        }
        debug_assert_eq!(w, r);
        leaf.len += adds as u32;
        Ok(end)
    }

    /// Takes origin chunk `chunk` out of the index (a merge copied it
    /// back), from anywhere in its run.
    pub fn remove(&mut self, chunk: Chunk) -> Result<(), IndexError> {
        let key = u32::try_from(chunk).map_err(|_| IndexError::NotFound)?;
        loop {
            let (path, leaf) = self.path_to(key).map_err(|_| IndexError::NotFound)?;
            // SAFETY: a leaf of the locked shard's tree, ours to change.
            let leaf = unsafe { &mut *leaf };
            let j = leaf
                .leaf_upper(key)
                .checked_sub(1)
                .ok_or(IndexError::NotFound)?;
            let (k, v) = (key_of(leaf.slots[j]), val_of(leaf.slots[j]));
            if k != key && v & START == 0 {
                return Err(IndexError::NotFound);
            }
            if k != key && leaf.len() + 2 > LEAF_CAP {
                // A cut in the middle may need two more slots.
                self.split(&path, leaf)?;
                continue;
            }
            remove_at(leaf, j, key);
            return Ok(());
        }
    }

    /// The way to the leaf of `key`; `NeedNodes(1)` for an empty shard.
    fn path_to(&self, key: u32) -> Result<(Path, *mut Node), IndexError> {
        let mut path = Path {
            steps: [(ptr::null_mut(), 0); MAX_DEPTH],
            depth: 0,
        };
        if self.root().is_null() {
            return Err(IndexError::NeedNodes(1));
        }
        // Deeper than MAX_DEPTH cannot be built (`split`).
        let leaf = self.descend(key, &mut path).ok_or(IndexError::OutOfRange)?;
        Ok((path, leaf))
    }

    /// Splits the full `leaf` (and the full inner nodes above it), with
    /// spare nodes only; asks for more if there are too few.
    fn split(&mut self, path: &Path, leaf: &mut Node) -> Result<(), IndexError> {
        let steps = &path.steps[..path.depth];
        if let Some(&(parent, idx)) = steps.last() {
            // SAFETY: the parent and its children belong to the locked
            // shard; a sibling is another node than `leaf`.
            let parent = unsafe { &mut *parent };
            if idx < parent.len() {
                // SAFETY: as above.
                if let Some(sep) = leaf.give_right(unsafe { &mut *parent.kid(idx + 1) }) {
                    parent.set_key(idx, sep);
                    return Ok(());
                }
            }
            if idx > 0 {
                // SAFETY: as above.
                if let Some(sep) = leaf.give_left(unsafe { &mut *parent.kid(idx - 1) }) {
                    parent.set_key(idx - 1, sep);
                    return Ok(());
                }
            }
        }
        let need = path.split_cost();
        if need == path.depth + 2 && path.depth + 1 >= MAX_DEPTH {
            return Err(IndexError::OutOfRange);
        }
        let have = self.spares();
        if have < need {
            return Err(IndexError::NeedNodes(need - have));
        }
        let old_root = self.root();
        let right = self.pop_spare().ok_or(IndexError::NeedNodes(need))?;
        let mut sep = leaf.split_leaf(right);
        let mut right: *mut Node = right;
        for &(parent, idx) in steps.iter().rev() {
            // SAFETY: inner nodes on the path belong to the locked shard.
            let parent = unsafe { &mut *parent };
            if parent.len() < INNER_CAP {
                parent.inner_insert(idx, sep, right);
                return Ok(());
            }
            let r2 = self.pop_spare().ok_or(IndexError::NeedNodes(need))?;
            let (up, m) = parent.split_inner(r2);
            if idx <= m {
                parent.inner_insert(idx, sep, right);
            } else {
                r2.inner_insert(idx - m - 1, sep, right);
            }
            sep = up;
            right = r2;
        }
        let root = self.pop_spare().ok_or(IndexError::NeedNodes(need))?;
        root.make_root(old_root, sep, right);
        let root: *mut Node = root;
        // The spare list lives in the root: move it up.
        // SAFETY: both are nodes of the locked shard.
        unsafe {
            (*root).spare = (*old_root).spare;
            (*old_root).spare = ptr::null_mut();
        }
        self.set_root(root);
        Ok(())
    }
}

/// The index key of an item's origin chunk, if it has one.
fn key_of_item<T>(chunks: &impl Fn(&T) -> (Chunk, Chunk), item: &T) -> Option<u32> {
    u32::try_from(chunks(item).0).ok()
}
