//! The exception hash tables: buckets of singly linked exceptions, each
//! bucket locked by bit 0 of its head word, as `hlist_bl` does.
//!
//! One [`ExceptionTable`] type serves both of a snapshot's tables, as in
//! upstream's `dm-snap.c`: the complete table (a `hash_shift` of up to 8,
//! entries kept sorted and merged into runs of consecutive chunks within a
//! group of `1 << hash_shift`, the run length in the top 8 bits of
//! `new_chunk`; upstream's shift is always 8, ours is
//! [`complete_hash_shift`](super::chunk::complete_hash_shift)), and the
//! pending table (`hash_shift` 0, no merging). The bucket lock is a
//! [`BucketLock`]: the kernel module locks the head with `hlist_bl_lock()`
//! (a bit spinlock, preemption off), the userspace tests with [`SpinBit`].
//! Entries are owned by the caller, which allocates them before taking a
//! bucket lock and frees what the table hands back after dropping it, so no
//! allocation ever happens under the lock.

use super::chunk::Chunk;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicUsize, Ordering};

/// Bits of `new_chunk` that hold the COW chunk number.
pub const CHUNK_NUMBER_BITS: u32 = 56;
const CHUNK_NUMBER_MASK: u64 = (1 << CHUNK_NUMBER_BITS) - 1;
/// Longest run of consecutive chunks one entry can describe, less one.
pub const MAX_CONSECUTIVE: u64 = (1 << (64 - CHUNK_NUMBER_BITS)) - 1;

/// An exception: origin chunk `old_chunk` (and the `count` chunks after
/// it) live in the COW from chunk `new_chunk`. `repr(C)` so that a pending
/// exception can embed one as its first field.
#[repr(C)]
#[derive(Debug)]
pub struct Exception {
    next: *mut Exception,
    /// First origin chunk of the run.
    pub old_chunk: Chunk,
    /// COW chunk of `old_chunk`, with the run length in the top 8 bits.
    pub new_chunk: u64,
}

// SAFETY: `next` is only touched under the lock of the bucket the entry is
// in, or by the owner of an entry that is in no table.
unsafe impl Send for Exception {}
// SAFETY: as for `Send`.
unsafe impl Sync for Exception {}

impl Exception {
    /// A single-chunk exception, not in any table.
    pub const fn new(old_chunk: Chunk, new_chunk: Chunk) -> Self {
        Self {
            next: ptr::null_mut(),
            old_chunk,
            new_chunk,
        }
    }

    /// COW chunk of `old_chunk`.
    pub fn chunk_number(&self) -> Chunk {
        self.new_chunk & CHUNK_NUMBER_MASK
    }

    /// Chunks after `old_chunk` in this run (0 for a single chunk).
    pub fn consecutive(&self) -> u64 {
        self.new_chunk >> CHUNK_NUMBER_BITS
    }

    /// True if the run covers `chunk`.
    pub fn covers(&self, chunk: Chunk) -> bool {
        // No `old_chunk + consecutive()`: it overflows near `u64::MAX`.
        chunk >= self.old_chunk && chunk - self.old_chunk <= self.consecutive()
    }

    /// COW chunk of `chunk`, which the run must cover.
    pub fn remap(&self, chunk: Chunk) -> Chunk {
        self.chunk_number() + (chunk - self.old_chunk)
    }
}

/// How a bucket is locked. A bucket is a `Head`: a word holding the first
/// entry, plus whatever lock guards it. `hlist_bl` keeps the lock in bit 0
/// of the word itself ([`SpinBit`] here, `hlist_bl_lock()` in the kernel);
/// a kernel with `CONFIG_PREEMPT_RT` puts a spinlock beside the word.
pub trait BucketLock {
    /// One bucket.
    type Head;
    /// What a whole table's buckets share for lock checking: in the kernel
    /// a lockdep map, so that lockdep sees bit locks it otherwise cannot
    /// (one class per kind of table); `()` where there is nothing to check.
    type Class;
    /// Bits of the word the lock owns (1 for a bit lock, 0 otherwise).
    const LOCK_BITS: usize;
    /// The first-entry word of `head`.
    fn word(head: &Self::Head) -> &AtomicUsize;
    /// Spins until the bucket `head` of a table of `class` is ours (a bit
    /// lock also disables preemption in the kernel, until
    /// [`BucketLock::unlock`]).
    fn lock(class: &Self::Class, head: &Self::Head);
    /// Releases the bucket.
    fn unlock(class: &Self::Class, head: &Self::Head);
    /// Locks `a`, then `b` (a chunk's buckets in two tables). One call
    /// where the kernel's lock is behind a C helper: the origin-write path
    /// takes a pair per snapshot and write.
    fn lock_pair(ca: &Self::Class, a: &Self::Head, cb: &Self::Class, b: &Self::Head) {
        Self::lock(ca, a);
        Self::lock(cb, b);
    }
    /// Releases `b`, then `a`.
    fn unlock_pair(ca: &Self::Class, a: &Self::Head, cb: &Self::Class, b: &Self::Head) {
        Self::unlock(cb, b);
        Self::unlock(ca, a);
    }
}

