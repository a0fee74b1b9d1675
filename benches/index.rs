//! `cargo bench --bench index`: the compact exception index alone, in
//! userspace, against the hash table of upstream's shape (buckets of
//! sorted 32-byte-class entries, `chunk >> 8` hashing, at most 262,144
//! buckets), at 1M, 4M and 16.7M random exceptions over an origin four
//! times larger, and a sequentially filled 16.7M-chunk COW.
//!
//! Prints one row per size and structure: ns per insert, per lookup that
//! hits and per lookup that misses (1M lookups each, random order), and
//! bytes per exception (index: its nodes; table: bucket heads plus one
//! 32-byte entry per stored run, as upstream's slab). CSV with `--csv`.

use dm_snap_logic::chunk::{table_sizes, MAX_TABLE_BYTES};
use dm_snap_logic::exception_index::{CowLayout, ExceptionIndex, IndexError};
use dm_snap_logic::exception_table::{Exception, ExceptionTable, SpinBit};
use dm_snap_logic::index_node::{Node, NODE_BYTES};
use dm_snap_logic::sort::radix_sort_by_key;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

type Index = ExceptionIndex<Vec<AtomicUsize>, SpinBit>;
type Table = ExceptionTable<Vec<AtomicUsize>, SpinBit>;

/// Shards the kernel gives a snapshot.
const SHARDS: usize = 32;
const LOOKUPS: usize = 1 << 20;

#[path = "../tests/common/rng.rs"]
mod rng;
use rng::Rng;

fn node() -> NonNull<Node> {
    // SAFETY: a zeroed `Node` is a valid empty leaf.
    NonNull::new(unsafe { alloc_zeroed(Layout::new::<Node>()) }.cast()).expect("memory")
}

fn index_insert(ix: &Index, old: u64, new: u64) -> bool {
    loop {
        // The guard must go before the match: the arms lock again.
        let r = ix.lock(old).insert(old, new);
        match r {
            Err(IndexError::NeedNodes(n)) => {
                let mut s = ix.lock(old);
                for _ in 0..n {
                    // SAFETY: a fresh zeroed node, freed by `drain`.
                    unsafe { s.give(node()) };
                }
            }
            r => return r.is_ok(),
        }
    }
}

struct Row {
    what: &'static str,
    n: u64,
    insert_ns: f64,
    hit_ns: f64,
    miss_ns: f64,
    bytes_per: f64,
}

fn per_op(t: Instant, n: usize) -> f64 {
    t.elapsed().as_nanos() as f64 / n as f64
}

/// `n` distinct random origin chunks below `4 n`, and as many misses.
fn workload(n: u64, seed: u64) -> (Vec<u64>, Vec<u64>) {
    let span = 4 * n;
    let mut seen = vec![false; span as usize];
    let mut rng = Rng(seed);
    let mut olds = Vec::with_capacity(n as usize);
    while (olds.len() as u64) < n {
        let o = rng.next() % span;
        if !seen[o as usize] {
            seen[o as usize] = true;
            olds.push(o);
        }
    }
    let mut misses = Vec::with_capacity(LOOKUPS);
    while misses.len() < LOOKUPS {
        let o = rng.next() % span;
        if !seen[o as usize] {
            misses.push(o);
        }
    }
    (olds, misses)
}

fn probes(olds: &[u64], seed: u64) -> Vec<u64> {
    let mut rng = Rng(seed);
    (0..LOOKUPS)
        .map(|_| olds[(rng.next() % olds.len() as u64) as usize])
        .collect()
}

fn bench_index(n: u64, olds: &[u64], hits: &[u64], misses: &[u64]) -> Row {
    let ix = Index::new(
        (0..SHARDS).map(|_| AtomicUsize::new(0)).collect(),
        CowLayout::persistent(8),
    )
    .expect("shards");
    let layout = CowLayout::persistent(8);
    let t = Instant::now();
    for (i, &o) in olds.iter().enumerate() {
        assert!(index_insert(&ix, o, layout.cow(i as u64)));
    }
    let insert_ns = per_op(t, olds.len());
    index_row("index", n, insert_ns, ix, hits, misses)
}

/// Activation's load: the same exceptions in allocation order, in batches
/// of 16,384 sorted by origin chunk (the kernel's radix sort), each shard's
/// stretch through `insert_sorted` (the kernel's
/// `CompleteTable::insert_sorted`). Its insert figure includes the sort.
fn bench_bulk(n: u64, olds: &[u64], hits: &[u64], misses: &[u64]) -> Row {
    let layout = CowLayout::persistent(8);
    let ix =
        Index::new((0..SHARDS).map(|_| AtomicUsize::new(0)).collect(), layout).expect("shards");
    let t = Instant::now();
    let mut batch = Vec::with_capacity(16384);
    let mut scratch = vec![(0, 0); 16384];
    for (b, part) in olds.chunks(16384).enumerate() {
        let base = b as u64 * 16384;
        batch.clear();
        batch.extend(
            part.iter()
                .enumerate()
                .map(|(i, &o)| (o, layout.cow(base + i as u64))),
        );
        radix_sort_by_key(&mut batch, &mut scratch, |&(o, _)| o);
        let mut rest = &batch[..];
        while let Some(&(first, _)) = rest.first() {
            let shard = ix.shard_of(first);
            let k = rest
                .iter()
                .take(256)
                .position(|t| ix.shard_of(t.0) != shard);
            let k = k.unwrap_or(rest.len().min(256));
            let (done, r) = ix.lock(first).insert_sorted(&rest[..k], |&(o, c)| (o, c));
            rest = &rest[done..];
            if let Err(IndexError::NeedNodes(m)) = r {
                let mut s = ix.lock(first);
                for _ in 0..m {
                    // SAFETY: a fresh zeroed node, freed by `drain`.
                    unsafe { s.give(node()) };
                }
            }
        }
    }
    let insert_ns = per_op(t, olds.len());
    index_row("index-bulk", n, insert_ns, ix, hits, misses)
}

