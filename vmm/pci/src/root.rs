//! The root bus: conf1 ports, the ECAM window, the host bridge at 00:00.0, device slots,
//! BAR placement and the routing of trapped BAR accesses to their device.

use std::sync::{Mutex, MutexGuard};

use crate::address::{decode_conf1, decode_ecam, ConfigAddress};
use crate::bar_alloc::BarAllocator;
use crate::device::{BarEvent, PciDevice};
use crate::error::PciError;
use crate::host_bridge::HostBridge;
use crate::layout::{PciWindows, CONF1_ADDRESS_PORT, CONF1_DATA_PORT, ECAM_BASE, ECAM_SIZE};

const SLOTS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Trap {
    start: u64,
    end: u64,
    slot: u8,
    bar: u8,
}

struct Inner {
    address: u32,
    devices: Vec<Option<Box<dyn PciDevice>>>,
    alloc: BarAllocator,
    traps: Vec<Trap>,
}

/// PCI bus 0 of the guest. Every method takes `&self` and is safe to call from any vCPU
/// thread; `pio_*` / `mmio_*` return false for accesses that are not the bus's, so the
/// VMM can go on to its other devices.
pub struct PciRoot {
    windows: PciWindows,
    inner: Mutex<Inner>,
}

impl PciRoot {
    /// A bus with the host bridge at 00:00.0.
    pub fn new(windows: PciWindows) -> Self {
        let mut devices: Vec<Option<Box<dyn PciDevice>>> = (0..SLOTS).map(|_| None).collect();
        devices[0] = Some(Box::new(HostBridge::default()));
        PciRoot {
            inner: Mutex::new(Inner {
                address: 0,
                devices,
                alloc: BarAllocator::new(&windows),
                traps: Vec::new(),
            }),
            windows,
        }
    }

    pub fn windows(&self) -> &PciWindows {
        &self.windows
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panicking vCPU thread must not take the bus down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `dev` in the lowest free slot with its BARs placed; returns the slot (the
    /// guest sees 0000:00:SLOT.0).
    pub fn add_device(&self, mut dev: Box<dyn PciDevice>) -> Result<u8, PciError> {
        let mut inner = self.inner();
        let slot = inner
            .devices
            .iter()
            .position(|d| d.is_none())
            .ok_or(PciError::BusFull)?;
        let placed = inner.alloc.place(&dev.name(), &dev.bar_requests())?;
        dev.set_windows(&self.windows);
        for (bar, addr) in placed {
            dev.place_bar(bar, addr);
        }
        inner.devices[slot] = Some(dev);
        Ok(slot as u8)
    }

    /// Removes every device but the host bridge (their Drop tears down what they hold:
    /// for a VF, irqfds, memory slots, VFIO, then the driver binding). Call once the
    /// vCPUs have stopped; the bus may still be referenced elsewhere.
    pub fn shutdown(&self) {
        let taken: Vec<_> = {
            let mut inner = self.inner();
            inner.traps.clear();
            inner.devices[1..]
                .iter_mut()
                .filter_map(Option::take)
                .collect()
        };
        drop(taken);
    }

    /// Answers conf1 accesses: the address register at 0xCF8 (dword only: narrower
    /// accesses there are other chipset registers, e.g. 0xCF9 reset control, and return
    /// false) and the data window 0xCFC..=0xCFF.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
        let mut inner = self.inner();
        if port == CONF1_ADDRESS_PORT && data.len() == 4 {
            data.copy_from_slice(&inner.address.to_le_bytes());
            return true;
        }
        if !(CONF1_DATA_PORT..CONF1_DATA_PORT + 4).contains(&port) {
            return false;
        }
        let v = match decode_conf1(inner.address, port) {
            Some(a) if fits_dword(a.offset, data.len()) => inner.config_read(a, data.len()),
            _ => u32::MAX,
        };
        put(data, u64::from(v));
        true
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) -> bool {
        let mut inner = self.inner();
        if port == CONF1_ADDRESS_PORT && data.len() == 4 {
            inner.address = get(data) as u32;
            return true;
        }
        if !(CONF1_DATA_PORT..CONF1_DATA_PORT + 4).contains(&port) {
            return false;
        }
        if let Some(a) = decode_conf1(inner.address, port) {
            if fits_dword(a.offset, data.len()) {
                inner.config_write(a, data.len(), get(data) as u32);
            }
        }
        true
    }

    /// Answers the ECAM window and every BAR window of a device on this bus.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        let mut inner = self.inner();
        if (ECAM_BASE..ECAM_BASE + ECAM_SIZE).contains(&addr) {
            let v = match data.len() {
                1 | 2 | 4 => u64::from(inner.ecam_read(addr - ECAM_BASE, data.len())),
                8 => {
                    let lo = inner.ecam_read(addr - ECAM_BASE, 4);
                    let hi = inner.ecam_read(addr - ECAM_BASE + 4, 4);
                    u64::from(lo) | (u64::from(hi) << 32)
                }
                _ => u64::MAX,
            };
            put(data, v);
            return true;
        }
        let Some(t) = inner.trap_at(addr) else {
            return false;
        };
        match inner.devices[usize::from(t.slot)].as_mut() {
            Some(d) => d.bar_read(t.bar, addr - t.start, data),
            None => data.fill(0xff),
        }
        true
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        let mut inner = self.inner();
        if (ECAM_BASE..ECAM_BASE + ECAM_SIZE).contains(&addr) {
            let off = addr - ECAM_BASE;
            match data.len() {
                1 | 2 | 4 => inner.ecam_write(off, data.len(), get(data) as u32),
                8 => {
                    let v = get(data);
                    inner.ecam_write(off, 4, v as u32);
                    inner.ecam_write(off + 4, 4, (v >> 32) as u32);
                }
                _ => {}
            }
            return true;
        }
        let Some(t) = inner.trap_at(addr) else {
            return false;
        };
        if let Some(d) = inner.devices[usize::from(t.slot)].as_mut() {
            d.bar_write(t.bar, addr - t.start, data);
        }
        true
    }

