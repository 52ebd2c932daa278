//! `hpmmap-bench run`: every configuration × profile × workload, interleaved over the
//! repetitions, with the competing workloads started and stopped around each profile.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::competitor::{self, BuildLoop, Competitor};
use crate::config::{Config, Place};
use crate::hugepages::{HugePool, POOL_2M};
use crate::memory::HUGE_2M;
use crate::platform::Platform;
use crate::report::WorkloadReport;
use crate::table::{self, Results};
use crate::vm::{self, VmPlace, VmRunInfo, VmShape};
use crate::workloads::Workload;

/// Competing commodity load around a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Profile {
    /// Nothing else running.
    #[serde(rename = "iso")]
    Iso,
    /// One parallel build.
    A,
    /// Two parallel builds plus stress-ng memory stressors.
    B,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Self::Iso, Self::A, Self::B];

    pub fn name(self) -> &'static str {
        match self {
            Self::Iso => "iso",
            Self::A => "A",
            Self::B => "B",
        }
    }

    pub fn from_name(s: &str) -> Option<Profile> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
    }

    pub fn builds(self) -> usize {
        match self {
            Self::Iso => 0,
            Self::A => 1,
            Self::B => 2,
        }
    }
}

/// Parses sizes like 4096, 64K, 64M, 2G (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("invalid size {s:?} (expected e.g. 4096, 64K, 256M, 1G)"))
}

/// One measured cell of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub workload: Workload,
    pub config: Config,
}

/// The order of a run: for every repetition, every profile, every cell. Profiles and cells
/// are rotated by the repetition number, so slow drift of the machine (other tenants,
/// temperature, the page cache) spreads over all configurations instead of piling up on
/// whichever comes last.
pub fn schedule(
    reps: usize,
    profiles: &[Profile],
    cells: &[Cell],
) -> Vec<(usize, Profile, Vec<Cell>)> {
    let mut out = Vec::new();
    for rep in 0..reps {
        for i in 0..profiles.len() {
            let profile = profiles[(i + rep) % profiles.len()];
            let order = (0..cells.len())
                .map(|j| cells[(j + rep) % cells.len()])
                .collect();
            out.push((rep, profile, order));
        }
    }
    out
}

/// Sizes and iteration counts for one workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadSize {
    pub mem_per_rank: u64,
    pub iters: usize,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub reps: usize,
    pub out: PathBuf,
    pub workloads: Vec<Workload>,
    pub configs: Vec<Config>,
    pub profiles: Vec<Profile>,
    pub ranks: usize,
    pub sizes: BTreeMap<Workload, WorkloadSize>,
    pub warmup: Duration,
    pub build_src: Option<PathBuf>,
    pub cache: PathBuf,
    pub stress_vm_bytes: String,
    pub stress_mmap_bytes: String,
    pub note: Option<String>,
    pub command_line: String,
    pub run_timeout: Duration,
    /// Run the VM configurations in the nested lab even where this host's KVM boots Linux.
    pub force_lab: bool,
    /// Repetitions and sizes of the lab's VM runs (emulated: far smaller than native).
    pub lab_reps: usize,
    pub lab_sizes: BTreeMap<Workload, WorkloadSize>,
}

/// Default sizes: `--quick` small enough for < 10 minutes on 2 shared cores.
pub fn default_sizes(quick: bool) -> BTreeMap<Workload, WorkloadSize> {
    let mb = |m: u64| m << 20;
    let mut s = BTreeMap::new();
    let (cg, stream, gups, faults) = if quick {
        ((mb(128), 40), (mb(192), 10), (mb(64), 8), (mb(64), 8))
    } else {
        ((mb(256), 50), (mb(256), 20), (mb(128), 16), (mb(64), 16))
    };
    for (w, (m, i)) in [
        (Workload::Cg, cg),
        (Workload::Stream, stream),
        (Workload::Gups, gups),
        (Workload::Faults, faults),
    ] {
        s.insert(
            w,
            WorkloadSize {
                mem_per_rank: m,
                iters: i,
            },
        );
    }
    s
}

