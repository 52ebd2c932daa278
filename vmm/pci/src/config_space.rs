//! The VF's PCI configuration space as the guest sees it.
//!
//! Emulated: BARs (sizing, relocation to addresses the VMM or the guest chooses),
//! expansion ROM (absent), interrupt line/pin (no INTx), header type (single function),
//! the capability list (MSI hidden, so the guest uses MSI-X, the only interrupt mode
//! wired up), and the MSI-X Enable / Function Mask bits (kept in [`MsixState`]; the VMM
//! turns them into VFIO_DEVICE_SET_IRQS). Everything else reads and writes through to
//! the device (through VFIO's config region, which vfio-pci itself filters).

use std::ops::Range;

use crate::msix::{capabilities, MsixCap, MsixEvent, MsixState};

const PCI_CAP_ID_MSI: u8 = 0x05;
const CMD_IO: u16 = 1 << 0;
const CMD_MEM: u16 = 1 << 1;
const STATUS_CAP_LIST: u32 = 1 << (16 + 4);

/// The device's config space, through VFIO on a host and a byte array in tests.
pub trait ConfigIo {
    fn read(&self, offset: u16, buf: &mut [u8]);
    fn write(&self, offset: u16, buf: &[u8]);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64,
}

/// A BAR as the device implements it: its type from config space, its size from VFIO's
/// region info (a VF's own BAR registers read zero; vfio-pci reports the real sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    pub index: u8,
    pub kind: BarKind,
    pub prefetchable: bool,
    pub size: u64,
}

/// Decodes BAR types from config space and pairs them with region sizes. Empty BARs
/// (size 0) and the upper halves of 64-bit BARs are left out.
pub fn decode_bars(config: &[u8], sizes: [u64; 6]) -> Vec<BarInfo> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < 6 {
        let o = 0x10 + 4 * i;
        let raw = config
            .get(o..o + 4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()));
        let (kind, prefetchable) = if raw & 1 != 0 {
            (BarKind::Io, false)
        } else if (raw >> 1) & 3 == 2 && i < 5 {
            (BarKind::Mem64, raw & 8 != 0)
        } else {
            (BarKind::Mem32, raw & 8 != 0)
        };
        if sizes[i] != 0 {
            out.push(BarInfo {
                index: i as u8,
                kind,
                prefetchable,
                size: sizes[i].next_power_of_two(),
            });
        }
        i += if kind == BarKind::Mem64 { 2 } else { 1 };
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BarLayoutError {
    #[error("BAR{bar} ({size:#x} bytes) does not fit in the MMIO window {window:#x?}")]
    NoRoom {
        bar: u8,
        size: u64,
        window: Range<u64>,
    },
    #[error("BAR{bar} is an I/O BAR; VFs have none and the VMM offers no I/O window")]
    IoBar { bar: u8 },
}

/// Places BARs at naturally aligned addresses, biggest first: 64-bit BARs in `mmio64`
/// when given, everything else in `mmio32`.
pub fn assign_bars(
    bars: &[BarInfo],
    mmio32: Range<u64>,
    mmio64: Option<Range<u64>>,
) -> Result<Vec<(u8, u64)>, BarLayoutError> {
    let mut order: Vec<&BarInfo> = bars.iter().collect();
    order.sort_by(|a, b| b.size.cmp(&a.size).then(a.index.cmp(&b.index)));
    let mut next32 = mmio32.start;
    let mut next64 = mmio64.as_ref().map(|r| r.start);
    let mut out = Vec::new();
    for b in order {
        if b.kind == BarKind::Io {
            return Err(BarLayoutError::IoBar { bar: b.index });
        }
        let (next, window) = match (b.kind, next64.as_mut(), &mmio64) {
            (BarKind::Mem64, Some(n), Some(w)) => (n, w.clone()),
            _ => (&mut next32, mmio32.clone()),
        };
        let addr = next.div_ceil(b.size) * b.size;
        if addr.checked_add(b.size).is_none_or(|end| end > window.end) {
            return Err(BarLayoutError::NoRoom {
                bar: b.index,
                size: b.size,
                window,
            });
        }
        *next = addr + b.size;
        out.push((b.index, addr));
    }
    out.sort();
    Ok(out)
}

