//! Exception stores: where a snapshot allocates COW chunks and records its
//! exceptions (upstream's `dm-exception-store.[ch]`). One enum over the
//! transient store and the persistent one; the persistent variant owns its
//! metadata I/O ([`PersistentIo`]). The chunk geometry is not in here: the
//! snapshot's [`super::cow::Exceptions`] holds it once, and passes it in.
//! The COW's size is read at each allocation and status, as upstream's
//! `get_dev_size`, so a grown COW (`lvextend` of a snapshot) is used.

use super::persistent::PersistentIo;
use crate::logic::chunk::{Chunk, ChunkGeometry};
use crate::logic::persistent::Allocator;
use crate::logic::transient::{TransientStore, Usage};
use core::fmt::{self, Write};
use kernel::sync::Arc;

/// A snapshot's exception store, under the allocation spinlock.
pub(crate) enum Store {
    /// `N`: in memory only.
    Transient(TransientStore),
    /// `P`/`PO`: the on-disk format.
    Persistent {
        /// Data chunk allocation.
        alloc: Allocator,
        /// The metadata I/O (sleeps: clone it out from under the lock).
        io: Arc<PersistentIo>,
    },
}

impl Store {
    /// The persistent store's I/O; `None` for `N`.
    pub(crate) fn io(&self) -> Option<&Arc<PersistentIo>> {
        match self {
            Store::Transient(_) => None,
            Store::Persistent { io, .. } => Some(io),
        }
    }

    /// Allocates a COW chunk for a new exception (`prepare_exception`) on
    /// a COW of `cow_sectors`; `None` when it is full.
    pub(crate) fn prepare_exception(
        &mut self,
        g: ChunkGeometry,
        cow_sectors: u64,
    ) -> Option<Chunk> {
        match self {
            Store::Transient(t) => t.prepare_exception(g, cow_sectors),
            Store::Persistent { alloc, .. } => alloc.prepare(g.sectors(), cow_sectors),
        }
    }

    /// After a merge batch: where the persistent allocator would be had
    /// every remaining exception been committed in order (only status
    /// reads it while merging).
    pub(crate) fn set_next_free(&mut self, next_free: Chunk) {
        if let Store::Persistent { alloc, .. } = self {
            alloc.next_free = next_free;
        }
    }

    /// Space use for `dmsetup status` on a COW of `cow_sectors`.
    pub(crate) fn usage(&self, g: ChunkGeometry, cow_sectors: u64) -> Usage {
        match self {
            Store::Transient(t) => t.usage(cow_sectors),
            Store::Persistent { alloc, io } => Usage {
                total: cow_sectors,
                allocated: alloc.allocated_sectors(g.sectors()),
                metadata: io.metadata_sectors(),
            },
        }
    }

    /// The store's part of the table line (`" N 16"`, `" PO 8"`); `chunk`
    /// 0 for a store not set up yet, as upstream prints it; `po` is the
    /// table's own overflow option.
    pub(crate) fn status_table(&self, out: &mut impl Write, chunk: u32, po: bool) -> fmt::Result {
        match self {
            Store::Transient(_) => write!(out, " N {}", chunk),
            Store::Persistent { .. } => write!(out, " {} {}", if po { "PO" } else { "P" }, chunk),
        }
    }
}
