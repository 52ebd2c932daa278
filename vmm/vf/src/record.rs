//! Records the part of a host's sysfs that VF discovery reads, so that test fixtures
//! can come from real machines (`hpmmap-vf record`). Links are copied as the kernel
//! wrote them (relative), attributes by value; only the attributes discovery and the
//! selftest read are kept, so nothing else about the host ends up in a fixture.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::pci::PciAddr;
use crate::sysfs::Sysfs;

const DEV_ATTRS: &[&str] = &[
    "vendor",
    "device",
    "class",
    "subsystem_vendor",
    "subsystem_device",
    "driver_override",
    "numa_node",
    "sriov_totalvfs",
    "sriov_numvfs",
    "sriov_offset",
    "sriov_stride",
    "sriov_vf_device",
    "sriov_drivers_autoprobe",
];
const DEV_LINKS: &[&str] = &["driver", "iommu_group", "physfn"];
const NET_ATTRS: &[&str] = &["flags", "operstate", "type"];
/// An InfiniBand class device: what decides InfiniBand vs RoCE and the PF GUID VF GUIDs
/// are derived from, and the port state the guest check reports.
const IB_ATTRS: &[&str] = &[
    "node_guid",
    "node_type",
    "fw_ver",
    "ports/1/link_layer",
    "ports/1/state",
    "ports/1/phys_state",
];
/// MLNX_OFED mlx5_core's per-VF attributes under the PF's `sriov/<N>/`.
const VF_IB_ATTRS: &[&str] = &["node", "port", "policy"];
const DRIVER_FILES: &[&str] = &["bind", "unbind", "new_id", "remove_id"];

pub struct Recorder<'a> {
    sysfs: &'a Sysfs,
    out: PathBuf,
    seen: BTreeSet<PathBuf>,
}

impl<'a> Recorder<'a> {
    pub fn new(sysfs: &'a Sysfs, out: &Path) -> Self {
        Recorder {
            sysfs,
            out: out.to_path_buf(),
            seen: BTreeSet::new(),
        }
    }

    fn rel(&self, p: &Path) -> Option<PathBuf> {
        p.strip_prefix(&self.sysfs.paths().sys)
            .ok()
            .map(|r| Path::new("sys").join(r))
    }

    fn copy_file(&self, p: &Path) -> io::Result<()> {
        let (Some(rel), Ok(v)) = (self.rel(p), fs::read_to_string(p)) else {
            return Ok(());
        };
        let to = self.out.join(rel);
        fs::create_dir_all(to.parent().unwrap())?;
        fs::write(to, v)
    }

    /// Write-only attributes (bind, unbind, drivers_probe) cannot be read, not even by
    /// root: record that they exist.
    fn touch(&self, p: &Path) -> io::Result<()> {
        let Some(rel) = self.rel(p).filter(|_| p.exists()) else {
            return Ok(());
        };
        let to = self.out.join(rel);
        fs::create_dir_all(to.parent().unwrap())?;
        fs::write(to, "")
    }

    fn copy_link(&self, p: &Path) -> io::Result<()> {
        let (Some(rel), Ok(t)) = (self.rel(p), fs::read_link(p)) else {
            return Ok(());
        };
        let to = self.out.join(rel);
        fs::create_dir_all(to.parent().unwrap())?;
        if to.symlink_metadata().is_ok() {
            return Ok(());
        }
        std::os::unix::fs::symlink(t, to)
    }

    fn canonical(p: &Path) -> Option<PathBuf> {
        fs::canonicalize(p).ok()
    }

    /// A class device (`class/net/ib0`, `class/infiniband/mlx5_0`) and everything it leads to.
    pub fn class_device(&mut self, class: &str, name: &str) -> io::Result<()> {
        let link = self.sysfs.sys(format!("class/{class}/{name}"));
        self.copy_link(&link)?;
        let Some(real) = Self::canonical(&link) else {
            return Ok(());
        };
        self.class_dir(&real)?;
        if let Some(addr) = real
            .ancestors()
            .filter_map(|p| p.file_name()?.to_str()?.parse::<PciAddr>().ok())
            .next()
        {
            self.pci(addr)?;
        }
        Ok(())
    }

    fn class_dir(&mut self, real: &Path) -> io::Result<()> {
        for a in NET_ATTRS.iter().chain(IB_ATTRS) {
            self.copy_file(&real.join(a))?;
        }
        self.copy_link(&real.join("device"))
    }

