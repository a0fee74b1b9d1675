//! Userspace tests of the persistent store's merge bookkeeping.

use dm_snap_logic::disk_format::{
    area_location, exceptions_per_area, read_exception, write_exception,
};
use dm_snap_logic::merge::{Batch, MergeStep};
use dm_snap_logic::persistent::Committer;

const C: u32 = 8; // 4 KiB chunks: 256 exceptions per area

fn step(old: u64, new: u64, chunks: usize) -> MergeStep {
    MergeStep::Batch(Batch { old, new, chunks })
}

fn area_with(entries: &[(u64, u64)]) -> Vec<u8> {
    let mut a = vec![0u8; C as usize * 512];
    for (k, &(o, n)) in entries.iter().enumerate() {
        write_exception(&mut a, k, o, n);
    }
    a
}

#[test]
fn batches_are_runs_from_the_newest_backwards() {
    // Origin 10..=12 -> COW 2..=4 (a run), then 50 -> 5, then 7..=8 -> 6..=7.
    let e = [(10, 2), (11, 3), (12, 4), (50, 5), (7, 6), (8, 7)];
    let mut area = area_with(&e);
    let mut c = Committer::new(C);
    c.current_committed = e.len();
    let mut got = Vec::new();
    loop {
        match c.prepare_merge(&area) {
            MergeStep::Batch(b) => {
                assert_eq!(
                    c.clear_merged(&mut area, b.chunks),
                    Some(area_location(0, C))
                );
                let next_free = c.merge_written(b.chunks);
                got.push((b, next_free));
            }
            MergeStep::Done => break,
            MergeStep::ReadArea(_) => panic!("one area only"),
        }
    }
    let b = |old, new, chunks| Batch { old, new, chunks };
    assert_eq!(
        got,
        vec![
            (b(7, 6, 2), 1 + 4 + 1),
            (b(50, 5, 1), 1 + 3 + 1),
            (b(10, 2, 3), 1 + 0 + 1)
        ]
    );
    // Every merged entry is cleared: the area now reads as empty.
    assert_eq!(read_exception(&area, 0), (0, 0));
}

#[test]
fn a_run_is_not_extended_by_an_entry_consecutive_in_one_chunk_only() {
    // Origin chunks consecutive but COW chunks not, and the reverse.
    let mut c = Committer::new(C);
    let area = area_with(&[(1, 9), (2, 11), (3, 12)]);
    c.current_committed = 3;
    assert_eq!(c.prepare_merge(&area), step(2, 11, 2));
    let area = area_with(&[(5, 10), (7, 11)]);
    c.current_committed = 2;
    assert_eq!(c.prepare_merge(&area), step(7, 11, 1));
    // Chunk 0 never underflows.
    let area = area_with(&[(0, 2)]);
    c.current_committed = 1;
    assert_eq!(c.prepare_merge(&area), step(0, 2, 1));
}

#[test]
fn an_empty_area_steps_back_to_the_full_one_before() {
    let epa = exceptions_per_area(C) as usize;
    let mut c = Committer::new(C);
    c.current_area = 1;
    c.current_committed = 0;
    assert_eq!(
        c.prepare_merge(&[0u8; C as usize * 512]),
        MergeStep::ReadArea(area_location(0, C))
    );
    assert_eq!((c.current_area, c.current_committed), (0, epa));
    // Area 0, full, one run of all its entries: one batch of epa chunks.
    let full: Vec<(u64, u64)> = (0..epa as u64).map(|i| (100 + i, 2 + i)).collect();
    let mut area = area_with(&full);
    let MergeStep::Batch(b) = c.prepare_merge(&area) else {
        panic!("a batch")
    };
    assert_eq!(
        b,
        Batch {
            old: 100,
            new: 2,
            chunks: epa
        }
    );
    c.clear_merged(&mut area, b.chunks).unwrap();
    assert_eq!(c.merge_written(b.chunks), 2);
    assert_eq!(c.prepare_merge(&area), MergeStep::Done);
    // More than is left cannot be cleared.
    assert_eq!(c.clear_merged(&mut area, 1), None);
}
