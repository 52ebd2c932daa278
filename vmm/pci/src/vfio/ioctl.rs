//! The VFIO uapi calls hpmmap needs, behind a trait so that the logic above them
//! (ordering, chunking, rollback) is tested without a VFIO device ([`super::mock`]).
//! [`KernelVfio`] is the real implementation: raw ioctls on /dev/vfio fds, with the
//! uapi struct layouts from the vfio-bindings crate.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;
use std::path::PathBuf;

use vfio_bindings::bindings::vfio as uapi;

/// An open container, group or device: an fd on a host, a token in the mock.
pub type Handle = i32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

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
        self.flags & uapi::VFIO_REGION_INFO_FLAG_MMAP != 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IrqInfo {
    pub index: u32,
    pub flags: u32,
    pub count: u32,
}

pub const API_VERSION: i32 = uapi::VFIO_API_VERSION as i32;
pub const TYPE1V2_IOMMU: u32 = uapi::VFIO_TYPE1v2_IOMMU;
pub const GROUP_FLAGS_VIABLE: u32 = uapi::VFIO_GROUP_FLAGS_VIABLE;
pub const DEVICE_FLAGS_PCI: u32 = uapi::VFIO_DEVICE_FLAGS_PCI;
pub const DEVICE_FLAGS_RESET: u32 = uapi::VFIO_DEVICE_FLAGS_RESET;
pub const PCI_CONFIG_REGION_INDEX: u32 = uapi::VFIO_PCI_CONFIG_REGION_INDEX;
pub const PCI_MSIX_IRQ_INDEX: u32 = uapi::VFIO_PCI_MSIX_IRQ_INDEX;

/// The calls, one per uapi operation. Errors are the kernel's errno.
pub trait VfioIoctls: Send + Sync {
    fn open_container(&self) -> io::Result<Handle>;
    fn open_group(&self, group: u32) -> io::Result<Handle>;
    fn close(&self, h: Handle);
    fn api_version(&self, container: Handle) -> io::Result<i32>;
    fn check_extension(&self, container: Handle, ext: u32) -> io::Result<bool>;
    fn set_iommu(&self, container: Handle, iommu: u32) -> io::Result<()>;
    fn dma_map(&self, container: Handle, iova: u64, vaddr: u64, size: u64) -> io::Result<()>;
    fn dma_unmap(&self, container: Handle, iova: u64, size: u64) -> io::Result<u64>;
    fn group_status(&self, group: Handle) -> io::Result<u32>;
    fn group_set_container(&self, group: Handle, container: Handle) -> io::Result<()>;
    fn group_unset_container(&self, group: Handle) -> io::Result<()>;
    fn group_device(&self, group: Handle, name: &str) -> io::Result<Handle>;
    fn device_info(&self, dev: Handle) -> io::Result<DeviceInfo>;
    fn region_info(&self, dev: Handle, index: u32) -> io::Result<RegionInfo>;
    fn irq_info(&self, dev: Handle, index: u32) -> io::Result<IrqInfo>;
    /// ACTION_TRIGGER with one eventfd per vector from `start`; -1 detaches a vector.
    fn set_irq_eventfds(
        &self,
        dev: Handle,
        index: u32,
        start: u32,
        fds: &[RawFd],
    ) -> io::Result<()>;
    /// ACTION_TRIGGER, DATA_NONE, count 0: turns the interrupt mode off.
    fn disable_irqs(&self, dev: Handle, index: u32) -> io::Result<()>;
    fn reset(&self, dev: Handle) -> io::Result<()>;
    fn read_at(&self, dev: Handle, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, dev: Handle, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// mmap(2) of `len` bytes of the device fd at `offset` (a BAR), shared, read-write.
    fn mmap(&self, dev: Handle, offset: u64, len: u64) -> io::Result<*mut u8>;
    /// Undoes [`VfioIoctls::mmap`].
    fn munmap(&self, ptr: *mut u8, len: u64);
}

const fn vfio_io(n: u32) -> libc::c_ulong {
    // _IO(VFIO_TYPE, VFIO_BASE + n): no size or direction bits.
    ((uapi::VFIO_TYPE as libc::c_ulong) << 8) | (uapi::VFIO_BASE + n) as libc::c_ulong
}

const GET_API_VERSION: libc::c_ulong = vfio_io(0);
const CHECK_EXTENSION: libc::c_ulong = vfio_io(1);
const SET_IOMMU: libc::c_ulong = vfio_io(2);
const GROUP_GET_STATUS: libc::c_ulong = vfio_io(3);
const GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(4);
const GROUP_UNSET_CONTAINER: libc::c_ulong = vfio_io(5);
const GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(6);
const DEVICE_GET_INFO: libc::c_ulong = vfio_io(7);
const DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);
const DEVICE_GET_IRQ_INFO: libc::c_ulong = vfio_io(9);
const DEVICE_SET_IRQS: libc::c_ulong = vfio_io(10);
const DEVICE_RESET: libc::c_ulong = vfio_io(11);
const IOMMU_MAP_DMA: libc::c_ulong = vfio_io(13);
const IOMMU_UNMAP_DMA: libc::c_ulong = vfio_io(14);

