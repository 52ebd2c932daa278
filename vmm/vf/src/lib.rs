//! hpmmap-vf: SR-IOV VF passthrough support for hpmmap-vmm.
//!
//! - [`claim_vf`]: `--vf ib0|mlx5_0|PF|VF [--vf-create N]` to a free VF bound to vfio-pci,
//!   undone on release, drop, error and [`restore_all`] (the VMM's signal path).
//! - [`vfio`]: container (type1v2), group, device; guest RAM DMA-mapped with IOVA = GPA
//!   in 1 GiB chunks; regions, MSI-X capability, eventfd wiring.
//! - [`msix`], [`config`]: the guest-visible config space and MSI-X table as pure state
//!   machines producing KVM MSI routes.
//! - [`ib`]: an InfiniBand VF's node/port GUIDs and link policy, set as part of the
//!   claim ([`claim_vf_with`]: `--vf-guid`, `--pkey`, `--job`) and put back with it.
//! - [`records`]: a claim record per VF under /run/hpmmap, for `hpmmap-vf recover`
//!   after a crash and for [`partitions`] (OpenSM partitions.conf from running jobs).
//! - [`selftest`]: prerequisites on a real host, with what to fix.
//! - [`record`]: copies the sysfs subset discovery reads, for test fixtures.
//!
//! All host access goes through [`Sysfs`] (a configurable root) and the
//! [`vfio::VfioIoctls`] trait, which tests replace with a recorded tree plus a simulated
//! kernel ([`sim`]) and a mock ioctl layer.

pub mod bind;
pub mod claim;
pub mod config;
pub mod discover;
pub mod error;
pub mod ib;
pub mod iommu;
pub mod msix;
pub mod partitions;
pub mod pci;
pub mod record;
pub mod records;
pub mod selftest;
pub mod sim;
pub mod sriov;
pub mod sysfs;
pub mod vfio;

pub use claim::{claim_vf, claim_vf_with, restore_all, VfClaim, VfRequest};
pub use error::VfError;
pub use ib::{Guid, IbOptions, Pkey};
pub use pci::PciAddr;
pub use sysfs::{HostPaths, Sysfs};
