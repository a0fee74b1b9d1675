//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`), shared with
//! their replay under `cargo test` (`tests/unit/fuzz_replay.rs`), which
//! runs every input kept in `fuzz/corpus/` and `fuzz/regressions/`.
//!
//! Each body takes any bytes and drives the module's pure code the way
//! the kernel does with input from a disk or a table line. A panic is a
//! finding: in the kernel (overflow checks on) it is a `kernel BUG`.
//! Where a model exists (a `BTreeMap` for the exception stores) the
//! result is checked against it too.

#![allow(dead_code)]

use dm_snap_logic::args::{kstrtouint, scan_uint};
use dm_snap_logic::disk_format::{
    area_entries, check_header, cow_chunk_is_data, entry_in_range, exceptions_per_area,
    origin_chunk_addressable, read_exception, walk_metadata, AreaReader, Header, WalkError,
};
use dm_snap_logic::exception_index::{CowLayout, ExceptionIndex, IndexError, Shard};
use dm_snap_logic::exception_table::{Exception, ExceptionTable, SpinBit};
use dm_snap_logic::index_node::Node;
use dm_snap_logic::merge::MergeStep;
use dm_snap_logic::persistent::{Allocator, Committer};
use dm_snap_logic::table::{parse_chunk_size, parse_origin, parse_snapshot, parse_store_kind};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::AtomicUsize;

/// A COW image in memory.
struct Image<'a> {
    bytes: &'a [u8],
    chunk_bytes: usize,
    buf: Vec<u8>,
}

impl AreaReader for Image<'_> {
    type Error = ();
    fn read_area(&mut self, chunk: u64) -> Result<&[u8], ()> {
        // The device is `bytes` followed by zeros (a sparse tail).
        self.buf.iter_mut().for_each(|b| *b = 0);
        let off = usize::try_from(chunk)
            .ok()
            .and_then(|c| c.checked_mul(self.chunk_bytes));
        if let Some(off) = off.filter(|&o| o < self.bytes.len()) {
            let end = self.bytes.len().min(off + self.chunk_bytes);
            self.buf[..end - off].copy_from_slice(&self.bytes[off..end]);
        }
        Ok(&self.buf)
    }
}

fn node() -> NonNull<Node> {
    // SAFETY: a zeroed `Node` is a valid empty leaf.
    NonNull::new(unsafe { alloc_zeroed(Layout::new::<Node>()) }.cast()).expect("out of memory")
}

fn free_node(n: NonNull<Node>) {
    // SAFETY: allocated by `node` with this layout.
    unsafe { dealloc(n.as_ptr().cast(), Layout::new::<Node>()) };
}

type Index = ExceptionIndex<Vec<AtomicUsize>, SpinBit>;
type Table = ExceptionTable<Vec<AtomicUsize>, SpinBit>;

