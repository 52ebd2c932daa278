use std::ops::Range;

use crate::vfio::VfioError;

#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("{device}: BAR{bar} ({size:#x} bytes) does not fit in the free part {window:#x?} of its MMIO window")]
    NoRoom {
        device: String,
        bar: u8,
        size: u64,
        window: Range<u64>,
    },
    #[error("{device}: BAR{bar} is an I/O BAR; the VMM offers no PCI I/O window")]
    IoBar { device: String, bar: u8 },
    #[error("the root bus is full (31 device slots)")]
    BusFull,
    #[error("{0}")]
    Vfio(#[from] VfioError),
    #[error("{op}: {source}")]
    Kvm { op: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Host {
        what: String,
        source: std::io::Error,
    },
    #[error("{op}: GSI {gsi} is out of KVM's routing range")]
    GsiRange { op: &'static str, gsi: u32 },
}
