//! VFIO for one passed-through VF: the device opened in a container with the type1v2
//! IOMMU, guest RAM DMA-mapped with IOVA = guest-physical address in 1 GiB chunks,
//! regions, config space, BAR mmaps, MSI-X eventfds.
//!
//! The host side is the [`VfioHost`] / [`VfioDeviceOps`] pair, at the level this crate
//! needs. [`KernelVfio`] implements it over the rust-vmm crate vfio-ioctls (container,
//! group attach, type1v2, device fd, regions, interrupts, DMA map). [`mock::MockVfio`] is
//! a MOCK of the kernel's VFIO for tests and the fuzz target: the build host has no IOMMU
//! and no VF, so the real path runs only in the nested lab.
//!
//! What stays ours above the trait: the DMA chunking and its rollback, the explicit
//! unmap before close, BAR mmaps around the MSI-X pages, the vector-count check, config
//! space through the config region. Teardown order is built into [`VfioDevice`]: MSI-X
//! off, then every DMA mapping removed while the IOMMU still exists, then the device
//! closes (after the last [`BarMapping`], which holds it), which detaches the group and
//! closes the container.

mod kernel;
pub mod mock;

use std::io;
use std::sync::{Arc, Mutex};

use vfio_bindings::bindings::vfio as uapi;
use vmm_sys_util::eventfd::EventFd;

use crate::config_space::{decode_bars, BarInfo, ConfigIo};
use crate::msix::{mappable_ranges, MsixCap};
pub use kernel::KernelVfio;

/// Each DMA map call covers at most one 1 GiB page of guest RAM: bounded pinning per
/// call, and a failure names the exact GiB.
pub const DMA_CHUNK: u64 = 1 << 30;
const PAGE: u64 = 4096;

pub const PCI_CONFIG_REGION_INDEX: u32 = uapi::VFIO_PCI_CONFIG_REGION_INDEX;
pub const PCI_MSIX_IRQ_INDEX: u32 = uapi::VFIO_PCI_MSIX_IRQ_INDEX;
pub const REGION_FLAG_READ: u32 = uapi::VFIO_REGION_INFO_FLAG_READ;
pub const REGION_FLAG_WRITE: u32 = uapi::VFIO_REGION_INFO_FLAG_WRITE;
pub const REGION_FLAG_MMAP: u32 = uapi::VFIO_REGION_INFO_FLAG_MMAP;

/// One region of the device fd (0-5 BARs, 6 ROM, 7 config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RegionInfo {
    pub index: u32,
    pub flags: u32,
    pub size: u64,
    /// Offset of the region in the device fd (for pread/pwrite/mmap).
    pub offset: u64,
}

impl RegionInfo {
    pub fn mmappable(&self) -> bool {
        self.flags & REGION_FLAG_MMAP != 0
    }
}

/// The host's VFIO: opens devices.
pub trait VfioHost: Send + Sync {
    /// Opens the device `name` (PCI address) of IOMMU group `group`: its own container,
    /// the group attached to it, the type1v2 IOMMU set, the device fd, its regions and
    /// interrupts. Nothing is DMA-mapped yet.
    fn open_device(&self, group: u32, name: &str) -> Result<Arc<dyn VfioDeviceOps>, VfioError>;
}

/// One open device and its container, as the VMM uses them. Errors are the kernel's
/// errno where the implementation has one. Dropping it closes the device fd, detaches
/// the group and closes the container (whatever is still mapped goes with the IOMMU).
pub trait VfioDeviceOps: Send + Sync {
    /// Region `index`, if the device has it.
    fn region(&self, index: u32) -> Option<RegionInfo>;
    /// Vectors VFIO offers for MSI-X (0: none).
    fn msix_vectors(&self) -> u32;
    /// Maps `size` bytes at host address `hva` for device DMA at `iova`, read-write.
    fn dma_map(&self, iova: u64, hva: u64, size: u64) -> io::Result<()>;
    /// Removes the mapping made by [`VfioDeviceOps::dma_map`] with this `iova`/`size`.
    fn dma_unmap(&self, iova: u64, size: u64) -> io::Result<()>;
    /// pread(2) of the device fd at `offset` (region offset + offset in the region).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// pwrite(2) of the device fd at `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// mmap(2) of `len` bytes of the device fd at `offset` (a BAR), shared, read-write.
    fn mmap(&self, offset: u64, len: u64) -> io::Result<*mut u8>;
    /// Undoes [`VfioDeviceOps::mmap`].
    fn munmap(&self, ptr: *mut u8, len: u64);
    /// MSI-X on, vector i signalling `fds[i]`.
    fn enable_msix(&self, fds: &[&EventFd]) -> io::Result<()>;
    /// MSI-X off (DATA_NONE, count 0).
    fn disable_msix(&self) -> io::Result<()>;
    /// VFIO_DEVICE_RESET where the device offers it. vfio-pci also resets the function
    /// when the device fd is opened and released, which is what the VMM relies on.
    fn reset(&self);
}

