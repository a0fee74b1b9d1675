//! Table-line parsing and validation for the three targets.
//!
//! The checks, their order and their messages are upstream's
//! (`drivers/md/dm-snap.c`: `origin_ctr`, `snapshot_ctr`,
//! `parse_snapshot_features`; `dm-exception-store.c`: `set_chunk_size`,
//! `dm_exception_store_create`), because the first failing check decides
//! the `ti->error` that lvm2 and users see. Steps that need the devices
//! (opening them, block sizes) are split out so the kernel side can run them
//! in the same order.

use super::args::{kstrtouint, scan_uint};
use core::ffi::CStr;

/// A table-line error: the upstream `ti->error` text. Every one maps to
/// `-EINVAL` unless the caller says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableError(pub &'static CStr);

impl TableError {
    /// The message as text, for tests and logs.
    pub fn msg(&self) -> &'static str {
        core::str::from_utf8(self.0.to_bytes()).unwrap_or("")
    }
}

/// `snapshot-origin <dev>`: the one argument is the origin device.
pub fn parse_origin<'a>(argv: &[&'a [u8]]) -> Result<&'a [u8], TableError> {
    match argv {
        [dev] => Ok(dev),
        _ => Err(TableError(c"origin: incorrect number of arguments")),
    }
}

/// Which exception store a snapshot table asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `N`: exceptions kept in memory only, lost at deactivation.
    Transient,
    /// `P`: the on-disk format; `PO` when `overflow` (userspace understands
    /// the `Overflow` state, so a full COW does not invalidate).
    Persistent {
        /// Set by the `O` option (`PO`).
        overflow: bool,
    },
}

/// The parts of a `snapshot`/`snapshot-merge` line that need no device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotArgs<'a> {
    /// Origin device path or `major:minor`.
    pub origin: &'a [u8],
    /// COW device path or `major:minor`.
    pub cow: &'a [u8],
    /// The store type argument as given (`P`, `PO`, `N`, ...), validated
    /// later, after the devices are open, as upstream does.
    pub store: &'a [u8],
    /// The chunk size argument as given, validated with the devices.
    pub chunk_size: &'a [u8],
    /// `discard_zeroes_cow` feature.
    pub discard_zeroes_cow: bool,
    /// `discard_passdown_origin` feature.
    pub discard_passdown_origin: bool,
}

/// Steps 1 and 4 of `snapshot_ctr`: argument count and feature arguments,
/// which upstream checks before opening any device.
pub fn parse_snapshot<'a>(argv: &[&'a [u8]]) -> Result<SnapshotArgs<'a>, TableError> {
    let [origin, cow, store, chunk_size, rest @ ..] = argv else {
        return Err(TableError(c"requires 4 or more arguments"));
    };
    let mut args = SnapshotArgs {
        origin,
        cow,
        store,
        chunk_size,
        discard_zeroes_cow: false,
        discard_passdown_origin: false,
    };
    let Some((count, features)) = rest.split_first() else {
        return Ok(args);
    };
    // dm_read_arg_group({0, 2}): a %u no larger than 2 nor the args left.
    let n = match scan_uint(count) {
        Some(n) if n <= 2 && n as usize <= features.len() => n as usize,
        _ => return Err(TableError(c"Invalid number of feature arguments")),
    };
    let mut err = None;
    for f in &features[..n] {
        if f.eq_ignore_ascii_case(b"discard_zeroes_cow") {
            args.discard_zeroes_cow = true;
        } else if f.eq_ignore_ascii_case(b"discard_passdown_origin") {
            args.discard_passdown_origin = true;
        } else {
            err = Some(TableError(c"Unrecognised feature requested"));
            break;
        }
    }
    // Upstream checks the dependency after the loop even when it failed, and
    // its message then replaces the earlier one.
    if args.discard_passdown_origin && !args.discard_zeroes_cow {
        return Err(TableError(
            c"discard_passdown_origin feature depends on discard_zeroes_cow",
        ));
    }
    match err {
        Some(e) => Err(e),
        None => Ok(args),
    }
}

/// The store type check of `dm_exception_store_create`: `P`/`N` by first
/// letter, case-insensitive; for `P`, options starting with `O` mean
/// overflow support and anything else is refused; `N` ignores options.
pub fn parse_store_kind(arg: &[u8]) -> Result<StoreKind, TableError> {
    let (first, opts) = arg
        .split_first()
        .ok_or(TableError(c"Exception store type is not P or N"))?;
    match first.to_ascii_uppercase() {
        b'N' => Ok(StoreKind::Transient),
        b'P' => match opts.first().map(u8::to_ascii_uppercase) {
            None => Ok(StoreKind::Persistent { overflow: false }),
            Some(b'O') => Ok(StoreKind::Persistent { overflow: true }),
            Some(_) => Err(TableError(c"Exception store type constructor failed")),
        },
        _ => Err(TableError(c"Exception store type is not P or N")),
    }
}

/// Largest chunk in sectors: upstream refuses `chunk > INT_MAX >> 9`.
pub const MAX_CHUNK_SECTORS: u32 = (i32::MAX as u32) >> 9;

/// `set_chunk_size`: decimal sectors, 0 meaning "the store decides", else a
/// power of two, a multiple of both devices' logical block size (in
/// sectors), and not above [`MAX_CHUNK_SECTORS`].
pub fn parse_chunk_size(
    arg: &[u8],
    cow_block_sectors: u32,
    origin_block_sectors: u32,
) -> Result<u32, TableError> {
    let chunk = kstrtouint(arg).ok_or(TableError(c"Invalid chunk size"))?;
    if chunk == 0 {
        return Ok(0);
    }
    if !chunk.is_power_of_two() {
        return Err(TableError(c"Chunk size is not a power of 2"));
    }
    if chunk % cow_block_sectors.max(1) != 0 || chunk % origin_block_sectors.max(1) != 0 {
        return Err(TableError(
            c"Chunk size is not a multiple of device blocksize",
        ));
    }
    if chunk > MAX_CHUNK_SECTORS {
        return Err(TableError(c"Chunk size is too high"));
    }
    Ok(chunk)
}