/// Why [`Locked::remove_chunk`] could not take a chunk out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveChunkError {
    /// No entry covers it ("exception ... is on disk but not in memory").
    NotFound,
    /// It is inside the run `first..=last`, not at one of its ends.
    Middle {
        /// First origin chunk of the run.
        first: Chunk,
        /// Last origin chunk of the run.
        last: Chunk,
    },
}

/// A plain spinning bit lock on bit 0 of the word, for userspace.
pub struct SpinBit;

impl BucketLock for SpinBit {
    type Head = AtomicUsize;
    type Class = ();
    const LOCK_BITS: usize = 1;
    fn word(head: &AtomicUsize) -> &AtomicUsize {
        head
    }
    fn lock(_class: &(), head: &AtomicUsize) {
        while head.fetch_or(1, Ordering::Acquire) & 1 != 0 {
            while head.load(Ordering::Relaxed) & 1 != 0 {
                core::hint::spin_loop();
            }
        }
    }
    fn unlock(_class: &(), head: &AtomicUsize) {
        head.fetch_and(!1, Ordering::Release);
    }
}

/// A hash table of exceptions over bucket heads `H` (a slice of
/// `L::Head`, with zeroed words, a power of two of them), locked with `L`.
pub struct ExceptionTable<H: Deref<Target = [L::Head]>, L: BucketLock> {
    heads: H,
    class: L::Class,
    mask: u64,
    hash_shift: u32,
    _lock: PhantomData<L>,
}

impl<H: Deref<Target = [L::Head]>, L: BucketLock> ExceptionTable<H, L> {
    /// A table over `heads`; a `hash_shift` above 0 (at most 8) makes a
    /// complete table (sorted buckets, runs within a group of `1 <<
    /// hash_shift` chunks), 0 a table without runs (pending; a complete
    /// table whose buckets outnumber the origin's chunks, where no run
    /// could form). `None` unless the head count is a power of two and
    /// every head is zero (an empty, unlocked bucket: the table would
    /// otherwise follow whatever a head holds as an entry pointer).
    pub fn new(heads: H, hash_shift: u32) -> Option<Self>
    where
        L::Class: Default,
    {
        Self::with_class(heads, hash_shift, L::Class::default())
    }

    /// The same, with the lock class its buckets are checked as.
    pub fn with_class(heads: H, hash_shift: u32, class: L::Class) -> Option<Self> {
        let n = heads.as_ref().len();
        let empty = heads
            .iter()
            .all(|h| L::word(h).load(core::sync::atomic::Ordering::Relaxed) == 0);
        if !n.is_power_of_two() || !empty {
            return None;
        }
        Some(Self {
            heads,
            class,
            mask: n as u64 - 1,
            hash_shift,
            _lock: PhantomData,
        })
    }

    /// Number of buckets.
    pub fn buckets(&self) -> usize {
        self.heads.len()
    }

    fn head(&self, chunk: Chunk) -> &L::Head {
        &self.heads[((chunk >> self.hash_shift) & self.mask) as usize]
    }

