//! Userspace tests of the exception tables and chunk arithmetic, including
//! concurrent use of the bit-locked buckets from several threads.

use dm_snap_logic::chunk::{complete_hash_shift, table_sizes, ChunkGeometry, MAX_TABLE_BYTES};
use dm_snap_logic::exception_table::{BucketLock, Exception, ExceptionTable, SpinBit};
use std::ptr::NonNull;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

type Table = ExceptionTable<Vec<AtomicUsize>, SpinBit>;

fn table(buckets: usize, shift: u32) -> Table {
    ExceptionTable::new((0..buckets).map(|_| AtomicUsize::new(0)).collect(), shift).unwrap()
}

fn boxed(old: u64, new: u64) -> NonNull<Exception> {
    NonNull::from(Box::leak(Box::new(Exception::new(old, new))))
}

fn free_all(t: &mut Table) -> usize {
    let mut n = 0;
    t.drain(|e| {
        drop(unsafe { Box::from_raw(e.as_ptr()) });
        n += 1;
    });
    n
}

/// Inserts (old, new) pairs into a complete table; returns how many entries
/// were merged away.
fn insert_all(t: &Table, pairs: &[(u64, u64)]) -> usize {
    let mut merged = 0;
    for &(o, n) in pairs {
        let mut b = t.lock(o);
        if let Some(e) = unsafe { b.insert(boxed(o, n)) } {
            drop(b);
            drop(unsafe { Box::from_raw(e.as_ptr()) });
            merged += 1;
        }
    }
    merged
}

fn lookup(t: &Table, chunk: u64) -> Option<u64> {
    let b = t.lock(chunk);
    b.lookup(chunk).map(|e| unsafe { e.as_ref() }.remap(chunk))
}

#[test]
fn geometry() {
    let g = ChunkGeometry::new(16).unwrap();
    assert_eq!((g.sectors(), g.bytes(), g.shift()), (16, 8192, 4));
    assert_eq!(g.chunk_of(35), 2);
    assert_eq!(g.sector_of(2), 32);
    assert_eq!(g.remap(35, 7), 7 * 16 + 3);
    assert_eq!(g.copy_len(2, 40), 8);
    assert_eq!(g.copy_len(1, 40), 16);
    assert!(ChunkGeometry::new(12).is_none());
}

#[test]
fn sizes_as_upstream() {
    let max = MAX_TABLE_BYTES / 16;
    // Tiny COW: at least 64 buckets in both tables.
    assert_eq!(table_sizes(128, 4, max), (64, 64));
    // 1 GiB COW, 4 KiB chunks: 262144 chunks capped at 131072 buckets.
    assert_eq!(table_sizes(2 << 20, 3, max), (131072, 16384));
    // Not a power of two: rounded down.
    assert_eq!(table_sizes(1000 << 4, 4, max), (512, 64));
}

#[test]
fn runs_merge_both_ways_and_lookups_remap() {
    let mut t = table(64, 8);
    // 10->100, 11->101, 9->99 form one run; 20->300 stands alone.
    let merged = insert_all(&t, &[(10, 100), (11, 101), (20, 300), (9, 99)]);
    assert_eq!(merged, 2);
    for (c, want) in [(9, 99), (10, 100), (11, 101), (20, 300)] {
        assert_eq!(lookup(&t, c), Some(want), "chunk {c}");
    }
    assert_eq!(lookup(&t, 12), None);
    assert_eq!(lookup(&t, 8), None);
    assert_eq!(free_all(&mut t), 2);
}

#[test]
fn no_merge_when_cow_chunks_not_adjacent() {
    let mut t = table(64, 8);
    assert_eq!(insert_all(&t, &[(1, 5), (2, 9), (3, 6)]), 0);
    assert_eq!(lookup(&t, 2), Some(9));
    assert_eq!(free_all(&mut t), 3);
}

#[test]
fn runs_stay_within_a_256_chunk_group() {
    let mut t = table(64, 8);
    let pairs: Vec<_> = (0..1024u64).map(|c| (c, c + 5000)).collect();
    insert_all(&t, &pairs);
    for c in 0..1024 {
        assert_eq!(lookup(&t, c), Some(c + 5000));
    }
    // One run per group of 256 chunks.
    assert_eq!(free_all(&mut t), 4);
}

