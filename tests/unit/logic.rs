//! Userspace tests of the pure logic shared with the kernel module.

use dm_snap_logic::args::{kstrtouint, scan_uint};
use dm_snap_logic::table::*;

fn argv(line: &str) -> Vec<&[u8]> {
    line.split_whitespace().map(str::as_bytes).collect()
}

#[test]
fn origin_takes_exactly_one_device() {
    assert_eq!(parse_origin(&argv("/dev/x")), Ok(&b"/dev/x"[..]));
    for bad in ["", "/dev/x /dev/y"] {
        assert_eq!(
            parse_origin(&argv(bad)).unwrap_err().msg(),
            "origin: incorrect number of arguments"
        );
    }
}

#[test]
fn snapshot_needs_four_arguments() {
    for bad in ["", "a", "a b", "a b P"] {
        assert_eq!(
            parse_snapshot(&argv(bad)).unwrap_err().msg(),
            "requires 4 or more arguments"
        );
    }
    let a = parse_snapshot(&argv("o c PO 16")).unwrap();
    assert_eq!(
        (a.origin, a.cow, a.store, a.chunk_size),
        (&b"o"[..], &b"c"[..], &b"PO"[..], &b"16"[..])
    );
    assert!(!a.discard_zeroes_cow && !a.discard_passdown_origin);
}

#[test]
fn snapshot_features_as_upstream() {
    let ok = |l| parse_snapshot(&argv(l)).unwrap();
    let err = |l| parse_snapshot(&argv(l)).unwrap_err().msg();
    assert!(ok("o c P 8 1 discard_zeroes_cow").discard_zeroes_cow);
    let both = ok("o c P 8 2 DISCARD_ZEROES_COW discard_passdown_origin");
    assert!(both.discard_zeroes_cow && both.discard_passdown_origin);
    // Duplicates are accepted, arguments after the counted ones ignored.
    assert!(ok("o c P 8 2 discard_zeroes_cow discard_zeroes_cow").discard_zeroes_cow);
    assert!(!ok("o c P 8 0 whatever").discard_zeroes_cow);
    assert_eq!(
        err("o c P 8 3 a b c"),
        "Invalid number of feature arguments"
    );
    assert_eq!(
        err("o c P 8 2 discard_zeroes_cow"),
        "Invalid number of feature arguments"
    );
    assert_eq!(err("o c P 8 x"), "Invalid number of feature arguments");
    assert_eq!(
        err("o c P 8 1x discard_zeroes_cow"),
        "Invalid number of feature arguments"
    );
    assert_eq!(err("o c P 8 1 bogus"), "Unrecognised feature requested");
    assert_eq!(
        err("o c P 8 1 discard_passdown_origin"),
        "discard_passdown_origin feature depends on discard_zeroes_cow"
    );
    // The dependency message wins over an earlier unknown feature.
    assert_eq!(
        err("o c P 8 2 discard_passdown_origin bogus"),
        "discard_passdown_origin feature depends on discard_zeroes_cow"
    );
}

#[test]
fn store_kinds() {
    assert_eq!(
        parse_store_kind(b"P"),
        Ok(StoreKind::Persistent { overflow: false })
    );
    assert_eq!(
        parse_store_kind(b"po"),
        Ok(StoreKind::Persistent { overflow: true })
    );
    assert_eq!(
        parse_store_kind(b"POxyz"),
        Ok(StoreKind::Persistent { overflow: true })
    );
    assert_eq!(parse_store_kind(b"n"), Ok(StoreKind::Transient));
    assert_eq!(parse_store_kind(b"nonpersistent"), Ok(StoreKind::Transient));
    assert!(parse_store_kind(b"PX").is_err());
    assert!(parse_store_kind(b"X").is_err());
}

#[test]
fn chunk_sizes() {
    assert_eq!(parse_chunk_size(b"16", 1, 1), Ok(16));
    assert_eq!(parse_chunk_size(b"+16\n", 1, 1), Ok(16));
    assert_eq!(parse_chunk_size(b"0", 8, 8), Ok(0));
    assert_eq!(parse_chunk_size(b"2097152", 1, 1), Ok(2097152));
    let err = |a: &[u8], c, o| parse_chunk_size(a, c, o).unwrap_err().msg();
    assert_eq!(err(b"16k", 1, 1), "Invalid chunk size");
    assert_eq!(err(b"0x10", 1, 1), "Invalid chunk size");
    assert_eq!(err(b"99999999999", 1, 1), "Invalid chunk size");
    assert_eq!(err(b"12", 1, 1), "Chunk size is not a power of 2");
    assert_eq!(
        err(b"4", 8, 1),
        "Chunk size is not a multiple of device blocksize"
    );
    assert_eq!(
        err(b"4", 1, 8),
        "Chunk size is not a multiple of device blocksize"
    );
    assert_eq!(err(b"4194304", 1, 1), "Chunk size is too high");
}

#[test]
fn kernel_number_parsers() {
    assert_eq!(kstrtouint(b"42"), Some(42));
    assert_eq!(kstrtouint(b"-1"), None);
    assert_eq!(kstrtouint(b""), None);
    assert_eq!(kstrtouint(b"4294967296"), None);
    assert_eq!(scan_uint(b" 2"), Some(2));
    assert_eq!(scan_uint(b"2 "), None);
    assert_eq!(scan_uint(b"-1"), Some(u32::MAX));
}

#[path = "../common/rng.rs"]
mod rng;

#[test]
fn radix_sort_is_a_stable_sort_by_key() {
    use dm_snap_logic::sort::radix_sort_by_key;
    let mut r = rng::Rng(9);
    for (n, span) in [
        (0usize, 1u64),
        (1, 1),
        (2, 3),
        (7, 5),
        (1000, 300),
        (16384, 1 << 22),
        (5000, 1 << 40),
        (3000, u64::MAX),
    ] {
        let mut v: Vec<(u64, usize)> = (0..n).map(|i| (r.next() % span.max(1), i)).collect();
        if span == u64::MAX {
            v.iter_mut().for_each(|e| e.0 = r.next());
        }
        let mut want = v.clone();
        want.sort_by_key(|&(o, _)| o); // std's sort_by_key is stable
        let mut scratch = vec![(0, 0); n + 3];
        radix_sort_by_key(&mut v, &mut scratch, |&(o, _)| o);
        assert_eq!(v, want, "n = {n}, span = {span}");
    }
    // Too short a scratch buffer: nothing moves.
    let mut v = vec![(3u64, 0usize), (1, 1)];
    radix_sort_by_key(&mut v, &mut [(0, 0)], |&(o, _)| o);
    assert_eq!(v, [(3, 0), (1, 1)]);
}
