//! The host bridge at 00:00.0. Linux's conf1 probe (arch/x86/pci/direct.c,
//! pci_sanity_check) accepts the mechanism only when some function on bus 0 has the
//! host-bridge class, so this device is what makes the guest use 0xCF8/0xCFC at all.

use crate::device::{BarEvent, BarInfo, PciDevice};

/// Red Hat's ID for a generic PCIe host bridge (QEMU's gpex): Linux has no quirks for it.
pub const VENDOR_ID: u16 = 0x1b36;
pub const DEVICE_ID: u16 = 0x0008;
const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;
const COMMAND_WRITABLE: u16 = 0x0006; // memory decode, bus master: stored, nothing behind them

#[derive(Debug, Default)]
pub struct HostBridge {
    command: u16,
}

impl HostBridge {
    fn dword(&self, offset: u16) -> u32 {
        match offset {
            0x00 => u32::from(VENDOR_ID) | (u32::from(DEVICE_ID) << 16),
            0x04 => u32::from(self.command),
            0x08 => CLASS_HOST_BRIDGE << 8, // revision 0
            0x0c => 0,                      // header type 0, single function
            // No capabilities, no BARs, no interrupt.
            0x10..=0xff => 0,
            // Conventional PCI: no extended config space.
            _ => u32::MAX,
        }
    }
}

impl PciDevice for HostBridge {
    fn name(&self) -> String {
        "host bridge".into()
    }
    fn bar_requests(&self) -> Vec<BarInfo> {
        Vec::new()
    }
    fn place_bar(&mut self, _bar: u8, _addr: u64) {}

    fn config_read(&mut self, offset: u16, len: usize) -> u32 {
        let v = self.dword(offset & !3) >> (8 * u32::from(offset & 3));
        match len {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v,
        }
    }

    fn config_write(&mut self, offset: u16, len: usize, value: u32) -> Vec<BarEvent> {
        match (offset, len) {
            (0x04, 2 | 4) | (0x04, 1) => {
                let mask = if len == 1 { 0x00ff } else { 0xffff };
                let v = (value as u16) & mask;
                self.command = (self.command & !mask) | (v & COMMAND_WRITABLE);
            }
            (0x05, 1) => {
                self.command = (self.command & 0x00ff) | (((value as u16) << 8) & COMMAND_WRITABLE);
            }
            _ => {}
        }
        Vec::new()
    }

    fn bar_read(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_as_a_host_bridge_and_keeps_command_bits() {
        let mut h = HostBridge::default();
        assert_eq!(h.config_read(0, 4), 0x0008_1b36);
        assert_eq!(h.config_read(0x0a, 2), 0x0600, "class: host bridge");
        assert_eq!(h.config_read(0x0b, 1), 0x06);
        assert_eq!(h.config_read(0x0e, 1), 0, "single function, type 0");
        h.config_write(0x04, 2, 0xffff);
        assert_eq!(h.config_read(0x04, 2), 0x0006);
        h.config_write(0x04, 1, 0);
        assert_eq!(h.config_read(0x04, 4), 0);
        assert_eq!(h.config_read(0x100, 4), u32::MAX, "no extended space");
        assert!(h.bar_requests().is_empty());
    }
}