/// What the VMM must do after a guest config write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigEvent {
    /// Map the BAR's mappable ranges (see `msix::mappable_ranges`) at `addr` into the
    /// guest, trapping the MSI-X table/PBA pages.
    BarMap {
        bar: u8,
        addr: u64,
        size: u64,
    },
    /// Remove the BAR's mappings at `addr`.
    BarUnmap {
        bar: u8,
        addr: u64,
        size: u64,
    },
    Msix(MsixEvent),
}

#[derive(Clone, Copy, Debug)]
struct Bar {
    info: BarInfo,
    addr: u64,
}

/// The guest-visible config space of one passed-through function.
#[derive(Debug)]
pub struct VfConfig {
    snapshot: Vec<u8>,
    bars: [Option<Bar>; 6],
    mapped: [Option<u64>; 6],
    command: u16,
    int_line: u8,
    /// Visible capabilities in list order (id, offset).
    caps: Vec<(u8, u8)>,
    /// Byte ranges of hidden capabilities.
    hidden: Vec<Range<u16>>,
    msix_cap: Option<MsixCap>,
    msix: Option<MsixState>,
    /// The memory windows the bridge above the function announces; `None` until
    /// [`VfConfig::set_windows`] (no check: for callers without a bus).
    windows: Option<BarWindows>,
}

/// The memory windows a PCI bridge forwards: a 32-bit one below 4 GiB and, optionally, a
/// 64-bit one. A BAR the guest places (partly) outside them decodes nowhere, as on real
/// hardware, where the bridge does not forward those addresses: no mapping is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarWindows {
    pub mmio32: Range<u64>,
    pub mmio64: Option<Range<u64>>,
}

impl BarWindows {
    /// Whether `[addr, addr + size)` of a BAR of `kind` lies wholly inside a window it may
    /// use: a 32-bit BAR in the 32-bit window, a 64-bit BAR in either, an I/O BAR nowhere
    /// (the VMM announces no I/O window).
    pub fn admits(&self, kind: BarKind, addr: u64, size: u64) -> bool {
        let Some(end) = addr.checked_add(size) else {
            return false;
        };
        let inside = |w: &Range<u64>| addr >= w.start && end <= w.end;
        match kind {
            BarKind::Io => false,
            BarKind::Mem32 => inside(&self.mmio32),
            BarKind::Mem64 => inside(&self.mmio32) || self.mmio64.as_ref().is_some_and(inside),
        }
    }
}

impl VfConfig {
    /// `config`: the device's config space as read at open (256 bytes or more).
    pub fn new(config: Vec<u8>, bars: &[BarInfo]) -> Self {
        let mut snapshot = config;
        snapshot.resize(snapshot.len().max(256), 0);
        let mut slots = [None; 6];
        for b in bars {
            if let Some(s) = slots.get_mut(usize::from(b.index)) {
                *s = Some(Bar { info: *b, addr: 0 });
            }
        }
        let all = capabilities(&snapshot);
        let mut caps = Vec::new();
        let mut hidden = Vec::new();
        for (id, off) in all {
            if id == PCI_CAP_ID_MSI {
                let o = usize::from(off);
                let ctrl = u16::from_le_bytes([snapshot[o + 2], snapshot[o + 3]]);
                let len = 10
                    + if ctrl & (1 << 7) != 0 { 4 } else { 0 }
                    + if ctrl & (1 << 8) != 0 { 10 } else { 0 };
                hidden.push(u16::from(off)..u16::from(off) + (len as u16).div_ceil(4) * 4);
            } else {
                caps.push((id, off));
            }
        }
        let msix_cap = MsixCap::parse(&snapshot);
        let command = u16::from_le_bytes([snapshot[4], snapshot[5]]);
        VfConfig {
            msix: msix_cap.map(|c| MsixState::new(c.table_size)),
            msix_cap,
            snapshot,
            bars: slots,
            mapped: [None; 6],
            command,
            int_line: 0,
            caps,
            hidden,
            windows: None,
        }
    }

    /// The windows the bus announces; from here on a BAR maps only inside them
    /// (re-checked for every BAR at once).
    pub fn set_windows(&mut self, windows: BarWindows) -> Vec<ConfigEvent> {
        self.windows = Some(windows);
        (0..6).flat_map(|i| self.remap(i)).collect()
    }

    pub fn windows(&self) -> Option<&BarWindows> {
        self.windows.as_ref()
    }

