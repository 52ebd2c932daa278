//! The nested KVM lab: Debian's kernel as L1 under QEMU/TCG with SVM+NPT, 1 GiB pages
//! reserved on its command line, an emulated VT-d IOMMU and an igb SR-IOV NIC, booted
//! from an initramfs this crate builds (kvm_amd, vfio-pci, igb and their dependencies,
//! busybox, the KVM probe, the workspace's host binaries, files passed in). `Lab::run`
//! boots it, runs one shell command inside, and returns its output and exit status.
//!
//! Everything measured in the lab is an emulation figure (nested lab under QEMU/TCG):
//! it proves behaviour and counters, never speed.

mod args;
pub mod cluster;
pub mod extras;
pub mod pmem;
pub use args::{parse_add, parse_mem, parse_size, Add};

use crate::cpio::Archive;
use crate::debs::DebCache;
use crate::init::prelude;
use crate::kernel::{default_abi, fetch_kernel, Kernel, KernelError};
use crate::progress::step;
use crate::qemu::{self, QemuError};
use crate::rootfs::{self, RootfsError};
use crate::workspace::{self, PartError};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Modules L1 loads at boot: real KVM with nested paging (kvm_amd and what it needs),
/// VFIO for device assignment, the igb PF and VF drivers, and the nvdimm / device-dax
/// drivers that turn a `--pmem` range into /dev/pmem0 and, reconfigured, /dev/dax0.0.
pub const LAB_MODULES: [&str; 14] = [
    "irqbypass",
    "ccp",
    "kvm",
    "kvm_amd",
    "vfio",
    "vfio_iommu_type1",
    "vfio_pci",
    "igb",
    "igbvf",
    "tun",
    "nd_e820",
    "nd_pmem",
    "dax_pmem",
    "device_dax",
];

/// Where a `--pmem` range starts in L1's physical memory: the first byte above the 32-bit
/// hole, which q35 fills with RAM whenever L1 has more than 2 GiB below it.
pub const PMEM_BASE: u64 = 4 << 30;
/// The most boots `run_rebooting` and `hpmmap-lab --boots` allow: enough that L1 crashes
/// (QEMU/TCG nested SVM, several in a row seen in CI) do not fail a run, few enough that a
/// lab that can never work gives up in minutes.
pub const MAX_BOOTS: u32 = 5;
/// RAM q35 places below 4 GiB when L1 has 2.75 GiB or more.
const Q35_LOW_RAM: u64 = 2 << 30;

/// Host binaries of the workspace the lab carries when they have been built.
pub const WORKSPACE_BINS: [&str; 2] = ["hpmmap-vmm", "hpmmap-offline"];

pub const LAB_BEGIN: &str = "HPMMAP-LAB-BEGIN";
pub const LAB_END: &str = "HPMMAP-LAB-END";

/// L1 writes a heartbeat this often; a pause of `L1_STALL` means it stopped. Under QEMU/TCG's
/// nested SVM an L1 was seen to go idle for good while its KVM ran an L2: every vCPU asleep,
/// no timer firing, nothing on the console, until the run's timeout (14 min in that run).
/// A busy L1 still beats: the loop needs a few milliseconds of CPU every few seconds.
const L1_BEAT: Duration = Duration::from_secs(5);
const L1_STALL: Duration = Duration::from_secs(90);

/// What L1's console shows when its own kernel died: Debian 6.1 under QEMU/TCG's nested SVM
/// oopses now and then while its KVM runs an L2 (recursive faults at `error_entry` on the
/// vCPU thread, then a panic; vmm/README.md, Known issue).
const L1_CRASH_SIGNS: [&str; 4] = [
    "stack guard page was hit",
    "corrupted stack end",
    "Kernel panic",
    "Oops:",
];

