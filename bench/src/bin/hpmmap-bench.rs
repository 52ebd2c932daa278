//! `hpmmap-bench run [--quick] [--reps R] [--out DIR] ...`: the isolation benchmark.
//! `hpmmap-bench platform`: the platform line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hpmmap_bench::config::Config;
use hpmmap_bench::harness::{self, Options};
use hpmmap_bench::model::{parse_size, Interrupted, Profile};
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
    /// Write results.md and results.svg again from DIR/results.json (the rows recomputed
    /// from its runs), e.g. after the table or plot code changed. Measures nothing.
    Render {
        /// A directory holding a results.json written by `run`.
        dir: PathBuf,
    },
    /// The experiment on QEMU's instruction-count clock: one QEMU/TCG guest per
    /// configuration (4k, thp, hugetlb, hpmmap), every workload under every competitor
    /// inside it, the rank's CPU counted by a TCG plugin. Deterministic; writes
    /// results.{md,json,svg} into --out.
    Icount(IcountArgs),
    /// results.md and results.svg again from DIR/results.json written by `icount`.
    IcountRender { dir: PathBuf },
}

#[derive(clap::Args, Debug)]
struct IcountArgs {
    /// Small sizes, one repetition (isolated cg 5 times): within 15 minutes on 2 cores.
    #[arg(long)]
    quick: bool,
    /// Output directory.
    #[arg(long, default_value = "bench/results/icount")]
    out: PathBuf,
    /// Configurations (comma-separated): 4k, thp, hugetlb, hpmmap.
    #[arg(long, value_delimiter = ',', default_value = "4k,thp,hugetlb,hpmmap")]
    configs: Vec<String>,
    /// Workloads (comma-separated): cg, stream, gups, faults, fwq.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cg,stream,gups,faults,fwq"
    )]
    workloads: Vec<String>,
    /// Competitors (comma-separated): iso, A, B, cpu-other, cpu-own.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "iso,A,B,cpu-other,cpu-own"
    )]
    competitors: Vec<String>,
    /// Repetitions of every run (default 2, --quick 1).
    #[arg(long)]
    reps: Option<usize>,
    /// Isolated runs of the first workload per configuration, at least.
    #[arg(long, default_value_t = 5)]
    iso_reps: usize,
    /// Skip the host-load check (two more boots of one configuration, the second with the
    /// host's CPUs busy).
    #[arg(long)]
    no_host_load_check: bool,
    /// Work directory (consoles, plugin logs; kept).
    #[arg(long)]
    work: Option<PathBuf>,
    /// stress-ng --mmap-bytes of profiles A and B, in MiB.
    #[arg(long)]
    mmap_mib: Option<u64>,
    /// stress-ng --vm-bytes of profile B, in MiB.
    #[arg(long)]
    vm_mib: Option<u64>,
}

fn icount(a: IcountArgs) -> ExitCode {
    use hpmmap_bench::icount::{report, run, Competitor, IcountConfig, Plan};
    let mut plan = Plan::new(a.quick);
    let pick = |names: &[String], what: &str, f: &dyn Fn(&str) -> bool| -> Result<(), String> {
        match names.iter().find(|n| !f(n)) {
            Some(n) => Err(format!("unknown {what} {n:?}")),
            None => Ok(()),
        }
    };
    if let Err(e) = pick(&a.configs, "configuration", &|n| {
        IcountConfig::from_name(n).is_some()
    })
    .and_then(|_| {
        pick(&a.workloads, "workload", &|n| {
            Workload::from_name(n).is_some()
        })
    })
    .and_then(|_| {
        pick(&a.competitors, "competitor", &|n| {
            Competitor::from_name(n).is_some()
        })
    }) {
        return usage(e);
    }
    plan.configs = a
        .configs
        .iter()
        .filter_map(|n| IcountConfig::from_name(n))
        .collect();
    plan.workloads = a
        .workloads
        .iter()
        .filter_map(|n| Workload::from_name(n))
        .collect();
    plan.competitors = a
        .competitors
        .iter()
        .filter_map(|n| Competitor::from_name(n))
        .collect();
    if let Some(r) = a.reps {
        plan.reps = r.max(1);
    }
    plan.iso_reps = a.iso_reps;
    if let Some(m) = a.mmap_mib {
        plan.competitor_sizes.mmap_mib = m;
    }
    if let Some(m) = a.vm_mib {
        plan.competitor_sizes.vm_mib = m;
    }
    let work = a.work.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("hpmmap-icount-{}", std::process::id()))
    });
    let opts = run::Options {
        plan,
        quick: a.quick,
        work: work.clone(),
        host_load_check: !a.no_host_load_check,
        boot_timeout: Duration::from_secs(3600),
        // The program's own path (a build directory) says nothing about the run.
        command: std::env::args()
            .enumerate()
            .map(|(i, w)| match (i, w.rsplit_once('/')) {
                (0, Some((_, name))) => name.to_string(),
                _ => w,
            })
            .collect::<Vec<_>>()
            .join(" "),
    };
    match run::run(&opts).and_then(|r| report::write(&r, &a.out)) {
        Ok(()) => {
            eprintln!(
                "[bench] icount: {}/results.{{md,json,svg}} (consoles and plugin logs in {})",
                a.out.display(),
                work.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hpmmap-bench: icount: {e}");
            ExitCode::from(1)
        }
    }
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
    /// Configurations (comma-separated): native thp, hugetlb, populate, plain; VM vm-thp,
    /// vm-hpmmap (hpmmap-vmm booting a job image: on this host's KVM where it boots Linux,
    /// else in the nested lab).
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
    /// Run the VM configurations in the nested lab (one QEMU/TCG L1 boot; behaviour only,
    /// never speed) even where this host's KVM boots Linux. Where it cannot (kvm_pvm), the
    /// lab is used without this flag.
    #[arg(long)]
    lab: bool,
    /// Repetitions of the lab's VM runs (default 1 with --quick, else 2).
    #[arg(long)]
    lab_reps: Option<usize>,
    /// Memory per rank of the lab's VM runs (default: small per-workload sizes).
    #[arg(long, value_parser = parse_size)]
    lab_mem_per_rank: Option<u64>,
    /// Iterations of the lab's VM runs.
    #[arg(long)]
    lab_iters: Option<usize>,
}

