//! VFIO for one passed-through VF: container (type1v2 IOMMU), group, device; guest RAM
//! DMA-mapped with IOVA = guest-physical address; regions, config space, MSI-X eventfds.
//!
//! Teardown order matters to the kernel and is built into the types: a [`VfioDevice`]
//! holds its group, a [`VfioGroup`] its container, so the device fd closes first, then
//! the mappings are removed while the IOMMU still exists, then the group leaves the
//! container, then the container closes.

pub mod ioctl;
pub mod mock;

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use crate::config_space::{decode_bars, BarInfo, ConfigIo};
use crate::msix::{mappable_ranges, MsixCap};
use ioctl::*;
pub use ioctl::{DeviceInfo, Handle, IrqInfo, KernelVfio, RegionInfo, VfioIoctls};

/// Each DMA map call covers at most one 1 GiB page of guest RAM: bounded pinning per
/// call, and a failure names the exact GiB.
pub const DMA_CHUNK: u64 = 1 << 30;
const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("opening {what}: {source}{}", open_hint(.source))]
    Open { what: String, source: io::Error },
    #[error("VFIO API version {0}; this VMM speaks version 0")]
    ApiVersion(i32),
    #[error("the VFIO container offers no type1v2 IOMMU: the IOMMU is off or vfio_iommu_type1 is not loaded")]
    NoType1v2,
    #[error("IOMMU group {0} is not viable: a device in /sys/kernel/iommu_groups/{0}/devices is bound to a host driver")]
    GroupNotViable(u32),
    #[error("{op}: {source}")]
    Ioctl { op: String, source: io::Error },
    #[error("guest RAM GPA {gpa:#x} size {size:#x} at host VA {hva:#x} is not 4 KiB aligned")]
    Unaligned { gpa: u64, size: u64, hva: u64 },
    #[error("guest RAM regions overlap at GPA {0:#x}")]
    Overlap(u64),
    #[error("DMA map of guest RAM GPA {gpa:#x}+{size:#x} (host VA {hva:#x}) failed: {source}{}", map_hint(.source))]
    DmaMap {
        gpa: u64,
        size: u64,
        hva: u64,
        source: io::Error,
    },
    #[error("{0} is not a PCI device to VFIO")]
    NotPci(String),
    #[error("{device} offers {available} MSI-X vectors, {requested} requested")]
    TooManyVectors {
        device: String,
        requested: usize,
        available: u32,
    },
}

fn open_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) => " (is vfio-pci loaded and the device bound to it?)",
        Some(libc::EBUSY) => " (another process holds this group)",
        Some(libc::EACCES) | Some(libc::EPERM) => " (needs root or access to /dev/vfio)",
        _ => "",
    }
}

fn map_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOMEM) => " (RLIMIT_MEMLOCK too low for guest RAM? see `ulimit -l`)",
        Some(libc::EFAULT) => " (host VA not mapped)",
        _ => "",
    }
}

fn ioctl_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> VfioError {
    let op = op.into();
    move |source| VfioError::Ioctl { op, source }
}

/// One contiguous piece of guest RAM: guest-physical base, where it is mapped in this
/// process, and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRamRegion {
    pub gpa: u64,
    pub hva: u64,
    pub size: u64,
}

/// The DMA map calls for guest RAM: IOVA = GPA, split at every 1 GiB GPA boundary.
/// Returns (iova, hva, size) per call.
pub fn dma_chunks(regions: &[GuestRamRegion]) -> Result<Vec<(u64, u64, u64)>, VfioError> {
    let mut sorted: Vec<_> = regions.to_vec();
    sorted.sort_by_key(|r| r.gpa);
    let mut out = Vec::new();
    let mut prev_end = 0u64;
    for (i, r) in sorted.iter().enumerate() {
        if r.gpa % PAGE != 0 || r.hva % PAGE != 0 || r.size % PAGE != 0 || r.size == 0 {
            return Err(VfioError::Unaligned {
                gpa: r.gpa,
                size: r.size,
                hva: r.hva,
            });
        }
        if i > 0 && r.gpa < prev_end {
            return Err(VfioError::Overlap(r.gpa));
        }
        prev_end = r.gpa + r.size;
        let mut gpa = r.gpa;
        while gpa < r.gpa + r.size {
            let end = ((gpa / DMA_CHUNK) + 1) * DMA_CHUNK;
            let len = end.min(r.gpa + r.size) - gpa;
            out.push((gpa, r.hva + (gpa - r.gpa), len));
            gpa += len;
        }
    }
    Ok(out)
}

#[derive(Default)]
struct ContainerState {
    groups: usize,
    iommu_set: bool,
    mapped: Vec<(u64, u64)>,
}

