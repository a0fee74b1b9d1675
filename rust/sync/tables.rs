//! A snapshot's pending exceptions, and the pair of locks over both of
//! its exception tables, as owners of their entries, so the
//! snapshot code above handles no raw pointer: what a guard returns lives
//! as long as the guard, and a pending exception in flight is a [`Ticket`].
//!
//! The pending table is [`crate::logic::exception_table`]'s bucket-locked
//! hash table ([`BucketLocks`]: `hlist_bl` bit locks, or spinlocks on
//! `PREEMPT_RT`); the complete one, in [`super::complete`], is locked the
//! same way. This file owns the memory behind the pending table:
//!
//! - [`PendingTable`]: pending exceptions (a `P` of the caller's, plus the
//!   table link, a completion-order link and a whole-chunk-write slot),
//!   from a mempool (`pending_pool`). A [`PendingBox`] is one not in the
//!   table; inserting it gives a [`Ticket`]: the sole right to remove it
//!   again, which travels through dm-kcopyd as the copy's context. Its
//!   `P` is reached only through the locked bucket ([`ChunkBuckets`]).
//! - [`Order`]: the allocation order copies complete in (see
//!   [`crate::logic::completion_order`]), holding tickets.
//! - A ticket can carry the next one of a shared copy ([`Ticket::link`]):
//!   one origin read written to several snapshots' COWs travels through
//!   dm-kcopyd as a chain of tickets, possibly of different tables.
//!
//! Misuse (a ticket dropped instead of removed, a box dropped while in an
//! order) leaks the entry rather than freeing memory still linked; the
//! table's drop then waits for it forever, which shows as a hung `dmsetup
//! remove`, not a use-after-free.

use super::complete::{InsertError, NewException, Pair};
use super::BucketLocks;
use crate::dm::kcopyd::{CopyJob, FullBioSlot, HasFullSlot, JobPtr};
use crate::dm::mempool::Mempool;
use crate::logic::chunk::Chunk;
use crate::logic::completion_order::{CompletionOrder, OrderLink, Ordered, Ready};
use crate::logic::exception_table::{BucketLock, Exception, ExceptionTable};
use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use kernel::ffi::c_void;
use kernel::prelude::*;

pub(super) type Raw = ExceptionTable<KVVec<<BucketLocks as BucketLock>::Head>, BucketLocks>;

/// The two kinds of table, each one lock class for lockdep: a chunk's
/// complete bucket (or index shard) is always taken before its pending one.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Complete,
    Pending,
}

/// The lock class of a kind of table, and its bucket heads.
pub(super) fn class_of(
    kind: Kind,
    buckets: usize,
) -> Result<(
    <BucketLocks as BucketLock>::Class,
    KVVec<<BucketLocks as BucketLock>::Head>,
)> {
    let (name, key) = match kind {
        Kind::Complete => (
            kernel::c_str!("dm_snap_rs:complete_bucket"),
            kernel::static_lock_class!(),
        ),
        Kind::Pending => (
            kernel::c_str!("dm_snap_rs:pending_bucket"),
            kernel::static_lock_class!(),
        ),
    };
    Ok((
        BucketLocks::new_class(name, key)?,
        BucketLocks::new_heads(buckets, key)?,
    ))
}

pub(super) fn new_raw(buckets: usize, hash_shift: u32, kind: Kind) -> Result<Raw> {
    let (class, heads) = class_of(kind, buckets)?;
    Raw::with_class(heads, hash_shift, class).ok_or(EINVAL)
}

/// Test only (`bucket_lockdep_selftest`, lockdep kernels): takes a complete
/// and a pending bucket in the design's order, then in the reverse order,
/// on two small tables of the snapshots' own lock classes. Lockdep must
/// report the inversion; if it does not, the bucket locks are invisible to
/// it.
pub fn lockdep_inversion_selftest() -> Result {
    let complete = new_raw(64, 0, Kind::Complete)?;
    let pending = new_raw(64, 0, Kind::Pending)?;
    drop(complete.lock_pair(&pending, 1));
    let p = pending.lock(1);
    let c = complete.lock(1);
    drop(c);
    drop(p);
    Ok(())
}

