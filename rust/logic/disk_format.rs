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
        next_free + 1
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
