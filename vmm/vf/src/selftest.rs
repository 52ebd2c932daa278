//! `hpmmap-vmm selftest --vf NAME`: every prerequisite of VF passthrough on this host,
//! what was found, and what to do about what is missing. Reads only; changes nothing.
//! With an InfiniBand VF also: the GUID/policy attributes the claim will write, the job's
//! P_Key against other jobs and the SM's partitions.conf, and a subnet manager.

use std::fmt;
use std::path::PathBuf;

use crate::discover::{list_vfs, locate, pick_free_vf, VfSpec, VfState};
use crate::error::VfError;
use crate::ib::{self, IbOptions};
use crate::iommu::check_group_viable;
use crate::partitions;
use crate::pci::PciAddr;
use crate::records;
use crate::sysfs::Sysfs;

const GIB: u64 = 1 << 30;
/// linux/capability.h
const CAP_IPC_LOCK: u32 = 14;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub found: String,
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, found: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Ok,
            found: found.into(),
            fix: None,
        }
    }
    fn bad(
        name: &'static str,
        status: Status,
        found: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            name,
            status,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }
}

/// The process limits the checks compare against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_MEMLOCK soft limit in bytes; None = unlimited.
    pub memlock: Option<u64>,
    /// CAP_IPC_LOCK exempts VFIO's pinning from RLIMIT_MEMLOCK (vfio_iommu_type1).
    pub cap_ipc_lock: bool,
}

impl Limits {
    pub fn current() -> Self {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0;
        let memlock = if !ok || r.rlim_cur == libc::RLIM_INFINITY {
            None
        } else {
            Some(r.rlim_cur)
        };
        let cap_ipc_lock = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("CapEff:"))
                    .map(|l| l[7..].trim().to_string())
            })
            .and_then(|h| u64::from_str_radix(&h, 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0);
        Limits {
            memlock,
            cap_ipc_lock,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SelftestOptions {
    /// `--vf` as the VMM would get it.
    pub vf: Option<String>,
    /// Guest RAM the VMM will pin for DMA.
    pub guest_ram: u64,
    pub limits: Limits,
}

#[derive(Clone, Debug)]
pub struct SelftestReport {
    pub checks: Vec<Check>,
}

impl SelftestReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for SelftestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let tag = match c.status {
                Status::Ok => " ok ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            writeln!(f, "[{tag}] {:<16} {}", c.name, c.found)?;
            if let Some(fix) = &c.fix {
                writeln!(f, "       {:<16} fix: {fix}", "")?;
            }
        }
        let fails = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        if fails == 0 {
            writeln!(f, "selftest passed: VF passthrough prerequisites are met")
        } else {
            writeln!(f, "selftest failed: {fails} prerequisite(s) missing")
        }
    }
}

fn gib(b: u64) -> String {
    match b {
        b if b >= GIB && b % GIB == 0 => format!("{} GiB", b / GIB),
        b if b >= GIB => format!("{:.1} GiB", b as f64 / GIB as f64),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b => format!("{} KiB", b >> 10),
    }
}

/// The InfiniBand side of the selftest: `--vf-guid`, `--pkey`, `--job` as the claim
/// will get them, and the SM's partitions.conf (default `/etc/opensm/partitions.conf`).
#[derive(Clone, Debug, Default)]
pub struct IbSelftest {
    pub ib: IbOptions,
    pub partitions: Option<PathBuf>,
}

pub fn run(sysfs: &Sysfs, opts: &SelftestOptions) -> SelftestReport {
    run_with(sysfs, opts, &IbSelftest::default())
}

pub fn run_with(sysfs: &Sysfs, opts: &SelftestOptions, ibo: &IbSelftest) -> SelftestReport {
    let mut checks = vec![
        iommu_hw(sysfs),
        iommu_cmdline(sysfs),
        interrupt_remap(sysfs),
        vfio_module(sysfs),
        vfio_dev(sysfs),
    ];
    if let Some(spec) = &opts.vf {
        checks.extend(vf_checks(sysfs, spec, ibo));
    }
    checks.push(memlock(opts));
    checks.push(hugepages(sysfs, opts.guest_ram));
    SelftestReport { checks }
}

