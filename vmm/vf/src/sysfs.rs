//! Access to sysfs (and the bits of procfs and /dev the checks need) under a configurable
//! root, so that the same code reads the host's /sys or a recorded tree.
//!
//! Reads are always plain file reads. Writes go through an [`AttrWriter`]: on a host the
//! write *is* the kernel's interface; on a recorded tree a simulation (`crate::sim`) writes
//! the file and models what the kernel would do in reaction.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::VfError;
use crate::pci::PciAddr;

/// Where sysfs, procfs, /dev and the kernel modules live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    pub sys: PathBuf,
    pub proc: PathBuf,
    pub dev: PathBuf,
    /// `/lib/modules`, to tell "vfio-pci not loaded" from "not built".
    pub modules: PathBuf,
    /// `/run/hpmmap`: claim records ([`crate::records`]), which outlive a crashed process.
    pub run: PathBuf,
    /// `/etc`: OpenSM's partitions.conf (`etc/opensm/partitions.conf`).
    pub etc: PathBuf,
}

impl HostPaths {
    pub fn host() -> Self {
        HostPaths {
            sys: "/sys".into(),
            proc: "/proc".into(),
            dev: "/dev".into(),
            modules: "/lib/modules".into(),
            run: "/run/hpmmap".into(),
            etc: "/etc".into(),
        }
    }

    /// `ROOT/sys`, `ROOT/proc`, `ROOT/dev`, `ROOT/lib/modules`, `ROOT/run/hpmmap`,
    /// `ROOT/etc`: a recorded tree.
    pub fn under(root: impl AsRef<Path>) -> Self {
        let r = root.as_ref();
        HostPaths {
            sys: r.join("sys"),
            proc: r.join("proc"),
            dev: r.join("dev"),
            modules: r.join("lib/modules"),
            run: r.join("run/hpmmap"),
            etc: r.join("etc"),
        }
    }
}

/// How a write to a sysfs attribute reaches the kernel.
pub trait AttrWriter: Send + Sync {
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()>;
}

/// The real thing: one write(2) to an existing attribute file.
pub struct KernelWriter;

impl AttrWriter for KernelWriter {
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        // No create, no truncate: sysfs attributes exist or the write is meaningless,
        // and the kernel parses exactly one write() per open.
        let mut f = fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(value.as_bytes())
    }
}

/// sysfs under a root, with the writer that applies to it. Cheap to clone.
#[derive(Clone)]
pub struct Sysfs {
    paths: HostPaths,
    writer: Arc<dyn AttrWriter>,
}

impl std::fmt::Debug for Sysfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sysfs").field("paths", &self.paths).finish()
    }
}

impl Sysfs {
    /// The running host's /sys, /proc and /dev with real writes.
    pub fn host() -> Self {
        Sysfs {
            paths: HostPaths::host(),
            writer: Arc::new(KernelWriter),
        }
    }

    pub fn new(paths: HostPaths, writer: Arc<dyn AttrWriter>) -> Self {
        Sysfs { paths, writer }
    }

    pub fn paths(&self) -> &HostPaths {
        &self.paths
    }

    pub fn sys(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.paths.sys.join(rel)
    }

    pub fn proc(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.paths.proc.join(rel)
    }

    pub fn dev(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.paths.dev.join(rel)
    }

    /// `/sys/bus/pci/devices/<addr>`.
    pub fn pci_dev(&self, addr: PciAddr) -> PathBuf {
        self.sys(format!("bus/pci/devices/{addr}"))
    }

    pub fn pci_driver_dir(&self, driver: &str) -> PathBuf {
        self.sys(format!("bus/pci/drivers/{driver}"))
    }

    /// An attribute's content without the trailing newline.
    pub fn read(&self, path: &Path) -> Result<String, VfError> {
        fs::read_to_string(path)
            .map(|s| s.trim_end_matches('\n').to_string())
            .map_err(|source| VfError::Sysfs {
                op: "read",
                path: path.to_path_buf(),
                source,
            })
    }

    /// An attribute that may legitimately be absent.
    pub fn read_opt(&self, path: &Path) -> Result<Option<String>, VfError> {
        match fs::read_to_string(path) {
            Ok(s) => Ok(Some(s.trim_end_matches('\n').to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(VfError::Sysfs {
                op: "read",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// A decimal attribute such as `sriov_numvfs`.
    pub fn read_u32(&self, path: &Path) -> Result<u32, VfError> {
        let v = self.read(path)?;
        v.trim().parse().map_err(|_| VfError::BadAttr {
            path: path.to_path_buf(),
            value: v,
            expected: "a decimal number",
        })
    }

    /// A hex attribute such as `vendor` (`0x15b3`).
    pub fn read_hex(&self, path: &Path) -> Result<u32, VfError> {
        let v = self.read(path)?;
        let t = v.trim();
        let t = t.strip_prefix("0x").unwrap_or(t);
        u32::from_str_radix(t, 16).map_err(|_| VfError::BadAttr {
            path: path.to_path_buf(),
            value: v.clone(),
            expected: "a hex number",
        })
    }

    /// The last component of a symlink's target (`driver` -> `mlx5_core`), or None when
    /// the link does not exist.
    pub fn link_name(&self, path: &Path) -> Result<Option<String>, VfError> {
        match fs::read_link(path) {
            Ok(t) => Ok(t.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(VfError::Sysfs {
                op: "readlink",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Entry names of a directory, sorted; None when it does not exist.
    pub fn list(&self, path: &Path) -> Result<Option<Vec<String>>, VfError> {
        let rd = match fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(VfError::Sysfs {
                    op: "list",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let mut names = Vec::new();
        for e in rd {
            let e = e.map_err(|source| VfError::Sysfs {
                op: "list",
                path: path.to_path_buf(),
                source,
            })?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(Some(names))
    }

    pub fn write(&self, path: &Path, value: &str) -> Result<(), VfError> {
        self.writer
            .write_attr(path, value)
            .map_err(|source| VfError::Sysfs {
                op: "write",
                path: path.to_path_buf(),
                source,
            })
    }

    /// The PCI driver a device is bound to, if any.
    pub fn driver_of(&self, addr: PciAddr) -> Result<Option<String>, VfError> {
        self.link_name(&self.pci_dev(addr).join("driver"))
    }

    /// The IOMMU group number of a device, if it has one.
    pub fn iommu_group_of(&self, addr: PciAddr) -> Result<Option<u32>, VfError> {
        let p = self.pci_dev(addr).join("iommu_group");
        match self.link_name(&p)? {
            None => Ok(None),
            Some(n) => n.parse().map(Some).map_err(|_| VfError::BadAttr {
                path: p,
                value: n,
                expected: "a link to kernel/iommu_groups/<number>",
            }),
        }
    }
}