fn usage(msg: String) -> ExitCode {
    eprintln!("hpmmap-bench: {msg}");
    ExitCode::from(2)
}

fn render(dir: &std::path::Path) -> ExitCode {
    let path = dir.join("results.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return usage(format!("render: {}: {e}", path.display())),
    };
    let old: hpmmap_bench::table::Results = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            return usage(format!(
                "render: {}: not a results file: {e}",
                path.display()
            ))
        }
    };
    let r = hpmmap_bench::table::Results::build(old.header, old.runs);
    match hpmmap_bench::output::write_all(dir, &r) {
        Ok(()) => {
            eprintln!("[bench] rewrote {}/results.{{md,json,svg}}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hpmmap-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let a = match cli.cmd {
        Cmd::Platform => {
            println!("{}", Platform::detect().line());
            return ExitCode::SUCCESS;
        }
        Cmd::Render { dir } => return render(&dir),
        Cmd::Icount(a) => return icount(a),
        Cmd::IcountRender { dir } => {
            return match hpmmap_bench::icount::report::render(&dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hpmmap-bench: icount-render: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Run(a) => *a,
    };
    let mut workloads = Vec::new();
    for w in &a.workloads {
        match Workload::from_name(w) {
            Some(Workload::Fwq) => {
                return usage(
                    "fwq runs only on the instruction-count clock (`hpmmap-bench icount`)".into(),
                )
            }
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
        match Config::from_name(c) {
            Some(x) if !configs.contains(&x) => configs.push(x),
            Some(_) => {}
            None => {
                return usage(format!(
                    "--configs: unknown configuration {c:?} (thp, hugetlb, populate, plain, vm-thp, vm-hpmmap)"
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
    if a.iters == Some(0) || a.lab_iters == Some(0) {
        return usage("--iters and --lab-iters must be at least 1".into());
    }
    let lab_reps = a.lab_reps.unwrap_or(if a.quick { 1 } else { 2 });
    if lab_reps == 0 {
        return usage("--lab-reps must be at least 1".into());
    }
    if a.lab && !configs.iter().any(|c| c.is_vm()) {
        return usage(
            "--lab runs the VM configurations: add vm-thp and/or vm-hpmmap to --configs".into(),
        );
    }
    if let Some(m) = a.lab_mem_per_rank {
        if m < hpmmap_bench::workloads::MIN_MEM {
            return usage(format!("--lab-mem-per-rank {m} is below the minimum of 1M"));
        }
        // The L2 guest has 2 GiB: 1 for its kernel and page cache, 1 for hpmmap's pool.
        if m > 512 << 20 {
            return usage(format!(
                "--lab-mem-per-rank {m} is above 512M (the lab's L2 guest has a 1 GiB pool)"
            ));
        }
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
    let mut lab_sizes = harness::default_lab_sizes(a.quick);
    for s in lab_sizes.values_mut() {
        if let Some(m) = a.lab_mem_per_rank {
            s.mem_per_rank = m;
        }
        if let Some(i) = a.lab_iters {
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
        force_lab: a.lab,
        lab_reps,
        lab_sizes,
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
            if e.downcast_ref::<Interrupted>().is_some() {
                ExitCode::from(130)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