    pub(super) fn locked(&self, chunk: Chunk) -> Locked<'_, L> {
        Locked {
            head: self.head(chunk),
            class: &self.class,
            merge: self.hash_shift != 0,
        }
    }

    /// True if `b` is the bucket of `chunk` in this table (for wrappers
    /// that must check a guard belongs to an entry they were handed).
    pub fn holds(&self, b: &Locked<'_, L>, chunk: Chunk) -> bool {
        ptr::eq(self.head(chunk), b.head)
    }

    /// Locks the bucket of `chunk`. Keep the guard short: it spins other
    /// CPUs, with preemption off in the kernel.
    pub fn lock(&self, chunk: Chunk) -> Bucket<'_, L> {
        let b = self.locked(chunk);
        L::lock(b.class, b.head);
        Bucket(b)
    }

    /// Locks the bucket of `chunk` here, then in `other` (upstream's
    /// `dm_exception_table_lock`: complete, then pending).
    pub fn lock_pair<'a, H2: Deref<Target = [L::Head]>>(
        &'a self,
        other: &'a ExceptionTable<H2, L>,
        chunk: Chunk,
    ) -> BucketPair<'a, L> {
        let (first, second) = (self.locked(chunk), other.locked(chunk));
        L::lock_pair(first.class, first.head, second.class, second.head);
        BucketPair { first, second }
    }

    /// Unlinks every entry and passes it to `free`; needs no lock, since
    /// `&mut self` excludes every other user.
    pub fn drain(&mut self, mut free: impl FnMut(NonNull<Exception>)) {
        for head in self.heads.iter() {
            let mut p = (L::word(head).swap(0, Ordering::Relaxed) & !1) as *mut Exception;
            while let Some(e) = NonNull::new(p) {
                // SAFETY: entries in a table are valid until removed; this
                // one is unlinked now and handed to its owner.
                p = unsafe { (*e.as_ptr()).next };
                free(e);
            }
        }
    }
}

/// A bucket whose lock the holder of this value owns: what may be done in
/// a locked bucket. Only [`Bucket`] and [`BucketPair`] make one, and they
/// unlock it when dropped.
pub struct Locked<'a, L: BucketLock> {
    pub(super) head: &'a L::Head,
    pub(super) class: &'a L::Class,
    merge: bool,
}

/// A locked bucket; unlocked on drop.
pub struct Bucket<'a, L: BucketLock>(Locked<'a, L>);

impl<'a, L: BucketLock> Deref for Bucket<'a, L> {
    type Target = Locked<'a, L>;
    fn deref(&self) -> &Locked<'a, L> {
        &self.0
    }
}

impl<'a, L: BucketLock> DerefMut for Bucket<'a, L> {
    fn deref_mut(&mut self) -> &mut Locked<'a, L> {
        &mut self.0
    }
}

impl<'a, L: BucketLock> Bucket<'a, L> {
    /// Also locks the bucket of `chunk` in `other`, keeping this one: the
    /// pair [`ExceptionTable::lock_pair`] would have taken, in the same
    /// order, for a caller that needed the second bucket only after looking
    /// in the first.
    pub fn and_lock<H2: Deref<Target = [L::Head]>>(
        self,
        other: &'a ExceptionTable<H2, L>,
        chunk: Chunk,
    ) -> BucketPair<'a, L> {
        // The pair takes over this guard's lock: no unlock on our drop.
        let this = core::mem::ManuallyDrop::new(self);
        let first = Locked {
            head: this.0.head,
            class: this.0.class,
            merge: this.0.merge,
        };
        let second = other.locked(chunk);
        L::lock(second.class, second.head);
        BucketPair { first, second }
    }
}

impl<L: BucketLock> Drop for Bucket<'_, L> {
    fn drop(&mut self) {
        L::unlock(self.0.class, self.0.head);
    }
}

/// The buckets of one chunk in two tables, locked together by
/// [`ExceptionTable::lock_pair`]; unlocked together on drop.
pub struct BucketPair<'a, L: BucketLock> {
    /// The bucket of the table `lock_pair` was called on (locked first).
    pub first: Locked<'a, L>,
    /// The bucket of the other table.
    pub second: Locked<'a, L>,
}

impl<L: BucketLock> Drop for BucketPair<'_, L> {
    fn drop(&mut self) {
        L::unlock_pair(
            self.first.class,
            self.first.head,
            self.second.class,
            self.second.head,
        );
    }
}