/// What a pending exception carries: `Self`, under the bucket lock (or
/// its owner's), and a [`PendingData::Ctx`] fixed at allocation and
/// readable by whoever holds the entry (its ticket, e.g. a copy callback).
pub trait PendingData: Send + Sized {
    /// The immutable part.
    type Ctx: Send + Sync;
}

/// A pending exception: the table entry first, so a bucket walk that finds
/// the `Exception` has the whole entry (`container_of`).
#[repr(C)]
struct Entry<P: PendingData> {
    e: Exception,
    home: NonNull<Inner<P>>,
    ctx: P::Ctx,
    /// Under the [`Order`]'s owner's lock.
    order: UnsafeCell<OrderLink<Entry<P>>>,
    /// Id of the [`Order`] the entry is in, 0 for none.
    in_order: AtomicUsize,
    full: FullBioSlot,
    /// The next ticket of a shared copy, owned through this link (its
    /// entry may belong to another table); null for none.
    next: AtomicPtr<Entry<P>>,
    /// Under the bucket lock while in the table; the owner's otherwise.
    data: UnsafeCell<P>,
}

// SAFETY: `link` returns the `order` field of the entry itself, the same
// every time, and only `Order` touches it.
unsafe impl<P: PendingData> Ordered for Entry<P> {
    unsafe fn link(this: NonNull<Self>) -> NonNull<OrderLink<Self>> {
        // SAFETY: `this` is valid (caller); a field of it is not null.
        unsafe {
            NonNull::new_unchecked(UnsafeCell::raw_get(ptr::addr_of!((*this.as_ptr()).order)))
        }
    }
}

// SAFETY: an entry moves between CPUs with its data (`P: Send`); shared
// fields are atomics, the rest is under a lock or owned (module doc).
unsafe impl<P: PendingData> Send for Entry<P> {}

struct Inner<P: PendingData> {
    raw: Raw,
    pool: Mempool<Entry<P>>,
    count: AtomicUsize,
}

/// Pending exceptions, owned by the table or by a [`PendingBox`].
pub struct PendingTable<P: PendingData> {
    inner: KBox<Inner<P>>,
}

impl<P: PendingData> PendingTable<P> {
    /// `buckets` (a power of two) buckets, `reserved` entries kept in the
    /// pool (upstream's `MIN_IOS`).
    pub fn new(buckets: usize, reserved: i32) -> Result<Self> {
        let inner = Inner {
            raw: new_raw(buckets, 0, Kind::Pending)?,
            pool: Mempool::new(reserved)?,
            count: AtomicUsize::new(0),
        };
        Ok(Self {
            inner: KBox::new(inner, GFP_KERNEL)?,
        })
    }

    fn entry(&self, old: Chunk, ctx: P::Ctx, data: P) -> Entry<P> {
        Entry {
            e: Exception::new(old, 0),
            home: NonNull::from(&*self.inner),
            ctx,
            order: UnsafeCell::new(OrderLink::new()),
            in_order: AtomicUsize::new(0),
            full: FullBioSlot::new(),
            next: AtomicPtr::new(ptr::null_mut()),
            data: UnsafeCell::new(data),
        }
    }

    /// A new pending exception of origin chunk `old`, from the pool
    /// (`GFP_NOIO`): may sleep, never fails. Call with no bucket lock held.
    pub fn alloc(&self, old: Chunk, ctx: P::Ctx, data: P) -> PendingBox<P> {
        self.inner.count.fetch_add(1, Ordering::AcqRel);
        // INVARIANT: a fresh entry of the pool, counted above.
        PendingBox(self.inner.pool.alloc(self.entry(old, ctx, data)))
    }

    /// The same without sleeping, under a bucket lock; `None` when no memory
    /// is at hand (then drop the locks and use [`PendingTable::alloc`]).
    pub fn try_alloc(&self, old: Chunk, ctx: P::Ctx, data: P) -> Option<PendingBox<P>> {
        self.inner.count.fetch_add(1, Ordering::AcqRel);
        let e = self.inner.pool.try_alloc(self.entry(old, ctx, data));
        if e.is_none() {
            self.inner.count.fetch_sub(1, Ordering::AcqRel);
        }
        // INVARIANT: a fresh entry of the pool, counted above.
        e.map(PendingBox)
    }

