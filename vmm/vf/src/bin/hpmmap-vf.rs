//! `hpmmap-vf`: the VF passthrough pieces of hpmmap-vmm, standalone.
//!
//! - `selftest`: prerequisites on this host and what to fix (read-only).
//! - `resolve`: what `--vf` resolves to and the state of every VF (read-only).
//! - `record`: copy the sysfs subset discovery reads, for test fixtures.
//! - `partitions`: OpenSM partitions.conf from the claim records of running jobs, written
//!   atomically, then SIGHUP to opensm.
//! - `recover`: put back the VFs of jobs whose process is gone (after a crash).
//!
//! VFIO itself (open, DMA map, BARs, MSI-X) is hpmmap-pci's `hpmmap-vf-probe`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hpmmap_vf::args::{exit_code_of, parse_size, IbArgs, InputError};
use hpmmap_vf::discover::{list_vfs, locate, pick_free_vf, vf_state, Located, VfSpec};
use hpmmap_vf::ib;
use hpmmap_vf::partitions;
use hpmmap_vf::record::Recorder;
use hpmmap_vf::records::{self, Recovered};
use hpmmap_vf::selftest::{self, IbSelftest, Limits, SelftestOptions};
use hpmmap_vf::sysfs::{HostPaths, KernelWriter, Sysfs};
use hpmmap_vf::VfError;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hpmmap-vf: {e:#}");
            ExitCode::from(exit_code_of(&e))
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
