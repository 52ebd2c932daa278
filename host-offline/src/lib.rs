//! hpmmap-offline: takes memory from the host kernel for hpmmap jobs and gives it back.
//!
//! The partition is a pool of 1 GiB hugetlb pages per NUMA node (grown by compaction, or by
//! cycling memory blocks offline and back online to free whole GiB ranges), or a device-dax
//! device with 1 GiB alignment. A versioned state file records every change before it is
//! made, so `release --all` can roll the host back after a crash.
//!
//! All sysfs and procfs access goes through [`host::Host`], whose roots can point at a
//! recorded tree.

pub mod blocks;
pub mod deadline;
pub mod devdax;
pub mod error;
pub mod holders;
pub mod host;
pub mod hugetlb;
pub mod jobs;
pub mod pageflags;
pub mod recover;
pub mod release;
pub mod reserve;
pub mod session;
pub mod size;
pub mod state;
pub mod status;
pub mod stop;

pub use error::{Error, Result};
