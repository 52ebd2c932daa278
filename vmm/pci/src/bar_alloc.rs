//! Firmware-style BAR placement: 32-bit memory BARs in the hole below 4 GiB, 64-bit
//! ones above guest RAM, each naturally aligned and at least a page, so that every BAR
//! can become its own KVM memory slot and no two BARs share a page.

use std::ops::Range;

use crate::device::{BarInfo, BarKind};
use crate::error::PciError;
use crate::layout::PciWindows;

const PAGE: u64 = 4096;

#[derive(Clone, Debug)]
pub struct BarAllocator {
    next32: u64,
    end32: u64,
    next64: u64,
    end64: u64,
}

impl BarAllocator {
    pub fn new(w: &PciWindows) -> Self {
        BarAllocator {
            next32: w.mmio32.start,
            end32: w.mmio32.end,
            next64: w.mmio64.start,
            end64: w.mmio64.end,
        }
    }

    /// Places all of one device's BARs (biggest first, which keeps alignment padding
    /// small), or none of them. Returns (bar, address) in BAR order.
    pub fn place(&mut self, device: &str, bars: &[BarInfo]) -> Result<Vec<(u8, u64)>, PciError> {
        let mut trial = self.clone();
        let mut order: Vec<&BarInfo> = bars.iter().filter(|b| b.size > 0).collect();
        order.sort_by(|a, b| b.size.cmp(&a.size).then(a.index.cmp(&b.index)));
        let mut out = Vec::new();
        for b in order {
            let size = b.size.max(PAGE).next_power_of_two();
            let (next, end) = match b.kind {
                BarKind::Mem64 => (&mut trial.next64, trial.end64),
                BarKind::Mem32 => (&mut trial.next32, trial.end32),
                BarKind::Io => {
                    return Err(PciError::IoBar {
                        device: device.into(),
                        bar: b.index,
                    })
                }
            };
            let addr = next.div_ceil(size) * size;
            match addr.checked_add(size) {
                Some(e) if e <= end => *next = e,
                _ => {
                    return Err(PciError::NoRoom {
                        device: device.into(),
                        bar: b.index,
                        size: b.size,
                        window: window_of(b.kind, self),
                    })
                }
            }
            out.push((b.index, addr));
        }
        *self = trial;
        out.sort();
        Ok(out)
    }
}

fn window_of(kind: BarKind, a: &BarAllocator) -> Range<u64> {
    match kind {
        BarKind::Mem64 => a.next64..a.end64,
        _ => a.next32..a.end32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(index: u8, kind: BarKind, size: u64) -> BarInfo {
        BarInfo {
            index,
            kind,
            prefetchable: false,
            size,
        }
    }

    #[test]
    fn natural_alignment_windows_and_all_or_nothing() {
        let w = PciWindows::for_ram_end(6 << 30);
        let mut a = BarAllocator::new(&w);
        // A ConnectX VF: 64-bit 32 MiB BAR0. An igbvf: two 16 KiB 64-bit BARs.
        assert_eq!(
            a.place("mlx", &[bar(0, BarKind::Mem64, 32 << 20)]).unwrap(),
            vec![(0, 6 << 30)]
        );
        assert_eq!(
            a.place(
                "igb",
                &[
                    bar(0, BarKind::Mem64, 0x4000),
                    bar(3, BarKind::Mem64, 0x4000)
                ]
            )
            .unwrap(),
            vec![
                (0, (6 << 30) + (32 << 20)),
                (3, (6 << 30) + (32 << 20) + 0x4000)
            ]
        );
        // 32-bit BARs go below 4 GiB; a small one still gets a whole page.
        let p = a
            .place(
                "small",
                &[
                    bar(1, BarKind::Mem32, 0x100),
                    bar(2, BarKind::Mem32, 0x10_0000),
                ],
            )
            .unwrap();
        assert_eq!(p, vec![(1, 0xC010_0000), (2, 0xC000_0000)]);
        for (i, addr) in p {
            let size = if i == 1 { 0x1000 } else { 0x10_0000 };
            assert_eq!(addr % size, 0);
        }
        // Too big for the 32-bit window: an error naming the BAR, and nothing consumed.
        let e = a
            .place(
                "huge",
                &[
                    bar(0, BarKind::Mem32, 0x1000),
                    bar(2, BarKind::Mem32, 1 << 30),
                ],
            )
            .unwrap_err();
        assert!(matches!(e, PciError::NoRoom { bar: 2, .. }), "{e}");
        assert_eq!(
            a.place("next", &[bar(0, BarKind::Mem32, 0x1000)]).unwrap(),
            vec![(0, 0xC010_1000)]
        );
        assert!(matches!(
            a.place("io", &[bar(4, BarKind::Io, 0x20)]),
            Err(PciError::IoBar { bar: 4, .. })
        ));
    }
}
