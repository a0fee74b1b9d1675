//! One node of the compact exception index ([`super::exception_index`]):
//! a 4 KiB page that is either a leaf of packed exceptions or an inner node
//! of separator keys and children.
//!
//! A zeroed node is an empty leaf, so the kernel can hand out pages from a
//! zeroing pool and userspace from `alloc_zeroed`.
//!
//! A leaf slot is one `u64`: the origin chunk in the high 32 bits, the
//! *dense* COW chunk (the COW's data chunks numbered without the metadata
//! chunks between them, see [`CowLayout`](super::exception_index::CowLayout))
//! in the low 30 bits, and two flag bits. A run of consecutive chunks (in
//! both numberings) is two slots, its first chunk flagged [`START`] and its
//! last flagged [`END`]: 8 bytes per isolated exception, 16 per run of any
//! length. Both slots of a run always sit in the same leaf.

use super::exception_index::IndexStats;
use core::ptr::NonNull;

/// Bytes of one node.
pub const NODE_BYTES: usize = 4096;
/// `u64` slots after the 16-byte header.
pub const SLOTS: usize = (NODE_BYTES - 16) / 8;
/// Slots of a leaf.
pub const LEAF_CAP: usize = SLOTS;
/// Keys of an inner node: its keys and its `INNER_CAP + 1` children share
/// the slots.
pub const INNER_CAP: usize = (SLOTS - 1) / 2;

/// Flag of a run's first slot.
pub const START: u32 = 1 << 31;
/// Flag of a run's last slot.
pub const END: u32 = 1 << 30;
/// Bits of the dense COW chunk in a slot.
pub const DENSE_MASK: u32 = END - 1;

/// A node. Only [`super::exception_index`] reads or changes one; the
/// owner of the index only allocates zeroed ones and frees what it is
/// handed back.
#[repr(C)]
pub struct Node {
    pub(super) len: u32,
    /// 0 for a leaf.
    pub(super) inner: u32,
    /// In a shard's root: the shard's spare nodes (linked through this
    /// field), for splits under the shard lock, where nothing may be
    /// allocated.
    pub(super) spare: *mut Node,
    pub(super) slots: [u64; SLOTS],
}

// SAFETY: a node's pointers (children, spares) are only followed under
// the lock of the shard whose tree holds it, or by its owner while it is in
// no index; a node moves between CPUs with its shard.
unsafe impl Send for Node {}
// SAFETY: as for `Send`: shared access goes through the shard lock.
unsafe impl Sync for Node {}

// The layout the constants promise.
const _: () = assert!(core::mem::size_of::<Node>() == NODE_BYTES);
const _: () = assert!(2 * INNER_CAP < SLOTS);

/// A leaf slot.
pub(super) fn pack(key: u32, val: u32) -> u64 {
    (u64::from(key) << 32) | u64::from(val)
}

/// Origin chunk of a leaf slot.
pub(super) fn key_of(s: u64) -> u32 {
    (s >> 32) as u32
}

/// Value (flags and dense chunk) of a leaf slot.
pub(super) fn val_of(s: u64) -> u32 {
    s as u32
}

impl Node {
    /// An empty leaf (what a zeroed node is).
    pub const fn new() -> Self {
        Self {
            len: 0,
            inner: 0,
            spare: core::ptr::null_mut(),
            slots: [0; SLOTS],
        }
    }

    pub(super) fn is_leaf(&self) -> bool {
        self.inner == 0
    }

    pub(super) fn len(&self) -> usize {
        self.len as usize
    }

    /// The used slots of a leaf.
    pub(super) fn leaf(&self) -> &[u64] {
        &self.slots[..self.len()]
    }

    /// Index of the first leaf slot whose chunk is above `key`.
    pub(super) fn leaf_upper(&self, key: u32) -> usize {
        self.leaf().partition_point(|&s| key_of(s) <= key)
    }

