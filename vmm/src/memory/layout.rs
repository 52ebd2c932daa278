//! The guest-physical memory layout (docs/architecture.md, Interface 1), the one place the
//! whole map is written down and checked:
//!
//! | range | what | defined in |
//! |---|---|---|
//! | 0x500 .. 0x2_1000 | GDT, IDT, PVH start info, zero page, boot page tables, command line | `arch::x86_64::layout` |
//! | 0xA_0000 .. 0xF_0000 | ACPI tables | here |
//! | 0xF_0000 .. 1 MiB | MP table (BIOS area) | here, `arch::x86_64::layout` |
//! | 1 MiB .. 3 GiB | low RAM | here |
//! | 3 GiB .. 0xE000_0000 | 32-bit PCI BARs | `hpmmap_pci::layout::MMIO32` |
//! | 0xE000_0000 + 1 MiB | PCI ECAM, bus 0 | `hpmmap_pci::layout` |
//! | 0xFEB0_0000 + 4 KiB | the PV device page | here |
//! | 0xFEC0_0000, 0xFEE0_0000 | IOAPIC, LAPIC | `arch::x86_64::layout` |
//! | 4 GiB .. | high RAM, then 64-bit PCI BARs | here, `hpmmap_pci::layout::MMIO64_SIZE` |
//!
//! The constants live next to the code that needs them (the PCI crate cannot depend on the
//! VMM); the compile-time checks at the end of this file hold them to this table.
//!
//! Guest RAM is one host mapping. Host offset `o` backs GPA `o` below 3 GiB and GPA `o + 1 GiB`
//! above, so the 32-bit MMIO hole [3 GiB, 4 GiB) costs no RAM and every 1 GiB-aligned GiB of
//! guest-physical RAM is exactly one 1 GiB-aligned GiB of the host mapping (one 1 GiB page).

use crate::units::{format_size, GIB, MIB};
use thiserror::Error;

/// End of low RAM and start of the 32-bit MMIO hole.
pub const LOW_RAM_END: u64 = 3 * GIB;
/// First GPA above the hole.
pub const HIGH_RAM_START: u64 = 4 * GIB;
/// The paravirtual hpmmap device's MMIO page (Interface 2).
pub const PV_MMIO_BASE: u64 = 0xFEB0_0000;
pub const PV_MMIO_SIZE: u64 = 0x1000;
/// Smallest guest RAM this VMM builds: room for the boot structures below 1 MiB and a kernel.
pub const MIN_RAM: u64 = 32 * MIB;
/// The EBDA and BIOS areas that are kept out of usable RAM.
pub const EBDA_START: u64 = 0x9_FC00;
pub const BIOS_START: u64 = 0xF_0000;
/// The ACPI tables (vmm/src/arch/x86_64/acpi): [0xA0000, 0xF0000), e820 reserved, below the
/// MP table in the BIOS area. 320 KiB: thousands of vCPUs' MADT and SRAT entries fit.
pub const ACPI_START: u64 = 0xA_0000;
pub const ACPI_END: u64 = BIOS_START;
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// The PV device can describe at most this many pool ranges.
pub const MAX_POOL_RANGES: usize = 64;

// The map above, checked where it is built: nothing in the hole overlaps, everything the
// guest reaches by MMIO is inside the hole, and the boot structures stay below the ACPI area.
mod checks {
    use super::*;
    use crate::arch::x86_64::layout as arch;
    use hpmmap_pci::layout as pci;

    const _: () = assert!(pci::MMIO32.start >= LOW_RAM_END);
    const _: () = assert!(pci::MMIO32.end <= pci::ECAM_BASE);
    const _: () = assert!(pci::ECAM_BASE + pci::ECAM_SIZE <= PV_MMIO_BASE);
    const _: () = assert!(PV_MMIO_BASE + PV_MMIO_SIZE <= arch::IOAPIC_ADDR as u64);
    const _: () = assert!((arch::IOAPIC_ADDR as u64) < arch::LAPIC_ADDR as u64);
    const _: () = assert!((arch::LAPIC_ADDR as u64) + 0x1000 <= HIGH_RAM_START);
    const _: () = assert!(arch::CMDLINE_ADDR + arch::CMDLINE_MAX as u64 <= ACPI_START);
    const _: () = assert!(arch::MPTABLE_ADDR == BIOS_START);
    const _: () = assert!(ACPI_END <= HIGH_MEMORY_START);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GpaRange {
    pub base: u64,
    pub size: u64,
}

impl GpaRange {
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base && len <= self.size && addr - self.base <= self.size - len
    }
}

