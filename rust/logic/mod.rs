//! Pure logic of the snapshot targets, free of kernel types.
//!
//! Everything here uses `core` only, so the same source is compiled into the
//! kernel module (as `crate::logic`) and into the userspace crate
//! `dm_snap_logic` (see `Cargo.toml`), where `cargo test` exercises it.

pub mod args;
pub mod chunk;
pub mod completion_order;
pub mod disk_format;
pub mod exception_index;
pub mod exception_table;
pub mod index_node;
pub mod merge;
pub mod persistent;
pub mod sort;
pub mod table;
pub mod transient;
