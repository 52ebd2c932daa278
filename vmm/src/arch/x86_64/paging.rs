//! Identity page tables for the 64-bit entry: the first 4 GiB (RAM, and the MMIO hole with the
//! LAPIC, IOAPIC and PV device) mapped with 2 MiB pages. The guest kernel replaces them early.

use super::layout::{IDENTITY_MAP_GIB, PDPT_ADDR, PD_ADDR, PML4_ADDR};

const PRESENT_RW: u64 = 0b11;
const PAGE_SIZE_BIT: u64 = 1 << 7;

/// The tables as (guest-physical address, little-endian 8-byte entries).
pub fn identity_tables() -> Vec<(u64, Vec<u64>)> {
    let mut pml4 = vec![0u64; 512];
    pml4[0] = PDPT_ADDR | PRESENT_RW;
    let mut pdpt = vec![0u64; 512];
    let mut out = vec![];
    for gib in 0..IDENTITY_MAP_GIB {
        let pd_addr = PD_ADDR + gib * 0x1000;
        pdpt[gib as usize] = pd_addr | PRESENT_RW;
        let pd: Vec<u64> = (0..512u64)
            .map(|i| ((gib << 30) | (i << 21)) | PRESENT_RW | PAGE_SIZE_BIT)
            .collect();
        out.push((pd_addr, pd));
    }
    out.insert(0, (PDPT_ADDR, pdpt));
    out.insert(0, (PML4_ADDR, pml4));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables as the MMU would (4-level, 2 MiB leaves).
    fn translate(tables: &[(u64, Vec<u64>)], va: u64) -> Option<u64> {
        let table = |addr: u64| tables.iter().find(|(a, _)| *a == addr).map(|(_, t)| t);
        let e4 = table(PML4_ADDR)?[((va >> 39) & 511) as usize];
        if e4 & 1 == 0 {
            return None;
        }
        let e3 = table(e4 & !0xFFF)?[((va >> 30) & 511) as usize];
        if e3 & 1 == 0 {
            return None;
        }
        let e2 = table(e3 & !0xFFF)?[((va >> 21) & 511) as usize];
        if e2 & 1 == 0 || e2 & PAGE_SIZE_BIT == 0 {
            return None;
        }
        Some((e2 & !0x1F_FFFF & 0x000F_FFFF_FFFF_F000) | (va & 0x1F_FFFF))
    }

    #[test]
    fn first_four_gib_is_identity_mapped() {
        let t = identity_tables();
        for va in [
            0u64,
            0x7000,
            0x20_0000,
            0x3FFF_FFFF,
            0xFEB0_0000,
            0xFEE0_0300,
            0xFFFF_FFFF,
        ] {
            assert_eq!(translate(&t, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&t, 0x1_0000_0000), None);
        // Tables live below 1 MiB and do not overlap.
        let mut addrs: Vec<u64> = t.iter().map(|(a, _)| *a).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), t.len());
        assert!(addrs.iter().all(|a| *a < 0x10_0000 && a % 4096 == 0));
    }
}