/// The row of an index holding `n` exceptions, built in `insert_ns` per
/// exception: times its hit and miss lookups, counts its bytes, frees it.
fn index_row(
    what: &'static str,
    n: u64,
    insert_ns: f64,
    ix: Index,
    hits: &[u64],
    misses: &[u64],
) -> Row {
    let t = Instant::now();
    for &o in hits {
        assert!(black_box(ix.lock(o).lookup(o)).is_some());
    }
    let hit_ns = per_op(t, hits.len());
    let t = Instant::now();
    for &o in misses {
        assert!(black_box(ix.lock(o).lookup(o)).is_none());
    }
    let miss_ns = per_op(t, misses.len());
    let s = ix.stats();
    assert_eq!(s.chunks, n);
    let row = Row {
        what,
        n,
        insert_ns,
        hit_ns,
        miss_ns,
        bytes_per: (s.nodes * NODE_BYTES + SHARDS * 8) as f64 / n as f64,
    };
    free(ix);
    row
}

fn free(mut ix: Index) {
    // SAFETY: every node came from `node()` with this layout; drained, it
    // is no longer in the index.
    ix.drain(|p| unsafe { dealloc(p.as_ptr().cast(), Layout::new::<Node>()) });
}

fn bench_table(n: u64, olds: &[u64], hits: &[u64], misses: &[u64]) -> Row {
    // A persistent COW of n data chunks, 4 KiB chunks, as upstream sizes it.
    let (buckets, _) = table_sizes(n * 8, 3, MAX_TABLE_BYTES / 8);
    let mut t =
        Table::new((0..buckets).map(|_| AtomicUsize::new(0)).collect(), 8).expect("buckets");
    let layout = CowLayout::persistent(8);
    let mut entries = 0u64;
    let start = Instant::now();
    for (i, &o) in olds.iter().enumerate() {
        let e = NonNull::from(Box::leak(Box::new(Exception::new(o, layout.cow(i as u64)))));
        let mut b = t.lock(o);
        // SAFETY: a fresh entry, freed by `drain` or here.
        // SAFETY: a fresh entry in no table, freed by `drain` or below.
        match unsafe { b.insert(e) } {
            Some(e) => {
                drop(b);
                // SAFETY: merged into a run: handed back, a leaked `Box`.
                drop(unsafe { Box::from_raw(e.as_ptr()) });
            }
            None => entries += 1,
        }
    }
    let insert_ns = per_op(start, olds.len());
    let start = Instant::now();
    for &o in hits {
        assert!(black_box(t.lock(o).lookup(o)).is_some());
    }
    let hit_ns = per_op(start, hits.len());
    let start = Instant::now();
    for &o in misses {
        assert!(black_box(t.lock(o).lookup(o)).is_none());
    }
    let miss_ns = per_op(start, misses.len());
    // SAFETY: every entry is a leaked `Box`, unlinked by `drain`.
    t.drain(|e| drop(unsafe { Box::from_raw(e.as_ptr()) }));
    Row {
        what: "hash-table",
        n,
        insert_ns,
        hit_ns,
        miss_ns,
        bytes_per: (buckets as u64 * 8 + entries * 32) as f64 / n as f64,
    }
}

fn sequential(n: u64) -> Row {
    let layout = CowLayout::persistent(8);
    let ix =
        Index::new((0..SHARDS).map(|_| AtomicUsize::new(0)).collect(), layout).expect("shards");
    let t = Instant::now();
    for o in 0..n {
        assert!(index_insert(&ix, o, layout.cow(o)));
    }
    let insert_ns = per_op(t, n as usize);
    let s = ix.stats();
    free(ix);
    Row {
        what: "index-seq",
        n,
        insert_ns,
        hit_ns: f64::NAN,
        miss_ns: f64::NAN,
        bytes_per: (s.nodes * NODE_BYTES + SHARDS * 8) as f64 / n as f64,
    }
}

fn main() {
    let csv = std::env::args().any(|a| a == "--csv");
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[u64] = if quick {
        &[1 << 20]
    } else {
        &[1 << 20, 1 << 22, 1 << 24]
    };
    let mut rows = Vec::new();
    for &n in sizes {
        let (olds, misses) = workload(n, n ^ 0x9e37);
        let hits = probes(&olds, 17);
        rows.push(bench_index(n, &olds, &hits, &misses));
        rows.push(bench_bulk(n, &olds, &hits, &misses));
        rows.push(bench_table(n, &olds, &hits, &misses));
    }
    rows.push(sequential(*sizes.last().unwrap_or(&(1 << 20))));
    if csv {
        println!("structure,exceptions,insert_ns,lookup_hit_ns,lookup_miss_ns,bytes_per_exception");
        for r in &rows {
            println!(
                "{},{},{:.1},{:.1},{:.1},{:.4}",
                r.what, r.n, r.insert_ns, r.hit_ns, r.miss_ns, r.bytes_per
            );
        }
        return;
    }
    println!(
        "{:<11} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "structure", "exceptions", "insert ns", "hit ns", "miss ns", "B/exception"
    );
    for r in &rows {
        println!(
            "{:<11} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>12.4}",
            r.what, r.n, r.insert_ns, r.hit_ns, r.miss_ns, r.bytes_per
        );
    }
}
