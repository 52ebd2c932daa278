//! [`KernelVfio`]: the host's VFIO through the rust-vmm crate vfio-ioctls.
//!
//! `VfioContainer::new(None)` opens /dev/vfio/vfio and checks the API version and the
//! type1v2 extension; `VfioDevice::new` reads the group from the device's sysfs
//! `iommu_group` link, opens /dev/vfio/<group>, checks it is viable, attaches it to the
//! container, sets the type1v2 IOMMU, gets the device fd and reads its regions and
//! interrupts. With no KVM VFIO device handle (`None`) no KVM ioctls are issued.
//!
//! What stays ours, and why:
//! - config and BAR reads/writes are pread/pwrite on the device fd: vfio-ioctls'
//!   `region_read`/`region_write` return `()` and only log a failure, and a failed read
//!   must become all-ones for the guest;
//! - BAR mmaps, which vfio-ioctls does not offer;
//! - the drop guard described at [`KernelDevice`]'s `Drop`.

use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioDevice, VfioError as CrateError, VfioOps};
use vmm_sys_util::eventfd::EventFd;

use super::{RegionInfo, VfioDeviceOps, VfioError, VfioHost, PCI_CONFIG_REGION_INDEX};
use super::{PCI_MSIX_IRQ_INDEX, REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE};

/// The host's VFIO, with devices named under `sys` (normally /sys; the claim's
/// [`hpmmap_vf::HostPaths`] root). /dev/vfio is always the host's: vfio-ioctls opens it
/// by absolute path.
pub struct KernelVfio {
    sys: PathBuf,
}

impl KernelVfio {
    pub fn new(sys: impl Into<PathBuf>) -> Self {
        KernelVfio { sys: sys.into() }
    }

    /// The running host's /sys.
    pub fn host() -> Self {
        Self::new("/sys")
    }
}

