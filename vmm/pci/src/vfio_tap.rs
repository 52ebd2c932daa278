//! A pass-through [`VfioIoctls`] that remembers the device fds it hands out.
//! [`crate::vfio::VfioDevice`] keeps its fd private and offers config access only; trapped
//! BAR pages (around the MSI-X table and PBA, or BARs too small to map) need reads and
//! writes of the BAR regions too, on the same fd.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use crate::vfio::{DeviceInfo, Handle, IrqInfo, RegionInfo, VfioIoctls};

pub struct HandleTap {
    inner: Arc<dyn VfioIoctls>,
    devices: Mutex<HashMap<String, Handle>>,
}

impl HandleTap {
    pub fn new(inner: Arc<dyn VfioIoctls>) -> Self {
        HandleTap {
            inner,
            devices: Mutex::new(HashMap::new()),
        }
    }

    /// The open device fd for `name`, if one is open.
    pub fn device_handle(&self, name: &str) -> Option<Handle> {
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }
}

impl VfioIoctls for HandleTap {
    fn open_container(&self) -> io::Result<Handle> {
        self.inner.open_container()
    }
    fn open_group(&self, group: u32) -> io::Result<Handle> {
        self.inner.open_group(group)
    }
    fn close(&self, h: Handle) {
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, v| *v != h);
        self.inner.close(h)
    }
    fn api_version(&self, c: Handle) -> io::Result<i32> {
        self.inner.api_version(c)
    }
    fn check_extension(&self, c: Handle, ext: u32) -> io::Result<bool> {
        self.inner.check_extension(c, ext)
    }
    fn set_iommu(&self, c: Handle, iommu: u32) -> io::Result<()> {
        self.inner.set_iommu(c, iommu)
    }
    fn dma_map(&self, c: Handle, iova: u64, vaddr: u64, size: u64) -> io::Result<()> {
        self.inner.dma_map(c, iova, vaddr, size)
    }
    fn dma_unmap(&self, c: Handle, iova: u64, size: u64) -> io::Result<u64> {
        self.inner.dma_unmap(c, iova, size)
    }
    fn group_status(&self, g: Handle) -> io::Result<u32> {
        self.inner.group_status(g)
    }
    fn group_set_container(&self, g: Handle, c: Handle) -> io::Result<()> {
        self.inner.group_set_container(g, c)
    }
    fn group_unset_container(&self, g: Handle) -> io::Result<()> {
        self.inner.group_unset_container(g)
    }
    fn group_device(&self, g: Handle, name: &str) -> io::Result<Handle> {
        let h = self.inner.group_device(g, name)?;
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), h);
        Ok(h)
    }
    fn device_info(&self, d: Handle) -> io::Result<DeviceInfo> {
        self.inner.device_info(d)
    }
    fn region_info(&self, d: Handle, index: u32) -> io::Result<RegionInfo> {
        self.inner.region_info(d, index)
    }
    fn irq_info(&self, d: Handle, index: u32) -> io::Result<IrqInfo> {
        self.inner.irq_info(d, index)
    }
    fn set_irq_eventfds(&self, d: Handle, index: u32, start: u32, fds: &[RawFd]) -> io::Result<()> {
        self.inner.set_irq_eventfds(d, index, start, fds)
    }
    fn disable_irqs(&self, d: Handle, index: u32) -> io::Result<()> {
        self.inner.disable_irqs(d, index)
    }
    fn reset(&self, d: Handle) -> io::Result<()> {
        self.inner.reset(d)
    }
    fn read_at(&self, d: Handle, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(d, offset, buf)
    }
    fn write_at(&self, d: Handle, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.inner.write_at(d, offset, buf)
    }
    fn mmap(&self, d: Handle, offset: u64, len: u64) -> io::Result<*mut u8> {
        self.inner.mmap(d, offset, len)
    }
    fn munmap(&self, ptr: *mut u8, len: u64) {
        self.inner.munmap(ptr, len)
    }
}