/// Without interrupt remapping a device's MSI writes are not checked against an
/// interrupt remapping table, so a guest driving a VF can inject arbitrary interrupts
/// into the host. `IR-` interrupt chips in /proc/interrupts are the kernel saying it
/// remaps; the IOMMU's capability register only says it could.
fn interrupt_remap(sysfs: &Sysfs) -> Check {
    const NAME: &str = "interrupt remap";
    let unsafe_p = sysfs.sys("module/vfio_iommu_type1/parameters/allow_unsafe_interrupts");
    if sysfs.read_opt(&unsafe_p).ok().flatten().as_deref() == Some("Y") {
        return Check::bad(
            NAME,
            Status::Fail,
            format!("VFIO accepts devices without interrupt remapping ({} = Y)", unsafe_p.display()),
            "remove allow_unsafe_interrupts=1 from /etc/modprobe.d, then reload vfio_iommu_type1 (or reboot); fix interrupt remapping instead",
        );
    }
    let cmd = sysfs
        .read_opt(&sysfs.proc("cmdline"))
        .ok()
        .flatten()
        .unwrap_or_default();
    let fix = "enable x2APIC and interrupt remapping in the firmware (VT-d / AMD IOMMU), remove intremap=off from the kernel command line, reboot; 'dmesg | grep -i remapping' must say 'Enabled IRQ remapping'";
    if let Some(w) = cmd
        .split_whitespace()
        .find(|w| *w == "intremap=off" || *w == "nointremap")
    {
        return Check::bad(
            NAME,
            Status::Fail,
            format!("switched off on the kernel command line ({w})"),
            fix,
        );
    }
    let irq_path = sysfs.proc("interrupts");
    let irqs = sysfs.read_opt(&irq_path).ok().flatten().unwrap_or_default();
    let chips: Vec<&str> = irqs
        .split_whitespace()
        .filter(|w| w.contains("PCI-MSI") || w.contains("IO-APIC"))
        .collect();
    let remapped = chips.iter().filter(|c| c.starts_with("IR-")).count();
    if remapped > 0 {
        return Check::ok(
            NAME,
            format!(
                "on: {remapped} of {} MSI/IO-APIC interrupt sources remapped (IR- chips in {})",
                chips.len(),
                irq_path.display()
            ),
        );
    }
    if !chips.is_empty() {
        return Check::bad(
            NAME,
            Status::Fail,
            format!(
                "off: no IR- interrupt chips among {} in {}",
                chips.len(),
                irq_path.display()
            ),
            fix,
        );
    }
    // Nothing to read (a recording without /proc/interrupts): the IOMMU's extended
    // capability register says whether it can remap (Intel ECAP bit 3).
    let units = visible(
        sysfs
            .list(&sysfs.sys("class/iommu"))
            .ok()
            .flatten()
            .unwrap_or_default(),
    );
    let supported = units.iter().any(|u| {
        sysfs
            .read_opt(&sysfs.sys(format!("class/iommu/{u}/intel-iommu/ecap")))
            .ok()
            .flatten()
            .and_then(|e| u64::from_str_radix(e.trim().trim_start_matches("0x"), 16).ok())
            .is_some_and(|e| e & (1 << 3) != 0)
    });
    Check::bad(
        NAME,
        Status::Warn,
        if supported {
            format!("the IOMMU supports it (ecap IR bit) but {} shows no interrupt chips to confirm it is on", irq_path.display())
        } else {
            format!(
                "cannot tell: {} shows no interrupt chips",
                irq_path.display()
            )
        },
        "check 'dmesg | grep -i remapping' for 'Enabled IRQ remapping'",
    )
}

fn visible(names: Vec<String>) -> Vec<String> {
    names.into_iter().filter(|n| !n.starts_with('.')).collect()
}