/// Runs `op` on the locked shard of `chunk`, giving it nodes until it
/// stops asking (as the kernel does, allocating with no lock held).
fn with_nodes<T>(
    ix: &Index,
    chunk: u64,
    mut op: impl FnMut(&mut Shard<'_, SpinBit>) -> (T, Result<(), IndexError>),
) -> (T, Result<(), IndexError>) {
    loop {
        let (t, r) = op(&mut ix.lock(chunk));
        match r {
            Err(IndexError::NeedNodes(n)) => {
                assert!(n > 0 && n <= 8, "asks for {n} nodes");
                let mut s = ix.lock(chunk);
                for _ in 0..n {
                    // SAFETY: a fresh zeroed node, owned by the index now.
                    unsafe { s.give(node()) };
                }
            }
            r => return (t, r),
        }
    }
}

/// A persistent COW as `snapshot_ctr` reads it: the header checked, the
/// metadata walked with the module's range rule and allocator, and the
/// exceptions loaded the module's two ways (the compact index, from
/// stably sorted batches; upstream's hash table, one by one), each checked
/// against a model where the first mapping of a chunk wins.
///
/// Input: byte 0 picks the chunk size (1 to 128 sectors), byte 1 how many
/// chunks of zeros follow the image (a larger device than the bytes);
/// the rest is the device from sector 0.
pub fn cow_load(data: &[u8]) {
    let [sel, extra, bytes @ ..] = data else {
        return;
    };
    let chunk_sectors = 1u32 << (sel % 8);
    let chunk_bytes = chunk_sectors as usize * 512;
    let dev_chunks = (bytes.len() / chunk_bytes) as u64 + u64::from(*extra);
    let mut hb = [0u8; 512];
    let n = bytes.len().min(512);
    hb[..n].copy_from_slice(&bytes[..n]);
    let Some(h) = Header::decode(&hb) else {
        return;
    };
    let limit = 1u32 << 15;
    let checked = match check_header(&h, Some((chunk_sectors, true)), |c| {
        c.is_power_of_two() && c <= limit
    }) {
        Ok(Some(c)) => c,
        Ok(None) | Err(_) => return,
    };
    // The on-disk chunk size wins; keep the image's chunk size for the
    // reader (as the kernel re-reads with the on-disk one) but bound the
    // work: a huge on-disk chunk makes huge areas.
    let chunk_sectors = checked.chunk;
    if chunk_sectors > 128 {
        return;
    }
    let chunk_bytes = chunk_sectors as usize * 512;
    let dev_chunks = dev_chunks.min((bytes.len() / chunk_bytes) as u64 + u64::from(*extra));
    let mut img = Image {
        bytes,
        chunk_bytes,
        buf: vec![0; chunk_bytes],
    };
    let mut alloc = Allocator::new();
    let mut entries = Vec::new();
    let mut outside = false;
    let end = walk_metadata(&mut img, chunk_sectors, dev_chunks, |_, _, old, new| {
        if !entry_in_range(new, dev_chunks)
            || !cow_chunk_is_data(new, chunk_sectors)
            || !origin_chunk_addressable(old, chunk_sectors)
        {
            outside = true;
            return Ok(());
        }
        if !outside {
            alloc.saw(new);
            entries.push((old, new));
        }
        Ok(())
    });
    match end {
        Err(WalkError::Beyond { .. }) | Err(WalkError::Io(())) => return,
        Ok(_) if outside => return,
        Ok(_) => {}
    }
    alloc.finish_read(chunk_sectors);
    let cow_sectors = dev_chunks.saturating_mul(u64::from(chunk_sectors));
    for _ in 0..4 {
        if let Some(c) = alloc.prepare(chunk_sectors, cow_sectors) {
            assert!(
                c >= 2 && c < dev_chunks,
                "allocated chunk {c} of {dev_chunks}"
            );
        }
    }
    let _ = alloc.allocated_sectors(chunk_sectors);

    // The model: the first mapping of a chunk wins.
    let mut model = BTreeMap::new();
    for &(old, new) in &entries {
        model.entry(old).or_insert(new);
    }

    // The compact index, as `Snap::read_metadata` loads it.
    let layout = CowLayout::persistent(chunk_sectors);
    if Index::fits(1 << 32, dev_chunks) {
        let ix =
            Index::new((0..4).map(|_| AtomicUsize::new(0)).collect(), layout).expect("index heads");
        let mut sorted = entries.clone();
        sorted.sort_by_key(|&(old, _)| old); // stable, as the radix sort
        let mut start = 0;
        while start < sorted.len() {
            // One shard's share at a time.
            let shard = ix.shard_of(sorted[start].0);
            let mut stop = start;
            while stop < sorted.len() && ix.shard_of(sorted[stop].0) == shard {
                stop += 1;
            }
            let mut at = start;
            while at < stop {
                let (n, r) = with_nodes(&ix, sorted[at].0, |s| {
                    s.insert_sorted(&sorted[at..stop], |&(o, c)| (o, c))
                });
                at += n;
                match r {
                    Ok(()) => {}
                    // The kernel refuses the COW: nothing more to check.
                    Err(IndexError::OutOfRange) => {
                        let mut ix = ix;
                        ix.drain(free_node);
                        return;
                    }
                    Err(e) => panic!("index load: {e:?}"),
                }
            }
            start = stop;
        }
        for (&old, &new) in model.iter().take(256) {
            assert_eq!(ix.lock(old).lookup(old), Some(new), "index lookup of {old}");
            if let Some(next) = old.checked_add(1) {
                assert_eq!(ix.lock(next).lookup(next), model.get(&next).copied());
            }
        }
        let mut ix = ix;
        ix.drain(free_node);
    }

    // Upstream's hash table: newest first in a bucket, runs joined.
    let mut t: Table =
        Table::new((0..64).map(|_| AtomicUsize::new(0)).collect(), 4).expect("table heads");
    for &(old, new) in entries.iter().take(4096) {
        let mut b = t.lock(old);
        if b.lookup(old).is_some() {
            continue; // the first mapping wins
        }
        let e = NonNull::from(Box::leak(Box::new(Exception::new(old, new))));
        // SAFETY: `e` is fresh, in no table, and freed only by the drain.
        if let Some(e) = unsafe { b.insert(e) } {
            drop(b);
            // SAFETY: the table gave it back unlinked.
            drop(unsafe { Box::from_raw(e.as_ptr()) });
        }
    }
    for (&old, &new) in model.iter().take(256) {
        let b = t.lock(old);
        if let Some(e) = b.lookup(old) {
            // SAFETY: linked in the locked bucket.
            let e = unsafe { e.as_ref() };
            if entries.len() <= 4096 {
                assert_eq!(e.remap(old), new, "table lookup of {old}");
            }
        }
    }
    t.drain(|e| {
        // SAFETY: every entry was leaked from a Box above.
        drop(unsafe { Box::from_raw(e.as_ptr()) })
    });
}

/// Table lines: the argument vector of `snapshot`, `snapshot-merge` and
/// `snapshot-origin` and their numbers, split at spaces (as dm does).
pub fn table_line(data: &[u8]) {
    let argv: Vec<&[u8]> = data
        .split(|&b| b == b' ')
        .filter(|a| !a.is_empty())
        .take(32)
        .collect();
    let _ = parse_origin(&argv);
    if let Ok(a) = parse_snapshot(&argv) {
        let _ = parse_store_kind(a.store);
        for (cow_lbs, origin_lbs) in [(1, 1), (8, 1), (1, 8), (8, 8)] {
            if let Ok(c) = parse_chunk_size(a.chunk_size, cow_lbs, origin_lbs) {
                assert!(c == 0 || c.is_power_of_two(), "chunk size {c}");
                assert!(c == 0 || c >= cow_lbs.max(origin_lbs), "chunk size {c}");
            }
        }
    }
    for a in &argv {
        let _ = parse_store_kind(a);
        if let Some(v) = kstrtouint(a) {
            // A plain decimal must read as itself.
            if let Ok(s) = core::str::from_utf8(a) {
                if s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0') {
                    assert_eq!(Ok(v), s.parse::<u32>(), "kstrtouint({s})");
                }
            }
        }
        let _ = scan_uint(a);
    }
}

