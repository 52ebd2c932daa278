//! The root bus as the guest reaches it: conf1 ports and the ECAM window, with only the
//! host bridge on it (device tests with a VF are in vfio_mock.rs).

use hpmmap_pci::address::ConfigAddress;
use hpmmap_pci::layout::{ECAM_BASE, ECAM_SIZE};
use hpmmap_pci::{PciRoot, PciWindows};

fn root() -> PciRoot {
    PciRoot::new(PciWindows::for_ram_end(2 << 30))
}

fn addr(bus: u32, dev: u32, func: u32, reg: u32) -> u32 {
    0x8000_0000 | (bus << 16) | (dev << 11) | (func << 8) | reg
}

fn inl(r: &PciRoot, port: u16) -> u32 {
    let mut d = [0u8; 4];
    assert!(r.pio_read(port, &mut d), "port {port:#x} not answered");
    u32::from_le_bytes(d)
}
fn inw(r: &PciRoot, port: u16) -> u16 {
    let mut d = [0u8; 2];
    assert!(r.pio_read(port, &mut d));
    u16::from_le_bytes(d)
}
fn inb(r: &PciRoot, port: u16) -> u8 {
    let mut d = [0u8; 1];
    assert!(r.pio_read(port, &mut d));
    d[0]
}
fn outl(r: &PciRoot, port: u16, v: u32) {
    assert!(r.pio_write(port, &v.to_le_bytes()));
}

#[test]
fn linux_conf1_probe_sequence_succeeds() {
    // arch/x86/pci/direct.c pci_check_type1: the byte write to 0xCFB is not conf1's,
    // the dword at 0xCF8 must read back 0x80000000, and some function on bus 0 must be a
    // host bridge (pci_sanity_check reads the class word at 0x0A).
    let r = root();
    assert!(
        !r.pio_write(0xCFB, &[0x01]),
        "0xCFB byte is not the address register"
    );
    let saved = inl(&r, 0xCF8);
    outl(&r, 0xCF8, 0x8000_0000);
    assert_eq!(inl(&r, 0xCF8), 0x8000_0000);
    outl(&r, 0xCF8, addr(0, 0, 0, 0x08));
    assert_eq!(inw(&r, 0xCFE), 0x0600, "class word at 0x0A via port 0xCFE");
    outl(&r, 0xCF8, saved);
    assert_eq!(inl(&r, 0xCF8), saved);
    // 0xCF9 (reset control on Intel chipsets) stays the VMM's.
    let mut b = [0u8; 1];
    assert!(!r.pio_read(0xCF9, &mut b));
    assert!(!r.pio_write(0xCF9, &[0x06]));
    assert!(!r.pio_read(0xCF7, &mut b) && !r.pio_read(0xD00, &mut b));
}

#[test]
fn conf1_dword_word_byte_reads_of_the_host_bridge() {
    let r = root();
    outl(&r, 0xCF8, addr(0, 0, 0, 0));
    assert_eq!(inl(&r, 0xCFC), 0x0008_1b36);
    assert_eq!(inw(&r, 0xCFC), 0x1b36);
    assert_eq!(inw(&r, 0xCFE), 0x0008);
    assert_eq!(
        [
            inb(&r, 0xCFC),
            inb(&r, 0xCFD),
            inb(&r, 0xCFE),
            inb(&r, 0xCFF)
        ],
        [0x36, 0x1b, 0x08, 0x00]
    );
    // An unaligned word inside the dword is split into bytes, as the bus would.
    assert_eq!(inw(&r, 0xCFD), 0x081b);
    // A dword from 0xCFE would cross the data window's dword: all-ones.
    assert_eq!(inl(&r, 0xCFE), u32::MAX);
    // The low two bits of the address register do not select bytes.
    outl(&r, 0xCF8, addr(0, 0, 0, 0) | 2);
    assert_eq!(inl(&r, 0xCFC), 0x0008_1b36);
    // Word and byte writes to the command register.
    outl(&r, 0xCF8, addr(0, 0, 0, 4));
    assert!(r.pio_write(0xCFC, &0x0006u16.to_le_bytes()));
    assert_eq!(inw(&r, 0xCFC), 0x0006);
    assert!(r.pio_write(0xCFC, &[0x02]));
    assert_eq!(inl(&r, 0xCFC), 0x0002);
}

#[test]
fn absent_functions_read_all_ones_and_ignore_writes() {
    let r = root();
    for (bus, dev, func) in [(0, 1, 0), (0, 31, 0), (0, 0, 1), (1, 0, 0), (255, 31, 7)] {
        outl(&r, 0xCF8, addr(bus, dev, func, 0));
        assert_eq!(inl(&r, 0xCFC), u32::MAX, "{bus}:{dev}.{func}");
        assert_eq!(inw(&r, 0xCFE), 0xffff);
        assert_eq!(inb(&r, 0xCFD), 0xff);
        outl(&r, 0xCFC, 0);
        assert_eq!(inl(&r, 0xCFC), u32::MAX);
    }
    // Enable bit clear: the data window reaches nothing.
    outl(&r, 0xCF8, addr(0, 0, 0, 0) & !0x8000_0000);
    assert_eq!(inl(&r, 0xCFC), u32::MAX);
}

#[test]
fn ecam_reaches_the_same_functions() {
    let r = root();
    let rd = |off: u64, len: usize| {
        let mut d = vec![0u8; len];
        assert!(r.mmio_read(ECAM_BASE + off, &mut d));
        let mut b = [0u8; 8];
        b[..len].copy_from_slice(&d);
        u64::from_le_bytes(b)
    };
    assert_eq!(rd(0, 4), 0x0008_1b36);
    assert_eq!(rd(2, 2), 0x0008);
    assert_eq!(rd(0x0b, 1), 0x06);
    assert_eq!(
        rd(4, 8),
        0x0600_0000_0000_0000,
        "8 bytes: command/status, then class"
    );
    assert_eq!(rd(0x100, 4), 0xffff_ffff, "host bridge: no extended space");
    assert_eq!(rd(1 << 15, 4), 0xffff_ffff, "00:01.0 absent");
    assert_eq!(rd(1 << 12, 4), 0xffff_ffff, "00:00.1 absent");
    assert_eq!(rd(ECAM_SIZE - 4, 4), 0xffff_ffff);
    assert_eq!(
        rd(1, 2),
        0x1b36_u64 >> 8 | 0x08 << 8,
        "unaligned word split into bytes"
    );
    assert!(r.mmio_write(ECAM_BASE + 4, &6u16.to_le_bytes()));
    assert_eq!(
        r.config_read(
            ConfigAddress {
                bus: 0,
                device: 0,
                function: 0,
                offset: 4
            },
            2
        ),
        6
    );
    // Outside the window and outside any BAR: not the bus's.
    let mut d = [0u8; 4];
    assert!(!r.mmio_read(ECAM_BASE - 4, &mut d));
    assert!(!r.mmio_read(ECAM_BASE + ECAM_SIZE, &mut d));
}
