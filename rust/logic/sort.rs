//! An in-place heapsort for the bulk load of exceptions at activation.
//!
//! `core`'s `sort_unstable` would do, but its check for a comparison that is
//! not a total order ends in a panic function that the kernel's objtool
//! does not know never returns (it warns that the sort "falls through to
//! next function"); this one has no panic path but slice bounds checks,
//! allocates nothing and runs in O(n log n) whatever the input.

/// Sorts `v` by `key`, smallest first; equal keys in no particular order
/// (make the key unique, e.g. with the position, where that matters).
pub fn sort_by_key<T, K: Ord>(v: &mut [T], key: impl Fn(&T) -> K) {
    let n = v.len();
    for start in (0..n / 2).rev() {
        sift_down(v, start, n, &key);
    }
    for end in (1..n).rev() {
        v.swap(0, end);
        sift_down(v, 0, end, &key);
    }
}

/// Restores the max-heap below `root` in `v[..end]`.
fn sift_down<T, K: Ord>(v: &mut [T], mut root: usize, end: usize, key: &impl Fn(&T) -> K) {
    loop {
        let mut child = 2 * root + 1;
        if child >= end {
            return;
        }
        if child + 1 < end && key(&v[child]) < key(&v[child + 1]) {
            child += 1;
        }
        if key(&v[root]) >= key(&v[child]) {
            return;
        }
        v.swap(root, child);
        root = child;
    }
}
