//! A SIMULATION of the kernel's reaction to sysfs writes, over a recorded sysfs tree.
//!
//! This host has no IOMMU, VFIO or SR-IOV device, so the binding code is tested against
//! recorded trees. Reads of those trees are ordinary file reads (the same code path as on
//! a host); only writes come here. The model covers what binding needs and nothing more:
//!
//! - `bus/pci/devices/D/driver_override`: stores the value; an empty write clears it
//!   to `(null)`.
//! - `bus/pci/drivers/X/unbind`: ENODEV unless D is on X; else removes the `driver`
//!   link and X's link to D.
//! - `bus/pci/drivers/X/bind`: EBUSY if D has a driver; ENODEV if X does not match D
//!   (the override names another driver, or no override and X's ids do not list D);
//!   probe failure as below; else creates both links.
//! - `bus/pci/drivers_probe`: binds D to its override, or to the first driver whose ids
//!   match; a probe failure leaves D unbound and the write still succeeds, as the kernel's.
//! - `bus/pci/devices/PF/sriov_numvfs`: EBUSY changing a nonzero count to another nonzero
//!   one, ERANGE above `sriov_totalvfs`; creating VFs at the PF's `sriov_offset` and
//!   `sriov_stride` with their own IOMMU group (when the PF has one) and autoprobe;
//!   0 removes them.
//! - `bus/pci/devices/PF/sriov/N/{node,port}` (MLNX_OFED mlx5_core's per-VF attributes):
//!   EINVAL unless eight `xx` hex pairs joined by ':' (its sscanf), stored lower case;
//!   `policy`: EINVAL unless `Down`, `Up` or `Follow`. A PF listed in `sim/vf-ib-attrs`
//!   gets `sriov/N/` for each VF it creates (GUIDs zero, policy Down) and loses them with
//!   its VFs. `sim/refuse-writes` lines `PF ATTR` (`0000:3b:00.0 port`) make that
//!   attribute's writes fail with EOPNOTSUPP, as a firmware that will not change it.
//! - anything else: written to the file, which must exist.
//!
//! Data the kernel keeps internally lives beside the tree in `ROOT/sim/`: `driver-ids`
//! (lines `DRIVER VENDOR:DEVICE`, the id tables), `probe-fails` (drivers whose probe
//! fails, one per line), `vf-ib-attrs` and `refuse-writes` as above. vfio-pci's probe
//! fails for a device without an IOMMU group, as the kernel's does.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::pci::PciAddr;
use crate::sysfs::{AttrWriter, HostPaths, Sysfs};

pub struct SimKernel {
    root: PathBuf,
    // sysfs serialises these writes per device; one lock for the whole tree is enough here.
    lock: Mutex<()>,
}

/// A [`Sysfs`] over the tree at `root` (`root/sys`, `root/proc`, `root/dev`) whose writes
/// go to the simulation.
pub fn sim_sysfs(root: &Path) -> Sysfs {
    Sysfs::new(HostPaths::under(root), Arc::new(SimKernel::new(root)))
}

