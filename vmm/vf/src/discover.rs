//! From what the user typed after `--vf` to a PF and its VFs, and whether each VF is free.

use std::path::PathBuf;

use crate::error::VfError;
use crate::pci::PciAddr;
use crate::sysfs::Sysfs;

/// What `--vf` named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VfSpec {
    /// An InfiniBand device (`mlx5_0`) or network interface (`ib0`).
    Name(String),
    /// A PF or VF PCI address.
    Pci(PciAddr),
}

impl VfSpec {
    pub fn parse(s: &str) -> Result<Self, VfError> {
        if let Ok(a) = s.parse::<PciAddr>() {
            return Ok(VfSpec::Pci(a));
        }
        let bad = |reason: &str| VfError::BadSpec {
            name: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        // A name becomes a path component under /sys/class; refuse anything that could
        // walk out of it.
        if s == "." || s == ".." || s.contains('/') || s.contains('\0') || s.len() > 64 {
            return Err(bad("device names contain no '/' and are at most 64 bytes"));
        }
        Ok(VfSpec::Name(s.to_string()))
    }
}

/// Where a spec points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Located {
    /// A PF with SR-IOV: pick one of its VFs.
    Pf(PciAddr),
    /// One VF, named by its address: use exactly that one.
    Vf { pf: PciAddr, vf: PciAddr },
}

impl Located {
    pub fn pf(&self) -> PciAddr {
        match *self {
            Located::Pf(pf) | Located::Vf { pf, .. } => pf,
        }
    }
}

pub fn locate(sysfs: &Sysfs, spec: &VfSpec) -> Result<Located, VfError> {
    match spec {
        VfSpec::Pci(addr) => {
            let dev = sysfs.pci_dev(*addr);
            if !dev.exists() {
                return Err(VfError::NoSuchDevice {
                    name: addr.to_string(),
                    searched: vec![dev],
                });
            }
            if let Some(pf) = physfn_of(sysfs, *addr)? {
                return Ok(Located::Vf { pf, vf: *addr });
            }
            require_sriov(sysfs, *addr)?;
            Ok(Located::Pf(*addr))
        }
        VfSpec::Name(name) => {
            let class_dirs = [
                sysfs.sys(format!("class/infiniband/{name}")),
                sysfs.sys(format!("class/net/{name}")),
            ];
            let Some(class_dev) = class_dirs.iter().find(|p| p.exists()) else {
                return Err(VfError::NoSuchDevice {
                    name: name.clone(),
                    searched: class_dirs.to_vec(),
                });
            };
            let link = class_dev.join("device");
            let Some(addr) = pci_ancestor(sysfs, &link) else {
                return Err(VfError::NotPci {
                    name: name.clone(),
                    path: link,
                });
            };
            // A class device on a VF (a VF's own netdev on the host) still means "a VF of
            // this adapter": go up to the PF and choose a free one.
            let pf = physfn_of(sysfs, addr)?.unwrap_or(addr);
            require_sriov(sysfs, pf)?;
            Ok(Located::Pf(pf))
        }
    }
}

/// The PCI function a class device sits on: the `device` link's target or, for devices
/// stacked on a bus driver (virtio-net's `device` is `virtioN` under the PCI function),
/// the nearest ancestor that is one.
fn pci_ancestor(sysfs: &Sysfs, device_link: &std::path::Path) -> Option<PciAddr> {
    let real = std::fs::canonicalize(device_link).ok()?;
    real.ancestors()
        .filter_map(|p| p.file_name()?.to_str()?.parse::<PciAddr>().ok())
        .find(|a| sysfs.pci_dev(*a).exists())
}

fn physfn_of(sysfs: &Sysfs, addr: PciAddr) -> Result<Option<PciAddr>, VfError> {
    let link = sysfs.pci_dev(addr).join("physfn");
    match sysfs.link_name(&link)? {
        None => Ok(None),
        Some(n) => n.parse().map(Some).map_err(|_| VfError::BadAttr {
            path: link,
            value: n,
            expected: "a link to the PF's PCI function",
        }),
    }
}

fn require_sriov(sysfs: &Sysfs, pf: PciAddr) -> Result<(), VfError> {
    let total = sysfs.pci_dev(pf).join("sriov_totalvfs");
    if !total.exists() {
        return Err(VfError::NoSriov { pf, path: total });
    }
    Ok(())
}

/// The PF's VFs as (index N of `virtfnN`, address), in index order.
pub fn list_vfs(sysfs: &Sysfs, pf: PciAddr) -> Result<Vec<(u32, PciAddr)>, VfError> {
    let dir = sysfs.pci_dev(pf);
    let mut vfs = Vec::new();
    for name in sysfs.list(&dir)?.unwrap_or_default() {
        let Some(idx) = name
            .strip_prefix("virtfn")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let link = dir.join(&name);
        let target = sysfs.link_name(&link)?.unwrap_or_default();
        let addr = target.parse().map_err(|_| VfError::BadAttr {
            path: link,
            value: target.clone(),
            expected: "a link to a VF's PCI function",
        })?;
        vfs.push((idx, addr));
    }
    vfs.sort();
    Ok(vfs)
}

/// Whether a VF can be taken, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VfState {
    /// No driver: take it.
    Unbound,
    /// On vfio-pci with nobody holding its group or device open.
    IdleVfio,
    /// On a host driver (mlx5_core autoprobes VFs) with no interface up: take it and give
    /// it back to that driver afterwards.
    IdleDriver(String),
    /// In use; the reason and the path that shows it.
    Busy { reason: String, path: PathBuf },
}