/// One KVM memory slot: a GPA range and the offset into the host mapping that backs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    pub gpa: u64,
    pub host_offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Type {
    Ram = 1,
    Reserved = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Type,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("--mem {0}: below the minimum of {min}", min = format_size(MIN_RAM))]
    RamTooSmall(String),
    #[error("--pool {0}: not a multiple of 1G (pool ranges are whole 1 GiB pages)")]
    PoolNotGiB(String),
    #[error("--pool {pool}: larger than the {avail} of guest RAM available to the pool (--mem {mem}; the first GiB stays with the guest kernel)", pool = format_size(*.0), avail = format_size(*.1), mem = format_size(*.2))]
    PoolTooLarge(u64, u64, u64),
    #[error(
        "--mem {0}: more than {max} of RAM ({MAX_POOL_RANGES} pool ranges)",
        max = "the layout supports"
    )]
    TooManyRanges(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLayout {
    ram_bytes: u64,
    pool: Vec<GpaRange>,
    /// Guest NUMA nodes' RAM sizes, in host-mapping order (one node: all of RAM).
    nodes: Vec<u64>,
}

/// Host-mapping offset to GPA (the hole moves RAM above 3 GiB up by 1 GiB).
fn offset_to_gpa(o: u64) -> u64 {
    if o < LOW_RAM_END {
        o
    } else {
        o + (HIGH_RAM_START - LOW_RAM_END)
    }
}

impl GuestLayout {
    /// `pool`: `None` takes the default (every whole GiB of RAM except the first).
    pub fn new(ram_bytes: u64, pool: Option<u64>) -> Result<Self, LayoutError> {
        Self::with_nodes(ram_bytes, pool, &[ram_bytes])
    }

    /// A layout whose RAM is split into guest NUMA nodes of `nodes` bytes each (host-mapping
    /// order, adding up to `ram_bytes`). Each node keeps its first GiB for the guest kernel
    /// (so no node is memoryless), and no pool range spans two nodes.
    pub fn with_nodes(
        ram_bytes: u64,
        pool: Option<u64>,
        nodes: &[u64],
    ) -> Result<Self, LayoutError> {
        if ram_bytes < MIN_RAM {
            return Err(LayoutError::RamTooSmall(format_size(ram_bytes)));
        }
        assert_eq!(
            nodes.iter().sum::<u64>(),
            ram_bytes,
            "node sizes add up to RAM"
        );
        let candidates = Self::pool_candidates(nodes);
        let avail = candidates.len() as u64 * GIB;
        let want = match pool {
            None => avail,
            Some(p) if p % GIB != 0 => return Err(LayoutError::PoolNotGiB(format_size(p))),
            Some(p) if p > avail => return Err(LayoutError::PoolTooLarge(p, avail, ram_bytes)),
            Some(p) => p,
        };
        // The pool takes the highest GiBs so the low ones stay with the guest kernel, which
        // needs memory below 4 GiB for its early allocations and DMA32.
        let take = (want / GIB) as usize;
        let mut gibs: Vec<(usize, u64)> = candidates[candidates.len() - take..].to_vec();
        gibs.sort_unstable();
        let mut ranges: Vec<GpaRange> = Vec::new();
        let mut last_node = usize::MAX;
        for (node, base) in gibs {
            match ranges.last_mut() {
                Some(r) if r.end() == base && node == last_node => r.size += GIB,
                _ => ranges.push(GpaRange { base, size: GIB }),
            }
            last_node = node;
        }
        if ranges.len() > MAX_POOL_RANGES {
            return Err(LayoutError::TooManyRanges(format_size(ram_bytes)));
        }
        Ok(GuestLayout {
            ram_bytes,
            pool: ranges,
            nodes: nodes.to_vec(),
        })
    }

    /// (node, GPA base) of every whole 1 GiB-aligned GiB of RAM except each node's first, in
    /// GPA order. The hole starts and ends on a GiB, so a host-aligned GiB is a GPA one.
    fn pool_candidates(nodes: &[u64]) -> Vec<(usize, u64)> {
        let mut v = Vec::new();
        let mut start = 0;
        for (i, size) in nodes.iter().enumerate() {
            let end = start + size;
            let mut o = start.div_ceil(GIB) * GIB;
            while o + GIB <= end {
                if o != start {
                    v.push((i, offset_to_gpa(o)));
                }
                o += GIB;
            }
            start = end;
        }
        v
    }

    /// Each guest node's guest-physical RAM ranges (pool included), as (node, range), in
    /// node order: what the SRAT says.
    pub fn node_ranges(&self) -> Vec<(u32, GpaRange)> {
        let mut v = Vec::new();
        let mut start = 0;
        for (i, size) in self.nodes.iter().enumerate() {
            let end = start + size;
            // At most two pieces: below the hole and above it.
            for (a, b) in [(start, end.min(LOW_RAM_END)), (start.max(LOW_RAM_END), end)] {
                if a < b {
                    v.push((
                        i as u32,
                        GpaRange {
                            base: offset_to_gpa(a),
                            size: b - a,
                        },
                    ));
                }
            }
            start = end;
        }
        v
    }

    /// Guest NUMA nodes' RAM sizes in host-mapping order.
    pub fn node_sizes(&self) -> &[u64] {
        &self.nodes
    }

    fn regions_for(ram_bytes: u64) -> Vec<RamRegion> {
        let low = ram_bytes.min(LOW_RAM_END);
        let mut v = vec![RamRegion {
            gpa: 0,
            host_offset: 0,
            size: low,
        }];
        if ram_bytes > LOW_RAM_END {
            v.push(RamRegion {
                gpa: HIGH_RAM_START,
                host_offset: LOW_RAM_END,
                size: ram_bytes - LOW_RAM_END,
            });
        }
        v
    }

    pub fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }

    pub fn ram_regions(&self) -> Vec<RamRegion> {
        Self::regions_for(self.ram_bytes)
    }

    pub fn pool_ranges(&self) -> &[GpaRange] {
        &self.pool
    }

    pub fn pool_bytes(&self) -> u64 {
        self.pool.iter().map(|r| r.size).sum()
    }

    /// Host-mapping offset of `[gpa, gpa+len)` when the whole range is RAM.
    pub fn gpa_to_offset(&self, gpa: u64, len: u64) -> Option<u64> {
        self.ram_regions().into_iter().find_map(|r| {
            let range = GpaRange {
                base: r.gpa,
                size: r.size,
            };
            range
                .contains(gpa, len)
                .then(|| r.host_offset + (gpa - r.gpa))
        })
    }

    /// Highest GPA (exclusive) of RAM the guest kernel may use below 4 GiB in one piece from
    /// 1 MiB: where the first pool range or the end of low RAM begins.
    pub fn low_usable_end(&self) -> u64 {
        let low_end = self.ram_bytes.min(LOW_RAM_END);
        self.pool
            .iter()
            .map(|r| r.base)
            .filter(|b| *b < low_end)
            .min()
            .unwrap_or(low_end)
    }

    /// The e820 map handed to the guest: RAM with the pool carved out as reserved, the EBDA,
    /// ACPI tables and BIOS area reserved, the MMIO hole (and the PV device page in it) absent.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut out = vec![
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820Type::Ram,
            },
            E820Entry {
                addr: EBDA_START,
                size: 0xA_0000 - EBDA_START,
                kind: E820Type::Reserved,
            },
            E820Entry {
                addr: ACPI_START,
                size: ACPI_END - ACPI_START,
                kind: E820Type::Reserved,
            },
            E820Entry {
                addr: BIOS_START,
                size: HIGH_MEMORY_START - BIOS_START,
                kind: E820Type::Reserved,
            },
        ];
        for r in self.ram_regions() {
            let start = r.gpa.max(HIGH_MEMORY_START);
            let end = r.gpa + r.size;
            let mut cursor = start;
            for p in self.pool.iter().filter(|p| p.base < end && p.end() > start) {
                if p.base > cursor {
                    out.push(E820Entry {
                        addr: cursor,
                        size: p.base - cursor,
                        kind: E820Type::Ram,
                    });
                }
                out.push(E820Entry {
                    addr: p.base,
                    size: p.size,
                    kind: E820Type::Reserved,
                });
                cursor = p.end();
            }
            if cursor < end {
                out.push(E820Entry {
                    addr: cursor,
                    size: end - cursor,
                    kind: E820Type::Ram,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(e: &[E820Entry]) -> u64 {
        e.iter()
            .filter(|e| e.kind == E820Type::Ram)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_guest_is_one_region_without_pool() {
        let l = GuestLayout::new(64 * MIB, None).unwrap();
        assert_eq!(
            l.ram_regions(),
            vec![RamRegion {
                gpa: 0,
                host_offset: 0,
                size: 64 * MIB
            }]
        );
        assert!(l.pool_ranges().is_empty());
        assert_eq!(l.low_usable_end(), 64 * MIB);
    }

    #[test]
    fn ram_above_3g_moves_above_the_hole() {
        let l = GuestLayout::new(18 * GIB, None).unwrap();
        let r = l.ram_regions();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].gpa, 4 * GIB);
        assert_eq!(r[1].host_offset, 3 * GIB);
        assert_eq!(r[1].size, 15 * GIB);
        // Every GiB of GPA RAM starts at a 1 GiB-aligned host offset.
        for g in [0u64, 1, 2, 4, 5, 18] {
            let off = l.gpa_to_offset(g * GIB, GIB).unwrap();
            assert_eq!(off % GIB, 0);
        }
        assert_eq!(l.gpa_to_offset(3 * GIB, 1), None);
        assert_eq!(l.gpa_to_offset(19 * GIB, 1), None);
        assert_eq!(l.gpa_to_offset(3 * GIB - 4096, 8192), None);
    }

    #[test]
    fn default_pool_is_every_gib_but_the_first() {
        let l = GuestLayout::new(18 * GIB, None).unwrap();
        assert_eq!(
            l.pool_ranges(),
            &[
                GpaRange {
                    base: GIB,
                    size: 2 * GIB
                },
                GpaRange {
                    base: 4 * GIB,
                    size: 15 * GIB
                }
            ]
        );
        assert_eq!(l.pool_bytes(), 17 * GIB);
        assert_eq!(l.low_usable_end(), GIB);
    }

    #[test]
    fn explicit_pool_comes_from_the_top() {
        let l = GuestLayout::new(18 * GIB, Some(4 * GIB)).unwrap();
        assert_eq!(
            l.pool_ranges(),
            &[GpaRange {
                base: 15 * GIB,
                size: 4 * GIB
            }]
        );
        assert_eq!(l.low_usable_end(), 3 * GIB);
        let l = GuestLayout::new(18 * GIB, Some(16 * GIB)).unwrap();
        assert_eq!(
            l.pool_ranges()[0],
            GpaRange {
                base: 2 * GIB,
                size: GIB
            }
        );
        assert_eq!(GuestLayout::new(2 * GIB, Some(0)).unwrap().pool_bytes(), 0);
    }

    #[test]
    fn pool_errors() {
        assert!(matches!(
            GuestLayout::new(4 * GIB, Some(4 * GIB)),
            Err(LayoutError::PoolTooLarge(..))
        ));
        assert!(matches!(
            GuestLayout::new(4 * GIB, Some(GIB + MIB)),
            Err(LayoutError::PoolNotGiB(_))
        ));
        assert!(matches!(
            GuestLayout::new(MIB, None),
            Err(LayoutError::RamTooSmall(_))
        ));
    }

    #[test]
    fn nodes_keep_their_first_gib_and_split_the_pool() {
        // 18 GiB in two nodes of 9: node 0 is GPA [0, 3G) + [4G, 10G), node 1 [10G, 19G).
        let l = GuestLayout::with_nodes(18 * GIB, None, &[9 * GIB, 9 * GIB]).unwrap();
        assert_eq!(
            l.node_ranges(),
            vec![
                (
                    0,
                    GpaRange {
                        base: 0,
                        size: 3 * GIB
                    }
                ),
                (
                    0,
                    GpaRange {
                        base: 4 * GIB,
                        size: 6 * GIB
                    }
                ),
                (
                    1,
                    GpaRange {
                        base: 10 * GIB,
                        size: 9 * GIB
                    }
                ),
            ]
        );
        assert_eq!(
            l.pool_ranges(),
            &[
                GpaRange {
                    base: GIB,
                    size: 2 * GIB
                },
                GpaRange {
                    base: 4 * GIB,
                    size: 6 * GIB
                },
                GpaRange {
                    base: 11 * GIB,
                    size: 8 * GIB
                },
            ],
            "node 1's first GiB (GPA 10G) stays usable; no range spans both nodes"
        );
        assert_eq!(l.pool_bytes(), 16 * GIB);
        // Node 2 ([2G, 4G) of the mapping): its second GiB lies above the hole.
        let l = GuestLayout::with_nodes(4 * GIB, None, &[GIB, GIB, 2 * GIB]).unwrap();
        assert_eq!(
            l.pool_ranges(),
            &[GpaRange {
                base: 4 * GIB,
                size: GIB
            }]
        );
        let l = GuestLayout::with_nodes(2 * GIB, None, &[GIB, GIB]).unwrap();
        assert!(l.pool_ranges().is_empty());
        // SRAT ranges cover exactly the RAM the e820 lists (usable or reserved pool).
        let l = GuestLayout::with_nodes(18 * GIB, None, &[9 * GIB, 9 * GIB]).unwrap();
        let srat: u64 = l.node_ranges().iter().map(|(_, r)| r.size).sum();
        assert_eq!(srat, 18 * GIB);
        for e in l.e820().iter().filter(|e| e.addr >= HIGH_MEMORY_START) {
            let inside = l
                .node_ranges()
                .iter()
                .any(|(_, r)| r.contains(e.addr, e.size));
            assert!(inside, "{e:?} lies in one node's range");
        }
        // One node: the same layout as before.
        assert_eq!(
            GuestLayout::with_nodes(18 * GIB, None, &[18 * GIB]).unwrap(),
            GuestLayout::new(18 * GIB, None).unwrap()
        );
    }

    #[test]
    fn partial_gib_is_not_pool() {
        // 2.5 GiB: only [1G, 2G) is a whole GiB besides the first.
        let l = GuestLayout::new(2 * GIB + 512 * MIB, None).unwrap();
        assert_eq!(
            l.pool_ranges(),
            &[GpaRange {
                base: GIB,
                size: GIB
            }]
        );
    }

    #[test]
    fn e820_reserves_pool_and_keeps_all_ram() {
        for (mem, pool) in [
            (18 * GIB, None),
            (2 * GIB, None),
            (64 * MIB, None),
            (5 * GIB, Some(GIB)),
        ] {
            let l = GuestLayout::new(mem, pool).unwrap();
            let e = l.e820();
            // Sorted, non-overlapping.
            for w in e.windows(2) {
                assert!(w[0].addr + w[0].size <= w[1].addr, "{e:?}");
            }
            // Usable RAM = all RAM minus pool minus the legacy hole [EBDA, 1M).
            assert_eq!(
                ram(&e),
                mem - l.pool_bytes() - (HIGH_MEMORY_START - EBDA_START)
            );
            for p in l.pool_ranges() {
                assert!(e.contains(&E820Entry {
                    addr: p.base,
                    size: p.size,
                    kind: E820Type::Reserved
                }));
            }
            // The PV page is never in the map.
            assert!(e
                .iter()
                .all(|x| x.addr + x.size <= PV_MMIO_BASE || x.addr >= PV_MMIO_BASE + PV_MMIO_SIZE));
        }
    }
}
