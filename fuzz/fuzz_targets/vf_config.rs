//! VfConfig / MSI-X capability parsing over arbitrary config-space snapshots, then
//! arbitrary guest config and MSI-X table accesses (vmm/pci/src/config_space.rs, msix.rs).
//! Checked: no panic; a BAR maps only inside the bridge's windows; Map/Unmap events
//! alternate per BAR (nothing mapped twice, nothing unmapped that was not mapped).
#![no_main]
use std::cell::RefCell;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use hpmmap_pci::config_space::{assign_bars, decode_bars, BarWindows, ConfigEvent, ConfigIo, VfConfig};
use hpmmap_pci::msix::{capabilities, mappable_ranges, MsixCap};

const MMIO32: std::ops::Range<u64> = 0xC000_0000..0xE000_0000;
const MMIO64: std::ops::Range<u64> = 0x2_0000_0000..0x12_0000_0000;

#[derive(Arbitrary, Debug)]
enum Op {
    CfgRead { off: u16, len: u8 },
    CfgWrite { off: u16, len: u8, value: u32 },
    TableRead { off: u16, len: u8 },
    TableWrite { off: u16, len: u8, value: u64 },
    PbaRead { off: u16, len: u8 },
    Signal(u16),
    Place { bar: u8, addr: u64 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    snapshot: Vec<u8>,
    sizes: [u32; 6],
    with_windows: bool,
    ops: Vec<Op>,
}

/// Table and PBA accesses come from KVM MMIO exits: 1 to 8 bytes (a 0-byte one panics
/// in MsixState, `offset % 0`; outside that contract, fuzz/findings/README.md).
fn table_len(l: u8) -> usize {
    usize::from(l % 8) + 1
}

struct Dev(RefCell<Vec<u8>>);

impl ConfigIo for Dev {
    fn read(&self, offset: u16, buf: &mut [u8]) {
        let b = self.0.borrow();
        for (i, x) in buf.iter_mut().enumerate() {
            *x = b.get(usize::from(offset) + i).copied().unwrap_or(0xff);
        }
    }
    fn write(&self, offset: u16, buf: &[u8]) {
        let mut b = self.0.borrow_mut();
        for (i, x) in buf.iter().enumerate() {
            if let Some(d) = b.get_mut(usize::from(offset) + i) {
                *d = *x;
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut snap = input.snapshot;
    snap.truncate(4096);
    // Region sizes as VFIO reports them: powers of two would be usual, any value is legal.
    let sizes = input.sizes.map(|s| u64::from(s) & 0x3fff_ffff);
    let _ = capabilities(&snap);
    let cap = MsixCap::parse(&snap);
    if let Some(c) = cap {
        let _ = (c.table_range(), c.pba_range());
        for (i, s) in sizes.iter().enumerate() {
            let _ = mappable_ranges(i as u8, *s, Some(&c), 4096);
        }
    }
    let bars = decode_bars(&snap, sizes);
    let placed = assign_bars(&bars, MMIO32, Some(MMIO64));
    let dev = Dev(RefCell::new({
        let mut d = snap.clone();
        d.resize(4096, 0);
        d
    }));
    let mut cfg = VfConfig::new(snap, &bars);
    if let Ok(p) = &placed {
        for &(bar, addr) in p {
            cfg.set_bar_address(bar, addr);
        }
    }
    let windows = BarWindows {
        mmio32: MMIO32,
        mmio64: Some(MMIO64),
    };
    let mut mapped: [Option<u64>; 6] = [None; 6];
    let mut check = |ev: Vec<ConfigEvent>, with_windows: bool| {
        for e in ev {
            match e {
                ConfigEvent::BarMap { bar, addr, size } => {
                    let (info, _) = bars
                        .iter()
                        .find(|b| b.index == bar)
                        .map(|b| (*b, 0))
                        .expect("BarMap for a BAR that does not exist");
                    assert_eq!(info.size, size);
                    assert_eq!(addr % size, 0, "unaligned BAR{bar} at {addr:#x}");
                    if with_windows {
                        assert!(windows.admits(info.kind, addr, size), "BAR{bar} at {addr:#x}");
                    }
                    let slot = &mut mapped[usize::from(bar)];
                    assert!(slot.is_none(), "BAR{bar} mapped twice");
                    *slot = Some(addr);
                }
                ConfigEvent::BarUnmap { bar, addr, .. } => {
                    let slot = &mut mapped[usize::from(bar)];
                    assert_eq!(*slot, Some(addr), "BAR{bar} unmapped at {addr:#x}");
                    *slot = None;
                }
                ConfigEvent::Msix(_) => {}
            }
        }
    };
    if input.with_windows {
        check(cfg.set_windows(windows.clone()), true);
    }
    for op in input.ops.into_iter().take(512) {
        match op {
            Op::CfgRead { off, len } => {
                let _ = cfg.read(&dev, off % 4096, usize::from(len % 9));
            }
            Op::CfgWrite { off, len, value } => {
                let ev = cfg.write(&dev, off % 4096, usize::from(len % 9), value);
                check(ev, input.with_windows);
            }
            Op::TableRead { off, len } => {
                if let Some(m) = cfg.msix() {
                    let _ = m.table_read(u64::from(off), table_len(len));
                }
            }
            Op::TableWrite { off, len, value } => {
                if let Some(m) = cfg.msix_mut() {
                    let _ = m.table_write(u64::from(off), table_len(len), value);
                    let _ = m.routes();
                }
            }
            Op::PbaRead { off, len } => {
                if let Some(m) = cfg.msix() {
                    let _ = m.pba_read(u64::from(off), table_len(len));
                }
            }
            Op::Signal(v) => {
                if let Some(m) = cfg.msix_mut() {
                    let _ = m.signal(v);
                    let _ = m.deliverable(v);
                }
            }
            Op::Place { bar, addr } => cfg.set_bar_address(bar % 8, addr),
        }
    }
});
