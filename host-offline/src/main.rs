//! `hpmmap-offline`: reserve / status / release of host memory for hpmmap jobs.
//!
//! Exit status: 0 done; 1 the host refused or failed mid-way (this run's changes rolled back
//! where possible); 2 bad input, host unchanged; 3 incomplete: reserve could not get the whole
//! size (rolled back unless --allow-partial), or release kept pages a running VM maps;
//! 128 + N stopped by signal N (SIGINT, SIGTERM) after undoing this run's changes.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use hpmmap_offline::devdax::{self, DevdaxOptions};
use hpmmap_offline::host::{self, Host};
use hpmmap_offline::release::{self, Amount};
use hpmmap_offline::reserve::{self, Placement, ReserveOptions};
use hpmmap_offline::size::{human, parse_gib, GIB};
use hpmmap_offline::{recover, state, status, stop, Error};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hpmmap-offline",
    version,
    about = "Partition host memory for hpmmap jobs (1 GiB pages per NUMA node, device-dax) and give it back"
)]
struct Cli {
    /// What /sys is (a recorded tree in tests).
    #[arg(long, global = true, default_value = "/sys", value_name = "DIR")]
    sysfs_root: PathBuf,
    /// What /proc is.
    #[arg(long, global = true, default_value = "/proc", value_name = "DIR")]
    proc_root: PathBuf,
    /// State file recording what was taken, for release and crash rollback.
    #[arg(long, global = true, env = "HPMMAP_OFFLINE_STATE", default_value = state::DEFAULT_PATH, value_name = "PATH")]
    state_file: PathBuf,
    /// Seconds one memory block may take to go offline before the tool gives up on it (the
    /// kernel retries forever while a page in it cannot be migrated).
    #[arg(long, global = true, default_value_t = host::DEFAULT_OFFLINE_LIMIT.as_secs(), value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    offline_timeout: u64,
    /// No progress lines on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make SIZE of 1 GiB pages available to hpmmap-vmm (idempotent: SIZE is the total held).
    Reserve(ReserveArgs),
    /// Per node: memory, 1 GiB pool, pages reserved, hpmmap-vmm pids holding them, blocks.
    Status {
        /// Machine-readable output (format hpmmap-offline-status, version 1).
        #[arg(long)]
        json: bool,
    },
    /// Give memory back to the host (never pages a running VM maps).
    Release(ReleaseArgs),
    /// After any crash (a job's epilog, or at boot): put back VFs dead VMMs left on
    /// vfio-pci, disable VFs they created, release reservations of jobs whose VMM is gone,
    /// remove their jail directories and cgroups. Live jobs are left alone.
    Recover(RecoverArgs),
}

#[derive(Args)]
struct RecoverArgs {
    /// The job whose epilog this is: its reservation is released once no process of the
    /// job runs (others only when they are known dead).
    #[arg(long, value_name = "ID")]
    job: Option<String>,
    /// Where VF claim records (vf/) and jail directories (jail/<job>) live.
    #[arg(long, default_value = "/run/hpmmap", value_name = "DIR")]
    run_dir: PathBuf,
    /// The hpmmap cgroup parent (default: SYSFS_ROOT/fs/cgroup/hpmmap).
    #[arg(long, value_name = "DIR")]
    cgroup_dir: Option<PathBuf>,
    /// Machine-readable report.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ReserveArgs {
    /// Whole GiB, e.g. 18G.
    #[arg(long)]
    size: String,
    /// NUMA node to take the pages from.
    #[arg(long, conflicts_with = "spread")]
    node: Option<u32>,
    /// Split SIZE evenly over the nodes with memory.
    #[arg(long)]
    spread: bool,
    /// Free memory left to the host on each node, never taken.
    #[arg(long, default_value = "1G")]
    keep: String,
    /// Keep what could be obtained when SIZE cannot be (default: give it back, exit 3).
    #[arg(long)]
    allow_partial: bool,
    /// Do not cycle memory blocks offline and back (compaction only).
    #[arg(long)]
    no_offline: bool,
    /// Prepare a device-dax device (1 GiB align) instead of hugetlb pages.
    #[arg(long, conflicts_with_all = ["spread", "allow_partial", "no_offline"])]
    devdax: bool,
    /// With --devdax: the device to use (daxX.Y); default: the first that fits.
    #[arg(long, requires = "devdax", value_name = "daxX.Y")]
    dax_device: Option<String>,
    /// The job the pages are for: held apart from other jobs' (released with
    /// `release --job ID`, or by `recover` once the job's VMM is gone).
    #[arg(long, value_name = "ID")]
    job: Option<String>,
    /// Machine-readable report.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[group(required = false, multiple = false)]
struct ReleaseWhat {
    /// Give back this many GiB of hugetlb pages.
    #[arg(long)]
    size: Option<String>,
    /// Give back everything: pages, blocks, dax devices; rolls back an interrupted run.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
struct ReleaseArgs {
    #[command(flatten)]
    what: ReleaseWhat,
    /// Only this job's pages and dax devices (alone: all of them). Without it, only what
    /// no job holds.
    #[arg(long, value_name = "ID")]
    job: Option<String>,
    /// Machine-readable report.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hpmmap-offline: error: {e:#}");
            ExitCode::from(e.downcast_ref::<Error>().map(Error::exit_code).unwrap_or(1))
        }
    }
}

