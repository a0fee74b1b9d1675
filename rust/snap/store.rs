//! Exception stores: where a snapshot allocates COW chunks and records its
//! exceptions (upstream's `dm-exception-store.[ch]`): a small enum over the
//! transient store and the persistent store's allocator. The persistent
//! store's metadata I/O is [`super::persistent::PersistentIo`], kept next
//! to this in the snapshot's swappable exception state.

use crate::logic::chunk::{Chunk, ChunkGeometry};
use crate::logic::persistent::Allocator;
use crate::logic::transient::{TransientStore, Usage};
use core::fmt::{self, Write};

/// A snapshot's exception store.
pub(crate) enum Store {
    /// `N`: in memory only.
    Transient(TransientStore),
    /// `P`/`PO`: the on-disk format.
    Persistent {
        /// Data chunk allocation.
        alloc: Allocator,
        /// Chunk size (the on-disk one).
        geometry: ChunkGeometry,
        /// Size of the COW device.
        cow_sectors: u64,
    },
}

impl Store {
    /// The chunk geometry the store uses.
    pub(crate) fn geometry(&self) -> ChunkGeometry {
        match self {
            Store::Transient(t) => t.geometry(),
            Store::Persistent { geometry, .. } => *geometry,
        }
    }

    /// Allocates a COW chunk for a new exception (`prepare_exception`);
    /// `None` when the COW is full. Called under the allocation spinlock.
    pub(crate) fn prepare_exception(&mut self) -> Option<Chunk> {
        match self {
            Store::Transient(t) => t.prepare_exception(),
            Store::Persistent { alloc, .. } => alloc.prepare(),
        }
    }

    /// Space use for `dmsetup status`; `metadata` comes from the
    /// persistent store's I/O state.
    pub(crate) fn usage(&self, metadata: u64) -> Usage {
        match self {
            Store::Transient(t) => t.usage(),
            Store::Persistent {
                alloc, cow_sectors, ..
            } => Usage {
                total: *cow_sectors,
                allocated: alloc.allocated_sectors(),
                metadata,
            },
        }
    }

    /// The store's part of the table line (`" N 16"`, `" PO 8"`); with
    /// `no_chunk`, chunk 0, as upstream prints it for a store not set up
    /// yet; `po` is the table's own overflow option.
    pub(crate) fn status_table(
        &self,
        out: &mut impl Write,
        no_chunk: bool,
        po: bool,
    ) -> fmt::Result {
        let chunk = if no_chunk {
            0
        } else {
            self.geometry().sectors()
        };
        match self {
            Store::Transient(_) => write!(out, " N {}", chunk),
            Store::Persistent { .. } => write!(out, " {} {}", if po { "PO" } else { "P" }, chunk),
        }
    }
}
