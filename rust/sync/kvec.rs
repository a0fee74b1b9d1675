//! What 6.12's `KVec` lacks and the targets need: removing an element and
//! emptying a vector in place, keeping its capacity (so that no teardown or
//! I/O path allocates).

use kernel::alloc::{Allocator, Vec};

/// Extra `KVec` (and `VVec`) operations.
pub trait KVecExt<T> {
    /// Removes element `i`, keeping the order of the others.
    fn remove_at(&mut self, i: usize) -> Option<T>;
    /// Removes the last element.
    fn pop_last(&mut self) -> Option<T>;
    /// Drops every element, keeping the capacity.
    fn clear_keep(&mut self);
}

impl<T, A: Allocator> KVecExt<T> for Vec<T, A> {
    fn remove_at(&mut self, i: usize) -> Option<T> {
        let n = self.len();
        if i >= n {
            return None;
        }
        for k in i..n - 1 {
            self.swap(k, k + 1);
        }
        // SAFETY: element `n - 1` is initialised; we move it out and shrink
        // the length by one so that it is not dropped twice.
        unsafe {
            let last = core::ptr::read(self.as_ptr().add(n - 1));
            self.set_len(n - 1);
            Some(last)
        }
    }

    fn pop_last(&mut self) -> Option<T> {
        self.remove_at(self.len().checked_sub(1)?)
    }

    fn clear_keep(&mut self) {
        while self.pop_last().is_some() {}
    }
}
