//! `snapshot-merge`: copying a snapshot's exceptions back into the origin
//! (upstream's `snapshot_merge_next_chunks`, `merge_callback`,
//! `origin_write_extent`, `start_merge`/`stop_merge`), so that the origin
//! becomes what the snapshot holds (lvm2's `lvconvert --merge`).
//!
//! One batch at a time: the persistent store names the newest run of
//! consecutive exceptions ([`PersistentIo::prepare_merge`]); the other
//! snapshots of the origin copy that range first (their pending exceptions
//! are waited for); writes to the run wait (`State::queued`); dm-kcopyd
//! copies COW -> origin; the origin is flushed before the store's area
//! shrinks ([`PersistentIo::commit_merge`], PREFLUSH|FUA), so a crash
//! redoes at most one batch; the run leaves the complete table, the queued
//! writes go on, and the next batch starts from the copy's callback. Any
//! error stops the merge with `Merge failed` in status and fails the queued
//! writes; other I/O goes on.
//!
//! [`PersistentIo::prepare_merge`]: super::persistent::PersistentIo::prepare_merge
//! [`PersistentIo::commit_merge`]: super::persistent::PersistentIo::commit_merge

use super::cow::Snap;
use super::registry::copy_for_write;
use crate::dm::kcopyd::{CopyJob, Region};
use crate::logic::chunk::Chunk;
use crate::logic::exception_table::RemoveChunkError;
use crate::sync::complete::Removed;
use core::sync::atomic::Ordering;
use kernel::sync::Arc;

impl Snap {
    /// Starts the merge unless it runs (`start_merge`).
    pub(crate) fn start_merge(s: &Arc<Snap>) {
        if !s.merge_running.swap(true, Ordering::AcqRel) {
            Self::merge_next_chunks(s);
        }
    }

    /// Stops the merge and waits until it has (`stop_merge`): the batch in
    /// flight finishes first. Sleeps.
    pub(crate) fn stop_merge(&self) {
        self.merge_stop.store(true, Ordering::Release);
        crate::dm::poll_until(1000, || !self.merge_running.load(Ordering::Acquire));
        self.merge_stop.store(false, Ordering::Release);
    }

    /// The merge is running.
    pub(crate) fn merge_running(&self) -> bool {
        self.merge_running.load(Ordering::Acquire)
    }

    fn merge_shutdown(&self) {
        self.merge_running.store(false, Ordering::Release);
    }

    /// Makes every other snapshot of the origin copy the sectors
    /// `sector..sector + size` before the merge overwrites them
    /// (`origin_write_extent`); true if one has a copy in flight there,
    /// which the merge must wait for.
    fn origin_write_extent(&self, sector: u64, size: u64) -> bool {
        let o = self.reg.read();
        let key = self.origin.key();
        let Some(snaps) = o.find(key) else {
            return false;
        };
        let step = u64::from(o.minimum_chunk_size(key).max(1));
        let mut must_wait = false;
        let mut n = 0;
        while n < size {
            must_wait |= copy_for_write(snaps, sector + n, &mut None);
            n += step;
        }
        must_wait
    }

    /// Starts the next batch, or ends the merge when none is left
    /// (`snapshot_merge_next_chunks`).
    fn merge_next_chunks(s: &Arc<Snap>) {
        if s.merge_stop.load(Ordering::Acquire) {
            return s.merge_shutdown();
        }
        let (valid, g, pio) = {
            let st = s.state.read();
            (st.valid, st.geometry(), st.io())
        };
        if !valid {
            crate::dm_err!("Snapshot is invalid: can't merge\n");
            return s.merge_shutdown();
        }
        let Some(pio) = pio else {
            return s.merge_shutdown();
        };
        let batch = match pio.prepare_merge(&s.cow, g) {
            Ok(Some(b)) => b,
            Ok(None) => return s.merge_shutdown(),
            Err(_) => {
                crate::dm_err!("Read error in exception store: shutting down merge\n");
                s.state.write().merge_failed = true;
                return s.merge_shutdown();
            }
        };
        let io_size = batch.chunks as u64 * u64::from(g.sectors());
        let dest_sector = g.sector_of(batch.old);
        let count = io_size.min(s.origin.nr_sectors().saturating_sub(dest_sector));
        loop {
            // Read before the check, as the throttles do: a copy that ends
            // in between bumps it and the wait does not happen.
            let gen = s.reg.wake_generation();
            if !s.origin_write_extent(dest_sector, io_size) {
                break;
            }
            s.reg.wait_for_wake(gen);
        }
        s.state.write().merging = Some((batch.old, batch.chunks));
        // Writes to the run already remapped to the COW must land first.
        for i in 0..batch.chunks {
            s.wait_for_tracked(batch.old + i as u64);
        }
        let src_sector = g.sector_of(batch.new);
        let r = s.kcopyd.copy(s.clone(), |s| {
            [
                Region {
                    dev: &s.cow,
                    sector: src_sector,
                    count,
                },
                Region {
                    dev: &s.origin,
                    sector: dest_sector,
                    count,
                },
            ]
        });
        if let Err(job) = r {
            job.done_detail(false, true);
        }
    }