#[derive(Debug, Error)]
pub enum LabError {
    #[error("--mem {0}: {1}")]
    Mem(String, String),
    #[error("--pmem {0}: {1}")]
    Pmem(String, String),
    #[error("--pmem-ranges {0}: {1}")]
    PmemRanges(u32, String),
    #[error("--cpus {0}: must be between 1 and 16")]
    Cpus(u32),
    #[error("--numa-nodes {0}: {1}")]
    NumaNodes(u32, String),
    #[error("--add {0}: {1}")]
    Add(String, String),
    #[error("--append {0}: {1}")]
    Append(String, String),
    #[error("--modules {0}: {1}")]
    Module(String, String),
    #[error("--kernel-at {0}: {1}")]
    KernelAt(String, String),
    #[error("--hpmmap-ko: {0}")]
    HpmmapKo(String),
    #[error("command {0:?} does not exist in the lab (not a busybox applet, a lab binary, a shell builtin or an --add'ed file); lab binaries: {1}")]
    UnknownCommand(String, String),
    #[error("empty command")]
    EmptyCommand,
    #[error("--stall-secs {0}: must be at least {1} (L1 beats every 5 s)")]
    Stall(u64, u64),
    #[error("--nodes {0}: must be between 1 and 8")]
    Nodes(u32),
    #[error("building slurm/spank (needs Debian's libslurm-dev: scripts/setup-host.sh): {0}")]
    Spank(String),
    #[error("the lab needs qemu-system-x86_64 with the igb device (QEMU 8.0 or newer; scripts/setup-host.sh installs it from bookworm-backports)")]
    NoIgb,
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Packages(#[from] crate::packages::PackageError),
    #[error(transparent)]
    Part(#[from] PartError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

impl LabError {
    /// Errors in what the caller asked for (the CLI exits 2 for these).
    /// Whether L1 itself failed: its kernel crashed (no end marker came, an oops or panic is
    /// on its console) or it stopped (its heartbeat stood still). User space in L1 cannot
    /// cause either, and everything in L1 starts from its initramfs, so callers may boot L1
    /// again.
    pub fn is_l1_failure(&self) -> bool {
        match self {
            LabError::Qemu(QemuError::Stalled { .. }) => true,
            LabError::Qemu(QemuError::NoStatus { tail, .. } | QemuError::Timeout { tail, .. }) => {
                L1_CRASH_SIGNS.iter().any(|sig| tail.contains(sig))
            }
            _ => false,
        }
    }

    pub fn is_input(&self) -> bool {
        matches!(
            self,
            LabError::Mem(..)
                | LabError::Pmem(..)
                | LabError::PmemRanges(..)
                | LabError::Cpus(_)
                | LabError::NumaNodes(..)
                | LabError::Nodes(_)
                | LabError::Add(..)
                | LabError::Append(..)
                | LabError::Module(..)
                | LabError::KernelAt(..)
                | LabError::Stall(..)
                | LabError::UnknownCommand(..)
                | LabError::EmptyCommand
        )
    }
}

#[derive(Debug, Clone)]
pub struct LabConfig {
    /// L1 RAM in bytes.
    pub mem: u64,
    pub cpus: u32,
    /// 1 GiB hugetlb pages reserved on L1's command line.
    pub hugepages_1g: u32,
    /// Bytes of L1 RAM set aside as a legacy pmem range (`memmap=SIZE!4G`, as a host that
    /// keeps memory from its kernel at boot); 0 for none. L1 sees it as namespace0.0.
    pub pmem: u64,
    /// Split `pmem` into this many ranges, 1 GiB of RAM apart (`pmem::memmap_args`): L1 sees
    /// namespace0.0, namespace1.0, ... (one nvdimm region, hence one dax device, each).
    pub pmem_ranges: u32,
    /// L1's NUMA nodes (QEMU `-numa`): 0 or 1 for none; N splits L1's RAM and vCPUs into N
    /// nodes in contiguous blocks, with `hugepages_1g` pages on each node and distance 21
    /// between nodes (a two-socket host in miniature). Node 0 gets 1 GiB more than the others
    /// (`numa_node_sizes`): it also holds L1's kernel and lies around the 32-bit hole, and with
    /// equal shares its boot-time 1 GiB pages did not fit (measured: 1 of 2 on node 0).
    pub numa_nodes: u32,
    pub timeout: Duration,
    /// L1 is taken for stopped (and killed) when its heartbeat stands still this long.
    pub stall: Duration,
    pub adds: Vec<Add>,
    /// Look for hpmmap-vmm / hpmmap-offline in these directories (first hit wins);
    /// empty: `default_bin_dirs`.
    pub bin_dirs: Vec<PathBuf>,
    pub cache: DebCache,
    pub workspace: PathBuf,
    /// Where console and output logs go (default: a directory under the temp dir).
    pub work: Option<PathBuf>,
    /// The igb NIC's QEMU `-netdev` backend (its `id` must be `n0`); None: user networking.
    /// `lab::cluster` joins several L1s with a socket backend.
    pub netdev: Option<String>,
    /// The igb NIC's MAC address (None: QEMU's default); L1s on one network need their own.
    pub mac: Option<String>,
    /// More words for L1's kernel command line, after the lab's (`extras::check_append`).
    pub append: Vec<String>,
    /// More modules of L1's kernel, loaded at boot after `LAB_MODULES` (with what they
    /// depend on).
    pub modules: Vec<String>,
    /// Build the hpmmap guest module for L1's kernel and place it in L1, not loaded
    /// (`extras::add_hpmmap_ko`).
    pub hpmmap_ko: bool,
    /// Place L1's own bzImage at this path in L1 (an L2 booting Debian's kernel).
    pub kernel_at: Option<String>,
    /// L1's CPU physical address bits (QEMU `phys-bits`); None: the CPU model's (40).
    /// Below 40 SeaBIOS keeps 64-bit prefetchable windows below 4 GiB even when L1 has RAM
    /// above it, so the igb VF BARs stay where QEMU's VF registers answer (`VF_PHYS_BITS`).
    pub phys_bits: Option<u8>,
}

/// `LabConfig::phys_bits` for an L1 with more than 2560M whose VFs must carry traffic:
/// with 40 bits (and RAM above 4 GiB) SeaBIOS puts the root port's 64-bit prefetchable
/// window at 0xc000000000, where the VF registers read 0 (igbvf: "PF still in reset");
/// with 36 it is 0xfea00000 and they answer as in a 2560M L1 (VF STATUS 0x800c8483 in
/// both; nested lab, 2026-12-06). 36 bits is 64 GiB: RAM plus QEMU's 32 GiB 64-bit PCI
/// hole must fit, so at most ~30 GiB of L1 RAM.
pub const VF_PHYS_BITS: u8 = 36;

impl Default for LabConfig {
    fn default() -> Self {
        Self {
            mem: 8 << 30,
            cpus: 2,
            hugepages_1g: 2,
            pmem: 0,
            pmem_ranges: 1,
            numa_nodes: 0,
            timeout: Duration::from_secs(600),
            stall: L1_STALL,
            adds: vec![],
            bin_dirs: vec![],
            cache: DebCache::from_env(),
            workspace: workspace::root(),
            work: None,
            netdev: None,
            mac: None,
            append: vec![],
            modules: vec![],
            hpmmap_ko: false,
            kernel_at: None,
            phys_bits: None,
        }
    }
}

impl LabConfig {
    /// RAM per NUMA node in bytes, node 0 first: whole GiB, the others equal, node 0 the rest
    /// (at least 1 GiB more). Empty without NUMA nodes.
    pub fn numa_node_sizes(&self) -> Vec<u64> {
        if self.numa_nodes < 2 {
            return vec![];
        }
        let n = u64::from(self.numa_nodes);
        let per = (self.mem.saturating_sub(1 << 30) / n) >> 30 << 30;
        let mut v = vec![per; n as usize];
        v[0] = self.mem - per * (n - 1);
        v
    }

    pub fn validate(&self) -> Result<(), LabError> {
        if !(1..=16).contains(&self.cpus) {
            return Err(LabError::Cpus(self.cpus));
        }
        for w in &self.append {
            extras::check_append(w)?;
        }
        for m in &self.modules {
            extras::check_module(m)?;
        }
        if let Some(k) = &self.kernel_at {
            extras::check_kernel_at(k)?;
        }
        // Shorter than two beats would take a healthy L1 for a stopped one.
        if self.stall < 2 * L1_BEAT {
            return Err(LabError::Stall(
                self.stall.as_secs(),
                (2 * L1_BEAT).as_secs(),
            ));
        }
        let mem = format!("{}M", self.mem >> 20);
        if self.numa_nodes > 1 {
            let bad = |why: String| Err(LabError::NumaNodes(self.numa_nodes, why));
            if self.numa_nodes > self.cpus {
                return bad(format!("more nodes than --cpus {}", self.cpus));
            }
            if self.pmem > 0 {
                return bad("not with --pmem".into());
            }
            if !self.mem.is_multiple_of(1 << 30) {
                return bad(format!(
                    "--mem {mem} does not split into whole GiB per node"
                ));
            }
            // Each node needs its own 1 GiB pages and room for L1's kernel beside them.
            if self.numa_node_sizes()[1] < (u64::from(self.hugepages_1g) + 1) << 30 {
                return bad(format!(
                    "--mem {mem} leaves a node too small for {} reserved 1 GiB pages and 1 GiB for L1 itself",
                    self.hugepages_1g
                ));
            }
        }
        if !self.pmem.is_multiple_of(1 << 30) {
            return Err(LabError::Pmem(
                format!("{}M", self.pmem >> 20),
                "must be whole GiB".into(),
            ));
        }
        let need = ((u64::from(self.hugepages_1g) + 1) << 30) + self.pmem;
        if self.mem < need {
            return Err(LabError::Mem(
                mem,
                format!(
                    "too small for {} reserved 1 GiB pages, {} GiB of pmem and 1 GiB for L1 itself",
                    self.hugepages_1g,
                    self.pmem >> 30
                ),
            ));
        }
        if let Some(why) = pmem::split_problem(self.pmem, self.pmem_ranges) {
            return Err(LabError::PmemRanges(self.pmem_ranges, why));
        }
        let top = pmem::end(self.pmem, self.pmem_ranges);
        if self.pmem > 0 && self.mem < Q35_LOW_RAM + top - PMEM_BASE {
            return Err(LabError::Mem(
                mem,
                format!(
                    "--pmem {}G in {} range(s) starts at 4 GiB and needs L1 RAM up to {} GiB (--mem {}G or more)",
                    self.pmem >> 30,
                    self.pmem_ranges,
                    top >> 30,
                    (Q35_LOW_RAM + top - PMEM_BASE) >> 30
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct LabOutput {
    /// The command's exit status in L1.
    pub status: i32,
    /// The command's stdout and stderr (L1's second serial port).
    pub output: String,
    /// L1's console (kernel and init messages).
    pub console: String,
    pub elapsed: Duration,
}

#[derive(Clone)]
pub struct Lab {
    cfg: LabConfig,
    kernel: Kernel,
    base: Archive,
    /// Names a command may start with (applets, lab binaries, added files).
    commands: BTreeSet<String>,
    lab_bins: Vec<String>,
}

const SH_BUILTINS: &[&str] = &[
    "cd", "echo", "exit", "export", "for", "if", "while", "until", "case", "set", "test", "[",
    "true", "false", "read", "printf", "wait", "kill", "exec", "eval", "trap", "type", "command",
    "ulimit", "umask", ".", ":", "{", "(", "!", "sleep",
];

fn lab_init(abi: &str) -> String {
    let mut s = prelude(abi);
    let beat = L1_BEAT.as_secs();
    s.push_str(&format!(
        r#"ip link set lo up 2>/dev/null
stty -F /dev/ttyS1 raw -echo 2>/dev/null
# The heartbeat the host watches (ttyS2 -> alive.log): when it stops, L1 stopped.
(while :; do echo .; sleep {beat}; done) > /dev/ttyS2 2>/dev/null &
cd /root
echo "{LAB_BEGIN}"
sh /lab/cmd > /dev/ttyS1 2>&1 < /dev/null
rc=$?
echo "{LAB_END} $rc"
sync
reboot -f
poweroff -f
while :; do sleep 60; done
"#
    ));
    s
}

impl Lab {
    /// Gathers L1's kernel, modules, busybox, the KVM probe and the workspace binaries.
    pub fn prepare(cfg: LabConfig) -> Result<Lab, LabError> {
        cfg.validate()?;
        for a in &cfg.adds {
            if !a.host.exists() {
                return Err(LabError::Add(
                    a.spec.clone(),
                    format!("{} does not exist", a.host.display()),
                ));
            }
        }
        let q = qemu::qemu_binary().ok_or(QemuError::Missing)?;
        if !qemu::has_device(&q, "igb") {
            return Err(LabError::NoIgb);
        }
        let abi = default_abi(&cfg.cache)?;
        step(format!("lab: L1 kernel {abi}"));
        let kernel = fetch_kernel(&cfg.cache, &abi)?;
        let bb = rootfs::busybox(&cfg.cache)?;
        let mut a = rootfs::base(&bb)?;
        let modules: Vec<&str> = LAB_MODULES
            .iter()
            .copied()
            .chain(cfg.modules.iter().map(String::as_str))
            .collect();
        rootfs::add_modules(&mut a, &kernel, &modules).map_err(extras::module_error)?;
        if cfg.hpmmap_ko {
            extras::add_hpmmap_ko(&mut a, &cfg.cache, &kernel, &cfg.workspace)?;
        }
        if let Some(k) = &cfg.kernel_at {
            extras::add_kernel_copy(&mut a, &kernel, k)?;
        }
        let mut lab_bins = Vec::new();
        let probe = workspace::cargo_static(
            &cfg.workspace,
            "hpmmap-kvm-probe",
            "hpmmap-kvm-probe",
            Some(&cfg.workspace.join("images/kvm-probe/Cargo.toml")),
        )?;
        rootfs::add_program(&mut a, "lab/bin/hpmmap-kvm-probe", &probe)?;
        lab_bins.push("hpmmap-kvm-probe".to_string());
        for name in WORKSPACE_BINS {
            if carry_bin(&mut a, &cfg, name)? {
                lab_bins.push(name.to_string());
            }
        }
        a.file("init", 0o755, lab_init(&abi).into_bytes());
        let mut commands: BTreeSet<String> = bb
            .applets
            .iter()
            .map(|p| p.rsplit('/').next().unwrap().to_string())
            .collect();
        commands.insert("busybox".into());
        commands.extend(lab_bins.iter().cloned());
        commands.extend(SH_BUILTINS.iter().map(|s| s.to_string()));
        Ok(Lab {
            cfg,
            kernel,
            base: a,
            commands,
            lab_bins,
        })
    }

    pub fn config(&self) -> &LabConfig {
        &self.cfg
    }

    /// The same lab with another configuration (e.g. each node of a cluster its own NIC
    /// and log directory); nothing is gathered again.
    pub fn with_config(&self, cfg: LabConfig) -> Result<Lab, LabError> {
        cfg.validate()?;
        Ok(Lab {
            cfg,
            ..self.clone()
        })
    }

    /// L1's initramfs before a run's command and files: `lab::cluster` adds Slurm here.
    pub fn base_mut(&mut self) -> &mut Archive {
        &mut self.base
    }

    /// Makes `name` acceptable as the first word of a command.
    pub fn allow_command(&mut self, name: &str) {
        self.commands.insert(name.to_string());
    }

    /// Binaries under /lab/bin in L1 (on PATH).
    pub fn lab_bins(&self) -> &[String] {
        &self.lab_bins
    }

    fn check_command(&self, cmd: &str, extra: &[Add]) -> Result<(), LabError> {
        // The first word of the first line that is not blank or a shell comment.
        let first = cmd
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .and_then(|l| l.split_whitespace().next())
            .ok_or(LabError::EmptyCommand)?;
        // Only a plain word can be checked before boot; shell syntax is L1's business.
        if first.contains(|c: char| "$`'\"();&|<>=*?{}".contains(c)) {
            return Ok(());
        }
        let known = if first.contains('/') {
            let in_adds = self.cfg.adds.iter().chain(extra).any(|a| {
                a.guest == first
                    || first.starts_with(&format!("{}/", a.guest.trim_end_matches('/')))
            });
            in_adds || self.base.contains(first)
        } else {
            self.commands.contains(first)
                || self
                    .cfg
                    .adds
                    .iter()
                    .chain(extra)
                    .any(|a| a.guest.rsplit('/').next() == Some(first))
        };
        if known {
            Ok(())
        } else {
            Err(LabError::UnknownCommand(
                first.to_string(),
                self.lab_bins.join(", "),
            ))
        }
    }

    /// Boots L1, runs `cmd` with `sh` in /root, returns its output and status. `extra`
    /// files are added for this run only.
    pub fn run_with(&self, cmd: &str, extra: &[Add]) -> Result<LabOutput, LabError> {
        self.check_command(cmd, extra)?;
        let work = match &self.cfg.work {
            Some(w) => w.clone(),
            None => std::env::temp_dir().join(format!("hpmmap-lab-{}", crate::progress::unique())),
        };
        std::fs::create_dir_all(&work).map_err(|e| LabError::Io(work.clone(), e))?;
        let mut a = self.base.clone();
        a.file("lab/cmd", 0o644, format!("{cmd}\n").into_bytes());
        for add in self.cfg.adds.iter().chain(extra) {
            add_path(&mut a, &add.host, &add.guest)?;
        }
        let initrd = work.join("initramfs.cpio");
        // Uncompressed: the lab carries large debug binaries and L1 unpacks it faster.
        std::fs::write(&initrd, a.to_newc()).map_err(|e| LabError::Io(initrd.clone(), e))?;
        let console = work.join("console.log");
        let output = work.join("output.log");
        let _ = std::fs::remove_file(&output);
        let alive = work.join("alive.log");
        let _ = std::fs::remove_file(&alive);
        let args = self.qemu_args(&initrd, &console, &output, &alive);
        step(format!(
            "lab: booting L1 (QEMU/TCG, {} vCPUs, {} MiB, {} x 1 GiB pages{}{}); logs in {}",
            self.cfg.cpus,
            self.cfg.mem >> 20,
            self.cfg.hugepages_1g,
            if self.cfg.numa_nodes > 1 {
                format!(" per node, {} NUMA nodes", self.cfg.numa_nodes)
            } else {
                String::new()
            },
            if self.cfg.pmem > 0 {
                format!(
                    ", {} GiB pmem at 4 GiB in {} range(s)",
                    self.cfg.pmem >> 30,
                    self.cfg.pmem_ranges
                )
            } else {
                String::new()
            },
            work.display()
        ));
        let heartbeat = qemu::Heartbeat {
            file: alive,
            stall: self.cfg.stall,
        };
        let f = qemu::run_watched(&args, self.cfg.timeout, &console, Some(&heartbeat));
        // The initramfs is large and rebuilt every run; the logs stay when the run
        // failed, since the error points at them.
        let _ = std::fs::remove_file(&initrd);
        let f = f?;
        let out =
            String::from_utf8_lossy(&std::fs::read(&output).unwrap_or_default()).replace('\r', "");
        let status = f
            .console
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(LAB_END))
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| QemuError::NoStatus {
                marker: LAB_END,
                log: console.clone(),
                tail: qemu::tail(&f.console, 40),
            })?;
        step(format!(
            "lab: L1 done in {:.1} s, command exit status {status}",
            f.elapsed.as_secs_f64()
        ));
        if self.cfg.work.is_none() {
            let _ = std::fs::remove_dir_all(&work);
        }
        Ok(LabOutput {
            status,
            output: out,
            console: f.console,
            elapsed: f.elapsed,
        })
    }

    pub fn run(&self, cmd: &str) -> Result<LabOutput, LabError> {
        self.run_with(cmd, &[])
    }

    /// `run`, booting L1 again (at most `boots` boots in all) when L1 itself failed
    /// (`LabError::is_l1_failure`: its kernel crashed or it stopped); each failure is shown.
    pub fn run_rebooting(&self, cmd: &str, boots: u32) -> Result<LabOutput, LabError> {
        let mut boot = 1;
        loop {
            match self.run(cmd) {
                Err(e) if boot < boots && e.is_l1_failure() => {
                    step(format!(
                        "lab: L1 itself failed on boot {boot} (QEMU/TCG nested SVM), \
                         booting again:\n{e}"
                    ));
                    boot += 1;
                }
                r => return r,
            }
        }
    }

    /// L1's QEMU command line (DESIGN.md's measured recipe).
    pub fn qemu_args(
        &self,
        initrd: &Path,
        console: &Path,
        output: &Path,
        alive: &Path,
    ) -> Vec<OsString> {
        let c = &self.cfg;
        // no_timer_check: under TCG on a loaded host the IO-APIC timer check can miss its
        // ticks and panic ("timer doesn't work through Interrupt-remapped IO-APIC").
        // With NUMA nodes, `hugepages=N0:k,N1:k` puts k pages on every node.
        // nokaslr: a randomly placed L1 kernel can sit in any GiB range of a node and take
        // one of its 1 GiB pages (clean-clone CI, 2026-12-06: node 0 of a 10 GiB two-node L1
        // got 1 of its 2 pages, the kernel fell back to node 1 for the other); L1 is the lab's
        // host, so a fixed placement costs nothing and makes its page layout repeatable.
        let pages = if c.numa_nodes > 1 {
            (0..c.numa_nodes)
                .map(|n| format!("{n}:{}", c.hugepages_1g))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            c.hugepages_1g.to_string()
        };
        let mut append = format!(
            "console=ttyS0 intel_iommu=on hugepagesz=1G hugepages={pages} nokaslr no_timer_check panic=-1 quiet"
        );
        if c.pmem > 0 {
            append.push_str(&pmem::memmap_args(c.pmem, c.pmem_ranges));
        }
        let mut v: Vec<OsString> = Vec::new();
        let mut push = |s: &str| v.push(s.into());
        let cpu = match c.phys_bits {
            Some(bits) => format!("EPYC,+svm,+npt,+pdpe1gb,phys-bits={bits}"),
            None => "EPYC,+svm,+npt,+pdpe1gb".to_string(),
        };
        for s in ["-accel", "tcg", "-cpu", &cpu] {
            push(s);
        }
        for s in [
            "-machine",
            "q35,kernel-irqchip=split",
            "-device",
            "intel-iommu,intremap=on,caching-mode=on",
            "-device",
            "pcie-root-port,id=rp0,slot=1,chassis=1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ] {
            push(s);
        }
        push("-netdev");
        push(c.netdev.as_deref().unwrap_or("user,id=n0"));
        push("-device");
        push(&match &c.mac {
            Some(mac) => format!("igb,netdev=n0,bus=rp0,mac={mac}"),
            None => "igb,netdev=n0,bus=rp0".to_string(),
        });
        push("-smp");
        push(&c.cpus.to_string());
        push("-m");
        push(&format!("{}M", c.mem >> 20));
        if c.numa_nodes > 1 {
            let n = c.numa_nodes;
            for (node, size) in (0..n).zip(c.numa_node_sizes()) {
                let first = node * c.cpus / n;
                let last = (node + 1) * c.cpus / n - 1;
                push("-object");
                push(&format!(
                    "memory-backend-ram,id=ram{node},size={}M",
                    size >> 20
                ));
                push("-numa");
                push(&format!(
                    "node,nodeid={node},cpus={first}-{last},memdev=ram{node}"
                ));
            }
            for a in 0..n {
                for b in a + 1..n {
                    push("-numa");
                    push(&format!("dist,src={a},dst={b},val=21"));
                }
            }
        }
        push("-serial");
        push(&format!("file:{}", console.display()));
        push("-serial");
        push(&format!("file:{}", output.display()));
        push("-serial");
        push(&format!("file:{}", alive.display()));
        push("-kernel");
        v.push(self.kernel.bzimage().into());
        v.push("-initrd".into());
        v.push(initrd.into());
        v.push("-append".into());
        v.push(extras::command_line(&append, &c.append).into());
        v
    }
}

/// Where the lab looks for the workspace's host binaries: $HPMMAP_LAB_BINS (a PATH-style
/// list), $CARGO_TARGET_DIR/debug, <workspace>/target/debug.
/// Puts the workspace binary `name` (from `cfg.bin_dirs`, else [`default_bin_dirs`]) at
/// /lab/bin/NAME in `a`; false, said on the progress line, when it is not built.
pub(crate) fn carry_bin(a: &mut Archive, cfg: &LabConfig, name: &str) -> Result<bool, LabError> {
    let dirs = if cfg.bin_dirs.is_empty() {
        default_bin_dirs(&cfg.workspace)
    } else {
        cfg.bin_dirs.clone()
    };
    match dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        Some(p) => {
            step(format!("lab: carrying {}", p.display()));
            rootfs::add_program(a, &format!("lab/bin/{name}"), &p)?;
            Ok(true)
        }
        None => {
            step(format!(
                "lab: {name} not built (looked in {}); not in L1",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            Ok(false)
        }
    }
}

pub fn default_bin_dirs(ws: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::env::var_os("HPMMAP_LAB_BINS")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR").filter(|p| !p.is_empty()) {
        v.push(PathBuf::from(t).join("debug"));
    }
    v.push(ws.join("target/debug"));
    v
}

/// Adds a host file or directory tree at `guest`; executables bring their libraries.
fn add_path(a: &mut Archive, host: &Path, guest: &str) -> Result<(), LabError> {
    let io = |e| LabError::Io(host.to_path_buf(), e);
    let meta = std::fs::metadata(host).map_err(io)?;
    if meta.is_dir() {
        a.dir(guest);
        let mut entries: Vec<_> = std::fs::read_dir(host).map_err(io)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            add_path(
                a,
                &e.path(),
                &format!("{}/{name}", guest.trim_end_matches('/')),
            )?;
        }
        return Ok(());
    }
    use std::os::unix::fs::PermissionsExt;
    let exec = meta.permissions().mode() & 0o111 != 0;
    let data = std::fs::read(host).map_err(io)?;
    if exec && crate::elf::is_elf(&data) {
        rootfs::add_program(a, guest, host)?;
    } else {
        a.file(guest, if exec { 0o755 } else { 0o644 }, data);
    }
    Ok(())
}

#[cfg(test)]
mod l1_failure_tests {
    use super::*;

    fn no_status(tail: &str) -> LabError {
        LabError::Qemu(QemuError::NoStatus {
            marker: LAB_END,
            log: "/w/console.log".into(),
            tail: tail.into(),
        })
    }

    #[test]
    fn an_oops_or_a_stall_is_l1_failing_and_a_quiet_end_or_timeout_is_not() {
        let oops = "HPMMAP-LAB-BEGIN\n[ 296.3] BUG: TASK stack guard page was hit at 0000\n\
                    [ 297.2] Kernel panic - not syncing: corrupted stack end detected";
        assert!(no_status(oops).is_l1_failure());
        assert!(!no_status("HPMMAP-LAB-BEGIN\nreboot: Power down").is_l1_failure());
        let timeout = |tail: &str| {
            LabError::Qemu(QemuError::Timeout {
                secs: 800,
                log: "/w/console.log".into(),
                tail: tail.into(),
            })
        };
        assert!(!timeout("HPMMAP-LAB-BEGIN").is_l1_failure());
        assert!(timeout(oops).is_l1_failure(), "an oops, then silence");
        let stalled = LabError::Qemu(QemuError::Stalled {
            secs: 91,
            alive: "/w/alive.log".into(),
            log: "/w/console.log".into(),
            tail: "HPMMAP-LAB-BEGIN".into(),
        });
        assert!(stalled.is_l1_failure());
    }
}

#[cfg(test)]
mod numa_config_tests {
    use super::*;

    #[test]
    fn numa_nodes_must_split_cpus_and_memory() {
        let cfg = |mem_gib: u64, cpus: u32, nodes: u32, pages: u32| LabConfig {
            mem: mem_gib << 30,
            cpus,
            numa_nodes: nodes,
            hugepages_1g: pages,
            ..LabConfig::default()
        };
        assert!(cfg(8, 2, 2, 2).validate().is_ok());
        assert_eq!(cfg(8, 2, 2, 2).numa_node_sizes(), vec![5 << 30, 3 << 30]);
        assert_eq!(
            cfg(8, 4, 4, 1).numa_node_sizes(),
            vec![5 << 30, 1 << 30, 1 << 30, 1 << 30]
        );
        assert!(cfg(8, 2, 0, 2).validate().is_ok(), "0: no NUMA");
        assert!(cfg(8, 2, 0, 2).numa_node_sizes().is_empty());
        let e = cfg(8, 2, 3, 1).validate().unwrap_err().to_string();
        assert!(e.contains("more nodes than --cpus 2"), "{e}");
        let mut half = cfg(8, 2, 2, 1);
        half.mem += 1 << 29;
        let e = half.validate().unwrap_err().to_string();
        assert!(e.contains("whole GiB per node"), "{e}");
        let e = cfg(6, 2, 2, 3).validate().unwrap_err().to_string();
        assert!(e.contains("too small for 3 reserved"), "{e}");
    }
}

#[cfg(test)]
mod qemu_args_tests {
    use super::*;
    use crate::debs::Deb;

    fn lab(cfg: LabConfig) -> Lab {
        Lab {
            cfg,
            kernel: Kernel {
                abi: "6.1.0-57-amd64".into(),
                image: Deb {
                    name: "linux-image-6.1.0-57-amd64".into(),
                    version: "6.1.158-1".into(),
                    path: "/c/k.deb".into(),
                },
                tree: "/c/kernel".into(),
            },
            base: Archive::new(),
            commands: BTreeSet::new(),
            lab_bins: vec![],
        }
    }

    fn append_of(l: &Lab) -> String {
        let p = Path::new("/w/x");
        let args = l.qemu_args(p, p, p, p);
        let i = args.iter().position(|a| a == "-append").unwrap();
        args[i + 1].to_string_lossy().into_owned()
    }

    #[test]
    fn phys_bits_reach_l1s_cpu_only_when_asked() {
        let cpu_of = |cfg: LabConfig| {
            let p = Path::new("/w/x");
            let args = lab(cfg).qemu_args(p, p, p, p);
            let i = args.iter().position(|a| a == "-cpu").unwrap();
            args[i + 1].to_string_lossy().into_owned()
        };
        assert_eq!(cpu_of(LabConfig::default()), "EPYC,+svm,+npt,+pdpe1gb");
        let vf = LabConfig {
            phys_bits: Some(VF_PHYS_BITS),
            ..LabConfig::default()
        };
        assert_eq!(cpu_of(vf), "EPYC,+svm,+npt,+pdpe1gb,phys-bits=36");
    }

    #[test]
    fn appended_words_come_last_on_l1s_command_line() {
        let plain = append_of(&lab(LabConfig::default()));
        assert!(plain.starts_with("console=ttyS0 "), "{plain}");
        let cfg = LabConfig {
            hugepages_1g: 0,
            mem: 4 << 30,
            append: vec![
                "memmap=2G$0x100000000 hpmmap_pool=2G@0x100000000".into(),
                "oops=panic".into(),
            ],
            ..LabConfig::default()
        };
        cfg.validate().unwrap();
        let line = append_of(&lab(cfg));
        assert!(line.contains("hugepages=0 "), "{line}");
        assert!(
            line.ends_with(" memmap=2G$0x100000000 hpmmap_pool=2G@0x100000000 oops=panic"),
            "{line}"
        );
        let pmem = LabConfig {
            mem: 8 << 30,
            hugepages_1g: 0,
            pmem: 3 << 30,
            append: vec!["movablecore=5G".into()],
            ..LabConfig::default()
        };
        let line = append_of(&lab(pmem));
        assert!(line.ends_with(" memmap=3G!4G movablecore=5G"), "{line}");
    }

    #[test]
    fn scenario_options_are_checked_before_boot() {
        for cfg in [
            LabConfig {
                append: vec!["console=tty0".into()],
                ..LabConfig::default()
            },
            LabConfig {
                modules: vec!["../loop".into()],
                ..LabConfig::default()
            },
            LabConfig {
                kernel_at: Some("bzImage".into()),
                ..LabConfig::default()
            },
        ] {
            assert!(cfg.validate().unwrap_err().is_input());
        }
    }
}