    /// A config read as the guest would make it (for tests and diagnostics).
    pub fn config_read(&self, a: ConfigAddress, len: usize) -> u32 {
        if !fits_dword(a.offset, len) {
            return u32::MAX;
        }
        self.inner().config_read(a, len)
    }

    pub fn config_write(&self, a: ConfigAddress, len: usize, value: u32) {
        if fits_dword(a.offset, len) {
            self.inner().config_write(a, len, value);
        }
    }
}

impl Inner {
    fn device(&mut self, a: ConfigAddress) -> Option<&mut Box<dyn PciDevice>> {
        if a.bus != 0 || a.function != 0 || a.offset >= 4096 {
            return None;
        }
        self.devices.get_mut(usize::from(a.device))?.as_mut()
    }

    /// Unaligned accesses inside one dword are split into bytes, as the bus would.
    fn config_read(&mut self, a: ConfigAddress, len: usize) -> u32 {
        let Some(d) = self.device(a) else {
            // Master abort: an absent function reads as all-ones.
            return if len == 4 {
                u32::MAX
            } else {
                (1 << (8 * len)) - 1
            };
        };
        if usize::from(a.offset).is_multiple_of(len) {
            return d.config_read(a.offset, len);
        }
        (0..len).fold(0, |v, i| {
            v | (d.config_read(a.offset + i as u16, 1) & 0xff) << (8 * i)
        })
    }

    fn config_write(&mut self, a: ConfigAddress, len: usize, value: u32) {
        let slot = a.device;
        let Some(d) = self.device(a) else {
            return;
        };
        let events = if usize::from(a.offset).is_multiple_of(len) {
            d.config_write(a.offset, len, value)
        } else {
            (0..len)
                .flat_map(|i| d.config_write(a.offset + i as u16, 1, (value >> (8 * i)) & 0xff))
                .collect()
        };
        for e in events {
            self.apply(slot, e);
        }
    }

    fn ecam_read(&mut self, off: u64, len: usize) -> u32 {
        let a = decode_ecam(off);
        if !fits_dword(a.offset, len) {
            return u32::MAX >> (32 - 8 * len.min(4));
        }
        self.config_read(a, len)
    }

    fn ecam_write(&mut self, off: u64, len: usize, value: u32) {
        let a = decode_ecam(off);
        if fits_dword(a.offset, len) {
            self.config_write(a, len, value);
        }
    }

    fn apply(&mut self, slot: u8, e: BarEvent) {
        match e {
            BarEvent::Mapped { bar, addr, size } => {
                self.traps.retain(|t| !(t.slot == slot && t.bar == bar));
                if let Some(end) = addr.checked_add(size) {
                    self.traps.push(Trap {
                        start: addr,
                        end,
                        slot,
                        bar,
                    });
                }
            }
            BarEvent::Unmapped { bar, addr, .. } => self
                .traps
                .retain(|t| !(t.slot == slot && t.bar == bar && t.start == addr)),
        }
    }

    fn trap_at(&self, addr: u64) -> Option<Trap> {
        self.traps
            .iter()
            .find(|t| (t.start..t.end).contains(&addr))
            .copied()
    }
}

fn fits_dword(offset: u16, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && usize::from(offset & 3) + len <= 4
}

fn put(data: &mut [u8], v: u64) {
    let b = v.to_le_bytes();
    let n = data.len().min(8);
    data[..n].copy_from_slice(&b[..n]);
    data[n..].fill(0xff);
}

fn get(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}
