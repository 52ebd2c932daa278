//! The DSDT's AML: the PCI host bridge (so an ACPI guest still finds the bus and the VF on
//! it), a motherboard resource reserving the ECAM window (Linux uses an MCFG region only when
//! firmware reserves it), and COM1: in hardware-reduced mode Linux maps no ISA interrupt by
//! itself, so the serial port's IRQ reaches it only through a device's _CRS.

use super::PciHostBridge;
use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Memory32Fixed, Name,
    ResourceTemplate, Scope, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

const COM1_PORT: u16 = 0x3F8;

/// A Device() with the named objects `names`, as AML bytes.
fn device(name: &str, names: &[(&str, &dyn Aml)]) -> Vec<u8> {
    let objs: Vec<Name> = names
        .iter()
        .map(|(n, v)| Name::new((*n).into(), *v))
        .collect();
    let refs: Vec<&dyn Aml> = objs.iter().map(|n| n as &dyn Aml).collect();
    let mut v = Vec::new();
    Device::new(name.into(), refs).to_aml_bytes(&mut v);
    v
}

/// DSDT revision 2: 64-bit AML integers (the 64-bit window's bounds).
pub fn build(pci: &PciHostBridge, com1_irq: u32) -> Sdt {
    let last_bus = ((pci.ecam_size >> 20).max(1) - 1) as u16;
    let bus = AddressSpace::new_bus_number(0u16, last_bus);
    // conf1 ports, and the rest of the I/O space forwarded below the bridge.
    let conf1 = IO::new(0xCF8, 0xCF8, 1, 8);
    let io_low = AddressSpace::new_io(0u16, 0x0CF7, None);
    let io_high = AddressSpace::new_io(0x0D00u16, 0xFFFF, None);
    let mmio32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        pci.mmio32.start as u32,
        (pci.mmio32.end - 1) as u32,
        None,
    );
    let mmio64 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        pci.mmio64.start,
        pci.mmio64.end - 1,
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &conf1, &io_low, &io_high, &mmio32, &mmio64]);
    let zero = 0u8;
    let mut devices = device(
        "PCI0",
        &[
            ("_HID", &EISAName::new("PNP0A08")),
            ("_CID", &EISAName::new("PNP0A03")),
            ("_ADR", &zero),
            ("_SEG", &zero),
            ("_UID", &zero),
            ("_BBN", &zero),
            // The bus sits with guest node 0; without a _PXM a NUMA guest warns "Unknown
            // NUMA node" for it.
            ("_PXM", &zero),
            ("_CRS", &crs),
        ],
    );
    let ecam = Memory32Fixed::new(false, pci.ecam_base as u32, pci.ecam_size as u32);
    devices.extend(device(
        "MBRD",
        &[
            ("_HID", &EISAName::new("PNP0C02")),
            ("_UID", &zero),
            ("_CRS", &ResourceTemplate::new(vec![&ecam])),
        ],
    ));
    let com_ports = IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com_irq = Interrupt::new(true, true, false, false, com1_irq);
    devices.extend(device(
        "COM1",
        &[
            ("_HID", &EISAName::new("PNP0501")),
            ("_UID", &zero),
            ("_CRS", &ResourceTemplate::new(vec![&com_ports, &com_irq])),
        ],
    ));
    let aml = Scope::raw("\\_SB_".into(), devices);
    let mut sdt = Sdt::new(
        *b"DSDT",
        36,
        2,
        super::OEM_ID,
        super::OEM_TABLE_ID,
        super::OEM_REVISION,
    );
    sdt.append_slice(&aml);
    sdt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge() -> PciHostBridge {
        PciHostBridge {
            ecam_base: 0xE000_0000,
            ecam_size: 1 << 20,
            mmio32: 0xC000_0000..0xE000_0000,
            mmio64: 0x1_0000_0000..0x11_0000_0000,
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn dsdt_header_and_checksum() {
        let d = build(&bridge(), 4);
        let b = d.as_slice();
        assert_eq!(&b[..4], b"DSDT");
        assert_eq!(
            u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(b[8], 2, "revision 2: 64-bit integers");
        assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        // Scope (\_SB_) opens the AML.
        assert_eq!(b[36], 0x10, "ScopeOp");
    }

    #[test]
    fn devices_and_their_resources_are_encoded() {
        let d = build(&bridge(), 4);
        let b = d.as_slice();
        for name in [
            b"PCI0", b"MBRD", b"COM1", b"_CRS", b"_HID", b"_BBN", b"_SEG",
        ] {
            assert!(find(b, name).is_some(), "{}", String::from_utf8_lossy(name));
        }
        // EisaId("PNP0A08") = 0x080AD041, stored as a DWordConst.
        assert!(
            find(b, &[0x0C, 0x41, 0xD0, 0x0A, 0x08]).is_some(),
            "PNP0A08"
        );
        assert!(
            find(b, &[0x0C, 0x41, 0xD0, 0x0C, 0x02]).is_some(),
            "PNP0C02"
        );
        assert!(
            find(b, &[0x0C, 0x41, 0xD0, 0x05, 0x01]).is_some(),
            "PNP0501"
        );
        // QWordMemory descriptor (0x8A) with min 4 GiB and max 68 GiB - 1.
        let q = find(b, &[0x8A, 0x2B, 0x00, 0x00]).expect("QWord memory descriptor");
        let min = u64::from_le_bytes(b[q + 14..q + 22].try_into().unwrap());
        let max = u64::from_le_bytes(b[q + 22..q + 30].try_into().unwrap());
        assert_eq!((min, max), (0x1_0000_0000, 0x10_FFFF_FFFF));
        // DWordMemory (0x87) for the 32-bit window.
        let dw = find(b, &[0x87, 0x17, 0x00, 0x00]).expect("DWord memory descriptor");
        let min32 = u32::from_le_bytes(b[dw + 10..dw + 14].try_into().unwrap());
        assert_eq!(min32, 0xC000_0000);
        // Memory32Fixed (0x86) for the ECAM window.
        let m = find(b, &[0x86, 0x09, 0x00]).expect("Memory32Fixed");
        assert_eq!(
            u32::from_le_bytes(b[m + 4..m + 8].try_into().unwrap()),
            0xE000_0000
        );
        // Extended IRQ descriptor (0x89) for IRQ 4, edge, consumer.
        let i = find(b, &[0x89, 0x06, 0x00]).expect("Interrupt");
        assert_eq!(b[i + 3], 0b0011);
        assert_eq!(u32::from_le_bytes(b[i + 5..i + 9].try_into().unwrap()), 4);
    }
}
