//! Number parsing with the kernel's semantics, for table arguments.
//!
//! Upstream reads table numbers with `kstrtouint()` (chunk size) and
//! `sscanf("%u%c")` (`dm_read_arg`, feature counts). Accepting exactly what
//! they accept keeps table lines interchangeable between the two drivers.

/// Parses like `kstrtouint(s, 10, &v)`: an optional `+`, decimal digits, an
/// optional single trailing newline; overflow is an error.
pub fn kstrtouint(s: &[u8]) -> Option<u32> {
    let s = s.strip_prefix(b"+").unwrap_or(s);
    let s = s.strip_suffix(b"\n").unwrap_or(s);
    if s.is_empty() {
        return None;
    }
    let mut v: u32 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u32::from(c - b'0'))?;
    }
    Some(v)
}

/// Parses like the kernel's `sscanf(s, "%u%c", &v, &dummy) == 1`: leading
/// whitespace, an optional sign, decimal digits, and nothing after them. As in
/// the kernel, the value wraps to 32 bits instead of failing on overflow.
pub fn scan_uint(s: &[u8]) -> Option<u32> {
    let mut i = s.iter().take_while(|c| c.is_ascii_whitespace()).count();
    let neg = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let digits = &s[i..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        v = v.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
    }
    let v = v as u32;
    Some(if neg { v.wrapping_neg() } else { v })
}