pub const VFIO_PCI: &str = "vfio-pci";

pub fn vf_state(sysfs: &Sysfs, vf: PciAddr) -> Result<VfState, VfError> {
    let dev = sysfs.pci_dev(vf);
    // A claim record means a claimant, live or crashed; a crashed one's record holds the
    // VF's original driver and GUIDs, which a new claim must not take for the originals.
    let rec = crate::records::path_for(sysfs, vf);
    if rec.exists() {
        let who = std::fs::read_to_string(&rec)
            .ok()
            .and_then(|t| crate::records::ClaimRecord::parse(&rec, &t).ok());
        let reason = match who {
            Some(r) if crate::records::is_live(sysfs, &r) => {
                format!("claimed by job '{}' (pid {} on {})", r.job, r.pid, r.host)
            }
            Some(r) => format!(
                "left by job '{}' whose process {} is gone: run 'hpmmap-vf recover'",
                r.job, r.pid
            ),
            None => "an unreadable claim record: check it, then remove it".into(),
        };
        return Ok(VfState::Busy { reason, path: rec });
    }
    match sysfs.driver_of(vf)? {
        None => Ok(VfState::Unbound),
        Some(d) if d == VFIO_PCI => {
            let mut targets = Vec::new();
            if let Some(g) = sysfs.iommu_group_of(vf)? {
                targets.push(format!("/dev/vfio/{g}"));
            }
            // iommufd-era kernels also expose a per-device cdev.
            for c in sysfs.list(&dev.join("vfio-dev"))?.unwrap_or_default() {
                targets.push(format!("/dev/vfio/devices/{c}"));
            }
            match holder_of(sysfs, &targets)? {
                Some((pid, comm, target)) => Ok(VfState::Busy {
                    reason: format!(
                        "bound to vfio-pci and {target} is held open by pid {pid} ({comm})"
                    ),
                    path: sysfs.proc(pid.to_string()),
                }),
                None => Ok(VfState::IdleVfio),
            }
        }
        Some(d) => {
            for ifname in sysfs.list(&dev.join("net"))?.unwrap_or_default() {
                let flags_path = dev.join("net").join(&ifname).join("flags");
                if let Some(v) = sysfs.read_opt(&flags_path)? {
                    let flags =
                        u32::from_str_radix(v.trim().trim_start_matches("0x"), 16).unwrap_or(0);
                    // IFF_UP: someone configured the interface, so it carries traffic.
                    if flags & 1 != 0 {
                        return Ok(VfState::Busy {
                            reason: format!(
                                "bound to {d} and interface {ifname} is up (flags {v})"
                            ),
                            path: flags_path,
                        });
                    }
                }
            }
            Ok(VfState::IdleDriver(d))
        }
    }
}

/// The first process holding one of `targets` (absolute /dev paths as the kernel prints
/// them in /proc/PID/fd links) open.
fn holder_of(sysfs: &Sysfs, targets: &[String]) -> Result<Option<(u32, String, String)>, VfError> {
    if targets.is_empty() {
        return Ok(None);
    }
    let proc_root = sysfs.proc("");
    for entry in sysfs.list(&proc_root)?.unwrap_or_default() {
        let Ok(pid) = entry.parse::<u32>() else {
            continue;
        };
        let fd_dir = proc_root.join(&entry).join("fd");
        // Processes exit and their fd tables vanish or deny us while we scan: not an error.
        let Ok(Some(fds)) = sysfs.list(&fd_dir) else {
            continue;
        };
        for fd in fds {
            let Ok(t) = std::fs::read_link(fd_dir.join(&fd)) else {
                continue;
            };
            let t = t.to_string_lossy();
            if let Some(hit) = targets.iter().find(|x| **x == t) {
                let comm = sysfs
                    .read_opt(&proc_root.join(&entry).join("comm"))
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "?".into());
                return Ok(Some((pid, comm, hit.clone())));
            }
        }
    }
    Ok(None)
}

/// The best free VF of a PF: an unbound one, else one idle on vfio-pci, else one idle on
/// a host driver (taking it costs a rebind on exit).
pub fn pick_free_vf(sysfs: &Sysfs, pf: PciAddr) -> Result<(u32, PciAddr, VfState), VfError> {
    let vfs = list_vfs(sysfs, pf)?;
    if vfs.is_empty() {
        return Err(VfError::NoVfsEnabled {
            pf,
            path: sysfs.pci_dev(pf).join("sriov_numvfs"),
        });
    }
    let mut best: Option<(u8, u32, PciAddr, VfState)> = None;
    let mut busy = Vec::new();
    for (idx, vf) in vfs {
        let st = vf_state(sysfs, vf)?;
        let rank = match &st {
            VfState::Unbound => 0,
            VfState::IdleVfio => 1,
            VfState::IdleDriver(_) => 2,
            VfState::Busy { reason, path } => {
                busy.push(format!("{vf}: {reason} ({})", path.display()));
                continue;
            }
        };
        let better = match &best {
            None => true,
            Some(b) => rank < b.0,
        };
        if better {
            best = Some((rank, idx, vf, st));
        }
    }
    match best {
        Some((_, idx, vf, st)) => Ok((idx, vf, st)),
        None => Err(VfError::NoFreeVf { pf, busy }),
    }
}
