//! A MOCK of the kernel's VFIO ioctl layer, for tests: no IOMMU or VFIO device exists on
//! the build host. It enforces the ordering and argument rules of the kernel's
//! vfio / vfio_iommu_type1 code that the logic above depends on:
//!
//! - a group opens once (EBUSY after), unknown groups are ENOENT;
//! - a non-viable group cannot join a container (EPERM);
//! - VFIO_SET_IOMMU needs a group in the container (EINVAL) and happens once (EBUSY);
//! - DMA map needs the IOMMU set (EINVAL), 4 KiB-aligned non-zero iova/vaddr/size
//!   (EINVAL), no overlap (EEXIST); unmap removes whole mappings inside the range;
//! - a device fd needs its group in a container with an IOMMU (EINVAL), unknown names
//!   are ENODEV; a group with open devices cannot leave its container (EBUSY);
//! - the last group leaving a container drops its IOMMU and every mapping;
//! - MSI-X eventfds beyond the vector count are EINVAL.
//!
//! Failure injection: [`MockVfio::fail_map_at`] (ENOMEM at one IOVA, as when pinning
//! exceeds RLIMIT_MEMLOCK).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::RawFd;
use std::sync::Mutex;

use super::ioctl::*;

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

#[derive(Debug)]
enum Obj {
    Container {
        iommu: bool,
        groups: Vec<u32>,
        maps: BTreeMap<u64, (u64, u64)>,
    },
    Group {
        id: u32,
        container: Option<Handle>,
    },
    Device {
        group: u32,
        name: String,
    },
}

#[derive(Default, Debug)]
struct State {
    next: Handle,
    objs: HashMap<Handle, Obj>,
    log: Vec<String>,
    irq_sets: Vec<(String, u32, u32, Vec<RawFd>)>,
    config_writes: Vec<(u64, Vec<u8>)>,
    fail_map_at: Option<u64>,
    mmaps: usize,
}

pub struct MockVfio {
    groups: Vec<MockGroup>,
    type1v2: bool,
    st: Mutex<State>,
}

