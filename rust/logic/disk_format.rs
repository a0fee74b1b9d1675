//! The persistent exception store's on-disk format, byte for byte as
//! upstream's `dm-snap-persistent.c`, so that a COW written by either
//! driver is read by the other. Shared by the kernel module and the
//! userspace tools; all fields are little-endian.
//!
//! Layout in chunks of `C` sectors: chunk 0 is the header; metadata area
//! `i` is at chunk `1 + i * (EPA + 1)`, followed by the `EPA` data chunks
//! it describes, where `EPA = C * 512 / 16` exceptions fit in one area.

use super::chunk::Chunk;

/// `SNAP_MAGIC`: "SnAp" in little-endian.
pub const SNAP_MAGIC: u32 = 0x7041_6E53;
/// `SNAPSHOT_DISK_VERSION`.
pub const DISK_VERSION: u32 = 1;
/// Bytes of one on-disk exception: `{le64 old_chunk, le64 new_chunk}`.
pub const EXCEPTION_BYTES: usize = 16;
/// Chunk size a new COW gets when the table says 0 (16 KiB).
pub const DEFAULT_CHUNK_SECTORS: u32 = 32;

/// The 16-byte header at the start of chunk 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// [`SNAP_MAGIC`], or 0 on a new COW.
    pub magic: u32,
    /// 1 while valid; 0 once invalidated (for good).
    pub valid: u32,
    /// [`DISK_VERSION`].
    pub version: u32,
    /// Chunk size in sectors.
    pub chunk_size: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Header {
    /// A valid header for a new COW with chunks of `chunk_size` sectors.
    pub fn new(chunk_size: u32) -> Self {
        Self {
            magic: SNAP_MAGIC,
            valid: 1,
            version: DISK_VERSION,
            chunk_size,
        }
    }

    /// Decodes the first 16 bytes of `b` (`None` if shorter).
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 16 {
            return None;
        }
        Some(Self {
            magic: le32(b, 0),
            valid: le32(b, 4),
            version: le32(b, 8),
            chunk_size: le32(b, 12),
        })
    }

    /// Encodes into `b`, zeroing the rest of it as the kernel does.
    pub fn encode(&self, b: &mut [u8]) {
        b.fill(0);
        for (i, v) in [self.magic, self.valid, self.version, self.chunk_size]
            .iter()
            .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Exceptions per metadata area for a chunk size in sectors.
pub fn exceptions_per_area(chunk_sectors: u32) -> u64 {
    u64::from(chunk_sectors) * 512 / EXCEPTION_BYTES as u64
}

/// Chunk holding metadata area `area` (`area_location`).
pub fn area_location(area: u64, chunk_sectors: u32) -> Chunk {
    1 + area * (exceptions_per_area(chunk_sectors) + 1)
}

/// Steps `next_free` over a metadata area (`skip_metadata`).
pub fn skip_metadata(next_free: Chunk, chunk_sectors: u32) -> Chunk {
    if next_free % (exceptions_per_area(chunk_sectors) + 1) == 1 {
        next_free.saturating_add(1)
    } else {
        next_free
    }
}

/// Entry `k` of an area buffer: `(old_chunk, new_chunk)`.
pub fn read_exception(area: &[u8], k: usize) -> (Chunk, Chunk) {
    (
        le64(area, k * EXCEPTION_BYTES),
        le64(area, k * EXCEPTION_BYTES + 8),
    )
}

/// Writes entry `k` of an area buffer.
pub fn write_exception(area: &mut [u8], k: usize, old: Chunk, new: Chunk) {
    area[k * EXCEPTION_BYTES..k * EXCEPTION_BYTES + 8].copy_from_slice(&old.to_le_bytes());
    area[k * EXCEPTION_BYTES + 8..k * EXCEPTION_BYTES + 16].copy_from_slice(&new.to_le_bytes());
}

/// What one area holds: its valid entries up to the first terminator
/// (`new_chunk == 0`), and whether it is full (no terminator).
pub fn area_entries(area: &[u8]) -> (usize, bool) {
    let epa = area.len() / EXCEPTION_BYTES;
    for k in 0..epa {
        if read_exception(area, k).1 == 0 {
            return (k, false);
        }
    }
    (epa, true)
}

/// A header that describes an existing COW, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The chunk size to use: the on-disk one.
    pub chunk: u32,
    /// The header's valid flag.
    pub valid: bool,
    /// `(on-disk, table)` chunk sizes when a table named another one
    /// (upstream warns that the on-disk one wins).
    pub overridden: Option<(u32, u32)>,
}

/// Why a header cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Neither zeroed nor "SnAp" ("Invalid or corrupt snapshot").
    Corrupt(u32),
    /// The on-disk chunk size is unusable.
    ChunkSize(u32),
    /// Not [`DISK_VERSION`] ("unable to handle snapshot disk version").
    Version(u32),
}

