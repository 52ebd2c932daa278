//! `hpmmap-bench run [--quick] [--reps R] [--out DIR] ...`: the isolation benchmark.
//! `hpmmap-bench platform`: the platform line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hpmmap_bench::harness::{self, parse_size, Options, Profile};
use hpmmap_bench::memory::AllocMode;
use hpmmap_bench::platform::Platform;
use hpmmap_bench::workloads::Workload;

#[derive(Parser, Debug)]
#[command(
    name = "hpmmap-bench",
    about = "HPC workloads under competing commodity load, side by side (paper Fig. 8)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run every configuration isolated and under profiles A and B.
    Run(Box<RunArgs>),
    /// Print the platform line.
    Platform,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Small sizes, 2 repetitions: under 10 minutes on 2 cores.
    #[arg(long)]
    quick: bool,
    /// Repetitions (default 10, --quick 2).
    #[arg(long)]
    reps: Option<usize>,
    /// Output directory for results.md / .json / .svg (and logs/).
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Workloads (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "cg,stream,gups,faults")]
    workloads: Vec<String>,
    /// Native configurations (comma-separated): thp, hugetlb, populate, plain.
    #[arg(long, value_delimiter = ',', default_value = "thp,hugetlb,populate")]
    configs: Vec<String>,
    /// Profiles (comma-separated): iso, A, B.
    #[arg(long, value_delimiter = ',', default_value = "iso,A,B")]
    profiles: Vec<String>,
    /// Ranks per run (default: half the CPUs, at least 1).
    #[arg(long)]
    ranks: Option<usize>,
    /// Override every workload's memory per rank (e.g. 256M).
    #[arg(long, value_parser = parse_size)]
    mem_per_rank: Option<u64>,
    /// Override every workload's iteration count.
    #[arg(long)]
    iters: Option<usize>,
    /// Seconds the competitors run before the first measurement of a profile.
    #[arg(long)]
    warmup: Option<f64>,
    /// Source tree the builds compile instead of Debian's linux-source-6.1.
    #[arg(long)]
    build_src: Option<PathBuf>,
    /// stress-ng --vm-bytes for profile B.
    #[arg(long, default_value = "2g")]
    stress_vm_bytes: String,
    /// stress-ng --mmap-bytes for profile B.
    #[arg(long, default_value = "1g")]
    stress_mmap_bytes: String,
    /// A note for the header (e.g. that the machine was shared).
    #[arg(long)]
    note: Option<String>,
    /// Per-run time limit in seconds.
    #[arg(long, default_value_t = 600.0)]
    run_timeout: f64,
}

fn usage(msg: String) -> ExitCode {
    eprintln!("hpmmap-bench: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let a = match cli.cmd {
        Cmd::Platform => {
            println!("{}", Platform::detect().line());
            return ExitCode::SUCCESS;
        }
        Cmd::Run(a) => *a,
    };
    let mut workloads = Vec::new();
    for w in &a.workloads {
        match Workload::from_name(w) {
            Some(x) if !workloads.contains(&x) => workloads.push(x),
            Some(_) => {}
            None => {
                return usage(format!(
                    "--workloads: unknown workload {w:?} (cg, stream, gups, faults)"
                ))
            }
        }
    }
    let mut configs = Vec::new();
    for c in &a.configs {
        match AllocMode::from_name(c) {
            Some(x) if !configs.contains(&x) => configs.push(x),
            Some(_) => {}
            None => {
                return usage(format!(
                    "--configs: unknown configuration {c:?} (thp, hugetlb, populate, plain)"
                ))
            }
        }
    }
    let mut profiles = Vec::new();
    for p in &a.profiles {
        match Profile::from_name(p) {
            Some(x) if !profiles.contains(&x) => profiles.push(x),
            Some(_) => {}
            None => return usage(format!("--profiles: unknown profile {p:?} (iso, A, B)")),
        }
    }
    if workloads.is_empty() || configs.is_empty() || profiles.is_empty() {
        return usage("--workloads, --configs and --profiles must not be empty".into());
    }
    let reps = a.reps.unwrap_or(if a.quick { 2 } else { 10 });
    if reps == 0 {
        return usage("--reps must be at least 1".into());
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ranks = a.ranks.unwrap_or((cpus / 2).max(1));
    if ranks == 0 {
        return usage("--ranks must be at least 1".into());
    }
    if a.iters == Some(0) {
        return usage("--iters must be at least 1".into());
    }
    if let Some(m) = a.mem_per_rank {
        if m < hpmmap_bench::workloads::MIN_MEM {
            return usage(format!("--mem-per-rank {m} is below the minimum of 1M"));
        }
    }
    let warmup = a.warmup.unwrap_or(if a.quick { 3.0 } else { 5.0 });
    if !(warmup >= 0.0 && warmup.is_finite()) {
        return usage(format!(
            "--warmup {warmup} must be a number of seconds >= 0"
        ));
    }
    if !(a.run_timeout > 0.0 && a.run_timeout.is_finite()) {
        return usage(format!(
            "--run-timeout {} must be a positive number of seconds",
            a.run_timeout
        ));
    }
    if let Some(src) = &a.build_src {
        if !src.join("Makefile").is_file() {
            return usage(format!("--build-src {}: no Makefile there", src.display()));
        }
    }
    let mut sizes = harness::default_sizes(a.quick);
    for s in sizes.values_mut() {
        if let Some(m) = a.mem_per_rank {
            s.mem_per_rank = m;
        }
        if let Some(i) = a.iters {
            s.iters = i;
        }
    }
    let opts = Options {
        quick: a.quick,
        reps,
        out: a.out,
        workloads,
        configs,
        profiles,
        ranks,
        sizes,
        warmup: Duration::from_secs_f64(warmup),
        build_src: a.build_src,
        cache: harness::cache_dir(),
        stress_vm_bytes: a.stress_vm_bytes,
        stress_mmap_bytes: a.stress_mmap_bytes,
        note: a.note,
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        run_timeout: Duration::from_secs_f64(a.run_timeout),
    };
    match harness::run(&opts) {
        Ok(r) => {
            print!("{}", r.to_markdown());
            eprintln!(
                "[bench] wrote {}/results.{{md,json,svg}}",
                opts.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hpmmap-bench: {e:#}");
            if e.downcast_ref::<harness::Interrupted>().is_some() {
                ExitCode::from(130)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
