//! Target types: the [`TargetOps`] trait a target implements, its
//! registration with dm core, and the C callbacks that call into it.
//!
//! C header: [`include/linux/device-mapper.h`](srctree/include/linux/device-mapper.h).
//!
//! A target's constructor returns its private state as `Pin<KBox<Self>>`;
//! it lives in `ti->private` until `dtr`, where dropping it releases every
//! device and resource it owns. All other hooks borrow it as `&Self`, since
//! dm core calls them concurrently from many CPUs.

use super::bio::Mapped;
use super::{Bio, OwnedBio, StatusBuf, StatusType, TableDev};
use crate::bindings as sys;
use core::marker::PhantomData;
use kernel::bindings;
use kernel::build_error;
use kernel::ffi::{c_char, c_int, c_uint, c_void};
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::types::{ForeignOwnable, Opaque};

/// `BLK_OPEN_READ` (a macro with a cast, which bindgen cannot translate).
pub const BLK_OPEN_READ: bindings::blk_mode_t = 1 << 0;
/// `BLK_OPEN_WRITE`.
pub const BLK_OPEN_WRITE: bindings::blk_mode_t = 1 << 1;

/// A constructor failure: the `ti->error` text and the errno returned.
#[derive(Debug, Clone, Copy)]
pub struct CtrError {
    /// Shown by dm as `<dev>: <target>: <msg> (<errno>)`.
    pub msg: &'static core::ffi::CStr,
    /// Returned to userspace.
    pub err: Error,
}

impl CtrError {
    /// An error with message `msg` and errno `err`.
    pub const fn new(msg: &'static core::ffi::CStr, err: Error) -> Self {
        Self { msg, err }
    }
}