    pub fn msix_cap(&self) -> Option<&MsixCap> {
        self.msix_cap.as_ref()
    }
    pub fn msix(&self) -> Option<&MsixState> {
        self.msix.as_ref()
    }
    /// For the VMM's MMIO handler on the trapped table/PBA pages.
    pub fn msix_mut(&mut self) -> Option<&mut MsixState> {
        self.msix.as_mut()
    }
    pub fn bar(&self, index: u8) -> Option<(BarInfo, u64)> {
        self.bars.get(usize::from(index))?.map(|b| (b.info, b.addr))
    }
    pub fn command(&self) -> u16 {
        self.command
    }

    /// Firmware-style initial placement (the guest kernel keeps it unless it must move).
    pub fn set_bar_address(&mut self, index: u8, addr: u64) {
        if let Some(Some(b)) = self.bars.get_mut(usize::from(index)) {
            b.addr = addr & !(b.info.size - 1);
        }
    }

    /// A naturally aligned read of 1, 2 or 4 bytes; anything else reads all-ones.
    pub fn read(&self, dev: &dyn ConfigIo, offset: u16, len: usize) -> u32 {
        if !matches!(len, 1 | 2 | 4) || !offset.is_multiple_of(len as u16) {
            return u32::MAX >> (32 - 8 * len.clamp(1, 4));
        }
        let dw = self.read_dword(dev, offset & !3);
        let shift = 8 * u32::from(offset & 3);
        let mask = if len == 4 {
            u32::MAX
        } else {
            (1u32 << (8 * len)) - 1
        };
        (dw >> shift) & mask
    }

    fn snap_dword(&self, off: u16) -> u32 {
        let o = usize::from(off);
        u32::from_le_bytes(self.snapshot[o..o + 4].try_into().unwrap())
    }

