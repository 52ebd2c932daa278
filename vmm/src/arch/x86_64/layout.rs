//! Where the VMM puts its boot structures in low guest memory (all below 1 MiB, inside the
//! first e820 RAM entry, which Linux keeps for itself early in boot).

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x600;
pub const PVH_START_INFO_ADDR: u64 = 0x1000;
pub const PVH_MODLIST_ADDR: u64 = 0x1100;
pub const PVH_MEMMAP_ADDR: u64 = 0x1200;
pub const PVH_MEMMAP_MAX: usize = 128;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK_TOP: u64 = 0x8FF0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xA000;
/// Four page directories of 2 MiB pages: an identity map of the first 4 GiB.
pub const PD_ADDR: u64 = 0xB000;
pub const IDENTITY_MAP_GIB: u64 = 4;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
pub const CMDLINE_MAX: usize = 4096;
pub const MPTABLE_ADDR: u64 = crate::memory::layout::BIOS_START;
pub const IOAPIC_ADDR: u32 = 0xFEC0_0000;
pub const LAPIC_ADDR: u32 = 0xFEE0_0000;