/// A device-mapper target type.
#[vtable]
pub trait TargetOps: Sized + Send + Sync + 'static {
    /// Target name as used in table lines.
    const NAME: &'static CStr;
    /// Target version reported by `dmsetup targets`.
    const VERSION: [u32; 3];

    /// Per-bio data dm core keeps for this target (`per_io_data_size`),
    /// reset to its default before `map`; `()` for none.
    type PerBio: Default;

    /// Parses the table arguments and builds the target (`ctr`).
    fn ctr(setup: &mut Setup<'_>, argv: &[&[u8]]) -> Result<Pin<KBox<Self>>, CtrError>;

    /// Maps a bio (`map`): hand it back remapped or killed, or keep it.
    fn map(&self, target: &Target, bio: OwnedBio, data: &mut Self::PerBio) -> Mapped;

    /// A mapped bio completed (`end_io`); `data` is what `map` left.
    fn end_io(&self, _target: &Target, _bio: &Bio, _data: &mut Self::PerBio) {
        build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Adjusts the queue limits of the dm device (`io_hints`).
    fn io_hints(&self, _target: &Target, _limits: &mut QueueLimits<'_>) {
        build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// May refuse a resume (`preresume`).
    fn preresume(&self, _target: &Target) -> Result {
        build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Fills `dmsetup status`/`table`/IMA output (`status`).
    fn status(&self, _target: &Target, _kind: StatusType, _out: &mut StatusBuf<'_>) {
        build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Reports each underlying device range (`iterate_devices`).
    fn iterate_devices(&self, _target: &Target, _visit: &mut DeviceVisitor<'_>) -> c_int {
        build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Called before the table goes live (`resume`).
    fn resume(&self, _target: &Target) {
        build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Called before the device suspends (`presuspend`).
    fn presuspend(&self, _target: &Target) {
        build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Called once the device is suspended (`postsuspend`).
    fn postsuspend(&self, _target: &Target) {
        build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }
}

/// The queue limits of a dm device, as `io_hints` may adjust them.
pub struct QueueLimits<'a>(&'a mut bindings::queue_limits);

impl QueueLimits<'_> {
    /// Sets the discard granularity and the largest discard in sectors.
    /// Upstream's snapshot target passes a sector count as the (byte-sized)
    /// granularity, which the block layer raises to the block size; callers
    /// that mimic it pass the same value.
    pub fn set_discard(&mut self, granularity: u32, max_sectors: u32) {
        self.0.discard_granularity = granularity;
        self.0.max_hw_discard_sectors = max_sectors;
    }
}

/// A target instance, as dm core passes it to the hooks.
#[repr(transparent)]
pub struct Target(Opaque<sys::dm_target>);

impl Target {
    /// # Safety
    ///
    /// `ptr` must be a valid `dm_target` for `'a`.
    unsafe fn from_raw<'a>(ptr: *mut sys::dm_target) -> &'a Target {
        // SAFETY: `Target` is `repr(transparent)` over `Opaque<dm_target>`;
        // validity comes from the caller.
        unsafe { &*ptr.cast::<Target>() }
    }

    fn raw(&self) -> *mut sys::dm_target {
        self.0.get()
    }

    /// Length of the target in sectors.
    pub fn len(&self) -> u64 {
        // SAFETY: `self` was made by `from_raw` from a `dm_target` valid for
        // its lifetime; `len` is set by dm core before the constructor runs
        // and not changed while the target exists.
        unsafe { (*self.raw()).len }
    }

    /// True for a zero-length target (dm core refuses those).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A handle that outlives this borrow, for the target's own state.
    pub fn handle(&self) -> TargetRef {
        TargetRef(self.raw())
    }
}

/// A target kept by its own private data, for use outside hooks (events,
/// table size, the mapped device).
///
/// # Invariants
///
/// The target is alive: a `TargetRef` is only kept in the target's private
/// data (or in what that data owns), which dm core frees in `dtr`, before
/// it frees the target.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TargetRef(*mut sys::dm_target);

// SAFETY: the dm_target calls below may be made from any process context.
unsafe impl Send for TargetRef {}
// SAFETY: every method only reads fields dm core does not change while the
// target exists, or calls dm functions that take their own locks, so
// shared use from several threads is fine.
unsafe impl Sync for TargetRef {}

impl TargetRef {
    /// Raises a table event (`dm_table_event`): `dmsetup wait` wakes up.
    /// Sleeps (takes a mutex).
    pub fn table_event(&self) {
        // SAFETY: the target and its table are alive (type invariant).
        unsafe { sys::dm_table_event((*self.0).table) };
    }

    /// Size of the target's whole table in sectors.
    pub fn table_size(&self) -> u64 {
        // SAFETY: the target and its table are alive (type invariant).
        unsafe { sys::dm_table_get_size((*self.0).table) }
    }

    /// The mapped device the target's table belongs to.
    pub fn md(&self) -> MdRef<'_> {
        // SAFETY: the target and its table are alive (type invariant).
        MdRef(
            unsafe { sys::dm_table_get_md((*self.0).table) },
            core::marker::PhantomData,
        )
    }

    /// Sets the largest bio dm core sends the target (`ti->max_io_len`),
    /// as upstream does when a handover destination learns its chunk size.
    pub fn set_max_io_len(&self, sectors: u32) {
        // SAFETY: the target is alive (type invariant); dm core reads the
        // field when splitting bios, and the device is suspended while this
        // is called (resume).
        unsafe { (*self.0).max_io_len = sectors };
    }

    /// True if this target's device is suspended.
    pub fn is_suspended(&self) -> bool {
        // SAFETY: the target is alive (type invariant).
        unsafe { sys::dm_suspended(self.0) != 0 }
    }
}

/// A mapped device, compared by identity and held with [`MdRef::hold`].
/// It borrows the [`TargetRef`] it came from: whatever keeps that target
/// alive (the registry lock it was found under, a registered snapshot)
/// keeps the mapped device alive for as long as this exists, which is all
/// `dm_hold` needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MdRef<'a>(
    *mut sys::mapped_device,
    core::marker::PhantomData<&'a TargetRef>,
);

/// A reference on a mapped device; dropping it resumes what
/// [`HeldMd::suspend_fast`] suspended and releases the reference.
pub struct HeldMd {
    md: *mut sys::mapped_device,
    suspended: bool,
}

impl MdRef<'_> {
    /// Takes a reference (`dm_hold`); `None` if the device is going away.
    pub fn hold(self) -> Option<HeldMd> {
        // SAFETY: `self` borrows the target whose table it came from, so
        // the mapped device is alive for this call (see `MdRef`).
        (unsafe { sys::dm_hold(self.0) } == 0).then_some(HeldMd {
            md: self.0,
            suspended: false,
        })
    }
}

impl HeldMd {
    /// Internally suspends the device, draining its in-flight I/O
    /// (`dm_internal_suspend_fast`); resumed on drop.
    pub fn suspend_fast(&mut self) {
        if !self.suspended {
            // SAFETY: we hold a reference on the md.
            unsafe { sys::dm_internal_suspend_fast(self.md) };
            self.suspended = true;
        }
    }
}

impl Drop for HeldMd {
    fn drop(&mut self) {
        // SAFETY: we hold a reference; resume only what we suspended.
        unsafe {
            if self.suspended {
                sys::dm_internal_resume_fast(self.md);
            }
            sys::dm_put(self.md);
        }
    }
}

/// The target being constructed: what only a constructor may set.
pub struct Setup<'a> {
    ti: *mut sys::dm_target,
    _p: PhantomData<&'a mut sys::dm_target>,
}

impl Setup<'_> {
    /// Opens a table device with the table's own mode (read-write for a
    /// writable table).
    pub fn get_device(&mut self, path: &[u8]) -> Result<TableDev> {
        // SAFETY: `ti` is valid during the constructor and `table` is set.
        let mode = unsafe { sys::dm_table_get_mode((*self.ti).table) };
        self.get_device_mode(path, mode)
    }

    /// Opens a table device with an explicit mode (`BLK_OPEN_*`).
    pub fn get_device_mode(&mut self, path: &[u8], mode: bindings::blk_mode_t) -> Result<TableDev> {
        let mut p = KVec::with_capacity(path.len() + 1, GFP_KERNEL)?;
        p.extend_from_slice(path, GFP_KERNEL)?;
        p.push(0, GFP_KERNEL)?;
        let path = CStr::from_bytes_with_nul(&p).map_err(|_| EINVAL)?;
        // SAFETY: `ti` is a target in its constructor; the device ends up in
        // the private data, which dtr drops before dm frees `ti`.
        unsafe { TableDev::open(self.ti, path, mode) }
    }

    /// Number of empty flush bios dm core sends per flush.
    pub fn set_num_flush_bios(&mut self, n: u32) {
        // SAFETY: the constructor may set this field.
        unsafe { (*self.ti).num_flush_bios = n };
    }

    /// Number of discard bios dm core sends per discard (0: no discard).
    pub fn set_num_discard_bios(&mut self, n: u32) {
        // SAFETY: the constructor may set this field.
        unsafe { (*self.ti).num_discard_bios = n };
    }

    /// Largest bio, in sectors, dm core sends (bios are split at multiples).
    pub fn set_max_io_len(&mut self, sectors: u32) -> Result {
        // SAFETY: `ti` is valid during the constructor.
        kernel::error::to_result(unsafe { sys::dm_set_target_max_io_len(self.ti, sectors.into()) })
    }

    /// The target under construction.
    pub fn target(&self) -> &Target {
        // SAFETY: `ti` is valid during the constructor.
        unsafe { Target::from_raw(self.ti) }
    }
}

