//! Table devices: block devices a target opened with `dm_get_device()`,
//! and the references to them that state outliving the target may hold.

use crate::bindings as sys;
use core::ptr::NonNull;
use kernel::bindings;
use kernel::prelude::*;
use kernel::str::CStr;

/// Which block device a [`TableDev`] opened: equal for two opens of the
/// same device. Only compared, never dereferenced.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BdevKey(usize);

/// A block device, kept allocated (not open) by a reference on its
/// `struct device`: what a snapshot's state holds to do I/O, since that
/// state can outlive the target (a shared copy completing on another
/// snapshot's kcopyd worker may hold it last). Dropping it touches nothing
/// of the target or its table, so the last reference may go anywhere in
/// process context. I/O through it is only issued while the [`TableDev`]
/// it came from is held (the target quiesces before its dtr returns).
///
/// # Invariants
///
/// `bdev` is a valid block device on which this value holds one reference
/// (`get_device(&bdev->bd_device)`), so its memory stays allocated.
pub struct Bdev {
    bdev: NonNull<bindings::block_device>,
}

// SAFETY: the reference may be taken and put from any thread; the methods
// only read fields of the block device the block layer keeps coherent.
unsafe impl Send for Bdev {}
// SAFETY: all methods take `&self` and only read.
unsafe impl Sync for Bdev {}

impl Bdev {
    /// Takes a reference on `bdev`.
    ///
    /// # Safety
    ///
    /// `bdev` must be a valid block device (held open by the caller).
    unsafe fn get(bdev: NonNull<bindings::block_device>) -> Self {
        // SAFETY: `bdev` is valid (caller); the reference taken here is
        // the one the invariant names, put in `drop`.
        unsafe { sys::dmsr_bdev_get(bdev.as_ptr().cast()) };
        // INVARIANT: valid, and referenced just above.
        Self { bdev }
    }

    fn ptr(&self) -> *mut bindings::block_device {
        self.bdev.as_ptr()
    }

    /// The device's `major:minor`, as dm prints it (`format_dev_t`).
    pub fn name(&self) -> DevName {
        // SAFETY: `bdev` is allocated (type invariant); `bd_dev` never
        // changes.
        DevName(unsafe { sys::dmsr_bdev_dev(self.ptr().cast()) })
    }

    /// Size in 512-byte sectors.
    pub fn nr_sectors(&self) -> u64 {
        // SAFETY: `bdev` is allocated (type invariant).
        unsafe { sys::dmsr_bdev_nr_sectors(self.ptr().cast()) }
    }

    /// Logical block size in bytes.
    pub fn logical_block_size(&self) -> u32 {
        // SAFETY: `bdev` is allocated (type invariant).
        unsafe { sys::dmsr_bdev_logical_block_size(self.ptr().cast()) }
    }

    /// True when both are the same block device.
    pub fn same_bdev(&self, other: &Bdev) -> bool {
        self.bdev == other.bdev
    }

    /// Flushes the device's volatile write cache (`blkdev_issue_flush`).
    /// Sleeps.
    pub fn flush(&self) -> Result {
        // SAFETY: `bdev` is allocated (type invariant); a flush may be
        // issued from any process context.
        kernel::error::to_result(unsafe { bindings::blkdev_issue_flush(self.ptr()) })
    }

    /// The block device's identity, to find what else uses it (the
    /// registry keys origins by it, as upstream keys by `bdev`).
    pub fn key(&self) -> BdevKey {
        BdevKey(self.ptr() as usize)
    }

    pub(in crate::dm) fn raw_bdev(&self) -> *mut bindings::block_device {
        self.ptr()
    }
}

impl Clone for Bdev {
    fn clone(&self) -> Self {
        // SAFETY: `bdev` is valid (type invariant: we hold a reference).
        unsafe { Self::get(self.bdev) }
    }
}

impl Drop for Bdev {
    fn drop(&mut self) {
        // SAFETY: puts the reference taken in `get` (type invariant); may
        // free the block device, which nothing uses after this.
        unsafe { sys::dmsr_bdev_put(self.ptr().cast()) };
    }
}

/// A `dev_t` printed as `major:minor`.
#[derive(Clone, Copy)]
pub struct DevName(u32);

impl core::fmt::Display for DevName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // MINORBITS is 20 (include/linux/kdev_t.h).
        write!(f, "{}:{}", self.0 >> 20, self.0 & 0xfffff)
    }
}

/// A device opened for a target's table; closed (`dm_put_device`) on drop.
/// Owned by the target's private data only, never by state that can
/// outlive the target: that state holds a [`Bdev`] ([`TableDev::share`]).
/// Dereferences to its [`Bdev`] for I/O.
///
/// # Invariants
///
/// `dev` was returned by `dm_get_device(ti, ...)` and is not yet put; `ti` is
/// the target it was opened for. dm core calls the target's `dtr`, which
/// drops the target's private data and with it every `TableDev`, before it
/// frees `ti`, so `ti` outlives `self`. `bdev` is `dev`'s block device.
pub struct TableDev {
    ti: NonNull<sys::dm_target>,
    dev: NonNull<sys::dm_dev>,
    bdev: Bdev,
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
        let (Some(ti), Some(dev)) = (NonNull::new(ti), NonNull::new(dev)) else {
            return Err(EINVAL);
        };
        // SAFETY: `dev` is held, so its `bdev` is a valid open block device.
        let raw = unsafe { (*dev.as_ptr()).bdev };
        let Some(raw) = NonNull::new(raw.cast::<bindings::block_device>()) else {
            // SAFETY: `dev` came from `dm_get_device(ti)` just above.
            unsafe { sys::dm_put_device(ti.as_ptr(), dev.as_ptr()) };
            return Err(EINVAL);
        };
        // SAFETY: `raw` is the open block device of the held `dev`.
        let bdev = unsafe { Bdev::get(raw) };
        // INVARIANT: `dev` from `dm_get_device(ti)`, `bdev` its device.
        Ok(Self { ti, dev, bdev })
    }

    /// dm's name for the device, `major:minor`: what status/table print.
    pub fn name(&self) -> &CStr {
        // SAFETY: `dev` is valid (type invariant) and dm core fills `name`
        // with `format_dev_t`, always NUL-terminated within its 16 bytes.
        unsafe { CStr::from_char_ptr((*self.dev.as_ptr()).name.as_ptr()) }
    }

    /// A reference to the block device that may outlive this table device
    /// (and the target): for state shared beyond the target's lifetime.
    pub fn share(&self) -> Bdev {
        self.bdev.clone()
    }

    pub(in crate::dm) fn raw(&self) -> *mut sys::dm_dev {
        self.dev.as_ptr()
    }
}

impl core::ops::Deref for TableDev {
    type Target = Bdev;
    fn deref(&self) -> &Bdev {
        &self.bdev
    }
}

impl Drop for TableDev {
    fn drop(&mut self) {
        // SAFETY: `dev` was obtained from `dm_get_device(ti)` and not yet put,
        // and `ti` is still alive (type invariants).
        unsafe { sys::dm_put_device(self.ti.as_ptr(), self.dev.as_ptr()) };
    }
}
