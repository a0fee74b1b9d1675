//! `dm-snap-cow`: inspect and check a persistent snapshot COW device or
//! image, in the spirit of thin-provisioning-tools' `thin_dump` and
//! `thin_check` (neither upstream nor lvm2 has one for dm-snapshot).
//!
//! ```text
//! dm-snap-cow dump  <cow>   header and every exception, one per line
//! dm-snap-cow check <cow>   exit 0 if consistent, 1 if damaged, 2 on usage/I/O errors
//! ```
//!
//! The format code is the module's own (`rust/logic/disk_format.rs`).

use dm_snap_logic::disk_format::*;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::process::ExitCode;

struct Cow {
    f: File,
    bytes: u64,
}

impl Cow {
    fn open(path: &str) -> std::io::Result<Self> {
        let mut f = File::open(path)?;
        let bytes = f.seek(SeekFrom::End(0))?;
        Ok(Self { f, bytes })
    }

    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.f.seek(SeekFrom::Start(off))?;
        self.f.read_exact(buf)
    }
}

/// Everything `check` finds; `dump` prints the same walk.
#[derive(Default)]
struct Report {
    header: Option<Header>,
    exceptions: Vec<(u64, u64, u64)>, // (area, old, new)
    errors: Vec<String>,
    notes: Vec<String>,
}

fn walk(cow: &mut Cow) -> std::io::Result<Report> {
    let mut r = Report::default();
    let mut hb = [0u8; 16];
    if cow.bytes < 512 {
        r.errors.push(format!(
            "truncated: {} bytes, too small for a header",
            cow.bytes
        ));
        return Ok(r);
    }
    cow.read_at(0, &mut hb)?;
    let h = Header::decode(&hb).unwrap_or(Header::new(0));
    r.header = Some(h);
    if h.magic == 0 {
        r.notes
            .push("header is zeroed: a new COW, no exceptions yet".into());
        return Ok(r);
    }
    if h.magic != SNAP_MAGIC {
        r.errors.push(format!(
            "bad magic {:#010x} (want {:#010x} \"SnAp\"): Invalid or corrupt snapshot",
            h.magic, SNAP_MAGIC
        ));
        return Ok(r);
    }
    if h.version != DISK_VERSION {
        r.errors.push(format!(
            "unable to handle snapshot disk version {}",
            h.version
        ));
        return Ok(r);
    }
    let c = h.chunk_size;
    if c == 0 || !c.is_power_of_two() || c > (i32::MAX as u32 >> 9) {
        r.errors.push(format!("invalid chunk size {} sectors", c));
        return Ok(r);
    }
    if h.valid == 0 {
        r.notes
            .push("snapshot is marked invalid: its exceptions are not used".into());
        return Ok(r);
    }
    let chunk_bytes = u64::from(c) * 512;
    let dev_chunks = cow.bytes / chunk_bytes;
    let epa = exceptions_per_area(c);
    let mut area_buf = vec![0u8; chunk_bytes as usize];
    let mut seen_new: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut seen_old: HashMap<u64, u64> = HashMap::new();
    let mut area = 0u64;
    loop {
        let loc = area_location(area, c);
        if loc >= dev_chunks {
            r.errors.push(format!(
                "truncated: metadata area {} at chunk {} is beyond the device end ({} chunks); area {} was full",
                area, loc, dev_chunks, area.saturating_sub(1)
            ));
            break;
        }
        cow.read_at(loc * chunk_bytes, &mut area_buf)?;
        let (n, full) = area_entries(&area_buf);
        for k in 0..n {
            let (old, new) = read_exception(&area_buf, k);
            r.exceptions.push((area, old, new));
            let where_ = format!("area {} entry {}", area, k);
            if new >= dev_chunks {
                r.errors.push(format!(
                    "{}: COW chunk {} is outside the device ({} chunks)",
                    where_, new, dev_chunks
                ));
            } else if (new - 1) % (epa + 1) == 0 {
                r.errors
                    .push(format!("{}: COW chunk {} is a metadata area", where_, new));
            }
            if let Some((a, o)) = seen_new.insert(new, (area, old)) {
                r.errors.push(format!(
                    "{}: COW chunk {} already holds origin chunk {} (area {})",
                    where_, new, o, a
                ));
            }
            if let Some(a) = seen_old.insert(old, area) {
                r.errors.push(format!(
                    "{}: origin chunk {} mapped twice (also in area {})",
                    where_, old, a
                ));
            }
        }
        if !full {
            break;
        }
        area += 1;
    }
    Ok(r)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (cmd, path) = match args.as_slice() {
        [_, c, p] if c == "dump" || c == "check" => (c.as_str(), p.as_str()),
        _ => {
            eprintln!("usage: dm-snap-cow dump|check <cow device or image>");
            return ExitCode::from(2);
        }
    };
    let report = match Cow::open(path).and_then(|mut c| walk(&mut c)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dm-snap-cow: {}: {}", path, e);
            return ExitCode::from(2);
        }
    };
    if cmd == "dump" {
        if let Some(h) = report.header {
            println!(
                "magic {:#010x} valid {} version {} chunk_size {}",
                h.magic, h.valid, h.version, h.chunk_size
            );
        }
        for (a, o, n) in &report.exceptions {
            println!("area {} old {} new {}", a, o, n);
        }
    }
    for n in &report.notes {
        println!("note: {}", n);
    }
    for e in &report.errors {
        eprintln!("error: {}", e);
    }
    if cmd == "check" && report.errors.is_empty() {
        println!("{}: ok, {} exceptions", path, report.exceptions.len());
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
