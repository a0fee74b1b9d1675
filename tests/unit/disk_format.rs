//! Userspace tests of the persistent on-disk format and of `dm-snap-cow`.

use dm_snap_logic::disk_format::*;
use std::process::Command;

const C: u32 = 8; // 4 KiB chunks: 256 exceptions per area

/// A COW image of `chunks` chunks with the given exceptions written the
/// way the kernel lays them out (area after area).
fn image(chunks: u64, exceptions: &[(u64, u64)]) -> Vec<u8> {
    let cb = C as usize * 512;
    let mut img = vec![0u8; chunks as usize * cb];
    Header::new(C).encode(&mut img[..cb]);
    let epa = exceptions_per_area(C) as usize;
    for (i, &(o, n)) in exceptions.iter().enumerate() {
        let loc = area_location((i / epa) as u64, C) as usize * cb;
        write_exception(&mut img[loc..loc + cb], i % epa, o, n);
    }
    img
}

fn run(cmd: &str, img: &[u8]) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "dm-snap-cow-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::write(&dir, img).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dm-snap-cow"))
        .arg(cmd)
        .arg(&dir)
        .output()
        .unwrap();
    std::fs::remove_file(&dir).ok();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn header_round_trip_and_layout() {
    let mut b = [0xffu8; 512];
    Header::new(16).encode(&mut b);
    assert_eq!(&b[..4], b"SnAp");
    assert_eq!(Header::decode(&b), Some(Header::new(16)));
    assert!(b[16..].iter().all(|&x| x == 0));
    assert_eq!(exceptions_per_area(8), 256);
    assert_eq!(area_location(1, 8), 258);
    assert_eq!(area_location(1, 16), 514);
    assert_eq!(skip_metadata(258, 8), 259);
    assert_eq!(skip_metadata(257, 8), 257);
}

#[test]
fn areas_end_at_the_first_zero_new_chunk() {
    let mut a = vec![0u8; 4096];
    write_exception(&mut a, 0, 0, 2);
    write_exception(&mut a, 1, 7, 3);
    assert_eq!(area_entries(&a), (2, false));
    assert_eq!(read_exception(&a, 1), (7, 3));
}

#[test]
fn check_accepts_a_consistent_cow_across_two_areas() {
    // 300 exceptions: area 0 full (data chunks 2..257), area 1 holds 44.
    let ex: Vec<_> = (0..300u64)
        .map(|i| (i * 3, if i < 256 { 2 + i } else { 259 + i - 256 }))
        .collect();
    let (code, out, err) = run("check", &image(1024, &ex));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok, 300 exceptions"), "{out}");
    let (code, out, _) = run("dump", &image(1024, &ex));
    assert_eq!(code, 0);
    assert!(out.contains("area 1 old 897 new 302"), "{out}");
}

#[test]
fn check_reports_damage_precisely() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut i = image(64, &[(1, 2)]);
                i[0] = b'X';
                i
            },
            "bad magic",
        ),
        (
            {
                let mut i = image(64, &[(1, 2)]);
                i[8] = 2;
                i
            },
            "disk version 2",
        ),
        (
            image(64, &[(1, 2), (5, 2)]),
            "COW chunk 2 already holds origin chunk 1",
        ),
        (image(64, &[(1, 2), (1, 3)]), "origin chunk 1 mapped twice"),
        (image(64, &[(1, 99)]), "COW chunk 99 is outside the device"),
        (image(300, &[(1, 258)]), "COW chunk 258 is a metadata area"),
        (
            {
                let ex: Vec<_> = (0..256u64).map(|i| (i, 2 + i)).collect();
                image(258, &ex)
            },
            "truncated: metadata area 1",
        ),
    ];
    for (img, want) in cases {
        let (code, _, err) = run("check", &img);
        assert_eq!(code, 1, "want failure for {want}: {err}");
        assert!(err.contains(want), "want '{want}' in: {err}");
    }
}

#[test]
fn new_and_invalid_cows_are_not_damage() {
    let (code, out, _) = run("check", &vec![0u8; 65536]);
    assert_eq!(code, 0);
    assert!(out.contains("new COW"));
    // An invalidated COW is not damage (not 1) but is reported as such:
    // status 3, its exceptions still walked and counted (issue 27).
    let mut i = image(64, &[(1, 2)]);
    i[4] = 0;
    let (code, out, _) = run("check", &i);
    assert_eq!(code, 3);
    assert!(out.contains("marked invalid"));
    assert!(out.contains("invalid snapshot (marked invalid on disk), 1 exceptions on disk"));
}

#[test]
fn check_header_follows_upstreams_order() {
    let ok = |c: u32| c.is_power_of_two() && c <= 1 << 20;
    assert_eq!(
        check_header(
            &Header {
                magic: 0,
                valid: 0,
                version: 0,
                chunk_size: 0
            },
            Some((8, true)),
            ok
        ),
        Ok(None)
    );
    let mut h = Header::new(16);
    h.magic = 0x1234;
    assert_eq!(
        check_header(&h, Some((8, true)), ok),
        Err(HeaderError::Corrupt(0x1234))
    );
    // A bad on-disk chunk size is reported before a bad version, as
    // upstream's read_header runs before read_metadata's version check.
    let mut h = Header::new(12);
    h.version = 2;
    assert_eq!(
        check_header(&h, Some((8, true)), ok),
        Err(HeaderError::ChunkSize(12))
    );
    let mut h = Header::new(8);
    h.version = 2;
    assert_eq!(
        check_header(&h, Some((8, true)), ok),
        Err(HeaderError::Version(2))
    );
    let c = check_header(&Header::new(16), Some((8, true)), ok)
        .unwrap()
        .unwrap();
    assert_eq!((c.chunk, c.valid, c.overridden), (16, true, Some((16, 8))));
    // No table chunk (0): the on-disk one is checked, nothing overridden.
    let c = check_header(&Header::new(16), None, ok).unwrap().unwrap();
    assert_eq!(c.overridden, None);
    assert_eq!(
        check_header(&Header::new(0), None, ok),
        Err(HeaderError::ChunkSize(0))
    );
}

