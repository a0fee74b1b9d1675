//! The snapshot targets, written against the safe [`crate::dm`] layer.
//!
//! Mirrors upstream's `drivers/md/dm-snap.c` and friends: [`origin`] is
//! `snapshot-origin`, [`snapshot`] holds `snapshot` and `snapshot-merge`,
//! [`cow`] a snapshot's state, [`copy`] the pending exceptions and their
//! copies, [`throttle`] the COW throttle and read tracking, [`registry`]
//! how origins find their snapshots, [`store`] and [`persistent`] the
//! exception stores.
//!
//! This layer is safe Rust that never calls C (`make check` holds it to
//! that): it is written against [`crate::dm`] and [`crate::sync`] only.

use crate::dm::CtrError;
use crate::logic::table::TableError;
use kernel::prelude::*;

pub(crate) mod copy;
pub(crate) mod cow;
pub(crate) mod ctr;
pub(crate) mod merge;
pub(crate) mod merge_target;
pub(crate) mod origin;
pub(crate) mod persistent;
pub(crate) mod registry;
pub(crate) mod snapshot;
pub(crate) mod status;
pub(crate) mod store;
pub(crate) mod throttle;

impl From<TableError> for CtrError {
    fn from(e: TableError) -> Self {
        Self::new(e.0, EINVAL)
    }
}