fn require_root(host: &Host, what: &str) -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions.
    if host.is_live() && unsafe { libc::geteuid() } != 0 {
        return Err(Error::input(format!(
            "{what} changes {} and needs root",
            host.sys_root().display()
        )));
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let mut host = Host::new(&cli.sysfs_root, &cli.proc_root)
        .quiet(cli.quiet)
        .with_offline_limit(std::time::Duration::from_secs(cli.offline_timeout));
    // Only the commands that change the host catch SIGINT / SIGTERM; status stops at once.
    if !matches!(cli.cmd, Cmd::Status { .. }) {
        host = host.with_stop(stop::install());
    }
    match cli.cmd {
        Cmd::Status { json } => {
            let s = status::gather(&host, &cli.state_file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", status::render_text(&s));
            }
            Ok(0)
        }
        Cmd::Reserve(a) => reserve_cmd(&host, &cli.state_file, a),
        Cmd::Recover(a) => {
            if let Some(j) = &a.job {
                state::validate_job(j)?;
            }
            require_root(&host, "recover")?;
            let vf = vf_sysfs(&cli.sysfs_root, &cli.proc_root, &a.run_dir);
            let opts = recover::RecoverOptions {
                job: a.job,
                cgroup_dir: a
                    .cgroup_dir
                    .unwrap_or_else(|| cli.sysfs_root.join("fs/cgroup/hpmmap")),
                run_dir: a.run_dir,
            };
            let r = recover::recover(&host, &cli.state_file, &vf, &opts)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for l in &r.lines {
                    println!("{l}");
                }
            }
            Ok(if r.failed { 1 } else { 0 })
        }
        Cmd::Release(a) => {
            let amount = match (&a.what.size, a.what.all, &a.job) {
                (_, true, _) => Amount::All,
                (Some(s), false, _) => Amount::Gib(parse_gib("--size", s)?),
                (None, false, Some(_)) => Amount::All,
                (None, false, None) => {
                    return Err(Error::input("release needs --size S, --all or --job ID").into())
                }
            };
            if let Some(j) = &a.job {
                state::validate_job(j)?;
            }
            require_root(&host, "release")?;
            let r = release::release_for(&host, &cli.state_file, amount, a.job.as_deref())?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for n in &r.nodes {
                    println!(
                        "{}node {}: released {} of {} GiB{}; {} GiB still reserved",
                        r.job
                            .as_ref()
                            .map(|j| format!("job {j}: "))
                            .unwrap_or_default(),
                        n.node,
                        n.released,
                        n.asked,
                        if n.unadopted > 0 {
                            format!(
                                " ({} adopted page(s) left in the pool, as before)",
                                n.unadopted
                            )
                        } else {
                            String::new()
                        },
                        n.still_reserved
                    );
                    for why in &n.reasons {
                        println!("  {why}");
                    }
                }
                for d in &r.devdax_released {
                    println!("dax {d}: restored");
                }
                for note in &r.notes {
                    println!("{note}");
                }
                if r.idle {
                    println!("hpmmap-offline holds nothing now");
                }
            }
            // Giving back is where an interrupted host should end up: release finishes,
            // then says it was stopped.
            if let Some(sig) = host.stop_requested() {
                eprintln!(
                    "hpmmap-offline: {} came during release; it finished giving back first",
                    stop::signal_name(sig)
                );
                return Ok((128 + sig) as u8);
            }
            Ok(if r.complete { 0 } else { 3 })
        }
    }
}

