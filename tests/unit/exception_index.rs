//! Userspace tests of the compact exception index: a model check against
//! `BTreeMap` under random inserts and removals (including cuts in the
//! middle of runs), the dense numbering of a persistent COW, memory per
//! exception, and concurrent use of the shard locks from several threads.

use dm_snap_logic::exception_index::{CowLayout, ExceptionIndex, IndexError, RANGE_SHIFT};
use dm_snap_logic::exception_table::SpinBit;
use dm_snap_logic::index_node::{Node, NODE_BYTES};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

type Index = ExceptionIndex<Vec<AtomicUsize>, SpinBit>;

thread_local! {
    /// Nodes this thread allocated less those it freed: per thread, so a
    /// test's count is exact while other tests run in parallel threads.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn node() -> NonNull<Node> {
    LIVE.set(LIVE.get() + 1);
    // SAFETY: a zeroed `Node` is a valid empty leaf.
    NonNull::new(unsafe { alloc_zeroed(Layout::new::<Node>()) }.cast()).unwrap()
}

fn free(n: NonNull<Node>) {
    LIVE.set(LIVE.get() - 1);
    unsafe { dealloc(n.as_ptr().cast(), Layout::new::<Node>()) };
}

fn index(shards: usize, layout: CowLayout) -> Index {
    ExceptionIndex::new((0..shards).map(|_| AtomicUsize::new(0)).collect(), layout).unwrap()
}

/// Runs `op` on the locked shard of `chunk`, giving it nodes until it
/// stops asking (as the kernel does: allocate with no lock held).
fn with_nodes(
    ix: &Index,
    chunk: u64,
    mut op: impl FnMut(
        &mut dm_snap_logic::exception_index::Shard<'_, SpinBit>,
    ) -> Result<(), IndexError>,
) -> Result<(), IndexError> {
    loop {
        let r = op(&mut ix.lock(chunk));
        match r {
            Err(IndexError::NeedNodes(n)) => {
                assert!(n > 0 && n <= 8, "asks for {n} nodes");
                let nodes: Vec<_> = (0..n).map(|_| node()).collect();
                let mut s = ix.lock(chunk);
                for p in nodes {
                    unsafe { s.give(p) };
                }
            }
            r => return r,
        }
    }
}

fn insert(ix: &Index, old: u64, new: u64) -> Result<(), IndexError> {
    with_nodes(ix, old, |s| s.insert(old, new))
}

fn remove(ix: &Index, old: u64) -> Result<(), IndexError> {
    with_nodes(ix, old, |s| s.remove(old))
}

fn lookup(ix: &Index, old: u64) -> Option<u64> {
    ix.lock(old).lookup(old)
}

fn drain(mut ix: Index) {
    ix.drain(free);
}

#[path = "../common/rng.rs"]
mod rng;
use rng::Rng;

#[test]
fn dense_numbers_skip_metadata() {
    let l = CowLayout::persistent(8); // 256 exceptions per area
    assert_eq!(l.dense(0), None);
    assert_eq!(l.dense(1), None);
    assert_eq!(l.dense(2), Some(0));
    assert_eq!(l.dense(257), Some(255));
    assert_eq!(l.dense(258), None); // area 1's metadata chunk
    assert_eq!(l.dense(259), Some(256));
    for d in [0, 1, 255, 256, 257, 100_000, 1 << 29] {
        assert_eq!(l.dense(l.cow(d)), Some(d));
    }
    let t = CowLayout::transient();
    assert_eq!((t.dense(0), t.cow(7)), (Some(0), 7));
}