/// The callout of `iterate_devices`, for [`TargetOps::iterate_devices`].
pub struct DeviceVisitor<'a> {
    ti: *mut sys::dm_target,
    f: sys::iterate_devices_callout_fn,
    data: *mut c_void,
    _p: PhantomData<&'a mut c_void>,
}

impl DeviceVisitor<'_> {
    /// Reports `len` sectors of `dev` from `start`; non-zero stops the walk.
    pub fn visit(&mut self, dev: &TableDev, start: u64, len: u64) -> c_int {
        match self.f {
            // SAFETY: dm core passed `f` and `data` for this walk over `ti`;
            // `dev` is held by this target.
            Some(f) => unsafe { f(self.ti, dev.raw(), start, len, self.data) },
            None => 0,
        }
    }
}

/// A registered target type; unregistered on drop.
pub struct Registration<T: TargetOps> {
    tt: Pin<KBox<Opaque<sys::target_type>>>,
    _p: PhantomData<T>,
}

// SAFETY: after registration dm core owns the `target_type` list linkage
// under its own lock; we only touch it again to unregister.
unsafe impl<T: TargetOps> Send for Registration<T> {}
// SAFETY: no `&self` method accesses the `target_type`.
unsafe impl<T: TargetOps> Sync for Registration<T> {}

