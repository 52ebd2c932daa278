//! Hardware-reduced ACPI for the guest (ACPI 6.5): RSDP, XSDT, FADT, DSDT, MADT, MCFG, SRAT
//! and SLIT, built with the rust-vmm `acpi_tables` crate and, where it has no such entry,
//! with `entries`. The tables are what tell the guest kernel its NUMA nodes (SRAT, SLIT),
//! processors beyond the MP table's 254 xAPIC IDs (MADT x2APIC entries) and the ECAM window
//! (MCFG), none of which the MP table can say.
//!
//! Everything lies in one blob written at `ACPI_START` (below 1 MiB, an e820 reserved range;
//! docs/architecture.md, Interface 1), the RSDP first, so the guest finds it through the PVH
//! start info (`rsdp_paddr`) or the zero page (`acpi_rsdp_addr`), and by scanning too.

pub mod dsdt;
pub mod entries;

use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::slit::SLIT;
use acpi_tables::srat::MemoryAffinity;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use entries::*;
use std::ops::Range;
use thiserror::Error;

use super::layout::{IOAPIC_ADDR, LAPIC_ADDR};

pub const OEM_ID: [u8; 6] = *b"HPMMAP";
pub const OEM_TABLE_ID: [u8; 8] = *b"HPMMAPVM";
const OEM_REVISION: u32 = 1;
/// xAPIC IDs are 8 bits and 0xFF is broadcast: higher IDs need x2APIC entries.
pub const MAX_XAPIC_ID: u32 = 254;
/// IAPC_BOOT_ARCH (FADT offset 109): no VGA, no PCIe ASPM. Not "8042" (bit 1): the VMM's
/// i8042 only takes the reset command, which Linux sends without a driver, and a probing
/// driver fails loudly. Not "MSI not supported" (bit 3): Linux would turn MSI off for every
/// device, and the VF is MSI-X only.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_ASPM_UNSUPPORTED: u16 = 1 << 4;
const COM1_IRQ: u32 = 4;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("ACPI tables for {vcpus} vCPUs and {nodes} NUMA node(s) take {need} bytes, more than the {room} reserved for them")]
    TooLarge {
        vcpus: usize,
        nodes: usize,
        need: usize,
        room: usize,
    },
    #[error("ACPI: the distance matrix is {rows}x?, not {nodes}x{nodes}")]
    Distances { rows: usize, nodes: usize },
}

/// One vCPU: its APIC ID (= its index) and guest NUMA node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuAffinity {
    pub apic_id: u32,
    pub node: u32,
}

/// One guest-physical RAM range and its guest NUMA node (RAM and pool alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemAffinity {
    pub base: u64,
    pub size: u64,
    pub node: u32,
}

/// The PCI root bus as the guest must see it in the DSDT and MCFG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciHostBridge {
    pub ecam_base: u64,
    pub ecam_size: u64,
    pub mmio32: Range<u64>,
    pub mmio64: Range<u64>,
}

/// What the tables describe.
#[derive(Debug, Clone)]
pub struct Platform {
    pub cpus: Vec<CpuAffinity>,
    pub memory: Vec<MemAffinity>,
    /// SLIT: `distances[i][j]` from guest node i to j (10 = local); one row per node.
    pub distances: Vec<Vec<u8>>,
    pub pci: PciHostBridge,
}

/// The tables as one blob to write at `base`.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    pub base: u64,
    pub bytes: Vec<u8>,
    /// Guest-physical address of the RSDP (= base).
    pub rsdp: u64,
    /// (signature, guest-physical address, length) of every table, for tests and the report.
    pub tables: Vec<([u8; 4], u64, usize)>,
}

/// Appends tables 8-byte aligned, keeping track of their addresses.
struct Blob {
    base: u64,
    bytes: Vec<u8>,
    tables: Vec<([u8; 4], u64, usize)>,
}

impl Blob {
    fn add(&mut self, table: &dyn Aml) -> u64 {
        while !self.bytes.len().is_multiple_of(8) {
            self.bytes.push(0);
        }
        let at = self.bytes.len();
        table.to_aml_bytes(&mut self.bytes);
        let sig: [u8; 4] = self.bytes[at..at + 4].try_into().unwrap();
        let addr = self.base + at as u64;
        self.tables.push((sig, addr, self.bytes.len() - at));
        addr
    }
}

fn nodes_of(p: &Platform) -> usize {
    p.distances.len().max(1)
}

