//! The guest's side of the PCI root bus with a passed-through VF (over hpmmap-pci's mock of
//! the VFIO ioctls and a recording fake of KVM): structured sequences of conf1 and ECAM
//! config accesses, BAR programming, MSI-X table and PBA accesses and stray port/MMIO
//! accesses. Checked: no panic; every KVM memory slot lies inside the windows the bridge
//! announces and clear of RAM, the ECAM window and the PV page; MSI routes only for
//! allocated GSIs; teardown leaves no slot, irqfd or mmap behind.
#![no_main]
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use hpmmap_pci::layout::{ECAM_BASE, ECAM_SIZE};
use hpmmap_pci::testing::RecordingKvm;
use hpmmap_pci::{KvmHooks, PciRoot, PciWindows, VfioPciDevice};
use hpmmap_pci::vfio::mock::{MockDevice, MockGroup, MockVfio};
use hpmmap_pci::vfio::GuestRamRegion;

const GIB: u64 = 1 << 30;
const RAM_END: u64 = 6 * GIB;
const NAME: &str = "0000:3b:00.3";
const GROUP: u32 = 31;

/// Where an access goes; addresses are biased towards the interesting places.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Base {
    Bar(u8),
    Mmio32,
    Mmio64,
    Ecam,
    PvPage,
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Conf1Addr(u32),
    Conf1Read { port: u8, len: u8 },
    Conf1Write { port: u8, len: u8, value: u32 },
    /// A full conf1 config write to the VF (slot 1): the common case made cheap.
    Cfg { off: u8, len: u8, value: u32 },
    CfgRead { off: u8, len: u8 },
    MmioRead { base: Base, off: u16, len: u8 },
    MmioWrite { base: Base, off: u16, len: u8, value: u64 },
    PioRead { port: u16, len: u8 },
    PioWrite { port: u16, len: u8, value: u32 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: Vec<u8>,
    bar_sizes: [u16; 6],
    msix_vectors: u8,
    ops: Vec<Op>,
}

/// An igbvf-like VF (hpmmap_pci::testing::igbvf_config), fuzz bytes laid over its
/// capability area so that parsing sees varied lists.
fn vf_config(extra: &[u8]) -> Vec<u8> {
    let mut c = hpmmap_pci::testing::igbvf_config();
    for (i, b) in extra.iter().take(256).enumerate() {
        // The first bytes (IDs, BAR types) stay; the rest can change.
        if i >= 0x34 {
            c[i] = *b;
        }
    }
    c
}

fn ram() -> Vec<GuestRamRegion> {
    vec![
        GuestRamRegion {
            gpa: 0,
            hva: 0x7f00_0000_0000,
            size: 3 * GIB,
        },
        GuestRamRegion {
            gpa: 4 * GIB,
            hva: 0x7f00_0000_0000 + 3 * GIB,
            size: RAM_END - 4 * GIB,
        },
    ]
}

/// Port and config accesses: any size, zero included (the bus must refuse them).
fn len_of(l: u8) -> usize {
    [1, 2, 4, 8, 3, 0][usize::from(l % 6)]
}

/// MMIO accesses: KVM's exits carry 1 to 8 bytes (the PciDevice contract); a 0-byte BAR
/// access panics in MsixState::table_read/write (`offset % 0`, fuzz/findings/README.md).
fn mmio_len(l: u8) -> usize {
    usize::from(l % 8) + 1
}

