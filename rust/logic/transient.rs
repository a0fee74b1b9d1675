//! The transient (`N`) exception store's allocator: COW chunks are handed
//! out in order and never written back (`dm-snap-transient.c`).

use super::chunk::{Chunk, ChunkGeometry};

/// Allocation state of a transient store. The chunk geometry and the COW
/// size are the caller's (the size is read at each allocation, as upstream,
/// so a grown COW is used).
#[derive(Debug, Clone, Copy, Default)]
pub struct TransientStore {
    next_free: u64,
}

/// What `dmsetup status` reports of a store, in sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Size of the COW device.
    pub total: u64,
    /// Sectors handed out (data and metadata).
    pub allocated: u64,
    /// Sectors of metadata.
    pub metadata: u64,
}

impl TransientStore {
    /// An empty store.
    pub fn new() -> Self {
        Self { next_free: 0 }
    }

    /// Allocates the next COW chunk of `g` on a COW of `cow_sectors`;
    /// `None` when it is full (`transient_prepare_exception`).
    pub fn prepare_exception(&mut self, g: ChunkGeometry, cow_sectors: u64) -> Option<Chunk> {
        let chunk = u64::from(g.sectors());
        if cow_sectors < self.next_free + chunk {
            return None;
        }
        let c = g.chunk_of(self.next_free);
        self.next_free += chunk;
        Some(c)
    }

    /// `transient_usage` on a COW of `cow_sectors`.
    pub fn usage(&self, cow_sectors: u64) -> Usage {
        Usage {
            total: cow_sectors,
            allocated: self.next_free,
            metadata: 0,
        }
    }
}