    /// Opens `n` slots at `at` in a leaf with room for them.
    pub(super) fn leaf_open(&mut self, at: usize, n: usize) {
        let len = self.len();
        self.slots.copy_within(at..len, at + n);
        self.len += n as u32;
    }

    /// Closes `n` slots at `at` in a leaf.
    pub(super) fn leaf_close(&mut self, at: usize, n: usize) {
        let len = self.len();
        self.slots.copy_within(at + n..len, at);
        self.len -= n as u32;
    }

    /// Sets separator key `i` of an inner node.
    pub(super) fn set_key(&mut self, i: usize, k: u64) {
        self.slots[i] = k;
    }

    /// Child `i` of an inner node.
    pub(super) fn kid(&self, i: usize) -> *mut Node {
        self.slots[INNER_CAP + i] as usize as *mut Node
    }

    fn set_kid(&mut self, i: usize, n: *mut Node) {
        self.slots[INNER_CAP + i] = n as usize as u64;
    }

    /// Which child of an inner node holds `key`: child `i` holds the keys
    /// from separator `i - 1` up to, not including, separator `i`.
    pub(super) fn child_for(&self, key: u64) -> usize {
        self.slots[..self.len()].partition_point(|&k| k <= key)
    }

    /// Makes this (spare) node the inner root over `left` and `right`.
    pub(super) fn make_root(&mut self, left: *mut Node, sep: u64, right: *mut Node) {
        self.inner = 1;
        self.len = 1;
        self.slots[0] = sep;
        self.set_kid(0, left);
        self.set_kid(1, right);
    }

    /// Inserts separator `sep` at `at` with its right child `right` in an
    /// inner node with room.
    pub(super) fn inner_insert(&mut self, at: usize, sep: u64, right: *mut Node) {
        let len = self.len();
        self.slots.copy_within(at..len, at + 1);
        self.slots[at] = sep;
        let kids = INNER_CAP;
        self.slots
            .copy_within(kids + at + 1..kids + len + 1, kids + at + 2);
        self.set_kid(at + 1, right);
        self.len += 1;
    }

    /// Moves the upper half of a full leaf into the empty `right`, never
    /// parting a run's two slots; returns the first chunk of `right`.
    pub(super) fn split_leaf(&mut self, right: &mut Node) -> u64 {
        let len = self.len();
        let mut m = len / 2;
        if val_of(self.slots[m]) & END != 0 {
            m += 1;
        }
        right.slots[..len - m].copy_from_slice(&self.slots[m..len]);
        right.len = (len - m) as u32;
        right.inner = 0;
        self.len = m as u32;
        u64::from(key_of(right.slots[0]))
    }

    /// Moves the upper slots of this full leaf to the front of its right
    /// sibling, half of the room there, never parting a run; returns the
    /// new first chunk of `right`. `None` if `right` is nearly full too.
    /// Filling siblings before splitting keeps randomly filled leaves
    /// fuller than a split alone (about 69%).
    pub(super) fn give_right(&mut self, right: &mut Node) -> Option<u64> {
        let free = LEAF_CAP - right.len();
        if free < 8 {
            return None;
        }
        let len = self.len();
        let mut m = len - free / 2;
        if val_of(self.slots[m]) & END != 0 {
            m += 1;
        }
        let n = len - m;
        let rlen = right.len();
        right.slots.copy_within(0..rlen, n);
        right.slots[..n].copy_from_slice(&self.slots[m..len]);
        right.len += n as u32;
        self.len = m as u32;
        Some(u64::from(key_of(right.slots[0])))
    }

    /// The same towards the left sibling: moves this leaf's first slots to
    /// the end of `left`; returns this leaf's new first chunk.
    pub(super) fn give_left(&mut self, left: &mut Node) -> Option<u64> {
        let free = LEAF_CAP - left.len();
        if free < 8 {
            return None;
        }
        let mut m = free / 2;
        if val_of(self.slots[m]) & END != 0 {
            m += 1;
        }
        let at = left.len();
        left.slots[at..at + m].copy_from_slice(&self.slots[..m]);
        left.len += m as u32;
        self.leaf_close(0, m);
        Some(u64::from(key_of(self.slots[0])))
    }

