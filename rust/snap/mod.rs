//! The snapshot targets, written against the safe [`crate::dm`] layer.
//!
//! Mirrors upstream's `drivers/md/dm-snap.c`: [`origin`] is
//! `snapshot-origin`, [`snapshot`] holds `snapshot` and `snapshot-merge`.

pub(crate) mod origin;
pub(crate) mod snapshot;
