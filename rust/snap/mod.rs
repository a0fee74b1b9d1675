//! The snapshot targets, written against the safe [`crate::dm`] layer.
//!
//! Mirrors upstream's `drivers/md/dm-snap.c` and friends: [`origin`] is
//! `snapshot-origin`, [`snapshot`] holds `snapshot` and `snapshot-merge`,
//! [`cow`] the copy-on-write pipeline, [`registry`] how origins find their
//! snapshots, [`store`] the exception stores.

pub(crate) mod cow;
pub(crate) mod origin;
pub(crate) mod persistent;
pub(crate) mod registry;
pub(crate) mod snapshot;
pub(crate) mod store;
