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
use crate::dm::Bdev;
use crate::logic::chunk::{Chunk, ChunkGeometry};
use crate::logic::disk_format::{
    area_location, check_header, cow_chunk_is_data, entry_in_range, exceptions_per_area,
    origin_chunk_addressable, walk_metadata, AreaReader, Header, HeaderError, WalkError,
    DEFAULT_CHUNK_SECTORS,
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
    callbacks: KVVec<PendingTicket>,
    spare: Option<KVVec<PendingTicket>>,
    valid: bool,
}

/// Reads metadata areas through dm-io, many at a time: their positions are
/// known up front (every `stride` chunks), so a window of the next areas is
/// read with all its reads in flight, growing from one area (a new or small
/// COW reads little beyond its last area) to [`MAX_WINDOW_BYTES`].
struct AreaIo<'a> {
    io: &'a DmIo,
    cow: &'a Bdev,
    g: ChunkGeometry,
    /// The areas read, one chunk each.
    buf: IoBuf,
    /// First chunk of the window, and how many areas it holds.
    first: Chunk,
    len: u64,
    /// Areas to read next time, and at most.
    next: u64,
    max: u64,
    stride: u64,
    dev_chunks: u64,
    /// Offset in `buf` of the area last returned.
    last: usize,
}

/// Most bytes of metadata read at once at activation.
const MAX_WINDOW_BYTES: usize = 1 << 20;

impl<'a> AreaIo<'a> {
    fn new(io: &'a DmIo, cow: &'a Bdev, g: ChunkGeometry) -> Result<Self> {
        let cb = chunk_bytes(g.sectors());
        let max = (MAX_WINDOW_BYTES / cb).clamp(1, 64) as u64;
        Ok(Self {
            io,
            cow,
            g,
            buf: IoBuf::new(cb * max as usize)?,
            first: 0,
            len: 0,
            next: 1,
            max,
            stride: area_location(1, g.sectors()) - area_location(0, g.sectors()),
            dev_chunks: g.chunk_of(cow.nr_sectors()),
            last: 0,
        })
    }

    /// The area last returned by `read_area`.
    fn last_area(&self) -> &[u8] {
        let cb = chunk_bytes(self.g.sectors());
        self.buf
            .as_slice()
            .get(self.last..self.last + cb)
            .unwrap_or_default()
    }
}

