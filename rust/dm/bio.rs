//! Bios as a target sees them in `map`.
//!
//! C header: [`include/linux/blk_types.h`](srctree/include/linux/blk_types.h).

use super::device::TableDev;
use crate::bindings as sys;
use kernel::bindings;
use kernel::types::Opaque;

/// A bio handed to a target by dm core. Only ever seen by reference, for the
/// duration of the callback that received it.
#[repr(transparent)]
pub struct Bio(Opaque<bindings::bio>);

const REQ_OP_MASK: u32 = (1 << bindings::REQ_OP_BITS) - 1;

impl Bio {
    /// # Safety
    ///
    /// `ptr` must point to a valid bio that stays valid and is not accessed
    /// elsewhere for `'a` (dm core guarantees this within `map`/`end_io`).
    pub(crate) unsafe fn from_raw<'a>(ptr: *mut bindings::bio) -> &'a mut Bio {
        // SAFETY: `Bio` is `repr(transparent)` over `Opaque<bio>`; validity and
        // exclusivity come from the caller.
        unsafe { &mut *ptr.cast::<Bio>() }
    }

    fn raw(&self) -> *mut bindings::bio {
        self.0.get()
    }

    fn opf(&self) -> u32 {
        // SAFETY: the bio is valid (`from_raw` contract).
        unsafe { (*self.raw()).bi_opf }
    }

    /// The operation (`REQ_OP_*`).
    pub fn op(&self) -> u32 {
        self.opf() & REQ_OP_MASK
    }

    /// Data direction is write (`op_is_write`): writes, discards, flushes.
    pub fn is_write(&self) -> bool {
        self.op() & 1 != 0
    }

    /// Carries `REQ_PREFLUSH` (dm only sends empty ones to targets).
    pub fn is_preflush(&self) -> bool {
        self.opf() & (1 << bindings::req_flag_bits___REQ_PREFLUSH) != 0
    }

    /// Is a discard.
    pub fn is_discard(&self) -> bool {
        self.op() == bindings::req_op_REQ_OP_DISCARD
    }

    /// First sector (absolute in the dm device until remapped).
    pub fn sector(&self) -> u64 {
        // SAFETY: the bio is valid (`from_raw` contract).
        unsafe { (*self.raw()).bi_iter.bi_sector }
    }

    /// Moves the bio to `sector` of its (new) device.
    pub fn set_sector(&mut self, sector: u64) {
        // SAFETY: the bio is valid and ours to change (`from_raw` contract).
        unsafe { (*self.raw()).bi_iter.bi_sector = sector };
    }

    /// Size in sectors (`bio_sectors`).
    pub fn sectors(&self) -> u32 {
        // SAFETY: the bio is valid (`from_raw` contract).
        unsafe { (*self.raw()).bi_iter.bi_size >> 9 }
    }

    /// Points the bio at `dev`.
    pub fn set_dev(&mut self, dev: &TableDev) {
        // SAFETY: the bio is valid and ours to change; `dev` holds its bdev.
        unsafe { sys::dmsr_bio_set_dev(self.raw(), dev.raw_bdev()) };
    }

    /// Keeps only the first `sectors` of the bio; dm core resubmits the rest
    /// (`dm_accept_partial_bio`). Only valid in `map` for normal I/O.
    pub fn accept_partial(&mut self, sectors: u32) {
        // SAFETY: the bio is valid and is being mapped (`from_raw` contract).
        unsafe { sys::dm_accept_partial_bio(self.raw(), sectors) };
    }
}
