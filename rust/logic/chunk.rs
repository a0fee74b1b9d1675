//! Chunk arithmetic: sectors to chunks and back, the exception-table
//! sizes upstream derives from the COW size (`init_hash_tables`), and the
//! complete table's hash shift.
//!
//! As upstream, chunk maths uses absolute sectors of the dm device (the
//! targets assume `ti->begin == 0`, as LVM builds them).

use super::exception_table::CHUNK_NUMBER_BITS;

/// Chunk number (`chunk_t`): a chunk-sized unit of the origin or the COW.
pub type Chunk = u64;

/// Chunk size of one snapshot, a power of two in sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkGeometry {
    shift: u32,
}

impl ChunkGeometry {
    /// Geometry for `chunk_sectors`, which must be a power of two (the
    /// table parser guarantees it); `None` otherwise.
    pub fn new(chunk_sectors: u32) -> Option<Self> {
        chunk_sectors.is_power_of_two().then(|| Self {
            shift: chunk_sectors.trailing_zeros(),
        })
    }

    /// Chunk size in sectors.
    pub fn sectors(self) -> u32 {
        1 << self.shift
    }

    /// Chunk size in bytes.
    pub fn bytes(self) -> u64 {
        1u64 << (self.shift + 9)
    }

    /// log2 of the chunk size in sectors.
    pub fn shift(self) -> u32 {
        self.shift
    }

    /// The chunk holding `sector`.
    pub fn chunk_of(self, sector: u64) -> Chunk {
        sector >> self.shift
    }

    /// First sector of `chunk`.
    pub fn sector_of(self, chunk: Chunk) -> u64 {
        chunk << self.shift
    }

    /// Offset of `sector` inside its chunk.
    pub fn offset_in_chunk(self, sector: u64) -> u64 {
        sector & (u64::from(self.sectors()) - 1)
    }

    /// Where `sector` of the origin lives in the COW when its chunk is
    /// mapped to COW chunk `new_chunk` (`remap_exception`).
    pub fn remap(self, sector: u64, new_chunk: Chunk) -> u64 {
        self.sector_of(new_chunk) + self.offset_in_chunk(sector)
    }

    /// Sectors of a copy of `chunk` on an origin of `origin_sectors`: the
    /// last chunk may be partial (`start_copy` clamps to the device end).
    pub fn copy_len(self, chunk: Chunk, origin_sectors: u64) -> u64 {
        u64::from(self.sectors()).min(origin_sectors.saturating_sub(self.sector_of(chunk)))
    }
}

/// Bucket counts of the two exception tables, as `init_hash_tables`:
/// complete = rounddown_pow2(max(64, min(cow_chunks, max_buckets))),
/// pending = max(64, complete / 8).
pub fn table_sizes(cow_sectors: u64, chunk_shift: u32, max_buckets: u64) -> (usize, usize) {
    let chunks = cow_sectors >> chunk_shift;
    let want = chunks.min(max_buckets).max(64);
    let complete = 1u64 << (63 - want.leading_zeros());
    let pending = (complete >> 3).max(64);
    (complete as usize, pending as usize)
}

/// Hash shift of the complete table for an origin of `origin_chunks` over
/// `buckets` buckets: the smallest that spreads the origin's chunks over
/// all buckets (`origin_chunks >> shift <= buckets`), at most 8.
///
/// Upstream always hashes `chunk >> 8` (`DM_CHUNK_CONSECUTIVE_BITS`), so
/// that up to 256 consecutive chunks can merge into one entry: a run never
/// leaves its group of `1 << shift` chunks, since all of a run must live in
/// one bucket. But then only `origin_chunks / 256` buckets are ever used,
/// however many were allocated: a 2 GiB origin of 4 KiB chunks uses 2,048
/// of its 131,072, and randomly written chunks pile up to 256 entries per
/// bucket, all walked by every lookup that misses (every first write of a
/// chunk). With the smallest sufficient shift every bucket serves at most
/// `1 << shift` chunks, and below 8 a sequentially filled snapshot needs at
/// most one entry per bucket (large origins keep upstream's 8).
pub fn complete_hash_shift(origin_chunks: u64, buckets: u64) -> u32 {
    let mut shift = 0;
    while shift < 64 - CHUNK_NUMBER_BITS && origin_chunks >> shift > buckets {
        shift += 1;
    }
    shift
}

/// Upstream caps the complete table at 2 MiB of bucket heads.
pub const MAX_TABLE_BYTES: u64 = 2 << 20;
