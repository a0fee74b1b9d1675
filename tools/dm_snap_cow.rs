//! `dm-snap-cow`: inspect and check a persistent snapshot COW device or
//! image, in the spirit of thin-provisioning-tools' `thin_dump` and
//! `thin_check` (neither upstream nor lvm2 has one for dm-snapshot).
//!
//! ```text
//! dm-snap-cow dump  <cow>   header and every exception, one per line
//! dm-snap-cow [-q] check <cow>
//!                           exit 0 if consistent, 1 if damaged, 2 on usage/I/O
//!                           errors, 3 if consistent but marked invalid (an
//!                           invalidated snapshot: its exceptions are still
//!                           walked and checked, but the kernel ignores them)
//! dm-snap-cow gen <cow> <exceptions> <origin-chunks> <seed> [rand|seq|perm] [origin]
//!                           write a COW of many exceptions (see gen.rs)
//! dm-snap-cow sample <snapshot> <samples>
//!                           check a snapshot of it serves the stamps
//! dm-snap-cow random <seed> <MiB>
//!                           reproducible pseudo-random data on stdout (tests)
//! dm-snap-cow md5 <device> <block-bytes> [<block>...]
//!                           md5 of blocks, O_DIRECT, one process (tests)
//! ```
//!
//! The format code is the module's own (`rust/logic/disk_format.rs`).

mod gen;
mod sums;

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

/// Metadata areas read from the file, for [`walk_metadata`].
struct FileAreas<'a> {
    cow: &'a mut Cow,
    buf: Vec<u8>,
}

impl AreaReader for FileAreas<'_> {
    type Error = std::io::Error;
    fn read_area(&mut self, chunk: u64) -> std::io::Result<&[u8]> {
        let off = chunk * self.buf.len() as u64;
        self.cow.read_at(off, &mut self.buf)?;
        Ok(&self.buf)
    }
}

/// Everything `check` finds; `dump` prints the same walk.
#[derive(Default)]
struct Report {
    header: Option<Header>,
    exceptions: Vec<(u64, u64, u64)>, // (area, old, new)
    errors: Vec<String>,
    notes: Vec<String>,
    /// The header says the snapshot was invalidated.
    invalid: bool,
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
    let table_limit = dm_snap_logic::table::MAX_CHUNK_SECTORS;
    let checked = match check_header(&h, None, |c| c.is_power_of_two() && c <= table_limit) {
        Ok(None) => {
            r.notes
                .push("header is zeroed: a new COW, no exceptions yet".into());
            return Ok(r);
        }
        Ok(Some(c)) => c,
        Err(HeaderError::Corrupt(m)) => {
            r.errors.push(format!(
                "bad magic {:#010x} (want {:#010x} \"SnAp\"): Invalid or corrupt snapshot",
                m, SNAP_MAGIC
            ));
            return Ok(r);
        }
        Err(HeaderError::ChunkSize(c)) => {
            r.errors.push(format!("invalid chunk size {} sectors", c));
            return Ok(r);
        }
        Err(HeaderError::Version(v)) => {
            r.errors
                .push(format!("unable to handle snapshot disk version {}", v));
            return Ok(r);
        }
    };
    if !checked.valid {
        // Still walked: what is on disk is worth seeing, and checking.
        r.notes
            .push("snapshot is marked invalid: the kernel does not use its exceptions".into());
        r.invalid = true;
    }
    let c = checked.chunk;
    let chunk_bytes = u64::from(c) * 512;
    let dev_chunks = cow.bytes / chunk_bytes;
    let epa = exceptions_per_area(c);
    let mut reader = FileAreas {
        cow,
        buf: vec![0u8; chunk_bytes as usize],
    };
    let mut seen_new: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut seen_old: HashMap<u64, u64> = HashMap::new();
    let mut errors = Vec::new();
    let mut exceptions = Vec::new();
    let walked = walk_metadata(&mut reader, c, dev_chunks, |area, k, old, new| {
        exceptions.push((area, old, new));
        let where_ = format!("area {} entry {}", area, k);
        if !entry_in_range(new, dev_chunks) {
            errors.push(format!(
                "{}: COW chunk {} is outside the device ({} chunks)",
                where_, new, dev_chunks
            ));
        } else if !origin_chunk_addressable(old, c) {
            errors.push(format!(
                "{}: origin chunk {} is past any origin (its sectors do not fit 64 bits)",
                where_, old
            ));
        }
        if entry_in_range(new, dev_chunks) && (new - 1) % (epa + 1) == 0 {
            errors.push(format!("{}: COW chunk {} is a metadata area", where_, new));
        }
        if let Some((a, o)) = seen_new.insert(new, (area, old)) {
            errors.push(format!(
                "{}: COW chunk {} already holds origin chunk {} (area {})",
                where_, new, o, a
            ));
        }
        if let Some(a) = seen_old.insert(old, area) {
            errors.push(format!(
                "{}: origin chunk {} mapped twice (also in area {})",
                where_, old, a
            ));
        }
        Ok(())
    });
    r.exceptions = exceptions;
    r.errors.extend(errors);
    match walked {
        Ok(_) => {}
        Err(WalkError::Beyond { area, chunk }) => r.errors.push(format!(
            "truncated: metadata area {} at chunk {} is beyond the device end ({} chunks); area {} was full",
            area, chunk, dev_chunks, area.saturating_sub(1)
        )),
        Err(WalkError::Io(e)) => return Err(e),
    }
    Ok(r)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    const USAGE: &str = "usage: dm-snap-cow [-q] dump|check <cow device or image>\n\
         \x20      dm-snap-cow gen|sample|random|md5 ... (test helpers, see the source)\n\
         check exits 0 if consistent, 1 if damaged, 2 on usage or I/O errors,\n\
         3 if consistent but the snapshot is marked invalid";
    let mut args = args;
    let quiet = args.get(1).is_some_and(|a| a == "-q");
    if quiet {
        args.remove(1);
    }
    match args.get(1).map(String::as_str) {
        Some("--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("--version" | "-V") => {
            println!("dm-snap-cow {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let sub = match args.get(1).map(String::as_str) {
        Some("gen") => Some(gen::run as fn(&[String]) -> Result<(), String>),
        Some("sample") => Some(gen::sample as fn(&[String]) -> Result<(), String>),
        Some("random") => Some(gen::random as fn(&[String]) -> Result<(), String>),
        Some("md5") => Some(sums::run as fn(&[String]) -> Result<(), String>),
        _ => None,
    };
    if let Some(sub) = sub {
        return match sub(&args[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dm-snap-cow: {e}");
                ExitCode::from(2)
            }
        };
    }
    let (cmd, path) = match args.as_slice() {
        [_, c, p] if c == "dump" || c == "check" => (c.as_str(), p.as_str()),
        _ => {
            eprintln!("{USAGE}");
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
    for n in report.notes.iter().filter(|_| !quiet) {
        println!("note: {}", n);
    }
    for e in report.errors.iter().filter(|_| !quiet) {
        eprintln!("error: {}", e);
    }
    if !report.errors.is_empty() {
        return ExitCode::from(1);
    }
    if cmd == "check" && !quiet {
        if report.invalid {
            println!(
                "{}: invalid snapshot (marked invalid on disk), {} exceptions on disk, not used",
                path,
                report.exceptions.len()
            );
        } else {
            println!("{}: ok, {} exceptions", path, report.exceptions.len());
        }
    }
    if report.invalid && cmd == "check" {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}
