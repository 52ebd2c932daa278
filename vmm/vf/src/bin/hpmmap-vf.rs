//! `hpmmap-vf`: the VF passthrough pieces of hpmmap-vmm, standalone.
//!
//! - `selftest`: prerequisites on this host and what to fix (read-only).
//! - `resolve`: what `--vf` resolves to and the state of every VF (read-only).
//! - `record`: copy the sysfs subset discovery reads, for test fixtures.
//! - `probe`: claim a VF, open VFIO, DMA-map a buffer, enable/disable MSI-X, map the
//!   BARs, then put everything back (needs a real IOMMU and VF: the nested lab).
//! - `partitions`: OpenSM partitions.conf from the claim records of running jobs, written
//!   atomically, then SIGHUP to opensm.
//! - `recover`: put back the VFs of jobs whose process is gone (after a crash).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hpmmap_vf::discover::{list_vfs, locate, pick_free_vf, vf_state, Located, VfSpec};
use hpmmap_vf::ib::{self, IbOptions};
use hpmmap_vf::msix::MsixCap;
use hpmmap_vf::partitions;
use hpmmap_vf::record::Recorder;
use hpmmap_vf::records::{self, Recovered};
use hpmmap_vf::selftest::{self, IbSelftest, Limits, SelftestOptions};
use hpmmap_vf::sysfs::{HostPaths, KernelWriter, Sysfs};
use hpmmap_vf::vfio::{GuestRamRegion, KernelVfio, VfioPassthrough};
use hpmmap_vf::{claim_vf_with, VfError, VfRequest};