fn madt(p: &Platform) -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    // Linux numbers CPUs in table order: the boot CPU (APIC ID 0) comes first.
    for (uid, c) in p.cpus.iter().enumerate() {
        if c.apic_id <= MAX_XAPIC_ID && uid <= MAX_XAPIC_ID as usize {
            madt.add_structure(ProcessorLocalApic::new(
                uid as u8,
                c.apic_id as u8,
                EnabledStatus::Enabled,
            ));
        } else {
            madt.add_structure(LocalX2Apic::enabled(c.apic_id, uid as u32));
        }
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    // KVM's default routing wires ISA IRQ n to IOAPIC pin n: say so for the two ISA
    // interrupts a guest uses (the PIT and COM1), edge triggered, active high.
    madt.add_structure(InterruptSourceOverride::isa(0, 0, INTI_EDGE_HIGH));
    madt.add_structure(InterruptSourceOverride::isa(
        COM1_IRQ as u8,
        COM1_IRQ,
        INTI_EDGE_HIGH,
    ));
    madt.add_structure(LocalApicNmi::all(1));
    if p.cpus.len() > MAX_XAPIC_ID as usize + 1 {
        madt.add_structure(LocalX2ApicNmi::all(1));
    }
    madt
}

fn srat(p: &Platform) -> Sdt {
    // Header, then the reserved dword that must be 1 and a reserved qword.
    let mut srat = Sdt::new(*b"SRAT", 48, 3, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    srat.write_u32(36, 1);
    for c in &p.cpus {
        if c.apic_id <= MAX_XAPIC_ID {
            srat.append_slice(&bytes_of(&ApicAffinity::enabled(c.apic_id as u8, c.node)));
        } else {
            srat.append_slice(&bytes_of(&X2ApicAffinity::enabled(c.apic_id, c.node)));
        }
    }
    for m in &p.memory {
        srat.append_slice(&bytes_of(
            &MemoryAffinity::new(m.node, m.base, m.size).enabled(),
        ));
    }
    srat
}

fn slit(p: &Platform) -> Result<SLIT, AcpiError> {
    let n = nodes_of(p);
    if p.distances.len() != n || p.distances.iter().any(|r| r.len() != n) {
        return Err(AcpiError::Distances {
            rows: p.distances.len(),
            nodes: n,
        });
    }
    let mut slit = SLIT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, n as u32);
    // The crate sets both directions at once; a host's SLIT is symmetric, so the upper
    // triangle says it all.
    for i in 0..n {
        for j in i + 1..n {
            slit.set_distance(i, j, p.distances[i][j]);
        }
    }
    Ok(slit)
}

