//! `dm-snap-cow gen`: writes a valid persistent COW holding many
//! exceptions straight onto a device or image, fast (metadata areas only,
//! plus a stamp in some data chunks), for activation and scale tests.
//!
//! ```text
//! dm-snap-cow gen <cow> <exceptions> <origin-chunks> <seed> [rand|seq|perm] [origin]
//! dm-snap-cow sample <snapshot> <samples>
//! ```
//!
//! Chunks of 8 sectors (4 KiB). Exceptions take distinct random origin
//! chunks below `origin-chunks` (`rand`), or 0, 1, 2... (`seq`: as an
//! origin written in order), or 0 to `exceptions - 1` in random order
//! (`perm`: every chunk of that region copied, no two neighbours in
//! neighbouring COW chunks, so no runs form), in COW order as the kernel
//! allocates. Every 1000th exception's data chunk is stamped
//! with its origin chunk number (little-endian `u64`, repeated); the rest
//! of the data chunks are not written (they read as whatever the device
//! holds: zeros on a fresh sparse one). Prints `hit <old>` for each stamped
//! exception and `miss <old>` for 1000 origin chunks without one, whose
//! chunk on the `origin` device, if given, is stamped with `!old`. `sample`
//! reads those chunks of a snapshot of the two and counts the ones that do
//! not hold their stamp.

use dm_snap_logic::disk_format::{area_location, exceptions_per_area, write_exception, Header};
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};

const CHUNK_SECTORS: u32 = 8;
const CHUNK_BYTES: u64 = CHUNK_SECTORS as u64 * 512;

#[path = "../tests/common/rng.rs"]
mod rng;
use rng::Rng;

/// Runs `random <seed> <MiB>`: that many MiB of reproducible pseudo-random
/// bytes on stdout, the same for the same seed. The test harness draws all
/// its data from here, seeded by `DMSR_SEED`, so a failing run can be
/// replayed byte for byte (`/dev/urandom` cannot).
pub fn random(args: &[String]) -> Result<(), String> {
    let [seed, mib] = args else {
        return Err("usage: dm-snap-cow random <seed> <MiB>".into());
    };
    let num = |s: &String| s.parse::<u64>().map_err(|e| format!("{s}: {e}"));
    let (seed, mib) = (num(seed)?, num(mib)?);
    // splitmix64 of the seed: xorshift needs a non-zero state, and nearby
    // seeds should not give nearby streams.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let mut r = Rng((z ^ (z >> 31)) | 1);
    let mut buf = vec![0u8; 1 << 20];
    let mut out = std::io::stdout().lock();
    for _ in 0..mib {
        for w in buf.chunks_exact_mut(8) {
            w.copy_from_slice(&r.next().to_le_bytes());
        }
        out.write_all(&buf).map_err(|e| format!("stdout: {e}"))?;
    }
    out.flush().map_err(|e| format!("stdout: {e}"))
}