/// The compact index against a `BTreeMap`: inserts, removals and lookups
/// from the input (3 bytes an operation: kind, origin chunk, COW chunk,
/// near a base so that runs form and split), with transient or
/// persistent numbering.
pub fn index_model(data: &[u8]) {
    let Some((&sel, ops)) = data.split_first() else {
        return;
    };
    let layout = if sel & 1 == 0 {
        CowLayout::transient()
    } else {
        CowLayout::persistent(8)
    };
    // Extreme bases too: chunk numbers near the top of the range.
    let base: u64 = match (sel >> 1) % 4 {
        0 => 0,
        1 => 1 << 32,
        2 => u64::MAX - 300,
        _ => (1 << 56) - 300,
    };
    let ix = Index::new((0..2).map(|_| AtomicUsize::new(0)).collect(), layout).expect("heads");
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    for op in ops.chunks_exact(3) {
        let old = base.wrapping_add(u64::from(op[1]));
        let cow = 2 + u64::from(op[2]) + u64::from(op[0] >> 2);
        match op[0] % 4 {
            0 | 1 => {
                let (_, r) = with_nodes(&ix, old, |s| ((), s.insert(old, cow)));
                match r {
                    Ok(()) => {
                        assert!(!model.contains_key(&old), "inserted {old} twice");
                        model.insert(old, cow);
                    }
                    Err(IndexError::Present) => assert!(model.contains_key(&old)),
                    Err(IndexError::OutOfRange) => {}
                    Err(e) => panic!("insert {old}: {e:?}"),
                }
            }
            2 => {
                let (_, r) = with_nodes(&ix, old, |s| ((), s.remove(old)));
                match r {
                    Ok(()) => assert!(model.remove(&old).is_some(), "removed absent {old}"),
                    Err(IndexError::NotFound) => assert!(!model.contains_key(&old)),
                    Err(e) => panic!("remove {old}: {e:?}"),
                }
            }
            _ => assert_eq!(
                ix.lock(old).lookup(old),
                model.get(&old).copied(),
                "lookup {old}"
            ),
        }
    }
    for (&old, &cow) in &model {
        assert_eq!(ix.lock(old).lookup(old), Some(cow), "final lookup {old}");
    }
    let mut ix = ix;
    // The walk that moves an outgrown index to a hash table: each
    // mapping once.
    let mut walked = BTreeMap::new();
    ix.for_each(|o, c| assert_eq!(walked.insert(o, c), None, "walked {o} twice"));
    assert_eq!(walked, model);
    ix.drain(free_node);
}