/// Checks a header as upstream's `read_header` and `read_metadata` do, in
/// their order: zeroed is a new COW (`Ok(None)`); a foreign magic is
/// corrupt; an on-disk chunk size other than the table's wins if
/// `chunk_ok` accepts it; then the version. `table` is the chunk size in
/// use and whether the table line named it (upstream warns only then), or
/// `None` without a table (`dm-snap-cow`): the on-disk chunk size is always
/// checked then. The module and `dm-snap-cow` both use it, so they judge a
/// COW the same way.
pub fn check_header(
    h: &Header,
    table: Option<(u32, bool)>,
    chunk_ok: impl Fn(u32) -> bool,
) -> Result<Option<Checked>, HeaderError> {
    if h.magic == 0 {
        return Ok(None);
    }
    if h.magic != SNAP_MAGIC {
        return Err(HeaderError::Corrupt(h.magic));
    }
    let mut overridden = None;
    if table.map(|(c, _)| c) != Some(h.chunk_size) {
        if let Some((c, true)) = table {
            overridden = Some((h.chunk_size, c));
        }
        if !chunk_ok(h.chunk_size) {
            return Err(HeaderError::ChunkSize(h.chunk_size));
        }
    }
    if h.version != DISK_VERSION {
        return Err(HeaderError::Version(h.version));
    }
    Ok(Some(Checked {
        chunk: h.chunk_size,
        valid: h.valid != 0,
        overridden,
    }))
}

/// True if the on-disk exception `_ -> new` points inside a COW of
/// `dev_chunks` chunks. Upstream loads any entry (and a crafted one then
/// maps reads past the device, or overflows chunk arithmetic); the module
/// refuses a COW holding one. A COW chunk must also fit the hash table's
/// chunk-number bits (a COW of over 2^56 chunks exists only as a crafted
/// device). The origin chunk is not bounded here: when lvm2 activates a
/// snapshot, the origin's `-real` device may not be resumed yet, so its
/// size says nothing at construction; every computation on it is checked
/// instead.
pub fn entry_in_range(new: Chunk, dev_chunks: u64) -> bool {
    new < dev_chunks && new >> super::exception_table::CHUNK_NUMBER_BITS == 0
}

/// True if COW chunk `new` of a persistent COW of `chunk_sectors` chunks
/// is a data chunk: not the header (chunk 0) nor a metadata area (chunk 1,
/// then one after every `exceptions_per_area` data chunks). Upstream loads
/// an entry pointing at metadata, and a snapshot write of its chunk then
/// overwrites the COW's own exception records; the module refuses the COW.
pub fn cow_chunk_is_data(new: Chunk, chunk_sectors: u32) -> bool {
    let per_area = exceptions_per_area(chunk_sectors);
    new.checked_sub(1)
        .is_some_and(|x| per_area == 0 || x % (per_area + 1) != 0)
}

/// True if origin chunk `old` of `chunk_sectors` sectors has sectors that
/// fit 64 bits (its last one included). The origin's size is not known at
/// construction (see [`entry_in_range`]), but no origin has a chunk past
/// this; upstream loads such an entry, and a merge of it shifts the chunk
/// number out of range and copies to a wrapped-around origin sector.
pub fn origin_chunk_addressable(old: Chunk, chunk_sectors: u32) -> bool {
    old.checked_add(1)
        .and_then(|end| end.checked_mul(u64::from(chunk_sectors)))
        .is_some()
}

/// Reads metadata areas for [`walk_metadata`]: the module through dm-io,
/// `dm-snap-cow` from a file.
pub trait AreaReader {
    /// What a failed read returns.
    type Error;
    /// The chunk at COW chunk `chunk` (one area).
    fn read_area(&mut self, chunk: Chunk) -> Result<&[u8], Self::Error>;
}

/// Where a metadata walk stopped early.
#[derive(Debug, PartialEq, Eq)]
pub enum WalkError<E> {
    /// Area `area` would be at chunk `chunk`, beyond the device: the area
    /// before it was full and the COW was cut short.
    Beyond {
        /// The area.
        area: u64,
        /// Its chunk.
        chunk: Chunk,
    },
    /// A read, or the visitor, failed.
    Io(E),
}

/// Where the walk ended: the last area (not full) and its entries, where
/// commits go on filling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkEnd {
    /// The area.
    pub area: u64,
    /// Its entries.
    pub entries: usize,
}

/// Walks the metadata areas of a COW of `dev_chunks` chunks of
/// `chunk_sectors` (upstream's `read_exceptions`): area after area, each
/// entry up to the first terminator passed to `visit(area, k, old, new)`,
/// until an area that is not full.
pub fn walk_metadata<R: AreaReader>(
    r: &mut R,
    chunk_sectors: u32,
    dev_chunks: u64,
    mut visit: impl FnMut(u64, usize, Chunk, Chunk) -> Result<(), R::Error>,
) -> Result<WalkEnd, WalkError<R::Error>> {
    let mut area = 0u64;
    loop {
        let chunk = area_location(area, chunk_sectors);
        if chunk >= dev_chunks {
            return Err(WalkError::Beyond { area, chunk });
        }
        let buf = r.read_area(chunk).map_err(WalkError::Io)?;
        let (n, full) = area_entries(buf);
        for k in 0..n {
            let (old, new) = read_exception(buf, k);
            visit(area, k, old, new).map_err(WalkError::Io)?;
        }
        if !full {
            return Ok(WalkEnd { area, entries: n });
        }
        area += 1;
    }
}
