//! Userspace tests of the allocation-order completion FIFO: whatever order
//! copies finish in, exceptions leave in the order they were allocated,
//! each exactly once, with its own result.

use dm_snap_logic::completion_order::{CompletionOrder, OrderLink, Ordered};
use std::ptr::NonNull;

struct Node {
    id: usize,
    link: OrderLink<Node>,
}

// SAFETY: `link` always returns the node's own field.
unsafe impl Ordered for Node {
    unsafe fn link(this: NonNull<Self>) -> NonNull<OrderLink<Self>> {
        // SAFETY: `this` is valid (caller).
        unsafe { NonNull::new_unchecked(std::ptr::addr_of_mut!((*this.as_ptr()).link)) }
    }
}

fn nodes(n: usize) -> Vec<NonNull<Node>> {
    (0..n)
        .map(|id| {
            NonNull::from(Box::leak(Box::new(Node {
                id,
                link: OrderLink::new(),
            })))
        })
        .collect()
}

fn free(v: Vec<NonNull<Node>>) {
    for n in v {
        drop(unsafe { Box::from_raw(n.as_ptr()) });
    }
}

fn drain(o: &mut CompletionOrder<Node>) -> Vec<(usize, bool)> {
    o.take_ready()
        .map(|(n, ok)| (unsafe { n.as_ref() }.id, ok))
        .collect()
}

#[test]
fn empty_order_yields_nothing() {
    let mut o = CompletionOrder::<Node>::new();
    assert!(o.is_empty());
    assert!(o.take_ready().next().is_none());
}

#[test]
fn unfinished_front_holds_back_finished_followers() {
    let v = nodes(3);
    let mut o = CompletionOrder::new();
    for &n in &v {
        unsafe { o.push(n) };
    }
    unsafe { o.finish(v[2], true) };
    unsafe { o.finish(v[1], false) };
    assert!(drain(&mut o).is_empty(), "front not finished yet");
    assert!(!o.is_empty(), "all three still waiting");
    unsafe { o.finish(v[0], true) };
    assert_eq!(drain(&mut o), vec![(0, true), (1, false), (2, true)]);
    assert!(o.is_empty());
    free(v);
}

#[test]
fn reusable_after_draining() {
    let v = nodes(4);
    let mut o = CompletionOrder::new();
    unsafe { o.push(v[0]) };
    unsafe { o.finish(v[0], true) };
    assert_eq!(drain(&mut o), vec![(0, true)]);
    // The tail was reset: a new push becomes the front.
    unsafe { o.push(v[1]) };
    unsafe { o.push(v[2]) };
    unsafe { o.finish(v[1], true) };
    assert_eq!(drain(&mut o), vec![(1, true)]);
    unsafe { o.push(v[3]) };
    unsafe { o.finish(v[3], true) };
    assert!(drain(&mut o).is_empty());
    unsafe { o.finish(v[2], false) };
    assert_eq!(drain(&mut o), vec![(2, false), (3, true)]);
    free(v);
}

/// Pushes and finishes interleaved at random (a fixed-seed LCG), as
/// allocation and completion race in the driver: what leaves is always the
/// allocation order, and only a finished prefix of it.
#[test]
fn random_interleavings_complete_in_allocation_order() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    for _round in 0..200 {
        let total = 1 + rnd(64);
        let v = nodes(total);
        let mut o = CompletionOrder::new();
        let mut pushed = 0;
        let mut unfinished: Vec<usize> = Vec::new();
        let mut finished = vec![false; total];
        let mut out = Vec::new();
        while out.len() < total {
            if pushed < total && (unfinished.is_empty() || rnd(2) == 0) {
                unsafe { o.push(v[pushed]) };
                unfinished.push(pushed);
                pushed += 1;
            } else if !unfinished.is_empty() {
                let i = unfinished.swap_remove(rnd(unfinished.len()));
                finished[i] = true;
                unsafe { o.finish(v[i], i % 3 != 0) };
                out.extend(drain(&mut o));
                // Exactly the finished prefix of what was pushed has left.
                let prefix = (0..pushed).take_while(|&k| finished[k]).count();
                assert_eq!(out.len(), prefix);
            }
        }
        let want: Vec<(usize, bool)> = (0..total).map(|k| (k, k % 3 != 0)).collect();
        assert_eq!(out, want);
        assert!(o.is_empty());
        free(v);
    }
}
