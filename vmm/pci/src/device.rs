//! What a device on the root bus implements.

pub use crate::config_space::{BarInfo, BarKind};

/// A change in where a BAR decodes, for the root bus's MMIO routing. Reported by
/// [`PciDevice::config_write`] when the guest moves a BAR or flips a decode enable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarEvent {
    /// The BAR now decodes [addr, addr + size): accesses there that KVM does not serve
    /// from a memory slot come to [`PciDevice::bar_read`] / [`PciDevice::bar_write`].
    Mapped { bar: u8, addr: u64, size: u64 },
    /// The BAR no longer decodes at addr.
    Unmapped { bar: u8, addr: u64, size: u64 },
}

/// One PCI function (function 0 of its slot) as the guest sees it.
///
/// Config accesses arrive naturally aligned, 1, 2 or 4 bytes, at offsets below 4096; BAR
/// accesses arrive with the offset from the BAR's current base, 1 to 8 bytes. None of
/// them may panic, whatever the guest writes.
pub trait PciDevice: Send {
    /// For messages: e.g. "vfio 0000:3b:00.3".
    fn name(&self) -> String;
    /// The BARs to place before the guest runs.
    fn bar_requests(&self) -> Vec<BarInfo>;
    /// The memory windows the bus forwards (before the BARs are placed): a BAR the guest
    /// moves outside them must decode nowhere (issue 12.5).
    fn set_windows(&mut self, _windows: &crate::layout::PciWindows) {}
    /// Firmware placement of a BAR (decode stays as the device has it).
    fn place_bar(&mut self, bar: u8, addr: u64);
    fn config_read(&mut self, offset: u16, len: usize) -> u32;
    fn config_write(&mut self, offset: u16, len: usize, value: u32) -> Vec<BarEvent>;
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]);
}