fn iommu_hw(sysfs: &Sysfs) -> Check {
    let p = sysfs.sys("class/iommu");
    let units = visible(sysfs.list(&p).ok().flatten().unwrap_or_default());
    if units.is_empty() {
        Check::bad(
            "IOMMU",
            Status::Fail,
            format!("no IOMMU registered ({} is empty)", p.display()),
            "enable VT-d / AMD-Vi in the firmware and boot with intel_iommu=on (Intel) or amd_iommu=on (AMD); add iommu=pt to keep host DMA fast",
        )
    } else {
        Check::ok("IOMMU", format!("{} ({})", units.join(", "), p.display()))
    }
}

fn iommu_cmdline(sysfs: &Sysfs) -> Check {
    let p = sysfs.proc("cmdline");
    let cmd = sysfs.read_opt(&p).ok().flatten().unwrap_or_default();
    let words: Vec<&str> = cmd
        .split_whitespace()
        .filter(|w| w.contains("iommu"))
        .collect();
    let has = |w: &str| words.contains(&w);
    let shown = if words.is_empty() {
        "no iommu options".to_string()
    } else {
        words.join(" ")
    };
    let fix = "add intel_iommu=on (Intel) or amd_iommu=on (AMD) and iommu=pt to the kernel command line (GRUB_CMDLINE_LINUX), update-grub, reboot";
    if has("intel_iommu=off") || has("amd_iommu=off") {
        Check::bad(
            "kernel cmdline",
            Status::Fail,
            format!("IOMMU switched off: {shown} ({})", p.display()),
            fix,
        )
    } else if has("intel_iommu=on") || has("amd_iommu=on") {
        Check::ok("kernel cmdline", format!("{shown} ({})", p.display()))
    } else {
        // AMD's IOMMU is on by default when the firmware exposes it; Intel's is not on
        // Debian's kernels. The IOMMU check above says whether one is actually there.
        Check::bad(
            "kernel cmdline",
            Status::Warn,
            format!("{shown} ({})", p.display()),
            fix,
        )
    }
}

fn vfio_module(sysfs: &Sysfs) -> Check {
    let drv = sysfs.pci_driver_dir("vfio-pci");
    if drv.is_dir() {
        return Check::ok("vfio-pci", format!("driver registered ({})", drv.display()));
    }
    let release = sysfs
        .read_opt(&sysfs.proc("sys/kernel/osrelease"))
        .ok()
        .flatten()
        .unwrap_or_default();
    let dir = sysfs
        .paths()
        .modules
        .join(&release)
        .join("kernel/drivers/vfio/pci");
    let on_disk = sysfs
        .list(&dir)
        .ok()
        .flatten()
        .unwrap_or_default()
        .into_iter()
        .find(|f| f.starts_with("vfio-pci.ko"));
    match on_disk {
        Some(f) => Check::bad(
            "vfio-pci",
            Status::Fail,
            format!("driver not loaded ({} missing; the module is at {})", drv.display(), dir.join(f).display()),
            "modprobe vfio-pci (and list it in /etc/modules-load.d/ to load at boot)",
        ),
        None => Check::bad(
            "vfio-pci",
            Status::Fail,
            format!("driver not loaded and no vfio-pci module for kernel '{release}' in {}", dir.display()),
            "install a kernel built with CONFIG_VFIO_PCI (Debian's linux-image-amd64 has it as a module)",
        ),
    }
}

fn vfio_dev(sysfs: &Sysfs) -> Check {
    let p = sysfs.dev("vfio/vfio");
    if p.exists() {
        Check::ok("/dev/vfio/vfio", format!("present ({})", p.display()))
    } else {
        Check::bad(
            "/dev/vfio/vfio",
            Status::Fail,
            format!("{} missing", p.display()),
            "modprobe vfio vfio_iommu_type1 vfio-pci",
        )
    }
}

