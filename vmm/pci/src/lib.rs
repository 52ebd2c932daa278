//! hpmmap-pci: the guest's PCI bus, for passing an SR-IOV VF to the guest.
//!
//! - [`PciRoot`]: bus 0 behind configuration mechanism #1 (ports 0xCF8..=0xCFF) and an
//!   ECAM window at [`layout::ECAM_BASE`], the host bridge at 00:00.0, device slots,
//!   BAR placement in [`PciWindows`] and the routing of trapped BAR accesses.
//! - [`PciDevice`]: what a device on the bus implements.
//! - [`config_space`], [`msix`]: the guest-visible config space and MSI-X table as pure
//!   state machines producing KVM MSI routes (also used by the virtio-pci transport).
//! - [`vfio`]: the device through vfio-ioctls (container, type1v2, group, device); guest RAM DMA-mapped with IOVA = GPA
//!   in 1 GiB chunks; regions, BAR mmaps, MSI-X eventfds. The VF itself is claimed and
//!   given back by hpmmap-vf.
//! - [`VfioPciDevice`]: a VF through those VFIO objects, BARs as KVM memory slots,
//!   MSI-X emulated and delivered through KVM GSI routing and irqfds.
//! - [`MemorySlots`] / [`IrqRouter`]: the KVM calls, implemented on a `VmFd` by
//!   [`KvmMemorySlots`] / [`KvmIrqRouting`] and by recording fakes in [`testing`].

pub mod address;
pub mod bar_alloc;
pub mod config_space;
pub mod device;
pub mod error;
pub mod hooks;
pub mod host_bridge;
pub mod layout;
pub mod log;
pub mod msix;
pub mod root;
pub mod testing;
pub mod vfio;
pub mod vfio_device;

pub use device::{BarEvent, PciDevice};
pub use error::PciError;
pub use hooks::{IrqRouter, KvmIrqRouting, KvmMemorySlots, MemorySlots};
pub use layout::PciWindows;
pub use root::PciRoot;
pub use vfio_device::{KvmHooks, VfioPciDevice};
