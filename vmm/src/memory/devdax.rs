//! Guest RAM from a device-dax character device (`--mem-backend devdax:/dev/daxX.Y`): memory
//! the host kernel never manages (set aside at boot with `memmap=`, a pmem namespace, or
//! blocks `hpmmap-offline reserve --devdax` took offline). The device's `align` is its page
//! size: with 1 GiB alignment every mapping fault installs a 1 GiB PUD, as hugetlb does.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

use super::hugepages::PageSize;
use crate::units::format_size;

/// The driver a device-dax device must be bound to for its character device to work.
const DEVICE_DAX_DRIVER: &str = "device_dax";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DevDaxError {
    #[error("--mem-backend devdax:{0}: {1}")]
    NotDax(String, String),
    #[error("--mem-backend devdax:{path}: {name} is bound to {driver}, not device_dax ({hint})")]
    WrongDriver {
        path: String,
        name: String,
        driver: String,
        hint: &'static str,
    },
    #[error("--mem {mem}: more than {name}'s {size} (--mem-backend devdax:{path}); ask for at most {size}")]
    TooSmall {
        mem: String,
        path: String,
        name: String,
        size: String,
    },
    #[error("--hugepages {page}: {name} maps in {align} pages ({sysfs}/align); prepare it with 1 GiB alignment (hpmmap-offline reserve --devdax, or ndctl create-namespace -m devdax --align 1G) or pass --hugepages {fits}")]
    AlignTooSmall {
        page: &'static str,
        name: String,
        align: String,
        sysfs: String,
        fits: &'static str,
    },
    #[error("--mem {mem}: not a multiple of {name}'s {align} alignment")]
    NotAlignMultiple {
        mem: String,
        name: String,
        align: String,
    },
    #[error("--mem-backend devdax:{path}: {name} is in use by {holder}: one VMM per device (its guest RAM would be cleared under it)")]
    Busy {
        path: String,
        name: String,
        holder: String,
    },
    #[error("--numa-node {node}: {name}'s memory is on node {target}; device memory cannot be moved (drop --numa-node or use a device on node {node})")]
    OtherNode {
        node: u32,
        name: String,
        target: u32,
    },
}

/// What sysfs says of one device-dax device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaxDevice {
    /// The character device given on the command line.
    pub path: PathBuf,
    /// `daxX.Y`.
    pub name: String,
    pub size: u64,
    pub align: u64,
    /// The NUMA node the memory sits on, when the platform says.
    pub target_node: Option<u32>,
}