/// Runs `gen`; `Err` carries a message for stderr.
pub fn run(args: &[String]) -> Result<(), String> {
    let [path, n, origin, seed, rest @ ..] = args else {
        return Err(
            "usage: dm-snap-cow gen <cow> <exceptions> <origin-chunks> <seed> [rand|seq|perm] [origin]".into(),
        );
    };
    let num = |s: &String| s.parse::<u64>().map_err(|e| format!("{s}: {e}"));
    let (n, origin, seed) = (num(n)?, num(origin)?, num(seed)?.max(1));
    let mode = rest.first().map_or("rand", String::as_str);
    let seq = mode == "seq";
    let mut perm: Vec<u64> = Vec::new();
    if mode == "perm" {
        // Fisher-Yates over 0..n.
        perm.extend(0..n);
        let mut r = Rng(seed ^ 0x5eed);
        for i in (1..perm.len()).rev() {
            perm.swap(i, (r.next() % (i as u64 + 1)) as usize);
        }
    }
    if n > origin {
        return Err("more exceptions than origin chunks".into());
    }
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    let dev = f.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    let epa = exceptions_per_area(CHUNK_SECTORS);
    let areas = n / epa + 1;
    if (area_location(areas, CHUNK_SECTORS) + 1) * CHUNK_BYTES > dev {
        return Err(format!(
            "{path}: {dev} bytes is too small for {n} exceptions"
        ));
    }
    let mut rng = Rng(seed);
    let mut taken = vec![0u64; (origin as usize).div_ceil(64)];
    let mut chunk = vec![0u8; CHUNK_BYTES as usize];
    Header::new(CHUNK_SECTORS).encode(&mut chunk);
    write_at(&mut f, 0, &chunk)?;
    let mut out = String::new();
    for area in 0..areas {
        chunk.fill(0);
        let first = area * epa;
        for k in 0..epa.min(n - first) {
            let i = first + k;
            let old = match mode {
                "seq" | "perm" => {
                    let o = if seq { i } else { perm[i as usize] };
                    taken[(o / 64) as usize] |= 1 << (o % 64);
                    o
                }
                _ => pick(&mut rng, &mut taken, origin),
            };
            let new = area_location(area, CHUNK_SECTORS) + 1 + k;
            write_exception(&mut chunk, k as usize, old, new);
            if i % 1000 == 0 {
                let stamp: Vec<u8> = old.to_le_bytes().repeat(CHUNK_BYTES as usize / 8);
                write_at(&mut f, new * CHUNK_BYTES, &stamp)?;
                out.push_str(&format!("hit {old}\n"));
            }
        }
        // The area after the last full one stays all zeros: written, so a
        // reused device cannot leave stale entries there.
        write_at(
            &mut f,
            area_location(area, CHUNK_SECTORS) * CHUNK_BYTES,
            &chunk,
        )?;
    }
    f.sync_all().map_err(|e| e.to_string())?;
    let mut odev = match rest.get(1) {
        Some(p) => Some(
            OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(|e| format!("{p}: {e}"))?,
        ),
        None => None,
    };
    let mut misses = 0;
    while misses < 1000 && n < origin {
        let o = rng.next() % origin;
        if taken[(o / 64) as usize] & (1 << (o % 64)) == 0 {
            if let Some(d) = odev.as_mut() {
                write_at(
                    d,
                    o * CHUNK_BYTES,
                    &(!o).to_le_bytes().repeat(CHUNK_BYTES as usize / 8),
                )?;
            }
            out.push_str(&format!("miss {o}\n"));
            misses += 1;
        }
    }
    if let Some(d) = odev {
        d.sync_all().map_err(|e| e.to_string())?;
    }
    print!("{out}");
    Ok(())
}

/// A random origin chunk not taken yet, marked taken.
fn pick(rng: &mut Rng, taken: &mut [u64], origin: u64) -> u64 {
    loop {
        let o = rng.next() % origin;
        let (w, b) = ((o / 64) as usize, 1u64 << (o % 64));
        if taken[w] & b == 0 {
            taken[w] |= b;
            return o;
        }
    }
}

fn write_at(f: &mut std::fs::File, off: u64, buf: &[u8]) -> Result<(), String> {
    f.seek(SeekFrom::Start(off)).map_err(|e| e.to_string())?;
    f.write_all(buf).map_err(|e| e.to_string())
}

/// Runs `sample`: prints `<hits> hits, <misses> misses, <bad> bad` and
/// fails if any sampled chunk lacks its stamp.
pub fn sample(args: &[String]) -> Result<(), String> {
    let [dev, list] = args else {
        return Err("usage: dm-snap-cow sample <snapshot> <samples>".into());
    };
    let list = std::fs::read_to_string(list).map_err(|e| format!("{list}: {e}"))?;
    let mut f = std::fs::File::open(dev).map_err(|e| format!("{dev}: {e}"))?;
    let mut buf = vec![0u8; CHUNK_BYTES as usize];
    let (mut hits, mut misses, mut bad) = (0, 0, 0);
    for line in list.lines() {
        let (kind, old) = line.split_once(' ').ok_or(format!("bad line: {line}"))?;
        let old: u64 = old.parse().map_err(|e| format!("{line}: {e}"))?;
        f.seek(SeekFrom::Start(old * CHUNK_BYTES))
            .map_err(|e| e.to_string())?;
        std::io::Read::read_exact(&mut f, &mut buf).map_err(|e| format!("chunk {old}: {e}"))?;
        let want = if kind == "hit" { old } else { !old };
        let ok = buf.chunks(8).all(|w| w == want.to_le_bytes());
        match (kind, ok) {
            (_, false) => bad += 1,
            ("hit", true) => hits += 1,
            _ => misses += 1,
        }
    }
    println!("{hits} hits, {misses} misses, {bad} bad");
    if bad == 0 {
        Ok(())
    } else {
        Err(format!("{bad} sampled chunks without their stamp"))
    }
}
