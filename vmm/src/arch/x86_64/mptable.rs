//! The Intel MultiProcessor table (spec 1.4): how a guest kernel without ACPI finds its
//! processors, the IOAPIC and the ISA interrupt routing. Placed in the BIOS area at 0xF0000,
//! one of the places Linux scans for the floating pointer.

use super::layout::{IOAPIC_ADDR, LAPIC_ADDR};

/// xAPIC IDs are 8 bits and 0xFF is broadcast; the IOAPIC takes the ID after the last CPU.
pub const MAX_CPUS: u32 = 254;
const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REV: u8 = 4;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The table's bytes for `cpus` processors, to be written at guest-physical `addr`.
pub fn build(addr: u64, cpus: u32) -> Vec<u8> {
    assert!((1..=MAX_CPUS).contains(&cpus));
    let table_addr = addr as u32 + 16;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = 1 | if id == 0 { 2 } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id as u8, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU and APIC present
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    let ioapic_id = cpus as u8;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            pin,
            ioapic_id,
            pin,
        ]);
        count += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, 0, 0, 0xFF, lint]);
        count += 1;
    }

    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(SPEC_REV);
    header.push(0); // checksum, patched below
    header.extend_from_slice(b"HPMMAP  ");
    header.extend_from_slice(b"HPMMAP-VMM  ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    header.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(SPEC_REV);
    fp.push(0); // checksum
    fp.extend_from_slice(&[0; 5]); // no default configuration, IMCR absent
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&table);
    fp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_pointer() {
        for cpus in [1, 2, 16, MAX_CPUS] {
            let t = build(0xF0000, cpus);
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0);
            assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 0xF0010);
            let len = u16::from_le_bytes(t[20..22].try_into().unwrap()) as usize;
            assert_eq!(len, t.len() - 16);
            assert_eq!(&t[16..20], b"PCMP");
            assert_eq!(sum(&t[16..]), 0);
            assert!(t.len() < 0x10000, "fits in the BIOS area");
        }
    }

    #[test]
    fn one_processor_entry_per_cpu_with_one_bsp() {
        let t = build(0xF0000, 4);
        let body = &t[16 + 44..];
        let cpus: Vec<&[u8]> = body.chunks(20).take(4).collect();
        for (i, c) in cpus.iter().enumerate() {
            assert_eq!(c[0], ENTRY_PROCESSOR);
            assert_eq!(c[1] as usize, i);
            assert_eq!(c[3] & 1, 1);
            assert_eq!(c[3] & 2 != 0, i == 0);
        }
        let count = u16::from_le_bytes(t[16 + 34..16 + 36].try_into().unwrap());
        assert_eq!(count as usize, 4 + 1 + 1 + 24 + 2);
        // The IOAPIC entry follows the bus entry.
        let ioapic = &body[80 + 8..80 + 16];
        assert_eq!((ioapic[0], ioapic[1]), (ENTRY_IOAPIC, 4));
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()),
            0xFEC0_0000
        );
    }
}