/// Builds every table for `p` to lie at `base`, in at most `room` bytes.
pub fn build(p: &Platform, base: u64, room: usize) -> Result<AcpiTables, AcpiError> {
    assert!(base.is_multiple_of(16), "the RSDP is 16-byte aligned");
    let mut blob = Blob {
        base,
        bytes: vec![0; Rsdp::len()],
        tables: Vec::new(),
    };
    let dsdt = blob.add(&dsdt::build(&p.pci, COM1_IRQ));
    let fadt = {
        let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
            .dsdt_64(dsdt)
            .flag(Flags::HwReducedAcpi)
            .preferred_pm_profile(PmProfile::EnterpriseServer);
        f.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_ASPM_UNSUPPORTED).into();
        f.finalize()
    };
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(blob.add(&fadt));
    xsdt.add_entry(blob.add(&madt(p)));
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let last_bus = (p.pci.ecam_size >> 20).saturating_sub(1) as u8;
    mcfg.add_ecam(p.pci.ecam_base, 0, 0, last_bus);
    xsdt.add_entry(blob.add(&mcfg));
    xsdt.add_entry(blob.add(&srat(p)));
    xsdt.add_entry(blob.add(&slit(p)?));
    let xsdt_addr = blob.add(&xsdt);
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    blob.bytes[..rsdp.len()].copy_from_slice(&rsdp);
    if blob.bytes.len() > room {
        return Err(AcpiError::TooLarge {
            vcpus: p.cpus.len(),
            nodes: nodes_of(p),
            need: blob.bytes.len(),
            room,
        });
    }
    Ok(AcpiTables {
        base,
        bytes: blob.bytes,
        rsdp: base,
        tables: blob.tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const BASE: u64 = 0xA_0000;

    fn platform(vcpus: u32, nodes: u32) -> Platform {
        let per = vcpus.div_ceil(nodes);
        Platform {
            cpus: (0..vcpus)
                .map(|i| CpuAffinity {
                    apic_id: i,
                    node: i / per,
                })
                .collect(),
            memory: (0..nodes)
                .map(|n| MemAffinity {
                    base: if n == 0 { 0 } else { (4 + n as u64) * GIB },
                    size: GIB,
                    node: n,
                })
                .collect(),
            distances: (0..nodes)
                .map(|i| (0..nodes).map(|j| if i == j { 10 } else { 21 }).collect())
                .collect(),
            pci: PciHostBridge {
                ecam_base: 0xE000_0000,
                ecam_size: 1 << 20,
                mmio32: 0xC000_0000..0xE000_0000,
                mmio64: 8 * GIB..72 * GIB,
            },
        }
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }
    fn table<'a>(t: &'a AcpiTables, sig: &[u8; 4]) -> &'a [u8] {
        let (_, addr, len) = t.tables.iter().find(|(s, ..)| s == sig).unwrap();
        let off = (addr - t.base) as usize;
        &t.bytes[off..off + len]
    }
    /// Walks a table's entries (type, length) from `start`.
    fn entries(t: &[u8], start: usize) -> Vec<(u8, &[u8])> {
        let mut v = Vec::new();
        let mut o = start;
        while o < t.len() {
            let len = t[o + 1] as usize;
            assert!(len >= 2, "zero-length entry at {o}");
            v.push((t[o], &t[o..o + len]));
            o += len;
        }
        assert_eq!(o, t.len(), "entries fill the table exactly");
        v
    }

    #[test]
    fn rsdp_xsdt_and_every_checksum() {
        let t = build(&platform(4, 2), BASE, 0x5_0000).unwrap();
        let r = &t.bytes[..36];
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(
            sum(&r[..20]),
            0,
            "ACPI 1.0 checksum over the first 20 bytes"
        );
        assert_eq!(sum(r), 0, "extended checksum");
        assert_eq!(r[15], 2, "revision 2: XSDT");
        assert_eq!(u32_at(r, 20), 36, "length");
        assert_eq!(&r[9..15], b"HPMMAP");
        let xsdt_addr = u64_at(r, 24);
        let x = table(&t, b"XSDT");
        assert_eq!(
            t.base + (x.as_ptr() as u64 - t.bytes.as_ptr() as u64),
            xsdt_addr
        );
        let listed: Vec<u64> = (36..x.len()).step_by(8).map(|o| u64_at(x, o)).collect();
        let mut sigs = Vec::new();
        for a in &listed {
            let (s, _, _) = t.tables.iter().find(|(_, addr, _)| addr == a).unwrap();
            sigs.push(*s);
            assert_eq!(a % 8, 0, "tables are 8-byte aligned");
        }
        assert_eq!(sigs, vec![*b"FACP", *b"APIC", *b"MCFG", *b"SRAT", *b"SLIT"]);
        for (sig, _, len) in &t.tables {
            let b = table(&t, sig);
            assert_eq!(
                u32_at(b, 4) as usize,
                *len,
                "{}",
                String::from_utf8_lossy(sig)
            );
            assert_eq!(sum(b), 0, "{} checksum", String::from_utf8_lossy(sig));
            assert_eq!(&b[10..16], b"HPMMAP");
        }
    }

    #[test]
    fn fadt_is_hardware_reduced_with_msi_allowed_and_points_at_the_dsdt() {
        let t = build(&platform(2, 1), BASE, 0x5_0000).unwrap();
        let f = table(&t, b"FACP");
        assert_eq!(f.len(), 276, "FADT of ACPI 6.x");
        assert_eq!((f[8], f[131]), (6, 5), "major and minor version");
        let flags = u32_at(f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        let boot_arch = u16::from_le_bytes([f[109], f[110]]);
        assert_eq!(boot_arch & (1 << 3), 0, "MSI not present must stay clear");
        assert_eq!(boot_arch, (1 << 2) | (1 << 4), "no VGA, no ASPM");
        assert_eq!(u32_at(f, 40), 0, "32-bit DSDT pointer unused");
        let dsdt = u64_at(f, 140);
        let (sig, _, _) = t.tables.iter().find(|(_, a, _)| *a == dsdt).unwrap();
        assert_eq!(sig, b"DSDT");
    }

    #[test]
    fn madt_lists_every_cpu_the_ioapic_and_overrides() {
        let t = build(&platform(3, 1), BASE, 0x5_0000).unwrap();
        let m = table(&t, b"APIC");
        assert_eq!(u32_at(m, 36), 0xFEE0_0000, "local APIC address");
        let e = entries(m, 44);
        let lapics: Vec<_> = e.iter().filter(|(k, _)| *k == 0).collect();
        assert_eq!(lapics.len(), 3);
        for (i, (_, b)) in lapics.iter().enumerate() {
            assert_eq!((b[2] as usize, b[3] as usize), (i, i), "UID and APIC ID");
            assert_eq!(u32_at(b, 4), 1, "enabled");
        }
        let ioapic = e.iter().find(|(k, _)| *k == 1).unwrap().1;
        assert_eq!(u32_at(ioapic, 4), 0xFEC0_0000);
        assert_eq!(u32_at(ioapic, 8), 0, "GSI base");
        let isos: Vec<u8> = e
            .iter()
            .filter(|(k, _)| *k == 2)
            .map(|(_, b)| b[3])
            .collect();
        assert_eq!(isos, vec![0, 4]);
        assert!(e.iter().any(|(k, b)| *k == 4 && b[5] == 1), "NMI on LINT1");
        assert!(
            e.iter().all(|(k, _)| *k != 9),
            "no x2APIC entry below 255 CPUs"
        );
    }

    #[test]
    fn madt_and_srat_use_x2apic_entries_past_254() {
        let t = build(&platform(384, 2), BASE, 0x5_0000).unwrap();
        let m = table(&t, b"APIC");
        let e = entries(m, 44);
        assert_eq!(e.iter().filter(|(k, _)| *k == 0).count(), 255);
        let x2: Vec<u32> = e
            .iter()
            .filter(|(k, _)| *k == 9)
            .map(|(_, b)| u32_at(b, 4))
            .collect();
        assert_eq!(x2, (255..384).collect::<Vec<u32>>());
        assert!(e.iter().any(|(k, _)| *k == 10), "x2APIC NMI");
        let s = table(&t, b"SRAT");
        let se = entries(s, 48);
        assert_eq!(se.iter().filter(|(k, _)| *k == 0).count(), 255);
        let x2aff: Vec<_> = se.iter().filter(|(k, _)| *k == 2).collect();
        assert_eq!(x2aff.len(), 129);
        let last = x2aff.last().unwrap().1;
        assert_eq!(
            (u32_at(last, 4), u32_at(last, 8)),
            (1, 383),
            "node 1, x2APIC 383"
        );
    }

    #[test]
    fn srat_memory_and_cpus_by_node_and_slit_distances() {
        let t = build(&platform(4, 2), BASE, 0x5_0000).unwrap();
        let s = table(&t, b"SRAT");
        assert_eq!(s[8], 3, "SRAT revision 3");
        assert_eq!(u32_at(s, 36), 1, "reserved 1 for compatibility");
        let e = entries(s, 48);
        let cpu_nodes: Vec<(u8, u8)> = e
            .iter()
            .filter(|(k, _)| *k == 0)
            .map(|(_, b)| (b[3], b[2]))
            .collect();
        assert_eq!(cpu_nodes, vec![(0, 0), (1, 0), (2, 1), (3, 1)]);
        let mem: Vec<(u32, u64, u64, u32)> = e
            .iter()
            .filter(|(k, _)| *k == 1)
            .map(|(_, b)| (u32_at(b, 2), u64_at(b, 8), u64_at(b, 16), u32_at(b, 28)))
            .collect();
        assert_eq!(mem, vec![(0, 0, GIB, 1), (1, 5 * GIB, GIB, 1)]);
        let l = table(&t, b"SLIT");
        assert_eq!(u64_at(l, 36), 2);
        assert_eq!(&l[44..48], &[10, 21, 21, 10]);
    }

    #[test]
    fn mcfg_names_the_ecam_window() {
        let t = build(&platform(1, 1), BASE, 0x5_0000).unwrap();
        let m = table(&t, b"MCFG");
        assert_eq!(m.len(), 44 + 16);
        assert_eq!(u64_at(m, 44), 0xE000_0000);
        assert_eq!(u16::from_le_bytes([m[52], m[53]]), 0, "segment");
        assert_eq!((m[54], m[55]), (0, 0), "buses 0-0");
    }

    #[test]
    fn errors() {
        let p = platform(384, 2);
        assert!(matches!(
            build(&p, BASE, 4096),
            Err(AcpiError::TooLarge { vcpus: 384, .. })
        ));
        let mut bad = platform(2, 2);
        bad.distances.pop();
        assert!(matches!(
            build(&bad, BASE, 0x5_0000),
            Err(AcpiError::Distances { .. })
        ));
    }

    #[test]
    fn size_grows_linearly_with_vcpus() {
        let small = build(&platform(64, 2), BASE, 1 << 20).unwrap().bytes.len();
        let large = build(&platform(384, 2), BASE, 1 << 20).unwrap().bytes.len();
        // Per vCPU at most an x2APIC MADT entry (16) and an x2APIC SRAT entry (24).
        assert!(large - small <= 320 * 40, "{small} {large}");
        assert!(large < 0x5_0000, "384 vCPUs fit the reserved area");
    }
}
