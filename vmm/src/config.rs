//! The command line (`hpmmap-vmm --help`) and its validation into a `VmConfig`.

use crate::arch::x86_64::layout::CMDLINE_MAX;
use crate::image;
use crate::memory::hugepages::PageSize;
use crate::memory::layout::PV_MMIO_BASE;
use crate::memory::RamBackend;
use crate::units::{parse_cpu_list, parse_size};
use clap::Parser;
use std::path::{Path, PathBuf};

pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// `--jail`'s checks that need no change to the host.
fn jail_options(
    dir: &Path,
    uid: u32,
    gid: u32,
    cgroup: &Option<PathBuf>,
) -> Result<crate::jail::JailOptions, ConfigError> {
    if uid == 0 || gid == 0 {
        return Err(ConfigError(format!(
            "--uid {uid} --gid {gid}: the jailed VMM must not keep root"
        )));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ConfigError(
            "--jail needs root: the VMM opens /dev/kvm, locks guest RAM and binds VFs before it \
             drops to --uid/--gid"
                .into(),
        ));
    }
    if !dir.is_absolute() {
        return Err(ConfigError(format!(
            "--jail {}: give an absolute path",
            dir.display()
        )));
    }
    let job_layout = dir.parent() == Some(Path::new(crate::jail::layout::JAIL_ROOT));
    if let Some(parent) = dir.parent().filter(|p| !job_layout && !p.is_dir()) {
        return Err(ConfigError(format!(
            "--jail {}: directory {} does not exist",
            dir.display(),
            parent.display()
        )));
    }
    if dir.exists() && !dir.is_dir() {
        return Err(ConfigError(format!(
            "--jail {}: exists and is not a directory",
            dir.display()
        )));
    }
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(ConfigError(format!(
            "--jail {}: exists and is not empty (the job's root must start empty)",
            dir.display()
        )));
    }
    if let Some(cg) = cgroup {
        let mut parent = cg.parent().unwrap_or(Path::new("/"));
        // A job's cgroup parent is made by the keeper when missing.
        if parent == Path::new(crate::jail::layout::CGROUP_ROOT) && !parent.exists() {
            parent = Path::new(crate::jail::layout::CGROUP_MOUNT);
        }
        if !parent.join("cgroup.procs").is_file()
            || !parent.join("cgroup.subtree_control").is_file()
        {
            return Err(ConfigError(format!(
                "--cgroup {}: {} is not a cgroup v2 directory",
                cg.display(),
                parent.display()
            )));
        }
        if cg.exists() {
            return Err(ConfigError(format!(
                "--cgroup {}: exists (the job's cgroup is created for it)",
                cg.display()
            )));
        }
    }
    Ok(crate::jail::JailOptions {
        dir: dir.to_path_buf(),
        uid,
        gid,
        cgroup: cgroup.clone(),
    })
}

fn serial_limit_arg(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    size_arg(s)
}

fn ipoib_arg(s: &str) -> Result<String, String> {
    let bad = || format!("'{s}' is not an IPv4 address with a prefix length (ADDR/LEN)");
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    addr.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?;
    match len.parse::<u8>() {
        Ok(1..=32) => Ok(s.to_string()),
        _ => Err(bad()),
    }
}

fn cpu_list_arg(s: &str) -> Result<CpuList, String> {
    parse_cpu_list(s).map(CpuList).map_err(|e| e.to_string())
}

/// Boot one job image (or kernel) in a KVM guest whose RAM is backed by 1 GiB host pages.
#[derive(Debug, Parser)]
#[command(
    name = "hpmmap-vmm",
    version,
    about = "Boot one job in a KVM guest whose RAM is backed by 1 GiB host pages",
    long_about = "Boot one job in a KVM guest whose RAM is one memfd of 1 GiB host pages, laid out so \
that every GiB of guest-physical RAM is exactly one host page, NUMA-bound, prefaulted and locked. \
The guest finds the hpmmap paravirtual device through `hpmmap.pv=0xfeb00000`, appended to its \
command line, and reports its exit status there; the VMM exits with it.",
    after_long_help = crate::exit::HELP,
    after_help = "Run with --help for the exit statuses. `hpmmap-vmm selftest --vf NAME [--mem SIZE]` checks a host for --vf."
)]
pub struct Args {
    /// Guest RAM, with K/M/G/T suffixes (binary: 1G = 2^30). A multiple of the host page size
    /// (--hugepages); RAM above 3 GiB is placed from 4 GiB up, past the 32-bit MMIO hole.
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    pub mem: u64,

