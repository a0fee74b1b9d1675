//! The kernel's copier, dm-kcopyd: copies and zeroes chunks between block
//! devices with its own worker thread and memory reserve.
//!
//! C header: [`include/linux/dm-kcopyd.h`](srctree/include/linux/dm-kcopyd.h).
//!
//! Completions run in kcopyd's worker (process context, one at a time per
//! client). The context of a job is a [`CopyJob`] implementor passed by
//! pointer: no allocation per copy.

use super::device::TableDev;
use super::OwnedBio;
use crate::bindings as sys;
use core::ptr::NonNull;
use kernel::bindings;
use kernel::ffi::{c_int, c_ulong, c_void};
use kernel::prelude::*;

/// Where a copy reads or writes.
pub struct Region<'a> {
    /// The device.
    pub dev: &'a TableDev,
    /// First sector.
    pub sector: u64,
    /// Length in sectors.
    pub count: u64,
}

impl Region<'_> {
    fn raw(&self) -> sys::dm_io_region {
        sys::dm_io_region {
            bdev: self.dev.raw_bdev(),
            sector: self.sector,
            count: self.count,
        }
    }
}

/// The context of a copy: told once when the copy is done.
pub trait CopyJob {
    /// Called in kcopyd's worker when the job finished; `ok` is false after
    /// a read or write error.
    ///
    /// # Safety
    ///
    /// `job` is the pointer given to [`Kcopyd::copy`] or
    /// [`Kcopyd::write_bio`]; called exactly once per job.
    unsafe fn done(job: NonNull<Self>, ok: bool);
}

/// A kcopyd client; destroying it waits for its jobs.
pub struct Kcopyd(NonNull<sys::dm_kcopyd_client>);

// SAFETY: a kcopyd client is used from any context that may sleep.
unsafe impl Send for Kcopyd {}
// SAFETY: `dm_kcopyd_copy` and friends may be called concurrently.
unsafe impl Sync for Kcopyd {}

/// kcopyd's completion callback for jobs of type `J`.
///
/// # Safety
///
/// Only kcopyd calls it, once per job, with the job's `context`.
unsafe extern "C" fn notify<J: CopyJob>(read_err: c_int, write_err: c_ulong, context: *mut c_void) {
    if let Some(job) = NonNull::new(context.cast::<J>()) {
        // SAFETY: `context` is the job pointer given with this copy, and
        // kcopyd notifies once.
        unsafe { J::done(job, read_err == 0 && write_err == 0) };
    }
}

impl Kcopyd {
    /// A client sharing the module's `snapshot_copy_throttle`.
    pub fn new() -> Result<Self> {
        // SAFETY: plain constructor; returns a pointer or an ERR_PTR.
        let p = unsafe { sys::dmsr_kcopyd_client_create() };
        let p = kernel::error::from_err_ptr(p)?;
        NonNull::new(p).map(Self).ok_or(ENOMEM)
    }

    /// Copies `src` to `dest`, then calls `J::done(job)`. May sleep.
    ///
    /// # Safety
    ///
    /// `job` must stay valid, and not be used by anyone else in a way that
    /// conflicts with `J::done`, until `J::done(job)` is called; nothing
    /// but that call may end it.
    pub unsafe fn copy<J: CopyJob>(&self, src: &Region<'_>, dest: &Region<'_>, job: NonNull<J>) {
        let mut s = src.raw();
        let mut d = dest.raw();
        // SAFETY: the client is live; regions are valid for the call (kcopyd
        // copies them); `job` stays valid until `done` (our caller's
        // contract), which kcopyd calls once.
        unsafe {
            sys::dm_kcopyd_copy(
                self.0.as_ptr(),
                &mut s,
                1,
                &mut d,
                0,
                Some(notify::<J>),
                job.as_ptr().cast(),
            )
        };
    }

    /// Zeroes `dest`, then calls `J::done(job)`. May sleep.
    ///
    /// # Safety
    ///
    /// As for [`Kcopyd::copy`].
    pub unsafe fn zero<J: CopyJob>(&self, dest: &Region<'_>, job: NonNull<J>) {
        let mut d = dest.raw();
        // SAFETY: as in `copy`: the client is live, the region is copied
        // by kcopyd, and `job` outlives its `done` (our caller's contract).
        unsafe {
            sys::dm_kcopyd_zero(
                self.0.as_ptr(),
                1,
                &mut d,
                0,
                Some(notify::<J>),
                job.as_ptr().cast(),
            )
        };
    }

    /// Makes `bio` (already pointing at its destination) stand in for a
    /// copy, as upstream's whole-chunk writes do: once it is written,
    /// `J::done(job)` runs in kcopyd's worker instead of the bio's own
    /// completion. Keep the returned [`FullBio`] where `done` finds it, then
    /// submit the bio; [`FullBio::finish`] gives it back to be ended.
    ///
    /// # Safety
    ///
    /// As for [`Kcopyd::copy`]: `job` stays valid until `J::done(job)`,
    /// which runs once the bio has been submitted and written.
    pub unsafe fn redirect_completion<J: CopyJob>(
        &self,
        bio: &mut OwnedBio,
        job: NonNull<J>,
    ) -> FullBio {
        let b = bio.as_ptr();
        // SAFETY: the client is live; the callback is kcopyd-allocated and
        // consumed by `dm_kcopyd_do_callback` in `full_bio_end_io`.
        let cb = unsafe {
            sys::dm_kcopyd_prepare_callback(self.0.as_ptr(), Some(notify::<J>), job.as_ptr().cast())
        };
        // SAFETY: we own `b`; we redirect its completion to ourselves, keeping
        // the original to restore before the real completion.
        let saved = unsafe {
            let saved = (*b).bi_end_io;
            (*b).bi_end_io = Some(full_bio_end_io);
            (*b).bi_private = cb;
            saved
        };
        FullBio {
            bio: b,
            end_io: saved,
        }
    }
}

/// `bi_end_io` of a whole-chunk write: hands the completion to kcopyd.
///
/// # Safety
///
/// Only the block layer calls it, on a bio set up by `redirect_completion`.
unsafe extern "C" fn full_bio_end_io(bio: *mut bindings::bio) {
    // SAFETY: set up in `redirect_completion`: `bi_private` is the
    // prepared callback.
    unsafe {
        let cb = (*bio).bi_private;
        let err = c_ulong::from((*bio).bi_status != 0);
        sys::dm_kcopyd_do_callback(cb, 0, err);
    }
}

/// A whole-chunk write in flight through [`Kcopyd::redirect_completion`]:
/// the bio and its original `bi_end_io`, to complete it once its exception
/// is committed.
pub struct FullBio {
    bio: *mut bindings::bio,
    end_io: bindings::bio_end_io_t,
}

// SAFETY: owns the bio once its write finished; bios may be ended anywhere.
unsafe impl Send for FullBio {}

impl FullBio {
    /// Restores the original completion and returns the bio, to end it.
    ///
    /// # Safety
    ///
    /// Only after the job's `done` was called (the write has finished).
    pub unsafe fn finish(self) -> OwnedBio {
        // SAFETY: the write completed, so we own the bio again (contract).
        unsafe {
            (*self.bio).bi_end_io = self.end_io;
            OwnedBio::from_raw(NonNull::new_unchecked(self.bio))
        }
    }
}

impl Drop for Kcopyd {
    fn drop(&mut self) {
        // SAFETY: the client is live; this waits for its jobs and frees it.
        unsafe { sys::dm_kcopyd_client_destroy(self.0.as_ptr()) };
    }
}