    /// A batch is in the origin: flush it, shrink the store, drop the run
    /// from the complete table and release the writes that waited
    /// (`merge_callback`). False on any error, said in the log.
    fn merge_batch_done(&self, read_ok: bool, write_ok: bool) -> bool {
        if !read_ok {
            crate::dm_err!("Read error: shutting down merge.\n");
            return false;
        }
        if !write_ok {
            crate::dm_err!("Write error: shutting down merge.\n");
            return false;
        }
        if self.origin.flush().is_err() {
            crate::dm_err!("Flush after merge failed: shutting down merge\n");
            return false;
        }
        let (g, pio, range) = {
            let st = self.state.read();
            (st.geometry(), st.io(), st.merging)
        };
        let (Some(pio), Some((first, n))) = (pio, range) else {
            return false;
        };
        match pio.commit_merge(&self.cow, g, n) {
            Ok(next_free) => self.state.read().alloc().store.set_next_free(next_free),
            Err(_) => {
                crate::dm_err!("Write error in exception store: shutting down merge\n");
                return false;
            }
        }
        self.remove_merged(first, n)
    }

    /// Takes the merged run out of the complete table, newest chunk first
    /// (`remove_single_exception_chunk`), then releases the writes that
    /// waited for it.
    fn remove_merged(&self, first: Chunk, n: usize) -> bool {
        let mut st = self.state.write();
        let mut chunks = (first..first + n as u64).rev();
        let mut next = chunks.next();
        while let Some(chunk) = next {
            let r = st.exc.complete.remove_chunk(chunk);
            match r {
                // A freed entry is dropped here, its bucket unlocked.
                Ok(Removed::Done(freed)) => {
                    drop(freed);
                    next = chunks.next();
                }
                // Nodes for a run cut in two, allocated with no write
                // hold (they may wait for memory); the chunks being merged
                // stay as they are meanwhile: writes to them wait in
                // `queued`, and only this worker removes exceptions.
                Ok(Removed::NeedNodes) => {
                    drop(st);
                    self.state.read().exc.complete.refill(chunk, 2);
                    st = self.state.write();
                }
                Err(RemoveChunkError::NotFound) => {
                    crate::dm_err!(
                        "Corruption detected: exception for block {} is on disk but not in memory\n",
                        chunk
                    );
                    return false;
                }
                Err(RemoveChunkError::Middle { first, last }) => {
                    crate::dm_err!(
                        "Attempt to merge block {} from the middle of a chunk range [{} - {}]\n",
                        chunk,
                        first,
                        last
                    );
                    return false;
                }
            }
        }
        st.merging = None;
        let mut queued = st.queued.take();
        drop(st);
        while let Some(b) = queued.pop() {
            b.submit();
        }
        true
    }

    /// The merge stopped on an error: `Merge failed`, the queued writes
    /// fail, other I/O goes on.
    fn merge_fail(&self) {
        let mut queued = {
            let mut st = self.state.write();
            st.merge_failed = true;
            st.merging = None;
            st.queued.take()
        };
        while let Some(b) = queued.pop() {
            b.end(false);
        }
        self.merge_shutdown();
    }
}

/// The copy of a merge batch: the snapshot itself is the job.
impl CopyJob for Arc<Snap> {
    fn done(self, ok: bool) {
        self.done_detail(ok, ok);
    }

    fn done_detail(self, read_ok: bool, write_ok: bool) {
        if self.merge_batch_done(read_ok, write_ok) {
            Snap::merge_next_chunks(&self);
        } else {
            self.merge_fail();
        }
    }
}
