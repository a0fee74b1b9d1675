//! The kernel's copier, dm-kcopyd: copies and zeroes chunks between block
//! devices with its own worker thread and memory reserve.
//!
//! C header: [`include/linux/dm-kcopyd.h`](srctree/include/linux/dm-kcopyd.h).
//!
//! Completions run in kcopyd's worker (process context, one at a time per
//! client). A job's context is a [`JobPtr`]: an owning pointer handed to C
//! for the job's lifetime and taken back, once, in its completion, so the
//! caller never deals in raw pointers and no allocation happens per copy.
//!
//! A client is closed ([`Kcopyd::close`]) before whatever its jobs' contexts
//! point into goes: closing refuses new jobs and waits until every callback
//! has returned (`dm_kcopyd_client_destroy`).

use super::device::Bdev;
use super::OwnedBio;
use crate::bindings as sys;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use kernel::bindings;
use kernel::ffi::{c_int, c_ulong, c_void};
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::ForeignOwnable;

/// Where a copy reads or writes.
pub struct Region<'a> {
    /// The device.
    pub dev: &'a Bdev,
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

/// An owning pointer that can travel through C as a job's `void *`.
///
/// # Safety
///
/// [`JobPtr::from_raw`] of a pointer from [`JobPtr::into_raw`] gives back
/// the same value, whose ownership the raw pointer held meanwhile; and what
/// a shared reference to the value reaches stays valid and in place until
/// the value is dropped, while it is raw too (the value is a pointer to
/// what it owns, or owns it through pointers). The regions of a job are
/// borrowed from the job ([`Kcopyd::copy`] asks the job for them), and
/// kcopyd uses their devices until the job's completion: so a region can
/// never name a device that goes before its copy ends.
pub unsafe trait JobPtr: Sized + Send {
    /// Gives up ownership to a raw pointer (never null).
    fn into_raw(self) -> *mut c_void;
    /// Takes ownership back.
    ///
    /// # Safety
    ///
    /// `p` came from `into_raw` and is taken back once.
    unsafe fn from_raw(p: *mut c_void) -> Self;
}

// SAFETY: `into_foreign`/`from_foreign` are `Arc`'s own round trip.
unsafe impl<T: Send + Sync + 'static> JobPtr for Arc<T> {
    fn into_raw(self) -> *mut c_void {
        self.into_foreign().cast_mut()
    }
    unsafe fn from_raw(p: *mut c_void) -> Self {
        // SAFETY: `p` came from `into_foreign` (our contract), once.
        unsafe { <Arc<T> as ForeignOwnable>::from_foreign(p) }
    }
}

/// The context of a copy: told once when the copy is done.
pub trait CopyJob: JobPtr {
    /// Called in kcopyd's worker when the job finished; `ok` is false after
    /// a read or write error.
    fn done(self, ok: bool);

    /// The same, telling a read error from a write error; by default
    /// [`CopyJob::done`].
    fn done_detail(self, read_ok: bool, write_ok: bool) {
        self.done(read_ok && write_ok);
    }
}

/// Most destinations one copy writes (`DM_KCOPYD_MAX_REGIONS`).
pub const MAX_DESTS: usize = sys::DM_KCOPYD_MAX_REGIONS as usize;

/// The context of a copy to several destinations ([`Kcopyd::copy_multi`]).
pub trait MultiCopyJob: JobPtr {
    /// Called in kcopyd's worker when the job finished: `read_ok` is false
    /// after a read error (no destination holds the data), bit `i` of
    /// `write_err` set after a write error on destination `i`.
    fn done_multi(self, read_ok: bool, write_err: u64);
}

/// The context of a zeroing bio ([`Kcopyd::zero_bio`]).
pub trait ZeroJob: JobPtr {
    /// The chunk was zeroed (or not: `ok`); `bio` is the caller's again.
    fn zeroed(self, bio: OwnedBio, ok: bool);
}

/// Where a whole-chunk write waits for its completion: a job that can stand
/// for a write ([`Kcopyd::write_full`]) carries one.
#[derive(Default)]
pub struct FullBioSlot {
    bio: AtomicPtr<bindings::bio>,
    end_io: AtomicUsize,
    callback: AtomicPtr<c_void>,
    done: AtomicBool,
}