impl<T: TargetOps> Registration<T> {
    /// Registers target type `T` for `module`, which dm core pins (with a
    /// module reference) for as long as any table uses the type.
    pub fn new(module: &'static ThisModule) -> Result<Self> {
        let tt = KBox::pin(Opaque::new(sys::target_type::default()), GFP_KERNEL)?;
        let p = tt.get();
        // SAFETY: `p` points to our own, not yet registered `target_type`.
        unsafe {
            (*p).name = T::NAME.as_char_ptr();
            (*p).module = module.as_ptr();
            (*p).version = T::VERSION;
            (*p).ctr = Some(ctr_callback::<T>);
            (*p).dtr = Some(dtr_callback::<T>);
            (*p).map = Some(map_callback::<T>);
            if T::HAS_STATUS {
                (*p).status = Some(status_callback::<T>);
            }
            if T::HAS_ITERATE_DEVICES {
                (*p).iterate_devices = Some(iterate_devices_callback::<T>);
            }
            if T::HAS_END_IO {
                (*p).end_io = Some(end_io_callback::<T>);
            }
            if T::HAS_IO_HINTS {
                (*p).io_hints = Some(io_hints_callback::<T>);
            }
            if T::HAS_PRERESUME {
                (*p).preresume = Some(preresume_callback::<T>);
            }
            if T::HAS_RESUME {
                (*p).resume = Some(resume_callback::<T>);
            }
            if T::HAS_PRESUSPEND {
                (*p).presuspend = Some(presuspend_callback::<T>);
            }
            if T::HAS_POSTSUSPEND {
                (*p).postsuspend = Some(postsuspend_callback::<T>);
            }
        }
        // SAFETY: the `target_type` is fully initialised and pinned in a
        // box that outlives the registration (dropped only after unregister).
        kernel::error::to_result(unsafe { sys::dm_register_target(p) })?;
        Ok(Self {
            tt,
            _p: PhantomData,
        })
    }
}

impl<T: TargetOps> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: registered in `new`; no table can use it any more, since
        // the module (whose reference each table holds) is going away.
        unsafe { sys::dm_unregister_target(self.tt.get()) };
    }
}

/// Bytes of per-bio data for `T`, rounded up to keep dm's layout aligned.
const fn per_bio_size<T: TargetOps>() -> usize {
    (core::mem::size_of::<T::PerBio>() + 7) & !7
}

/// The per-bio data of `bio` for target type `T`.
///
/// # Safety
///
/// `bio` is a dm clone for a constructed `T` target; the returned reference
/// is the only one for the duration of the hook.
unsafe fn per_bio<'a, T: TargetOps>(bio: *mut bindings::bio) -> &'a mut T::PerBio {
    const { assert!(core::mem::align_of::<T::PerBio>() <= 8) };
    if per_bio_size::<T>() == 0 {
        // SAFETY: a zero-sized value needs no storage; a dangling aligned
        // pointer is valid for it.
        return unsafe { &mut *core::ptr::NonNull::<T::PerBio>::dangling().as_ptr() };
    }
    // SAFETY: dm core reserved `per_io_data_size` bytes before the clone,
    // 8-byte aligned (sizes are multiples of 8).
    unsafe { &mut *sys::dm_per_bio_data(bio, per_bio_size::<T>()).cast::<T::PerBio>() }
}

/// Borrows the private data of `ti`.
///
/// # Safety
///
/// `ti` must be a constructed target of type `T` (its `private` set by
/// [`ctr_callback`]), not yet destroyed.
unsafe fn private<'a, T: TargetOps>(ti: *mut sys::dm_target) -> &'a T {
    // SAFETY: `private` came from `Pin<KBox<T>>::into_foreign` in the
    // constructor and is freed only in `dtr` (function contract).
    let p: Pin<&T> = unsafe { <Pin<KBox<T>> as ForeignOwnable>::borrow((*ti).private) };
    p.get_ref()
}

