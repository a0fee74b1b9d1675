//! Exception stores: where a snapshot allocates COW chunks and records its
//! exceptions (upstream's `dm-exception-store.[ch]`). A small enum for now:
//! the transient store; the persistent store joins it later without the
//! targets changing.

use crate::logic::chunk::{Chunk, ChunkGeometry};
use crate::logic::transient::{TransientStore, Usage};
use core::fmt::{self, Write};

/// A snapshot's exception store.
pub(crate) enum Store {
    /// `N`: in memory only.
    Transient(TransientStore),
}

impl Store {
    /// The chunk geometry the store uses.
    pub(crate) fn geometry(&self) -> ChunkGeometry {
        match self {
            Store::Transient(t) => t.geometry(),
        }
    }

    /// Allocates a COW chunk for a new exception (`prepare_exception`);
    /// `None` when the COW is full. Called under the allocation spinlock.
    pub(crate) fn prepare_exception(&mut self) -> Option<Chunk> {
        match self {
            Store::Transient(t) => t.prepare_exception(),
        }
    }

    /// Space use for `dmsetup status`.
    pub(crate) fn usage(&self) -> Usage {
        match self {
            Store::Transient(t) => t.usage(),
        }
    }

    /// The store's part of the table line (`" N 16"`); with `no_chunk`,
    /// chunk 0, as upstream prints it for a store not set up yet.
    pub(crate) fn status_table(&self, out: &mut impl Write, no_chunk: bool) -> fmt::Result {
        let chunk = if no_chunk {
            0
        } else {
            self.geometry().sectors()
        };
        match self {
            Store::Transient(_) => write!(out, " N {}", chunk),
        }
    }
}