/// The group number the device's `iommu_group` link names (what vfio-ioctls reads).
fn group_of(sysfspath: &Path) -> io::Result<String> {
    let link = std::fs::read_link(sysfspath.join("iommu_group"))?;
    link.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

fn errno(e: &vmm_sys_util::errno::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

/// vfio-ioctls' errors as this crate's, with the messages and hints the VMM prints.
pub(super) fn map_open_error(e: CrateError, group: u32, name: &str) -> VfioError {
    let ioctl = |op: String, source: io::Error| VfioError::Ioctl { op, source };
    match e {
        CrateError::OpenContainer(source) => VfioError::Open {
            what: "/dev/vfio/vfio".into(),
            source,
        },
        CrateError::OpenGroup(source, id) => VfioError::Open {
            what: format!("/dev/vfio/{id}"),
            source,
        },
        CrateError::VfioApiVersion => VfioError::ApiVersion,
        CrateError::VfioExtension | CrateError::VfioType1V2 => VfioError::NoType1v2,
        CrateError::GroupViable => VfioError::GroupNotViable(group),
        CrateError::ContainerSetIOMMU(s) => ioctl("VFIO_SET_IOMMU type1v2".into(), errno(&s)),
        CrateError::GroupGetDeviceFD(s) => ioctl(
            format!("VFIO_GROUP_GET_DEVICE_FD {name} in group {group}"),
            errno(&s),
        ),
        CrateError::VfioDeviceGetInfo(s) => {
            ioctl(format!("VFIO_DEVICE_GET_INFO {name}"), errno(&s))
        }
        CrateError::VfioDeviceGetInfoPCI | CrateError::VfioDeviceGetInfoOther => {
            VfioError::NotPci(name.into())
        }
        CrateError::VfioDeviceGetRegionInfo(s) => {
            ioctl(format!("VFIO_DEVICE_GET_REGION_INFO {name}"), errno(&s))
        }
        // No errno kept by vfio-ioctls: its own message stands in.
        e @ (CrateError::GetGroupStatus | CrateError::GroupSetContainer) => ioctl(
            format!("attaching IOMMU group {group} to the VFIO container"),
            io::Error::other(e),
        ),
        e => ioctl(format!("opening VFIO device {name}"), io::Error::other(e)),
    }
}

impl VfioHost for KernelVfio {
    fn open_device(&self, group: u32, name: &str) -> Result<Arc<dyn VfioDeviceOps>, VfioError> {
        let sysfspath = self.sys.join("bus/pci/devices").join(name);
        // vfio-ioctls finds the group through this link; check it is the claimed one
        // before anything is opened, and give a missing device the usual hint.
        let found = group_of(&sysfspath).map_err(|source| VfioError::Open {
            what: sysfspath.join("iommu_group").display().to_string(),
            source,
        })?;
        if found != group.to_string() {
            return Err(VfioError::GroupMismatch {
                device: name.into(),
                expected: group,
                found,
            });
        }
        let container =
            Arc::new(VfioContainer::new(None).map_err(|e| map_open_error(e, group, name))?);
        let dev = VfioDevice::new(&sysfspath, container.clone() as Arc<dyn VfioOps>, false)
            .map_err(|e| map_open_error(e, group, name))?;
        let regions = (0..=PCI_CONFIG_REGION_INDEX)
            .map(|i| {
                let flags = dev.get_region_flags(i);
                // Absent regions come back as all zero; a present one is at least readable.
                (flags & (REGION_FLAG_READ | REGION_FLAG_WRITE | REGION_FLAG_MMAP) != 0).then(
                    || RegionInfo {
                        index: i,
                        flags,
                        size: dev.get_region_size(i),
                        offset: dev.get_region_offset(i),
                    },
                )
            })
            .collect();
        let msix_vectors = dev.get_irq_info(PCI_MSIX_IRQ_INDEX).map_or(0, |i| i.count);
        Ok(Arc::new(KernelDevice {
            dev: Some(dev),
            container,
            group,
            sysfspath,
            regions,
            msix_vectors,
        }))
    }
}

/// An open vfio-ioctls device and the container it alone uses.
struct KernelDevice {
    dev: Option<VfioDevice>,
    container: Arc<VfioContainer>,
    group: u32,
    sysfspath: PathBuf,
    regions: Vec<Option<RegionInfo>>,
    msix_vectors: u32,
}

impl KernelDevice {
    fn dev(&self) -> &VfioDevice {
        self.dev.as_ref().expect("open until dropped")
    }

    fn fd(&self) -> i32 {
        self.dev().as_raw_fd()
    }

    /// The device fd as a File, for std's positioned reads and writes (vfio-ioctls'
    /// region_read/region_write drop errors); never dropped, so the fd stays the crate's.
    fn file(&self) -> ManuallyDrop<File> {
        // SAFETY: the fd is open for as long as `self.dev` is, and ManuallyDrop never
        // closes it; the File only lives for one call on `self`.
        ManuallyDrop::new(unsafe { File::from_raw_fd(self.fd()) })
    }
}

fn crate_io(e: CrateError) -> io::Error {
    match e {
        CrateError::IommuDmaMap(s) | CrateError::IommuDmaUnmap(s) => errno(&s),
        e => io::Error::other(e),
    }
}

impl VfioDeviceOps for KernelDevice {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        self.regions.get(index as usize).copied().flatten()
    }

    fn msix_vectors(&self) -> u32 {
        self.msix_vectors
    }

    fn dma_map(&self, iova: u64, hva: u64, size: u64) -> io::Result<()> {
        let size = usize::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `hva..hva+size` is guest RAM (GuestRamRegion's contract), memory the
        // guest's vCPUs already write concurrently with this process: the VMM only touches
        // it through raw pointers and system calls, never holds references into it, and
        // keeps it mapped until VfioDevice's drop has unmapped every chunk.
        unsafe { self.container.vfio_dma_map(iova, size, hva as *mut u8) }.map_err(crate_io)
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> io::Result<()> {
        let size = usize::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.container.vfio_dma_unmap(iova, size).map_err(crate_io)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file().read_exact_at(buf, offset)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file().write_all_at(buf, offset)
    }

    fn mmap(&self, offset: u64, len: u64) -> io::Result<*mut u8> {
        // SAFETY: a fresh shared mapping of the device fd; nothing aliases it yet.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(p.cast())
    }

    fn munmap(&self, ptr: *mut u8, len: u64) {
        // SAFETY: ptr/len come from a successful mmap above, unmapped once by its owner.
        unsafe { libc::munmap(ptr.cast(), len as usize) };
    }

    fn enable_msix(&self, fds: &[&EventFd]) -> io::Result<()> {
        self.dev().enable_msix(fds.to_vec()).map_err(crate_io)
    }

    fn disable_msix(&self) -> io::Result<()> {
        self.dev().disable_msix().map_err(crate_io)
    }

    fn reset(&self) {
        // vfio-ioctls checks the device's RESET flag and drops the ioctl's result.
        self.dev().reset()
    }
}

impl Drop for KernelDevice {
    /// vfio-ioctls' `VfioDevice::drop` closes the device fd, then reads the sysfs
    /// `iommu_group` link again to find the group to detach, and unwraps: it panics
    /// where the link cannot be read then (the jailed VMM has no /sys; a VF removed
    /// under us). So the link is read here first. Where it names our group, the normal
    /// drop runs (inside catch_unwind for a removal racing with the close). Where it does
    /// not, the VfioDevice is forgotten: its device fd, and through the container the
    /// group fd, stay open until this process exits, which is what follows a device's
    /// teardown (the DMA mappings are already gone, unmapped by `VfioDevice`), and the
    /// kernel detaches the group then; a jailed VMM's keeper gives the VF back only after
    /// that exit.
    fn drop(&mut self) {
        let Some(dev) = self.dev.take() else {
            return;
        };
        if group_of(&self.sysfspath).is_ok_and(|g| g == self.group.to_string()) {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(dev)));
            if r.is_err() {
                eprintln!(
                    "hpmmap-pci: {}: the VF's iommu_group vanished while VFIO closed",
                    self.sysfspath.display()
                );
            }
            return;
        }
        std::mem::forget(dev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::errno::Error as SysError;

    #[test]
    fn crate_errors_keep_the_messages_and_hints() {
        let e = map_open_error(
            CrateError::OpenGroup(io::Error::from_raw_os_error(libc::EBUSY), "31".into()),
            31,
            "0000:3b:00.3",
        );
        assert_eq!(
            e.to_string(),
            "opening /dev/vfio/31: Device or resource busy (os error 16) (another process holds this group)"
        );
        let e = map_open_error(
            CrateError::OpenContainer(io::Error::from_raw_os_error(libc::ENOENT)),
            31,
            "x",
        );
        assert!(e.to_string().contains("is vfio-pci loaded"), "{e}");
        assert!(matches!(
            map_open_error(CrateError::GroupViable, 31, "x"),
            VfioError::GroupNotViable(31)
        ));
        assert!(matches!(
            map_open_error(CrateError::VfioExtension, 31, "x"),
            VfioError::NoType1v2
        ));
        let e = map_open_error(
            CrateError::GroupGetDeviceFD(SysError::new(libc::ENODEV)),
            31,
            "0000:3b:00.7",
        );
        assert!(
            e.to_string()
                .starts_with("VFIO_GROUP_GET_DEVICE_FD 0000:3b:00.7 in group 31: No such device"),
            "{e}"
        );
        assert!(matches!(
            map_open_error(CrateError::VfioDeviceGetInfoPCI, 31, "x"),
            VfioError::NotPci(_)
        ));
        assert_eq!(
            crate_io(CrateError::IommuDmaMap(SysError::new(libc::ENOMEM))).raw_os_error(),
            Some(libc::ENOMEM),
            "the DMA map errno survives, for the RLIMIT_MEMLOCK hint"
        );
    }

    #[test]
    fn a_device_without_sysfs_entry_is_refused_before_dev_vfio() {
        let k = KernelVfio::new("/nonexistent-hpmmap-sys");
        let e = k.open_device(31, "0000:3b:00.3").err().unwrap();
        assert!(
            e.to_string().starts_with(
                "opening /nonexistent-hpmmap-sys/bus/pci/devices/0000:3b:00.3/iommu_group: No such file"
            ) && e.to_string().contains("is vfio-pci loaded"),
            "{e}"
        );
    }

    #[test]
    fn a_device_in_another_group_is_refused() {
        let root = std::env::temp_dir().join(format!("hpmmap-kernel-vfio-{}", std::process::id()));
        let dev = root.join("bus/pci/devices/0000:3b:00.3");
        std::fs::create_dir_all(&dev).unwrap();
        let _ = std::fs::remove_file(dev.join("iommu_group"));
        std::os::unix::fs::symlink("../../../../kernel/iommu_groups/7", dev.join("iommu_group"))
            .unwrap();
        let e = KernelVfio::new(&root)
            .open_device(31, "0000:3b:00.3")
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "0000:3b:00.3 is in IOMMU group 7, not group 31 as claimed"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
