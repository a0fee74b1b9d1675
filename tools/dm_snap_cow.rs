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
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::process::ExitCode;

/// `O_DIRECT` on x86-64 (see `sums.rs`).
#[cfg(target_arch = "x86_64")]
const O_DIRECT: i32 = 0o40000;
#[cfg(not(target_arch = "x86_64"))]
const O_DIRECT: i32 = 0;

/// A COW device or image. A block device is read with O_DIRECT: what is on
/// the disk, not what the page cache kept of it (the kernel writes the
/// metadata with its own bios, around the page cache); an image file
/// through the page cache, which is the file.
struct Cow {
    f: File,
    bytes: u64,
    direct: bool,
}

impl Cow {
    fn open(path: &str) -> std::io::Result<Self> {
        let block = std::fs::metadata(path)?.file_type().is_block_device();
        let mut f = if block {
            OpenOptions::new()
                .read(true)
                .custom_flags(O_DIRECT)
                .open(path)?
        } else {
            File::open(path)?
        };
        let bytes = f.seek(SeekFrom::End(0))?;
        Ok(Self {
            f,
            bytes,
            direct: block,
        })
    }

    fn read_at(&mut self, off: u64, buf: &mut AlignedBuf) -> std::io::Result<()> {
        self.f.seek(SeekFrom::Start(off))?;
        self.f.read_exact(buf.as_mut())
    }
}

/// A buffer aligned for O_DIRECT (4 KiB covers every logical block size).
struct AlignedBuf {
    raw: Vec<u8>,
    skip: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + 4096];
        let skip = raw.as_ptr().align_offset(4096);
        Self { raw, skip, len }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.skip..self.skip + self.len]
    }
    fn as_ref(&self) -> &[u8] {
        &self.raw[self.skip..self.skip + self.len]
    }
}

/// Metadata areas read from the file, for [`walk_metadata`].
struct FileAreas<'a> {
    cow: &'a mut Cow,
    buf: AlignedBuf,
}

impl AreaReader for FileAreas<'_> {
    type Error = std::io::Error;
    fn read_area(&mut self, chunk: u64) -> std::io::Result<&[u8]> {
        let off = chunk
            .checked_mul(self.buf.len as u64)
            .ok_or_else(|| std::io::Error::other("area offset overflows"))?;
        self.cow.read_at(off, &mut self.buf)?;
        Ok(self.buf.as_ref())
    }
}

/// Errors kept for printing; past this many only their number is.
const MAX_ERRORS: usize = 100;

/// Everything `check` finds; `dump` streams the exceptions of the same
/// walk as it goes, so neither keeps them: `check` keeps 40 bytes per
/// exception (its COW and origin chunks with their place, sorted at the
/// end to find duplicates; 160 MB for 4 million), `dump` nothing.
#[derive(Default)]
struct Report {
    header: Option<Header>,
    exceptions: u64,
    errors: Vec<String>,
    more_errors: usize,
    notes: Vec<String>,
    /// The header says the snapshot was invalidated.
    invalid: bool,
}