/// hpmmap-vf's view of the same host: real writes on the live host; on a recorded tree
/// (ROOT/sys beside ROOT/proc) the VF simulation of hpmmap-vf over ROOT.
fn vf_sysfs(
    sys: &std::path::Path,
    proc: &std::path::Path,
    run: &std::path::Path,
) -> hpmmap_vf::Sysfs {
    let paths = hpmmap_vf::HostPaths {
        sys: sys.to_path_buf(),
        proc: proc.to_path_buf(),
        run: run.to_path_buf(),
        ..hpmmap_vf::HostPaths::host()
    };
    if sys == std::path::Path::new("/sys") {
        return hpmmap_vf::Sysfs::new(paths, std::sync::Arc::new(hpmmap_vf::sysfs::KernelWriter));
    }
    let root = sys.parent().unwrap_or(sys);
    hpmmap_vf::Sysfs::new(
        paths,
        std::sync::Arc::new(hpmmap_vf::sim::SimKernel::new(root)),
    )
}

fn reserve_cmd(host: &Host, state_file: &std::path::Path, a: ReserveArgs) -> anyhow::Result<u8> {
    let size_gib = parse_gib("--size", &a.size)?;
    let keep_bytes = parse_gib("--keep", &a.keep)? * GIB;
    if a.devdax {
        require_root(host, "reserve --devdax")?;
        let r = devdax::reserve_devdax(
            host,
            state_file,
            &DevdaxOptions {
                size_gib,
                node: a.node,
                device: a.dax_device,
                job: a.job.clone(),
            },
        )?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!(
                "{}: {} with 1 GiB alignment{} ({})",
                r.path,
                human(r.size),
                r.node.map(|n| format!(" on node {n}")).unwrap_or_default(),
                if r.changed {
                    "prepared"
                } else {
                    "already prepared"
                }
            );
        }
        return Ok(0);
    }
    let opts = ReserveOptions {
        size_gib,
        placement: match (a.node, a.spread) {
            (Some(n), _) => Placement::Node(n),
            (None, true) => Placement::Spread,
            (None, false) => Placement::Auto,
        },
        keep_bytes,
        allow_partial: a.allow_partial,
        offline_blocks: !a.no_offline,
        job: a.job.clone(),
    };
    // Input checks first, so that bad input never creates the state directory.
    reserve::plan(host, &opts)?;
    require_root(host, "reserve")?;
    let r = reserve::reserve(host, state_file, &opts)
        .with_context(|| format!("reserve {}", human(size_gib * GIB)))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for n in &r.nodes {
            println!(
                "{}node {}: {} of {} GiB reserved ({}{} added by this run{}{})",
                r.job
                    .as_ref()
                    .map(|j| format!("job {j}: "))
                    .unwrap_or_default(),
                n.node,
                n.held() - n.others,
                n.target - n.others,
                if n.adopted > 0 {
                    format!("{} free page(s) already in the pool adopted, ", n.adopted)
                } else {
                    String::new()
                },
                n.added,
                if n.compacted {
                    ", after compaction"
                } else {
                    ""
                },
                if n.groups_cycled > 0 {
                    format!(", {} block group(s) cycled", n.groups_cycled)
                } else {
                    String::new()
                }
            );
            if n.short() > 0 {
                println!("  could not get {} GiB:", n.short());
            } else if !n.reasons.is_empty() {
                println!("  on the way:");
            }
            for why in &n.reasons {
                println!("  - {why}");
            }
            if n.given_back > 0 {
                println!("  gave back the {} GiB obtained: the whole size was not there (--allow-partial keeps them)", n.given_back);
            }
        }
        for note in &r.notes {
            println!("{note}");
        }
    }
    Ok(if r.complete { 0 } else { 3 })
}