#[test]
fn pending_table_removes() {
    let mut t = table(64, 0);
    let a = boxed(7, 1);
    let b = boxed(71, 2);
    for e in [a, b] {
        let c = unsafe { e.as_ref() }.old_chunk;
        assert!(unsafe { t.lock(c).insert(e) }.is_none());
    }
    assert!(t.lock(7).lookup(7).is_some());
    assert!(t.lock(7).remove(a));
    assert!(!t.lock(7).remove(a));
    assert!(t.lock(7).lookup(7).is_none());
    assert!(t.lock(71).lookup(71).is_some());
    drop(unsafe { Box::from_raw(a.as_ptr()) });
    assert_eq!(free_all(&mut t), 1);
}

/// A bit lock that logs what it does, to see what `lock_pair` takes.
struct Logged;

thread_local! {
    static LOG: std::cell::RefCell<Vec<(char, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl BucketLock for Logged {
    type Head = AtomicUsize;
    type Class = ();
    const LOCK_BITS: usize = 1;
    fn word(h: &AtomicUsize) -> &AtomicUsize {
        h
    }
    fn lock(_class: &(), h: &AtomicUsize) {
        SpinBit::lock(&(), h);
        LOG.with(|l| l.borrow_mut().push(('L', h as *const _ as usize)));
    }
    fn unlock(_class: &(), h: &AtomicUsize) {
        LOG.with(|l| l.borrow_mut().push(('U', h as *const _ as usize)));
        SpinBit::unlock(&(), h);
    }
}

#[test]
fn pair_locks_both_buckets_and_unlocks_them_together() {
    // A chunk's complete and pending buckets, as the origin-write path
    // takes them: the complete bucket (its run group, chunk >> 8) first,
    // then the pending one (chunk), both released when the pair drops; an
    // entry inserted through the pair is found through either kind of guard.
    type T = ExceptionTable<Vec<AtomicUsize>, Logged>;
    let heads = || (0..64).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>();
    let complete = T::new(heads(), 8).unwrap();
    let mut pending = T::new(heads(), 0).unwrap();
    let chunk = 300u64;
    let e = boxed(chunk, 9);
    {
        let mut pair = complete.lock_pair(&pending, chunk);
        assert!(unsafe { pair.second.insert(e) }.is_none());
        assert!(pair.second.lookup(chunk).is_some());
        assert!(pair.first.lookup(chunk).is_none());
    }
    let log = LOG.with(|l| std::mem::take(&mut *l.borrow_mut()));
    assert_eq!(log.len(), 4, "{log:?}");
    let (c, p) = (log[0].1, log[1].1);
    assert_eq!((log[0].0, log[1].0), ('L', 'L'));
    assert_ne!(c, p);
    assert_eq!([log[2], log[3]], [('U', p), ('U', c)]);
    // The same heads as single locks take (complete bucket 300 >> 8 = 1,
    // pending bucket 300 & 63 = 44), and neither is left locked.
    assert!(pending.lock(chunk).lookup(chunk).is_some());
    assert!(complete.lock(chunk).lookup(chunk).is_none());
    let log = LOG.with(|l| std::mem::take(&mut *l.borrow_mut()));
    assert_eq!(log.iter().map(|x| x.1).collect::<Vec<_>>(), [p, p, c, c]);
    // A complete bucket locked alone, then joined by the pending one: the
    // same two heads, same order, released together once.
    {
        let c_only = complete.lock(chunk);
        assert!(c_only.lookup(chunk).is_none());
        let pair = c_only.and_lock(&pending, chunk);
        assert!(pair.second.lookup(chunk).is_some());
    }
    let log = LOG.with(|l| std::mem::take(&mut *l.borrow_mut()));
    assert_eq!(log, [('L', c), ('L', p), ('U', p), ('U', c)]);
    let mut n = 0;
    pending.drain(|x| {
        assert_eq!(x, e);
        drop(unsafe { Box::from_raw(x.as_ptr()) });
        n += 1;
    });
    assert_eq!(n, 1);
}

#[test]
fn concurrent_inserts_and_lookups_from_threads() {
    // 4 threads insert interleaved chunks into a small table (many threads
    // per bucket) while looking up what they inserted; the result must be
    // exactly the union, whatever the interleaving.
    let t = Arc::new(table(64, 8));
    let threads = 4u64;
    let per = 5000u64;
    let hs: Vec<_> = (0..threads)
        .map(|id| {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                for i in 0..per {
                    let c = i * threads + id;
                    insert_all(&t, &[(c, c + 1_000_000)]);
                    assert_eq!(lookup(&t, c), Some(c + 1_000_000));
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    for c in 0..threads * per {
        assert_eq!(lookup(&t, c), Some(c + 1_000_000), "chunk {c}");
    }
    let mut t = Arc::try_unwrap(t).ok().unwrap();
    let entries = free_all(&mut t);
    assert!(entries >= (threads * per / 256) as usize && entries < (threads * per) as usize);
}

/// A bucket with its lock beside the word, as the kernel's PREEMPT_RT
/// variant (a spinlock per bucket) lays it out.
struct LockBeside;

struct SideHead {
    word: AtomicUsize,
    lock: std::sync::atomic::AtomicBool,
}

impl BucketLock for LockBeside {
    type Head = SideHead;
    type Class = ();
    const LOCK_BITS: usize = 0;
    fn word(h: &SideHead) -> &AtomicUsize {
        &h.word
    }
    fn lock(_class: &(), h: &SideHead) {
        use std::sync::atomic::Ordering::*;
        while h
            .lock
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
    }
    fn unlock(_class: &(), h: &SideHead) {
        h.lock.store(false, std::sync::atomic::Ordering::Release);
        // The word never carries lock bits in this layout.
        assert_eq!(h.word.load(std::sync::atomic::Ordering::Relaxed) & 1, 0);
    }
}

#[test]
fn lock_beside_the_word_variant_from_threads() {
    type SideTable = ExceptionTable<Vec<SideHead>, LockBeside>;
    let heads = (0..64)
        .map(|_| SideHead {
            word: AtomicUsize::new(0),
            lock: Default::default(),
        })
        .collect();
    let t: Arc<SideTable> = Arc::new(ExceptionTable::new(heads, 8).unwrap());
    let hs: Vec<_> = (0..4u64)
        .map(|id| {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                for i in 0..3000u64 {
                    let c = i * 4 + id;
                    let mut b = t.lock(c);
                    if let Some(e) = unsafe { b.insert(boxed(c, c + 7)) } {
                        drop(b);
                        drop(unsafe { Box::from_raw(e.as_ptr()) });
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    for c in 0..12000u64 {
        let b = t.lock(c);
        assert_eq!(
            b.lookup(c).map(|e| unsafe { e.as_ref() }.remap(c)),
            Some(c + 7)
        );
    }
    let mut t = Arc::try_unwrap(t).ok().unwrap();
    let mut n = 0;
    t.drain(|e| {
        drop(unsafe { Box::from_raw(e.as_ptr()) });
        n += 1;
    });
    // How many runs remain depends on the interleaving: not more entries
    // than inserted, not fewer than one per 256-chunk group.
    assert!((12000 / 256..=12000).contains(&n), "{n}");
}

#[test]
fn complete_hash_shift_spreads_the_origin_over_all_buckets() {
    // Origin no larger than the table: no shift, a bucket per chunk.
    assert_eq!(complete_hash_shift(1000, 1024), 0);
    assert_eq!(complete_hash_shift(1024, 1024), 0);
    // The benchmark's 2 GiB origin (4 KiB chunks) over 262144 buckets.
    assert_eq!(complete_hash_shift(528_384, 262_144), 2);
    // Large origins keep upstream's 8 (runs of up to 256 chunks).
    assert_eq!(complete_hash_shift(1 << 40, 131_072), 8);
    for (chunks, buckets) in [(5000u64, 64u64), (1 << 20, 4096), (3 << 17, 1 << 17)] {
        let s = complete_hash_shift(chunks, buckets);
        assert!(chunks >> s <= buckets && (s == 0 || chunks >> (s - 1) > buckets));
    }
}

/// Random and sequential inserts at every shift: every chunk maps to the COW
/// chunk it was given, runs never leave their group, a miss stays a miss, and
/// a sequential fill needs one entry per group.
#[test]
fn any_shift_keeps_lookups_and_runs_right() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for shift in 0..=8u32 {
        let mut t = table(64, shift);
        // Random old chunks, COW chunks in allocation order (so that
        // neighbours written in turn form runs).
        let mut map = std::collections::HashMap::new();
        let mut next_cow = 7u64;
        while map.len() < 3000 {
            let o = rnd(8192);
            if map.contains_key(&o) {
                continue;
            }
            map.insert(o, next_cow);
            insert_all(&t, &[(o, next_cow)]);
            next_cow += 1;
            // Now and then the next chunk too, as a sequential writer would.
            if rnd(4) == 0 && !map.contains_key(&(o + 1)) {
                map.insert(o + 1, next_cow);
                insert_all(&t, &[(o + 1, next_cow)]);
                next_cow += 1;
            }
        }
        for c in 0..8200u64 {
            assert_eq!(
                lookup(&t, c),
                map.get(&c).copied(),
                "shift {shift} chunk {c}"
            );
        }
        free_all(&mut t);
        let mut t = table(64, shift);
        let pairs: Vec<_> = (0..2048u64).map(|c| (c, c + 9)).collect();
        insert_all(&t, &pairs);
        for c in 0..2048 {
            assert_eq!(lookup(&t, c), Some(c + 9));
        }
        assert_eq!(free_all(&mut t), (2048 >> shift) as usize, "shift {shift}");
    }
}

#[test]
fn remove_chunk_takes_run_ends_as_a_merge_does() {
    use dm_snap_logic::exception_table::RemoveChunkError;
    let mut t = table(64, 8);
    // One run 10..=13 -> 100..=103, and a single 40 -> 7.
    insert_all(&t, &[(10, 100), (11, 101), (12, 102), (13, 103), (40, 7)]);
    let remove = |t: &Table, c: u64| {
        let mut b = t.lock(c);
        let r = b.remove_chunk(c);
        drop(b);
        r.map(|e| {
            e.map(|e| drop(unsafe { Box::from_raw(e.as_ptr()) }))
                .is_some()
        })
    };
    assert_eq!(
        remove(&t, 12),
        Err(RemoveChunkError::Middle {
            first: 10,
            last: 13
        })
    );
    assert_eq!(remove(&t, 13), Ok(false));
    assert_eq!((lookup(&t, 12), lookup(&t, 13)), (Some(102), None));
    assert_eq!(remove(&t, 10), Ok(false));
    assert_eq!(
        (lookup(&t, 10), lookup(&t, 11), lookup(&t, 12)),
        (None, Some(101), Some(102))
    );
    assert_eq!(remove(&t, 12), Ok(false));
    assert_eq!(remove(&t, 11), Ok(true));
    assert_eq!(remove(&t, 11), Err(RemoveChunkError::NotFound));
    assert_eq!(remove(&t, 40), Ok(true));
    assert_eq!(lookup(&t, 40), None);
    assert_eq!(free_all(&mut t), 0);
}

/// Issue 27: entries from a crafted COW (`old` or `new` near `u64::MAX`)
/// must not overflow the run arithmetic of insert and lookup: with overflow
/// checks on (the test kernel's), `old + count + 1` was a kernel BUG.
#[test]
fn extreme_chunk_numbers_do_not_overflow() {
    let mut t = table(64, 8);
    let max = u64::MAX;
    // The second insert walks past the entry of `max` (same bucket),
    // comparing against `max + 1`.
    insert_all(
        &t,
        &[
            (max, 5),
            (max - 2, 100),
            (max - 1, 4),
            (1, 1 << 55),
            (2, (1 << 55) + 1),
        ],
    );
    assert_eq!(lookup(&t, max), Some(5));
    assert_eq!(lookup(&t, max - 2), Some(100));
    assert_eq!(lookup(&t, max - 1), Some(4));
    assert_eq!(lookup(&t, 2), Some((1 << 55) + 1));
    assert_eq!(lookup(&t, 3), None);
    free_all(&mut t);
}

/// A table or index over heads that are not zero would follow whatever
/// they hold as pointers: `new` refuses them (it took them on trust).
#[test]
fn tables_refuse_heads_that_are_not_zero() {
    use dm_snap_logic::exception_index::{CowLayout, ExceptionIndex};
    let dirty = || -> Vec<AtomicUsize> { (0..4).map(|i| AtomicUsize::new(i * 8)).collect() };
    assert!(ExceptionTable::<_, SpinBit>::new(dirty(), 4).is_none());
    assert!(ExceptionIndex::<_, SpinBit>::new(dirty(), CowLayout::transient()).is_none());
    let clean = || -> Vec<AtomicUsize> { (0..4).map(|_| AtomicUsize::new(0)).collect() };
    assert!(ExceptionTable::<_, SpinBit>::new(clean(), 4).is_some());
    assert!(ExceptionIndex::<_, SpinBit>::new(clean(), CowLayout::transient()).is_some());
}