/// A merge of a persistent COW from its metadata (the merge worker's
/// walk): every batch asked for, the areas cleared and written, until the
/// walk says it is done; a batch must be made of entries that are in the
/// area. Input as for [`cow_load`] (chunk size byte, then area bytes).
pub fn merge_walk(data: &[u8]) {
    let [sel, bytes @ ..] = data else {
        return;
    };
    let chunk_sectors = 1u32 << (sel % 4);
    let chunk_bytes = chunk_sectors as usize * 512;
    let per_area = exceptions_per_area(chunk_sectors) as usize;
    // The areas: the input, chunk after chunk (the last one zero-padded).
    let mut areas: Vec<Vec<u8>> = bytes
        .chunks(chunk_bytes)
        .map(|c| {
            let mut a = c.to_vec();
            a.resize(chunk_bytes, 0);
            a
        })
        .take(64)
        .collect();
    if areas.is_empty() {
        return;
    }
    // Where the load left the committer: the first area not full.
    let mut last = 0;
    let mut committed = 0;
    for (i, a) in areas.iter().enumerate() {
        let (n, full) = area_entries(a);
        last = i;
        committed = n;
        if !full {
            break;
        }
    }
    let mut c = Committer::new(chunk_sectors);
    c.current_area = last as u64;
    c.current_committed = committed;
    let mut cur = areas[last].clone();
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 1_000_000, "merge walk does not end");
        match c.prepare_merge(&cur) {
            MergeStep::Done => break,
            MergeStep::ReadArea(_) => {
                let a = usize::try_from(c.current_area).expect("area");
                cur = areas[a].clone();
            }
            MergeStep::Batch(b) => {
                assert!(b.chunks >= 1 && b.chunks <= c.current_committed);
                let top = c.current_committed - 1;
                let (old, new) = read_exception(&cur, top);
                assert_eq!(
                    (
                        b.old.checked_add(b.chunks as u64 - 1),
                        b.new.checked_add(b.chunks as u64 - 1)
                    ),
                    (Some(old), Some(new)),
                    "batch {b:?} is not the area's last run"
                );
                // Merge a random part of the run, as a batch may be cut.
                let merged = 1 + (old as usize % b.chunks);
                assert!(c.clear_merged(&mut cur, merged).is_some());
                let _ = c.merge_written(merged);
                let a = usize::try_from(c.current_area).expect("area");
                areas[a] = cur.clone();
            }
        }
    }
    let _ = per_area;
}