    /// The hash table, for [`super::complete`] to lock a pair.
    pub(super) fn raw(&self) -> &Raw {
        &self.inner.raw
    }

    /// Pending exceptions that exist (in the table or not).
    pub fn in_use(&self) -> usize {
        self.inner.count.load(Ordering::Acquire)
    }
}

impl<P: PendingData> Drop for PendingTable<P> {
    fn drop(&mut self) {
        // Entries point at `inner`: it must outlive them.
        crate::dm::poll_until(1000, || self.in_use() == 0);
    }
}

/// A pending exception of a [`PendingTable`] in no table: its owner may
/// read and change it; freed to the pool on drop.
///
/// # Invariants
///
/// The pointer is an initialized entry from its table's pool, linked in no
/// bucket and reachable through no other handle; its table's count of
/// entries in use includes it, so the table and its pool outlive it.
pub struct PendingBox<P: PendingData>(NonNull<Entry<P>>);

// SAFETY: owns its entry; `P: Send`.
unsafe impl<P: PendingData> Send for PendingBox<P> {}

impl<P: PendingData> PendingBox<P> {
    /// Origin chunk.
    pub fn old_chunk(&self) -> Chunk {
        // SAFETY: we own the entry.
        unsafe { (*self.0.as_ptr()).e.old_chunk }
    }

    /// COW chunk.
    pub fn new_chunk(&self) -> Chunk {
        // SAFETY: we own the entry.
        unsafe { (*self.0.as_ptr()).e.new_chunk }
    }

    /// Sets the COW chunk (before it goes in the table).
    pub fn set_new_chunk(&mut self, c: Chunk) {
        // SAFETY: we own the entry and hold `&mut self`.
        unsafe { (*self.0.as_ptr()).e.new_chunk = c };
    }

    /// The caller's data.
    pub fn data(&mut self) -> &mut P {
        // SAFETY: we own the entry; `&mut self` makes the borrow unique.
        unsafe { &mut *(*self.0.as_ptr()).data.get() }
    }

    /// The whole-chunk write slot (see [`crate::dm::kcopyd::Kcopyd::write_full`]).
    pub fn full_slot(&self) -> &FullBioSlot {
        // SAFETY: we own the entry; the slot is atomics only.
        unsafe { &(*self.0.as_ptr()).full }
    }
}

