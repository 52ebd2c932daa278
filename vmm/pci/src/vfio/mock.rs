//! A MOCK of the kernel's VFIO at the level of [`VfioHost`] / [`VfioDeviceOps`], for tests
//! and the pci_bus fuzz target: the build host has no IOMMU and no VF (the nested lab runs
//! [`super::KernelVfio`]). It keeps the rules of the kernel's vfio / vfio_iommu_type1
//! code that the logic above depends on:
//!
//! - a group opens once (EBUSY while a device of it is open), unknown groups are ENOENT,
//!   a non-viable group is refused, a container without type1v2 is refused, an unknown
//!   device name in the group is ENODEV;
//! - DMA map needs 4 KiB-aligned non-zero iova/vaddr/size (EINVAL) and no overlap
//!   (EEXIST); unmap must name a whole mapping (as vfio-ioctls checks the unmapped size);
//! - closing the device closes its container: every mapping goes with the IOMMU;
//! - MSI-X eventfds beyond the vector count are EINVAL.
//!
//! Failure injection: [`MockVfio::fail_map_at`] (ENOMEM at one IOVA, as when pinning
//! exceeds RLIMIT_MEMLOCK).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use super::{RegionInfo, VfioDeviceOps, VfioError, VfioHost, PCI_CONFIG_REGION_INDEX};
use super::{PCI_MSIX_IRQ_INDEX, REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE};

const PAGE: u64 = 4096;

/// One device as the mock presents it.
#[derive(Clone, Debug)]
pub struct MockDevice {
    pub name: String,
    /// Sizes of BAR0..5 (0 = none).
    pub bar_sizes: [u64; 6],
    pub config: Vec<u8>,
    pub msix_vectors: u32,
}

#[derive(Clone, Debug)]
pub struct MockGroup {
    pub id: u32,
    pub viable: bool,
    pub devices: Vec<MockDevice>,
}

#[derive(Default, Debug)]
struct State {
    /// Open devices: (group, name).
    open: Vec<(u32, String)>,
    /// Live DMA mappings of each open device: iova -> (size, vaddr).
    maps: BTreeMap<String, BTreeMap<u64, (u64, u64)>>,
    log: Vec<String>,
    irq_sets: Vec<(String, u32, u32, Vec<RawFd>)>,
    config_writes: Vec<(u64, Vec<u8>)>,
    fail_map_at: Option<u64>,
    mmaps: usize,
}

pub struct MockVfio {
    groups: Vec<MockGroup>,
    type1v2: bool,
    st: Arc<Mutex<State>>,
}

fn e(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn lock(st: &Mutex<State>) -> MutexGuard<'_, State> {
    st.lock().unwrap_or_else(|p| p.into_inner())
}

/// Region offsets in the device fd, as vfio-pci spaces them (index << 40).
pub fn region_offset(index: u32) -> u64 {
    u64::from(index) << 40
}

impl MockVfio {
    pub fn new(groups: Vec<MockGroup>) -> Self {
        MockVfio {
            groups,
            type1v2: true,
            st: Arc::default(),
        }
    }

    /// A container that offers only the legacy type1 IOMMU.
    pub fn without_type1v2(mut self) -> Self {
        self.type1v2 = false;
        self
    }

    pub fn fail_map_at(&self, iova: u64) {
        lock(&self.st).fail_map_at = Some(iova);
    }

    /// Devices still open (each with its group and container): 0 after teardown.
    pub fn open_handles(&self) -> usize {
        lock(&self.st).open.len()
    }

    /// Live DMA mappings as (iova, size, vaddr), across devices.
    pub fn mappings(&self) -> Vec<(u64, u64, u64)> {
        let st = lock(&self.st);
        let mut v: Vec<_> = st
            .maps
            .values()
            .flat_map(|m| m.iter().map(|(i, (s, va))| (*i, *s, *va)))
            .collect();
        v.sort();
        v
    }

    /// The calls in order.
    pub fn log(&self) -> Vec<String> {
        lock(&self.st).log.clone()
    }

    /// MSI-X SET_IRQS calls as (device, index, start, fds); an empty fd list is DATA_NONE.
    pub fn irq_sets(&self) -> Vec<(String, u32, u32, Vec<RawFd>)> {
        lock(&self.st).irq_sets.clone()
    }

    /// Writes through the device fd as (offset in the fd, bytes).
    pub fn config_writes(&self) -> Vec<(u64, Vec<u8>)> {
        lock(&self.st).config_writes.clone()
    }

    pub fn live_mmaps(&self) -> usize {
        lock(&self.st).mmaps
    }
}