/// Lab sizes: small enough for QEMU/TCG (about 50-100x slower than native) and an L2
/// guest of 2 GiB; `--quick` fits one L1 boot of about 10 minutes for all four workloads.
pub fn default_lab_sizes(quick: bool) -> BTreeMap<Workload, WorkloadSize> {
    let mb = |m: u64| m << 20;
    let (cg, stream, gups, faults) = if quick {
        ((mb(16), 40), (mb(16), 3), (mb(8), 2), (mb(16), 4))
    } else {
        ((mb(32), 50), (mb(32), 5), (mb(16), 4), (mb(32), 8))
    };
    [
        (Workload::Cg, cg),
        (Workload::Stream, stream),
        (Workload::Gups, gups),
        (Workload::Faults, faults),
    ]
    .into_iter()
    .map(|(w, (m, i))| {
        (
            w,
            WorkloadSize {
                mem_per_rank: m,
                iters: i,
            },
        )
    })
    .collect()
}

/// Guest RAM of a VM run on this host: the guest kernel's GiB plus a pool that holds
/// every rank's largest workload with room for its page tables and shared region (hpmmap
/// serves only whole blocks; a pool too small would fall back to Linux, counted but not
/// what the row is about).
pub fn host_vm_mem_gib(opts: &Options) -> u32 {
    let largest = opts
        .workloads
        .iter()
        .map(|w| opts.sizes[w].mem_per_rank)
        .max()
        .unwrap_or(0);
    vm_mem_gib(largest, opts.ranks)
}

/// 1 GiB for the guest kernel plus whole GiBs holding `ranks` × `mem_per_rank` and a
/// quarter more.
pub fn vm_mem_gib(mem_per_rank: u64, ranks: usize) -> u32 {
    let pool = (mem_per_rank * ranks as u64 * 5 / 4)
        .div_ceil(1 << 30)
        .max(1);
    1 + pool as u32
}

/// Set by SIGINT / SIGTERM / SIGHUP; every wait in the harness checks it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: an all-zero sigaction is valid (no flags, empty mask, SIG_DFL) before the
        // handler is set; without SA_SIGINFO the kernel calls it as `fn(c_int)`, which
        // `on_signal` is, and it only stores to an atomic (async-signal-safe). `sa` lives
        // across the call and the old action is not asked for (null).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("interrupted by a signal; competitors stopped, huge pages returned, no results written")]
pub struct Interrupted;

fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    Ok(())
}

fn sleep_checked(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_stop()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    check_stop()
}

/// One workload run as the harness saw it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub rep: usize,
    pub profile: Profile,
    pub workload: Workload,
    pub config: Config,
    #[serde(default)]
    pub place: Place,
    pub wall_secs: f64,
    pub error: Option<String>,
    pub report: Option<WorkloadReport>,
    /// VM runs: what the guest and hpmmap-vmm said besides the workload's lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmRunInfo>,
}

/// The workload binary: `HPMMAP_WORKLOAD_BIN`, else `hpmmap-workload` beside this binary.
pub fn workload_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HPMMAP_WORKLOAD_BIN") {
        return Ok(p.into());
    }
    let me = std::env::current_exe().context("locating the running binary")?;
    let p = me.with_file_name("hpmmap-workload");
    if !p.is_file() {
        bail!(
            "{} not found (build it with cargo build -p hpmmap-bench, or set HPMMAP_WORKLOAD_BIN)",
            p.display()
        );
    }
    Ok(p)
}

/// The cache directory shared by all layers.
pub fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("HPMMAP_CACHE") {
        return c.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/hpmmap")
}