impl DaxDevice {
    /// Reads the device behind `path` (normally `/dev/daxX.Y`) under `sysfs` (normally `/sys`);
    /// `path` must be a character device unless `sysfs` is a recorded tree (tests).
    pub fn inspect(sysfs: &Path, path: &Path) -> Result<DaxDevice, DevDaxError> {
        let shown = path.display().to_string();
        let not_dax = |why: String| DevDaxError::NotDax(shown.clone(), why);
        let real = std::fs::canonicalize(path).map_err(|e| not_dax(e.to_string()))?;
        if sysfs == Path::new("/sys") {
            let meta = std::fs::metadata(&real).map_err(|e| not_dax(e.to_string()))?;
            if !meta.file_type().is_char_device() {
                return Err(not_dax("not a character device".into()));
            }
        }
        let name = real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = sysfs.join("bus/dax/devices").join(&name);
        if !name.starts_with("dax") || !dir.exists() {
            return Err(not_dax(format!(
                "not a device-dax device (no {})",
                dir.display()
            )));
        }
        let read = |f: &str| -> Option<String> {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let size: u64 = read("size")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| not_dax(format!("cannot read {}/size", dir.display())))?;
        // Kernels before 5.10 have no per-device align; the region's is the device's then.
        let align: u64 = read("align")
            .or_else(|| read("../dax_region/align"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| not_dax(format!("cannot read {}/align", dir.display())))?;
        if size == 0 {
            return Err(not_dax(format!(
                "{name} has size 0 (unconfigured; hpmmap-offline reserve --devdax sizes it)"
            )));
        }
        let driver = std::fs::read_link(dir.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        match driver.as_deref() {
            Some(DEVICE_DAX_DRIVER) => {}
            other => {
                return Err(DevDaxError::WrongDriver {
                    path: shown,
                    name,
                    driver: other.unwrap_or("no driver").to_string(),
                    hint: if other == Some("kmem") {
                        "its memory is system RAM now; hpmmap-offline reserve --devdax converts it back"
                    } else {
                        "bind it with hpmmap-offline reserve --devdax"
                    },
                })
            }
        }
        let target_node = read("target_node")
            .or_else(|| read("numa_node"))
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|n| u32::try_from(n).ok());
        Ok(DaxDevice {
            path: path.to_path_buf(),
            name,
            size,
            align,
            target_node,
        })
    }

    /// Opens the device read-write under an exclusive flock, held as long as the file is
    /// open (the VMM's lifetime, whatever ends it): a second VMM naming the same device is
    /// refused before it maps, and so before it clears, the first one's guest RAM.
    pub fn open_exclusive(&self) -> Result<std::fs::File, DevDaxError> {
        use std::os::unix::io::AsRawFd;
        let shown = self.path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|e| DevDaxError::NotDax(shown.clone(), format!("open: {e}")))?;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(file);
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {
                    let holder = lock_holders(&file)
                        .map(|pids| {
                            let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
                            format!("pid {}", list.join(", "))
                        })
                        .unwrap_or_else(|| "another process".into());
                    return Err(DevDaxError::Busy {
                        path: shown,
                        name: self.name.clone(),
                        holder,
                    });
                }
                _ => return Err(DevDaxError::NotDax(shown, format!("flock: {e}"))),
            }
        }
    }

    /// The page size the device's mappings fault in.
    pub fn page_size(&self) -> PageSize {
        match self.align {
            a if a >= PageSize::Huge1G.bytes() => PageSize::Huge1G,
            a if a >= PageSize::Huge2M.bytes() => PageSize::Huge2M,
            _ => PageSize::Small,
        }
    }

    /// Checks that `bytes` of guest RAM at `page` host pages on `node` fit this device.
    pub fn check(&self, bytes: u64, page: PageSize, node: Option<u32>) -> Result<(), DevDaxError> {
        if page.bytes() > self.align {
            return Err(DevDaxError::AlignTooSmall {
                page: page.name(),
                name: self.name.clone(),
                align: format_size(self.align),
                sysfs: format!("/sys/bus/dax/devices/{}", self.name),
                fits: self.page_size().name(),
            });
        }
        if !bytes.is_multiple_of(self.align) {
            return Err(DevDaxError::NotAlignMultiple {
                mem: format_size(bytes),
                name: self.name.clone(),
                align: format_size(self.align),
            });
        }
        if bytes > self.size {
            return Err(DevDaxError::TooSmall {
                mem: format_size(bytes),
                path: self.path.display().to_string(),
                name: self.name.clone(),
                size: format_size(self.size),
            });
        }
        if let (Some(node), Some(target)) = (node, self.target_node) {
            if node != target {
                return Err(DevDaxError::OtherNode {
                    node,
                    name: self.name.clone(),
                    target,
                });
            }
        }
        Ok(())
    }
}

