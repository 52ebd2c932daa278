//! `hpmmap-workload [cg|stream|gups|faults] [--ranks N] [--mem-per-rank SIZE] [--iters K]
//! [--mode thp|hugetlb|populate|plain] [--tol T]`
//!
//! With no arguments it runs the default job: `cg`, one rank, 64 MiB, THP, to convergence
//! at a relative residual of 1e-10 (at most 200 iterations; about 70 are needed) — small
//! enough for a job image. Exit status 0 when the result verified, 1 when not or on
//! failure, 2 for bad arguments.
//!
//! In a job image the program is started without arguments; the harness's VM runner passes
//! them on the guest kernel's command line as `hpmmap_workload_args=cg,--iters,5,...`
//! (the kernel hands unknown `name=value` words to init's environment, and the image's init
//! passes its environment on). So with no arguments and that variable set, its
//! comma-separated words are the arguments.

use std::process::ExitCode;

use clap::Parser;
use hpmmap_bench::memory::AllocMode;
use hpmmap_bench::workloads::{self, Params, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "hpmmap-workload",
    about = "HPC proxy workloads for the hpmmap isolation benchmark"
)]
struct Cli {
    /// Which workload.
    #[arg(value_enum, default_value = "cg")]
    workload: Workload,
    /// Ranks (processes) sharing a barrier.
    #[arg(long, default_value_t = 1)]
    ranks: usize,
    /// Memory per rank (weak scaling), e.g. 64M, 1G.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    mem_per_rank: u64,
    /// Measured iterations (default per workload: cg 200 (or until --tol), stream 20, gups 16, faults 20).
    #[arg(long)]
    iters: Option<usize>,
    /// How the arrays are mapped.
    #[arg(long, value_enum, default_value = "thp")]
    mode: AllocMode,
    /// cg: stop at this relative residual; 0 runs all iterations (HPCCG's way).
    #[arg(long, default_value_t = 1e-10)]
    tol: f64,
    /// Pin rank i to the i-th CPU of this comma-separated list (cycled).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
}

/// Parses sizes like 4096, 64K, 64M, 2G (binary units).
fn parse_size(s: &str) -> Result<u64, String> {
    hpmmap_bench::model::parse_size(s)
}

/// The variable the VM runner sets through the guest kernel's command line.
const ARGS_ENV: &str = "hpmmap_workload_args";

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().collect();
    if argv.len() == 1 {
        if let Ok(words) = std::env::var(ARGS_ENV) {
            argv.extend(
                words
                    .split(',')
                    .filter(|w| !w.is_empty())
                    .map(str::to_string),
            );
        }
    }
    let cli = Cli::parse_from(argv);
    if !(cli.tol >= 0.0 && cli.tol.is_finite()) {
        eprintln!(
            "hpmmap-workload: --tol {} must be a finite number >= 0",
            cli.tol
        );
        return ExitCode::from(2);
    }
    let p = Params {
        workload: cli.workload,
        ranks: cli.ranks,
        mem_per_rank: cli.mem_per_rank,
        iters: cli.iters.unwrap_or(cli.workload.default_iters()),
        mode: cli.mode,
        tol: cli.tol,
        cpus: cli.cpus,
    };
    if p.ranks == 0 || p.iters == 0 || p.mem_per_rank < workloads::MIN_MEM {
        eprintln!(
            "hpmmap-workload: --ranks and --iters must be at least 1 and --mem-per-rank at least 1M"
        );
        return ExitCode::from(2);
    }
    match workloads::run(&p) {
        Ok(r) => {
            print!("{}", r.to_lines());
            eprintln!(
                "hpmmap-workload: {} {} ranks={} mode={}: {} = {:.6} {} ({}), measured-phase faults {} minor / {} major",
                r.workload,
                hpmmap_bench::platform::short_line(),
                r.ranks,
                r.mode.name(),
                r.figure_name,
                r.figure,
                r.unit,
                if r.valid { "verified" } else { "VERIFICATION FAILED" },
                r.minflt,
                r.majflt
            );
            if r.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("hpmmap-workload: {e:#}");
            ExitCode::from(1)
        }
    }
}