impl<P: PendingData> Drop for PendingBox<P> {
    fn drop(&mut self) {
        let e = self.0;
        // SAFETY: we own the entry, valid; its table outlives it
        // (`PendingTable::drop` waits for every entry).
        let (in_order, home) = unsafe {
            (
                (*e.as_ptr()).in_order.load(Ordering::Acquire),
                (*e.as_ptr()).home,
            )
        };
        if in_order != 0 {
            // Still linked in an order: leak rather than free linked memory.
            crate::dm_err!("pending exception dropped while ordered; leaked\n");
            return;
        }
        // SAFETY: see above: `home` outlives the entry.
        let inner = unsafe { home.as_ref() };
        // SAFETY: the entry came from this pool, is in no table or order,
        // and is not used after this.
        unsafe { inner.pool.free(e) };
        // Last: once the count is 0 the table may go.
        inner.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A pending exception in its table: the only handle that can take it out
/// again ([`ChunkBuckets::pending_remove`]). Its chunks are readable
/// without a lock (they never change in the table); its data only through
/// the locked bucket. Dropping one leaks the entry (it stays in the table).
///
/// # Invariants
///
/// The pointer is an initialized entry linked in a bucket of its table, and
/// this is the one handle that can unlink it (while a kcopyd job or an
/// [`Order`] holds it as a raw pointer, no `Ticket` to it exists); its
/// table's count of entries in use includes it.
pub struct Ticket<P: PendingData>(NonNull<Entry<P>>);

// SAFETY: only a handle; the entry is `Send` for `P: Send`.
unsafe impl<P: PendingData> Send for Ticket<P> {}

impl<P: PendingData> Ticket<P> {
    /// The immutable part.
    pub fn ctx(&self) -> &P::Ctx {
        // SAFETY: the entry is valid while a ticket exists (only removal,
        // which consumes the ticket, frees it); `ctx` is never written after
        // allocation, so a shared reference to that field alone is sound.
        unsafe { &*ptr::addr_of!((*self.0.as_ptr()).ctx) }
    }

    /// Origin chunk.
    pub fn old_chunk(&self) -> Chunk {
        // SAFETY: the entry is valid while a ticket exists (only removal,
        // which consumes the ticket, frees it); `old_chunk` is not written
        // while it is in the table. A raw read: no reference to the entry.
        unsafe { ptr::addr_of!((*self.0.as_ptr()).e.old_chunk).read() }
    }

    /// COW chunk.
    pub fn new_chunk(&self) -> Chunk {
        // SAFETY: as in `old_chunk`.
        unsafe { ptr::addr_of!((*self.0.as_ptr()).e.new_chunk).read() }
    }

    fn home(&self) -> NonNull<Inner<P>> {
        // SAFETY: as in `old_chunk`; `home` never changes.
        unsafe { ptr::addr_of!((*self.0.as_ptr()).home).read() }
    }

    fn in_order(&self) -> usize {
        // SAFETY: as in `old_chunk`; an atomic.
        unsafe { (*self.0.as_ptr()).in_order.load(Ordering::Acquire) }
    }

    fn next_slot(&self) -> &AtomicPtr<Entry<P>> {
        // SAFETY: as in `old_chunk`; an atomic, shared only through `&`.
        unsafe { &*ptr::addr_of!((*self.0.as_ptr()).next) }
    }

    /// Calls `f` with the context and COW chunk of this ticket, then of
    /// each ticket linked after it, in order: borrows of this one, which
    /// owns the chain while it is borrowed ([`unlink`](Ticket::unlink)
    /// takes `&mut`).
    pub fn for_each_linked<'a>(&'a self, mut f: impl FnMut(&'a P::Ctx, Chunk)) {
        let mut p = self.0.as_ptr();
        loop {
            // SAFETY: `p` is this ticket's entry or one linked after it;
            // a linked entry is owned by the link (no ticket of it exists
            // elsewhere, so nothing removes it), and no link changes but
            // through `unlink`, excluded while `self` is borrowed. `ctx`
            // is never written after allocation; the rest are raw reads.
            let (ctx, new, next) = unsafe {
                (
                    &*ptr::addr_of!((*p).ctx),
                    ptr::addr_of!((*p).e.new_chunk).read(),
                    (*ptr::addr_of!((*p).next)).load(Ordering::Acquire),
                )
            };
            f(ctx, new);
            if next.is_null() {
                return;
            }
            p = next;
        }
    }

    /// Makes this ticket own `next` (the next destination of a shared
    /// copy); gives `next` back if one is linked already.
    pub fn link(&self, next: Ticket<P>) -> Result<(), Ticket<P>> {
        let n = core::mem::ManuallyDrop::new(next);
        match self.next_slot().compare_exchange(
            ptr::null_mut(),
            n.0.as_ptr(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Ok(()),
            Err(_) => Err(core::mem::ManuallyDrop::into_inner(n)),
        }
    }

    /// Takes back the ticket linked by [`Ticket::link`], if any. Call it
    /// before this ticket is removed from its table, or the link is lost.
    pub fn unlink(&mut self) -> Option<Ticket<P>> {
        let p = self.next_slot().swap(ptr::null_mut(), Ordering::AcqRel);
        // The link held the ticket's ownership since `link`.
        NonNull::new(p).map(Ticket)
    }
}

impl<P: PendingData> Drop for Ticket<P> {
    fn drop(&mut self) {
        crate::dm_err!("pending exception ticket dropped; entry leaked\n");
    }
}

// SAFETY: `into_raw` forgets the ticket and `from_raw` rebuilds it from the
// same pointer: ownership round-trips.
unsafe impl<P: PendingData> JobPtr for Ticket<P> {
    fn into_raw(self) -> *mut c_void {
        let p = self.0.as_ptr().cast();
        core::mem::forget(self);
        p
    }
    unsafe fn from_raw(p: *mut c_void) -> Self {
        // SAFETY: `p` came from `into_raw` (caller), so it is not null.
        // INVARIANT: the handle `into_raw` gave up comes back.
        Ticket(unsafe { NonNull::new_unchecked(p.cast()) })
    }
}

// SAFETY: the slot is a field of the entry, which stays allocated and in
// place until the ticket is removed from the table; the ticket is the
// job's context until its `done`.
unsafe impl<P: PendingData> HasFullSlot for Ticket<P>
where
    Ticket<P>: CopyJob,
{
    fn full_slot(&self) -> &FullBioSlot {
        // SAFETY: see above; the slot is atomics only.
        unsafe { &(*self.0.as_ptr()).full }
    }
}

/// A chunk's complete and pending buckets, locked in that order and
/// unlocked together on drop.
pub struct ChunkBuckets<'a, P: PendingData> {
    pair: Pair<'a>,
    pending: &'a PendingTable<P>,
}

impl<'a, P: PendingData> ChunkBuckets<'a, P> {
    pub(super) fn new(pair: Pair<'a>, pending: &'a PendingTable<P>) -> Self {
        Self { pair, pending }
    }

    /// The COW chunk of `chunk` if it is copied.
    pub fn complete_lookup(&self, chunk: Chunk) -> Option<Chunk> {
        self.pair.lookup(chunk)
    }

    /// Records the completed exception `e` (`dm_insert_exception`); see
    /// [`InsertError`] for when it cannot.
    pub fn complete_insert(&mut self, e: NewException) -> Result<(), InsertError> {
        self.pair.insert(e)
    }

    /// The COW chunk and data of the pending exception of `chunk`, if any.
    pub fn pending_find(&mut self, chunk: Chunk) -> Option<(Chunk, &mut P)> {
        let e = self.pair.pending().lookup(chunk)?.cast::<Entry<P>>();
        // SAFETY: every entry of a pending table is an `Entry<P>` of it
        // (`pending_insert` checks), valid while linked in this locked
        // bucket; its data is under this lock, which `&mut self` holds
        // exclusively for the borrow.
        unsafe {
            let new = (*e.as_ptr()).e.new_chunk;
            Some((new, &mut *(*e.as_ptr()).data.get()))
        }
    }

    fn owns(&self, home: NonNull<Inner<P>>, chunk: Chunk) -> bool {
        ptr::eq(home.as_ptr(), &*self.pending.inner)
            && self.pending.inner.raw.holds(self.pair.pending(), chunk)
    }

    /// The data of the entry of `t`, if this is its bucket.
    pub fn pending_of(&mut self, t: &Ticket<P>) -> Option<&mut P> {
        if !self.owns(t.home(), t.old_chunk()) {
            return None;
        }
        // SAFETY: the entry is in this table (a ticket's is, until removed)
        // in this bucket, whose lock we hold exclusively for the borrow.
        Some(unsafe { &mut *(*t.0.as_ptr()).data.get() })
    }

    /// Puts `b` in its bucket, this one; gives it back if it is another
    /// table's or chunk's.
    pub fn pending_insert(&mut self, b: PendingBox<P>) -> Result<Ticket<P>, PendingBox<P>> {
        // SAFETY: we own the entry.
        let home = unsafe { (*b.0.as_ptr()).home };
        if !self.owns(home, b.old_chunk()) {
            return Err(b);
        }
        let e = core::mem::ManuallyDrop::new(b).0;
        // SAFETY: the entry is valid and in no table; it stays valid until
        // removed, which needs the ticket we return. No merging in a
        // pending table: nothing comes back.
        let _ = unsafe { self.pair.pending_mut().insert(e.cast()) };
        // INVARIANT: the box's entry, now linked here; the box is gone.
        Ok(Ticket(e))
    }

    /// Takes the entry of `t` out of its bucket, this one, and gives it
    /// back to its owner; gives the ticket back if it is not here, still
    /// in an [`Order`] or still linked to another ([`Ticket::link`]).
    pub fn pending_remove(&mut self, t: Ticket<P>) -> Result<PendingBox<P>, Ticket<P>> {
        let linked = !t.next_slot().load(Ordering::Acquire).is_null();
        if !self.owns(t.home(), t.old_chunk()) || t.in_order() != 0 || linked {
            return Err(t);
        }
        if !self.pair.pending_mut().remove(t.0.cast()) {
            return Err(t);
        }
        let e = core::mem::ManuallyDrop::new(t).0;
        // INVARIANT: unlinked just above; the ticket, its one handle, is gone.
        Ok(PendingBox(e))
    }
}

/// Source of [`Order`] ids (0 is "in no order").
static ORDER_IDS: AtomicUsize = AtomicUsize::new(1);

/// Pending exceptions in allocation order; see
/// [`crate::logic::completion_order`]. The owner serializes calls (the
/// store's allocation spinlock).
pub struct Order<P: PendingData> {
    raw: CompletionOrder<Entry<P>>,
    id: usize,
}

// SAFETY: holds only links to entries, which are `Send` for `P: Send`.
unsafe impl<P: PendingData> Send for Order<P> {}

impl<P: PendingData> Order<P> {
    /// An empty order.
    pub fn new() -> Self {
        Self {
            raw: CompletionOrder::new(),
            id: ORDER_IDS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Appends `b`, the latest allocated; false if it is in an order
    /// already.
    pub fn push(&mut self, b: &mut PendingBox<P>) -> bool {
        // SAFETY: we own the entry.
        let flag = unsafe { &(*b.0.as_ptr()).in_order };
        if flag
            .compare_exchange(0, self.id, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        // SAFETY: the entry is valid and in no order (the flag was 0); while
        // the flag is set it cannot be freed (`PendingBox::drop`,
        // `pending_remove`), so it stays valid until `take_ready` yields it.
        unsafe { self.raw.push(b.0) };
        true
    }

    /// Records that the copy of `t` finished; the order holds the ticket
    /// until [`Order::take_ready`] yields it. Gives it back if it is not in
    /// this order.
    pub fn finish(&mut self, t: Ticket<P>, ok: bool) -> Result<(), Ticket<P>> {
        if t.in_order() != self.id {
            return Err(t);
        }
        let e = core::mem::ManuallyDrop::new(t).0;
        // SAFETY: the entry is in this order (its id says so), and we are
        // its owner's serialized caller.
        unsafe { self.raw.finish(e, ok) };
        Ok(())
    }

    /// Takes out the finished front of the order, oldest first (see
    /// [`CompletionOrder::take_ready`]). Iterate it to the end after
    /// dropping the owner's lock: each yields its ticket and result.
    pub fn take_ready(&mut self) -> ReadyTickets<P> {
        ReadyTickets(self.raw.take_ready())
    }
}

impl<P: PendingData> Default for Order<P> {
    fn default() -> Self {
        Self::new()
    }
}

/// Tickets taken out of an [`Order`], finished, oldest first.
pub struct ReadyTickets<P: PendingData>(Ready<Entry<P>>);

impl<P: PendingData> ReadyTickets<P> {
    /// Nothing (more) to yield.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<P: PendingData> Iterator for ReadyTickets<P> {
    type Item = (Ticket<P>, bool);

    fn next(&mut self) -> Option<Self::Item> {
        let (e, ok) = self.0.next()?;
        // SAFETY: a taken entry is valid (it could not be freed while in the
        // order); its link was read before it was yielded. It leaves the
        // order now, and its ticket, held by the order since `finish`, comes
        // back.
        unsafe { (*e.as_ptr()).in_order.store(0, Ordering::Release) };
        // INVARIANT: still linked in its table; the order gives its handle
        // back.
        Some((Ticket(e), ok))
    }
}