#[test]
fn runs_join_and_split() {
    let ix = index(1, CowLayout::transient());
    insert(&ix, 10, 100).unwrap();
    insert(&ix, 12, 102).unwrap();
    assert_eq!(ix.stats().slots, 2);
    insert(&ix, 11, 101).unwrap(); // joins two singles into one run
    let s = ix.stats();
    assert_eq!((s.slots, s.runs, s.chunks), (2, 1, 3));
    insert(&ix, 9, 99).unwrap(); // prepends
    insert(&ix, 13, 103).unwrap(); // appends
    assert_eq!(ix.stats().slots, 2);
    assert_eq!(insert(&ix, 11, 5), Err(IndexError::Present));
    assert_eq!(insert(&ix, 13, 5), Err(IndexError::Present));
    assert_eq!(lookup(&ix, 11), Some(101));
    assert_eq!(lookup(&ix, 14), None);
    assert_eq!(lookup(&ix, 8), None);
    remove(&ix, 11).unwrap(); // middle: 9-10 and 12-13
    let s = ix.stats();
    assert_eq!((s.slots, s.runs, s.chunks), (4, 2, 4));
    assert_eq!(lookup(&ix, 11), None);
    assert_eq!(lookup(&ix, 12), Some(102));
    assert_eq!(remove(&ix, 11), Err(IndexError::NotFound));
    remove(&ix, 10).unwrap(); // end of a two-chunk run: a single is left
    remove(&ix, 12).unwrap();
    let s = ix.stats();
    assert_eq!((s.slots, s.runs, s.chunks), (2, 0, 2));
    // Not adjacent in the COW: no run.
    insert(&ix, 14, 200).unwrap();
    assert_eq!(ix.stats().runs, 0);
    drain(ix);
}

#[test]
fn sequential_fill_is_one_run_per_range() {
    let layout = CowLayout::persistent(8);
    // Every shard costs at least a node: 2 shards of 4 KiB for 1M chunks.
    let ix = index(2, layout);
    let n: u64 = 1 << 20;
    let mut cow = 2;
    for old in 0..n {
        insert(&ix, old, cow).unwrap();
        cow += 1;
        if layout.dense(cow).is_none() {
            cow += 1;
        }
    }
    let s = ix.stats();
    assert_eq!(s.chunks, n);
    assert_eq!(s.runs as u64, n >> RANGE_SHIFT);
    assert!((s.nodes * NODE_BYTES) as f64 / (n as f64) < 0.01, "{s:?}");
    for old in (0..n).step_by(997) {
        assert_eq!(lookup(&ix, old), Some(layout.cow(old)));
    }
    drain(ix);
}

/// Random inserts and removals against a model; every so often the whole
/// model is checked, hits and misses.
#[test]
fn model_check() {
    for (shards, span, seed) in [(1, 3000u64, 1u64), (4, 40_000, 7), (16, 1 << 20, 99)] {
        let layout = CowLayout::persistent(16);
        let ix = index(shards, layout);
        let mut model = BTreeMap::new();
        let mut rng = Rng(seed);
        let mut next_dense = 0u64;
        for step in 0..60_000u64 {
            let r = rng.next();
            let old = r % span;
            if r >> 60 < 11 {
                // Mostly short sequential bursts, so runs form and break.
                for k in 0..(r >> 40) % 6 + 1 {
                    let o = (old + k) % span;
                    let want = if model.contains_key(&o) {
                        Err(IndexError::Present)
                    } else {
                        Ok(())
                    };
                    let cow = layout.cow(next_dense);
                    assert_eq!(insert(&ix, o, cow), want);
                    if want.is_ok() {
                        model.insert(o, cow);
                        next_dense += 1;
                    }
                }
            } else {
                let want = if model.remove(&old).is_some() {
                    Ok(())
                } else {
                    Err(IndexError::NotFound)
                };
                assert_eq!(remove(&ix, old), want, "remove {old} at step {step}");
            }
            if step % 20_000 == 19_999 {
                for o in 0..span.min(50_000) {
                    assert_eq!(
                        lookup(&ix, o),
                        model.get(&o).copied(),
                        "chunk {o} at step {step}"
                    );
                }
                assert_eq!(ix.stats().chunks, model.len() as u64);
            }
        }
        for (&o, &c) in &model {
            assert_eq!(lookup(&ix, o), Some(c));
        }
        let s = ix.stats();
        assert_eq!(s.chunks, model.len() as u64);
        // The walk a table that outgrows the index moves its exceptions
        // with: every mapping once, none more.
        let mut ix = ix;
        let mut walked = BTreeMap::new();
        ix.for_each(|o, c| assert_eq!(walked.insert(o, c), None, "chunk {o} walked twice"));
        assert_eq!(walked, model);
        drain(ix);
    }
}

