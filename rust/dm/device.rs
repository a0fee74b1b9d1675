//! Table devices: block devices a target opened with `dm_get_device()`.

use crate::bindings as sys;
use core::ptr::NonNull;
use kernel::bindings;
use kernel::prelude::*;
use kernel::str::CStr;

/// Which block device a [`TableDev`] opened: equal for two opens of the
/// same device. Only compared, never dereferenced.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BdevKey(usize);

/// A device opened for a target's table; closed (`dm_put_device`) on drop.
///
/// # Invariants
///
/// `dev` was returned by `dm_get_device(ti, ...)` and is not yet put; `ti` is
/// the target it was opened for. dm core calls the target's `dtr`, which
/// drops the target's private data and with it every `TableDev`, before it
/// frees `ti`, so `ti` outlives `self`.
pub struct TableDev {
    ti: NonNull<sys::dm_target>,
    dev: NonNull<sys::dm_dev>,
}

// SAFETY: `dm_dev` is refcounted by dm core and may be used and put from any
// thread; `TableDev` only reads its immutable fields.
unsafe impl Send for TableDev {}
// SAFETY: all methods take `&self` and only read fields dm core never changes
// while the device is held.
unsafe impl Sync for TableDev {}

impl TableDev {
    /// Opens `path` (a path or `major:minor`) with the table's mode.
    ///
    /// # Safety
    ///
    /// `ti` must be a valid target in its constructor, and the returned
    /// value must be dropped before `ti` is freed (store it in the target's
    /// private data).
    pub(crate) unsafe fn open(
        ti: *mut sys::dm_target,
        path: &CStr,
        mode: bindings::blk_mode_t,
    ) -> Result<Self> {
        let mut dev: *mut sys::dm_dev = core::ptr::null_mut();
        // SAFETY: `ti` is valid (function contract), `path` is NUL-terminated,
        // `dev` is a valid out-pointer.
        let r = unsafe { sys::dm_get_device(ti, path.as_char_ptr(), mode, &mut dev) };
        if r != 0 {
            return Err(Error::from_errno(r));
        }
        match (NonNull::new(ti), NonNull::new(dev)) {
            (Some(ti), Some(dev)) => Ok(Self { ti, dev }),
            _ => Err(EINVAL),
        }
    }

    fn bdev(&self) -> *mut bindings::block_device {
        // SAFETY: `dev` is valid while held (type invariant).
        unsafe { (*self.dev.as_ptr()).bdev }
    }

    /// dm's name for the device, `major:minor`: what status/table print.
    pub fn name(&self) -> &CStr {
        // SAFETY: `dev` is valid (type invariant) and dm core fills `name`
        // with `format_dev_t`, always NUL-terminated within its 16 bytes.
        unsafe { CStr::from_char_ptr((*self.dev.as_ptr()).name.as_ptr()) }
    }

    /// Size in 512-byte sectors.
    pub fn nr_sectors(&self) -> u64 {
        // SAFETY: the bdev of a held `dm_dev` is valid.
        unsafe { sys::dmsr_bdev_nr_sectors(self.bdev()) }
    }

    /// Logical block size in bytes.
    pub fn logical_block_size(&self) -> u32 {
        // SAFETY: the bdev of a held `dm_dev` is valid.
        unsafe { sys::dmsr_bdev_logical_block_size(self.bdev()) }
    }

    /// True when both open the same block device.
    pub fn same_bdev(&self, other: &TableDev) -> bool {
        self.bdev() == other.bdev()
    }

    /// Flushes the device's volatile write cache (`blkdev_issue_flush`).
    /// Sleeps.
    pub fn flush(&self) -> Result {
        // SAFETY: the bdev of a held `dm_dev` is valid; a flush may be
        // issued from any process context.
        kernel::error::to_result(unsafe { bindings::blkdev_issue_flush(self.bdev()) })
    }

    /// The block device's identity, to find what else uses it (the
    /// registry keys origins by it, as upstream keys by `bdev`).
    pub fn key(&self) -> BdevKey {
        BdevKey(self.bdev() as usize)
    }

    pub(in crate::dm) fn raw_bdev(&self) -> *mut bindings::block_device {
        self.bdev()
    }

    pub(in crate::dm) fn raw(&self) -> *mut sys::dm_dev {
        self.dev.as_ptr()
    }
}

impl Drop for TableDev {
    fn drop(&mut self) {
        // SAFETY: `dev` was obtained from `dm_get_device(ti)` and not yet put,
        // and `ti` is still alive (type invariants).
        unsafe { sys::dm_put_device(self.ti.as_ptr(), self.dev.as_ptr()) };
    }
}