impl Report {
    fn error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        } else {
            self.more_errors += 1;
        }
    }
    fn damaged(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// What [`walk`] reads, as it reads it.
enum Seen<'a> {
    Header(&'a Header),
    /// Area, origin chunk, COW chunk.
    Exception(u64, u64, u64),
}

/// Walks the COW; `emit` gets the header, then each exception as it is
/// read (`dump` prints them).
fn walk(
    cow: &mut Cow,
    check: bool,
    emit: &mut dyn FnMut(Seen<'_>) -> std::io::Result<()>,
) -> std::io::Result<Report> {
    let mut r = Report::default();
    if cow.bytes < 512 {
        r.error(format!(
            "truncated: {} bytes, too small for a header",
            cow.bytes
        ));
        return Ok(r);
    }
    // The whole first 4 KiB if there is one: an O_DIRECT read must cover
    // the device's logical block.
    let mut hb = AlignedBuf::new(if cow.bytes >= 4096 || !cow.direct {
        512.max(4096.min(cow.bytes as usize))
    } else {
        512
    });
    cow.read_at(0, &mut hb)?;
    let h = Header::decode(hb.as_ref()).unwrap_or(Header::new(0));
    r.header = Some(h);
    emit(Seen::Header(&h))?;
    let table_limit = dm_snap_logic::table::MAX_CHUNK_SECTORS;
    let checked = match check_header(&h, None, |c| c.is_power_of_two() && c <= table_limit) {
        Ok(None) => {
            r.notes
                .push("header is zeroed: a new COW, no exceptions yet".into());
            return Ok(r);
        }
        Ok(Some(c)) => c,
        Err(HeaderError::Corrupt(m)) => {
            r.error(format!(
                "bad magic {:#010x} (want {:#010x} \"SnAp\"): Invalid or corrupt snapshot",
                m, SNAP_MAGIC
            ));
            return Ok(r);
        }
        Err(HeaderError::ChunkSize(c)) => {
            r.error(format!("invalid chunk size {} sectors", c));
            return Ok(r);
        }
        Err(HeaderError::Version(v)) => {
            r.error(format!("unable to handle snapshot disk version {}", v));
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
        buf: AlignedBuf::new(chunk_bytes as usize),
    };
    // (chunk, place) of every exception's COW and origin chunk, for the
    // duplicates (`check` only); the place is area * epa + entry.
    let mut news: Vec<(u64, u64, u64)> = Vec::new();
    let mut olds: Vec<(u64, u64)> = Vec::new();
    let mut n = 0u64;
    let walked = walk_metadata(&mut reader, c, dev_chunks, |area, k, old, new| {
        n += 1;
        emit(Seen::Exception(area, old, new))?;
        if !check {
            return Ok(());
        }
        let place = area.saturating_mul(epa).saturating_add(k as u64);
        if !entry_in_range(new, dev_chunks) {
            r.error(format!(
                "area {} entry {}: COW chunk {} is outside the device ({} chunks)",
                area, k, new, dev_chunks
            ));
        } else if !cow_chunk_is_data(new, c) {
            r.error(format!(
                "area {} entry {}: COW chunk {} is a metadata area",
                area, k, new
            ));
        }
        if !origin_chunk_addressable(old, c) {
            r.error(format!(
                "area {} entry {}: origin chunk {} is past any origin (its sectors do not fit 64 bits)",
                area, k, old
            ));
        }
        news.push((new, place, old));
        olds.push((old, place));
        Ok(())
    });
    r.exceptions = n;
    match walked {
        Ok(_) => {}
        Err(WalkError::Beyond { area, chunk }) => r.error(format!(
            "truncated: metadata area {} at chunk {} is beyond the device end ({} chunks); area {} was full",
            area, chunk, dev_chunks, area.saturating_sub(1)
        )),
        Err(WalkError::Io(e)) => return Err(e),
    }
    let at = |p: u64| (p / epa, p % epa);
    news.sort_unstable();
    for w in news.windows(2) {
        if w[0].0 == w[1].0 {
            let ((a0, _), (a1, k1)) = (at(w[0].1), at(w[1].1));
            r.error(format!(
                "area {} entry {}: COW chunk {} already holds origin chunk {} (area {})",
                a1, k1, w[1].0, w[0].2, a0
            ));
        }
    }
    olds.sort_unstable();
    for w in olds.windows(2) {
        if w[0].0 == w[1].0 {
            let ((a0, _), (a1, k1)) = (at(w[0].1), at(w[1].1));
            r.error(format!(
                "area {} entry {}: origin chunk {} mapped twice (also in area {})",
                a1, k1, w[1].0, a0
            ));
        }
    }
    Ok(r)
}

/// Tables of device-mapper devices that hold `path` open and are not
/// suspended (`/sys/dev/block/M:m/holders`): their kernel state may be
/// newer than the metadata on disk.
fn live_holders(path: &str) -> Vec<String> {
    let Ok(md) = std::fs::metadata(path) else {
        return Vec::new();
    };
    if !md.file_type().is_block_device() {
        return Vec::new();
    }
    let (major, minor) = (
        (md.rdev() >> 8) & 0xfff,
        (md.rdev() & 0xff) | ((md.rdev() >> 12) & 0xfff00),
    );
    let dir = format!("/sys/dev/block/{major}:{minor}/holders");
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let dm = e.path().join("dm");
            let suspended = std::fs::read_to_string(dm.join("suspended")).ok()?;
            if suspended.trim() == "1" {
                return None;
            }
            let name = std::fs::read_to_string(dm.join("name")).unwrap_or_default();
            Some(name.trim().to_string())
        })
        .collect()
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
    let live = live_holders(path);
    if !live.is_empty() && !quiet {
        eprintln!(
            "warning: {} is in use by device-mapper table(s) not suspended ({}): the kernel may hold newer metadata than the disk",
            path,
            live.join(", ")
        );
    }
    let dump = cmd == "dump";
    let mut out = BufWriter::new(std::io::stdout().lock());
    let walked = Cow::open(path).and_then(|mut c| {
        walk(&mut c, !dump, &mut |seen| match (dump, seen) {
            (false, _) => Ok(()),
            (true, Seen::Header(h)) => writeln!(
                out,
                "magic {:#010x} valid {} version {} chunk_size {}",
                h.magic, h.valid, h.version, h.chunk_size
            ),
            (true, Seen::Exception(a, o, n)) => writeln!(out, "area {} old {} new {}", a, o, n),
        })
    });
    let report = match walked {
        Ok(r) => r,
        // `dump | head`: the reader went away; nothing is wrong.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dm-snap-cow: {}: {}", path, e);
            return ExitCode::from(2);
        }
    };
    let mut say = |line: String| match writeln!(out, "{line}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    };
    let mut printed = Ok(());
    for n in report.notes.iter().filter(|_| !quiet) {
        printed = printed.and_then(|()| say(format!("note: {}", n)));
    }
    if cmd == "check" && !quiet && !report.damaged() {
        printed = printed.and_then(|()| {
            say(if report.invalid {
                format!(
                    "{}: invalid snapshot (marked invalid on disk), {} exceptions on disk, not used",
                    path, report.exceptions
                )
            } else {
                format!("{}: ok, {} exceptions", path, report.exceptions)
            })
        });
    }
    if let Err(e) = printed.and_then(|()| match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }) {
        eprintln!("dm-snap-cow: stdout: {e}");
        return ExitCode::from(2);
    }
    for e in report.errors.iter().filter(|_| !quiet) {
        eprintln!("error: {}", e);
    }
    if report.more_errors > 0 && !quiet {
        eprintln!("error: ... and {} more", report.more_errors);
    }
    if report.damaged() {
        return ExitCode::from(1);
    }
    if report.invalid && cmd == "check" {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}
