//! The persistent exception store's I/O (`P`/`PO`, upstream's
//! `dm-snap-persistent.c`): reading the header and the metadata areas at
//! construction, group commits of the current area with PREFLUSH|FUA
//! before the bios that depend on them are released, and the header
//! rewrite that makes an invalidation permanent. The format and the
//! bookkeeping are the pure code in [`crate::logic::disk_format`] and
//! [`crate::logic::persistent`].
//!
//! Commits run in kcopyd's worker, one at a time per snapshot; the commit
//! state is behind a mutex anyway, since invalidation also touches it.

use super::copy::PendingTicket;
use crate::dm::dmio::{DmIo, IoBuf, MetadataWq};
use crate::dm::TableDev;
use crate::logic::chunk::{Chunk, ChunkGeometry};
use crate::logic::disk_format::{
    area_location, check_header, exceptions_per_area, walk_metadata, AreaReader, Header,
    HeaderError, WalkError, DEFAULT_CHUNK_SECTORS,
};
use crate::logic::merge::{Batch, MergeStep};
use crate::logic::persistent::{Allocator, CommitStep, Committer};
use crate::sync::KVecExt;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};

struct Commit {
    area: IoBuf,
    zero: IoBuf,
    committer: Committer,
    /// Exceptions written to `area` but not yet on disk, to complete once
    /// it is; `spare` is the other of two preallocated lists, so that no
    /// allocation happens on the I/O path.
    callbacks: KVec<PendingTicket>,
    spare: Option<KVec<PendingTicket>>,
    valid: bool,
}

/// Reads metadata areas through dm-io into the commit buffer.
struct AreaIo<'a> {
    io: &'a DmIo,
    cow: &'a TableDev,
    g: ChunkGeometry,
    buf: &'a mut IoBuf,
}

impl AreaReader for AreaIo<'_> {
    type Error = Error;
    fn read_area(&mut self, chunk: Chunk) -> Result<&[u8]> {
        self.io.read(self.cow, self.g.sector_of(chunk), self.buf)?;
        Ok(self.buf.as_slice())
    }
}

/// What the header said.
pub(crate) struct Loaded {
    /// The chunk size to use (the on-disk one if there is a header).
    pub(crate) chunk: u32,
    /// A zeroed header: a new COW.
    pub(crate) new_cow: bool,
    /// The header's valid flag (true for a new COW).
    pub(crate) valid: bool,
    /// The on-disk chunk size and the table's, when the table named
    /// another one: the caller warns (upstream's `read_header` does, but
    /// only for a table that reads its metadata, not for a handover
    /// destination).
    pub(crate) overridden: Option<(u32, u32)>,
}

impl Loaded {
    /// Upstream's warning that the on-disk chunk size wins, if it did.
    pub(crate) fn warn_overridden(&self) {
        if let Some((disk, table)) = self.overridden {
            pr_warn!(
                "snapshots: chunk size {} in device metadata overrides table chunk size of {}.\n",
                disk,
                table
            );
        }
    }
}

/// Why the metadata could not be used.
pub(crate) enum LoadError {
    /// I/O error or memory.
    Io(Error),
    /// Foreign magic ("Invalid or corrupt snapshot").
    Corrupt,
    /// Unknown disk version.
    Version,
    /// The on-disk chunk size is unusable.
    ChunkSize,
}

/// A persistent store's metadata I/O state.
#[pin_data]
pub(crate) struct PersistentIo {
    io: DmIo,
    wq: MetadataWq,
    #[pin]
    commit: Mutex<Commit>,
    #[pin]
    header: Mutex<IoBuf>,
    /// Exceptions prepared but not yet committed.
    in_flight: AtomicU64,
    metadata_sectors: AtomicU64,
}

fn chunk_bytes(chunk: u32) -> usize {
    chunk as usize * 512
}