    /// Number of vCPUs (1 to KVM's maximum, KVM_CAP_MAX_VCPUS), each on its own thread; past
    /// 254 the guest finds them in the ACPI MADT as x2APIC entries.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u32,

    /// Boot a job image directory made by `hpmmap-image build` (its manifest.json names the
    /// kernel, initramfs and command line).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "initrd"], required_unless_present = "kernel")]
    pub image: Option<PathBuf>,

    /// Guest kernel: an ELF vmlinux (PVH entry when it has the PVH note, else its 64-bit entry)
    /// or a bzImage (64-bit boot protocol).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initramfs to load for --kernel; placed at the top of the kernel's usable RAM.
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line for --kernel (default: "console=ttyS0 reboot=k panic=1 pci=off",
    /// without pci=off under --vf); with --image, appended to the image's. `hpmmap.pv=0xfeb00000` is always added.
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,

    /// Size of the hpmmap pool: 1 GiB-aligned guest-physical ranges, reserved in the guest's
    /// e820 map and announced by the PV device, taken from the top of RAM. A multiple of 1G.
    /// Default: all of RAM except the first GiB (the guest kernel's).
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    pub pool: Option<u64>,

    /// Host page size behind guest RAM: 1G (default), 2M or none (4 KiB). Too few free huge
    /// pages is an error, never a silent fallback.
    #[arg(long, value_name = "1G|2M|none", default_value = "1G")]
    pub hugepages: PageSize,

    /// Where guest RAM comes from: memfd (huge pages from the host's hugetlb pool, default) or
    /// devdax:/dev/daxX.Y, a device-dax device (memory set aside at boot or taken offline by
    /// `hpmmap-offline reserve --devdax`); its first --mem bytes are mapped, in pages of its
    /// alignment, which must be at least --hugepages.
    #[arg(long, value_name = "memfd|devdax:PATH", default_value = "memfd")]
    pub mem_backend: RamBackend,

    /// Bind guest RAM to this host NUMA node (mbind before it is touched).
    #[arg(long, value_name = "N")]
    pub numa_node: Option<u32>,

    /// A guest NUMA node: node=N,cpus=LIST,mem=SIZE[,host-node=H] (repeat per node; CPU
    /// ranges joined by ':', e.g. cpus=0-3:8-11; whole GiB adding up to --mem; every vCPU in
    /// one node), or `auto`: one guest node per host node with free 1G pages (`hpmmap-offline
    /// reserve --spread`), RAM and vCPUs split evenly, vCPUs pinned to the node's CPUs. Each
    /// node's RAM is its own memfd bound to its host node; the guest sees the nodes in its
    /// ACPI SRAT/SLIT.
    #[arg(long, value_name = "SPEC|auto", value_parser = crate::memory::numa::parse_arg)]
    pub numa: Vec<crate::memory::numa::NumaArg>,

    /// Pin vCPU i to the i-th CPU of this list (e.g. 0-3,8); needs at least --vcpus CPUs.
    #[arg(long, value_name = "LIST", value_parser = cpu_list_arg)]
    pub cpu_affinity: Option<CpuList>,

    /// Where the guest's serial console (COM1) goes: stdout, or a file (created or truncated).
    #[arg(long, value_name = "stdout|PATH", default_value = "stdout")]
    pub serial: String,

    /// Most guest console output passed on to --serial (K/M/G suffixes; 0: no limit). The
    /// guest is untrusted: past the limit its output is dropped, with one line saying so.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = serial_limit_arg)]
    pub serial_limit: u64,

    /// Confine the VMM for a tenant: once its devices are open it runs as --uid/--gid in new
    /// pid, mount, IPC, UTS and network namespaces whose root is DIR (created empty, or empty;
    /// removed at exit). A keeper process stays root to give the VF back, write the report
    /// and remove DIR and the cgroup when the VMM ends, however it ends. With --job ID, DIR
    /// is /run/hpmmap/jail/ID and the cgroup /sys/fs/cgroup/hpmmap/ID (where
    /// `hpmmap-offline recover` looks): give --jail alone.
    #[arg(long, value_name = "DIR", num_args = 0..=1, requires_all = ["uid", "gid"])]
    pub jail: Option<Option<PathBuf>>,

    /// The uid the jailed VMM runs as (not 0).
    #[arg(long, value_name = "UID", requires = "jail")]
    pub uid: Option<u32>,

    /// The gid the jailed VMM runs as (not 0).
    #[arg(long, value_name = "GID", requires = "jail")]
    pub gid: Option<u32>,

    /// A cgroup v2 directory to create for the jailed VMM (cpuset from --cpu-affinity and
    /// --numa-node, memory.max for its own overhead); removed at exit.
    #[arg(long, value_name = "PATH", requires = "jail")]
    pub cgroup: Option<PathBuf>,

    /// What a system call outside the VMM's seccomp filters does: kill (the process dies with
    /// SIGSYS), log (allowed, logged by the kernel as audit type 1326) or off (no filters).
    /// Each kind of thread has its own filter (vCPU, main, signal, console).
    #[arg(long, value_name = "kill|log|off", default_value = "kill")]
    pub seccomp: crate::jail::seccomp::SeccompLevel,

    /// Also write the report as JSON to PATH (atomically, at exit).
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,

    /// Pass an SR-IOV VF through to the guest with VFIO: an InfiniBand device (mlx5_0), a
    /// netdev (ib0), a PF PCI address (a free VF of it is taken) or a VF PCI address. The VF is
    /// bound to vfio-pci for the run and given back to its driver at exit; the guest sees it
    /// at PCI 00:01.0 and `pci=off` is dropped from the default command line. Check a host
    /// first with `hpmmap-vmm selftest --vf NAME`.
    #[arg(long, value_name = "NAME")]
    pub vf: Option<String>,

    /// With --vf naming a PF that has no VFs enabled: enable N VFs through sriov_numvfs for the
    /// run (disabled again at exit).
    #[arg(long, value_name = "N", requires = "vf")]
    pub vf_create: Option<u32>,

    /// With --vf on an InfiniBand VF: the node and port GUID it gets (64 bits, e.g.
    /// 0x0200010000a1b2c3 or 02:00:01:00:00:a1:b2:c3). Default: derived from the PF's GUID and
    /// the VF's index. The VF's original GUIDs and link policy come back at exit.
    #[arg(long, value_name = "GUID", requires = "vf")]
    pub vf_guid: Option<String>,

    /// With --vf on an InfiniBand VF: the job's partition key, 0x0001-0x7ffe, with 0x8000 set
    /// for full membership (e.g. 0x8123); the guest's IPoIB joins it (hpmmap.pkey= on its
    /// command line) and `hpmmap-vf partitions` puts the VF's GUID in it for the subnet manager.
    #[arg(long, value_name = "PKEY", requires = "vf")]
    pub pkey: Option<String>,

    /// With --vf on an InfiniBand VF: the guest's IPoIB address, ADDR/LEN (e.g. 10.4.0.7/16),
    /// passed as hpmmap.ipoib= on its command line (the job init sets it on the port, or on the
    /// --pkey child interface).
    #[arg(long, value_name = "ADDR/LEN", requires = "vf", value_parser = ipoib_arg)]
    pub ipoib: Option<String>,

    /// The job's name in the VF's claim record and in partitions.conf (default: pid<N>).
    #[arg(long = "job", value_name = "ID")]
    pub job_id: Option<String>,

    /// Prefault workers (default: one per CPU of --numa-node's node that the VMM may use,
    /// else one per CPU it may use).
    #[arg(long, value_name = "N", default_value_t = 0, hide_short_help = true)]
    pub prefault_workers: usize,

    /// Attach a file as a virtio-blk disk on the guest's PCI bus (repeat per disk):
    /// PATH[,ro][,serial=NAME]. A read-only disk refuses writes; the guest finds a disk by its
    /// serial (1-20 printable characters, default the file name) in /sys/block/vdX/serial.
    #[arg(long, value_name = "PATH[,ro][,serial=NAME]")]
    pub disk: Vec<String>,

    /// Bring the job's output back: DIR (created; an existing one must be empty) receives
    /// the files the guest's init writes as a tar stream on the disk with serial hpmmap-out.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// Size of --output's disk (sparse on the host), with K/M/G suffixes.
    #[arg(long, value_name = "SIZE", value_parser = size_arg, requires = "output")]
    pub output_size: Option<u64>,

    /// A virtio-vsock device (guest CID 3) whose host side is the Unix socket PATH (made
    /// by the VMM, removed when it ends): a client writes `CONNECT <port>` and a newline,
    /// reads `OK <host_port>` and a newline, then talks to the guest's listener on <port>;
    /// the guest's connections to host port P go to the Unix socket PATH_P.
    #[arg(long, value_name = "PATH")]
    pub vsock: Option<PathBuf>,
}

/// `hpmmap-vmm selftest --vf NAME [--mem SIZE]`: checks this host's VF passthrough
/// prerequisites and prints what to fix. Read-only.
#[derive(Debug, Parser)]
#[command(
    name = "hpmmap-vmm selftest",
    about = "Check this host's prerequisites for --vf (IOMMU, IOMMU group, vfio-pci, memlock, huge pages); changes nothing",
    after_help = "Exit status: 0 every prerequisite is met; 1 one or more are missing (each FAIL line says what to fix); 2 bad arguments."
)]
pub struct SelftestArgs {
    /// The device --vf would be given: mlx5_0, ib0, a PF or a VF PCI address.
    #[arg(long, value_name = "NAME")]
    pub vf: String,