/// The source tree the builds compile: Debian's linux-source-6.1 (the paper's competing
/// workload is a kernel build), extracted once under `<cache>/bench/`, its .deb downloaded
/// with `apt-get download` into `<cache>/debs/` when not there yet.
pub fn ensure_kernel_tree(cache: &Path) -> Result<PathBuf> {
    let bench = cache.join("bench");
    let tree = bench.join("linux-source-6.1");
    let marker = bench.join(".linux-source-6.1.extracted");
    if marker.exists() && tree.join("Makefile").exists() {
        return Ok(tree);
    }
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).with_context(|| debs.display().to_string())?;
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(&debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("linux-source-6.1_"))
            })
    };
    let deb = match find() {
        Some(d) => d,
        None => {
            eprintln!(
                "[bench] downloading linux-source-6.1 into {}",
                debs.display()
            );
            let st = Command::new("apt-get")
                .args(["download", "linux-source-6.1"])
                .current_dir(&debs)
                .status()
                .context("running apt-get download")?;
            if !st.success() {
                bail!("apt-get download linux-source-6.1 failed ({st})");
            }
            find().ok_or_else(|| anyhow!("apt-get download left no linux-source-6.1 .deb"))?
        }
    };
    eprintln!(
        "[bench] extracting {} (once; about a minute)",
        deb.display()
    );
    let tmp = bench.join(".extract");
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tmp)?;
    let st = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&tmp)
        .status()?;
    if !st.success() {
        bail!("dpkg -x {} failed ({st})", deb.display());
    }
    let tarball = tmp.join("usr/src/linux-source-6.1.tar.xz");
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&bench)
        .status()?;
    let _ = std::fs::remove_dir_all(&tmp);
    if !st.success() || !tree.join("Makefile").exists() {
        bail!(
            "extracting {} did not give {}",
            tarball.display(),
            tree.display()
        );
    }
    std::fs::write(&marker, "")?;
    Ok(tree)
}

/// Tools a kernel build needs that build-essential does not bring.
pub fn missing_kernel_build_tools() -> Vec<&'static str> {
    let mut miss: Vec<&str> = ["make", "gcc", "flex", "bison", "bc"]
        .into_iter()
        .filter(|t| !competitor::have(t))
        .collect();
    if !Path::new("/usr/include/libelf.h").exists() {
        miss.push("libelf-dev");
    }
    miss
}

struct Profiles {
    build_src: Option<PathBuf>,
    build_objs: Vec<PathBuf>,
    jobs: usize,
    cpus: Vec<usize>,
    logs: PathBuf,
    stress_vm: String,
    stress_mmap: String,
}

impl Profiles {
    fn start(&self, p: Profile) -> Result<Vec<Competitor>> {
        let mut v = Vec::new();
        for k in 0..p.builds() {
            let b = BuildLoop {
                src: self.build_src.clone().expect("prepared"),
                obj: self.build_objs[k].clone(),
                jobs: self.jobs,
            };
            let log = self.logs.join(format!("build-{k}.log"));
            v.push(Competitor::start(
                &format!("build {k}"),
                b.command(),
                &self.cpus,
                &log,
            )?);
        }
        if p == Profile::B {
            let log = self.logs.join("stress-ng.log");
            let cmd = competitor::stress_command(&self.stress_vm, &self.stress_mmap);
            v.push(Competitor::start("stress-ng", cmd, &self.cpus, &log)?);
        }
        Ok(v)
    }
}