fn fix_for(e: &VfError) -> String {
    match e {
        VfError::NoSuchDevice { .. } | VfError::NotPci { .. } | VfError::BadSpec { .. } => {
            "name an InfiniBand device (ls /sys/class/infiniband), its netdev, or the PF's PCI address (lspci -D)".into()
        }
        VfError::NoSriov { .. } => {
            "enable SR-IOV in the adapter firmware (mlxconfig -d <PF> set SRIOV_EN=1 NUM_OF_VFS=8, then reboot) and in the BIOS".into()
        }
        VfError::NoVfsEnabled { path, .. } => format!("pass --vf-create N, or echo N > {}", path.display()),
        VfError::NoFreeVf { .. } => "wait for a VF to be released, or enable more VFs (set sriov_numvfs to 0, then to a larger N)".into(),
        VfError::GroupNotViable { .. } => {
            "put the adapter in a slot behind an ACS-capable port, or unbind the other group members".into()
        }
        VfError::NoIommuGroup { .. } => "boot with intel_iommu=on / amd_iommu=on".into(),
        _ => "see the message".into(),
    }
}

fn vf_checks(sysfs: &Sysfs, spec: &str, ibo: &IbSelftest) -> Vec<Check> {
    let mut out = Vec::new();
    let fail = |name, e: &VfError| Check::bad(name, Status::Fail, e.to_string(), fix_for(e));
    let located = match VfSpec::parse(spec).and_then(|s| locate(sysfs, &s)) {
        Ok(l) => l,
        Err(e) => {
            out.push(fail("PF / SR-IOV", &e));
            return out;
        }
    };
    let pf = located.pf();
    let dir = sysfs.pci_dev(pf);
    let read = |a: &str| {
        sysfs
            .read_opt(&dir.join(a))
            .ok()
            .flatten()
            .unwrap_or_else(|| "?".into())
    };
    let drv = sysfs
        .driver_of(pf)
        .ok()
        .flatten()
        .unwrap_or_else(|| "no driver".into());
    out.push(Check::ok(
        "PF / SR-IOV",
        format!(
            "'{spec}' -> PF {pf} ({drv}), {} of {} VFs enabled ({})",
            read("sriov_numvfs"),
            read("sriov_totalvfs"),
            dir.display()
        ),
    ));
    out.push(pf_link(sysfs, pf));
    let vf = match located {
        crate::discover::Located::Vf { vf, .. } => vf,
        crate::discover::Located::Pf(_) => match pick_free_vf(sysfs, pf) {
            Ok((idx, vf, st)) => {
                let how = match st {
                    VfState::Unbound => "unbound".to_string(),
                    VfState::IdleVfio => "idle on vfio-pci".to_string(),
                    VfState::IdleDriver(d) => format!("idle on {d}, will be rebound after use"),
                    VfState::Busy { .. } => unreachable!("pick_free_vf never returns a busy VF"),
                };
                let total = list_vfs(sysfs, pf).map(|v| v.len()).unwrap_or(0);
                out.push(Check::ok(
                    "free VF",
                    format!("{vf} (virtfn{idx}, {how}); {total} VFs in all"),
                ));
                vf
            }
            Err(e) => {
                out.push(fail("free VF", &e));
                return out;
            }
        },
    };
    out.extend(ib_checks(sysfs, pf, vf, ibo));
    match check_group_viable(sysfs, vf) {
        Ok(g) => {
            let members = sysfs
                .list(&sysfs.sys(format!("kernel/iommu_groups/{g}/devices")))
                .ok()
                .flatten()
                .unwrap_or_default();
            out.push(Check::ok(
                "IOMMU group",
                format!("group {g} viable: {}", members.join(", ")),
            ));
        }
        Err(e) => out.push(fail("IOMMU group", &e)),
    }
    out
}