    /// Guest RAM the VM will have (VFIO pins all of it for DMA), with K/M/G/T suffixes.
    #[arg(long, value_name = "SIZE", value_parser = size_arg, default_value = "1G")]
    pub mem: u64,

    /// The GUID the run would give an InfiniBand VF (checks the GUID files are writable).
    #[arg(long, value_name = "GUID")]
    pub vf_guid: Option<String>,

    /// The job's P_Key: checks it is valid and in the subnet manager's partitions.conf.
    #[arg(long, value_name = "PKEY")]
    pub pkey: Option<String>,

    /// The subnet manager's partitions.conf to check the P_Key in (default
    /// /etc/opensm/partitions.conf).
    #[arg(long, value_name = "PATH")]
    pub partitions: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialTarget {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub mem: u64,
    pub vcpus: u32,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub pool: Option<u64>,
    pub hugepages: PageSize,
    pub mem_backend: RamBackend,
    pub numa_node: Option<u32>,
    /// `--numa`, checked against --vcpus and --mem; resolved on the host when the VM is built.
    pub numa: Option<crate::memory::numa::NumaRequest>,
    pub cpu_affinity: Option<Vec<usize>>,
    pub serial: SerialTarget,
    /// Console bytes passed on to `serial` (0: no limit).
    pub serial_limit: u64,
    pub seccomp: crate::jail::seccomp::SeccompLevel,
    /// `--jail`: confinement once the devices are open.
    pub jail: Option<crate::jail::JailOptions>,
    pub report: Option<PathBuf>,
    pub prefault_workers: usize,
    pub job: Option<String>,
    /// `--vf NAME`, resolved to a VF only when the VM is built.
    pub vf: Option<String>,
    pub vf_create: Option<u32>,
    /// `--vf-guid`, `--pkey`, `--job`: what an InfiniBand VF gets besides the binding.
    pub vf_ib: hpmmap_vf::IbOptions,
    /// virtio-blk disks: the image's rootfs, then `--disk` in order.
    pub disks: Vec<crate::devices::virtio::block::DiskSpec>,
    pub output: Option<crate::devices::virtio::plan::OutputSpec>,
    /// `--vsock PATH`: checked here, bound when the VM is built.
    pub vsock: Option<PathBuf>,
    /// `--image`: its initramfs and rootfs sizes, for the report.
    pub image_bytes: Option<(Option<u64>, Option<u64>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn parent_must_exist(flag: &str, p: &Path) -> Result<(), ConfigError> {
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(d) = parent {
        if !d.is_dir() {
            return Err(ConfigError(format!(
                "{flag} {}: directory {} does not exist",
                p.display(),
                d.display()
            )));
        }
    }
    if p.is_dir() {
        return Err(ConfigError(format!(
            "{flag} {}: is a directory",
            p.display()
        )));
    }
    Ok(())
}

/// The base command line without its `pci=off` token: with --vf the guest must probe PCI
/// (it finds conf1 by itself).
pub fn without_pci_off(base: &str) -> String {
    base.split_whitespace()
        .filter(|w| *w != "pci=off")
        .collect::<Vec<_>>()
        .join(" ")
}

/// The guest command line: the base plus the PV device's address.
pub fn guest_cmdline(base: &str) -> String {
    let pv = format!("hpmmap.pv={PV_MMIO_BASE:#x}");
    let base = base.trim();
    if base.split_whitespace().any(|w| w.starts_with("hpmmap.pv=")) {
        base.to_string()
    } else if base.is_empty() {
        pv
    } else {
        format!("{base} {pv}")
    }
}

impl VmConfig {
    pub fn from_args(a: Args) -> Result<Self, ConfigError> {
        if a.vcpus == 0 {
            return Err(ConfigError(
                "--vcpus 0: a guest needs at least 1 vCPU".into(),
            ));
        }
        // The VMM's own defaults (and an image's) say pci=off; an explicit --cmdline is the
        // user's and is kept as written.
        // virtio disks, like a VF, are on the PCI bus the guest must then probe.
        let img = match &a.image {
            Some(dir) => Some(image::read(dir).map_err(|e| ConfigError(e.to_string()))?),
            None => None,
        };
        let output = a
            .output
            .as_ref()
            .map(|dir| crate::devices::virtio::plan::OutputSpec {
                dir: dir.clone(),
                bytes: a
                    .output_size
                    .unwrap_or(crate::devices::virtio::output::DEFAULT_SIZE),
            });
        let rootfs = img.as_ref().and_then(|b| b.rootfs.as_ref());
        let disks = crate::devices::virtio::plan::disks(
            &a.disk,
            rootfs.map(|r| r.path.as_path()),
            output.as_ref(),
        )
        .map_err(ConfigError)?;
        let image_bytes = img
            .as_ref()
            .map(|b| (b.initramfs_bytes, rootfs.map(|r| r.bytes)));
        if let Some(p) = &a.vsock {
            // With --jail, PATH is bound before the VMM enters the jail and its keeper
            // removes it; the guest's own connections (PATH_P) are refused there, since the
            // jailed VMM cannot see the host's paths.
            crate::devices::virtio::vsock::unix::check(p)
                .map_err(|e| ConfigError(e.to_string()))?;
        }
        let wants_pci =
            a.vf.is_some() || !disks.is_empty() || output.is_some() || a.vsock.is_some();
        let vmm_default = |s: &str| match wants_pci {
            true => without_pci_off(s),
            false => s.to_string(),
        };
        let (kernel, initrd, base, job) = match (&a.image, &a.kernel) {
            (Some(dir), _) => {
                let b = image::read(dir).map_err(|e| ConfigError(e.to_string()))?;
                let base = match &a.cmdline {
                    Some(extra) => format!("{} {}", vmm_default(&b.cmdline), extra),
                    None => vmm_default(&b.cmdline),
                };
                (b.kernel, b.initrd, base, b.job)
            }
            (None, Some(k)) => (
                k.clone(),
                a.initrd.clone(),
                a.cmdline
                    .clone()
                    .unwrap_or_else(|| vmm_default(DEFAULT_CMDLINE)),
                None,
            ),
            (None, None) => {
                return Err(ConfigError(
                    "one of --image DIR or --kernel PATH is required".into(),
                ))
            }
        };
        // Checked before anything on the host is looked at: a bad GUID or P_Key is input.
        let vf_ib = hpmmap_vf::IbOptions::parse(
            a.vf_guid.as_deref(),
            a.pkey.as_deref(),
            a.job_id.as_deref(),
        )
        .map_err(|e| ConfigError(e.to_string()))?;
        let base = match vf_ib.pkey {
            // The guest's IPoIB child interface joins the job's partition (images' ib_check).
            Some(p)
                if !base
                    .split_whitespace()
                    .any(|w| w.starts_with("hpmmap.pkey=")) =>
            {
                format!("{base} hpmmap.pkey={p}")
            }
            _ => base,
        };
        let base = match &a.ipoib {
            Some(ip) => format!("{base} hpmmap.ipoib={ip}"),
            None => base,
        };
        let jail = match (&a.jail, a.uid, a.gid) {
            (Some(dir), Some(uid), Some(gid)) => {
                let (dir, cgroup) = crate::jail::layout::resolve(
                    a.job_id.as_deref(),
                    dir.as_deref(),
                    a.cgroup.as_deref(),
                    crate::jail::layout::host_cgroup_v2(),
                )
                .map_err(ConfigError)?;
                Some(jail_options(&dir, uid, gid, &cgroup)?)
            }
            _ => None,
        };
        let cmdline = guest_cmdline(&base);
        if cmdline.len() >= CMDLINE_MAX {
            return Err(ConfigError(format!(
                "--cmdline: {} bytes with hpmmap.pv=, more than the {} the VMM passes",
                cmdline.len(),
                CMDLINE_MAX - 1
            )));
        }
        if cmdline.bytes().any(|b| b == 0) {
            return Err(ConfigError("--cmdline: contains a NUL byte".into()));
        }
        let serial = match a.serial.as_str() {
            "stdout" | "-" => SerialTarget::Stdout,
            p => {
                parent_must_exist("--serial", Path::new(p))?;
                SerialTarget::File(PathBuf::from(p))
            }
        };
        if let Some(r) = &a.report {
            parent_must_exist("--report", r)?;
        }
        if let Some(CpuList(cpus)) = &a.cpu_affinity {
            if cpus.len() < a.vcpus as usize {
                return Err(ConfigError(format!(
                    "--cpu-affinity {}: {} CPUs for {} vCPUs (one CPU per vCPU)",
                    cpus.iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    cpus.len(),
                    a.vcpus
                )));
            }
            let allowed = crate::vcpu::allowed_cpus();
            if let Some(bad) = cpus.iter().find(|c| !allowed.contains(c)) {
                return Err(ConfigError(format!(
                    "--cpu-affinity: CPU {bad} is not available to this process (allowed: {})",
                    allowed
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                )));
            }
        }
        let numa = crate::memory::numa::NumaRequest::from_args(&a.numa, a.vcpus, a.mem)
            .map_err(|e| ConfigError(e.to_string()))?;
        if numa.is_some() {
            use crate::memory::numa::NumaError;
            if a.numa_node.is_some() {
                return Err(ConfigError(NumaError::WithNumaNode.to_string()));
            }
            if matches!(a.mem_backend, RamBackend::DevDax(_)) {
                return Err(ConfigError(NumaError::WithDevDax.to_string()));
            }
        }
        if let Some(v) = &a.vf {
            if v.trim().is_empty() || v.contains('/') {
                return Err(ConfigError(format!(
                    "--vf '{v}': not a device name or PCI address"
                )));
            }
        }
        Ok(VmConfig {
            mem: a.mem,
            vcpus: a.vcpus,
            kernel,
            initrd,
            cmdline,
            pool: a.pool,
            hugepages: a.hugepages,
            mem_backend: a.mem_backend,
            numa_node: a.numa_node,
            numa,
            cpu_affinity: a.cpu_affinity.map(|c| c.0),
            serial,
            serial_limit: a.serial_limit,
            seccomp: a.seccomp,
            jail,
            report: a.report,
            prefault_workers: a.prefault_workers,
            job,
            vf: a.vf,
            vf_create: a.vf_create,
            vf_ib,
            disks,
            output,
            vsock: a.vsock,
            image_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<VmConfig, String> {
        let mut v = vec!["hpmmap-vmm"];
        v.extend_from_slice(args);
        let a = Args::try_parse_from(v).map_err(|e| e.to_string())?;
        VmConfig::from_args(a).map_err(|e| e.0)
    }

    #[test]
    fn defaults() {
        let c = parse(&["--mem", "18G", "--kernel", "/k"]).unwrap();
        assert_eq!(c.mem, 18 << 30);
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.hugepages, PageSize::Huge1G);
        assert_eq!(c.pool, None);
        assert_eq!(c.serial, SerialTarget::Stdout);
        assert_eq!(c.cmdline, format!("{DEFAULT_CMDLINE} hpmmap.pv=0xfeb00000"));
    }

    #[test]
    fn all_flags() {
        let c = parse(&[
            "--mem",
            "4G",
            "--vcpus",
            "2",
            "--kernel",
            "/k",
            "--initrd",
            "/rd",
            "--cmdline",
            "console=ttyS0",
            "--pool",
            "2G",
            "--hugepages",
            "2M",
            "--numa-node",
            "0",
            "--cpu-affinity",
            "0-1",
            "--serial",
            "/tmp/x.log",
            "--report",
            "/tmp/r.json",
        ])
        .unwrap();
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.pool, Some(2 << 30));
        assert_eq!(c.hugepages, PageSize::Huge2M);
        assert_eq!(c.cpu_affinity, Some(vec![0, 1]));
        assert_eq!(c.serial, SerialTarget::File("/tmp/x.log".into()));
        assert_eq!(c.cmdline, "console=ttyS0 hpmmap.pv=0xfeb00000");
    }

    #[test]
    fn infiniband_options_are_checked_and_the_pkey_reaches_the_guest() {
        let c = parse(&[
            "--mem",
            "1G",
            "--kernel",
            "/k",
            "--vf",
            "ib0",
            "--pkey",
            "0x8123",
            "--vf-guid",
            "02:00:01:00:00:a1:b2:c3",
            "--job",
            "job42",
            "--ipoib",
            "10.4.0.7/16",
        ])
        .unwrap();
        assert_eq!(c.vf_ib.pkey.unwrap().to_string(), "0x8123");
        assert_eq!(c.vf_ib.guid.unwrap().to_string(), "0x0200010000a1b2c3");
        assert_eq!(c.vf_ib.job.as_deref(), Some("job42"));
        assert!(c.cmdline.contains(" hpmmap.pkey=0x8123 "), "{}", c.cmdline);
        assert!(
            c.cmdline.contains(" hpmmap.ipoib=10.4.0.7/16 "),
            "{}",
            c.cmdline
        );
        for (args, want) in [
            (&["--pkey", "0x7fff"][..], "0x7fff"),
            (&["--pkey", "0x0000"][..], "0x0000"),
            (&["--pkey", "0x18000"][..], "0x18000"),
            (&["--vf-guid", "0x123"][..], "0x123"),
            (&["--vf-guid", "zz:00:01:00:00:a1:b2:c3"][..], "zz:00"),
            (&["--ipoib", "10.4.0.7"][..], "ADDR/LEN"),
            (&["--ipoib", "10.4.0.7/33"][..], "ADDR/LEN"),
        ] {
            let mut v = vec!["--mem", "1G", "--kernel", "/k", "--vf", "ib0"];
            v.extend_from_slice(args);
            let e = parse(&v).unwrap_err();
            // One line naming the value (clap adds a usage hint below its own).
            assert!(e.lines().next().unwrap().contains(want), "{args:?}: {e}");
        }
        // Without --vf there is no VF to give a key to.
        let e = parse(&["--mem", "1G", "--kernel", "/k", "--pkey", "0x8001"]).unwrap_err();
        assert!(e.contains("--vf"), "{e}");
    }

    #[test]
    fn refusals_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--mem", "12X", "--kernel", "/k"], "--mem"),
            (
                &["--mem", "1G", "--kernel", "/k", "--vcpus", "0"],
                "--vcpus 0",
            ),
            (
                &["--mem", "1G", "--kernel", "/k", "--hugepages", "3G"],
                "--hugepages",
            ),
            (
                &["--mem", "1G", "--kernel", "/k", "--cpu-affinity", "x"],
                "--cpu-affinity",
            ),
            (
                &[
                    "--mem",
                    "1G",
                    "--kernel",
                    "/k",
                    "--vcpus",
                    "4",
                    "--cpu-affinity",
                    "0",
                ],
                "--cpu-affinity 0",
            ),
            (
                &["--mem", "1G", "--kernel", "/k", "--cpu-affinity", "4095"],
                "--cpu-affinity",
            ),
            (
                &[
                    "--mem",
                    "1G",
                    "--kernel",
                    "/k",
                    "--serial",
                    "/no/such/dir/log",
                ],
                "--serial /no/such/dir/log",
            ),
            (
                &[
                    "--mem",
                    "1G",
                    "--kernel",
                    "/k",
                    "--report",
                    "/no/such/dir/r.json",
                ],
                "--report",
            ),
            (
                &["--mem", "1G", "--image", "/no/such/image"],
                "--image /no/such/image",
            ),
            (&["--mem", "1G"], "--image"),
            (
                &["--mem", "1G", "--image", "/x", "--kernel", "/k"],
                "--image",
            ),
        ];
        for (args, want) in cases {
            let e = parse(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
        }
        let long = "x".repeat(5000);
        assert!(
            parse(&["--mem", "1G", "--kernel", "/k", "--cmdline", &long])
                .unwrap_err()
                .starts_with("--cmdline")
        );
    }

    #[test]
    fn vf_flags() {
        let c = parse(&["--mem", "1G", "--kernel", "/k", "--vf", "ib0"]).unwrap();
        assert_eq!(c.vf.as_deref(), Some("ib0"));
        assert_eq!(c.vf_create, None);
        assert_eq!(
            c.cmdline,
            "console=ttyS0 reboot=k panic=1 hpmmap.pv=0xfeb00000"
        );
        let c = parse(&[
            "--mem",
            "1G",
            "--kernel",
            "/k",
            "--vf",
            "0000:3b:00.0",
            "--vf-create",
            "4",
        ])
        .unwrap();
        assert_eq!(c.vf.as_deref(), Some("0000:3b:00.0"));
        assert_eq!(c.vf_create, Some(4));
        // An explicit command line is the user's: kept as written.
        let c = parse(&[
            "--mem",
            "1G",
            "--kernel",
            "/k",
            "--vf",
            "ib0",
            "--cmdline",
            "console=ttyS0 pci=off",
        ])
        .unwrap();
        assert_eq!(c.cmdline, "console=ttyS0 pci=off hpmmap.pv=0xfeb00000");
        // Without --vf nothing changes.
        let c = parse(&["--mem", "1G", "--kernel", "/k"]).unwrap();
        assert!(c.cmdline.contains("pci=off"));
        assert_eq!(c.vf, None);
    }

    #[test]
    fn vf_refusals_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--mem", "1G", "--kernel", "/k", "--vf-create", "2"],
                "--vf",
            ),
            (
                &[
                    "--mem",
                    "1G",
                    "--kernel",
                    "/k",
                    "--vf",
                    "ib0",
                    "--vf-create",
                    "x",
                ],
                "--vf-create",
            ),
            (&["--mem", "1G", "--kernel", "/k", "--vf", " "], "--vf ' '"),
            (
                &["--mem", "1G", "--kernel", "/k", "--vf", "../etc"],
                "--vf '../etc'",
            ),
        ];
        for (args, want) in cases {
            let e = parse(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn pci_off_is_removed_as_a_token() {
        assert_eq!(without_pci_off("a pci=off b"), "a b");
        assert_eq!(without_pci_off("pci=offx pci=off"), "pci=offx");
        assert_eq!(without_pci_off("a"), "a");
    }

    #[test]
    fn pv_address_is_added_once() {
        assert_eq!(guest_cmdline("a b"), "a b hpmmap.pv=0xfeb00000");
        assert_eq!(
            guest_cmdline("a hpmmap.pv=0xfeb00000"),
            "a hpmmap.pv=0xfeb00000"
        );
        assert_eq!(guest_cmdline(""), "hpmmap.pv=0xfeb00000");
    }
}