/// Runs `cmd` in its own process group (dying with the harness), collecting stdout and
/// stderr; the group is killed on timeout or signal.
pub(crate) fn run_child(
    mut cmd: Command,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: the closure runs in the child between fork and exec while the harness may
    // have other threads: it makes one async-signal-safe system call, allocating nothing.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd.spawn().with_context(|| format!("starting {prog}"))?;
    let pgid = child.id() as i32;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    // SAFETY: kill touches none of our memory; the target is the group `cmd` was made the
    // leader of above.
    let kill_group = || unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    };
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if STOP.load(Ordering::SeqCst) {
            kill_group();
            let _ = child.wait();
            return Err(Interrupted.into());
        }
        if start.elapsed() > timeout {
            kill_group();
            let _ = child.wait();
            bail!("timed out after {:.0} s", timeout.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Children die with their parent (PDEATHSIG); make sure of it before going on.
    kill_group();
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    Ok((status, out, err))
}

/// Runs one native workload process.
fn run_workload(
    bin: &Path,
    cell: Cell,
    size: &WorkloadSize,
    ranks: usize,
    cpus: &[usize],
    timeout: Duration,
) -> Result<WorkloadReport> {
    let mut cmd = Command::new(bin);
    cmd.args(vm::workload_args(cell, size, ranks, cpus));
    let (status, out, err) = run_child(cmd, timeout)?;
    if !status.success() {
        let last = err.lines().last().unwrap_or("").to_string();
        bail!("exited with {status}: {last}");
    }
    WorkloadReport::parse(&out).map_err(|e| anyhow!("unreadable output: {e}"))
}

/// The VM cells in one nested-lab boot; their records join `records`.
fn run_lab(
    opts: &Options,
    l: &crate::runner::LabRunner,
    configs: &[Config],
    shape: &VmShape,
    logs: &Path,
    records: &mut Vec<RunRecord>,
) -> Result<table::LabInfo> {
    let cells: Vec<Cell> = opts
        .workloads
        .iter()
        .flat_map(|&w| {
            configs.iter().map(move |&c| Cell {
                workload: w,
                config: c,
            })
        })
        .collect();
    let plan = crate::lab::LabPlan {
        cells: schedule(opts.lab_reps, &opts.profiles, &cells)
            .into_iter()
            .flat_map(|(rep, profile, order)| {
                order.into_iter().map(move |c| crate::lab::LabCell {
                    rep,
                    profile,
                    workload: c.workload,
                    config: c.config,
                })
            })
            .collect(),
        sizes: opts.lab_sizes.clone(),
        // L2 has two vCPUs: one rank, the guest kernel beside it.
        ranks: 1,
        shape: shape.clone(),
        warmup_secs: opts.warmup.as_secs_f64().ceil().max(1.0) as u32,
        // Runs take 10-40 s here; a limit well above that, but not so far that a hung L2
        // boot (retried once) costs much.
        run_timeout_secs: 180,
        l1_cpus: 2,
    };
    eprintln!(
        "[bench] nested lab: {} L2 runs in one L1 boot (QEMU/TCG; roughly 15-30 s each); hpmmap-lab {}",
        plan.cells.len(),
        l.args(&plan).join(" ")
    );
    let res = l.run(&plan)?;
    table::write_atomic(&logs.join("lab-output.txt"), &res.raw)?;
    for r in &res.records {
        match (&r.report, &r.error) {
            (Some(w), _) => eprintln!(
                "[bench] lab rep {} {:>3} {:>6}/{:<9} verified={} measured-phase faults {} (setup {}){}",
                r.rep + 1,
                r.profile.name(),
                r.workload.name(),
                r.config.name(),
                w.valid,
                w.minflt + w.majflt,
                w.setup_minflt + w.setup_majflt,
                r.vm
                    .as_ref()
                    .and_then(|v| v.hpmmap_counters.iter().find(|(k, _)| k == "faults"))
                    .map_or(String::new(), |(_, v)| format!(", hpmmap module faults {v}"))
            ),
            (None, e) => eprintln!(
                "[bench] lab rep {} {} {}/{} FAILED: {}",
                r.rep + 1,
                r.profile.name(),
                r.workload.name(),
                r.config.name(),
                e.as_deref().unwrap_or("")
            ),
        }
    }
    records.extend(res.records);
    let l1 = res
        .output
        .l1
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut notes = vec![
        "the paper's competing kernel build cannot run in L1 (no compiler there): profiles A and B are stress-ng inside L1".to_string(),
        "L2 guests' RAM is boot-reserved 1 GiB hugetlb pages of L1, prefaulted and locked by hpmmap-vmm, so L1's memory pressure does not reach it; the difference between the rows is the guest's own memory management".to_string(),
    ];
    notes.extend(res.boot_notes.iter().cloned());
    let retried = res.output.runs.iter().filter(|r| r.retries > 0).count();
    if retried > 0 {
        notes.push(format!(
            "{retried} L2 boot(s) failed before the guest's init ran (a triple fault, hpmmap-vmm exit 72, or a boot hung until the run's limit; the intermittent nested-boot failures under TCG) and were booted once more; the job had not started"
        ));
    }
    if !res.output.done {
        notes.push(format!(
            "the lab stopped before the end of its plan (hpmmap-lab status {:?})",
            res.status
        ));
    }
    Ok(table::LabInfo {
        label: crate::config::LAB_LABEL.to_string(),
        l1,
        reps: opts.lab_reps,
        ranks: plan.ranks,
        sizes: opts
            .workloads
            .iter()
            .map(|w| (w.name().to_string(), opts.lab_sizes[w].clone()))
            .collect(),
        shape: shape.clone(),
        competitors: [Profile::A, Profile::B]
            .into_iter()
            .filter(|p| opts.profiles.contains(p))
            .map(|p| {
                format!(
                    "profile {}: `stress-ng {}` in L1",
                    p.name(),
                    crate::lab::stress_args(p).unwrap_or("")
                )
            })
            .collect(),
        competitor_stops: res.output.profile_stops.clone(),
        elapsed_secs: res.elapsed.as_secs_f64(),
        complete: res.output.done,
        notes,
    })
}

fn utc_now() -> String {
    table::format_utc(std::time::SystemTime::now())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs the whole plan and writes the table and plot into `opts.out`.
pub fn run(opts: &Options) -> Result<Results> {
    install_signal_handlers();
    competitor::become_subreaper();
    let platform = Platform::detect();
    eprintln!("[bench] platform: {}", platform.line());
    let bin = workload_binary()?;
    let started = utc_now();
    let load_start = loadavg();

    // CPUs: ranks on the last cores, competitors on the others (the paper pins the HPC
    // ranks; with the builds kept off the ranks' cores, what differs between
    // configurations is memory management, not CPU time slicing).
    let cpus = crate::ranks::allowed_cpus();
    let (rank_cpus, comp_cpus) = if cpus.len() > opts.ranks {
        let split = cpus.len() - opts.ranks;
        (cpus[split..].to_vec(), cpus[..split].to_vec())
    } else {
        (Vec::new(), Vec::new())
    };
    let jobs = comp_cpus.len().max(1);

    let logs = opts.out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    for f in ["build-0.log", "build-1.log", "stress-ng.log"] {
        let _ = std::fs::remove_file(logs.join(f));
    }

    // Host competitors are only needed for cells that run on this host: not when every
    // configuration asked for is a VM one and the VMs go to the nested lab.
    let host_cells = opts.configs.iter().any(|c| !c.is_vm())
        || (!opts.force_lab && vm::host_can_boot_linux(&platform));
    let max_builds = if host_cells {
        opts.profiles.iter().map(|p| p.builds()).max().unwrap_or(0)
    } else {
        0
    };
    let mut competitors_desc = Vec::new();
    let mut build_src = None;
    let mut build_objs = Vec::new();
    if max_builds > 0 {
        let src = match &opts.build_src {
            Some(s) => s.clone(),
            None => {
                let miss = missing_kernel_build_tools();
                if !miss.is_empty() {
                    bail!(
                        "the kernel build (profiles A/B) needs {}: apt-get install {}",
                        miss.join(", "),
                        miss.join(" ")
                    );
                }
                ensure_kernel_tree(&opts.cache)?
            }
        };
        let tag = src
            .file_name()
            .map_or("src".into(), |n| n.to_string_lossy().into_owned());
        for k in 0..max_builds {
            let obj = opts.cache.join("bench").join(format!("obj-{tag}-{k}"));
            let b = BuildLoop {
                src: src.clone(),
                obj: obj.clone(),
                jobs,
            };
            eprintln!(
                "[bench] preparing build {k} of {} in {}",
                src.display(),
                obj.display()
            );
            b.prepare()?;
            check_stop()?;
            build_objs.push(obj);
        }
        let what = if (BuildLoop {
            src: src.clone(),
            obj: PathBuf::new(),
            jobs,
        })
        .is_kernel_tree()
        {
            format!("Linux 6.1 `tinyconfig` vmlinux build (`make -j{jobs}`) of Debian's linux-source-6.1, rebuilt in a loop")
        } else {
            format!("`make -j{jobs}` of {}, rebuilt in a loop", src.display())
        };
        competitors_desc.push(format!("build: {what}"));
        build_src = Some(src);
    }
    if host_cells && opts.profiles.contains(&Profile::B) {
        if !competitor::have("stress-ng") {
            bail!("profile B needs stress-ng (apt-get install stress-ng)");
        }
        competitors_desc.push(format!(
            "stress-ng (profile B): `--vm 1 --vm-bytes {} --mmap 1 --mmap-bytes {}`",
            opts.stress_vm_bytes, opts.stress_mmap_bytes
        ));
    }
    if !comp_cpus.is_empty() {
        competitors_desc.push(format!(
            "ranks pinned to CPU(s) {:?}; competitors confined to CPU(s) {:?}",
            rank_cpus, comp_cpus
        ));
    }
    let profiles = Profiles {
        build_src,
        build_objs,
        jobs,
        cpus: comp_cpus.clone(),
        logs: logs.clone(),
        stress_vm: opts.stress_vm_bytes.clone(),
        stress_mmap: opts.stress_mmap_bytes.clone(),
    };

    let mut configs = opts.configs.clone();
    let mut notes = Vec::new();
    let _pool = if configs.contains(&Config::Hugetlb) {
        // Every array is rounded up to 2 MiB; no workload has more than 8 arrays.
        let per_rank = opts
            .workloads
            .iter()
            .map(|w| opts.sizes[w].mem_per_rank as usize / HUGE_2M + 8)
            .max()
            .unwrap_or(0);
        let needed = (per_rank * opts.ranks) as u64 + 4;
        match HugePool::reserve(Path::new(POOL_2M), needed) {
            Ok(p) => {
                eprintln!("[bench] hugetlb pool: {needed} free 2 MiB pages (was {} in the pool; restored at the end)", p.original());
                Some(p)
            }
            Err(e) => {
                configs.retain(|c| *c != Config::Hugetlb);
                notes.push(format!("hugetlb rows absent: {e}"));
                eprintln!("[bench] hugetlb rows absent: {e}");
                None
            }
        }
    } else {
        None
    };
    // The VM configurations: here (a KVM that boots Linux) or in the nested lab.
    let want_vm: Vec<Config> = configs.iter().copied().filter(|c| c.is_vm()).collect();
    let mut vm_absent = None;
    let mut host_vm = None;
    let mut lab_runner = None;
    let mut _reservation = None;
    let mut _images_dir = None;
    let vm_shape = VmShape::default();
    if want_vm.is_empty() {
        vm_absent = Some(match platform.kvm.vm_rows_absent_because() {
            Some(w) => format!("not requested (--configs vm-thp,vm-hpmmap); besides, {w}"),
            None => "not requested (--configs vm-thp,vm-hpmmap)".into(),
        });
    } else {
        let lab_tool = vm::find_tool("hpmmap-lab");
        let lab_ok = match &lab_tool {
            Some(_) => crate::runner::lab_prerequisites(),
            None => Err("hpmmap-lab not found (cargo build --release -p hpmmap-image, or set HPMMAP_LAB_BIN)".into()),
        };
        let place = vm::choose_place(&platform.kvm, opts.force_lab, lab_ok);
        let prepared: Result<()> = (|| {
            if matches!(place, VmPlace::Absent(_)) {
                return Ok(());
            }
            let vmm = vm::find_tool("hpmmap-vmm")
                .ok_or_else(|| anyhow!("hpmmap-vmm not found (cargo build --release -p hpmmap-vmm, or set HPMMAP_VMM_BIN)"))?;
            let image_tool = vm::find_tool("hpmmap-image")
                .ok_or_else(|| anyhow!("hpmmap-image not found (cargo build --release -p hpmmap-image, or set HPMMAP_IMAGE_BIN)"))?;
            let dir = crate::runner::TempDir::new("images")?;
            let images = vm::build_images(
                &image_tool,
                &vm::image_workload_binary(&bin),
                &want_vm,
                &dir.0,
            )?;
            if place == VmPlace::Host {
                if let Some(off) = vm::find_tool("hpmmap-offline") {
                    _reservation = Some(crate::runner::Reservation::take(
                        &off,
                        host_vm_mem_gib(opts),
                    )?);
                }
                host_vm = Some(crate::runner::HostVm {
                    vmm,
                    images,
                    shape: VmShape {
                        mem_gib: host_vm_mem_gib(opts),
                        vcpus: rank_cpus.len().max(1) as u32,
                        cpu_affinity: (!rank_cpus.is_empty()).then(|| {
                            rank_cpus
                                .iter()
                                .map(|c| c.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        }),
                    },
                    scratch: dir.0.clone(),
                });
            } else {
                lab_runner = Some(crate::runner::LabRunner {
                    lab: lab_tool.clone().expect("checked"),
                    bins: vmm.parent().map(Path::to_path_buf).unwrap_or_default(),
                    images,
                    stress_ng: std::env::var_os("PATH").and_then(|p| {
                        std::env::split_paths(&p)
                            .map(|d| d.join("stress-ng"))
                            .find(|p| p.is_file())
                    }),
                    scratch: dir.0.clone(),
                });
            }
            _images_dir = Some(dir);
            Ok(())
        })();
        match (&place, prepared) {
            (VmPlace::Absent(why), _) => vm_absent = Some(why.clone()),
            (_, Err(e)) if e.downcast_ref::<Interrupted>().is_some() => return Err(e),
            (_, Err(e)) => vm_absent = Some(format!("{e:#}")),
            (VmPlace::Host, Ok(())) => eprintln!(
                "[bench] VM rows: hpmmap-vmm on this host's KVM, interleaved with the native runs"
            ),
            (VmPlace::Lab, Ok(())) => eprintln!(
                "[bench] VM rows: in the nested lab ({}), after the native runs",
                crate::config::LAB_LABEL
            ),
        }
        if vm_absent.is_some() {
            configs.retain(|c| !c.is_vm());
        }
    }
    if let Some(why) = &vm_absent {
        eprintln!("[bench] VM rows absent: {why}");
    }
    // In the lab the VM cells run after the native ones, in one L1 boot.
    let lab_configs: Vec<Config> = if lab_runner.is_some() {
        let v = configs.iter().copied().filter(|c| c.is_vm()).collect();
        configs.retain(|c| !c.is_vm());
        v
    } else {
        Vec::new()
    };

    let cells: Vec<Cell> = opts
        .workloads
        .iter()
        .flat_map(|&w| {
            configs.iter().map(move |&c| Cell {
                workload: w,
                config: c,
            })
        })
        .collect();
    // No native cell (only VM cells, all in the lab): no host profile to run.
    let plan = if cells.is_empty() {
        Vec::new()
    } else {
        schedule(opts.reps, &opts.profiles, &cells)
    };
    let total_runs: usize = plan.iter().map(|(_, _, c)| c.len()).sum();
    let mut records = Vec::with_capacity(total_runs);
    let t_start = Instant::now();
    let mut done = 0usize;
    for (rep, profile, order) in &plan {
        check_stop()?;
        let mut running = profiles.start(*profile)?;
        if !running.is_empty() {
            eprintln!(
                "[bench] rep {}/{} profile {}: started {} (warm-up {:.0} s)",
                rep + 1,
                opts.reps,
                profile.name(),
                running
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                opts.warmup.as_secs_f64()
            );
            sleep_checked(opts.warmup)?;
        }
        for cell in order {
            check_stop()?;
            for c in &running {
                if !c.is_running() {
                    bail!(
                        "competitor {} exited on its own (see {})",
                        c.name(),
                        logs.display()
                    );
                }
            }
            let size = &opts.sizes[&cell.workload];
            let t0 = Instant::now();
            let (res, place) = match (&host_vm, cell.config.is_vm()) {
                (Some(h), true) => (
                    h.run(*cell, size, opts.ranks, opts.run_timeout)
                        .map(|(r, i)| (r, Some(i))),
                    Place::HostVm,
                ),
                _ => (
                    run_workload(&bin, *cell, size, opts.ranks, &rank_cpus, opts.run_timeout)
                        .map(|r| (r, None)),
                    Place::Native,
                ),
            };
            let wall = t0.elapsed().as_secs_f64();
            done += 1;
            let elapsed = t_start.elapsed().as_secs_f64();
            let eta = elapsed / done as f64 * (total_runs - done) as f64;
            let rec = match res {
                Ok((r, vm_info)) => {
                    eprintln!(
                        "[bench] [{done}/{total_runs}, eta {:.0} min] rep {} {:>3} {:>6}/{:<8} {:.3} s measured, {} = {:.4} {}, faults {}{}",
                        eta / 60.0,
                        rep + 1,
                        profile.name(),
                        cell.workload.name(),
                        cell.config.name(),
                        r.total_secs(),
                        r.figure_name,
                        r.figure,
                        r.unit,
                        r.minflt + r.majflt,
                        if r.valid { "" } else { "  VERIFICATION FAILED" }
                    );
                    RunRecord {
                        rep: *rep,
                        profile: *profile,
                        workload: cell.workload,
                        config: cell.config,
                        place,
                        wall_secs: wall,
                        error: None,
                        report: Some(r),
                        vm: vm_info,
                    }
                }
                Err(e) => {
                    if e.downcast_ref::<Interrupted>().is_some() {
                        return Err(e);
                    }
                    eprintln!(
                        "[bench] [{done}/{total_runs}] rep {} {} {}/{} FAILED: {e:#}",
                        rep + 1,
                        profile.name(),
                        cell.workload.name(),
                        cell.config.name()
                    );
                    RunRecord {
                        rep: *rep,
                        profile: *profile,
                        workload: cell.workload,
                        config: cell.config,
                        place,
                        wall_secs: wall,
                        error: Some(format!("{e:#}")),
                        report: None,
                        vm: None,
                    }
                }
            };
            records.push(rec);
        }
        for c in running.iter_mut() {
            c.stop()?;
        }
    }

    let lab = match &lab_runner {
        Some(l) => Some(run_lab(
            opts,
            l,
            &lab_configs,
            &vm_shape,
            &logs,
            &mut records,
        )?),
        None => None,
    };

    let mut builds = Vec::new();
    for k in 0..max_builds {
        let (ok, failed) = competitor::builds_done(&logs.join(format!("build-{k}.log")));
        builds.push((format!("build {k}"), ok, failed));
        if failed > 0 {
            notes.push(format!(
                "build {k}: {failed} build(s) failed; see logs/build-{k}.log"
            ));
        }
    }
    let results = Results::build(
        table::Header {
            platform,
            started_utc: started,
            finished_utc: utc_now(),
            command: opts.command_line.clone(),
            note: opts.note.clone(),
            load_start,
            load_end: loadavg(),
            ranks: opts.ranks,
            reps: opts.reps,
            sizes: opts
                .workloads
                .iter()
                .map(|w| (w.name().to_string(), opts.sizes[w].clone()))
                .collect(),
            competitors: competitors_desc,
            builds_completed: builds,
            vm_rows_absent: vm_absent,
            vm_place: records
                .iter()
                .find(|r| r.config.is_vm())
                .map(|r| r.place.label().to_string()),
            lab,
            notes,
            quick: opts.quick,
        },
        records,
    );
    table::write_all(&opts.out, &results)?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_interleaves_and_covers_every_cell_once_per_rep_and_profile() {
        let cells: Vec<Cell> = [Config::Thp, Config::Hugetlb, Config::Populate]
            .into_iter()
            .map(|c| Cell {
                workload: Workload::Cg,
                config: c,
            })
            .collect();
        let plan = schedule(3, &Profile::ALL, &cells);
        assert_eq!(plan.len(), 9);
        for rep in 0..3 {
            let profs: Vec<Profile> = plan.iter().filter(|p| p.0 == rep).map(|p| p.1).collect();
            let mut sorted = profs.clone();
            sorted.sort();
            assert_eq!(sorted, Profile::ALL.to_vec());
            for (_, _, order) in plan.iter().filter(|p| p.0 == rep) {
                assert_eq!(order.len(), 3);
                for c in &cells {
                    assert!(order.contains(c));
                }
            }
        }
        // Each configuration comes first in a different repetition.
        let firsts: Vec<Config> = (0..3).map(|r| plan[r * 3].2[0].config).collect();
        assert_eq!(firsts, vec![Config::Thp, Config::Hugetlb, Config::Populate]);
        assert_ne!(plan[0].1, plan[3].1);
    }

    #[test]
    fn host_vm_pool_holds_every_rank() {
        assert_eq!(vm_mem_gib(64 << 20, 1), 2);
        assert_eq!(vm_mem_gib(256 << 20, 8), 4);
        assert_eq!(vm_mem_gib(1 << 30, 1), 3);
    }

    #[test]
    fn sizes_parse_with_binary_units_and_reject_garbage() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