#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("opening {what}: {source}{}", open_hint(.source))]
    Open { what: String, source: io::Error },
    #[error("the kernel's VFIO API version is not the one this VMM speaks (0)")]
    ApiVersion,
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
    #[error("{device} is in IOMMU group {found}, not group {expected} as claimed")]
    GroupMismatch {
        device: String,
        expected: u32,
        found: String,
    },
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

/// The VF's open device with what the VMM needs to know about it, and the guest RAM
/// it has DMA-mapped.
pub struct VfioDevice {
    ops: Arc<dyn VfioDeviceOps>,
    name: String,
    group: u32,
    regions: Vec<Option<RegionInfo>>,
    msix_vectors: u32,
    msix_on: Mutex<bool>,
    /// (iova, size) of every live DMA mapping, in map order.
    mapped: Mutex<Vec<(u64, u64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl VfioDevice {
    /// `name`: the PCI address, as in /sys/bus/pci/devices; `group`: its IOMMU group.
    pub fn open(host: &dyn VfioHost, group: u32, name: &str) -> Result<Self, VfioError> {
        let ops = host.open_device(group, name)?;
        let regions = (0..=PCI_CONFIG_REGION_INDEX)
            .map(|i| ops.region(i))
            .collect();
        Ok(VfioDevice {
            msix_vectors: ops.msix_vectors(),
            ops,
            name: name.into(),
            group,
            regions,
            msix_on: Mutex::new(false),
            mapped: Mutex::new(Vec::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn group(&self) -> u32 {
        self.group
    }
    /// Region `index` (0-5 BARs, 6 ROM, 7 config).
    pub fn region(&self, index: u32) -> Option<RegionInfo> {
        self.regions.get(index as usize).copied().flatten()
    }
    pub fn msix_vectors(&self) -> u32 {
        self.msix_vectors
    }

    fn config_region(&self) -> Option<RegionInfo> {
        self.region(PCI_CONFIG_REGION_INDEX)
    }

    /// Maps guest RAM for device DMA with IOVA = GPA, 1 GiB at a time. On failure
    /// everything this call mapped is unmapped again.
    pub fn map_guest_ram(&self, regions: &[GuestRamRegion]) -> Result<(), VfioError> {
        let chunks = dma_chunks(regions)?;
        let mut done = Vec::new();
        for (iova, hva, size) in chunks {
            if let Err(source) = self.ops.dma_map(iova, hva, size) {
                for (i, s) in done {
                    let _ = self.ops.dma_unmap(i, s);
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
        lock(&self.mapped).extend(done);
        Ok(())
    }

    /// Removes every DMA mapping this device made; the first error is returned, the
    /// rest are still attempted.
    pub fn unmap_all(&self) -> Result<(), VfioError> {
        let mapped = std::mem::take(&mut *lock(&self.mapped));
        let mut first = None;
        for (iova, size) in mapped {
            if let Err(e) = self.ops.dma_unmap(iova, size) {
                first.get_or_insert(VfioError::Ioctl {
                    op: format!("VFIO_IOMMU_UNMAP_DMA {iova:#x}+{size:#x}"),
                    source: e,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// (iova, size) of every live DMA mapping.
    pub fn dma_mappings(&self) -> Vec<(u64, u64)> {
        lock(&self.mapped).clone()
    }

    /// The device's config space through VFIO (256 bytes, or 4096 where the
    /// region offers extended space).
    pub fn read_config_space(&self) -> Result<Vec<u8>, VfioError> {
        let r = self
            .config_region()
            .ok_or_else(|| VfioError::NotPci(self.name.clone()))?;
        let mut buf = vec![0u8; r.size.clamp(256, 4096) as usize];
        self.ops
            .read_at(r.offset, &mut buf)
            .map_err(ioctl_err(format!("reading config space of {}", self.name)))?;
        Ok(buf)
    }

    /// Reads `buf.len()` bytes at `offset` in region `index` (a trapped BAR page).
    pub fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self.region_in_bounds(index, offset, buf.len())?;
        self.ops.read_at(r.offset + offset, buf)
    }

    /// Writes `buf` at `offset` in region `index`.
    pub fn region_write(&self, index: u32, offset: u64, buf: &[u8]) -> io::Result<()> {
        let r = self.region_in_bounds(index, offset, buf.len())?;
        self.ops.write_at(r.offset + offset, buf)
    }

    fn region_in_bounds(&self, index: u32, offset: u64, len: usize) -> io::Result<RegionInfo> {
        self.region(index)
            .filter(|r| {
                offset
                    .checked_add(len as u64)
                    .is_some_and(|end| end <= r.size)
            })
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
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
            match self.ops.mmap(r.offset + range.start, len) {
                Ok(ptr) => out.push(BarMapping {
                    ops: self.ops.clone(),
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
    pub fn enable_msix(&self, eventfds: &[&EventFd]) -> Result<(), VfioError> {
        if eventfds.len() > self.msix_vectors as usize || eventfds.is_empty() {
            return Err(VfioError::TooManyVectors {
                device: self.name.clone(),
                requested: eventfds.len(),
                available: self.msix_vectors,
            });
        }
        self.ops.enable_msix(eventfds).map_err(ioctl_err(format!(
            "VFIO_DEVICE_SET_IRQS MSI-X on {}",
            self.name
        )))?;
        *lock(&self.msix_on) = true;
        Ok(())
    }

    pub fn disable_msix(&self) -> Result<(), VfioError> {
        let mut on = lock(&self.msix_on);
        if !*on {
            return Ok(());
        }
        self.ops
            .disable_msix()
            .map_err(ioctl_err(format!("disabling MSI-X on {}", self.name)))?;
        *on = false;
        Ok(())
    }

    /// VFIO_DEVICE_RESET if the device offers it (see [`VfioDeviceOps::reset`]).
    pub fn reset(&self) {
        self.ops.reset()
    }
}

impl ConfigIo for VfioDevice {
    fn read(&self, offset: u16, buf: &mut [u8]) {
        if self
            .region_read(PCI_CONFIG_REGION_INDEX, u64::from(offset), buf)
            .is_err()
        {
            // What a PCI read of an absent function returns.
            buf.fill(0xff);
        }
    }

    fn write(&self, offset: u16, buf: &[u8]) {
        if let Err(e) = self.region_write(PCI_CONFIG_REGION_INDEX, u64::from(offset), buf) {
            eprintln!("hpmmap-pci: config write {offset:#x} on {}: {e}", self.name);
        }
    }
}

impl Drop for VfioDevice {
    fn drop(&mut self) {
        if let Err(e) = self.disable_msix() {
            eprintln!("hpmmap-pci: {e}");
        }
        // Explicitly, while the IOMMU exists: closing the device would drop the mappings
        // with the container, but an unmap error is then seen nowhere.
        if let Err(e) = self.unmap_all() {
            eprintln!("hpmmap-pci: {e}");
        }
        // `ops` goes with this value (or with the last BarMapping): the device closes.
    }
}

/// Part of a BAR mapped into this process. Holds the device open until it is unmapped.
pub struct BarMapping {
    ops: Arc<dyn VfioDeviceOps>,
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

/// The device of one claimed VF with guest RAM DMA-mapped. Drop releases it in the
/// kernel's order (see [`VfioDevice`]).
pub struct VfioPassthrough {
    pub device: VfioDevice,
}

impl VfioPassthrough {
    /// Opens VFIO for the VF `name` (PCI address) in `group`, then DMA-maps `ram`: the
    /// IOMMU exists once the device is open (its group is attached then).
    pub fn open(
        host: &dyn VfioHost,
        group: u32,
        name: &str,
        ram: &[GuestRamRegion],
    ) -> Result<Self, VfioError> {
        let device = VfioDevice::open(host, group, name)?;
        device.map_guest_ram(ram)?;
        Ok(VfioPassthrough { device })
    }
}
