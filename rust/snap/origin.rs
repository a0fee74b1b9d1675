//! `snapshot-origin <dev>`: the device that snapshots are taken of.
//!
//! Every bio goes to the origin device. With snapshots (a later step), a
//! write first makes every snapshot that still shares the chunk copy it.
//! Like upstream, the target advertises no discard support: a discard would
//! change data the snapshots still share without copying it first.

use crate::dm::Bio;
use crate::dm::{
    CtrError, DeviceVisitor, MapResult, Setup, StatusBuf, StatusType, TableDev, Target, TargetOps,
};
use crate::logic::table::parse_origin;
use core::fmt::Write;
use kernel::c_str;
use kernel::ffi::c_int;
use kernel::prelude::*;
use kernel::str::CStr;

/// A `snapshot-origin` target.
pub(crate) struct Origin {
    dev: TableDev,
}

#[vtable]
impl TargetOps for Origin {
    const NAME: &'static CStr = c_str!("snapshot-origin");
    const VERSION: [u32; 3] = [1, 9, 0];

    fn ctr(setup: &mut Setup<'_>, argv: &[&[u8]]) -> Result<Pin<KBox<Self>>, CtrError> {
        let path = parse_origin(argv)?;
        let dev = setup
            .get_device(path)
            .map_err(|e| CtrError::new(c"Cannot get target device", e))?;
        setup.set_num_flush_bios(1);
        KBox::pin(Origin { dev }, GFP_KERNEL)
            .map_err(|_| CtrError::new(c"Cannot allocate private origin structure", ENOMEM))
    }

    fn map(&self, _target: &Target, bio: &mut Bio) -> MapResult {
        // The origin is mapped 1:1 from sector 0, as upstream (no offset).
        bio.set_dev(&self.dev);
        MapResult::Remapped
    }

    fn status(&self, _target: &Target, kind: StatusType, out: &mut StatusBuf<'_>) {
        if kind == StatusType::Table {
            let _ = write!(out, "{}", self.dev.name());
        }
    }

    fn iterate_devices(&self, target: &Target, visit: &mut DeviceVisitor<'_>) -> c_int {
        visit.visit(&self.dev, 0, target.len())
    }
}