impl<L: BucketLock> Locked<'_, L> {
    fn first(&self) -> *mut Exception {
        (L::word(self.head).load(Ordering::Relaxed) & !1) as *mut Exception
    }

    fn set_first(&self, e: *mut Exception) {
        // Keep the lock's bits (a bit lock: ours, held) set.
        L::word(self.head).store(e as usize | L::LOCK_BITS, Ordering::Relaxed);
    }

    /// The entry covering `chunk`, if any (only valid while locked). A
    /// sorted bucket is walked only up to where `chunk` would be: upstream
    /// walks all of it on a miss, the common case of an origin write.
    pub fn lookup(&self, chunk: Chunk) -> Option<NonNull<Exception>> {
        let mut p = self.first();
        while let Some(e) = NonNull::new(p) {
            // SAFETY: entries linked in a locked bucket are valid.
            let r = unsafe { e.as_ref() };
            if r.covers(chunk) {
                return Some(e);
            }
            if self.merge && chunk < r.old_chunk {
                // Runs are sorted and disjoint: none further on covers it.
                return None;
            }
            p = r.next;
        }
        None
    }

    /// Inserts `new`. In a complete table the bucket stays sorted by
    /// `old_chunk` and a `new` adjacent to a run in both old and new chunk
    /// extends it (`dm_insert_exception`); then `new` is not linked and is
    /// returned for the caller to free after unlocking.
    ///
    /// # Safety
    ///
    /// `new` must be valid, in no table, and stay valid until removed.
    pub unsafe fn insert(&mut self, new: NonNull<Exception>) -> Option<NonNull<Exception>> {
        let n = new.as_ptr();
        if !self.merge {
            // SAFETY: `new` is valid and unlinked (caller).
            unsafe { (*n).next = self.first() };
            self.set_first(n);
            return None;
        }
        // SAFETY: `new` is valid (caller).
        let (old, cow) = unsafe { ((*n).old_chunk, (*n).new_chunk) };
        let mut prev: *mut Exception = ptr::null_mut();
        let mut p = self.first();
        while let Some(e) = NonNull::new(p) {
            // SAFETY: entries linked in a locked bucket are valid, and we
            // hold the lock, so we may change them.
            let e = unsafe { &mut *e.as_ptr() };
            let count = e.consecutive();
            if count < MAX_CONSECUTIVE {
                // Checked: entries may come from a damaged COW.
                if Some(old) == e.old_chunk.checked_add(count + 1)
                    && Some(cow) == e.chunk_number().checked_add(count + 1)
                {
                    e.new_chunk += 1 << CHUNK_NUMBER_BITS;
                    return Some(new);
                }
                if old.checked_add(1) == Some(e.old_chunk)
                    && cow.checked_add(1) == Some(e.chunk_number())
                {
                    e.new_chunk += 1 << CHUNK_NUMBER_BITS;
                    e.old_chunk -= 1;
                    e.new_chunk -= 1;
                    return Some(new);
                }
            }
            if old < e.old_chunk {
                break;
            }
            prev = e;
            p = e.next;
        }
        // SAFETY: `new` is valid and unlinked; `prev` is a linked entry.
        unsafe {
            (*n).next = p;
            match prev.is_null() {
                true => self.set_first(n),
                false => (*prev).next = n,
            }
        }
        None
    }

    /// Takes chunk `chunk` out of the entry covering it, as a merge does
    /// (upstream's `__remove_single_exception_chunk`): a single-chunk entry
    /// is unlinked and returned, for the caller to free after unlocking; a
    /// run loses its first or last chunk. Chunks are merged in the reverse
    /// order of their insertion, so never from the middle of a run.
    pub fn remove_chunk(
        &mut self,
        chunk: Chunk,
    ) -> Result<Option<NonNull<Exception>>, RemoveChunkError> {
        let e = self.lookup(chunk).ok_or(RemoveChunkError::NotFound)?;
        // SAFETY: an entry linked in a bucket whose lock we hold is valid
        // and ours to change.
        let r = unsafe { &mut *e.as_ptr() };
        let count = r.consecutive();
        if count == 0 {
            self.remove(e);
            return Ok(Some(e));
        }
        if chunk == r.old_chunk {
            r.old_chunk += 1;
            // The next COW chunk, one chunk fewer in the run.
            r.new_chunk = r.new_chunk + 1 - (1 << CHUNK_NUMBER_BITS);
        } else if chunk == r.old_chunk + count {
            r.new_chunk -= 1 << CHUNK_NUMBER_BITS;
        } else {
            return Err(RemoveChunkError::Middle {
                first: r.old_chunk,
                last: r.old_chunk + count,
            });
        }
        Ok(None)
    }

    /// Unlinks `e` if it is in this bucket; true if it was.
    pub fn remove(&mut self, e: NonNull<Exception>) -> bool {
        let target = e.as_ptr();
        let mut prev: *mut Exception = ptr::null_mut();
        let mut p = self.first();
        while !p.is_null() {
            // SAFETY: entries linked in a locked bucket are valid.
            let next = unsafe { (*p).next };
            if p == target {
                match prev.is_null() {
                    true => self.set_first(next),
                    // SAFETY: `prev` is a linked entry and we hold the lock.
                    false => unsafe { (*prev).next = next },
                }
                // SAFETY: `p` is valid; it is now unlinked.
                unsafe { (*p).next = ptr::null_mut() };
                return true;
            }
            prev = p;
            p = next;
        }
        false
    }
}