/// The processes holding a flock on `file`'s inode, from /proc/locks
/// (`1: FLOCK  ADVISORY  WRITE 4242 00:05:123 0 EOF`; device as `%02x:%02x`, inode decimal).
fn lock_holders(file: &std::fs::File) -> Option<Vec<u32>> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata().ok()?;
    let dev = m.dev();
    // glibc's major/minor encoding of st_dev.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let key = format!("{major:02x}:{minor:02x}:{}", m.ino());
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let pids: Vec<u32> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "N:" "FLOCK" "ADVISORY" "WRITE" PID DEV:INO ... ("->" lines are waiters)
            (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&key.as_str()))
                .then(|| f.get(4)?.parse().ok())
                .flatten()
        })
        .collect();
    (!pids.is_empty()).then_some(pids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{GIB, MIB};

    /// sysfs as the nested lab recorded it (Debian 6.1, a `memmap=3G!4G` namespace turned
    /// into device-dax with 1 GiB alignment): host-offline's fixtures.
    fn recorded(tree: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../host-offline/tests/fixtures")
            .join(tree)
            .join("sys")
    }

    fn dev_node(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, b"").unwrap();
        p
    }

    #[test]
    fn recorded_devdax_device_is_read_as_the_kernel_left_it() {
        let tmp = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hpmmap-dax-").unwrap();
        let dev = dev_node(tmp.as_path(), "dax0.0");
        let d = DaxDevice::inspect(&recorded("lab-pmem-devdax"), &dev).unwrap();
        assert_eq!(d.name, "dax0.0");
        assert_eq!((d.size, d.align, d.target_node), (2 * GIB, GIB, Some(0)));
        assert_eq!(d.page_size(), PageSize::Huge1G);
        d.check(2 * GIB, PageSize::Huge1G, Some(0)).unwrap();
        d.check(GIB, PageSize::Huge2M, None).unwrap();
    }

    #[test]
    fn a_device_in_system_ram_mode_is_refused_with_the_way_back() {
        let tmp = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hpmmap-dax-").unwrap();
        let dev = dev_node(tmp.as_path(), "dax0.0");
        let e = DaxDevice::inspect(&recorded("lab-pmem-kmem"), &dev).unwrap_err();
        assert!(matches!(&e, DevDaxError::WrongDriver { driver, .. } if driver == "kmem"));
        assert!(
            e.to_string().contains("hpmmap-offline reserve --devdax"),
            "{e}"
        );
    }

    #[test]
    fn requests_the_device_cannot_serve_name_the_limit() {
        let d = DaxDevice {
            path: "/dev/dax0.0".into(),
            name: "dax0.0".into(),
            size: 2 * GIB,
            align: 2 * MIB,
            target_node: Some(1),
        };
        let e = d.check(2 * GIB, PageSize::Huge1G, None).unwrap_err();
        assert!(e.to_string().contains("--hugepages 2M"), "{e}");
        let e = d.check(3 * GIB, PageSize::Huge2M, None).unwrap_err();
        assert!(e.to_string().contains("at most 2G"), "{e}");
        let e = d.check(GIB + 4096, PageSize::Small, None).unwrap_err();
        assert!(matches!(e, DevDaxError::NotAlignMultiple { .. }), "{e}");
        let e = d.check(GIB, PageSize::Huge2M, Some(0)).unwrap_err();
        assert!(matches!(e, DevDaxError::OtherNode { target: 1, .. }), "{e}");
        d.check(GIB, PageSize::Huge2M, Some(1)).unwrap();
    }

    #[test]
    fn a_second_open_of_a_device_in_use_is_refused_naming_the_holder() {
        let tmp = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hpmmap-dax-").unwrap();
        let dev = dev_node(tmp.as_path(), "dax0.0");
        let d = DaxDevice::inspect(&recorded("lab-pmem-devdax"), &dev).unwrap();
        let first = d.open_exclusive().unwrap();
        let e = d.open_exclusive().unwrap_err();
        assert!(matches!(e, DevDaxError::Busy { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains(&format!("dax0.0 is in use by pid {}", std::process::id())),
            "{e}"
        );
        // The lock goes with the holder's descriptor (its process's exit).
        drop(first);
        d.open_exclusive().unwrap();
    }

    #[test]
    fn files_that_are_not_dax_devices_are_refused() {
        let e = DaxDevice::inspect(Path::new("/sys"), Path::new("/dev/null")).unwrap_err();
        assert!(e.to_string().contains("not a device-dax device"), "{e}");
        let e = DaxDevice::inspect(Path::new("/sys"), Path::new("/etc/hostname")).unwrap_err();
        assert!(e.to_string().contains("not a character device"), "{e}");
        let e = DaxDevice::inspect(Path::new("/sys"), Path::new("/dev/dax9.9")).unwrap_err();
        assert!(e.to_string().contains("No such file"), "{e}");
    }
}