/// The InfiniBand side: GUID/policy attributes of the VF the claim would take, the
/// P_Key against other jobs, and the SM's partitions.conf.
fn ib_checks(sysfs: &Sysfs, pf: PciAddr, vf: PciAddr, ibo: &IbSelftest) -> Vec<Check> {
    let mut out = Vec::new();
    let port = match ib::ib_port_of(sysfs, pf) {
        Ok(Some(p)) => p,
        Ok(None) => {
            let flag = if ibo.ib.pkey.is_some() {
                Some("--pkey")
            } else if ibo.ib.guid.is_some() {
                Some("--vf-guid")
            } else {
                None
            };
            if let Some(flag) = flag {
                out.push(Check::bad(
                    "InfiniBand",
                    Status::Fail,
                    format!("{flag} given, but PF {pf} is not an InfiniBand port (no infiniband/*/ports/1/link_layer = InfiniBand)"),
                    "name an InfiniBand PF, or drop --pkey / --vf-guid for an Ethernet VF",
                ));
            }
            return out;
        }
        Err(e) => {
            out.push(Check::bad(
                "InfiniBand",
                Status::Fail,
                e.to_string(),
                "see the message",
            ));
            return out;
        }
    };
    let index = match ib::vf_index(sysfs, pf, vf) {
        Ok(i) => i,
        Err(e) => {
            out.push(Check::bad(
                "VF GUIDs",
                Status::Fail,
                e.to_string(),
                "see the message",
            ));
            return out;
        }
    };
    let guid = match ib::plan(sysfs, pf, &port, index, &ibo.ib) {
        Ok(setup) => {
            let a = ib::vf_attrs(sysfs, pf, index);
            let ro: Vec<String> = [&a.node, &a.port, &a.policy]
                .iter()
                .filter(|p| !writable(p))
                .map(|p| p.display().to_string())
                .collect();
            if ro.is_empty() {
                out.push(Check::ok(
                    "VF GUIDs",
                    format!(
                        "{} virtfn{index}: node {}, port {}, policy {}; the claim sets GUID {} and Follow ({})",
                        port.ibdev,
                        setup.orig_node,
                        setup.orig_port,
                        setup.orig_policy,
                        setup.guid,
                        a.node.parent().map(|p| p.display().to_string()).unwrap_or_default()
                    ),
                ));
            } else {
                out.push(Check::bad(
                    "VF GUIDs",
                    Status::Fail,
                    format!("not writable: {}", ro.join(", ")),
                    "run as root (the attributes are root-writable in sysfs)",
                ));
            }
            Some(setup.guid)
        }
        Err(e) => {
            let fix = match e {
                VfError::GuidUnsupported { .. } => "install MLNX_OFED (its mlx5_core adds sriov/N/{node,port,policy} on the PF); the upstream driver sets VF GUIDs only through netlink ('ip link set <pf-netdev> vf N node_guid G port_guid G'), which hpmmap-vf does not use",
                _ => "pass --vf-guid, or fix the PF's node_guid",
            };
            out.push(Check::bad("VF GUIDs", Status::Fail, e.to_string(), fix));
            None
        }
    };
    let job = ibo
        .ib
        .job
        .clone()
        .unwrap_or_else(|| format!("pid{}", std::process::id()));
    let live: Vec<_> = records::list(sysfs)
        .into_iter()
        .filter_map(|(p, r)| r.ok().map(|r| (p, r)))
        .filter(|(_, r)| records::is_live(sysfs, r))
        .collect();
    if let Some(g) = guid {
        if let Some((p, r)) = live
            .iter()
            .find(|(_, r)| r.ib.as_ref().map(|i| i.guid) == Some(g))
        {
            out.push(Check::bad(
                "VF GUIDs",
                Status::Fail,
                format!("GUID {g} is already job '{}''s ({})", r.job, p.display()),
                "pass another --vf-guid",
            ));
        }
    }
    if let Some(pk) = ibo.ib.pkey {
        match live.iter().find(|(_, r)| {
            r.job != job && r.ib.as_ref().and_then(|i| i.pkey).map(|k| k.base()) == Some(pk.base())
        }) {
            Some((p, r)) => out.push(Check::bad(
                "P_Key",
                Status::Fail,
                format!("{pk} is job '{}''s ({})", r.job, p.display()),
                "give each job its own P_Key",
            )),
            None => out.push(Check::ok(
                "P_Key",
                format!(
                    "{pk}: partition {:#06x}, {} member; no other job on this host holds it",
                    pk.base(),
                    if pk.full() { "full" } else { "limited" }
                ),
            )),
        }
    }
    let conf = ibo
        .partitions
        .clone()
        .unwrap_or_else(|| sysfs.paths().etc.join("opensm/partitions.conf"));
    if ibo.ib.pkey.is_some() || conf.exists() {
        out.push(sm_partitions(sysfs, &conf, guid, ibo));
        out.push(subnet_manager(sysfs));
    }
    out
}

