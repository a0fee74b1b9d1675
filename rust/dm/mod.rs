//! Safe abstractions over device-mapper and the block layer.
//!
//! C header: [`include/linux/device-mapper.h`](srctree/include/linux/device-mapper.h).
//!
//! This module owns every call into the C device-mapper API used by the
//! targets: the target trait and its registration ([`target`]), the table
//! devices a target opens ([`device`]), the bios it maps ([`bio`]) and the
//! status buffer it fills ([`status`]). The targets above it are safe code.

pub mod bio;
pub mod device;
pub mod dmio;
pub mod kcopyd;
pub mod mempool;
pub mod status;
pub mod target;

pub use bio::Bio;
pub use bio::{BioList, Mapped, OwnedBio};
pub use device::TableDev;
pub use status::{StatusBuf, StatusType};
pub use target::{CtrError, DeviceVisitor, Registration, Setup, Target, TargetOps, TargetRef};
