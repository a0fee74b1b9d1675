//! The `snapshot-merge` target (upstream's `merge_target`): a snapshot
//! whose exceptions flow back into the origin. lvm2 loads it on the origin
//! LV in place of `snapshot-origin`, on the COW of the snapshot being
//! merged (which takes its exceptions over, as a handover), or after a
//! reboot on that COW directly. The merge itself is [`super::merge`].

use super::cow::Snap;
use super::registry::do_origin;
use super::snapshot::{Snapshot, Tracked};
use crate::dm::{
    Bio, CtrError, DeviceVisitor, Mapped, OwnedBio, QueueLimits, Setup, StatusBuf, StatusType,
    Target, TargetOps,
};
use kernel::c_str;
use kernel::ffi::c_int;
use kernel::prelude::*;
use kernel::str::CStr;

/// A `snapshot-merge` target.
pub(crate) struct SnapshotMerge(Pin<KBox<Snapshot>>);

impl SnapshotMerge {
    /// `snapshot_merge_map`: flushes to both devices; discards do nothing
    /// any more; a chunk still in the COW is read and written there
    /// (writes tracked, for the merge to wait for), unless it is being
    /// merged now, when a write waits for the batch and then goes to the
    /// origin; everything else goes to the origin, writes copied into the
    /// other snapshots first.
    fn merge_map(&self, mut bio: OwnedBio, tracked: &mut Tracked) -> Mapped {
        let s = &*self.0.snap;
        if bio.is_preflush() {
            match bio.target_nr() {
                0 => bio.set_dev(&s.origin),
                _ => bio.set_dev(&s.cow),
            }
            return bio.remap();
        }
        if bio.is_discard() {
            bio.end(true);
            return Mapped::submitted();
        }
        let mut st = s.state.write();
        let g = st.geometry();
        let chunk = g.chunk_of(bio.sector());
        if st.valid {
            let merging = st
                .merging
                .is_some_and(|(first, n)| chunk >= first && chunk < first + n as u64);
            let found = {
                let c = s.lock_complete(&st, chunk);
                let r = c.lookup(chunk);
                if r.is_some() && bio.is_write() && !merging {
                    s.track(&c, chunk);
                }
                r
            };
            if let Some(cow_chunk) = found {
                if bio.is_write() && merging {
                    bio.set_dev(&s.origin);
                    st.queued.push(bio);
                    return Mapped::submitted();
                }
                let sector = g.remap(bio.sector(), cow_chunk);
                bio.set_dev(&s.cow);
                bio.set_sector(sector);
                if bio.is_write() {
                    tracked.chunk = Some(chunk);
                }
                return bio.remap();
            }
        }
        bio.set_dev(&s.origin);
        if !bio.is_write() {
            return bio.remap();
        }
        drop(st);
        match do_origin(s.reg, s.origin.key(), bio, false) {
            Some(b) => b.remap(),
            None => Mapped::submitted(),
        }
    }
}

#[vtable]
impl TargetOps for SnapshotMerge {
    const NAME: &'static CStr = c_str!("snapshot-merge");
    const VERSION: [u32; 3] = [1, 5, 0];
    type PerBio = Tracked;

    fn ctr(setup: &mut Setup<'_>, argv: &[&[u8]]) -> Result<Pin<KBox<Self>>, CtrError> {
        let inner = Snapshot::build(setup, argv, true)?;
        KBox::pin(SnapshotMerge(inner), GFP_KERNEL)
            .map_err(|_| CtrError::new(c"Cannot allocate private snapshot structure", ENOMEM))
    }

    fn map(&self, _target: &Target, bio: OwnedBio, tracked: &mut Tracked) -> Mapped {
        self.merge_map(bio, tracked)
    }

    fn end_io(&self, _target: &Target, _bio: &Bio, tracked: &mut Tracked) {
        self.0.end_io_impl(tracked)
    }

    fn presuspend(&self, _target: &Target) {
        self.0.snap.stop_merge();
    }

    fn preresume(&self, _target: &Target) -> Result {
        self.0.preresume_impl()
    }

    fn resume(&self, target: &Target) {
        // Takes the exceptions over from the snapshot on the same COW.
        self.0.resume_impl(target);
        // snapshot-merge stands for the origin: its bios are split as the
        // origin's writes are (`get_origin_minimum_chunksize`).
        let s = &self.0.snap;
        let min = s.reg.read().minimum_chunk_size(s.origin.key());
        target.handle().set_max_io_len(min);
        Snap::start_merge(s);
    }

    fn status(&self, _target: &Target, kind: StatusType, out: &mut StatusBuf<'_>) {
        self.0.status_impl(kind, out, Self::NAME, Self::VERSION)
    }

    fn iterate_devices(&self, target: &Target, visit: &mut DeviceVisitor<'_>) -> c_int {
        self.0.iterate_impl(target, visit)
    }

    fn io_hints(&self, _target: &Target, limits: &mut QueueLimits<'_>) {
        self.0.io_hints_impl(limits)
    }
}