/// The `ctr` hook of `struct target_type` for `T`.
///
/// # Safety
///
/// Only dm core calls it, with the arguments valid as `device-mapper.h`
/// documents for `ctr`, and (but for `ctr`) on a target `T::ctr` built.
unsafe extern "C" fn ctr_callback<T: TargetOps>(
    ti: *mut sys::dm_target,
    argc: c_uint,
    argv: *mut *mut c_char,
) -> c_int {
    let fail = |e: CtrError| {
        // SAFETY: `ti` is valid; `error` takes a static string.
        unsafe { (*ti).error = e.msg.as_ptr() as *mut c_char };
        e.err.to_errno()
    };
    let mut args: KVec<&[u8]> = match KVec::with_capacity(argc as usize, GFP_KERNEL) {
        Ok(v) => v,
        Err(_) => return fail(CtrError::new(c"Cannot allocate argument vector", ENOMEM)),
    };
    for i in 0..argc as usize {
        // SAFETY: dm core passes `argc` valid NUL-terminated strings that
        // live until the constructor returns.
        let arg = unsafe { CStr::from_char_ptr(*argv.add(i)) };
        // Cannot fail: the capacity was reserved above.
        if args.push(arg.as_bytes(), GFP_KERNEL).is_err() {
            return fail(CtrError::new(c"Cannot allocate argument vector", ENOMEM));
        }
    }
    let mut setup = Setup {
        ti,
        _p: PhantomData,
    };
    match T::ctr(&mut setup, &args) {
        Ok(private) => {
            // SAFETY: `ti` is valid; ownership moves to `ti->private` until dtr.
            unsafe {
                (*ti).private = private.into_foreign() as *mut c_void;
                (*ti).per_io_data_size = per_bio_size::<T>() as c_uint;
            }
            0
        }
        Err(e) => fail(e),
    }
}

/// The `dtr` hook of `struct target_type` for `T`.
///
/// # Safety
///
/// Only dm core calls it, with the arguments valid as `device-mapper.h`
/// documents for `dtr`, and (but for `ctr`) on a target `T::ctr` built.
unsafe extern "C" fn dtr_callback<T: TargetOps>(ti: *mut sys::dm_target) {
    // SAFETY: dtr runs once, after a successful ctr stored `private`; nothing
    // else uses it any more.
    drop(unsafe { <Pin<KBox<T>> as ForeignOwnable>::from_foreign((*ti).private) });
}

/// The `map` hook of `struct target_type` for `T`.
///
/// # Safety
///
/// Only dm core calls it, with the arguments valid as `device-mapper.h`
/// documents for `map`, and (but for `ctr`) on a target `T::ctr` built.
unsafe extern "C" fn map_callback<T: TargetOps>(
    ti: *mut sys::dm_target,
    bio: *mut bindings::bio,
) -> c_int {
    // SAFETY: dm core calls map on a constructed target with a bio whose
    // completion the target now owns until it returns.
    let (t, target) = unsafe { (private::<T>(ti), Target::from_raw(ti)) };
    let Some(nn) = core::ptr::NonNull::new(bio) else {
        return sys::DM_MAPIO_KILL as c_int;
    };
    // SAFETY: the per-bio area has `per_bio_size::<T>()` bytes (set in ctr).
    let data = unsafe { per_bio::<T>(bio) };
    *data = T::PerBio::default();
    // SAFETY: see above: the bio is ours until we return.
    let bio = unsafe { OwnedBio::from_raw(nn) };
    t.map(target, bio, data).0 as c_int
}

/// The `status` hook of `struct target_type` for `T`.
///
/// # Safety
///
/// Only dm core calls it, with the arguments valid as `device-mapper.h`
/// documents for `status`, and (but for `ctr`) on a target `T::ctr` built.
unsafe extern "C" fn status_callback<T: TargetOps>(
    ti: *mut sys::dm_target,
    kind: sys::status_type_t,
    _flags: c_uint,
    result: *mut c_char,
    maxlen: c_uint,
) {
    let kind = match kind {
        sys::status_type_t_STATUSTYPE_INFO => StatusType::Info,
        sys::status_type_t_STATUSTYPE_TABLE => StatusType::Table,
        _ => StatusType::Ima,
    };
    if result.is_null() {
        return;
    }
    // SAFETY: dm core passes a buffer of `maxlen` bytes that we may fill.
    let buf = unsafe { core::slice::from_raw_parts_mut(result.cast::<u8>(), maxlen as usize) };
    // SAFETY: status is only called on constructed targets.
    let (t, target) = unsafe { (private::<T>(ti), Target::from_raw(ti)) };
    t.status(target, kind, &mut StatusBuf::new(buf));
}