/// `/dev/vfio/vfio` with a type1v2 IOMMU.
pub struct VfioContainer {
    ops: Arc<dyn VfioIoctls>,
    fd: Handle,
    st: Mutex<ContainerState>,
}

impl VfioContainer {
    pub fn open(ops: Arc<dyn VfioIoctls>) -> Result<Arc<Self>, VfioError> {
        let fd = ops.open_container().map_err(|source| VfioError::Open {
            what: "/dev/vfio/vfio".into(),
            source,
        })?;
        let c = Arc::new(VfioContainer {
            ops,
            fd,
            st: Mutex::new(ContainerState::default()),
        });
        let v = c
            .ops
            .api_version(fd)
            .map_err(ioctl_err("VFIO_GET_API_VERSION"))?;
        if v != API_VERSION {
            return Err(VfioError::ApiVersion(v));
        }
        if !c
            .ops
            .check_extension(fd, TYPE1V2_IOMMU)
            .map_err(ioctl_err("VFIO_CHECK_EXTENSION"))?
        {
            return Err(VfioError::NoType1v2);
        }
        Ok(c)
    }

    fn st(&self) -> std::sync::MutexGuard<'_, ContainerState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens `/dev/vfio/<group>`, checks it is viable and puts it in this container;
    /// the first group brings up the IOMMU.
    pub fn attach_group(self: &Arc<Self>, id: u32) -> Result<Arc<VfioGroup>, VfioError> {
        let fd = self.ops.open_group(id).map_err(|source| VfioError::Open {
            what: format!("/dev/vfio/{id}"),
            source,
        })?;
        // From here the group closes on error through its Drop.
        let mut g = VfioGroup {
            container: self.clone(),
            fd,
            id,
            attached: false,
        };
        let status = self
            .ops
            .group_status(fd)
            .map_err(ioctl_err(format!("VFIO_GROUP_GET_STATUS on group {id}")))?;
        if status & GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::GroupNotViable(id));
        }
        self.ops
            .group_set_container(fd, self.fd)
            .map_err(ioctl_err(format!("VFIO_GROUP_SET_CONTAINER on group {id}")))?;
        g.attached = true;
        let mut st = self.st();
        st.groups += 1;
        if !st.iommu_set {
            self.ops
                .set_iommu(self.fd, TYPE1V2_IOMMU)
                .map_err(ioctl_err("VFIO_SET_IOMMU type1v2"))?;
            st.iommu_set = true;
        }
        drop(st);
        Ok(Arc::new(g))
    }

    /// Maps guest RAM for device DMA with IOVA = GPA, 1 GiB at a time. On failure
    /// everything this call mapped is unmapped again.
    pub fn map_guest_ram(&self, regions: &[GuestRamRegion]) -> Result<(), VfioError> {
        let chunks = dma_chunks(regions)?;
        let mut done = Vec::new();
        for (iova, hva, size) in chunks {
            if let Err(source) = self.ops.dma_map(self.fd, iova, hva, size) {
                for (i, s) in done {
                    let _ = self.ops.dma_unmap(self.fd, i, s);
                }
                return Err(VfioError::DmaMap {
                    gpa: iova,
                    size,
                    hva,
                    source,
                });
            }
            done.push((iova, size));
        }
        self.st().mapped.extend(done);
        Ok(())
    }

    /// Removes every mapping this container made.
    pub fn unmap_all(&self) -> Result<(), VfioError> {
        let mapped = std::mem::take(&mut self.st().mapped);
        let mut first = None;
        for (iova, size) in mapped {
            if let Err(e) = self.ops.dma_unmap(self.fd, iova, size) {
                first.get_or_insert(VfioError::Ioctl {
                    op: format!("VFIO_IOMMU_UNMAP_DMA {iova:#x}"),
                    source: e,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// (iova, size) of every live mapping.
    pub fn mappings(&self) -> Vec<(u64, u64)> {
        self.st().mapped.clone()
    }
}

impl Drop for VfioContainer {
    fn drop(&mut self) {
        self.ops.close(self.fd);
    }
}

/// `/dev/vfio/<group>`, attached to a container.
pub struct VfioGroup {
    container: Arc<VfioContainer>,
    fd: Handle,
    id: u32,
    attached: bool,
}

impl VfioGroup {
    pub fn id(&self) -> u32 {
        self.id
    }
    pub fn container(&self) -> &Arc<VfioContainer> {
        &self.container
    }
}

impl Drop for VfioGroup {
    fn drop(&mut self) {
        if self.attached {
            let last = {
                let mut st = self.container.st();
                st.groups -= 1;
                st.groups == 0
            };
            // The IOMMU goes away with the last group: unmap while it is still there.
            if last {
                if let Err(e) = self.container.unmap_all() {
                    eprintln!("hpmmap-pci: {e}");
                }
                self.container.st().iommu_set = false;
            }
            if let Err(e) = self.container.ops.group_unset_container(self.fd) {
                eprintln!(
                    "hpmmap-pci: VFIO_GROUP_UNSET_CONTAINER on group {}: {e}",
                    self.id
                );
            }
        }
        self.container.ops.close(self.fd);
    }
}

/// The VF's device fd with what the VMM needs to know about it.
pub struct VfioDevice {
    group: Arc<VfioGroup>,
    fd: Handle,
    name: String,
    info: DeviceInfo,
    regions: Vec<RegionInfo>,
    msix_vectors: u32,
    msix_on: Mutex<bool>,
}

impl VfioDevice {
    /// `name`: the PCI address, as in /sys/bus/pci/devices.
    pub fn open(group: &Arc<VfioGroup>, name: &str) -> Result<Self, VfioError> {
        let ops = &group.container.ops;
        let fd = ops.group_device(group.fd, name).map_err(ioctl_err(format!(
            "VFIO_GROUP_GET_DEVICE_FD {name} in group {}",
            group.id
        )))?;
        let mut d = VfioDevice {
            group: group.clone(),
            fd,
            name: name.into(),
            info: DeviceInfo::default(),
            regions: Vec::new(),
            msix_vectors: 0,
            msix_on: Mutex::new(false),
        };
        d.info = ops
            .device_info(fd)
            .map_err(ioctl_err(format!("VFIO_DEVICE_GET_INFO {name}")))?;
        if d.info.flags & DEVICE_FLAGS_PCI == 0 {
            return Err(VfioError::NotPci(name.into()));
        }
        for i in 0..d.info.num_regions.min(PCI_CONFIG_REGION_INDEX + 1) {
            d.regions
                .push(ops.region_info(fd, i).map_err(ioctl_err(format!(
                    "VFIO_DEVICE_GET_REGION_INFO {name} #{i}"
                )))?);
        }
        if d.info.num_irqs > PCI_MSIX_IRQ_INDEX {
            d.msix_vectors = ops
                .irq_info(fd, PCI_MSIX_IRQ_INDEX)
                .map_err(ioctl_err(format!("VFIO_DEVICE_GET_IRQ_INFO {name} MSI-X")))?
                .count;
        }
        Ok(d)
    }

    fn ops(&self) -> &Arc<dyn VfioIoctls> {
        &self.group.container.ops
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn info(&self) -> DeviceInfo {
        self.info
    }
    pub fn group(&self) -> &Arc<VfioGroup> {
        &self.group
    }
    /// Region `index` (0-5 BARs, 6 ROM, 7 config).
    pub fn region(&self, index: u32) -> Option<RegionInfo> {
        self.regions.get(index as usize).copied()
    }
    pub fn msix_vectors(&self) -> u32 {
        self.msix_vectors
    }

    fn config_region(&self) -> Option<RegionInfo> {
        self.region(PCI_CONFIG_REGION_INDEX)
    }

    /// The device's config space through VFIO (256 bytes, or 4096 where the
    /// region offers extended space).
    pub fn read_config_space(&self) -> Result<Vec<u8>, VfioError> {
        let r = self
            .config_region()
            .ok_or_else(|| VfioError::NotPci(self.name.clone()))?;
        let mut buf = vec![0u8; r.size.clamp(256, 4096) as usize];
        self.ops()
            .read_at(self.fd, r.offset, &mut buf)
            .map_err(ioctl_err(format!("reading config space of {}", self.name)))?;
        Ok(buf)
    }

    /// BAR types and sizes, for [`crate::config_space::VfConfig::new`] and BAR placement.
    pub fn bars(&self, config: &[u8]) -> Vec<BarInfo> {
        let mut sizes = [0u64; 6];
        for (i, s) in sizes.iter_mut().enumerate() {
            *s = self.region(i as u32).map_or(0, |r| r.size);
        }
        decode_bars(config, sizes)
    }

    /// Maps a BAR's directly accessible parts (everything but the MSI-X table and PBA
    /// pages) into this process, for KVM memory slots.
    pub fn map_bar(&self, bar: u8, msix: Option<&MsixCap>) -> Result<Vec<BarMapping>, VfioError> {
        let Some(r) = self
            .region(u32::from(bar))
            .filter(|r| r.size > 0 && r.mmappable())
        else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for range in mappable_ranges(bar, r.size, msix, PAGE) {
            let len = range.end - range.start;
            match self.ops().mmap(self.fd, r.offset + range.start, len) {
                Ok(ptr) => out.push(BarMapping {
                    ops: self.ops().clone(),
                    bar,
                    bar_offset: range.start,
                    len,
                    ptr,
                }),
                Err(source) => {
                    return Err(VfioError::Ioctl {
                        op: format!("mmap BAR{bar} of {} at {:#x}", self.name, range.start),
                        source,
                    })
                }
            }
        }
        Ok(out)
    }

    /// Turns MSI-X on with one eventfd per vector (vector i signals `eventfds[i]`;
    /// the VMM registers each as a KVM irqfd on the vector's GSI).
    pub fn enable_msix(&self, eventfds: &[RawFd]) -> Result<(), VfioError> {
        if eventfds.len() > self.msix_vectors as usize || eventfds.is_empty() {
            return Err(VfioError::TooManyVectors {
                device: self.name.clone(),
                requested: eventfds.len(),
                available: self.msix_vectors,
            });
        }
        self.ops()
            .set_irq_eventfds(self.fd, PCI_MSIX_IRQ_INDEX, 0, eventfds)
            .map_err(ioctl_err(format!(
                "VFIO_DEVICE_SET_IRQS MSI-X on {}",
                self.name
            )))?;
        *self.msix_on.lock().unwrap_or_else(|p| p.into_inner()) = true;
        Ok(())
    }

    pub fn disable_msix(&self) -> Result<(), VfioError> {
        let mut on = self.msix_on.lock().unwrap_or_else(|p| p.into_inner());
        if !*on {
            return Ok(());
        }
        self.ops()
            .disable_irqs(self.fd, PCI_MSIX_IRQ_INDEX)
            .map_err(ioctl_err(format!("disabling MSI-X on {}", self.name)))?;
        *on = false;
        Ok(())
    }

    pub fn reset(&self) -> Result<(), VfioError> {
        if self.info.flags & DEVICE_FLAGS_RESET == 0 {
            return Ok(());
        }
        self.ops()
            .reset(self.fd)
            .map_err(ioctl_err(format!("VFIO_DEVICE_RESET {}", self.name)))
    }
}

impl ConfigIo for VfioDevice {
    fn read(&self, offset: u16, buf: &mut [u8]) {
        let ok = self.config_region().is_some_and(|r| {
            self.ops()
                .read_at(self.fd, r.offset + u64::from(offset), buf)
                .is_ok()
        });
        if !ok {
            // What a PCI read of an absent function returns.
            buf.fill(0xff);
        }
    }

    fn write(&self, offset: u16, buf: &[u8]) {
        if let Some(r) = self.config_region() {
            if let Err(e) = self
                .ops()
                .write_at(self.fd, r.offset + u64::from(offset), buf)
            {
                eprintln!("hpmmap-pci: config write {offset:#x} on {}: {e}", self.name);
            }
        }
    }
}

impl Drop for VfioDevice {
    fn drop(&mut self) {
        if let Err(e) = self.disable_msix() {
            eprintln!("hpmmap-pci: {e}");
        }
        self.ops().close(self.fd);
    }
}

/// Part of a BAR mapped into this process.
pub struct BarMapping {
    ops: Arc<dyn VfioIoctls>,
    pub bar: u8,
    /// Offset of this piece inside the BAR (the guest address is BAR base + this).
    pub bar_offset: u64,
    pub len: u64,
    pub ptr: *mut u8,
}

// SAFETY: the mapping is device memory owned by this value; the pointer is only handed
// to KVM as a memory slot's userspace address.
unsafe impl Send for BarMapping {}

impl Drop for BarMapping {
    fn drop(&mut self) {
        self.ops.munmap(self.ptr, self.len);
    }
}

/// Container + group + device + guest RAM mappings for one claimed VF. Drop releases
/// them in the kernel's order.
pub struct VfioPassthrough {
    // Field order is drop order: the device closes before its group and container.
    pub device: VfioDevice,
    pub group: Arc<VfioGroup>,
    pub container: Arc<VfioContainer>,
}

impl VfioPassthrough {
    /// Opens VFIO for the VF `name` (PCI address) in `group` and DMA-maps `ram`.
    pub fn open(
        ops: Arc<dyn VfioIoctls>,
        group: u32,
        name: &str,
        ram: &[GuestRamRegion],
    ) -> Result<Self, VfioError> {
        let container = VfioContainer::open(ops)?;
        let g = container.attach_group(group)?;
        container.map_guest_ram(ram)?;
        let device = VfioDevice::open(&g, name)?;
        Ok(VfioPassthrough {
            device,
            group: g,
            container,
        })
    }
}
