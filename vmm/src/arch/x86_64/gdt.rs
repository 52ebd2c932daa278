//! The boot GDT and the segment registers KVM is given for the two entry modes.

use kvm_bindings::kvm_segment;

/// Flat segments: null, 64-bit code (0x08), data (0x10), 32-bit code (0x18).
pub const CODE64_SEL: u16 = 0x08;
pub const DATA_SEL: u16 = 0x10;
pub const CODE32_SEL: u16 = 0x18;

/// Packs a descriptor from its flags (high nibble: G, D/B, L, AVL; low byte: access), base
/// and limit, in the layout the CPU reads from memory.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xFF00_0000) << 32)
        | ((flags as u64 & 0xF0FF) << 40)
        | ((limit as u64 & 0x000F_0000) << 32)
        | ((base as u64 & 0x00FF_FFFF) << 16)
        | (limit as u64 & 0x0000_FFFF)
}

pub fn gdt() -> [u64; 4] {
    [
        0,
        descriptor(0xA09B, 0, 0xFFFFF),
        descriptor(0xC093, 0, 0xFFFFF),
        descriptor(0xC09B, 0, 0xFFFFF),
    ]
}

/// The KVM view of a descriptor, so the hidden part of the segment registers matches the GDT.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xFF_FFFF) | ((entry >> 32) & 0xFF00_0000);
    let raw_limit = ((entry & 0xFFFF) | ((entry >> 32) & 0xF_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 {
            (raw_limit << 12) | 0xFFF
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xF) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_well_known_encodings() {
        let g = gdt();
        assert_eq!(g[1], 0x00AF_9B00_0000_FFFF);
        assert_eq!(g[2], 0x00CF_9300_0000_FFFF);
        assert_eq!(g[3], 0x00CF_9B00_0000_FFFF);
    }

    #[test]
    fn segments_decode() {
        let g = gdt();
        let cs = segment(g[1], CODE64_SEL);
        assert_eq!((cs.l, cs.db, cs.type_, cs.present, cs.s), (1, 0, 0xB, 1, 1));
        assert_eq!(cs.limit, 0xFFFF_FFFF);
        let ds = segment(g[2], DATA_SEL);
        assert_eq!((ds.l, ds.db, ds.type_), (0, 1, 3));
        let cs32 = segment(g[3], CODE32_SEL);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        assert_eq!(segment(0, 0).unusable, 1);
    }
}