/// The `iterate_devices` hook of `struct target_type` for `T`.
///
/// # Safety
///
/// Only dm core calls it, with the arguments valid as `device-mapper.h`
/// documents for `iterate_devices`, and (but for `ctr`) on a target `T::ctr` built.
unsafe extern "C" fn iterate_devices_callback<T: TargetOps>(
    ti: *mut sys::dm_target,
    f: sys::iterate_devices_callout_fn,
    data: *mut c_void,
) -> c_int {
    let mut visit = DeviceVisitor {
        ti,
        f,
        data,
        _p: PhantomData,
    };
    // SAFETY: called on constructed targets only.
    let (t, target) = unsafe { (private::<T>(ti), Target::from_raw(ti)) };
    t.iterate_devices(target, &mut visit)
}

/// The `resume` hook of `struct target_type` for `T`.
///
/// # Safety
///
/// Only dm core calls it, with the arguments valid as `device-mapper.h`
/// documents for `resume`, and (but for `ctr`) on a target `T::ctr` built.
unsafe extern "C" fn resume_callback<T: TargetOps>(ti: *mut sys::dm_target) {
    // SAFETY: called on constructed targets only.
    let (t, target) = unsafe { (private::<T>(ti), Target::from_raw(ti)) };
    t.resume(target);
}

/// The `presuspend` hook of `struct target_type` for `T`.
///
/// # Safety
///
/// Only dm core calls it, on a target `T::ctr` built.
unsafe extern "C" fn presuspend_callback<T: TargetOps>(ti: *mut sys::dm_target) {
    // SAFETY: dm core calls this hook only on a target whose `ctr`
    // succeeded, so `ti` is valid and its private data is our `T`.
    let (t, target) = unsafe { (private::<T>(ti), Target::from_raw(ti)) };
    t.presuspend(target);
}

/// The `postsuspend` hook of `struct target_type` for `T`.
///
/// # Safety
///
/// Only dm core calls it, with the arguments valid as `device-mapper.h`
/// documents for `postsuspend`, and (but for `ctr`) on a target `T::ctr` built.
unsafe extern "C" fn postsuspend_callback<T: TargetOps>(ti: *mut sys::dm_target) {
    // SAFETY: called on constructed targets only.
    let (t, target) = unsafe { (private::<T>(ti), Target::from_raw(ti)) };
    t.postsuspend(target);
}

/// The `end_io` hook of `struct target_type` for `T`.
///
/// # Safety
///
/// Only dm core calls it, on a bio that `map_callback::<T>` mapped.
unsafe extern "C" fn end_io_callback<T: TargetOps>(
    ti: *mut sys::dm_target,
    bio: *mut bindings::bio,
    _error: *mut bindings::blk_status_t,
) -> c_int {
    // SAFETY: a constructed target and a bio it mapped (contract).
    let (t, target, data) = unsafe { (private::<T>(ti), Target::from_raw(ti), per_bio::<T>(bio)) };
    // SAFETY: the bio is valid for the duration of the hook.
    t.end_io(target, unsafe { Bio::from_raw(bio) }, data);
    sys::DM_ENDIO_DONE as c_int
}

/// The `io_hints` hook of `struct target_type` for `T`.
///
/// # Safety
///
/// Only dm core calls it, on a constructed target, with valid limits.
unsafe extern "C" fn io_hints_callback<T: TargetOps>(
    ti: *mut sys::dm_target,
    limits: *mut bindings::queue_limits,
) {
    // SAFETY: contract: a constructed target and limits dm core lets us
    // change for the duration of the hook.
    let (t, target, limits) = unsafe { (private::<T>(ti), Target::from_raw(ti), &mut *limits) };
    t.io_hints(target, &mut QueueLimits(limits));
}

/// The `preresume` hook of `struct target_type` for `T`.
///
/// # Safety
///
/// Only dm core calls it, on a constructed target.
unsafe extern "C" fn preresume_callback<T: TargetOps>(ti: *mut sys::dm_target) -> c_int {
    // SAFETY: dm core calls this hook only on a target whose `ctr`
    // succeeded, so `ti` is valid and its private data is our `T`.
    let (t, target) = unsafe { (private::<T>(ti), Target::from_raw(ti)) };
    match t.preresume(target) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}
