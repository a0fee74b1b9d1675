//! A stable radix sort for the bulk load of exceptions at activation.
//!
//! `core`'s `sort_unstable` would do, but its check for a comparison that is
//! not a total order ends in a panic function that the kernel's objtool
//! does not know never returns (it warns that the sort "falls through to
//! next function"); this one has no comparison to check, only lengths it
//! sets itself, and allocates nothing: the caller owns both buffers.

/// Sorts `v` by the `u64` `key`, smallest first, keeping equal keys in
/// their order (stable), with `scratch` (at least as long as `v`) as the
/// other buffer: a least-significant-digit radix sort, one pass per byte
/// up to the largest key's highest set bit.
///
/// Why: the bulk load at activation sorts every exception of the COW, and
/// a comparison sort costs ~14 compare-and-swap steps per element at a
/// batch of 16,384 (the heapsort this replaced); this costs a count and a
/// move per element and byte (three bytes for a 16M-chunk origin), and
/// needs no position in the key to keep the first mapping of a chunk
/// first. `v` is
/// left as it was if `scratch` is too short or it has 2^32 elements or
/// more (the counts are `u32`, to keep them at 1 KiB of stack).
pub fn radix_sort_by_key<T: Copy>(v: &mut [T], scratch: &mut [T], key: impl Fn(&T) -> u64) {
    let n = v.len();
    let Some(scratch) = scratch.get_mut(..n) else {
        return;
    };
    if u32::try_from(n).is_err() {
        return;
    }
    let max = v.iter().map(&key).max().unwrap_or(0);
    let bytes = (64 - max.leading_zeros()).div_ceil(8);
    let (mut src, mut dst): (&mut [T], &mut [T]) = (v, scratch);
    for byte in 0..bytes {
        let shift = byte * 8;
        let mut at = [0u32; 256];
        for x in src.iter() {
            at[((key(x) >> shift) & 0xff) as usize] += 1;
        }
        let mut sum = 0;
        for c in at.iter_mut() {
            let k = *c;
            *c = sum;
            sum += k;
        }
        for x in src.iter() {
            let slot = &mut at[((key(x) >> shift) & 0xff) as usize];
            if let Some(d) = dst.get_mut(*slot as usize) {
                *d = *x;
            }
            *slot += 1;
        }
        core::mem::swap(&mut src, &mut dst);
    }
    // After an odd number of passes the sorted data is in `scratch`.
    if bytes % 2 == 1 {
        dst.copy_from_slice(src);
    }
}
