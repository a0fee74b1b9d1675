//! `dm-snap-cow md5`: the MD5 of blocks of a device, many in one process.
//!
//! ```text
//! dm-snap-cow md5 <device> <block-bytes> [<block>...]
//! ```
//!
//! Prints `<block> <md5>` for each block given (every block of the device
//! if none is), read with O_DIRECT: what the device serves, not what the
//! page cache kept. The crash test checksums hundreds of blocks per boot;
//! under TCG a `dd | md5sum` pipeline per block costs a process pair each,
//! most of those boots' time. The digests are `md5sum`'s, so the test's
//! expectations (`scripts/crash-expect.py`) are computed as before.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

/// `O_DIRECT` on x86-64 (the guest's architecture): std has no constant
/// for it and the tool has no dependencies.
#[cfg(target_arch = "x86_64")]
const O_DIRECT: i32 = 0o40000;
#[cfg(not(target_arch = "x86_64"))]
const O_DIRECT: i32 = 0;

/// Runs `md5`; `Err` carries a message for stderr.
pub fn run(args: &[String]) -> Result<(), String> {
    let [dev, bs, blocks @ ..] = args else {
        return Err("usage: dm-snap-cow md5 <device> <block-bytes> [<block>...]".into());
    };
    let num = |s: &String| s.parse::<u64>().map_err(|e| format!("{s}: {e}"));
    let bs = num(bs)?;
    if bs == 0 || bs % 512 != 0 || bs > 1 << 24 {
        return Err(format!(
            "{bs}: a block is a multiple of 512 bytes, at most 16 MiB"
        ));
    }
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(O_DIRECT)
        .open(dev)
        .map_err(|e| format!("{dev}: {e}"))?;
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(|e| format!("{dev}: {e}"))?;
    let list: Vec<u64> = if blocks.is_empty() {
        (0..size / bs).collect()
    } else {
        blocks.iter().map(num).collect::<Result<_, _>>()?
    };
    // O_DIRECT wants a buffer aligned to the logical block size: 4 KiB
    // covers every device.
    let len = usize::try_from(bs).map_err(|e| e.to_string())?;
    let mut raw = vec![0u8; len + 4096];
    let skip = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[skip..skip + len];
    for b in list {
        let off = b
            .checked_mul(bs)
            .filter(|o| o.checked_add(bs).is_some_and(|e| e <= size))
            .ok_or(format!("block {b} is beyond the device ({size} bytes)"))?;
        f.seek(SeekFrom::Start(off))
            .map_err(|e| format!("{dev}: {e}"))?;
        f.read_exact(buf)
            .map_err(|e| format!("{dev}: block {b}: {e}"))?;
        println!("{b} {}", hex(&md5(buf)));
    }
    Ok(())
}

fn hex(d: &[u8; 16]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// MD5 (RFC 1321) of `data`.
pub fn md5(data: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    // K[i] = floor(abs(sin(i + 1)) * 2^32).
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4294967296.0) as u32)
        .collect();
    let mut h: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_le_bytes());
    for block in msg.chunks_exact(64) {
        let m: Vec<u32> = block
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let [mut a, mut b, mut c, mut d] = h;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let t = d;
            d = c;
            c = b;
            b = b.wrapping_add(
                a.wrapping_add(f)
                    .wrapping_add(k[i])
                    .wrapping_add(m[g])
                    .rotate_left(S[i]),
            );
            a = t;
        }
        h = [
            h[0].wrapping_add(a),
            h[1].wrapping_add(b),
            h[2].wrapping_add(c),
            h[3].wrapping_add(d),
        ];
    }
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_rfc_1321() {
        assert_eq!(hex(&md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(&md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
        let long =
            b"12345678901234567890123456789012345678901234567890123456789012345678901234567890";
        assert_eq!(hex(&md5(long)), "57edf4a22be3c955ac49da2e2107b67a");
    }
}
