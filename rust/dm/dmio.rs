//! Synchronous metadata I/O through the kernel's dm-io, and the workqueue
//! that runs it when the caller is inside a bio's submission.
//!
//! C header: [`include/linux/dm-io.h`](srctree/include/linux/dm-io.h).

use super::device::Bdev;
use crate::bindings as sys;
use core::ptr::NonNull;
use kernel::alloc::VVec;
use kernel::bindings;
use kernel::ffi::c_void;
use kernel::prelude::*;

/// A zeroed, vmalloc'ed buffer (dm-io's `DM_IO_VMA` needs vmalloc memory).
pub struct IoBuf(VVec<u8>);

impl IoBuf {
    /// `len` zero bytes.
    pub fn new(len: usize) -> Result<Self> {
        Ok(Self(VVec::from_elem(0u8, len, GFP_KERNEL)?))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// The bytes, to change.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// A dm-io client.
///
/// # Invariants
///
/// The pointer is a live client from `dm_io_client_create`, owned by this
/// value and destroyed only by its drop.
pub struct DmIo(NonNull<sys::dm_io_client>);

// SAFETY: dm-io clients may be used from any process context.
unsafe impl Send for DmIo {}
// SAFETY: as above; dm-io serialises internally.
unsafe impl Sync for DmIo {}

impl DmIo {
    /// A new client.
    pub fn new() -> Result<Self> {
        // SAFETY: `dm_io_client_create` (exported) takes nothing and returns
        // a client or an ERR_PTR, which `from_err_ptr` checks.
        let p = kernel::error::from_err_ptr(unsafe { sys::dm_io_client_create() })?;
        // INVARIANT: a client just created, owned by nothing else.
        NonNull::new(p).map(Self).ok_or(ENOMEM)
    }

    fn io(
        &self,
        dev: &Bdev,
        sector: u64,
        buf: *mut u8,
        len: usize,
        write: bool,
        commit: bool,
    ) -> Result {
        // SAFETY: the client is live; `buf` is vmalloc memory of `len` bytes
        // (an `IoBuf`), valid for the synchronous call.
        let r = unsafe {
            sys::dmsr_chunk_io(
                self.0.as_ptr(),
                dev.raw_bdev(),
                sector,
                (len >> 9) as u64,
                buf.cast::<c_void>(),
                i32::from(write),
                i32::from(commit),
            )
        };
        kernel::error::to_result(r)
    }

    /// Reads `buf.len()` bytes at `sector` of `dev`; sleeps.
    pub fn read(&self, dev: &Bdev, sector: u64, buf: &mut IoBuf) -> Result {
        let len = buf.0.len();
        self.io(dev, sector, buf.0.as_mut_ptr(), len, false, false)
    }

    /// Reads `n` regions of `dev`, the `i`-th at `first + i * stride`, into
    /// consecutive equal parts of the first `len` bytes of `buf` (so each
    /// is `len / n` bytes, a multiple of 512), with all `n` reads in flight
    /// at once; sleeps until all are done. `EIO` if one failed.
    pub fn read_strided(
        &self,
        dev: &Bdev,
        first: u64,
        stride: u64,
        n: usize,
        buf: &mut IoBuf,
        len: usize,
    ) -> Result {
        if n == 0 || len > buf.0.len() || len % n != 0 || (len / n) % 512 != 0 {
            return Err(EINVAL);
        }
        let count = ((len / n) >> 9) as u64;
        let n = u32::try_from(n).map_err(|_| EINVAL)?;
        // SAFETY: the client is live; `buf` is vmalloc memory of at least
        // `n * count` sectors (`len`, checked), exclusively ours and valid until the call returns,
        // which is after every read has completed.
        let r = unsafe {
            sys::dmsr_read_strided(
                self.0.as_ptr(),
                dev.raw_bdev(),
                first,
                stride,
                count,
                n,
                buf.0.as_mut_ptr().cast::<c_void>(),
            )
        };
        kernel::error::to_result(r)
    }

    /// Writes `buf` at `sector` of `dev`, with PREFLUSH|FUA if `commit`;
    /// sleeps.
    pub fn write(&self, dev: &Bdev, sector: u64, buf: &IoBuf, commit: bool) -> Result {
        // dm-io only reads the buffer for a write.
        self.io(
            dev,
            sector,
            buf.0.as_ptr().cast_mut(),
            buf.0.len(),
            true,
            commit,
        )
    }
}

impl Drop for DmIo {
    fn drop(&mut self) {
        // SAFETY: the client is live and idle (synchronous use only).
        unsafe { sys::dm_io_client_destroy(self.0.as_ptr()) };
    }
}

/// A `WQ_MEM_RECLAIM` workqueue to run metadata I/O on (upstream's
/// `ksnaphd`).
///
/// # Invariants
///
/// The pointer is a live workqueue from `dmsr_alloc_metadata_wq`, owned by
/// this value and destroyed only by its drop.
pub struct MetadataWq(NonNull<bindings::workqueue_struct>);

// SAFETY: workqueues are used from any context.
unsafe impl Send for MetadataWq {}
// SAFETY: `queue_work` and `flush_workqueue` may be called concurrently
// from any thread; the pointer itself never changes.
unsafe impl Sync for MetadataWq {}

/// Calls the closure `run` passed through the workqueue.
///
/// # Safety
///
/// `arg` points to the `&mut dyn FnMut()` of a `run` call still waiting.
unsafe extern "C" fn call_closure(arg: *mut c_void) {
    // SAFETY: `arg` is the `&mut dyn FnMut()` passed by `run`, alive until
    // `dmsr_run_on_wq` returns.
    let f = unsafe { &mut *arg.cast::<&mut dyn FnMut()>() };
    f();
}

impl MetadataWq {
    /// A new workqueue.
    pub fn new() -> Result<Self> {
        // SAFETY: plain constructor.
        // INVARIANT: a workqueue just allocated, owned by nothing else.
        NonNull::new(unsafe { sys::dmsr_alloc_metadata_wq() })
            .map(Self)
            .ok_or(ENOMEM)
    }

    /// Runs `f` on the workqueue and waits for it; sleeps. `f` runs on the
    /// workqueue's thread, so what it captures must be `Send`.
    pub fn run(&self, mut f: impl FnMut() + Send) {
        let mut dynf: &mut dyn FnMut() = &mut f;
        // SAFETY: the workqueue is live; the closure outlives the call,
        // which waits for the work to finish.
        unsafe {
            sys::dmsr_run_on_wq(
                self.0.as_ptr().cast(),
                Some(call_closure),
                (&mut dynf as *mut &mut dyn FnMut()).cast::<c_void>(),
            )
        };
    }
}

impl Drop for MetadataWq {
    fn drop(&mut self) {
        // SAFETY: the workqueue is live; nothing is queued (runs wait).
        unsafe { bindings::destroy_workqueue(self.0.as_ptr()) };
    }
}
