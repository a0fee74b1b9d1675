//! Kernel log messages under device-mapper's prefixes.
//!
//! Upstream logs through `DMERR`/`DMWARN`/`DMINFO`, which print
//! `device-mapper: <DM_MSG_PREFIX>: ...`: `snapshots` in `dm-snap.c`,
//! `persistent snapshot` in `dm-snap-persistent.c`. The kernel crate's
//! `pr_*!` macros print the module's name instead (`dm_snap_rs: ...`),
//! which rules and monitoring that grep upstream's prefixes would miss.
//! [`dm_err!`](crate::dm_err), [`dm_warn!`](crate::dm_warn) and
//! [`dm_info!`](crate::dm_info) print exactly upstream's prefixes; the
//! message text follows upstream's where one exists.
//!
//! C header: [`include/linux/device-mapper.h`](srctree/include/linux/device-mapper.h)
//! (`DMERR`, `DM_NAME`).

use core::fmt;
use kernel::print::format_strings;

/// Whose `DM_MSG_PREFIX` a message carries.
#[derive(Clone, Copy)]
pub enum Prefix {
    /// `device-mapper: snapshots: `, upstream's `dm-snap.c` (the targets).
    Snapshots,
    /// `device-mapper: persistent snapshot: `, upstream's
    /// `dm-snap-persistent.c` (the persistent store).
    Persistent,
}

impl Prefix {
    /// `DM_NAME ": " DM_MSG_PREFIX`, NUL-terminated, without the final
    /// `": "` (the format string adds it).
    fn bytes(self) -> &'static [u8] {
        match self {
            Prefix::Snapshots => b"device-mapper: snapshots\0",
            Prefix::Persistent => b"device-mapper: persistent snapshot\0",
        }
    }
}

/// A log level of [`log`].
#[derive(Clone, Copy)]
pub enum Level {
    /// `KERN_ERR`, as `DMERR`.
    Err,
    /// `KERN_WARNING`, as `DMWARN`.
    Warn,
    /// `KERN_INFO`, as `DMINFO`.
    Info,
}

/// Prints `device-mapper: <prefix>: <args>` at `level`. Use the macros.
pub fn log(prefix: Prefix, level: Level, args: fmt::Arguments<'_>) {
    let fmt = match level {
        Level::Err => &format_strings::ERR,
        Level::Warn => &format_strings::WARNING,
        Level::Info => &format_strings::INFO,
    };
    // SAFETY: `fmt` is one of the kernel crate's `format_strings` (`"%s: %pA"`
    // behind a `KERN_*` level: it takes exactly a prefix and the arguments)
    // and every `Prefix::bytes` is NUL-terminated, as `call_printk` requires.
    unsafe { kernel::print::call_printk(fmt, prefix.bytes(), args) };
}

/// The body of [`dm_err!`](crate::dm_err), [`dm_warn!`](crate::dm_warn)
/// and [`dm_info!`](crate::dm_info): a level, then an optional
/// `persistent;`, then the format arguments.
#[doc(hidden)]
#[macro_export]
macro_rules! __dm_log {
    ($level:ident, persistent; $($arg:tt)+) => {
        $crate::dm::log::log(
            $crate::dm::log::Prefix::Persistent,
            $crate::dm::log::Level::$level,
            format_args!($($arg)+),
        )
    };
    ($level:ident, $($arg:tt)+) => {
        $crate::dm::log::log(
            $crate::dm::log::Prefix::Snapshots,
            $crate::dm::log::Level::$level,
            format_args!($($arg)+),
        )
    };
}

/// `DMERR`: `device-mapper: snapshots: <message>` at `KERN_ERR`; with a
/// leading `persistent;`, `device-mapper: persistent snapshot: <message>`.
#[macro_export]
macro_rules! dm_err {
    ($($arg:tt)+) => { $crate::__dm_log!(Err, $($arg)+) };
}

/// `DMWARN`: as [`dm_err!`](crate::dm_err), at `KERN_WARNING`.
#[macro_export]
macro_rules! dm_warn {
    ($($arg:tt)+) => { $crate::__dm_log!(Warn, $($arg)+) };
}

/// `DMINFO`: as [`dm_err!`](crate::dm_err), at `KERN_INFO`.
#[macro_export]
macro_rules! dm_info {
    ($($arg:tt)+) => { $crate::__dm_log!(Info, $($arg)+) };
}