/// The host's VFIO, with /dev/vfio under `dev_root` (normally /dev).
pub struct KernelVfio {
    dev_root: PathBuf,
}

impl KernelVfio {
    pub fn new(dev_root: impl Into<PathBuf>) -> Self {
        KernelVfio {
            dev_root: dev_root.into(),
        }
    }

    fn open(&self, rel: &str) -> io::Result<Handle> {
        let p = CString::new(
            self.dev_root
                .join(rel)
                .into_os_string()
                .into_encoded_bytes(),
        )
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: p is a valid NUL-terminated path.
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// ioctl with a pointer to a uapi struct whose first field is argsz.
fn ioctl_ptr<T>(fd: Handle, req: libc::c_ulong, arg: &mut T) -> io::Result<libc::c_int> {
    // SAFETY: `arg` is a live, correctly laid out uapi struct (vfio-bindings) with argsz
    // set by the caller; the kernel reads/writes at most argsz bytes of it.
    check(unsafe { libc::ioctl(fd, req as _, arg as *mut T) })
}

fn ioctl_val(fd: Handle, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: these requests take an integer argument (or none) and touch no memory.
    check(unsafe { libc::ioctl(fd, req as _, arg) })
}

impl VfioIoctls for KernelVfio {
    fn open_container(&self) -> io::Result<Handle> {
        self.open("vfio/vfio")
    }

    fn open_group(&self, group: u32) -> io::Result<Handle> {
        self.open(&format!("vfio/{group}"))
    }

    fn close(&self, h: Handle) {
        // SAFETY: h is an fd this object opened and its owner closes exactly once.
        unsafe { libc::close(h) };
    }

    fn api_version(&self, c: Handle) -> io::Result<i32> {
        ioctl_val(c, GET_API_VERSION, 0)
    }

    fn check_extension(&self, c: Handle, ext: u32) -> io::Result<bool> {
        Ok(ioctl_val(c, CHECK_EXTENSION, ext.into())? > 0)
    }

    fn set_iommu(&self, c: Handle, iommu: u32) -> io::Result<()> {
        ioctl_val(c, SET_IOMMU, iommu.into()).map(|_| ())
    }

    fn dma_map(&self, c: Handle, iova: u64, vaddr: u64, size: u64) -> io::Result<()> {
        let mut m = uapi::vfio_iommu_type1_dma_map {
            argsz: size_of::<uapi::vfio_iommu_type1_dma_map>() as u32,
            flags: uapi::VFIO_DMA_MAP_FLAG_READ | uapi::VFIO_DMA_MAP_FLAG_WRITE,
            vaddr,
            iova,
            size,
        };
        ioctl_ptr(c, IOMMU_MAP_DMA, &mut m).map(|_| ())
    }

    fn dma_unmap(&self, c: Handle, iova: u64, size: u64) -> io::Result<u64> {
        let mut m = uapi::vfio_iommu_type1_dma_unmap {
            argsz: size_of::<uapi::vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size,
            data: Default::default(),
        };
        ioctl_ptr(c, IOMMU_UNMAP_DMA, &mut m)?;
        Ok(m.size)
    }

    fn group_status(&self, g: Handle) -> io::Result<u32> {
        let mut s = uapi::vfio_group_status {
            argsz: size_of::<uapi::vfio_group_status>() as u32,
            flags: 0,
        };
        ioctl_ptr(g, GROUP_GET_STATUS, &mut s)?;
        Ok(s.flags)
    }

    fn group_set_container(&self, g: Handle, c: Handle) -> io::Result<()> {
        let mut fd: libc::c_int = c;
        ioctl_ptr(g, GROUP_SET_CONTAINER, &mut fd).map(|_| ())
    }

    fn group_unset_container(&self, g: Handle) -> io::Result<()> {
        ioctl_val(g, GROUP_UNSET_CONTAINER, 0).map(|_| ())
    }

    fn group_device(&self, g: Handle, name: &str) -> io::Result<Handle> {
        let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the request takes a NUL-terminated device name and returns a new fd.
        check(unsafe { libc::ioctl(g, GROUP_GET_DEVICE_FD as _, n.as_ptr()) })
    }

    fn device_info(&self, d: Handle) -> io::Result<DeviceInfo> {
        let mut i = uapi::vfio_device_info {
            argsz: size_of::<uapi::vfio_device_info>() as u32,
            ..Default::default()
        };
        ioctl_ptr(d, DEVICE_GET_INFO, &mut i)?;
        Ok(DeviceInfo {
            flags: i.flags,
            num_regions: i.num_regions,
            num_irqs: i.num_irqs,
        })
    }

    fn region_info(&self, d: Handle, index: u32) -> io::Result<RegionInfo> {
        let mut r = uapi::vfio_region_info {
            argsz: size_of::<uapi::vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        ioctl_ptr(d, DEVICE_GET_REGION_INFO, &mut r)?;
        Ok(RegionInfo {
            index,
            flags: r.flags,
            size: r.size,
            offset: r.offset,
        })
    }

    fn irq_info(&self, d: Handle, index: u32) -> io::Result<IrqInfo> {
        let mut r = uapi::vfio_irq_info {
            argsz: size_of::<uapi::vfio_irq_info>() as u32,
            index,
            ..Default::default()
        };
        ioctl_ptr(d, DEVICE_GET_IRQ_INFO, &mut r)?;
        Ok(IrqInfo {
            index,
            flags: r.flags,
            count: r.count,
        })
    }

    fn set_irq_eventfds(&self, d: Handle, index: u32, start: u32, fds: &[RawFd]) -> io::Result<()> {
        // vfio_irq_set is a header of five u32 followed by the fds: build it as u32s so
        // the buffer is aligned for the header.
        let mut buf: Vec<u32> = vec![
            (size_of::<uapi::vfio_irq_set>() + size_of_val(fds)) as u32,
            uapi::VFIO_IRQ_SET_DATA_EVENTFD | uapi::VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start,
            fds.len() as u32,
        ];
        buf.extend(fds.iter().map(|&f| f as u32));
        // SAFETY: buf holds a complete vfio_irq_set with `count` trailing fds; argsz says so.
        check(unsafe { libc::ioctl(d, DEVICE_SET_IRQS as _, buf.as_mut_ptr()) }).map(|_| ())
    }

    fn disable_irqs(&self, d: Handle, index: u32) -> io::Result<()> {
        let mut s = uapi::vfio_irq_set {
            argsz: size_of::<uapi::vfio_irq_set>() as u32,
            flags: uapi::VFIO_IRQ_SET_DATA_NONE | uapi::VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: 0,
            data: Default::default(),
        };
        ioctl_ptr(d, DEVICE_SET_IRQS, &mut s).map(|_| ())
    }

    fn reset(&self, d: Handle) -> io::Result<()> {
        ioctl_val(d, DEVICE_RESET, 0).map(|_| ())
    }

    fn read_at(&self, d: Handle, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // SAFETY: buf is valid for buf.len() bytes of writes.
        let n =
            unsafe { libc::pread(d, buf.as_mut_ptr().cast(), buf.len(), offset as libc::off_t) };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != buf.len() => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            _ => Ok(()),
        }
    }

    fn write_at(&self, d: Handle, offset: u64, buf: &[u8]) -> io::Result<()> {
        // SAFETY: buf is valid for buf.len() bytes of reads.
        let n = unsafe { libc::pwrite(d, buf.as_ptr().cast(), buf.len(), offset as libc::off_t) };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != buf.len() => Err(io::Error::from(io::ErrorKind::WriteZero)),
            _ => Ok(()),
        }
    }

    fn mmap(&self, d: Handle, offset: u64, len: u64) -> io::Result<*mut u8> {
        // SAFETY: a fresh shared mapping of the device fd; nothing aliases it yet.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                d,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi_header() {
        // linux/vfio.h: VFIO_TYPE ';' (0x3b), VFIO_BASE 100.
        assert_eq!(GET_API_VERSION, 0x3b64);
        assert_eq!(SET_IOMMU, 0x3b66);
        assert_eq!(GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(IOMMU_UNMAP_DMA, 0x3b72);
    }

    #[test]
    fn absent_dev_vfio_is_enoent() {
        let k = KernelVfio::new("/nonexistent-hpmmap-dev");
        assert_eq!(
            k.open_container().unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