struct MemAreas<'a>(&'a [u8], Vec<u8>);

impl AreaReader for MemAreas<'_> {
    type Error = ();
    fn read_area(&mut self, chunk: u64) -> Result<&[u8], ()> {
        let cb = self.1.len();
        let at = chunk as usize * cb;
        self.1.copy_from_slice(self.0.get(at..at + cb).ok_or(())?);
        Ok(&self.1)
    }
}

#[test]
fn walk_metadata_visits_every_entry_and_ends_in_the_open_area() {
    let epa = exceptions_per_area(C) as u64;
    let n = epa + 44;
    let ex: Vec<(u64, u64)> = (0..n).map(|i| (1000 + i, 2 + i + i / epa)).collect();
    let img = image(2 * (epa + 1) + 1, &ex);
    let cb = C as usize * 512;
    let mut seen = Vec::new();
    let end = walk_metadata(
        &mut MemAreas(&img, vec![0; cb]),
        C,
        2 * (epa + 1) + 1,
        |a, k, o, nw| {
            seen.push((a, k, o, nw));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(
        end,
        WalkEnd {
            area: 1,
            entries: 44
        }
    );
    assert_eq!(seen.len() as u64, n);
    assert_eq!(seen[epa as usize], (1, 0, 1000 + epa, 2 + epa + 1));
    // A full first area and no room for the second: cut short.
    let full: Vec<(u64, u64)> = (0..epa).map(|i| (i, 2 + i)).collect();
    let img = image(epa + 2, &full);
    let r = walk_metadata(
        &mut MemAreas(&img, vec![0; cb]),
        C,
        epa + 2,
        |_, _, _, _| Ok(()),
    );
    assert_eq!(
        r,
        Err(WalkError::Beyond {
            area: 1,
            chunk: epa + 2
        })
    );
}

/// Issue 27: a crafted entry `{old = 1, new = u64::MAX}` overflowed the
/// allocator (`new_chunk + 1`); it is now refused by `entry_in_range`, and
/// the allocator saturates instead of overflowing.
#[test]
fn crafted_entries_are_out_of_range_and_do_not_overflow() {
    use dm_snap_logic::disk_format::entry_in_range;
    use dm_snap_logic::persistent::Allocator;
    assert!(!entry_in_range(u64::MAX, 1024));
    assert!(!entry_in_range(1024, 1024));
    assert!(!entry_in_range(1 << 56, u64::MAX));
    assert!(entry_in_range(1023, 1024));
    // Chunk 8: 256 exceptions per area; metadata at 1, 258, 515...
    use dm_snap_logic::disk_format::cow_chunk_is_data;
    for (c, data) in [
        (0, false),
        (1, false),
        (2, true),
        (257, true),
        (258, false),
        (259, true),
    ] {
        assert_eq!(cow_chunk_is_data(c, 8), data, "chunk {c}");
    }
    assert!(!cow_chunk_is_data(1 + 257 * 1000, 8));
    assert!(cow_chunk_is_data(u64::MAX, 8) == ((u64::MAX - 1) % 257 != 0));
    use dm_snap_logic::disk_format::origin_chunk_addressable;
    assert!(!origin_chunk_addressable(u64::MAX, 1));
    assert!(origin_chunk_addressable(u64::MAX - 1, 1));
    assert!(!origin_chunk_addressable(1 << 61, 8));
    assert!(origin_chunk_addressable((1 << 61) - 2, 8));
    assert!(!origin_chunk_addressable((1 << 61) - 1, 8));
    let mut a = Allocator::new();
    a.saw(u64::MAX);
    assert_eq!(a.next_free, u64::MAX);
    assert_eq!(a.allocated_sectors(8), u64::MAX);
    assert_eq!(a.prepare(8, u64::MAX), None);
    a.finish_read(8);
}

/// `dm-snap-cow dump | head`: the reader goes away after a few lines. The
/// tool used to buffer the whole dump and panic on the broken pipe; it
/// streams now and ends quietly.
#[test]
fn dump_streams_into_a_closed_pipe() {
    use std::io::Read;
    use std::process::Stdio;
    let ex: Vec<_> = (0..20000u64).map(|i| (i * 3, 0)).collect();
    let epa = exceptions_per_area(C);
    // COW chunks in allocation order: data chunks only, metadata skipped.
    let ex: Vec<_> = ex
        .iter()
        .enumerate()
        .map(|(i, &(o, _))| {
            let i = i as u64;
            (o, 2 + i / epa * (epa + 1) + i % epa)
        })
        .collect();
    let img = image(ex.last().map_or(16, |e| e.1 + 2), &ex);
    let path = std::env::temp_dir().join(format!("dm-snap-cow-pipe-{}", std::process::id()));
    std::fs::write(&path, &img).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dm-snap-cow"))
        .arg("dump")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 256];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    std::fs::remove_file(&path).ok();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(String::from_utf8_lossy(&first).starts_with("magic 0x70416e53"));
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}