impl VfioHost for MockVfio {
    fn open_device(&self, group: u32, name: &str) -> Result<Arc<dyn VfioDeviceOps>, VfioError> {
        let mut st = lock(&self.st);
        st.log.push(format!("open group {group} device {name}"));
        let open_err = |what: String, code| VfioError::Open {
            what,
            source: e(code),
        };
        if !self.type1v2 {
            return Err(VfioError::NoType1v2);
        }
        let Some(g) = self.groups.iter().find(|g| g.id == group) else {
            return Err(open_err(format!("/dev/vfio/{group}"), libc::ENOENT));
        };
        if st.open.iter().any(|(id, _)| *id == group) {
            return Err(open_err(format!("/dev/vfio/{group}"), libc::EBUSY));
        }
        if !g.viable {
            return Err(VfioError::GroupNotViable(group));
        }
        let Some(dev) = g.devices.iter().find(|d| d.name == name) else {
            return Err(VfioError::Ioctl {
                op: format!("VFIO_GROUP_GET_DEVICE_FD {name} in group {group}"),
                source: e(libc::ENODEV),
            });
        };
        st.open.push((group, name.into()));
        st.maps.insert(name.into(), BTreeMap::new());
        Ok(Arc::new(MockOpen {
            dev: dev.clone(),
            st: self.st.clone(),
        }))
    }
}

/// One open device of the mock.
struct MockOpen {
    dev: MockDevice,
    st: Arc<Mutex<State>>,
}

impl MockOpen {
    fn st(&self) -> MutexGuard<'_, State> {
        lock(&self.st)
    }
}

impl VfioDeviceOps for MockOpen {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        let rw = REGION_FLAG_READ | REGION_FLAG_WRITE;
        let (size, flags) = match index {
            0..=5 => (self.dev.bar_sizes[index as usize], rw | REGION_FLAG_MMAP),
            PCI_CONFIG_REGION_INDEX => (self.dev.config.len() as u64, rw),
            _ => (0, 0),
        };
        (size > 0).then_some(RegionInfo {
            index,
            flags,
            size,
            offset: region_offset(index),
        })
    }

    fn msix_vectors(&self) -> u32 {
        self.dev.msix_vectors
    }

    fn dma_map(&self, iova: u64, vaddr: u64, size: u64) -> io::Result<()> {
        let mut st = self.st();
        st.log
            .push(format!("MAP_DMA iova={iova:#x} size={size:#x}"));
        let fail = st.fail_map_at == Some(iova);
        let maps = st.maps.entry(self.dev.name.clone()).or_default();
        if size == 0
            || !iova.is_multiple_of(PAGE)
            || !vaddr.is_multiple_of(PAGE)
            || !size.is_multiple_of(PAGE)
            || vaddr == 0
        {
            return Err(e(libc::EINVAL));
        }
        if maps
            .iter()
            .any(|(i, (s, _))| *i < iova + size && iova < i + s)
        {
            return Err(e(libc::EEXIST));
        }
        if fail {
            return Err(e(libc::ENOMEM));
        }
        maps.insert(iova, (size, vaddr));
        Ok(())
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> io::Result<()> {
        let mut st = self.st();
        st.log
            .push(format!("UNMAP_DMA iova={iova:#x} size={size:#x}"));
        let maps = st.maps.entry(self.dev.name.clone()).or_default();
        match maps.get(&iova) {
            Some((s, _)) if *s == size => {
                maps.remove(&iova);
                Ok(())
            }
            _ => Err(e(libc::EINVAL)),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let cfg = region_offset(PCI_CONFIG_REGION_INDEX);
        let len = self.dev.config.len() as u64;
        if offset >= cfg && offset - cfg + buf.len() as u64 <= len {
            let o = (offset - cfg) as usize;
            buf.copy_from_slice(&self.dev.config[o..o + buf.len()]);
            return Ok(());
        }
        Err(e(libc::EINVAL))
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.st().config_writes.push((offset, buf.to_vec()));
        Ok(())
    }

    fn mmap(&self, _offset: u64, len: u64) -> io::Result<*mut u8> {
        // SAFETY: anonymous private mapping standing in for a BAR.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.st().mmaps += 1;
        Ok(p.cast())
    }

    fn munmap(&self, ptr: *mut u8, len: u64) {
        // SAFETY: from mmap above.
        unsafe { libc::munmap(ptr.cast(), len as usize) };
        self.st().mmaps -= 1;
    }

    fn enable_msix(&self, fds: &[&EventFd]) -> io::Result<()> {
        if fds.is_empty() || fds.len() > self.dev.msix_vectors as usize {
            return Err(e(libc::EINVAL));
        }
        let fds = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.st()
            .irq_sets
            .push((self.dev.name.clone(), PCI_MSIX_IRQ_INDEX, 0, fds));
        Ok(())
    }

    fn disable_msix(&self) -> io::Result<()> {
        self.st()
            .irq_sets
            .push((self.dev.name.clone(), PCI_MSIX_IRQ_INDEX, 0, vec![]));
        Ok(())
    }

    fn reset(&self) {
        self.st().log.push(format!("RESET {}", self.dev.name));
    }
}

impl Drop for MockOpen {
    fn drop(&mut self) {
        let mut st = self.st();
        let name = self.dev.name.clone();
        st.log.push(format!("close {name}"));
        // The container goes with the device: the IOMMU and whatever it still maps.
        st.maps.remove(&name);
        st.open.retain(|(_, n)| *n != name);
    }
}