fn e(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
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
            st: Mutex::new(State {
                next: 100,
                ..Default::default()
            }),
        }
    }

    /// A container that offers only the legacy type1 IOMMU.
    pub fn without_type1v2(mut self) -> Self {
        self.type1v2 = false;
        self
    }

    pub fn fail_map_at(&self, iova: u64) {
        self.st.lock().unwrap().fail_map_at = Some(iova);
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles still open: every one must be closed after teardown.
    pub fn open_handles(&self) -> usize {
        self.st().objs.len()
    }

    /// Live DMA mappings as (iova, size, vaddr), across containers.
    pub fn mappings(&self) -> Vec<(u64, u64, u64)> {
        let st = self.st();
        let mut v: Vec<_> = st
            .objs
            .values()
            .filter_map(|o| match o {
                Obj::Container { maps, .. } => Some(
                    maps.iter()
                        .map(|(i, (s, va))| (*i, *s, *va))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        v.sort();
        v
    }

    /// The ioctls in call order.
    pub fn log(&self) -> Vec<String> {
        self.st().log.clone()
    }

    /// SET_IRQS calls as (device, index, start, fds); an empty fd list is DATA_NONE.
    pub fn irq_sets(&self) -> Vec<(String, u32, u32, Vec<RawFd>)> {
        self.st().irq_sets.clone()
    }

    pub fn config_writes(&self) -> Vec<(u64, Vec<u8>)> {
        self.st().config_writes.clone()
    }

    pub fn live_mmaps(&self) -> usize {
        self.st().mmaps
    }

    fn device(&self, name: &str) -> Option<&MockDevice> {
        self.groups
            .iter()
            .flat_map(|g| &g.devices)
            .find(|d| d.name == name)
    }

    fn dev_name(st: &State, h: Handle) -> io::Result<String> {
        match st.objs.get(&h) {
            Some(Obj::Device { name, .. }) => Ok(name.clone()),
            _ => Err(e(libc::EBADF)),
        }
    }

    fn insert(st: &mut State, o: Obj) -> Handle {
        st.next += 1;
        let h = st.next;
        st.objs.insert(h, o);
        h
    }
}

impl VfioIoctls for MockVfio {
    fn open_container(&self) -> io::Result<Handle> {
        let mut st = self.st();
        st.log.push("open /dev/vfio/vfio".into());
        Ok(Self::insert(
            &mut st,
            Obj::Container {
                iommu: false,
                groups: vec![],
                maps: BTreeMap::new(),
            },
        ))
    }

    fn open_group(&self, group: u32) -> io::Result<Handle> {
        let mut st = self.st();
        st.log.push(format!("open /dev/vfio/{group}"));
        if !self.groups.iter().any(|g| g.id == group) {
            return Err(e(libc::ENOENT));
        }
        if st
            .objs
            .values()
            .any(|o| matches!(o, Obj::Group { id, .. } if *id == group))
        {
            return Err(e(libc::EBUSY));
        }
        Ok(Self::insert(
            &mut st,
            Obj::Group {
                id: group,
                container: None,
            },
        ))
    }

    fn close(&self, h: Handle) {
        let mut st = self.st();
        st.log.push(format!("close {h}"));
        if let Some(Obj::Group {
            id,
            container: Some(c),
        }) = st.objs.remove(&h)
        {
            // Closing a group fd detaches it, as the kernel does.
            if let Some(Obj::Container {
                groups,
                iommu,
                maps,
            }) = st.objs.get_mut(&c)
            {
                groups.retain(|g| *g != id);
                if groups.is_empty() {
                    *iommu = false;
                    maps.clear();
                }
            }
        }
    }

    fn api_version(&self, _c: Handle) -> io::Result<i32> {
        Ok(API_VERSION)
    }

    fn check_extension(&self, _c: Handle, ext: u32) -> io::Result<bool> {
        Ok(ext == TYPE1V2_IOMMU && self.type1v2)
    }

    fn set_iommu(&self, c: Handle, iommu_type: u32) -> io::Result<()> {
        let mut st = self.st();
        st.log.push(format!("SET_IOMMU {iommu_type}"));
        match st.objs.get_mut(&c) {
            Some(Obj::Container { iommu, groups, .. }) => {
                if groups.is_empty() {
                    return Err(e(libc::EINVAL));
                }
                if *iommu {
                    return Err(e(libc::EBUSY));
                }
                *iommu = true;
                Ok(())
            }
            _ => Err(e(libc::EBADF)),
        }
    }

    fn dma_map(&self, c: Handle, iova: u64, vaddr: u64, size: u64) -> io::Result<()> {
        let mut st = self.st();
        st.log
            .push(format!("MAP_DMA iova={iova:#x} size={size:#x}"));
        let fail = st.fail_map_at == Some(iova);
        let Some(Obj::Container { iommu, maps, .. }) = st.objs.get_mut(&c) else {
            return Err(e(libc::EBADF));
        };
        if !*iommu
            || size == 0
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

    fn dma_unmap(&self, c: Handle, iova: u64, size: u64) -> io::Result<u64> {
        let mut st = self.st();
        st.log
            .push(format!("UNMAP_DMA iova={iova:#x} size={size:#x}"));
        let Some(Obj::Container { iommu, maps, .. }) = st.objs.get_mut(&c) else {
            return Err(e(libc::EBADF));
        };
        if !*iommu {
            return Err(e(libc::EINVAL));
        }
        let gone: Vec<u64> = maps
            .iter()
            .filter(|(i, (s, _))| **i >= iova && **i + *s <= iova + size)
            .map(|(i, _)| *i)
            .collect();
        let mut n = 0;
        for i in gone {
            n += maps.remove(&i).unwrap().0;
        }
        Ok(n)
    }

    fn group_status(&self, g: Handle) -> io::Result<u32> {
        let st = self.st();
        let Some(Obj::Group { id, container }) = st.objs.get(&g) else {
            return Err(e(libc::EBADF));
        };
        let viable = self
            .groups
            .iter()
            .find(|x| x.id == *id)
            .is_some_and(|x| x.viable);
        Ok(if viable { GROUP_FLAGS_VIABLE } else { 0 } | if container.is_some() { 2 } else { 0 })
    }

    fn group_set_container(&self, g: Handle, c: Handle) -> io::Result<()> {
        let mut st = self.st();
        st.log.push("GROUP_SET_CONTAINER".into());
        let id = match st.objs.get(&g) {
            Some(Obj::Group {
                id,
                container: None,
            }) => *id,
            Some(Obj::Group { .. }) => return Err(e(libc::EBUSY)),
            _ => return Err(e(libc::EBADF)),
        };
        if !self.groups.iter().any(|x| x.id == id && x.viable) {
            return Err(e(libc::EPERM));
        }
        match st.objs.get_mut(&c) {
            Some(Obj::Container { groups, .. }) => groups.push(id),
            _ => return Err(e(libc::EBADF)),
        }
        if let Some(Obj::Group { container, .. }) = st.objs.get_mut(&g) {
            *container = Some(c);
        }
        Ok(())
    }

    fn group_unset_container(&self, g: Handle) -> io::Result<()> {
        let mut st = self.st();
        st.log.push("GROUP_UNSET_CONTAINER".into());
        let (id, c) = match st.objs.get(&g) {
            Some(Obj::Group {
                id,
                container: Some(c),
            }) => (*id, *c),
            Some(Obj::Group { .. }) => return Err(e(libc::EINVAL)),
            _ => return Err(e(libc::EBADF)),
        };
        if st
            .objs
            .values()
            .any(|o| matches!(o, Obj::Device { group, .. } if *group == id))
        {
            return Err(e(libc::EBUSY));
        }
        if let Some(Obj::Container {
            groups,
            iommu,
            maps,
        }) = st.objs.get_mut(&c)
        {
            groups.retain(|x| *x != id);
            if groups.is_empty() {
                *iommu = false;
                maps.clear();
            }
        }
        if let Some(Obj::Group { container, .. }) = st.objs.get_mut(&g) {
            *container = None;
        }
        Ok(())
    }

    fn group_device(&self, g: Handle, name: &str) -> io::Result<Handle> {
        let mut st = self.st();
        st.log.push(format!("GROUP_GET_DEVICE_FD {name}"));
        let (id, c) = match st.objs.get(&g) {
            Some(Obj::Group {
                id,
                container: Some(c),
            }) => (*id, *c),
            Some(Obj::Group { .. }) => return Err(e(libc::EINVAL)),
            _ => return Err(e(libc::EBADF)),
        };
        if !matches!(st.objs.get(&c), Some(Obj::Container { iommu: true, .. })) {
            return Err(e(libc::EINVAL));
        }
        let g = self.groups.iter().find(|x| x.id == id).unwrap();
        if !g.devices.iter().any(|d| d.name == name) {
            return Err(e(libc::ENODEV));
        }
        Ok(Self::insert(
            &mut st,
            Obj::Device {
                group: id,
                name: name.into(),
            },
        ))
    }

    fn device_info(&self, d: Handle) -> io::Result<DeviceInfo> {
        Self::dev_name(&self.st(), d)?;
        Ok(DeviceInfo {
            flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
            num_regions: 9,
            num_irqs: 5,
        })
    }

    fn region_info(&self, d: Handle, index: u32) -> io::Result<RegionInfo> {
        let name = Self::dev_name(&self.st(), d)?;
        let dev = self.device(&name).unwrap();
        let (size, flags) = match index {
            0..=5 => (
                dev.bar_sizes[index as usize],
                if dev.bar_sizes[index as usize] > 0 {
                    7
                } else {
                    0
                },
            ),
            6 => (0, 0),
            7 => (dev.config.len() as u64, 3),
            8 => (0, 0),
            _ => return Err(e(libc::EINVAL)),
        };
        Ok(RegionInfo {
            index,
            flags,
            size,
            offset: region_offset(index),
        })
    }

    fn irq_info(&self, d: Handle, index: u32) -> io::Result<IrqInfo> {
        let name = Self::dev_name(&self.st(), d)?;
        let dev = self.device(&name).unwrap();
        match index {
            0..=4 => Ok(IrqInfo {
                index,
                flags: 1,
                count: if index == PCI_MSIX_IRQ_INDEX {
                    dev.msix_vectors
                } else {
                    0
                },
            }),
            _ => Err(e(libc::EINVAL)),
        }
    }

    fn set_irq_eventfds(&self, d: Handle, index: u32, start: u32, fds: &[RawFd]) -> io::Result<()> {
        let name = Self::dev_name(&self.st(), d)?;
        let count = if index == PCI_MSIX_IRQ_INDEX {
            self.device(&name).unwrap().msix_vectors
        } else {
            0
        };
        if start as usize + fds.len() > count as usize {
            return Err(e(libc::EINVAL));
        }
        self.st().irq_sets.push((name, index, start, fds.to_vec()));
        Ok(())
    }

    fn disable_irqs(&self, d: Handle, index: u32) -> io::Result<()> {
        let name = Self::dev_name(&self.st(), d)?;
        self.st().irq_sets.push((name, index, 0, vec![]));
        Ok(())
    }

    fn reset(&self, d: Handle) -> io::Result<()> {
        Self::dev_name(&self.st(), d).map(|_| ())
    }

    fn read_at(&self, d: Handle, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let name = Self::dev_name(&self.st(), d)?;
        let dev = self.device(&name).unwrap();
        let cfg = region_offset(PCI_CONFIG_REGION_INDEX);
        if offset >= cfg && offset - cfg + buf.len() as u64 <= dev.config.len() as u64 {
            let o = (offset - cfg) as usize;
            buf.copy_from_slice(&dev.config[o..o + buf.len()]);
            return Ok(());
        }
        Err(e(libc::EINVAL))
    }

    fn write_at(&self, d: Handle, offset: u64, buf: &[u8]) -> io::Result<()> {
        Self::dev_name(&self.st(), d)?;
        self.st().config_writes.push((offset, buf.to_vec()));
        Ok(())
    }

    fn mmap(&self, d: Handle, _offset: u64, len: u64) -> io::Result<*mut u8> {
        Self::dev_name(&self.st(), d)?;
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
}
