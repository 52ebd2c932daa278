//! Where PCI lives in the guest-physical and port address spaces (docs/architecture.md,
//! interface 1: low RAM below 3 GiB, the 32-bit hole [3 GiB, 4 GiB) with the PV page at
//! 0xFEB0_0000, high RAM from 4 GiB).

use std::ops::Range;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Configuration mechanism #1: the address register (dword accesses only).
pub const CONF1_ADDRESS_PORT: u16 = 0xCF8;
/// Configuration mechanism #1: the data window, 0xCFC..=0xCFF.
pub const CONF1_DATA_PORT: u16 = 0xCFC;
/// Every port the root bus answers: 0xCF8..0xD00.
pub const CONF1_PORTS: Range<u16> = 0xCF8..0xD00;

/// The MMCONFIG (ECAM) window: 4 KiB of config space per function, bus 0 only.
pub const ECAM_BASE: u64 = 0xE000_0000;
/// One bus: 32 devices x 8 functions x 4 KiB.
pub const ECAM_SIZE: u64 = MIB;

/// 32-bit memory BARs: from the start of the hole up to the ECAM window, so well below
/// the PV page (0xFEB0_0000), the IOAPIC (0xFEC0_0000) and the LAPIC (0xFEE0_0000).
pub const MMIO32: Range<u64> = 0xC000_0000..ECAM_BASE;

/// Default size of the 64-bit BAR window above guest RAM. The guest's physical address
/// width (CPUID 0x80000008) must cover its end.
pub const MMIO64_SIZE: u64 = 64 * GIB;

/// The two memory windows BARs are placed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciWindows {
    pub mmio32: Range<u64>,
    pub mmio64: Range<u64>,
}

impl PciWindows {
    /// Windows for a guest whose highest RAM byte is below `ram_end` (the end of high RAM,
    /// or 4 GiB when all RAM is low): 64-bit BARs start at the next GiB at or above
    /// max(ram_end, 4 GiB).
    pub fn for_ram_end(ram_end: u64) -> Self {
        let start = ram_end.max(4 * GIB).div_ceil(GIB) * GIB;
        PciWindows {
            mmio32: MMIO32,
            mmio64: start..start + MMIO64_SIZE,
        }
    }
}

// The windows lie in the hole [3 GiB, 4 GiB), below the PV page at 0xFEB0_0000.
const _: () = assert!(MMIO32.start >= 3 * GIB && MMIO32.end <= ECAM_BASE);
const _: () = assert!(ECAM_BASE + ECAM_SIZE <= 0xFEB0_0000);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_stay_clear_of_ram_and_the_pv_page() {
        assert_eq!(PciWindows::for_ram_end(2 * GIB).mmio64.start, 4 * GIB);
        assert_eq!(PciWindows::for_ram_end(6 * GIB).mmio64.start, 6 * GIB);
        assert_eq!(
            PciWindows::for_ram_end(6 * GIB + 4096).mmio64,
            7 * GIB..71 * GIB
        );
    }
}
