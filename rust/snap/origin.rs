//! `snapshot-origin <dev>`: the device that snapshots are taken of.
//!
//! Every bio goes to the origin device. A write first makes every snapshot
//! that still shares its chunk copy the chunk (`do_origin`), and waits
//! until they all have. Like upstream, the target advertises no discard
//! support: a discard would change data the snapshots still share without
//! copying it first.

use super::registry::{do_origin, Registry};
use crate::dm::{
    CtrError, DeviceVisitor, Mapped, OwnedBio, Setup, StatusBuf, StatusType, TableDev, Target,
    TargetOps,
};
use crate::logic::table::parse_origin;
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::c_str;
use kernel::ffi::c_int;
use kernel::prelude::*;
use kernel::str::CStr;

/// No snapshot: writes need no splitting (upstream's 2^31 boundary).
const NO_SPLIT: u32 = 1 << 31;

/// A `snapshot-origin` target.
pub(crate) struct Origin {
    dev: TableDev,
    /// Writes are cut at multiples of the smallest snapshot chunk, so one
    /// write never spans two chunks of any snapshot; set at resume.
    split_boundary: AtomicU32,
    slot: OriginSlot,
}

/// The room this origin reserved in the registry, given back on drop.
struct OriginSlot(&'static Registry);

impl Drop for OriginSlot {
    fn drop(&mut self) {
        self.0.release_dm_origin();
    }
}

#[vtable]
impl TargetOps for Origin {
    const NAME: &'static CStr = c_str!("snapshot-origin");
    const VERSION: [u32; 3] = [1, 9, 0];
    type PerBio = ();

    fn ctr(setup: &mut Setup<'_>, argv: &[&[u8]]) -> Result<Pin<KBox<Self>>, CtrError> {
        let path = parse_origin(argv)?;
        let dev = setup
            .get_device(path)
            .map_err(|e| CtrError::new(c"Cannot get target device", e))?;
        setup.set_num_flush_bios(1);
        let reg = Registry::get().ok_or(CtrError::new(c"Snapshot registry missing", EINVAL))?;
        reg.reserve_dm_origin()
            .map_err(|_| CtrError::new(c"Cannot allocate private origin structure", ENOMEM))?;
        let reserved = OriginSlot(reg);
        KBox::pin(
            Origin {
                dev,
                split_boundary: AtomicU32::new(NO_SPLIT),
                slot: reserved,
            },
            GFP_KERNEL,
        )
        .map_err(|_| CtrError::new(c"Cannot allocate private origin structure", ENOMEM))
    }

    fn map(&self, _target: &Target, mut bio: OwnedBio, _data: &mut ()) -> Mapped {
        // The origin is mapped 1:1 from sector 0, as upstream (no offset).
        bio.set_dev(&self.dev);
        if bio.is_preflush() || !bio.is_write() {
            return bio.remap();
        }
        let boundary = self.split_boundary.load(Ordering::Relaxed);
        let available = boundary - (bio.sector() as u32 & (boundary - 1));
        if bio.sectors() > available {
            bio.accept_partial(available);
        }
        match do_origin(self.slot.0, self.dev.key(), bio, true) {
            Some(bio) => bio.remap(),
            None => Mapped::submitted(),
        }
    }

    fn resume(&self, target: &Target) {
        let b = self
            .slot
            .0
            .add_dm_origin(self.dev.key(), target.handle())
            .unwrap_or(NO_SPLIT);
        self.split_boundary.store(b, Ordering::Relaxed);
    }

    fn postsuspend(&self, target: &Target) {
        self.slot.0.remove_dm_origin(target.handle());
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