fn writable(p: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) reads the NUL-terminated path we own for the call's duration.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// The job's P_Key in the SM's partitions.conf, and nothing there that joins tenants.
fn sm_partitions(
    sysfs: &Sysfs,
    conf: &std::path::Path,
    guid: Option<ib::Guid>,
    ibo: &IbSelftest,
) -> Check {
    const NAME: &str = "SM partitions";
    let parts = match partitions::read(conf) {
        Ok(Some((_, p))) => p,
        Ok(None) => {
            return Check::bad(
                NAME,
                Status::Warn,
                format!("{} does not exist here", conf.display()),
                "on the node that runs opensm: 'hpmmap-vf partitions --out /etc/opensm/partitions.conf --signal-opensm' after each claim and release (or give the P_Key to UFM); pass --partitions FILE to check another copy",
            )
        }
        Err(e) => {
            return Check::bad(NAME, Status::Fail, e.to_string(), "fix the line (grammar: opensm(8), PARTITION CONFIGURATION)")
        }
    };
    let (recs, _) = partitions::live_records(sysfs, &[records::dir(sysfs)]);
    let mut jobs = partitions::jobs_from_records(&recs).unwrap_or_default();
    if let (Some(g), Some(pk)) = (guid, ibo.ib.pkey) {
        jobs.push(partitions::JobPartition {
            job: ibo.ib.job.clone().unwrap_or_else(|| "this job".into()),
            pkey: pk.base(),
            ports: vec![(g, pk.full(), "the VF this claim would take".into())],
        });
    }
    let problems = partitions::isolation_problems(&parts, &jobs);
    if !problems.is_empty() {
        return Check::bad(
            NAME,
            Status::Fail,
            format!("{}: {}", conf.display(), problems.join("; ")),
            "edit the admin's lines outside the hpmmap-vf block, then 'hpmmap-vf partitions --signal-opensm'",
        );
    }
    let Some(pk) = ibo.ib.pkey else {
        return Check::ok(
            NAME,
            format!(
                "{}: {} partitions, none joins tenants",
                conf.display(),
                parts.len()
            ),
        );
    };
    let found = parts.iter().find(|p| p.pkey == Some(pk.base()));
    match (found, guid) {
        (Some(p), Some(g)) if p.members.iter().any(|(m, _)| *m == partitions::Member::Guid(g.0)) => {
            Check::ok(NAME, format!("{}: P_Key {:#06x} is partition '{}' (line {}) with GUID {g}", conf.display(), pk.base(), p.name, p.line))
        }
        (Some(p), _) => Check::bad(
            NAME,
            Status::Warn,
            format!("{}: P_Key {:#06x} is partition '{}' (line {}), without this VF yet", conf.display(), pk.base(), p.name, p.line),
            "after the claim: 'hpmmap-vf partitions --out <this file> --signal-opensm' on the SM node",
        ),
        (None, _) => Check::bad(
            NAME,
            Status::Warn,
            format!("{}: no partition with P_Key {:#06x} yet", conf.display(), pk.base()),
            "after the claim: 'hpmmap-vf partitions --out <this file> --signal-opensm' on the SM node (UFM: add the GUID to the P_Key there)",
        ),
    }
}

