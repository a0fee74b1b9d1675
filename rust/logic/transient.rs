//! The transient (`N`) exception store's allocator: COW chunks are handed
//! out in order and never written back (`dm-snap-transient.c`).

use super::chunk::{Chunk, ChunkGeometry};

/// Allocation state of a transient store.
#[derive(Debug, Clone, Copy)]
pub struct TransientStore {
    geometry: ChunkGeometry,
    cow_sectors: u64,
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
    /// An empty store on a COW of `cow_sectors`.
    pub fn new(geometry: ChunkGeometry, cow_sectors: u64) -> Self {
        Self {
            geometry,
            cow_sectors,
            next_free: 0,
        }
    }

    /// The chunk geometry.
    pub fn geometry(&self) -> ChunkGeometry {
        self.geometry
    }

    /// Allocates the next COW chunk; `None` when the COW is full
    /// (`transient_prepare_exception`).
    pub fn prepare_exception(&mut self) -> Option<Chunk> {
        let chunk = u64::from(self.geometry.sectors());
        if self.cow_sectors < self.next_free + chunk {
            return None;
        }
        let c = self.geometry.chunk_of(self.next_free);
        self.next_free += chunk;
        Some(c)
    }

    /// `transient_usage`.
    pub fn usage(&self) -> Usage {
        Usage {
            total: self.cow_sectors,
            allocated: self.next_free,
            metadata: 0,
        }
    }
}
