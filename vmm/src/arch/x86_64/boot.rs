//! The two boot information blocks: the Linux zero page (boot_params) for the 64-bit entry and
//! the PVH start_info for the PVH entry. Both carry the same e820 map, command line and initrd.

use crate::memory::layout::{E820Entry, E820Type};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};

use super::layout::{PVH_MEMMAP_ADDR, PVH_MEMMAP_MAX, PVH_MODLIST_ADDR};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xAA55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xFF;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336E_C578;
const E820_MAX_ZEROPAGE: usize = 128;

/// Views a plain C struct as bytes for copying into guest memory.
pub fn pod_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is one of the bindgen-generated boot structures: repr(C), Copy, no pointers,
    // fully initialised (they are built from Default and field writes).
    unsafe { std::slice::from_raw_parts(value as *const T as *const u8, std::mem::size_of::<T>()) }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initrd {
    pub addr: u64,
    pub size: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootInfoError {
    #[error("the e820 map has {0} entries, more than the {1} the boot protocol carries")]
    TooManyE820(usize, usize),
}

/// The zero page for the 64-bit boot protocol. `hdr` is the bzImage's setup header, or `None`
/// for an ELF kernel, where the loader fills in the fields the kernel reads.
pub fn zero_page(
    e820: &[E820Entry],
    cmdline_addr: u64,
    cmdline_len: usize,
    initrd: Option<Initrd>,
    hdr: Option<setup_header>,
    rsdp: Option<u64>,
) -> Result<boot_params, BootInfoError> {
    if e820.len() > E820_MAX_ZEROPAGE {
        return Err(BootInfoError::TooManyE820(e820.len(), E820_MAX_ZEROPAGE));
    }
    let mut bp = boot_params {
        hdr: hdr.unwrap_or_default(),
        ..Default::default()
    };
    bp.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    bp.hdr.header = KERNEL_HDR_MAGIC;
    bp.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    if bp.hdr.kernel_alignment == 0 {
        bp.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    bp.hdr.cmd_line_ptr = cmdline_addr as u32;
    bp.hdr.cmdline_size = cmdline_len as u32;
    if let Some(rd) = initrd {
        bp.hdr.ramdisk_image = rd.addr as u32;
        bp.hdr.ramdisk_size = rd.size as u32;
        bp.ext_ramdisk_image = (rd.addr >> 32) as u32;
        bp.ext_ramdisk_size = (rd.size >> 32) as u32;
    }
    for (i, e) in e820.iter().enumerate() {
        bp.e820_table[i] = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    bp.e820_entries = e820.len() as u8;
    bp.acpi_rsdp_addr = rsdp.unwrap_or(0);
    Ok(bp)
}

/// Bytes to write at a guest-physical address.
pub type Piece = (u64, Vec<u8>);

/// The PVH start_info and its tables, as (guest address, bytes) pieces to write.
pub fn pvh_start_info(
    e820: &[E820Entry],
    cmdline_addr: u64,
    initrd: Option<Initrd>,
    rsdp: Option<u64>,
) -> Result<(hvm_start_info, Vec<Piece>), BootInfoError> {
    if e820.len() > PVH_MEMMAP_MAX {
        return Err(BootInfoError::TooManyE820(e820.len(), PVH_MEMMAP_MAX));
    }
    let mut pieces = Vec::new();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: cmdline_addr,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: e820.len() as u32,
        rsdp_paddr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    let mut memmap = Vec::new();
    for e in e820 {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        };
        memmap.extend_from_slice(pod_bytes(&entry));
    }
    pieces.push((PVH_MEMMAP_ADDR, memmap));
    if let Some(rd) = initrd {
        let m = hvm_modlist_entry {
            paddr: rd.addr,
            size: rd.size,
            cmdline_paddr: 0,
            reserved: 0,
        };
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
        pieces.push((PVH_MODLIST_ADDR, pod_bytes(&m).to_vec()));
    }
    Ok((info, pieces))
}

/// Used by tests and the report: the e820 type names.
pub fn e820_name(kind: E820Type) -> &'static str {
    match kind {
        E820Type::Ram => "usable",
        E820Type::Reserved => "reserved",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::layout::GuestLayout;
    use crate::units::GIB;

    #[test]
    fn zero_page_carries_e820_cmdline_initrd() {
        let l = GuestLayout::new(6 * GIB, None).unwrap();
        let e = l.e820();
        let rd = Initrd {
            addr: 0x3000_0000,
            size: 0x12_3456,
        };
        let bp = zero_page(&e, 0x20000, 42, Some(rd), None, Some(0xA_0000)).unwrap();
        assert_eq!(bp.e820_entries as usize, e.len());
        for (i, x) in e.iter().enumerate() {
            let t = bp.e820_table[i];
            assert_eq!((t.addr, t.size, t.r#type), (x.addr, x.size, x.kind as u32));
        }
        let hdr = bp.hdr;
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x3000_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x12_3456);
        assert_eq!({ hdr.boot_flag }, 0xAA55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.type_of_loader }, 0xFF);
        // Field offsets the kernel reads (Documentation/arch/x86/zero-page.rst).
        let bytes = pod_bytes(&bp);
        assert_eq!(bytes.len(), 4096);
        assert_eq!(bytes[0x1E8] as usize, e.len());
        assert_eq!(u16::from_le_bytes([bytes[0x1FE], bytes[0x1FF]]), 0xAA55);
        assert_eq!(
            u32::from_le_bytes(bytes[0x228..0x22C].try_into().unwrap()),
            0x20000
        );
        assert_eq!(
            u64::from_le_bytes(bytes[0x2D0..0x2D8].try_into().unwrap()),
            0
        );
        assert_eq!(
            u64::from_le_bytes(bytes[0x070..0x078].try_into().unwrap()),
            0xA_0000,
            "acpi_rsdp_addr"
        );
    }

    #[test]
    fn bzimage_header_is_kept() {
        let hdr = setup_header {
            setup_sects: 30,
            version: 0x20F,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        let bp = zero_page(&[], 0x20000, 1, None, Some(hdr), None).unwrap();
        let h = bp.hdr;
        assert_eq!({ h.setup_sects }, 30);
        assert_eq!({ h.version }, 0x20F);
        assert_eq!({ h.kernel_alignment }, 0x20_0000);
    }

    #[test]
    fn pvh_info_with_memmap_and_module() {
        let l = GuestLayout::new(2 * GIB, None).unwrap();
        let e = l.e820();
        let (info, pieces) = pvh_start_info(
            &e,
            0x20000,
            Some(Initrd {
                addr: 0x100_0000,
                size: 4096,
            }),
            Some(0xA_0000),
        )
        .unwrap();
        assert_eq!(info.rsdp_paddr, 0xA_0000);
        // start_info layout (xen/include/public/arch-x86/hvm/start_info.h): rsdp_paddr at 32.
        assert_eq!(
            u64::from_le_bytes(pod_bytes(&info)[32..40].try_into().unwrap()),
            0xA_0000
        );
        assert_eq!(info.magic, 0x336E_C578);
        assert_eq!(info.version, 1);
        assert_eq!(info.memmap_entries as usize, e.len());
        assert_eq!(info.nr_modules, 1);
        assert_eq!(pieces[0].1.len(), 24 * e.len());
        let reserved_type =
            u32::from_le_bytes(pieces[0].1[24 * 3 + 16..24 * 3 + 20].try_into().unwrap());
        assert_eq!(reserved_type as u64, e[3].kind as u64);
        assert_eq!(pieces[1].0, PVH_MODLIST_ADDR);
    }

    #[test]
    fn oversized_e820_is_refused() {
        let many = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: E820Type::Ram
            };
            200
        ];
        assert!(zero_page(&many, 0, 0, None, None, None).is_err());
        assert!(pvh_start_info(&many, 0, None, None).is_err());
    }
}
