//! Completing copies in the order their COW chunks were allocated.
//!
//! Upstream numbers each pending exception when its chunk is allocated
//! (`exception_start_sequence`) and, in the copy callback, completes it only
//! when all earlier ones are complete, parking early finishers in an rbtree
//! keyed by that number (`exception_complete_sequence`, commit 230c83afdd9c
//! "dm snapshot: avoid snapshot space leak on crash"). The persistent store
//! needs it: a metadata area written while an earlier-allocated chunk is
//! still being copied records a later chunk before it, and a crash then
//! leaves the earlier chunk allocated to nothing, since a reload allocates
//! after the highest chunk it finds.
//!
//! Chunks are allocated in sequence, so the same order is a FIFO: the
//! allocator appends each new pending exception under its lock, a finished
//! copy marks its exception finished, and exceptions leave from the front
//! only, while the front one is finished. Every operation is O(1) and
//! nothing is allocated (the link lives in the pending exception itself),
//! where the rbtree costs O(log n) per early finisher.

use core::ptr::NonNull;

/// The link a node of a [`CompletionOrder`] carries.
pub struct OrderLink<T> {
    next: Option<NonNull<T>>,
    /// The copy's result once it finished.
    result: Option<bool>,
}

impl<T> OrderLink<T> {
    /// A link for a node in no order yet.
    pub const fn new() -> Self {
        OrderLink {
            next: None,
            result: None,
        }
    }
}

impl<T> Default for OrderLink<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// An object that can be queued in a [`CompletionOrder`].
///
/// # Safety
///
/// `link` returns a pointer to the same [`OrderLink`] of `this` every time,
/// valid as long as `this` is, and touched only through the order.
pub unsafe trait Ordered: Sized {
    /// The node's link.
    ///
    /// # Safety
    ///
    /// `this` is valid.
    unsafe fn link(this: NonNull<Self>) -> NonNull<OrderLink<Self>>;
}

/// Nodes in allocation order, leaving only from the front and only once
/// finished. The owner serializes all calls (a spinlock in the driver).
pub struct CompletionOrder<T> {
    head: Option<NonNull<T>>,
    tail: Option<NonNull<T>>,
}

// SAFETY: the order only holds pointers to nodes that may move between
// threads themselves; it never dereferences them except in its methods,
// whose callers serialize access.
unsafe impl<T: Send> Send for CompletionOrder<T> {}

impl<T> Default for CompletionOrder<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> CompletionOrder<T> {
    /// An empty order.
    pub const fn new() -> Self {
        CompletionOrder {
            head: None,
            tail: None,
        }
    }

    /// Nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }
}

impl<T: Ordered> CompletionOrder<T> {
    /// Appends `node`, the latest allocated.
    ///
    /// # Safety
    ///
    /// `node` is valid, in no order, and stays valid until
    /// [`CompletionOrder::take_ready`] has taken it out and
    /// the [`Ready`] it came in has yielded it.
    pub unsafe fn push(&mut self, node: NonNull<T>) {
        // SAFETY: contract: `node` is valid and its link ours.
        unsafe {
            let l = T::link(node).as_ptr();
            (*l).next = None;
            (*l).result = None;
        }
        match self.tail {
            // SAFETY: the tail is a valid node of this order.
            Some(t) => unsafe { (*T::link(t).as_ptr()).next = Some(node) },
            None => self.head = Some(node),
        }
        self.tail = Some(node);
    }

    /// Records that the copy of `node` finished, successfully or not.
    ///
    /// # Safety
    ///
    /// `node` is in this order.
    pub unsafe fn finish(&mut self, node: NonNull<T>, ok: bool) {
        // SAFETY: `node` is in this order (caller), so it is valid and its
        // link is ours to write under the owner's serialization.
        unsafe { (*T::link(node).as_ptr()).result = Some(ok) };
    }

    /// Takes out the finished front of the order: the nodes to complete
    /// now, oldest first, with their results (none if the front node is
    /// unfinished). One walk under the owner's lock; the caller completes
    /// them after dropping it.
    pub fn take_ready(&mut self) -> Ready<T> {
        let first = self.head;
        let mut last = None;
        let mut cur = self.head;
        while let Some(c) = cur {
            // SAFETY: nodes stay valid while in the order (`push`).
            let l = unsafe { &*T::link(c).as_ptr() };
            if l.result.is_none() {
                break;
            }
            last = Some(c);
            cur = l.next;
        }
        let Some(last) = last else {
            return Ready { next: None };
        };
        // SAFETY: as above; the taken nodes now form a chain of their own.
        unsafe { (*T::link(last).as_ptr()).next = None };
        self.head = cur;
        if cur.is_none() {
            self.tail = None;
        }
        Ready { next: first }
    }
}

/// Nodes taken out of a [`CompletionOrder`], finished, oldest first. Each
/// node's link is read before the node is yielded, so the caller may free
/// it at once.
pub struct Ready<T> {
    next: Option<NonNull<T>>,
}

impl<T> Ready<T> {
    /// Nothing (more) to yield.
    pub fn is_empty(&self) -> bool {
        self.next.is_none()
    }
}

impl<T: Ordered> Iterator for Ready<T> {
    type Item = (NonNull<T>, bool);

    fn next(&mut self) -> Option<Self::Item> {
        let h = self.next?;
        // SAFETY: taken nodes stay valid until yielded (`push`), and this
        // one has not been yet.
        let l = unsafe { &mut *T::link(h).as_ptr() };
        self.next = l.next.take();
        Some((h, l.result.unwrap_or(false)))
    }
}