#[derive(Parser)]
#[command(
    name = "hpmmap-vf",
    about = "SR-IOV VF passthrough support for hpmmap-vmm"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check every prerequisite of VF passthrough on this host; changes nothing.
    Selftest {
        /// IB device, netdev, PF or VF PCI address (as hpmmap-vmm --vf).
        #[arg(long)]
        vf: Option<String>,
        /// Guest RAM to be pinned for DMA (e.g. 18G).
        #[arg(long, default_value = "1G", value_parser = parse_size)]
        mem: u64,
        /// Read ROOT/sys, ROOT/proc, ROOT/dev instead of the host's (recorded trees).
        #[arg(long)]
        root: Option<PathBuf>,
        #[command(flatten)]
        ib: IbArgs,
        /// The SM's partitions.conf to check (default /etc/opensm/partitions.conf).
        #[arg(long)]
        partitions: Option<PathBuf>,
    },
    /// Show what --vf resolves to and the state of each VF; changes nothing.
    Resolve {
        #[arg(long)]
        vf: String,
        #[arg(long)]
        root: Option<PathBuf>,
        #[command(flatten)]
        ib: IbArgs,
    },
    /// Record the sysfs subset that discovery and selftest read, for test fixtures.
    Record {
        /// Class device names (ib0, mlx5_0) or PCI addresses to record.
        #[arg(long = "vf", required = true)]
        vfs: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Claim a VF, open VFIO, DMA-map a buffer, wire MSI-X, map BARs, put it all back.
    Probe {
        #[arg(long)]
        vf: String,
        /// Enable this many VFs if the PF has none.
        #[arg(long)]
        vf_create: Option<u32>,
        /// Buffer to DMA-map at guest-physical 0 (e.g. 64M).
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        mem: u64,
        /// Make the device raise MSI-X vector 0 and wait for its eventfd (82576 VF /
        /// igbvf only: writes its EIMS and EICS registers).
        #[arg(long)]
        irq_test: bool,
        /// Hold everything for this many seconds before tearing down; SIGTERM or
        /// SIGINT meanwhile tears down through restore_all(), as the VMM does.
        #[arg(long)]
        hold: Option<u64>,
        #[command(flatten)]
        ib: IbArgs,
    },
    /// Write OpenSM partitions.conf entries for the running jobs (one partition per job
    /// P_Key, its VFs' port GUIDs as members), keeping the rest of the file; then SIGHUP
    /// opensm so it re-reads it.
    Partitions {
        /// The SM's partitions.conf, rewritten atomically (temporary file + rename).
        #[arg(long, required_unless_present = "list")]
        out: Option<PathBuf>,
        /// Claim record directories (default: this host's /run/hpmmap/vf); several, or a
        /// shared one, for a subnet of several nodes.
        #[arg(long = "registry")]
        registries: Vec<PathBuf>,
        /// Send SIGHUP to every opensm process afterwards (heavy sweep, re-reads the file).
        #[arg(long)]
        signal_opensm: bool,
        /// Print each job's P_Key and port GUIDs (for UFM or a remote SM); write nothing.
        #[arg(long)]
        list: bool,
        /// A recorded tree: its proc/ and run/; opensm is only named, never signalled.
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Put back the VFs (GUIDs, policy, driver) of jobs whose process is gone.
    Recover {
        /// A recorded tree, with the kernel's reaction to writes simulated.
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

/// The InfiniBand flags, as strings so that a bad value is one line and exit 2.
#[derive(clap::Args, Default)]
struct IbArgs {
    /// Node and port GUID for the VF (64 bits, e.g. 0x0002c90300a1b2c3); derived from
    /// the PF's GUID and the VF index when absent.
    #[arg(long)]
    vf_guid: Option<String>,
    /// The job's P_Key: 0x8000 set for full membership (0x8123), clear for limited.
    #[arg(long)]
    pkey: Option<String>,
    /// The job's name in claim records and partitions.conf.
    #[arg(long)]
    job: Option<String>,
}

impl IbArgs {
    fn parse(&self) -> Result<IbOptions, VfError> {
        IbOptions::parse(
            self.vf_guid.as_deref(),
            self.pkey.as_deref(),
            self.job.as_deref(),
        )
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 64M, 18G)"))?;
    match n.checked_mul(mul) {
        Some(0) | None => Err(format!("'{s}' is not a usable size")),
        Some(v) if v % 4096 != 0 => Err(format!("'{s}' is not a multiple of 4 KiB")),
        Some(v) => Ok(v),
    }
}

fn sysfs_at(root: &Option<PathBuf>) -> Result<Sysfs> {
    Ok(match root {
        None => Sysfs::host(),
        Some(r) => {
            if !r.join("sys").is_dir() {
                bail!(InputError(format!(
                    "--root {}: no sys/ directory in it",
                    r.display()
                )));
            }
            Sysfs::new(HostPaths::under(r), Arc::new(KernelWriter))
        }
    })
}

/// An error in what the user asked for: exit status 2.
#[derive(Debug)]
struct InputError(String);
impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for InputError {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let input = e.downcast_ref::<InputError>().is_some()
                || e.downcast_ref::<VfError>()
                    .is_some_and(|v| v.is_input_error());
            eprintln!("hpmmap-vf: {e:#}");
            ExitCode::from(if input { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Selftest {
            vf,
            mem,
            root,
            ib,
            partitions,
        } => {
            let ib = ib.parse()?;
            let sysfs = sysfs_at(&root)?;
            println!(
                "hpmmap-vf selftest (reads {}; changes nothing)",
                sysfs.paths().sys.display()
            );
            let report = selftest::run_with(
                &sysfs,
                &SelftestOptions {
                    vf,
                    guest_ram: mem,
                    limits: Limits::current(),
                },
                &IbSelftest { ib, partitions },
            );
            print!("{report}");
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Resolve { vf, root, ib } => {
            let opts = ib.parse()?;
            let sysfs = sysfs_at(&root)?;
            let located = locate(&sysfs, &VfSpec::parse(&vf)?)?;
            let pf = located.pf();
            let port = ib::ib_port_of(&sysfs, pf)?;
            if port.is_none() && (opts.pkey.is_some() || opts.guid.is_some()) {
                return Err(VfError::NotInfiniband {
                    flag: if opts.pkey.is_some() {
                        "--pkey"
                    } else {
                        "--vf-guid"
                    },
                    pf,
                    path: sysfs.pci_dev(pf).join("infiniband"),
                }
                .into());
            }
            println!("PF {pf} ({})", sysfs.pci_dev(pf).display());
            for (idx, addr) in list_vfs(&sysfs, pf)? {
                println!("  virtfn{idx} {addr}: {:?}", vf_state(&sysfs, addr)?);
            }
            let chosen = match located {
                Located::Vf { vf, .. } => {
                    println!("--vf names VF {vf}");
                    vf
                }
                Located::Pf(_) => {
                    let (idx, addr, _) = pick_free_vf(&sysfs, pf)?;
                    println!("would take virtfn{idx} {addr}");
                    addr
                }
            };
            if let Some(port) = port {
                let idx = ib::vf_index(&sysfs, pf, chosen)?;
                let s = ib::plan(&sysfs, pf, &port, idx, &opts)?;
                println!(
                    "InfiniBand ({}): would set node/port GUID {} (now {} / {}) and policy Follow (now {}){}",
                    port.ibdev,
                    s.guid,
                    s.orig_node,
                    s.orig_port,
                    s.orig_policy,
                    opts.pkey.map(|p| format!(", P_Key {p}")).unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Record { vfs, out, root } => {
            let sysfs = sysfs_at(&root)?;
            if out.exists() {
                bail!(InputError(format!(
                    "--out {}: already exists; refusing to mix recordings",
                    out.display()
                )));
            }
            let mut rec = Recorder::new(&sysfs, &out);
            let res: Result<()> = (|| {
                rec.host()?;
                for v in &vfs {
                    match VfSpec::parse(v)? {
                        VfSpec::Pci(a) => rec.pci(a)?,
                        VfSpec::Name(n) => {
                            rec.class_device("infiniband", &n)?;
                            rec.class_device("net", &n)?;
                        }
                    }
                }
                Ok(())
            })();
            if let Err(e) = res {
                // No half-written recording.
                let _ = std::fs::remove_dir_all(&out);
                return Err(e.context(format!("recording into {}", out.display())));
            }
            println!("recorded into {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe {
            vf,
            vf_create,
            mem,
            irq_test,
            hold,
            ib,
        } => {
            let ib = ib.parse()?;
            probe(&vf, vf_create, mem, irq_test, hold, &ib).map(|_| ExitCode::SUCCESS)
        }
        Cmd::Partitions {
            out,
            registries,
            signal_opensm,
            list,
            root,
        } => partitions_cmd(out, registries, signal_opensm, list, root),
        Cmd::Recover { root } => {
            let sysfs = match &root {
                None => Sysfs::host(),
                Some(r) => {
                    sysfs_at(&root)?;
                    hpmmap_vf::sim::sim_sysfs(r)
                }
            };
            let mut failed = false;
            let results = records::recover(&sysfs);
            if results.is_empty() {
                println!("no claim records in {}", records::dir(&sysfs).display());
            }
            for r in results {
                match r {
                    Recovered::Live(c) => println!(
                        "VF {}: job '{}' (pid {}) still runs; left alone",
                        c.vf, c.job, c.pid
                    ),
                    Recovered::Restored(c) => println!(
                        "VF {}: job '{}' (pid {}) is gone; put back on {} with its original GUIDs and policy",
                        c.vf,
                        c.job,
                        c.pid,
                        c.binding.original_driver.as_deref().unwrap_or("no driver")
                    ),
                    Recovered::Failed(c, e) => {
                        failed = true;
                        eprintln!("hpmmap-vf: VF {}: job '{}': {e}", c.vf, c.job);
                    }
                    Recovered::Unreadable(p, e) => {
                        failed = true;
                        eprintln!("hpmmap-vf: {}: {e}", p.display());
                    }
                }
            }
            for r in records::recover_sriov(&sysfs) {
                match r {
                    records::SriovRecovered::Live(c) => println!(
                        "PF {}: VFs enabled by pid {} (still running); left alone",
                        c.pf, c.pid
                    ),
                    records::SriovRecovered::Disabled(c) => println!(
                        "PF {}: the {} VF(s) pid {} enabled with --vf-create are disabled",
                        c.pf, c.enabled, c.pid
                    ),
                    records::SriovRecovered::InUse(c) => println!(
                        "PF {}: VFs enabled by pid {} (gone) still in use; left enabled until a later recover",
                        c.pf, c.pid
                    ),
                    records::SriovRecovered::Failed(c, e) => {
                        failed = true;
                        eprintln!("hpmmap-vf: PF {}: {e}", c.pf);
                    }
                    records::SriovRecovered::Unreadable(p, e) => {
                        failed = true;
                        eprintln!("hpmmap-vf: {}: {e}", p.display());
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn partitions_cmd(
    out: Option<PathBuf>,
    registries: Vec<PathBuf>,
    signal: bool,
    list: bool,
    root: Option<PathBuf>,
) -> Result<ExitCode> {
    let sysfs = sysfs_at(&root)?;
    let dirs = if registries.is_empty() {
        vec![records::dir(&sysfs)]
    } else {
        registries
    };
    if list {
        let (recs, notes) = partitions::live_records(&sysfs, &dirs);
        for n in notes {
            eprintln!("hpmmap-vf: {n}");
        }
        for j in partitions::jobs_from_records(&recs)? {
            for (g, full, why) in &j.ports {
                println!(
                    "{} {:#06x} {g} {} # {why}",
                    j.job,
                    j.pkey,
                    if *full { "full" } else { "limited" }
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = out.expect("clap requires --out without --list");
    let u = partitions::update(&sysfs, &out, &dirs)?;
    for n in &u.notes {
        eprintln!("hpmmap-vf: {n}");
    }
    if !u.problems.is_empty() {
        for p in &u.problems {
            eprintln!("hpmmap-vf: {}: {p}", out.display());
        }
        eprintln!(
            "hpmmap-vf: {} left unchanged: writing it would join tenants",
            out.display()
        );
        return Ok(ExitCode::from(1));
    }
    records::write_atomic(&out, &u.text)?;
    println!(
        "{}: {} job partition(s) written",
        out.display(),
        u.jobs.len()
    );
    if signal {
        let pids = partitions::find_opensm(&sysfs);
        if pids.is_empty() {
            eprintln!(
                "hpmmap-vf: no opensm process found; make your subnet manager re-read {}",
                out.display()
            );
            return Ok(ExitCode::from(1));
        }
        for pid in pids {
            if root.is_some() {
                // A recorded tree's pids are not this machine's processes.
                println!("opensm pid {pid}: SIGHUP not sent (--root)");
                continue;
            }
            partitions::signal_opensm(pid)
                .with_context(|| format!("sending SIGHUP to opensm (pid {pid})"))?;
            println!("opensm pid {pid}: SIGHUP sent (heavy sweep re-reads the partitions)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Anonymous memory standing in for guest RAM.
struct Buffer {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Buffer {
    fn new(len: u64) -> Result<Self> {
        // SAFETY: fresh anonymous mapping, owned by the returned value.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("allocating the DMA buffer");
        }
        Ok(Buffer {
            ptr,
            len: len as usize,
        })
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: from mmap above.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// igbvf (82576 VF) registers in BAR0.
const IGBVF_EICS: usize = 0x1520;
const IGBVF_EIMS: usize = 0x1524;

/// Has an 82576 VF raise MSI-X vector 0 and waits for the vector's eventfd: proof that
/// an interrupt from the device reaches user space through the IOMMU's interrupt
/// remapping and VFIO.
fn igbvf_irq_test(
    dev: &hpmmap_vf::vfio::VfioDevice,
    bar0: &hpmmap_vf::vfio::BarMapping,
    efd: i32,
) -> Result<u64> {
    use hpmmap_vf::config::ConfigIo;
    // MSI-X messages are memory writes by the device: bus mastering must be on.
    let mut cmd = [0u8; 2];
    dev.read(0x04, &mut cmd);
    let c = u16::from_le_bytes(cmd) | 0x6;
    dev.write(0x04, &c.to_le_bytes());
    // SAFETY: BAR0 of an igbvf is 16 KiB and mapped whole; these are its 32-bit
    // interrupt mask-set and cause-set registers.
    unsafe {
        std::ptr::write_volatile(bar0.ptr.add(IGBVF_EIMS) as *mut u32, 0x7);
        std::ptr::write_volatile(bar0.ptr.add(IGBVF_EICS) as *mut u32, 0x1);
    }
    let mut ctl = [0u8; 2];
    dev.read(0x72, &mut ctl);
    dev.read(0x04, &mut cmd);
    // SAFETY: as above; EIMS reads back the mask.
    let eims = unsafe { std::ptr::read_volatile(bar0.ptr.add(IGBVF_EIMS) as *const u32) };
    println!(
        "      command {:#06x} (bus master on), MSI-X control {:#06x}, EIMS {eims:#x}; writing EICS bit 0",
        u16::from_le_bytes(cmd),
        u16::from_le_bytes(ctl)
    );
    for _ in 0..200 {
        let mut v = 0u64;
        // SAFETY: reading 8 bytes from a nonblocking eventfd into a u64.
        let n = unsafe { libc::read(efd, (&mut v as *mut u64).cast(), 8) };
        if n == 8 {
            return Ok(v);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let irqs = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    for l in irqs.lines().filter(|l| l.contains("vfio")) {
        eprintln!(
            "      {}",
            l.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    bail!("MSI-X vector 0 did not fire within 2 s after writing EICS")
}

static SIGNALLED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: the teardown itself runs in normal context.
    SIGNALLED.store(sig, std::sync::atomic::Ordering::SeqCst);
}

fn catch_term_and_int() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs a handler that only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Waits up to `secs` for SIGTERM/SIGINT; returns the signal if one came.
fn hold_for(secs: u64) -> Option<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        let s = SIGNALLED.load(std::sync::atomic::Ordering::SeqCst);
        if s != 0 {
            return Some(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

fn probe(
    spec: &str,
    create: Option<u32>,
    mem: u64,
    irq_test: bool,
    hold: Option<u64>,
    ib: &IbOptions,
) -> Result<()> {
    if hold.is_some() {
        catch_term_and_int();
    }
    let sysfs = Sysfs::host();
    println!("[1/6] claiming --vf {spec}");
    let claim = claim_vf_with(
        &sysfs,
        &VfRequest {
            spec: spec.into(),
            create,
        },
        ib,
    )?;
    if let Some(g) = claim.guid() {
        println!(
            "      InfiniBand: node/port GUID {g}, policy Follow{} (job '{}')",
            claim
                .pkey()
                .map(|p| format!(", P_Key {p}"))
                .unwrap_or_default(),
            claim.job()
        );
    }
    println!(
        "      VF {} (PF {}), IOMMU group {}, was on {}; now on {:?}",
        claim.vf(),
        claim.pf(),
        claim.iommu_group(),
        claim.original_driver().unwrap_or("no driver"),
        sysfs.driver_of(claim.vf())?.unwrap_or_default()
    );
    let buf = Buffer::new(mem)?;
    println!(
        "[2/6] opening VFIO (container, group {}, device) and DMA-mapping {} MiB at GPA 0",
        claim.iommu_group(),
        mem >> 20
    );
    let ram = [GuestRamRegion {
        gpa: 0,
        hva: buf.ptr as u64,
        size: mem,
    }];
    let p = VfioPassthrough::open(
        Arc::new(KernelVfio::new("/dev")),
        claim.iommu_group(),
        &claim.vf().to_string(),
        &ram,
    )?;
    println!(
        "      {} DMA mapping(s): {:x?}",
        p.container.mappings().len(),
        p.container.mappings()
    );
    println!(
        "[3/6] device: flags {:#x}, {} regions, {} MSI-X vectors",
        p.device.info().flags,
        p.device.info().num_regions,
        p.device.msix_vectors()
    );
    let cfg = p.device.read_config_space()?;
    println!(
        "      vendor:device {:02x}{:02x}:{:02x}{:02x}",
        cfg[1], cfg[0], cfg[3], cfg[2]
    );
    let bars = p.device.bars(&cfg);
    for b in &bars {
        println!(
            "      BAR{} {:?}{} {:#x} bytes",
            b.index,
            b.kind,
            if b.prefetchable { " prefetchable" } else { "" },
            b.size
        );
    }
    let msix = MsixCap::parse(&cfg);
    println!("      MSI-X: {msix:x?}");
    println!("[4/6] mapping BARs except the MSI-X table/PBA pages");
    let mut maps = Vec::new();
    for b in &bars {
        for m in p.device.map_bar(b.index, msix.as_ref())? {
            // SAFETY: a live mapping of at least 4 bytes of device memory; a volatile
            // 32-bit read is what the guest driver would do.
            let first = unsafe { std::ptr::read_volatile(m.ptr as *const u32) };
            println!(
                "      BAR{} +{:#x}..+{:#x} mapped, first dword {first:#010x}",
                m.bar,
                m.bar_offset,
                m.bar_offset + m.len
            );
            maps.push(m);
        }
    }
    println!("[5/6] MSI-X: attaching one eventfd per vector, then detaching");
    let n = p.device.msix_vectors() as usize;
    let mut fds = Vec::new();
    for _ in 0..n {
        // SAFETY: plain eventfd creation.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            bail!("eventfd: {}", std::io::Error::last_os_error());
        }
        fds.push(fd);
    }
    if n > 0 {
        p.device.enable_msix(&fds)?;
        println!("      {n} vectors enabled through VFIO_DEVICE_SET_IRQS");
        if irq_test {
            if cfg[0..4] != [0x86, 0x80, 0xca, 0x10] {
                bail!(InputError(
                    "--irq-test knows only the 82576 VF (8086:10ca, igbvf)".into()
                ));
            }
            let bar0 = maps
                .iter()
                .find(|m| m.bar == 0 && m.bar_offset == 0)
                .context("BAR0 is not mapped")?;
            let count = igbvf_irq_test(&p.device, bar0, fds[0])?;
            println!("      device raised MSI-X vector 0: eventfd count {count}");
        }
        if let Some(secs) = hold {
            println!(
                "      holding {secs} s with VFIO live; SIGTERM/SIGINT tear down via restore_all()"
            );
            if let Some(sig) = hold_for(secs) {
                // The VMM's signal path: close VFIO first (vfio-pci's unbind waits for
                // the device fd), then put every claimed VF back.
                println!("      signal {sig}: closing VFIO, then restore_all()");
                let vf = claim.vf();
                drop(maps);
                drop(p);
                drop(buf);
                for fd in fds {
                    // SAFETY: closing the eventfds created above.
                    unsafe { libc::close(fd) };
                }
                let errors = hpmmap_vf::restore_all();
                for e in &errors {
                    eprintln!("hpmmap-vf: {e}");
                }
                println!(
                    "      VF {vf} is on {:?} after restore_all()",
                    sysfs.driver_of(vf)?
                );
                std::process::exit(128 + sig);
            }
        }
        p.device.disable_msix()?;
        println!("      MSI-X disabled");
    }
    for fd in fds {
        // SAFETY: closing the eventfds created above.
        unsafe { libc::close(fd) };
    }
    drop(maps);
    println!("[6/6] closing VFIO and restoring the VF's driver");
    drop(p);
    drop(buf);
    let vf = claim.vf();
    let orig = claim.original_driver().map(str::to_string);
    claim.release()?;
    if !sysfs.pci_dev(vf).exists() {
        // We enabled the VFs (--vf-create), so release set sriov_numvfs back to 0.
        println!("      VF {vf} is gone: the VFs this probe enabled were disabled again");
    } else {
        let now = sysfs.driver_of(vf)?;
        println!("      VF {vf} is on {now:?} (was {orig:?})");
        if now != orig {
            bail!("VF {vf} is on {now:?}, not back on {orig:?}");
        }
    }
    println!("probe passed");
    Ok(())
}