impl PersistentIo {
    /// Reads the header of `cow` (`read_header`): with the table's chunk
    /// size, or upstream's default for 0; an existing header's chunk size
    /// wins and is checked with `valid_chunk`. Nothing is written.
    pub(crate) fn open(
        cow: &TableDev,
        table_chunk: u32,
        valid_chunk: impl Fn(u32) -> bool,
    ) -> Result<(Arc<Self>, Loaded), LoadError> {
        let io = DmIo::new().map_err(LoadError::Io)?;
        let mut chunk = table_chunk;
        if chunk == 0 {
            chunk = DEFAULT_CHUNK_SECTORS.max(cow.logical_block_size() >> 9);
        }
        let mut hb = IoBuf::new(chunk_bytes(chunk)).map_err(LoadError::Io)?;
        io.read(cow, 0, &mut hb).map_err(LoadError::Io)?;
        let h = Header::decode(hb.as_slice()).ok_or(LoadError::Io(EIO))?;
        let loaded = match check_header(&h, Some((chunk, table_chunk != 0)), valid_chunk) {
            Ok(None) => Loaded {
                chunk,
                new_cow: true,
                valid: true,
                overridden: None,
            },
            Ok(Some(c)) => {
                chunk = c.chunk;
                Loaded {
                    chunk,
                    new_cow: false,
                    valid: c.valid,
                    overridden: c.overridden,
                }
            }
            Err(HeaderError::Corrupt(_)) => {
                pr_warn!("snapshots: Invalid or corrupt snapshot\n");
                return Err(LoadError::Corrupt);
            }
            Err(HeaderError::ChunkSize(c)) => {
                pr_err!("snapshots: invalid on-disk chunk size {}.\n", c);
                return Err(LoadError::ChunkSize);
            }
            Err(HeaderError::Version(v)) => {
                pr_warn!("snapshots: unable to handle snapshot disk version {}\n", v);
                return Err(LoadError::Version);
            }
        };
        let epa = exceptions_per_area(chunk) as usize;
        let commit = Commit {
            area: IoBuf::new(chunk_bytes(chunk)).map_err(LoadError::Io)?,
            zero: IoBuf::new(chunk_bytes(chunk)).map_err(LoadError::Io)?,
            committer: Committer::new(chunk),
            callbacks: KVec::with_capacity(epa, GFP_KERNEL).map_err(|_| LoadError::Io(ENOMEM))?,
            spare: Some(KVec::with_capacity(epa, GFP_KERNEL).map_err(|_| LoadError::Io(ENOMEM))?),
            valid: loaded.valid,
        };
        let header = IoBuf::new(chunk_bytes(chunk)).map_err(LoadError::Io)?;
        let wq = MetadataWq::new().map_err(LoadError::Io)?;
        let metadata = 2 * u64::from(chunk);
        let pio = Arc::pin_init(
            pin_init!(PersistentIo {
                io,
                wq,
                commit <- new_mutex!(commit, "dm_snap_rs:pstore_commit"),
                header <- new_mutex!(header, "dm_snap_rs:pstore_header"),
                in_flight: AtomicU64::new(0),
                metadata_sectors: AtomicU64::new(metadata),
            }),
            GFP_KERNEL,
        )
        .map_err(|_| LoadError::Io(ENOMEM))?;
        Ok((pio, loaded))
    }

    fn write_header(&self, cow: &TableDev, g: ChunkGeometry, valid: bool) -> Result {
        let mut h = self.header.lock();
        let mut hd = Header::new(g.sectors());
        hd.valid = u32::from(valid);
        hd.encode(h.as_mut_slice());
        self.io.write(cow, 0, &h, false)
    }

    /// Sets up a new COW: header, then an empty first area.
    pub(crate) fn init_new(&self, cow: &TableDev, g: ChunkGeometry) -> Result {
        self.write_header(cow, g, true)?;
        let c = self.commit.lock();
        self.io.write(
            cow,
            g.sector_of(area_location(0, g.sectors())),
            &c.zero,
            false,
        )
    }

    /// Reads every metadata area (`read_exceptions`), passing each
    /// exception to `add` and accounting for it in `alloc`; the last,
    /// partly filled area becomes the one commits go on filling.
    pub(crate) fn read_exceptions(
        &self,
        cow: &TableDev,
        g: ChunkGeometry,
        alloc: &mut Allocator,
        mut add: impl FnMut(Chunk, Chunk) -> Result,
    ) -> Result {
        let mut c = self.commit.lock();
        let mut r = AreaIo {
            io: &self.io,
            cow,
            g,
            buf: &mut c.area,
        };
        let dev_chunks = g.chunk_of(cow.nr_sectors());
        let end = walk_metadata(&mut r, g.sectors(), dev_chunks, |_, _, old, new| {
            alloc.saw(new);
            add(old, new)
        })
        .map_err(|e| match e {
            WalkError::Beyond { .. } => EIO,
            WalkError::Io(e) => e,
        })?;
        c.committer.current_area = end.area;
        c.committer.current_committed = end.entries;
        alloc.finish_read(g.sectors());
        self.metadata_sectors
            .store(c.committer.metadata_sectors(), Ordering::Relaxed);
        Ok(())
    }

