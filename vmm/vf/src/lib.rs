//! hpmmap-vf: SR-IOV VF passthrough support for hpmmap-vmm.
//!
//! - [`claim_vf`]: `--vf ib0|mlx5_0|PF|VF [--vf-create N]` to a free VF bound to vfio-pci,
//!   undone on release, drop, error and [`restore_all`] (the VMM's signal path).
//! - [`ib`]: an InfiniBand VF's node/port GUIDs and link policy, set as part of the
//!   claim ([`claim_vf_with`]: `--vf-guid`, `--pkey`, `--job`) and put back with it.
//! - [`records`]: a claim record per VF under /run/hpmmap, for `hpmmap-vf recover`
//!   after a crash and for [`partitions`] (OpenSM partitions.conf from running jobs).
//! - [`selftest`]: prerequisites on a real host, with what to fix.
//! - [`record`]: copies the sysfs subset discovery reads, for test fixtures.
//! - [`args`]: the command-line pieces `hpmmap-vf` and hpmmap-pci's `hpmmap-vf-probe` share.
//!
//! VFIO itself (container, group, device, the guest's config space and MSI-X) lives in
//! hpmmap-pci, next to the PCI bus that uses it; this crate provisions the host.
//!
//! All host access goes through [`Sysfs`] (a configurable root), which tests replace
//! with a recorded tree plus a simulated kernel ([`sim`]).

pub mod args;
pub mod bind;
pub mod claim;
pub mod discover;
pub mod error;
pub mod ib;
pub mod iommu;
pub mod partitions;
pub mod pci;
pub mod record;
pub mod records;
pub mod selftest;
pub mod sim;
pub mod sriov;
pub mod sysfs;

pub use claim::{claim_vf, claim_vf_with, restore_all, VfClaim, VfRequest};
pub use error::VfError;
pub use ib::{Guid, IbOptions, Pkey};
pub use pci::PciAddr;
pub use sysfs::{HostPaths, Sysfs};