/// Loads `batch` as activation does: sorted by origin chunk (first come
/// first among equals), each shard's stretch through `insert_sorted`,
/// nodes given when asked.
fn bulk(ix: &Index, batch: &[(u64, u64)]) -> Result<(), IndexError> {
    let mut v: Vec<(u64, u64, usize)> = batch
        .iter()
        .enumerate()
        .map(|(i, &(o, c))| (o, c, i))
        .collect();
    v.sort_by_key(|&(o, _, i)| (o, i));
    let mut rest = &v[..];
    while let Some(&(first, _, _)) = rest.first() {
        let shard = ix.shard_of(first);
        let n = rest
            .iter()
            .position(|t| ix.shard_of(t.0) != shard)
            .unwrap_or(rest.len());
        let (done, r) = ix
            .lock(first)
            .insert_sorted(&rest[..n], |&(o, c, _)| (o, c));
        rest = &rest[done..];
        match r {
            Ok(()) => assert_eq!(done, n),
            Err(IndexError::NeedNodes(k)) => {
                assert!(k > 0 && k <= 8, "asks for {k} nodes");
                let mut s = ix.lock(first);
                for _ in 0..k {
                    unsafe { s.give(node()) };
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The bulk load gives what one insert at a time gives: the first mapping
/// of a chunk wins (in the batch and against what the index holds), runs
/// join across the batch and the old slots, and every lookup agrees with
/// a model, for random, sequential and mixed batches over an index that
/// already holds runs and singles.
#[test]
fn bulk_load_matches_single_inserts() {
    let layout = CowLayout::persistent(8);
    for (shards, span, seed) in [(1, 5000u64, 3u64), (4, 100_000, 11), (16, 1 << 22, 5)] {
        let bulk_ix = index(shards, layout);
        let one_ix = index(shards, layout);
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        let mut rng = Rng(seed);
        let mut dense = 0u64;
        for round in 0..8 {
            let mut batch = Vec::new();
            for _ in 0..20_000 {
                let r = rng.next();
                let old = r % span;
                match (r >> 56) % 4 {
                    // A sequential stretch: one run.
                    0 => {
                        for k in 0..(r >> 40) % 40 + 1 {
                            batch.push(((old + k) % span, layout.cow(dense)));
                            dense += 1;
                        }
                    }
                    // A chunk mapped again (first mapping stays).
                    1 if !batch.is_empty() => {
                        let (o, _) = batch[(r >> 20) as usize % batch.len()];
                        batch.push((o, layout.cow(dense)));
                        dense += 1;
                    }
                    _ => {
                        batch.push((old, layout.cow(dense)));
                        dense += 1;
                    }
                }
            }
            for &(o, c) in &batch {
                model.entry(o).or_insert(c);
                let _ = insert(&one_ix, o, c);
            }
            bulk(&bulk_ix, &batch).unwrap();
            let (b, o) = (bulk_ix.stats(), one_ix.stats());
            assert_eq!(b.chunks, model.len() as u64, "round {round}");
            assert_eq!(o.chunks, model.len() as u64, "round {round}");
            // Runs join as with single inserts (leaf edges may differ).
            assert!(b.slots <= o.slots + o.slots / 50 + 8, "{b:?} vs {o:?}");
        }
        for o in (0..span).step_by((span / 50_000).max(1) as usize) {
            assert_eq!(lookup(&bulk_ix, o), model.get(&o).copied(), "chunk {o}");
        }
        for (&o, &c) in &model {
            assert_eq!(lookup(&bulk_ix, o), Some(c));
        }
        drain(bulk_ix);
        drain(one_ix);
    }
}

/// A sequential COW bulk-loaded is one run per shard range, as inserted
/// one by one.
#[test]
fn bulk_load_of_sequential_chunks_is_runs() {
    let layout = CowLayout::persistent(8);
    let ix = index(2, layout);
    let n: u64 = 1 << 18;
    let batch: Vec<_> = (0..n).map(|o| (o, layout.cow(o))).collect();
    for part in batch.chunks(16384) {
        bulk(&ix, part).unwrap();
    }
    let s = ix.stats();
    assert_eq!((s.chunks, s.runs as u64), (n, n >> RANGE_SHIFT), "{s:?}");
    drain(ix);
}

#[test]
fn random_exceptions_cost_at_most_12_bytes() {
    let ix = index(256, CowLayout::transient());
    let n = 1u64 << 20;
    let mut rng = Rng(5);
    let mut placed = 0u64;
    while placed < n {
        let old = rng.next() % (64 * n);
        if insert(&ix, old, placed * 2).is_ok() {
            placed += 1;
        }
    }
    let s = ix.stats();
    let per = (s.nodes * NODE_BYTES) as f64 / n as f64;
    assert!(per <= 12.0, "{per:.2} B per exception, {s:?}");
    drain(ix);
}

#[test]
fn nodes_all_come_back() {
    let before = LIVE.get();
    let ix = index(8, CowLayout::transient());
    let mut rng = Rng(3);
    for i in 0..200_000 {
        let _ = insert(&ix, rng.next() % 10_000_000, i);
    }
    assert!(LIVE.get() > before + 100);
    drain(ix);
    assert_eq!(LIVE.get(), before);
}

#[test]
fn out_of_range() {
    let ix = index(1, CowLayout::transient());
    assert_eq!(insert(&ix, 1 << 32, 0), Err(IndexError::OutOfRange));
    assert_eq!(insert(&ix, 0, 1 << 30), Err(IndexError::OutOfRange));
    assert_eq!(lookup(&ix, 1 << 32), None);
    assert!(Index::fits(1 << 32, (1 << 30) - 1));
    assert!(!Index::fits((1 << 32) + 1, 10));
    assert_eq!(Index::shards_for(100, 1024), 1);
    assert_eq!(Index::shards_for(1 << 24, 1024), 1024);
    assert_eq!(Index::shards_for(3 << RANGE_SHIFT, 1024), 2);
    drain(ix);
}

#[test]
fn threads_share_shards() {
    let ix = Arc::new(index(8, CowLayout::transient()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let ix = ix.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(t + 11);
                for i in 0..50_000u64 {
                    // Thread t owns chunks = t mod 4: shards are shared.
                    let old = (rng.next() % (1 << 22)) & !3 | t;
                    let _ = insert(&ix, old, (i << 2) | t);
                    if let Some(c) = lookup(&ix, old) {
                        assert_eq!(c & 3, t);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let ix = Arc::try_unwrap(ix).ok().unwrap();
    assert!(ix.stats().chunks > 190_000);
    drain(ix);
}

/// `needs` tells, before the locks an insert happens under are taken, how
/// many nodes make the insert unable to ask for more.
#[test]
fn needs_then_insert_never_asks() {
    let ix = index(1, CowLayout::transient());
    let mut rng = Rng(21);
    for i in 0..100_000u64 {
        let old = rng.next() % (1 << 26);
        let want = ix.lock(old).needs(old, 1);
        let nodes: Vec<_> = (0..want).map(|_| node()).collect();
        {
            let mut s = ix.lock(old);
            for p in nodes {
                unsafe { s.give(p) };
            }
        }
        let r = ix.lock(old).insert(old, i * 2);
        assert!(matches!(r, Ok(()) | Err(IndexError::Present)), "{r:?}");
    }
    assert!(ix.stats().nodes > 100, "deep enough to split inner nodes");
    drain(ix);
}

/// The shard and the pending table's bucket lock as one pair, shard first.
#[test]
fn pairs_with_the_pending_table() {
    use dm_snap_logic::exception_table::{Exception, ExceptionTable};
    let ix = index(4, CowLayout::transient());
    let pending: ExceptionTable<Vec<AtomicUsize>, SpinBit> =
        ExceptionTable::new((0..64).map(|_| AtomicUsize::new(0)).collect(), 0).unwrap();
    insert(&ix, 5, 50).unwrap();
    let e = NonNull::from(Box::leak(Box::new(Exception::new(6, 0))));
    {
        let mut p = ix.lock_pair(&pending, 6);
        assert_eq!(p.first.lookup(5), Some(50));
        assert!(unsafe { p.second.insert(e) }.is_none());
    }
    {
        // Both are free again; the shard then the bucket, by hand.
        let mut p = ix.lock(6).and_lock(&pending, 6);
        assert!(p.second.lookup(6).is_some());
        assert!(p.second.remove(e));
        assert_eq!(p.first.insert(6, 60), Ok(()));
    }
    drop(unsafe { Box::from_raw(e.as_ptr()) });
    assert_eq!(lookup(&ix, 6), Some(60));
    drain(ix);
}
