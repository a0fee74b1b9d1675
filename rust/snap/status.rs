//! `dmsetup status` and `table` lines and the IMA measurement of the
//! `snapshot` and `snapshot-merge` targets (`snapshot_status`): the same
//! strings as upstream, in the same order of precedence.

use super::snapshot::Snapshot;
use crate::dm::{StatusBuf, StatusType};
use core::fmt::Write;
use kernel::str::CStr;

impl Snapshot {
    /// `snapshot_status` of either target (`name` and `version` for IMA).
    pub(super) fn status_impl(
        &self,
        kind: StatusType,
        out: &mut StatusBuf<'_>,
        name: &CStr,
        version: [u32; 3],
    ) {
        let s = &*self.snap;
        let _ = match kind {
            StatusType::Info => {
                let st = s.state.write();
                if !st.valid {
                    out.write_str("Invalid")
                } else if st.merge_failed {
                    out.write_str("Merge failed")
                } else if st.overflowed {
                    out.write_str("Overflow")
                } else if st.handover_dest {
                    // Not resumed yet: upstream's store has chunk size 0
                    // and nothing allocated, and counts the COW's size.
                    write!(out, "0/{} 0", s.cow.nr_sectors())
                } else {
                    let u = st.alloc().store.usage(st.geometry(), s.cow.nr_sectors());
                    write!(out, "{}/{} {}", u.allocated, u.total, u.metadata)
                }
            }
            StatusType::Table => {
                let _ = write!(out, "{} {}", self.origin_dev.name(), self.cow_dev.name());
                let st = s.state.read();
                // A destination not yet resumed has no chunk size yet.
                let chunk = if st.handover_dest {
                    0
                } else {
                    st.geometry().sectors()
                };
                let _ = st.alloc().store.status_table(out, chunk, s.po);
                let n = u32::from(s.discard_zeroes_cow) + u32::from(s.discard_passdown_origin);
                if n > 0 {
                    let _ = write!(out, " {}", n);
                    if s.discard_zeroes_cow {
                        let _ = out.write_str(" discard_zeroes_cow");
                    }
                    if s.discard_passdown_origin {
                        let _ = out.write_str(" discard_passdown_origin");
                    }
                }
                Ok(())
            }
            StatusType::Ima => {
                let st = s.state.read();
                let yn = |b: bool| if b { 'y' } else { 'n' };
                let [major, minor, patch] = version;
                write!(
                    out,
                    "target_name={},target_version={}.{}.{},snap_origin_name={},snap_cow_name={},snap_valid={},snap_merge_failed={},snapshot_overflowed={};",
                    name,
                    major,
                    minor,
                    patch,
                    self.origin_dev.name(),
                    self.cow_dev.name(),
                    yn(st.valid),
                    yn(st.merge_failed),
                    yn(st.overflowed)
                )
            }
        };
    }
}
