//! Bios as targets see them: borrowed ([`Bio`]) while dm core owns them,
//! owned ([`OwnedBio`]) once a target has taken one in `map`, and queued
//! ([`BioList`]) while they wait for a copy-on-write.
//!
//! C header: [`include/linux/blk_types.h`](srctree/include/linux/blk_types.h).
//!
//! An `OwnedBio` must be submitted, ended, or handed back to dm core; a
//! dropped one is ended with an I/O error rather than leaked, so a lost bio
//! fails loudly instead of hanging its submitter.

use super::device::Bdev;
use crate::bindings as sys;
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};
use kernel::bindings;
use kernel::types::Opaque;

/// A bio: the fields and operations targets use.
#[repr(transparent)]
pub struct Bio(Opaque<bindings::bio>);

const REQ_OP_MASK: u32 = (1 << bindings::REQ_OP_BITS) - 1;

impl Bio {
    /// # Safety
    ///
    /// `ptr` must point to a valid bio that stays valid and is not accessed
    /// elsewhere for `'a`.
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

    /// Data direction is write (`op_is_write`): writes, discards, ...
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

    /// Which of the `num_flush_bios`/`num_discard_bios` copies this is.
    pub fn target_nr(&self) -> u32 {
        // SAFETY: the bio is a dm clone being mapped (`from_raw` contract).
        unsafe { sys::dmsr_bio_target_nr(self.raw()) }
    }

    /// Points the bio at `dev`.
    pub fn set_dev(&mut self, dev: &Bdev) {
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

/// What `map` did with a bio; built only by consuming the [`OwnedBio`]
/// (`remap`, `kill`) or after keeping it (`submitted`), so a target cannot
/// both keep a bio and hand it back.
#[must_use]
pub struct Mapped(pub(crate) u32);

impl Mapped {
    /// The target kept the bio (queued, submitted or ended it itself).
    pub fn submitted() -> Self {
        Mapped(sys::DM_MAPIO_SUBMITTED)
    }
}

/// A bio this code is responsible for completing.
///
/// # Invariants
///
/// `0` is a valid bio that nobody else will submit or end.
pub struct OwnedBio(NonNull<bindings::bio>);

// SAFETY: a bio may be submitted or ended from any thread.
unsafe impl Send for OwnedBio {}

impl OwnedBio {
    /// # Safety
    ///
    /// `ptr` is a valid bio whose completion the caller hands over.
    pub(crate) unsafe fn from_raw(ptr: NonNull<bindings::bio>) -> Self {
        Self(ptr)
    }

    /// Gives up ownership: the raw bio, for wrappers that hand it to C.
    pub(crate) fn into_raw_ptr(self) -> *mut bindings::bio {
        let p = self.0.as_ptr();
        core::mem::forget(self);
        p
    }

    /// Gives the bio back to dm core to submit (`DM_MAPIO_REMAPPED`).
    pub fn remap(self) -> Mapped {
        self.into_raw_ptr();
        Mapped(sys::DM_MAPIO_REMAPPED)
    }

    /// Makes dm core fail the bio with an I/O error (`DM_MAPIO_KILL`).
    pub fn kill(self) -> Mapped {
        self.into_raw_ptr();
        Mapped(sys::DM_MAPIO_KILL)
    }

    /// Sends the bio to the device it points at (`submit_bio_noacct`).
    pub fn submit(self) {
        // SAFETY: we own the bio (type invariant) and give it to the block
        // layer, which completes it.
        unsafe { bindings::submit_bio_noacct(self.into_raw_ptr()) };
    }

    /// Completes the bio, successfully or with an I/O error.
    pub fn end(self, ok: bool) {
        let status = if ok { 0 } else { sys::DMSR_BLK_STS_IOERR };
        // SAFETY: we own the bio (type invariant); this completes it.
        unsafe { sys::dmsr_bio_endio_status(self.into_raw_ptr(), status) };
    }
}

impl Deref for OwnedBio {
    type Target = Bio;
    fn deref(&self) -> &Bio {
        // SAFETY: we own a valid bio (type invariant).
        unsafe { Bio::from_raw(self.0.as_ptr()) }
    }
}

impl DerefMut for OwnedBio {
    fn deref_mut(&mut self) -> &mut Bio {
        // SAFETY: we own a valid bio (type invariant).
        unsafe { Bio::from_raw(self.0.as_ptr()) }
    }
}

impl Drop for OwnedBio {
    fn drop(&mut self) {
        // SAFETY: we own the bio and nobody else will complete it.
        unsafe { sys::dmsr_bio_endio_status(self.0.as_ptr(), sys::DMSR_BLK_STS_IOERR) };
    }
}

/// A FIFO of owned bios linked through `bi_next` (`struct bio_list`): no
/// allocation, so bios can be queued under a spinlock.
pub struct BioList {
    head: *mut bindings::bio,
    tail: *mut bindings::bio,
}

// SAFETY: the list owns its bios, which may be completed from any thread.
unsafe impl Send for BioList {}
// SAFETY: through `&BioList` only `is_empty` can be called, which reads the
// head pointer without dereferencing it; every change takes `&mut self`.
unsafe impl Sync for BioList {}

impl BioList {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// Appends `bio`.
    pub fn push(&mut self, bio: OwnedBio) {
        let b = bio.into_raw_ptr();
        // SAFETY: `b` is a bio we own; `tail`, if set, is one we own too.
        unsafe {
            (*b).bi_next = ptr::null_mut();
            match self.tail.is_null() {
                true => self.head = b,
                false => (*self.tail).bi_next = b,
            }
        }
        self.tail = b;
    }

    /// Takes every bio, leaving the list empty.
    pub fn take(&mut self) -> BioList {
        core::mem::take(self)
    }

    /// Removes the first bio.
    pub fn pop(&mut self) -> Option<OwnedBio> {
        let b = NonNull::new(self.head)?;
        // SAFETY: `b` is a bio on our list, so valid and ours.
        unsafe {
            self.head = (*b.as_ptr()).bi_next;
            (*b.as_ptr()).bi_next = ptr::null_mut();
        }
        if self.head.is_null() {
            self.tail = ptr::null_mut();
        }
        // SAFETY: the bio was ours; ownership moves to the caller.
        Some(unsafe { OwnedBio::from_raw(b) })
    }
}

impl Default for BioList {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BioList {
    fn drop(&mut self) {
        while let Some(b) = self.pop() {
            b.end(false);
        }
    }
}
