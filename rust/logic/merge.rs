//! The persistent store's side of `snapshot-merge` (upstream's
//! `persistent_prepare_merge` and `persistent_commit_merge`), without I/O:
//! which run of exceptions to merge next, and how the metadata shrinks
//! once it is merged. The kernel side reads and writes the areas this
//! decides, copies each batch COW -> origin, and flushes the origin before
//! the shortened area is written, so a crash redoes at most one batch.
//!
//! Merging runs from the newest exception backwards: the last entry of the
//! current area, and the entries before it while both their origin and COW
//! chunks stay consecutive, make one batch (one copy). When the current
//! area is empty the walk steps back to the area before it, which is full;
//! when area 0 is empty the merge is done.

use super::chunk::Chunk;
use super::disk_format::{area_location, read_exception, write_exception};
use super::persistent::Committer;

/// A run of consecutive exceptions to merge with one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// First origin chunk of the run.
    pub old: Chunk,
    /// Its COW chunk.
    pub new: Chunk,
    /// Chunks in the run (at least 1).
    pub chunks: usize,
}

/// What [`Committer::prepare_merge`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeStep {
    /// Nothing left to merge.
    Done,
    /// Read the (full) area at this chunk into the area buffer, then ask
    /// again.
    ReadArea(Chunk),
    /// Merge this run.
    Batch(Batch),
}

impl Committer {
    /// The next batch to merge, from `area` (the in-memory copy of the
    /// current area) (`persistent_prepare_merge`).
    pub fn prepare_merge(&mut self, area: &[u8]) -> MergeStep {
        if self.current_committed == 0 {
            if self.current_area == 0 {
                return MergeStep::Done;
            }
            self.current_area -= 1;
            self.current_committed = self.entries_per_area();
            return MergeStep::ReadArea(area_location(self.current_area, self.chunk_sectors()));
        }
        let last = self.current_committed - 1;
        let (old, new) = read_exception(area, last);
        let mut n = 1;
        while n < self.current_committed {
            let (o, c) = read_exception(area, last - n);
            let back = n as u64;
            if old.checked_sub(back) != Some(o) || new.checked_sub(back) != Some(c) {
                break;
            }
            n += 1;
        }
        // `old` and `new` are at least `n - 1` (each step back was checked
        // above), and may be `u64::MAX` (a crafted COW): no `+ 1` first.
        let back = n as u64 - 1;
        MergeStep::Batch(Batch {
            old: old - back,
            new: new - back,
            chunks: n,
        })
    }

    /// Clears the last `merged` entries of `area` once their chunks are in
    /// the origin (and the origin flushed); returns the chunk to write the
    /// area to (PREFLUSH|FUA), or `None` if there are not that many.
    pub fn clear_merged(&self, area: &mut [u8], merged: usize) -> Option<Chunk> {
        if merged > self.current_committed {
            return None;
        }
        for i in 0..merged {
            write_exception(area, self.current_committed - 1 - i, 0, 0);
        }
        Some(area_location(self.current_area, self.chunk_sectors()))
    }

    /// The area written by [`Committer::clear_merged`] is on disk: forget
    /// the merged entries. Returns the allocator's new `next_free`: where
    /// it would be had every exception been committed in order, which only
    /// status reads during a merge (`persistent_commit_merge`).
    pub fn merge_written(&mut self, merged: usize) -> Chunk {
        self.current_committed -= merged.min(self.current_committed);
        area_location(self.current_area, self.chunk_sectors())
            .saturating_add(self.current_committed as u64 + 1)
    }
}
