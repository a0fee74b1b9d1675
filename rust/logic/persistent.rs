//! The persistent (`P`/`PO`) exception store's bookkeeping, without I/O:
//! COW chunk allocation that steps over metadata areas, and the group
//! commit of exceptions into the current metadata area
//! (`dm-snap-persistent.c`: `persistent_prepare_exception`,
//! `persistent_commit_exception`, `insert_exceptions`). The kernel side does
//! the reads and writes this decides.

use super::chunk::Chunk;
use super::disk_format::{area_location, exceptions_per_area, skip_metadata, write_exception};

/// The allocator: taken under the store's spinlock, never sleeps. The
/// chunk size and the COW size are the caller's (the size is read at each
/// allocation, as upstream, so a grown COW is used).
#[derive(Debug, Clone, Copy)]
pub struct Allocator {
    /// Next COW chunk to hand out.
    pub next_free: Chunk,
}

impl Default for Allocator {
    fn default() -> Self {
        Self::new()
    }
}

impl Allocator {
    /// A fresh COW: chunk 0 is the header, 1 the first area, data from 2.
    pub fn new() -> Self {
        Self { next_free: 2 }
    }

    /// Allocates a data chunk of `chunk_sectors` on a COW of `cow_sectors`;
    /// `None` when it is full (`persistent_prepare_exception`).
    pub fn prepare(&mut self, chunk_sectors: u32, cow_sectors: u64) -> Option<Chunk> {
        // Checked: `next_free` comes from the COW's metadata.
        let next = self.next_free.checked_add(1)?;
        if cow_sectors < next.checked_mul(u64::from(chunk_sectors))? {
            return None;
        }
        let c = self.next_free;
        self.next_free = skip_metadata(next, chunk_sectors);
        Some(c)
    }

    /// Sectors handed out so far, header and areas included (for status).
    pub fn allocated_sectors(&self, chunk_sectors: u32) -> u64 {
        self.next_free.saturating_mul(u64::from(chunk_sectors))
    }

    /// Accounts for an exception read back from the metadata.
    pub fn saw(&mut self, new_chunk: Chunk) {
        if self.next_free <= new_chunk {
            self.next_free = new_chunk.saturating_add(1);
        }
    }

    /// After reading every area: step over a metadata area if needed.
    pub fn finish_read(&mut self, chunk_sectors: u32) {
        self.next_free = skip_metadata(self.next_free, chunk_sectors);
    }
}

/// What to do after adding an exception to the current area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitStep {
    /// Other exceptions are still being copied and the area has room:
    /// wait for them, to write the area once for the whole group.
    Wait,
    /// Write the area (at chunk `area_chunk`) with PREFLUSH|FUA now; if
    /// `zero_next` is set, the area is full: first zero the next area (at
    /// chunk `next_area_chunk`) on disk so that readers stop there.
    Write {
        /// Chunk of the current area.
        area_chunk: Chunk,
        /// The area is full.
        zero_next: bool,
        /// Chunk of the next area.
        next_area_chunk: Chunk,
    },
}

/// The commit side: which area is being filled and how far.
#[derive(Debug, Clone, Copy)]
pub struct Committer {
    chunk_sectors: u32,
    /// Index of the area being filled.
    pub current_area: u64,
    /// Entries of it already used.
    pub current_committed: usize,
}

impl Committer {
    /// Starts at area 0, empty.
    pub fn new(chunk_sectors: u32) -> Self {
        Self {
            chunk_sectors,
            current_area: 0,
            current_committed: 0,
        }
    }

    fn epa(&self) -> usize {
        exceptions_per_area(self.chunk_sectors) as usize
    }

    /// Exceptions one area holds.
    pub fn entries_per_area(&self) -> usize {
        self.epa()
    }

    /// The chunk size the areas are laid out for.
    pub fn chunk_sectors(&self) -> u32 {
        self.chunk_sectors
    }

    /// Records `(old, new)` in `area` (the in-memory copy of the current
    /// area); `others_in_flight` is how many prepared exceptions are still
    /// not committed after this one.
    pub fn add(
        &mut self,
        area: &mut [u8],
        old: Chunk,
        new: Chunk,
        others_in_flight: u64,
    ) -> CommitStep {
        write_exception(area, self.current_committed, old, new);
        self.current_committed += 1;
        let full = self.current_committed == self.epa();
        if others_in_flight > 0 && !full {
            return CommitStep::Wait;
        }
        CommitStep::Write {
            area_chunk: area_location(self.current_area, self.chunk_sectors),
            zero_next: full,
            next_area_chunk: area_location(self.current_area + 1, self.chunk_sectors),
        }
    }

    /// After the area was written: move on to the next area if it is full.
    pub fn written(&mut self, area: &mut [u8]) {
        if self.current_committed == self.epa() {
            self.current_committed = 0;
            self.current_area += 1;
            area.fill(0);
        }
    }

    /// Metadata sectors for status: header and areas up to the current.
    pub fn metadata_sectors(&self) -> u64 {
        (self.current_area + 2) * u64::from(self.chunk_sectors)
    }
}