    fn dev_dword(dev: &dyn ConfigIo, off: u16) -> u32 {
        let mut b = [0u8; 4];
        dev.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn next_cap_after(&self, off: u8) -> u8 {
        let i = self.caps.iter().position(|c| c.1 == off);
        i.and_then(|i| self.caps.get(i + 1)).map_or(0, |c| c.1)
    }

    fn read_dword(&self, dev: &dyn ConfigIo, off: u16) -> u32 {
        match off {
            0x00 | 0x08 | 0x2c => self.snap_dword(off),
            0x04 => {
                let status = Self::dev_dword(dev, 0x04) & 0xffff_0000 & !STATUS_CAP_LIST;
                let cap = if self.caps.is_empty() {
                    0
                } else {
                    STATUS_CAP_LIST
                };
                status | cap | u32::from(self.command)
            }
            // Header type without the multi-function bit: the guest sees this one function.
            0x0c => self.snap_dword(off) & 0x00ff_ffff & !(0x80 << 16),
            0x10..=0x24 => self.bar_read(((off - 0x10) / 4) as usize),
            0x34 => self.caps.first().map_or(0, |c| u32::from(c.1)),
            // Interrupt pin 0: no INTx.
            0x3c => u32::from(self.int_line),
            0x28 | 0x30 | 0x38 => 0,
            _ if self.hidden.iter().any(|h| h.contains(&off)) => 0,
            _ => {
                let mut v = Self::dev_dword(dev, off);
                if let Some(&(_, cap_off)) = self.caps.iter().find(|c| u16::from(c.1) == off) {
                    v = (v & 0xffff_00ff) | (u32::from(self.next_cap_after(cap_off)) << 8);
                    if self.msix_cap.is_some_and(|m| m.cap_offset == cap_off) {
                        let ctrl = self
                            .msix
                            .as_ref()
                            .map_or(0, |m| m.control_bits((v >> 16) as u16));
                        v = (v & 0xffff) | (u32::from(ctrl) << 16);
                    }
                }
                v
            }
        }
    }

    fn bar_read(&self, i: usize) -> u32 {
        if let Some(b) = self.bars[i] {
            let mask = !(b.info.size - 1);
            let a = b.addr & mask;
            return match b.info.kind {
                BarKind::Io => (a as u32 & !3) | 1,
                BarKind::Mem32 => (a as u32 & !0xf) | (u32::from(b.info.prefetchable) << 3),
                BarKind::Mem64 => (a as u32 & !0xf) | 0b100 | (u32::from(b.info.prefetchable) << 3),
            };
        }
        // Upper half of a 64-bit BAR.
        if i > 0 {
            if let Some(b) = self.bars[i - 1].filter(|b| b.info.kind == BarKind::Mem64) {
                return ((b.addr & !(b.info.size - 1)) >> 32) as u32;
            }
        }
        0
    }

    /// A naturally aligned write of 1, 2 or 4 bytes; others are dropped.
    pub fn write(
        &mut self,
        dev: &dyn ConfigIo,
        offset: u16,
        len: usize,
        value: u32,
    ) -> Vec<ConfigEvent> {
        if !matches!(len, 1 | 2 | 4) || !offset.is_multiple_of(len as u16) {
            return Vec::new();
        }
        let base = offset & !3;
        let shift = 8 * u32::from(offset & 3);
        let mask = if len == 4 {
            u32::MAX
        } else {
            ((1u32 << (8 * len)) - 1) << shift
        };
        let merge = |old: u32| (old & !mask) | ((value << shift) & mask);
        let bytes = &value.to_le_bytes()[..len];
        let mut ev = Vec::new();
        match base {
            0x04 => {
                let old = self.command;
                if mask & 0xffff != 0 {
                    self.command = merge(u32::from(old)) as u16;
                }
                // Command (bus master for DMA, decode enables) and the status RW1C bits
                // belong to the device.
                dev.write(offset, bytes);
                ev.extend(self.decode_changed(old));
            }
            0x0c => {
                // Cache line size and latency timer only.
                if offset < 0x0e {
                    dev.write(offset, bytes);
                }
            }
            0x10..=0x24 => ev.extend(self.bar_write(((base - 0x10) / 4) as usize, merge)),
            0x3c => {
                if mask & 0xff != 0 {
                    self.int_line = merge(u32::from(self.int_line)) as u8;
                }
            }
            0x00..=0x3f => {}
            _ if self.hidden.iter().any(|h| h.contains(&base)) => {}
            _ => ev.extend(self.cap_write(dev, offset, base, mask, merge, bytes)),
        }
        ev
    }

    fn cap_write(
        &mut self,
        dev: &dyn ConfigIo,
        offset: u16,
        base: u16,
        mask: u32,
        merge: impl Fn(u32) -> u32,
        bytes: &[u8],
    ) -> Vec<ConfigEvent> {
        if let Some(m) = self.msix_cap.filter(|m| u16::from(m.cap_offset) == base) {
            // Only Message Control's Enable and Function Mask are writable.
            if mask & 0xffff_0000 != 0 {
                let old = self.read_dword(dev, base);
                let ctrl = (merge(old) >> 16) as u16;
                let st = self
                    .msix
                    .get_or_insert_with(|| MsixState::new(m.table_size));
                return st
                    .write_control(ctrl)
                    .into_iter()
                    .map(ConfigEvent::Msix)
                    .collect();
            }
            return Vec::new();
        }
        if self.caps.iter().any(|c| u16::from(c.1) == base) {
            // The ID and next pointer are ours; the capability's own bytes pass through.
            let keep = mask & 0xffff_0000;
            if keep != 0 {
                let start = offset.max(base + 2);
                let skip = usize::from(start - offset);
                dev.write(start, &bytes[skip.min(bytes.len())..]);
            }
            return Vec::new();
        }
        dev.write(offset, bytes);
        Vec::new()
    }

    fn bar_write(&mut self, i: usize, merge: impl Fn(u32) -> u32) -> Vec<ConfigEvent> {
        let v = merge(self.bar_read(i));
        if let Some(b) = self.bars[i].as_mut() {
            let size_mask = !(b.info.size - 1);
            b.addr = match b.info.kind {
                BarKind::Io => u64::from(v & !3),
                BarKind::Mem32 => u64::from(v & !0xf),
                BarKind::Mem64 => (b.addr & 0xffff_ffff_0000_0000) | u64::from(v & !0xf),
            } & size_mask;
        } else if i > 0 {
            match self.bars[i - 1].as_mut() {
                Some(b) if b.info.kind == BarKind::Mem64 => {
                    b.addr = ((b.addr & 0xffff_ffff) | (u64::from(v) << 32)) & !(b.info.size - 1);
                    return self.remap(i - 1);
                }
                _ => return Vec::new(),
            }
        }
        self.remap(i)
    }

    fn decodes(&self, b: &Bar) -> bool {
        let bit = if b.info.kind == BarKind::Io {
            CMD_IO
        } else {
            CMD_MEM
        };
        self.command & bit != 0
            && b.addr != 0
            && self
                .windows
                .as_ref()
                .is_none_or(|w| w.admits(b.info.kind, b.addr, b.info.size))
    }

    /// Brings BAR `i`'s mapping in line with its address and the decode bits.
    fn remap(&mut self, i: usize) -> Vec<ConfigEvent> {
        let Some(b) = self.bars[i] else {
            return Vec::new();
        };
        let want = self.decodes(&b).then_some(b.addr);
        let have = self.mapped[i];
        if want == have {
            return Vec::new();
        }
        let mut ev = Vec::new();
        let (bar, size) = (i as u8, b.info.size);
        if let Some(addr) = have {
            ev.push(ConfigEvent::BarUnmap { bar, addr, size });
        }
        if let Some(addr) = want {
            ev.push(ConfigEvent::BarMap { bar, addr, size });
        }
        self.mapped[i] = want;
        ev
    }

    fn decode_changed(&mut self, old: u16) -> Vec<ConfigEvent> {
        if (old ^ self.command) & (CMD_IO | CMD_MEM) == 0 {
            return Vec::new();
        }
        (0..6).flat_map(|i| self.remap(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A device config space: reads from bytes, writes recorded and applied.
    struct FakeDev {
        bytes: RefCell<Vec<u8>>,
        writes: RefCell<Vec<(u16, Vec<u8>)>>,
    }

    impl ConfigIo for FakeDev {
        fn read(&self, offset: u16, buf: &mut [u8]) {
            let o = usize::from(offset);
            buf.copy_from_slice(&self.bytes.borrow()[o..o + buf.len()]);
        }
        fn write(&self, offset: u16, buf: &[u8]) {
            self.writes.borrow_mut().push((offset, buf.to_vec()));
            let o = usize::from(offset);
            self.bytes.borrow_mut()[o..o + buf.len()].copy_from_slice(buf);
        }
    }

    /// An igbvf-like VF: 64-bit prefetchable BAR0 (16 KiB), 64-bit BAR3 (16 KiB), caps
    /// MSI (0x50, hidden) -> MSI-X (0x70, 3 vectors, table BAR3+0, PBA BAR3+0x2000)
    /// -> PCIe (0xa0); header type with the multi-function bit.
    fn vf_config() -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[0..4].copy_from_slice(&0x10ca_8086u32.to_le_bytes());
        c[0x06] = 0x10;
        c[0x08..0x0c].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        c[0x0e] = 0x80;
        c[0x10] = 0x0c;
        c[0x1c] = 0x04;
        c[0x34] = 0x50;
        c[0x3d] = 1;
        c[0x50] = 0x05;
        c[0x51] = 0x70;
        c[0x52] = 0x80; // MSI 64-bit
        c[0x70] = 0x11;
        c[0x71] = 0xa0;
        c[0x72] = 2;
        c[0x74..0x78].copy_from_slice(&3u32.to_le_bytes());
        c[0x78..0x7c].copy_from_slice(&0x2003u32.to_le_bytes());
        c[0xa0] = 0x10;
        c[0xa8] = 0x5a; // PCIe device control, passes through
        c
    }

    fn setup() -> (VfConfig, FakeDev) {
        let c = vf_config();
        let bars = decode_bars(&c, [0x4000, 0, 0, 0x4000, 0, 0]);
        let dev = FakeDev {
            bytes: RefCell::new(c.clone()),
            writes: RefCell::new(Vec::new()),
        };
        (VfConfig::new(c, &bars), dev)
    }

    #[test]
    fn decodes_bar_types_and_sizes() {
        let bars = decode_bars(&vf_config(), [0x4000, 0, 0, 0x3000, 0, 0]);
        assert_eq!(
            bars,
            vec![
                BarInfo {
                    index: 0,
                    kind: BarKind::Mem64,
                    prefetchable: true,
                    size: 0x4000
                },
                BarInfo {
                    index: 3,
                    kind: BarKind::Mem64,
                    prefetchable: false,
                    size: 0x4000
                },
            ]
        );
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let (mut cfg, dev) = setup();
        cfg.set_bar_address(0, 0xe000_0000);
        assert_eq!(cfg.read(&dev, 0x10, 4), 0xe000_000c);
        assert!(
            cfg.write(&dev, 0x10, 4, 0xffff_ffff).is_empty(),
            "decode off: no mapping"
        );
        assert!(cfg.write(&dev, 0x14, 4, 0xffff_ffff).is_empty());
        assert_eq!(cfg.read(&dev, 0x10, 4), 0xffff_c00c);
        assert_eq!(cfg.read(&dev, 0x14, 4), 0xffff_ffff);
        cfg.write(&dev, 0x10, 4, 0xe000_0000);
        cfg.write(&dev, 0x14, 4, 0);
        assert_eq!(cfg.bar(0).unwrap().1, 0xe000_0000);
        assert!(
            dev.writes.borrow().is_empty(),
            "BAR writes never reach the device"
        );
    }

    #[test]
    fn decode_enable_maps_and_relocation_remaps() {
        let (mut cfg, dev) = setup();
        cfg.set_bar_address(0, 0x1_0000_0000);
        cfg.set_bar_address(3, 0x1_0000_4000);
        let ev = cfg.write(&dev, 0x04, 2, 0x0006);
        assert_eq!(
            ev,
            vec![
                ConfigEvent::BarMap {
                    bar: 0,
                    addr: 0x1_0000_0000,
                    size: 0x4000
                },
                ConfigEvent::BarMap {
                    bar: 3,
                    addr: 0x1_0000_4000,
                    size: 0x4000
                },
            ]
        );
        assert_eq!(
            dev.writes.borrow().as_slice(),
            &[(0x04, vec![0x06, 0x00])],
            "command reaches the device"
        );
        assert_eq!(cfg.read(&dev, 0x04, 2), 0x0006);
        let ev = cfg.write(&dev, 0x20, 4, 0x2);
        assert_eq!(
            ev,
            vec![
                ConfigEvent::BarUnmap {
                    bar: 3,
                    addr: 0x1_0000_4000,
                    size: 0x4000
                },
                ConfigEvent::BarMap {
                    bar: 3,
                    addr: 0x2_0000_4000,
                    size: 0x4000
                },
            ]
        );
        let ev = cfg.write(&dev, 0x04, 2, 0x0004);
        assert_eq!(ev.len(), 2);
        assert!(ev.iter().all(|e| matches!(e, ConfigEvent::BarUnmap { .. })));
    }

    #[test]
    fn capability_list_hides_msi_and_emulates_msix_control() {
        let (mut cfg, dev) = setup();
        assert_eq!(cfg.read(&dev, 0x34, 1), 0x70, "MSI at 0x50 is skipped");
        assert_eq!(cfg.read(&dev, 0x70, 4) & 0xffff, 0xa011);
        assert_eq!(cfg.read(&dev, 0x50, 4), 0);
        assert_eq!(cfg.read(&dev, 0x0e, 1), 0, "single function");
        assert_eq!(cfg.read(&dev, 0x3d, 1), 0, "no INTx pin");
        assert_eq!(cfg.read(&dev, 0x06, 2) & 0x10, 0x10);
        let ev = cfg.write(&dev, 0x72, 2, 0x8002);
        assert_eq!(ev, vec![ConfigEvent::Msix(MsixEvent::Enable(true))]);
        assert_eq!(cfg.read(&dev, 0x72, 2), 0x8002);
        assert!(
            dev.writes.borrow().is_empty(),
            "MSI-X enable is the VMM's, via VFIO"
        );
        assert!(cfg.msix().unwrap().enabled());
        // PCIe device control passes through; the capability header does not.
        cfg.write(&dev, 0xa8, 2, 0x2810);
        cfg.write(&dev, 0xa0, 1, 0xff);
        assert_eq!(dev.writes.borrow().as_slice(), &[(0xa8, vec![0x10, 0x28])]);
        assert_eq!(cfg.read(&dev, 0xa8, 2), 0x2810);
        assert!(cfg.write(&dev, 0x50, 4, 0xffff_ffff).is_empty());
        assert_eq!(dev.writes.borrow().len(), 1, "hidden MSI writes dropped");
    }

    #[test]
    fn misaligned_accesses_are_harmless() {
        let (mut cfg, dev) = setup();
        assert_eq!(cfg.read(&dev, 0x11, 2), 0xffff);
        assert_eq!(cfg.read(&dev, 0x12, 4), 0xffff_ffff);
        assert!(cfg.write(&dev, 0x05, 2, 0xffff).is_empty());
        assert!(dev.writes.borrow().is_empty());
        assert_eq!(cfg.read(&dev, 0x3c, 1), 0);
        cfg.write(&dev, 0x3c, 1, 11);
        assert_eq!(cfg.read(&dev, 0x3c, 4), 11);
    }

    #[test]
    fn assigns_naturally_aligned_bars_biggest_first() {
        let bars = [
            BarInfo {
                index: 0,
                kind: BarKind::Mem64,
                prefetchable: true,
                size: 0x200_0000,
            },
            BarInfo {
                index: 2,
                kind: BarKind::Mem32,
                prefetchable: false,
                size: 0x4000,
            },
        ];
        let a = assign_bars(&bars, 0xc000_0000..0xfe00_0000, None).unwrap();
        assert_eq!(a, vec![(0, 0xc000_0000), (2, 0xc200_0000)]);
        let a = assign_bars(
            &bars,
            0xc000_1000..0xfe00_0000,
            Some(0x40_0000_0000..0x41_0000_0000),
        )
        .unwrap();
        assert_eq!(a, vec![(0, 0x40_0000_0000), (2, 0xc000_4000)]);
        let e = assign_bars(&bars, 0xc000_0000..0xc100_0000, None).unwrap_err();
        assert_eq!(
            e,
            BarLayoutError::NoRoom {
                bar: 0,
                size: 0x200_0000,
                window: 0xc000_0000..0xc100_0000
            }
        );
    }

    /// Issue 12.5: a BAR the guest moves outside the windows the bridge announces (over
    /// RAM, the PV page, the IOAPIC) decodes nowhere: no mapping, as on real hardware;
    /// moved back inside, it maps again.
    #[test]
    fn bars_outside_the_bridge_windows_do_not_map() {
        let (mut cfg, dev) = setup();
        let windows = BarWindows {
            mmio32: 0xc000_0000..0xe000_0000,
            mmio64: Some(0x1_8000_0000..0x11_8000_0000),
        };
        cfg.set_bar_address(0, 0x1_8000_0000);
        cfg.set_bar_address(3, 0x1_8000_4000);
        assert!(cfg.set_windows(windows.clone()).is_empty(), "decode off");
        assert_eq!(
            cfg.write(&dev, 0x04, 2, 0x0006).len(),
            2,
            "both BARs map inside"
        );
        // BAR0 onto guest RAM (2 GiB, then 1 GiB): unmapped, not mapped anywhere else.
        let ev = cfg.write(&dev, 0x14, 4, 0);
        assert!(cfg.write(&dev, 0x10, 4, 0x4000_0000).is_empty());
        assert_eq!(
            ev,
            vec![ConfigEvent::BarUnmap {
                bar: 0,
                addr: 0x1_8000_0000,
                size: 0x4000
            }]
        );
        // Onto the PV page and the IOAPIC: nothing.
        assert!(cfg.write(&dev, 0x10, 4, 0xfeb0_0000).is_empty());
        assert!(cfg.write(&dev, 0x10, 4, 0xfec0_0000).is_empty());
        // Over the ECAM window, just past the 32-bit window: nothing.
        assert!(cfg.write(&dev, 0x10, 4, 0xe000_0000).is_empty());
        // Past the end of the 64-bit window, and wrapping the address space: nothing.
        cfg.write(&dev, 0x10, 4, 0);
        assert!(cfg.write(&dev, 0x14, 4, 0x12).is_empty());
        assert!(cfg.write(&dev, 0x14, 4, 0xffff_ffff).is_empty());
        // A 64-bit BAR may use the 32-bit window.
        cfg.write(&dev, 0x14, 4, 0);
        let ev = cfg.write(&dev, 0x10, 4, 0xc000_0000);
        assert_eq!(
            ev,
            vec![ConfigEvent::BarMap {
                bar: 0,
                addr: 0xc000_0000,
                size: 0x4000
            }]
        );
        assert!(windows.admits(BarKind::Mem64, 0x1_8000_0000, 0x4000));
        assert!(!windows.admits(BarKind::Mem32, 0x1_8000_0000, 0x4000));
        assert!(!windows.admits(BarKind::Io, 0xc000_0000, 0x100));
        assert!(!windows.admits(BarKind::Mem64, !0x3fff, 0x4000));
        // Windows announced late re-check BARs already mapped.
        let (mut cfg, dev) = setup();
        cfg.set_bar_address(0, 0x4000_0000);
        assert_eq!(
            cfg.write(&dev, 0x04, 2, 0x0006).len(),
            1,
            "BAR0 only; BAR3 at 0"
        );
        let ev = cfg.set_windows(windows);
        assert_eq!(
            ev,
            vec![ConfigEvent::BarUnmap {
                bar: 0,
                addr: 0x4000_0000,
                size: 0x4000
            }]
        );
    }
}