impl FullBioSlot {
    /// An empty slot.
    pub const fn new() -> Self {
        Self {
            bio: AtomicPtr::new(ptr::null_mut()),
            end_io: AtomicUsize::new(0),
            callback: AtomicPtr::new(ptr::null_mut()),
            done: AtomicBool::new(false),
        }
    }

    /// The bio written through this slot, with its own completion back,
    /// once its write has finished; `None` before that or if there is none.
    pub fn take(&self) -> Option<OwnedBio> {
        if !self.done.load(Ordering::Acquire) {
            return None;
        }
        let b = NonNull::new(self.bio.swap(ptr::null_mut(), Ordering::AcqRel))?;
        let end_io = self.end_io.load(Ordering::Relaxed);
        // SAFETY: `end_io` holds the bio's original `bi_end_io`, saved by
        // `write_full` (a function pointer or 0 for `None`).
        let end_io: bindings::bio_end_io_t = unsafe { core::mem::transmute(end_io) };
        // SAFETY: the write finished (`done`), so the bio is ours again: we
        // restore its completion and own it from now on.
        unsafe {
            (*b.as_ptr()).bi_end_io = end_io;
            Some(OwnedBio::from_raw(b))
        }
    }
}

/// A job whose context can stand for a whole-chunk write.
///
/// # Safety
///
/// `full_slot` returns the same slot every time, and it stays valid (and
/// in place) until the job's [`CopyJob::done`] has been called.
pub unsafe trait HasFullSlot: CopyJob {
    /// The job's slot.
    fn full_slot(&self) -> &FullBioSlot;
}

/// A kcopyd client; closing or dropping it waits for its jobs.
pub struct Kcopyd {
    client: AtomicPtr<sys::dm_kcopyd_client>,
    /// Submissions in progress (see [`Kcopyd::close`]).
    users: AtomicUsize,
    closed: AtomicBool,
}

/// kcopyd's completion callback for jobs of type `J`.
///
/// # Safety
///
/// Only kcopyd calls it, once per job, with the job's `context`.
unsafe extern "C" fn notify<J: CopyJob>(read_err: c_int, write_err: c_ulong, context: *mut c_void) {
    // SAFETY: `context` is the job given to this copy by `into_raw`, and
    // kcopyd notifies once.
    let job = unsafe { J::from_raw(context) };
    job.done_detail(read_err == 0, write_err == 0);
}

/// kcopyd's completion callback for copies to several destinations.
///
/// # Safety
///
/// Only kcopyd calls it, once per job, with the job's `context`.
unsafe extern "C" fn notify_multi<J: MultiCopyJob>(
    read_err: c_int,
    write_err: c_ulong,
    context: *mut c_void,
) {
    // SAFETY: `context` is the job given to this copy by `into_raw`, and
    // kcopyd notifies once.
    let job = unsafe { J::from_raw(context) };
    job.done_multi(read_err == 0, write_err as u64);
}

/// kcopyd's completion callback of a zeroing bio: `context` is the bio,
/// its `bi_private` the job.
///
/// # Safety
///
/// Only kcopyd calls it, once, for a job set up by `zero_bio`.
unsafe extern "C" fn notify_zero<J: ZeroJob>(
    read_err: c_int,
    write_err: c_ulong,
    context: *mut c_void,
) {
    let Some(b) = NonNull::new(context.cast::<bindings::bio>()) else {
        return;
    };
    // SAFETY: `zero_bio` handed the bio over as the context and its job as
    // `bi_private`; both come back once, here.
    let (bio, job) = unsafe { (OwnedBio::from_raw(b), J::from_raw((*b.as_ptr()).bi_private)) };
    job.zeroed(bio, read_err == 0 && write_err == 0);
}