fuzz_target!(|input: Input| {
    let sizes = input
        .bar_sizes
        .map(|s| if s == 0 { 0 } else { u64::from(s) << 4 });
    let mock = Arc::new(MockVfio::new(vec![MockGroup {
        id: GROUP,
        viable: true,
        devices: vec![MockDevice {
            name: NAME.into(),
            bar_sizes: sizes,
            config: vf_config(&input.config),
            msix_vectors: u32::from(input.msix_vectors % 33),
        }],
    }]));
    let kvm = Arc::new(RecordingKvm::default());
    let hooks = KvmHooks {
        slots: kvm.clone(),
        router: kvm.clone(),
    };
    let Ok(dev) = VfioPciDevice::open(mock.clone(), GROUP, NAME, &ram(), hooks) else {
        return;
    };
    let windows = PciWindows::for_ram_end(RAM_END);
    let root = PciRoot::new(windows.clone());
    if root.add_device(Box::new(dev)).is_err() {
        return;
    }
    let bar_base = |root: &PciRoot, bar: u8| -> u64 {
        let off = 0x10 + 4 * u32::from(bar % 6);
        let sel = |o: u32| {
            root.pio_write(0xCF8, &(0x8000_0800u32 | o).to_le_bytes());
            let mut d = [0u8; 4];
            root.pio_read(0xCFC, &mut d);
            u64::from(u32::from_le_bytes(d))
        };
        let lo = sel(off) & !0xf;
        let hi = if bar % 6 < 5 { sel(off + 4) } else { 0 };
        (hi << 32) | lo
    };
    let addr_of = |root: &PciRoot, base: Base, off: u16| -> u64 {
        let b = match base {
            Base::Bar(i) => bar_base(root, i),
            Base::Mmio32 => windows.mmio32.start,
            Base::Mmio64 => windows.mmio64.start,
            Base::Ecam => ECAM_BASE,
            Base::PvPage => 0xFEB0_0000,
            Base::Raw(a) => a,
        };
        b.wrapping_add(u64::from(off))
    };
    for op in input.ops.into_iter().take(512) {
        match op {
            Op::Conf1Addr(a) => {
                root.pio_write(0xCF8, &a.to_le_bytes());
            }
            Op::Conf1Read { port, len } => {
                let mut d = vec![0u8; len_of(len)];
                root.pio_read(0xCF8 + u16::from(port % 8), &mut d);
            }
            Op::Conf1Write { port, len, value } => {
                let n = len_of(len).min(4);
                root.pio_write(0xCF8 + u16::from(port % 8), &value.to_le_bytes()[..n]);
            }
            Op::Cfg { off, len, value } => {
                root.pio_write(0xCF8, &(0x8000_0800u32 | u32::from(off & 0xfc)).to_le_bytes());
                let n = len_of(len).min(4);
                root.pio_write(0xCFC + u16::from(off & 3), &value.to_le_bytes()[..n]);
            }
            Op::CfgRead { off, len } => {
                root.pio_write(0xCF8, &(0x8000_0800u32 | u32::from(off & 0xfc)).to_le_bytes());
                let mut d = vec![0u8; len_of(len).min(4)];
                root.pio_read(0xCFC + u16::from(off & 3), &mut d);
            }
            Op::MmioRead { base, off, len } => {
                let mut d = vec![0u8; mmio_len(len)];
                root.mmio_read(addr_of(&root, base, off), &mut d);
            }
            Op::MmioWrite {
                base,
                off,
                len,
                value,
            } => {
                let n = mmio_len(len);
                root.mmio_write(addr_of(&root, base, off), &value.to_le_bytes()[..n]);
            }
            Op::PioRead { port, len } => {
                let mut d = vec![0u8; len_of(len)];
                root.pio_read(port, &mut d);
            }
            Op::PioWrite { port, len, value } => {
                let n = len_of(len).min(4);
                root.pio_write(port, &value.to_le_bytes()[..n]);
            }
        }
        for (slot, (gpa, size, _)) in kvm.slots() {
            let end = gpa.checked_add(size).expect("slot wraps");
            let inside = |w: &std::ops::Range<u64>| gpa >= w.start && end <= w.end;
            assert!(
                inside(&windows.mmio32) || inside(&windows.mmio64),
                "slot {slot} at {gpa:#x}+{size:#x} outside the bridge windows"
            );
            assert!(end <= ECAM_BASE || gpa >= ECAM_BASE + ECAM_SIZE, "slot over ECAM");
        }
    }
    root.shutdown();
    assert!(kvm.slots().is_empty(), "slots left: {:?}", kvm.slots());
    assert!(kvm.irqfds().is_empty(), "irqfds left");
    assert_eq!(mock.live_mmaps(), 0, "BAR mmaps left");
});