    /// A PCI function, its driver, IOMMU group (and the group's members), PF and VFs,
    /// and its net / infiniband class devices.
    pub fn pci(&mut self, addr: PciAddr) -> io::Result<()> {
        let link = self.sysfs.pci_dev(addr);
        let Some(real) = Self::canonical(&link) else {
            return Ok(());
        };
        if !self.seen.insert(real.clone()) {
            return Ok(());
        }
        self.copy_link(&link)?;
        for a in DEV_ATTRS {
            self.copy_file(&real.join(a))?;
        }
        for l in DEV_LINKS {
            self.copy_link(&real.join(l))?;
        }
        for n in self
            .sysfs
            .list(&real.join("sriov"))
            .ok()
            .flatten()
            .unwrap_or_default()
        {
            for a in VF_IB_ATTRS {
                self.copy_file(&real.join("sriov").join(&n).join(a))?;
            }
        }
        if let Some(drv) = self.sysfs.driver_of(addr).ok().flatten() {
            let d = self.sysfs.pci_driver_dir(&drv);
            for f in DRIVER_FILES {
                self.touch(&d.join(f))?;
            }
            self.copy_link(&d.join(addr.to_string()))?;
        }
        let mut next = Vec::new();
        if let Some(g) = self.sysfs.iommu_group_of(addr).ok().flatten() {
            let devs = self.sysfs.sys(format!("kernel/iommu_groups/{g}/devices"));
            self.copy_file(&self.sysfs.sys(format!("kernel/iommu_groups/{g}/type")))?;
            for m in self.sysfs.list(&devs).ok().flatten().unwrap_or_default() {
                self.copy_link(&devs.join(&m))?;
                next.extend(m.parse::<PciAddr>().ok());
            }
        }
        for e in self.sysfs.list(&real).ok().flatten().unwrap_or_default() {
            if e.starts_with("virtfn") || e == "physfn" {
                self.copy_link(&real.join(&e))?;
                next.extend(
                    self.sysfs
                        .link_name(&real.join(&e))
                        .ok()
                        .flatten()
                        .and_then(|n| n.parse::<PciAddr>().ok()),
                );
            }
        }
        for class in ["net", "infiniband"] {
            for n in self
                .sysfs
                .list(&real.join(class))
                .ok()
                .flatten()
                .unwrap_or_default()
            {
                self.class_dir(&real.join(class).join(&n))?;
                self.copy_link(&self.sysfs.sys(format!("class/{class}/{n}")))?;
            }
        }
        for a in next {
            self.pci(a)?;
        }
        Ok(())
    }

    /// Processes holding /dev/vfio files open (what makes a VF on vfio-pci busy): their
    /// fd links to /dev/vfio and their comm, nothing else.
    fn vfio_holders(&self) -> io::Result<()> {
        let proc_root = self.sysfs.proc("");
        for pid in self
            .sysfs
            .list(&proc_root)
            .ok()
            .flatten()
            .unwrap_or_default()
        {
            if pid.parse::<u32>().is_err() {
                continue;
            }
            let fd_dir = proc_root.join(&pid).join("fd");
            let mut held = false;
            for fd in self.sysfs.list(&fd_dir).ok().flatten().unwrap_or_default() {
                let Ok(t) = fs::read_link(fd_dir.join(&fd)) else {
                    continue;
                };
                if t.starts_with("/dev/vfio/") {
                    let to = self.out.join("proc").join(&pid).join("fd");
                    fs::create_dir_all(&to)?;
                    std::os::unix::fs::symlink(&t, to.join(&fd))?;
                    held = true;
                }
            }
            if held {
                if let Ok(c) = fs::read_to_string(proc_root.join(&pid).join("comm")) {
                    fs::write(self.out.join("proc").join(&pid).join("comm"), c)?;
                }
            }
        }
        Ok(())
    }

    /// What the selftest reads about the host: IOMMUs (and their capability registers),
    /// 1 GiB hugepages, vfio modules and the unsafe-interrupts switch, /dev/vfio/vfio,
    /// only the IOMMU words of the kernel command line, and only the interrupt chip
    /// names of /proc/interrupts (interrupt remapping shows there as IR-).
    pub fn host(&mut self) -> io::Result<()> {
        let iommu = self.sysfs.sys("class/iommu");
        fs::create_dir_all(self.out.join("sys/class/iommu"))?;
        for n in self.sysfs.list(&iommu).ok().flatten().unwrap_or_default() {
            self.copy_link(&iommu.join(&n))?;
            if let Some(real) = Self::canonical(&iommu.join(&n)) {
                for f in [
                    "intel-iommu/cap",
                    "intel-iommu/ecap",
                    "intel-iommu/version",
                    "amd-iommu/cap",
                    "amd-iommu/features",
                ] {
                    self.copy_file(&real.join(f))?;
                }
            }
        }
        self.copy_file(
            &self
                .sysfs
                .sys("module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"),
        )?;
        let irqs = fs::read_to_string(self.sysfs.proc("interrupts")).unwrap_or_default();
        let chips: Vec<String> = irqs
            .lines()
            .skip(1)
            .filter_map(|l| {
                l.split_whitespace()
                    .find(|w| w.contains("PCI-MSI") || w.contains("IO-APIC"))
                    .map(|c| format!("{c}\n"))
            })
            .collect();
        fs::create_dir_all(self.out.join("proc"))?;
        fs::write(self.out.join("proc/interrupts"), chips.concat())?;
        let hp = self.sysfs.sys("kernel/mm/hugepages/hugepages-1048576kB");
        for f in ["nr_hugepages", "free_hugepages"] {
            self.copy_file(&hp.join(f))?;
        }
        for m in ["vfio_pci", "vfio_iommu_type1", "vfio"] {
            self.copy_file(&self.sysfs.sys(format!("module/{m}/initstate")))?;
            if self.sysfs.sys(format!("module/{m}")).is_dir() {
                fs::create_dir_all(self.out.join(format!("sys/module/{m}")))?;
            }
        }
        let vfio_drv = self.sysfs.pci_driver_dir("vfio-pci");
        for f in DRIVER_FILES {
            self.touch(&vfio_drv.join(f))?;
        }
        self.touch(&self.sysfs.sys("bus/pci/drivers_probe"))?;
        let cmdline = fs::read_to_string(self.sysfs.proc("cmdline")).unwrap_or_default();
        let kept: Vec<&str> = cmdline
            .split_whitespace()
            .filter(|w| w.contains("iommu"))
            .collect();
        fs::create_dir_all(self.out.join("proc"))?;
        fs::write(
            self.out.join("proc/cmdline"),
            format!("{}\n", kept.join(" ")),
        )?;
        self.vfio_holders()?;
        if self.sysfs.dev("vfio/vfio").exists() {
            fs::create_dir_all(self.out.join("dev/vfio"))?;
            fs::write(self.out.join("dev/vfio/vfio"), "")?;
        }
        Ok(())
    }
}