/// `bi_end_io` of a whole-chunk write: hands the completion to kcopyd.
///
/// # Safety
///
/// Only the block layer calls it, on a bio set up by `write_full`.
unsafe extern "C" fn full_bio_end_io(bio: *mut bindings::bio) {
    // SAFETY: set up in `write_full`: `bi_private` is the job's slot, valid
    // until the job's `done`, which the callback below leads to, so the
    // slot is touched only before it.
    unsafe {
        let slot = &*(*bio).bi_private.cast::<FullBioSlot>();
        let cb = slot.callback.load(Ordering::Acquire);
        let err = c_ulong::from((*bio).bi_status != 0);
        slot.done.store(true, Ordering::Release);
        sys::dm_kcopyd_do_callback(cb, 0, err);
    }
}

impl Kcopyd {
    /// A client sharing the module's `snapshot_copy_throttle`.
    pub fn new() -> Result<Self> {
        // SAFETY: plain constructor; returns a pointer or an ERR_PTR.
        let p = unsafe { sys::dmsr_kcopyd_client_create() };
        let p = kernel::error::from_err_ptr(p)?;
        Ok(Self {
            client: AtomicPtr::new(p),
            users: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// Runs `f` with the live client, unless closed. The user count and
    /// the closed flag are each written before the other is read (SeqCst),
    /// so `close` either sees this user or this user sees it closed.
    fn with_client<R>(&self, f: impl FnOnce(*mut sys::dm_kcopyd_client) -> R) -> Option<R> {
        self.users.fetch_add(1, Ordering::SeqCst);
        let c = self.client.load(Ordering::SeqCst);
        let r = if self.closed.load(Ordering::SeqCst) || c.is_null() {
            None
        } else {
            Some(f(c))
        };
        self.users.fetch_sub(1, Ordering::SeqCst);
        r
    }

    /// Copies the source of `regions(&job)` to its destination, then
    /// calls `job.done()`. The regions are borrowed from the job, which
    /// keeps their devices until then ([`JobPtr`]). May sleep. A closed
    /// client gives the job back.
    pub fn copy<J: CopyJob>(
        &self,
        job: J,
        regions: impl for<'j> FnOnce(&'j J) -> [Region<'j>; 2],
    ) -> Result<(), J> {
        let [mut s, mut d] = regions(&job).map(|r| r.raw());
        let mut job = Some(job);
        self.with_client(|c| {
            let Some(j) = job.take() else {
                return;
            };
            let ctx = j.into_raw();
            // SAFETY: the client is live (`with_client`); regions are
            // copied by kcopyd; `ctx` owns the job until `notify`, which
            // kcopyd calls once.
            unsafe { sys::dm_kcopyd_copy(c, &mut s, 1, &mut d, 0, Some(notify::<J>), ctx) };
        });
        job.map_or(Ok(()), Err)
    }

    /// Copies the source of `regions(&job)` to each of its destinations
    /// (at most [`MAX_DESTS`], all as long as the source) with one read,
    /// then calls `job.done_multi()`. A write error on one destination
    /// does not stop the others (`DM_KCOPYD_IGNORE_ERROR`): each is told
    /// apart in `write_err`, bit `i` for the `i`-th destination present.
    /// The regions are borrowed from the job ([`JobPtr`]). May sleep.
    /// Gives the job back if the client is closed or there is no
    /// destination.
    pub fn copy_multi<J: MultiCopyJob>(
        &self,
        job: J,
        regions: impl for<'j> FnOnce(&'j J) -> (Region<'j>, [Option<Region<'j>>; MAX_DESTS]),
    ) -> Result<(), J> {
        let (mut s, dests) = {
            let (src, dests) = regions(&job);
            (src.raw(), dests.map(|r| r.map(|r| r.raw())))
        };
        let mut d: [sys::dm_io_region; MAX_DESTS] = core::array::from_fn(|_| Default::default());
        let mut n = 0u32;
        for x in dests.into_iter().flatten() {
            let Some(r) = d.get_mut(n as usize) else {
                return Err(job);
            };
            *r = x;
            n += 1;
        }
        if n == 0 {
            return Err(job);
        }
        let flags = 1u32 << sys::DM_KCOPYD_IGNORE_ERROR;
        let mut job = Some(job);
        self.with_client(|c| {
            let Some(j) = job.take() else {
                return;
            };
            let ctx = j.into_raw();
            // SAFETY: the client is live (`with_client`); kcopyd copies the
            // `n` regions of `d` before returning; `ctx` owns the job until
            // `notify_multi`, which kcopyd calls once.
            unsafe {
                sys::dm_kcopyd_copy(
                    c,
                    &mut s,
                    n,
                    d.as_mut_ptr(),
                    flags,
                    Some(notify_multi::<J>),
                    ctx,
                )
            };
        });
        job.map_or(Ok(()), Err)
    }

    /// Zeroes `dest(&job)` (the chunk `bio` maps to, borrowed from the
    /// job: [`JobPtr`]), then calls `job.zeroed()` with the bio.
    /// `bi_private` carries the job, as upstream's `zero_exception`. A
    /// closed client gives both back.
    pub fn zero_bio<J: ZeroJob>(
        &self,
        bio: OwnedBio,
        job: J,
        dest: impl for<'j> FnOnce(&'j J) -> Region<'j>,
    ) -> Result<(), (OwnedBio, J)> {
        let mut d = dest(&job).raw();
        let mut parts = Some((bio, job));
        self.with_client(|c| {
            let Some((bio, job)) = parts.take() else {
                return;
            };
            let b = bio.into_raw_ptr();
            // SAFETY: we own the bio; `bi_private` is free for the target's
            // use on a dm clone, and now owns the job; the client is live
            // and kcopyd calls `notify_zero` once with the bio.
            unsafe {
                (*b).bi_private = job.into_raw();
                sys::dm_kcopyd_zero(c, 1, &mut d, 0, Some(notify_zero::<J>), b.cast());
            }
        });
        parts.map_or(Ok(()), Err)
    }