fn subnet_manager(sysfs: &Sysfs) -> Check {
    let pids = partitions::find_opensm(sysfs);
    if pids.is_empty() {
        Check::bad(
            "subnet manager",
            Status::Warn,
            format!("no opensm process in {}", sysfs.proc("").display()),
            "fine if the SM runs on another node or in UFM / a managed switch; otherwise 'systemctl start opensm' on one node of the subnet",
        )
    } else {
        Check::ok(
            "subnet manager",
            format!(
                "opensm running (pid {})",
                pids.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }
}

/// Whether the PF's own interface is up: igb, for one, only switches the device into the
/// MSI-X mode that routes VF interrupts when the PF interface is opened (seen in the lab:
/// no VF interrupt while it was down), and VFs share the PF's link.
fn pf_link(sysfs: &Sysfs, pf: crate::pci::PciAddr) -> Check {
    let net = sysfs.pci_dev(pf).join("net");
    let ifs = sysfs.list(&net).ok().flatten().unwrap_or_default();
    if ifs.is_empty() {
        return Check::ok("PF interface", "no netdev on the PF (nothing to bring up)");
    }
    let up: Vec<&String> = ifs
        .iter()
        .filter(|i| {
            let f = sysfs
                .read_opt(&net.join(i).join("flags"))
                .ok()
                .flatten()
                .unwrap_or_default();
            u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).unwrap_or(0) & 1 != 0
        })
        .collect();
    if up.is_empty() {
        Check::bad(
            "PF interface",
            Status::Warn,
            format!("{} down ({})", ifs.join(", "), net.display()),
            format!("ip link set {} up (VFs share the PF's link; igb routes VF interrupts only while the PF is up)", ifs[0]),
        )
    } else {
        Check::ok(
            "PF interface",
            format!(
                "{} up",
                up.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )
    }
}

fn memlock(opts: &SelftestOptions) -> Check {
    let need = opts.guest_ram;
    let l = opts.limits;
    let have = l.memlock.map_or("unlimited".to_string(), gib);
    match l.memlock {
        None => Check::ok("RLIMIT_MEMLOCK", format!("unlimited; VFIO pins all {} of guest RAM", gib(need))),
        Some(_) if l.cap_ipc_lock => Check::ok("RLIMIT_MEMLOCK", format!("{have}, but CAP_IPC_LOCK exempts VFIO pinning of {}", gib(need))),
        Some(m) if m >= need => Check::ok("RLIMIT_MEMLOCK", format!("{have} >= {} of guest RAM", gib(need))),
        Some(_) => Check::bad(
            "RLIMIT_MEMLOCK",
            Status::Fail,
            format!("{have} < {} of guest RAM that VFIO pins", gib(need)),
            "run as root (CAP_IPC_LOCK), `ulimit -l unlimited`, LimitMEMLOCK=infinity in the systemd unit, or a memlock line in /etc/security/limits.conf",
        ),
    }
}

fn hugepages(sysfs: &Sysfs, ram: u64) -> Check {
    let dir = sysfs.sys("kernel/mm/hugepages/hugepages-1048576kB");
    let need = ram.div_ceil(GIB);
    let Ok(Some(free)) = sysfs.read_opt(&dir.join("free_hugepages")) else {
        return Check::bad(
            "1 GiB hugepages",
            Status::Fail,
            format!("no 1 GiB page size ({} missing)", dir.display()),
            "a CPU with pdpe1gb and a kernel with 1 GiB hugetlb support are needed",
        );
    };
    let free: u64 = free.trim().parse().unwrap_or(0);
    if free >= need {
        Check::ok(
            "1 GiB hugepages",
            format!(
                "{free} free, {need} needed for {} ({})",
                gib(ram),
                dir.display()
            ),
        )
    } else {
        Check::bad(
            "1 GiB hugepages",
            Status::Fail,
            format!(
                "{free} free, {need} needed for {} ({})",
                gib(ram),
                dir.display()
            ),
            format!(
                "hpmmap-offline reserve (or echo {need} > {})",
                dir.join("nr_hugepages").display()
            ),
        )
    }
}