fn err(kind: io::ErrorKind, what: impl Into<String>) -> io::Error {
    io::Error::new(kind, what.into())
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl SimKernel {
    pub fn new(root: &Path) -> Self {
        SimKernel {
            root: root.to_path_buf(),
            lock: Mutex::new(()),
        }
    }

    fn sys(&self) -> PathBuf {
        self.root.join("sys")
    }

    fn dev_dir(&self, d: PciAddr) -> PathBuf {
        self.sys().join("bus/pci/devices").join(d.to_string())
    }

    fn drv_dir(&self, x: &str) -> PathBuf {
        self.sys().join("bus/pci/drivers").join(x)
    }

    fn driver_of(&self, d: PciAddr) -> Option<String> {
        fs::read_link(self.dev_dir(d).join("driver"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    fn read(&self, p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_default().trim().to_string()
    }

    fn override_of(&self, d: PciAddr) -> Option<String> {
        let v = self.read(&self.dev_dir(d).join("driver_override"));
        (!v.is_empty() && v != "(null)").then_some(v)
    }

    fn sim_lines(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.root.join("sim").join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    }

    fn ids_match(&self, drv: &str, d: PciAddr) -> bool {
        let id = format!(
            "{}:{}",
            self.read(&self.dev_dir(d).join("vendor"))
                .trim_start_matches("0x"),
            self.read(&self.dev_dir(d).join("device"))
                .trim_start_matches("0x")
        );
        self.sim_lines("driver-ids").iter().any(|l| {
            let mut it = l.split_whitespace();
            it.next() == Some(drv) && it.next() == Some(id.as_str())
        })
    }

    fn matches(&self, drv: &str, d: PciAddr) -> bool {
        match self.override_of(d) {
            Some(o) => o == drv,
            None => self.ids_match(drv, d),
        }
    }

    fn probe_ok(&self, drv: &str, d: PciAddr) -> bool {
        if drv == "vfio-pci" && !self.dev_dir(d).join("iommu_group").exists() {
            return false;
        }
        !self.sim_lines("probe-fails").iter().any(|l| l == drv)
    }

    fn link_both(&self, drv: &str, d: PciAddr) -> io::Result<()> {
        let dev = fs::canonicalize(self.dev_dir(d))?;
        let drvd = fs::canonicalize(self.drv_dir(drv))?;
        symlink_rel(&drvd, &dev.join("driver"))?;
        symlink_rel(&dev, &drvd.join(d.to_string()))
    }

    fn bind(&self, drv: &str, d: PciAddr) -> io::Result<()> {
        if !self.dev_dir(d).exists() {
            return Err(errno(libc::ENODEV));
        }
        if self.driver_of(d).is_some() {
            return Err(errno(libc::EBUSY));
        }
        if !self.drv_dir(drv).exists() || !self.matches(drv, d) {
            return Err(errno(libc::ENODEV));
        }
        if !self.probe_ok(drv, d) {
            return Err(errno(libc::EINVAL));
        }
        self.link_both(drv, d)
    }

    fn unbind(&self, drv: &str, d: PciAddr) -> io::Result<()> {
        if self.driver_of(d).as_deref() != Some(drv) {
            return Err(errno(libc::ENODEV));
        }
        fs::remove_file(self.dev_dir(d).join("driver"))?;
        fs::remove_file(self.drv_dir(drv).join(d.to_string()))
    }

    fn drivers_probe(&self, d: PciAddr) -> io::Result<()> {
        if !self.dev_dir(d).exists() {
            return Err(errno(libc::EINVAL));
        }
        if self.driver_of(d).is_some() {
            return Ok(());
        }
        let candidates: Vec<String> = match self.override_of(d) {
            Some(o) => vec![o],
            None => self
                .sim_lines("driver-ids")
                .iter()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect(),
        };
        for drv in candidates {
            if self.drv_dir(&drv).exists() && self.matches(&drv, d) {
                // As in the kernel, a failed probe is not an error of the write.
                if self.probe_ok(&drv, d) {
                    self.link_both(&drv, d)?;
                }
                return Ok(());
            }
        }
        Ok(())
    }

    fn set_numvfs(&self, pf: PciAddr, path: &Path, value: &str) -> io::Result<()> {
        let n: u32 = value.trim().parse().map_err(|_| errno(libc::EINVAL))?;
        let dir = self.dev_dir(pf);
        let cur: u32 = self.read(path).parse().unwrap_or(0);
        let total: u32 = self.read(&dir.join("sriov_totalvfs")).parse().unwrap_or(0);
        if n == cur {
            return Ok(());
        }
        if cur != 0 && n != 0 {
            return Err(errno(libc::EBUSY));
        }
        if n > total {
            return Err(errno(libc::ERANGE));
        }
        if n == 0 {
            for i in 0..cur {
                self.remove_vf(pf, i)?;
            }
            // mlx5's sriov/ directory goes with the last VF.
            let _ = fs::remove_dir(self.dev_dir(pf).join("sriov"));
        } else {
            for i in 0..n {
                self.create_vf(pf, i)?;
            }
        }
        fs::write(path, format!("{n}\n"))
    }

    fn vf_addr(&self, pf: PciAddr, i: u32) -> io::Result<PciAddr> {
        let dir = self.dev_dir(pf);
        let offset: u32 = self
            .read(&dir.join("sriov_offset"))
            .parse()
            .map_err(|_| err(io::ErrorKind::InvalidData, "sriov_offset"))?;
        let stride: u32 = self
            .read(&dir.join("sriov_stride"))
            .parse()
            .map_err(|_| err(io::ErrorKind::InvalidData, "sriov_stride"))?;
        let rid = u32::from(pf.routing_id()) + offset + i * stride;
        Ok(PciAddr::from_routing_id(pf.domain, rid as u16))
    }

    fn create_vf(&self, pf: PciAddr, i: u32) -> io::Result<()> {
        let vf = self.vf_addr(pf, i)?;
        let pf_dir = fs::canonicalize(self.dev_dir(pf))?;
        let vf_dir = pf_dir
            .parent()
            .ok_or_else(|| err(io::ErrorKind::InvalidData, "PF at root"))?
            .join(vf.to_string());
        fs::create_dir_all(&vf_dir)?;
        let vendor = self.read(&pf_dir.join("vendor"));
        let device = self.read(&pf_dir.join("sriov_vf_device"));
        fs::write(vf_dir.join("vendor"), format!("{vendor}\n"))?;
        fs::write(
            vf_dir.join("device"),
            format!("0x{}\n", device.trim_start_matches("0x")),
        )?;
        fs::write(
            vf_dir.join("class"),
            format!("{}\n", self.read(&pf_dir.join("class"))),
        )?;
        fs::write(vf_dir.join("driver_override"), "(null)\n")?;
        symlink_rel(&pf_dir, &vf_dir.join("physfn"))?;
        symlink_rel(&vf_dir, &pf_dir.join(format!("virtfn{i}")))?;
        symlink_rel(&vf_dir, &self.dev_dir(vf))?;
        if pf_dir.join("iommu_group").exists() {
            let groups = self.sys().join("kernel/iommu_groups");
            let next = fs::read_dir(&groups)?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .max()
                .map_or(0, |m| m + 1);
            let g = groups.join(next.to_string());
            fs::create_dir_all(g.join("devices"))?;
            symlink_rel(&vf_dir, &g.join("devices").join(vf.to_string()))?;
            symlink_rel(&fs::canonicalize(&g)?, &vf_dir.join("iommu_group"))?;
        }
        if self
            .sim_lines("vf-ib-attrs")
            .iter()
            .any(|l| l == &pf.to_string())
        {
            let d = pf_dir.join(format!("sriov/{i}"));
            fs::create_dir_all(&d)?;
            fs::write(d.join("node"), "00:00:00:00:00:00:00:00\n")?;
            fs::write(d.join("port"), "00:00:00:00:00:00:00:00\n")?;
            fs::write(d.join("policy"), "Down\n")?;
        }
        if self.read(&pf_dir.join("sriov_drivers_autoprobe")) == "1" {
            self.drivers_probe(vf)?;
        }
        Ok(())
    }

    fn vf_ib_attr(&self, pf: PciAddr, attr: &str, path: &Path, value: &str) -> io::Result<()> {
        if self
            .sim_lines("refuse-writes")
            .iter()
            .any(|l| *l == format!("{pf} {attr}"))
        {
            return Err(errno(libc::EOPNOTSUPP));
        }
        if !path.is_file() {
            return Err(errno(libc::ENOENT));
        }
        let v = value.trim_end_matches('\n');
        let stored = if attr == "policy" {
            match v {
                "Down" | "Up" | "Follow" => v.to_string(),
                _ => return Err(errno(libc::EINVAL)),
            }
        } else {
            let pairs: Vec<&str> = v.split(':').collect();
            let ok = pairs.len() == 8
                && pairs.iter().all(|p| {
                    (1..=2).contains(&p.len()) && p.chars().all(|c| c.is_ascii_hexdigit())
                });
            if !ok {
                return Err(errno(libc::EINVAL));
            }
            pairs
                .iter()
                .map(|p| format!("{:02x}", u8::from_str_radix(p, 16).unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(":")
        };
        fs::write(path, format!("{stored}\n"))
    }

    fn remove_vf(&self, pf: PciAddr, i: u32) -> io::Result<()> {
        let vf = self.vf_addr(pf, i)?;
        if let Some(drv) = self.driver_of(vf) {
            self.unbind(&drv, vf)?;
        }
        let vf_dir = fs::canonicalize(self.dev_dir(vf))?;
        if let Ok(g) = fs::canonicalize(vf_dir.join("iommu_group")) {
            fs::remove_dir_all(g)?;
        }
        fs::remove_file(self.dev_dir(vf))?;
        fs::remove_file(self.dev_dir(pf).join(format!("virtfn{i}")))?;
        let attrs = self.dev_dir(pf).join(format!("sriov/{i}"));
        if attrs.is_dir() {
            fs::remove_dir_all(attrs)?;
        }
        fs::remove_dir_all(vf_dir)
    }
}

/// `bus/pci/devices/<addr>/<rest>` -> (addr, rest).
fn split_dev_path(rel: &Path) -> Option<(PciAddr, PathBuf)> {
    let rest = rel.strip_prefix("bus/pci/devices").ok()?;
    let mut comps = rest.components();
    let addr = comps.next()?.as_os_str().to_str()?.parse().ok()?;
    Some((addr, comps.as_path().to_path_buf()))
}

impl AttrWriter for SimKernel {
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let sys = self.sys();
        let rel = path.strip_prefix(&sys).map_err(|_| {
            err(
                io::ErrorKind::PermissionDenied,
                format!("{} is outside the simulated tree", path.display()),
            )
        })?;
        if rel.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(errno(libc::EACCES));
        }
        let parse_dev = || {
            value
                .trim()
                .parse::<PciAddr>()
                .map_err(|_| errno(libc::ENODEV))
        };
        if rel == Path::new("bus/pci/drivers_probe") {
            return self.drivers_probe(parse_dev()?);
        }
        if let Ok(rest) = rel.strip_prefix("bus/pci/drivers") {
            let parts: Vec<&str> = rest.iter().filter_map(|c| c.to_str()).collect();
            match parts.as_slice() {
                [drv, "bind"] => return self.bind(drv, parse_dev()?),
                [drv, "unbind"] => return self.unbind(drv, parse_dev()?),
                _ => {}
            }
        }
        if let Some((addr, attr)) = split_dev_path(rel) {
            if attr == Path::new("driver_override") {
                let v = value.trim();
                let v = if v.is_empty() { "(null)" } else { v };
                return fs::write(path, format!("{v}\n"));
            }
            if attr == Path::new("sriov_numvfs") {
                return self.set_numvfs(addr, path, value);
            }
            let parts: Vec<&str> = attr.iter().filter_map(|c| c.to_str()).collect();
            if let ["sriov", n, a @ ("node" | "port" | "policy")] = parts.as_slice() {
                if n.parse::<u32>().is_ok() {
                    return self.vf_ib_attr(addr, a, path, value);
                }
            }
        }
        if !path.is_file() {
            return Err(errno(libc::ENOENT));
        }
        fs::write(path, value)
    }
}

/// Creates `link` pointing at `target` by a relative path, so a tree stays valid when it
/// is copied elsewhere (as sysfs's own links are relative).
pub fn symlink_rel(target: &Path, link: &Path) -> io::Result<()> {
    let link_dir = link
        .parent()
        .ok_or_else(|| err(io::ErrorKind::InvalidInput, "link at root"))?;
    let link_dir = fs::canonicalize(link_dir)?;
    let target = if target.is_absolute() {
        target.to_path_buf()
    } else {
        link_dir.join(target)
    };
    // As the kernel writes them: up to the common ancestor of the link and the target's
    // parent, then down by name, so even a link to an ancestor ends in the target's name.
    let (t_parent, t_name) = match (target.parent(), target.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => return Err(err(io::ErrorKind::InvalidInput, "link to /")),
    };
    let a: Vec<_> = link_dir.components().collect();
    let b: Vec<_> = t_parent.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel = PathBuf::new();
    for _ in common..a.len() {
        rel.push("..");
    }
    for c in &b[common..] {
        rel.push(c);
    }
    rel.push(t_name);
    std::os::unix::fs::symlink(rel, link)
}

/// Copies a recorded tree, keeping symlinks as symlinks, so tests write to a copy and
/// the recording stays pristine.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for e in fs::read_dir(src)? {
        let e = e?;
        let ty = e.file_type()?;
        let to = dst.join(e.file_name());
        if ty.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path())?, &to)?;
        } else if ty.is_dir() {
            copy_tree(&e.path(), &to)?;
        } else {
            fs::copy(e.path(), &to)?;
        }
    }
    Ok(())
}