    /// Writes `bio` (already pointing at its COW chunk) in place of a copy,
    /// as upstream's whole-chunk writes do: once it is written, `job.done()`
    /// runs in kcopyd's worker instead of the bio's own completion, and the
    /// job's [`FullBioSlot::take`] gives the bio back to be ended.
    pub fn write_full<J: HasFullSlot>(&self, bio: OwnedBio, job: J) -> Result<(), (OwnedBio, J)> {
        let mut parts = Some((bio, job));
        self.with_client(|c| {
            let Some((bio, job)) = parts.take() else {
                return;
            };
            let slot: *const FullBioSlot = job.full_slot();
            let ctx = job.into_raw();
            // SAFETY: the client is live; the callback is consumed by
            // `dm_kcopyd_do_callback` in `full_bio_end_io`; `ctx` owns the
            // job until `notify`.
            let cb = unsafe { sys::dm_kcopyd_prepare_callback(c, Some(notify::<J>), ctx) };
            let b = bio.into_raw_ptr();
            // SAFETY: the slot stays valid until the job's `done`
            // (`HasFullSlot`), which follows the bio's end; we own the bio
            // and redirect its completion there, saving the original.
            unsafe {
                let slot = &*slot;
                slot.end_io
                    .store((*b).bi_end_io.map_or(0, |f| f as usize), Ordering::Relaxed);
                slot.bio.store(b, Ordering::Relaxed);
                slot.done.store(false, Ordering::Relaxed);
                // Last, releasing the stores above to `full_bio_end_io`.
                slot.callback.store(cb, Ordering::Release);
                (*b).bi_end_io = Some(full_bio_end_io);
                (*b).bi_private = ptr::from_ref(slot).cast_mut().cast();
                bindings::submit_bio_noacct(b);
            }
        });
        parts.map_or(Ok(()), Err)
    }

    /// Refuses new jobs, waits for submissions in progress, then destroys
    /// the client, which waits until every job's callback has returned.
    /// Call before anything the jobs' contexts use goes away. Sleeps.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        super::poll_until(100, || self.users.load(Ordering::SeqCst) == 0);
        let c = self.client.swap(ptr::null_mut(), Ordering::SeqCst);
        if !c.is_null() {
            // SAFETY: the client is live and no one can submit to it any
            // more; this waits for its jobs and frees it.
            unsafe { sys::dm_kcopyd_client_destroy(c) };
        }
    }
}

impl Drop for Kcopyd {
    fn drop(&mut self) {
        self.close();
    }
}
