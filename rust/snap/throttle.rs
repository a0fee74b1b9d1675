//! Keeping copies and snapshot reads in step (upstream's
//! `wait_for_in_progress`, `track_chunk` and `__check_for_conflicting_io`):
//! the COW throttle (`snapshot_cow_threshold` copies in flight per
//! snapshot), and the snapshot reads that went to the origin, which a copy
//! of their chunk must not overtake.

use super::cow::Snap;
use crate::logic::chunk::Chunk;
use crate::sync::complete::CompleteBucket;
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::prelude::*;

/// Reads tracked per snapshot by hash slot; see [`Snap::track`].
const TRACK_SLOTS: usize = 1024;

/// Snapshot reads of the origin in flight, counted by chunk hash.
pub(crate) struct Tracking(KVec<AtomicU32>);

impl Tracking {
    /// All slots zero.
    pub(crate) fn new() -> Result<Self> {
        let mut v = KVec::with_capacity(TRACK_SLOTS, GFP_KERNEL)?;
        for _ in 0..TRACK_SLOTS {
            v.push(AtomicU32::new(0), GFP_KERNEL)?;
        }
        Ok(Self(v))
    }

    fn slot(&self, chunk: Chunk) -> &AtomicU32 {
        &self.0[(chunk as usize) & (TRACK_SLOTS - 1)]
    }

    /// A read may still be reading the origin chunk (or one sharing its slot).
    pub(super) fn busy(&self, chunk: Chunk) -> bool {
        self.slot(chunk).load(Ordering::Acquire) != 0
    }
}

impl Snap {
    /// More copies in flight than `snapshot_cow_threshold`.
    pub(crate) fn over_cow_threshold(&self) -> bool {
        let limit = crate::dm::cow_threshold();
        self.in_progress.load(Ordering::Relaxed) > limit
    }

    /// Throttles a snapshot write (`wait_for_in_progress(s, false)`).
    pub(crate) fn throttle(&self) {
        while self.over_cow_threshold() {
            let gen = self.reg.wake_generation();
            if !self.over_cow_threshold() {
                break;
            }
            self.reg.wait_for_wake(gen);
        }
    }

    pub(super) fn account_start_copy(&self) {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn account_end_copy(&self) {
        self.in_progress.fetch_sub(1, Ordering::Relaxed);
        self.reg.throttle_wake();
    }

    /// Notes a snapshot read of `chunk` going to the origin (`track_chunk`);
    /// call with the chunk's complete bucket locked (`_lock`), under which
    /// the read found the chunk not copied. Slots are shared by chunks with
    /// the same hash, which can only make a completion wait a little longer.
    pub(crate) fn track(&self, _lock: &CompleteBucket<'_>, chunk: Chunk) {
        self.tracking.slot(chunk).fetch_add(1, Ordering::AcqRel);
    }

    /// Whether a snapshot read that went to the origin may still be reading
    /// `chunk` (or a chunk sharing its slot). Call with the complete bucket
    /// locked: a read tracks itself under that lock, so it either tracked
    /// before, and shows here until it completes, or comes after and finds
    /// the chunk copied.
    pub(super) fn maybe_tracked(&self, _lock: &CompleteBucket<'_>, chunk: Chunk) -> bool {
        self.tracking.busy(chunk)
    }

    /// That read completed (`stop_tracking_chunk`; IRQ context is fine).
    pub(crate) fn untrack(&self, chunk: Chunk) {
        self.tracking.slot(chunk).fetch_sub(1, Ordering::AcqRel);
    }

    /// Sleeps until no tracked read of `chunk`'s slot is left
    /// (`__check_for_conflicting_io`). No lock may be held.
    pub(super) fn wait_for_tracked(&self, chunk: Chunk) {
        crate::dm::poll_until(1000, || !self.tracking.busy(chunk));
    }
}