impl AreaReader for AreaIo<'_> {
    type Error = Error;
    fn read_area(&mut self, chunk: Chunk) -> Result<&[u8]> {
        let cb = chunk_bytes(self.g.sectors());
        let d = chunk.wrapping_sub(self.first);
        let i = if chunk >= self.first && d % self.stride == 0 && d / self.stride < self.len {
            d / self.stride
        } else {
            // Areas from `chunk` on, as many as fit before the end.
            let room = self.dev_chunks.saturating_sub(chunk).div_ceil(self.stride);
            let mut n = self.next.min(room).max(1);
            let at = self.g.sector_of(chunk);
            let stride = self.g.sector_of(self.stride);
            let r = self.io.read_strided(
                self.cow,
                at,
                stride,
                n as usize,
                &mut self.buf,
                cb * n as usize,
            );
            if r.is_err() && n > 1 {
                // Only the area asked for counts: an error ahead of it
                // (past the last area, maybe) must not fail the load.
                n = 1;
                self.next = 1;
                self.io
                    .read_strided(self.cow, at, stride, 1, &mut self.buf, cb)?;
            } else {
                r?;
            }
            self.first = chunk;
            self.len = n;
            self.next = (self.next * 2).min(self.max);
            0
        };
        self.last = i as usize * cb;
        Ok(self.last_area())
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
            crate::dm_warn!(
                persistent;
                "chunk size {} in device metadata overrides table chunk size of {}.\n",
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
        cow: &Bdev,
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
                crate::dm_warn!(persistent; "Invalid or corrupt snapshot\n");
                return Err(LoadError::Corrupt);
            }
            Err(HeaderError::ChunkSize(c)) => {
                crate::dm_err!(persistent; "invalid on-disk chunk size {}.\n", c);
                return Err(LoadError::ChunkSize);
            }
            Err(HeaderError::Version(v)) => {
                crate::dm_warn!(persistent; "unable to handle snapshot disk version {}\n", v);
                return Err(LoadError::Version);
            }
        };
        let epa = exceptions_per_area(chunk) as usize;
        let commit = Commit {
            area: IoBuf::new(chunk_bytes(chunk)).map_err(LoadError::Io)?,
            zero: IoBuf::new(chunk_bytes(chunk)).map_err(LoadError::Io)?,
            committer: Committer::new(chunk),
            callbacks: KVVec::with_capacity(epa, GFP_KERNEL).map_err(|_| LoadError::Io(ENOMEM))?,
            spare: Some(KVVec::with_capacity(epa, GFP_KERNEL).map_err(|_| LoadError::Io(ENOMEM))?),
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

    fn write_header(&self, cow: &Bdev, g: ChunkGeometry, valid: bool) -> Result {
        let mut h = self.header.lock();
        let mut hd = Header::new(g.sectors());
        hd.valid = u32::from(valid);
        hd.encode(h.as_mut_slice());
        self.io.write(cow, 0, &h, false)
    }

    /// Sets up a new COW: header, then an empty first area.
    pub(crate) fn init_new(&self, cow: &Bdev, g: ChunkGeometry) -> Result {
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
    /// partly filled area becomes the one commits go on filling. An
    /// exception pointing outside the COW or at its header or metadata
    /// areas is refused with `EINVAL` and a
    /// log line naming it (unless the walk fails anyway, whose error is
    /// upstream's answer): upstream loads it, and maps reads past the
    /// device (or, with a chunk number near 2^64, overflows).
    pub(crate) fn read_exceptions(
        &self,
        cow: &Bdev,
        g: ChunkGeometry,
        alloc: &mut Allocator,
        mut add: impl FnMut(Chunk, Chunk) -> Result,
    ) -> Result {
        let mut r = AreaIo::new(&self.io, cow, g)?;
        let dev_chunks = g.chunk_of(cow.nr_sectors());
        // The first entry outside the COW, reported once the walk is over:
        // where upstream refuses the COW too (an area past the device, a
        // failed read), its error wins, as the C driver gives it.
        let mut outside: Option<(u64, usize, Chunk, Chunk)> = None;
        let end = walk_metadata(&mut r, g.sectors(), dev_chunks, |area, k, old, new| {
            if !entry_in_range(new, dev_chunks)
                || !cow_chunk_is_data(new, g.sectors())
                || !origin_chunk_addressable(old, g.sectors())
            {
                outside.get_or_insert((area, k, old, new));
                return Ok(());
            }
            if outside.is_some() {
                return Ok(());
            }
            alloc.saw(new);
            add(old, new)
        })
        .map_err(|e| match e {
            WalkError::Beyond { .. } => EIO,
            WalkError::Io(e) => e,
        })?;
        if let Some((area, k, old, new)) = outside {
            crate::dm_err!(
                persistent;
                "COW metadata area {} entry {}: exception {} -> {} is outside the COW ({} chunks), on its metadata, or past any origin\n",
                area,
                k,
                old,
                new,
                dev_chunks
            );
            return Err(EINVAL);
        }
        let mut c = self.commit.lock();
        // The last area, partly filled, is where commits go on.
        for (d, s) in c.area.as_mut_slice().iter_mut().zip(r.last_area()) {
            *d = *s;
        }
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
        cow: &Bdev,
        g: ChunkGeometry,
        pe: PendingTicket,
        old: Chunk,
        new: Chunk,
        ok: bool,
    ) -> Option<(KVVec<PendingTicket>, bool)> {
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
            crate::dm_err!(persistent; "commit list full\n");
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
    pub(crate) fn recycle(&self, mut list: KVVec<PendingTicket>) {
        list.clear_keep();
        self.commit.lock().spare = Some(list);
    }

    /// The next run of exceptions to merge, newest first, reading the
    /// area before when the current one is empty
    /// (`persistent_prepare_merge`); `None` when everything is merged.
    pub(crate) fn prepare_merge(&self, cow: &Bdev, g: ChunkGeometry) -> Result<Option<Batch>> {
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
        cow: &Bdev,
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
    pub(crate) fn drop_snapshot(&self, cow: &Bdev, g: ChunkGeometry) {
        self.commit.lock().valid = false;
        self.wq.run(|| {
            if self.write_header(cow, g, false).is_err() {
                crate::dm_warn!(persistent; "write header failed\n");
            }
        });
    }

    /// Metadata sectors for status: header and areas so far.
    pub(crate) fn metadata_sectors(&self) -> u64 {
        self.metadata_sectors.load(Ordering::Relaxed)
    }
}