    /// Moves the upper half of a full inner node into the empty `right`;
    /// returns the separator that moves up, and the index of the first key
    /// that went right (plus one: where the moved-up key was).
    pub(super) fn split_inner(&mut self, right: &mut Node) -> (u64, usize) {
        let len = self.len();
        let m = len / 2;
        let sep = self.slots[m];
        let moved = len - m - 1;
        right.inner = 1;
        right.slots[..moved].copy_from_slice(&self.slots[m + 1..len]);
        for i in 0..=moved {
            right.set_kid(i, self.kid(m + 1 + i));
        }
        right.len = moved as u32;
        self.len = m as u32;
        (sep, m)
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

/// True for a slot value of a single chunk (no run flag).
pub(super) fn single(v: u32) -> bool {
    v & (START | END) == 0
}

/// Adds the contents of the tree at `n` to `s`.
///
/// # Safety
///
/// `n` is null or the root of a tree no one else changes meanwhile.
pub(super) unsafe fn tree_stats(n: *mut Node, s: &mut IndexStats) {
    // SAFETY: see the function's contract.
    let Some(node) = (unsafe { n.as_ref() }) else {
        return;
    };
    s.nodes += 1;
    if !node.is_leaf() {
        for i in 0..=node.len() {
            // SAFETY: a child of a node of the tree is in the tree.
            unsafe { tree_stats(node.kid(i), s) };
        }
        return;
    }
    s.slots += node.len();
    let mut i = 0;
    while i < node.len() {
        let (k, v) = (key_of(node.slots[i]), val_of(node.slots[i]));
        if v & START != 0 && i + 1 < node.len() {
            s.runs += 1;
            s.chunks += u64::from(key_of(node.slots[i + 1]) - k) + 1;
            i += 2;
        } else {
            s.chunks += 1;
            i += 1;
        }
    }
}

/// Calls `f(origin chunk, dense COW chunk)` for every chunk the tree at
/// `n` maps, a run's chunks one by one, in origin order.
///
/// # Safety
///
/// `n` is null or the root of a tree no one else changes meanwhile.
pub(super) unsafe fn tree_for_each(n: *mut Node, f: &mut impl FnMut(u32, u32)) {
    // SAFETY: see the function's contract.
    let Some(node) = (unsafe { n.as_ref() }) else {
        return;
    };
    if !node.is_leaf() {
        for i in 0..=node.len() {
            // SAFETY: a child of a node of the tree is in the tree.
            unsafe { tree_for_each(node.kid(i), f) };
        }
        return;
    }
    let slots = node.leaf();
    let mut i = 0;
    while let Some(&s) = slots.get(i) {
        let (k, v) = (key_of(s), val_of(s));
        let d = v & DENSE_MASK;
        match slots.get(i + 1) {
            // A run: its last slot's key bounds it (both in one leaf), and
            // its dense numbers are consecutive from the first one's, so
            // neither sum can pass the last slot's key and number.
            Some(&e) if v & START != 0 => {
                for x in 0..=key_of(e).wrapping_sub(k) {
                    f(k.wrapping_add(x), d.wrapping_add(x));
                }
                i += 2;
            }
            _ => {
                f(k, d);
                i += 1;
            }
        }
    }
}

/// Hands every node of the tree at `n`, and its spares, to `free`.
///
/// # Safety
///
/// `n` is null or the root of a tree that is no longer reachable.
pub(super) unsafe fn free_tree(n: *mut Node, free: &mut impl FnMut(NonNull<Node>)) {
    let Some(node) = NonNull::new(n) else {
        return;
    };
    // SAFETY: the tree is ours alone (contract); nodes stay valid until
    // `free` is called on them, children and spares first.
    unsafe {
        let r = node.as_ptr();
        if !(*r).is_leaf() {
            for i in 0..=(*r).len() {
                free_tree((*r).kid(i), free);
            }
        }
        let mut sp = (*r).spare;
        while let Some(s) = NonNull::new(sp) {
            sp = (*s.as_ptr()).spare;
            free(s);
        }
    }
    free(node);
}

/// Puts `key` -> `dense` at slot `i` of `leaf` (which has room if it must
/// grow), extending the run or single chunk `left` before it and `right`
/// after it where they are adjacent.
pub(super) fn insert_at(
    leaf: &mut Node,
    i: usize,
    key: u32,
    dense: u32,
    left: Option<u64>,
    right: Option<u64>,
) {
    match (left, right) {
        (None, None) => {
            leaf.leaf_open(i, 1);
            leaf.slots[i] = pack(key, dense);
        }
        (Some(l), None) if single(val_of(l)) => {
            leaf.slots[i - 1] = l | u64::from(START);
            leaf.leaf_open(i, 1);
            leaf.slots[i] = pack(key, dense | END);
        }
        (Some(_), None) => leaf.slots[i - 1] = pack(key, dense | END),
        (None, Some(r)) if single(val_of(r)) => {
            leaf.slots[i] = r | u64::from(END);
            leaf.leaf_open(i, 1);
            leaf.slots[i] = pack(key, dense | START);
        }
        (None, Some(_)) => leaf.slots[i] = pack(key, dense | START),
        (Some(l), Some(r)) => {
            let (ls, rs) = (single(val_of(l)), single(val_of(r)));
            match (ls, rs) {
                (true, true) => {
                    leaf.slots[i - 1] = l | u64::from(START);
                    leaf.slots[i] = r | u64::from(END);
                }
                (true, false) => {
                    leaf.slots[i - 1] = l | u64::from(START);
                    leaf.leaf_close(i, 1);
                }
                (false, true) => {
                    leaf.slots[i] = r | u64::from(END);
                    leaf.leaf_close(i - 1, 1);
                }
                (false, false) => leaf.leaf_close(i - 1, 2),
            }
        }
    }
}

/// Takes `key` out of slot `j` of `leaf` (its own slot, or the start of
/// the run holding it; the leaf has two free slots for a cut in the
/// middle).
pub(super) fn remove_at(leaf: &mut Node, j: usize, key: u32) {
    let (k, v) = (key_of(leaf.slots[j]), val_of(leaf.slots[j]));
    let d = v & DENSE_MASK;
    if single(v) {
        leaf.leaf_close(j, 1);
    } else if k == key && v & START != 0 {
        let e = leaf.slots[j + 1];
        if key_of(e) == key + 1 {
            leaf.slots[j + 1] = pack(key_of(e), val_of(e) & DENSE_MASK);
            leaf.leaf_close(j, 1);
        } else {
            leaf.slots[j] = pack(key + 1, (d + 1) | START);
        }
    } else if k == key {
        let st = leaf.slots[j - 1];
        if key_of(st) + 1 == key {
            leaf.slots[j - 1] = pack(key_of(st), val_of(st) & DENSE_MASK);
            leaf.leaf_close(j, 1);
        } else {
            leaf.slots[j] = pack(key - 1, (d - 1) | END);
        }
    } else {
        // Strictly inside the run at `j`, `j + 1`: cut it in two.
        let e = leaf.slots[j + 1];
        let (ek, ed) = (key_of(e), val_of(e) & DENSE_MASK);
        let at = d + (key - k);
        let mut out = [0u64; 4];
        let mut n = 0;
        if k + 1 == key {
            out[n] = pack(k, d);
            n += 1;
        } else {
            out[n] = pack(k, d | START);
            out[n + 1] = pack(key - 1, (at - 1) | END);
            n += 2;
        }
        if key + 1 == ek {
            out[n] = pack(ek, ed);
            n += 1;
        } else {
            out[n] = pack(key + 1, (at + 1) | START);
            out[n + 1] = pack(ek, ed | END);
            n += 2;
        }
        leaf.leaf_open(j + 2, n - 2);
        leaf.slots[j..j + n].copy_from_slice(&out[..n]);
    }
}