    /// An exception was prepared (a COW chunk allocated).
    pub(crate) fn prepared(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// The copy for `pe` finished (`persistent_commit_exception`): records
    /// it in the current area and, when no other copy is in flight or the
    /// area is full, writes the area. Returns the exceptions now safely on
    /// disk (or failed) and whether they are valid; the caller completes
    /// them and then gives the list back with [`PersistentIo::recycle`].
    pub(crate) fn commit(
        &self,
        cow: &TableDev,
        g: ChunkGeometry,
        pe: PendingTicket,
        old: Chunk,
        new: Chunk,
        ok: bool,
    ) -> Option<(KVec<PendingTicket>, bool)> {
        let mut guard = self.commit.lock();
        let c = &mut *guard;
        if !ok {
            c.valid = false;
        }
        let others = self.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        let step = c.committer.add(c.area.as_mut_slice(), old, new, others);
        // Within the capacity reserved for a whole area: never allocates.
        if c.callbacks.push(pe, GFP_NOWAIT).is_err() {
            // Cannot happen (an area holds at most that many); the ticket
            // is leaked loudly rather than completed early.
            pr_err!("snapshots: commit list full\n");
        }
        let CommitStep::Write {
            area_chunk,
            zero_next,
            next_area_chunk,
        } = step
        else {
            return None;
        };
        if zero_next
            && self
                .io
                .write(cow, g.sector_of(next_area_chunk), &c.zero, false)
                .is_err()
        {
            c.valid = false;
        }
        if c.valid
            && self
                .io
                .write(cow, g.sector_of(area_chunk), &c.area, true)
                .is_err()
        {
            c.valid = false;
        }
        c.committer.written(c.area.as_mut_slice());
        self.metadata_sectors
            .store(c.committer.metadata_sectors(), Ordering::Relaxed);
        let spare = c.spare.take()?;
        let done = core::mem::replace(&mut c.callbacks, spare);
        Some((done, c.valid))
    }

    /// Gives back a list returned by [`PersistentIo::commit`], emptied.
    pub(crate) fn recycle(&self, mut list: KVec<PendingTicket>) {
        list.clear_keep();
        self.commit.lock().spare = Some(list);
    }

    /// The next run of exceptions to merge, newest first, reading the
    /// area before when the current one is empty
    /// (`persistent_prepare_merge`); `None` when everything is merged.
    pub(crate) fn prepare_merge(&self, cow: &TableDev, g: ChunkGeometry) -> Result<Option<Batch>> {
        let mut guard = self.commit.lock();
        let c = &mut *guard;
        loop {
            match c.committer.prepare_merge(c.area.as_slice()) {
                MergeStep::Done => return Ok(None),
                MergeStep::Batch(b) => return Ok(Some(b)),
                MergeStep::ReadArea(chunk) => self.io.read(cow, g.sector_of(chunk), &mut c.area)?,
            }
        }
    }

    /// The last `merged` exceptions are in the origin, and the origin is
    /// flushed: clear them from the current area and write it with
    /// PREFLUSH|FUA (`persistent_commit_merge`). Returns the allocator's
    /// new `next_free`, for status.
    pub(crate) fn commit_merge(
        &self,
        cow: &TableDev,
        g: ChunkGeometry,
        merged: usize,
    ) -> Result<Chunk> {
        let mut guard = self.commit.lock();
        let c = &mut *guard;
        let chunk = c
            .committer
            .clear_merged(c.area.as_mut_slice(), merged)
            .ok_or(EINVAL)?;
        self.io.write(cow, g.sector_of(chunk), &c.area, true)?;
        let next_free = c.committer.merge_written(merged);
        self.metadata_sectors
            .store(c.committer.metadata_sectors(), Ordering::Relaxed);
        Ok(next_free)
    }

    /// Makes an invalidation permanent (`persistent_drop_snapshot`): no
    /// further commits, and the header says invalid. The header is written
    /// from the metadata workqueue, as the caller may be submitting a bio.
    pub(crate) fn drop_snapshot(&self, cow: &TableDev, g: ChunkGeometry) {
        self.commit.lock().valid = false;
        self.wq.run(|| {
            if self.write_header(cow, g, false).is_err() {
                pr_warn!("snapshots: write header failed\n");
            }
        });
    }

    /// Metadata sectors for status: header and areas so far.
    pub(crate) fn metadata_sectors(&self) -> u64 {
        self.metadata_sectors.load(Ordering::Relaxed)
    }
}
