//! hpmmap-lab: the nested KVM lab. Boots Debian's kernel as L1 under QEMU/TCG with
//! SVM+NPT, VT-d and an igb SR-IOV NIC, runs one command inside, prints its output and
//! exits with its status. Figures measured in the lab are emulation figures (nested lab
//! under QEMU/TCG), never hardware ones.

use clap::{Parser, Subcommand};
use hpmmap_image::job::sh_quote;
use hpmmap_image::lab::cluster::{Cluster, ClusterConfig};
use hpmmap_image::lab::{parse_add, parse_mem, parse_size, Lab, LabConfig, LabError};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "hpmmap-lab",
    version,
    about = "The nested KVM lab (QEMU/TCG L1 with SVM+NPT, VT-d, igb SR-IOV)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot L1, run CMD in it (sh, in /root), print its output, exit with its status.
    Run {
        /// L1 memory (e.g. 8G, 6144M).
        #[arg(long, default_value = "8G")]
        mem: String,
        /// L1 vCPUs.
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// 1 GiB hugetlb pages reserved on L1's kernel command line.
        #[arg(long, default_value_t = 2)]
        hugepages: u32,
        /// Set this much of L1's RAM aside at boot as a pmem range at 4 GiB (memmap=SIZE!4G,
        /// whole GiB); L1 sees namespace0.0 (/dev/pmem0) and has the device-dax drivers.
        #[arg(long, default_value = "0")]
        pmem: String,
        /// Split --pmem into this many equal ranges (whole GiB each), 1 GiB of RAM apart
        /// (memmap=aG!4G memmap=aG!(5+a)G ...): L1 sees namespace0.0, namespace1.0, ...
        #[arg(long, default_value_t = 1)]
        pmem_ranges: u32,
        /// Give L1 this many NUMA nodes (QEMU -numa): RAM and vCPUs split evenly, --hugepages
        /// 1 GiB pages on each node, distance 21 between nodes. 0 or 1: no NUMA.
        #[arg(long, default_value_t = 0)]
        numa_nodes: u32,
        /// Kill L1 after this many seconds and show its console.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// HOSTPATH:GUESTPATH, a file or directory (e.g. a job image) to place in L1;
        /// executables bring their shared libraries (repeatable).
        #[arg(long = "add")]
        adds: Vec<String>,
        /// Directory holding built hpmmap-vmm / hpmmap-offline (repeatable; default
        /// $HPMMAP_LAB_BINS, $CARGO_TARGET_DIR/debug, then target/debug).
        #[arg(long = "bins")]
        bin_dirs: Vec<PathBuf>,
        /// Keep the initramfs and logs here (default: a temporary directory, removed).
        #[arg(long)]
        work: Option<PathBuf>,
        /// Boot L1 again, up to this many boots in all, when L1 itself fails: its kernel
        /// oopses or it stops beating (QEMU/TCG's nested SVM does both now and then while
        /// L1's KVM runs a guest). Each failure is shown.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=hpmmap_image::lab::MAX_BOOTS as i64))]
        boots: u32,
        /// Kill L1 when its heartbeat (a line every 5 s on its third serial port) stands
        /// still this many seconds: an L1 asleep for good shows no other sign.
        #[arg(long, default_value_t = 90)]
        stall_secs: u64,
        /// Also print L1's console on stderr.
        #[arg(long)]
        console: bool,
        /// More words for L1's kernel command line, after the lab's own (repeatable; e.g.
        /// 'memmap=2G$0x100000000 hpmmap_pool=2G@0x100000000'); console=, panic= and init=
        /// are the lab's.
        #[arg(long = "append", value_name = "ARGS")]
        append: Vec<String>,
        /// More modules of L1's kernel, loaded at boot after the lab's (comma-separated,
        /// repeatable; e.g. loop,kmem); their dependencies come along.
        #[arg(long = "modules", value_name = "NAME,...", value_delimiter = ',')]
        modules: Vec<String>,
        /// Build guest-kmod/module for L1's kernel (hpmmap.ko and its test hooks,
        /// hpmmap_test.ko) and place both in /lib/hpmmap, not loaded.
        #[arg(long)]
        hpmmap_ko: bool,
        /// Place L1's own kernel (bzImage) at this path in L1, for an L2 that boots it.
        #[arg(long, value_name = "GUESTPATH")]
        kernel_at: Option<String>,
        /// The command: one argument is a shell command line; several are quoted words.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Say whether the lab can run on this machine (QEMU with igb, a guest kernel in apt
    /// or the package cache): exit 0 and `ready`, or exit 1 and the reason. The one answer
    /// the tests and the shell labs ask.
    Check,
    /// Boot N L1s as a Slurm cluster (one network, munge, slurmctld on node1, slurmd on
    /// all, the SPANK plugin of slurm/), run CMD on node1 once every node is idle.
    Cluster {
        /// Nodes (node1 .. nodeN, 10.16.0.K).
        #[arg(long, default_value_t = 2)]
        nodes: u32,
        /// Each node's L1 memory (with 3G the boot-time 1 GiB page was missing).
        #[arg(long, default_value = "4G")]
        mem: String,
        /// Each node's L1 vCPUs.
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// 1 GiB hugetlb pages reserved on each node's kernel command line.
        #[arg(long, default_value_t = 1)]
        hugepages: u32,
        /// Kill the nodes after this many seconds.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// HOSTPATH:GUESTPATH placed in every node (repeatable).
        #[arg(long = "add")]
        adds: Vec<String>,
        /// Directory holding built hpmmap-vmm / hpmmap-offline (repeatable).
        #[arg(long = "bins")]
        bin_dirs: Vec<PathBuf>,
        /// Keep logs here (node K under nodeK/).
        #[arg(long)]
        work: Option<PathBuf>,
        /// Also print node1's console and the other nodes' output on stderr.
        #[arg(long)]
        console: bool,
        /// The command for node1: one argument is a shell command line; several are words.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
}

fn command_line(cmd: &[String]) -> String {
    if cmd.len() == 1 {
        cmd[0].clone()
    } else {
        cmd.iter()
            .map(|w| sh_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn cluster(
    nodes: u32,
    node: LabConfig,
    adds: &[String],
    cmd: &[String],
) -> Result<hpmmap_image::lab::cluster::ClusterOutput, LabError> {
    let mut node = node;
    node.adds = adds
        .iter()
        .map(|a| parse_add(a))
        .collect::<Result<_, _>>()?;
    let c = Cluster::prepare(ClusterConfig { nodes, node })?;
    c.run(&command_line(cmd))
}

fn main() -> ExitCode {
    let cmd = match Cli::parse().cmd {
        Cmd::Check => {
            return match hpmmap_image::qemu::nested_lab_unavailable() {
                None => {
                    println!("hpmmap-lab: ready");
                    ExitCode::SUCCESS
                }
                Some(why) => {
                    println!("hpmmap-lab: the nested lab cannot run here: {why}");
                    ExitCode::from(1)
                }
            };
        }
        Cmd::Cluster {
            nodes,
            mem,
            cpus,
            hugepages,
            timeout,
            adds,
            bin_dirs,
            work,
            console,
            cmd,
        } => {
            let r = parse_mem(&mem).and_then(|mem| {
                let node = LabConfig {
                    mem,
                    cpus,
                    hugepages_1g: hugepages,
                    timeout: Duration::from_secs(timeout),
                    bin_dirs,
                    work,
                    ..LabConfig::default()
                };
                cluster(nodes, node, &adds, &cmd)
            });
            return match r {
                Ok(out) => {
                    if console {
                        eprintln!("{}", out.head.console);
                        for (i, o) in out.others.iter().enumerate() {
                            match o {
                                Ok(o) => eprintln!("--- node{}:\n{}", i + 2, o.output),
                                Err(e) => eprintln!("--- node{}: {e}", i + 2),
                            }
                        }
                    }
                    print!("{}", out.head.output);
                    let _ = std::io::stdout().flush();
                    ExitCode::from(out.head.status.clamp(0, 255) as u8)
                }
                Err(e) => {
                    eprintln!("hpmmap-lab: {e}");
                    ExitCode::from(if e.is_input() { 2 } else { 1 })
                }
            };
        }
        run => run,
    };
    let Cmd::Run {
        mem,
        cpus,
        hugepages,
        pmem,
        pmem_ranges,
        numa_nodes,
        timeout,
        adds,
        bin_dirs,
        work,
        boots,
        stall_secs,
        console,
        append,
        modules,
        hpmmap_ko,
        kernel_at,
        cmd,
    } = cmd
    else {
        unreachable!("check and cluster returned above")
    };
    let result = (|| -> Result<_, LabError> {
        let mut cfg = LabConfig {
            mem: parse_mem(&mem)?,
            cpus,
            hugepages_1g: hugepages,
            pmem: parse_size(&pmem).map_err(|e| LabError::Pmem(pmem.clone(), e))?,
            pmem_ranges,
            numa_nodes,
            timeout: Duration::from_secs(timeout),
            stall: Duration::from_secs(stall_secs),
            bin_dirs,
            work,
            append,
            modules,
            hpmmap_ko,
            kernel_at,
            ..LabConfig::default()
        };
        cfg.adds = adds
            .iter()
            .map(|a| parse_add(a))
            .collect::<Result<_, _>>()?;
        let line = if cmd.len() == 1 {
            cmd[0].clone()
        } else {
            cmd.iter()
                .map(|w| sh_quote(w))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let lab = Lab::prepare(cfg)?;
        lab.run_rebooting(&line, boots)
    })();
    match result {
        Ok(out) => {
            if console {
                eprintln!("{}", out.console);
            }
            print!("{}", out.output);
            let _ = std::io::stdout().flush();
            ExitCode::from(out.status.clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!("hpmmap-lab: {e}");
            ExitCode::from(if e.is_input() { 2 } else { 1 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_takes_the_scenario_options() {
        let cli = Cli::try_parse_from([
            "hpmmap-lab",
            "run",
            "--append",
            "memmap=2G$0x100000000 hpmmap_pool=2G@0x100000000",
            "--append",
            "oops=panic",
            "--modules",
            "loop,kmem",
            "--modules",
            "nd_btt",
            "--hpmmap-ko",
            "--kernel-at",
            "/lab/bzImage",
            "--",
            "sh",
            "/root/suite.sh",
        ])
        .unwrap();
        let Cmd::Run {
            append,
            modules,
            hpmmap_ko,
            kernel_at,
            cmd,
            ..
        } = cli.cmd
        else {
            panic!("not a run")
        };
        assert_eq!(
            append,
            [
                "memmap=2G$0x100000000 hpmmap_pool=2G@0x100000000",
                "oops=panic"
            ]
        );
        assert_eq!(modules, ["loop", "kmem", "nd_btt"]);
        assert!(hpmmap_ko);
        assert_eq!(kernel_at.as_deref(), Some("/lab/bzImage"));
        assert_eq!(command_line(&cmd), "sh /root/suite.sh");
    }

    #[test]
    fn without_them_the_run_is_as_before() {
        let cli = Cli::try_parse_from(["hpmmap-lab", "run", "--", "true"]).unwrap();
        let Cmd::Run {
            append,
            modules,
            hpmmap_ko,
            kernel_at,
            ..
        } = cli.cmd
        else {
            panic!("not a run")
        };
        assert!(append.is_empty() && modules.is_empty() && !hpmmap_ko && kernel_at.is_none());
    }
}
