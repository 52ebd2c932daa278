//! The four workloads. Each runs `ranks` forked processes that share a [`Comm`]; every
//! rank allocates its own arrays (weak scaling: `mem_per_rank` bytes each) with the run's
//! [`AllocMode`], initialises them (the setup phase), then runs `iters` measured
//! iterations bracketed by barriers, and verifies its result after the measured phase.

pub mod cg;
pub mod faults;
pub mod fwq;
pub mod gups;
pub mod stream;

use std::time::Instant;

use anyhow::{bail, Result};

use crate::comm::{hist_quantile, Comm, RankOut, HIST_BUCKETS};
use crate::memory::{faults_now, AllocMode};
use crate::ranks::run_ranks;
use crate::report::WorkloadReport;

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Cg,
    Stream,
    Gups,
    Faults,
    /// Fixed work quantum (OS noise): only on the instruction-count clock (`icount`).
    Fwq,
}

impl Workload {
    /// The workloads of the native and lab runs.
    pub const ALL: [Workload; 4] = [Self::Cg, Self::Stream, Self::Gups, Self::Faults];
    /// The workloads of the instruction-count runs (`hpmmap-bench icount`).
    pub const ICOUNT: [Workload; 5] = [Self::Cg, Self::Stream, Self::Gups, Self::Faults, Self::Fwq];

    pub fn name(self) -> &'static str {
        match self {
            Self::Cg => "cg",
            Self::Stream => "stream",
            Self::Gups => "gups",
            Self::Faults => "faults",
            Self::Fwq => "fwq",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ICOUNT.into_iter().find(|w| w.name() == s)
    }

    pub fn default_iters(self) -> usize {
        match self {
            Self::Cg => 200,
            Self::Stream => 20,
            Self::Gups => 16,
            Self::Faults => 20,
            Self::Fwq => 1000,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Params {
    pub workload: Workload,
    pub ranks: usize,
    pub mem_per_rank: u64,
    pub iters: usize,
    pub mode: AllocMode,
    /// cg only: stop once ||r|| / ||b|| falls below this (0: run all `iters`, as HPCCG).
    pub tol: f64,
    /// Rank i runs pinned to `cpus[i % len]`; empty: not pinned.
    pub cpus: Vec<usize>,
}

/// Smallest memory per rank a workload accepts.
pub const MIN_MEM: u64 = 1 << 20;

pub fn run(p: &Params) -> Result<WorkloadReport> {
    if p.ranks == 0 {
        bail!("--ranks must be at least 1");
    }
    if p.iters == 0 || p.iters > 100_000 {
        bail!("--iters {} out of range (1..=100000)", p.iters);
    }
    if p.mem_per_rank < MIN_MEM {
        bail!(
            "--mem-per-rank {} is below the minimum of 1M",
            p.mem_per_rank
        );
    }
    let halo_len = match p.workload {
        Workload::Cg => cg::Grid::for_memory(p.mem_per_rank).plane(),
        _ => 0,
    };
    let comm = Comm::new(p.ranks, halo_len, p.iters)?;
    run_ranks(&comm, |rank| {
        if !p.cpus.is_empty() {
            let cpu = p.cpus[rank % p.cpus.len()];
            crate::ranks::pin_to(cpu).map_err(|e| anyhow::anyhow!("pinning to CPU {cpu}: {e}"))?;
        }
        icount_mark(MARK_START);
        let ctx = RankCtx {
            comm: &comm,
            rank,
            p,
        };
        match p.workload {
            Workload::Cg => cg::rank_main(&ctx),
            Workload::Stream => stream::rank_main(&ctx),
            Workload::Gups => gups::rank_main(&ctx),
            Workload::Faults => faults::rank_main(&ctx),
            Workload::Fwq => fwq::rank_main(&ctx),
        }
    })?;
    Ok(collect(&comm, p))
}

/// What a rank's body gets.
pub struct RankCtx<'a> {
    pub comm: &'a Comm,
    pub rank: usize,
    pub p: &'a Params,
}

impl RankCtx<'_> {
    pub fn out(&self) -> &mut RankOut {
        self.comm.out(self.rank)
    }
}

/// Page-fault bookkeeping around a rank's phases.
pub struct FaultMeter {
    start: (u64, u64),
}

impl FaultMeter {
    pub fn start() -> Self {
        FaultMeter {
            start: faults_now(),
        }
    }

    pub fn read(&self) -> (u64, u64) {
        let now = faults_now();
        (now.0 - self.start.0, now.1 - self.start.1)
    }
}

/// Marker kinds (`crate::icount`): the measured phase begins, an iteration ended, the phase
/// ended.
pub const MARK_BEGIN: u8 = 1;
pub const MARK_ITER: u8 = 2;
pub const MARK_END: u8 = 3;
/// A rank starts (before it allocates): its setup is the stretch up to `MARK_BEGIN`.
pub const MARK_START: u8 = 4;

/// Executes the marker instruction the instruction-count plugin (`bench/icount/`) reports
/// on: `nopl 0x484d50NN(%rax)`, NN the kind. Anywhere else it is a 7-byte no-op (a
/// multi-byte NOP never touches memory), so the workloads carry it always.
#[inline(always)]
pub fn icount_mark(kind: u8) {
    // SAFETY: a NOP: no memory access, no register or flag change.
    unsafe {
        match kind {
            MARK_BEGIN => std::arch::asm!(
                "nop dword ptr [rax + 0x484d5001]",
                options(nostack, preserves_flags)
            ),
            MARK_ITER => std::arch::asm!(
                "nop dword ptr [rax + 0x484d5002]",
                options(nostack, preserves_flags)
            ),
            MARK_START => std::arch::asm!(
                "nop dword ptr [rax + 0x484d5004]",
                options(nostack, preserves_flags)
            ),
            _ => std::arch::asm!(
                "nop dword ptr [rax + 0x484d5003]",
                options(nostack, preserves_flags)
            ),
        }
    }
}

/// Runs the measured loop: barrier, then up to `iters` timed iterations each opened by a
/// barrier, recording the rank's own time per iteration and the faults it took in between.
/// `iteration` returns `false` when there is nothing left to do (a converged solver); every
/// rank must decide that alike. Untimed slots stay 0 and are not reported.
pub fn measured_loop(
    ctx: &RankCtx,
    setup: &FaultMeter,
    mut iteration: impl FnMut(usize) -> Result<bool>,
) -> Result<()> {
    let (smin, smaj) = setup.read();
    let out = ctx.out();
    out.setup_minflt = smin;
    out.setup_majflt = smaj;
    ctx.comm.prefault();
    Comm::prefault_text();
    // Warm the paths the loop takes (timer, time slots, this stack depth) so their first
    // use is not charged to the measured phase.
    let t = Instant::now();
    ctx.comm.set_time(ctx.rank, 0, t.elapsed().as_secs_f64());
    ctx.comm.set_time(ctx.rank, 0, 0.0);
    let _ = FaultMeter::start().read();
    ctx.comm.barrier();
    let meter = FaultMeter::start();
    icount_mark(MARK_BEGIN);
    for i in 0..ctx.p.iters {
        ctx.comm.barrier();
        let t0 = Instant::now();
        if !iteration(i)? {
            break;
        }
        ctx.comm.set_time(ctx.rank, i, t0.elapsed().as_secs_f64());
        icount_mark(MARK_ITER);
    }
    icount_mark(MARK_END);
    let (min, maj) = meter.read();
    out.minflt = min;
    out.majflt = maj;
    ctx.comm.barrier();
    Ok(())
}

fn collect(comm: &Comm, p: &Params) -> WorkloadReport {
    let iters = comm.iters;
    let mut iter_secs = Vec::with_capacity(iters);
    for i in 0..iters {
        let t = (0..comm.ranks).map(|r| comm.time(r, i)).fold(0.0, f64::max);
        if t > 0.0 {
            iter_secs.push(t);
        }
    }
    let outs: Vec<&RankOut> = (0..comm.ranks).map(|r| &*comm.out(r)).collect();
    let sum = |f: fn(&RankOut) -> u64| outs.iter().map(|o| f(o)).sum::<u64>();
    let mut r = WorkloadReport {
        workload: p.workload.name().to_string(),
        mode: p.mode,
        ranks: p.ranks,
        mem_per_rank: p.mem_per_rank,
        figure_name: String::new(),
        figure: 0.0,
        unit: String::new(),
        valid: false,
        iter_secs,
        minflt: sum(|o| o.minflt),
        majflt: sum(|o| o.majflt),
        setup_minflt: sum(|o| o.setup_minflt),
        setup_majflt: sum(|o| o.setup_majflt),
        detail: Vec::new(),
    };
    let metric = |k: usize| outs.iter().map(|o| o.metrics[k]).collect::<Vec<f64>>();
    let max = |v: Vec<f64>| v.into_iter().fold(f64::MIN, f64::max);
    let total: f64 = r.total_secs();
    let n = r.iter_secs.len().max(1) as f64;
    match p.workload {
        Workload::Cg => {
            // metrics: 0 relative residual (recomputed), 1 max |x - 1|, 2 iterations run,
            // 3 grid nx, 4 ny, 5 nz per rank.
            let res = metric(0)[0];
            let err = max(metric(1));
            r.figure_name = "secs_per_iter".into();
            r.unit = "s".into();
            r.figure = total / n;
            r.valid = cg::solution_ok(res, err, p.tol);
            let m = &outs[0].metrics;
            r.detail = vec![
                ("residual".into(), format!("{res:e}")),
                ("err_max".into(), format!("{err:e}")),
                ("cg_iters".into(), format!("{}", m[2] as u64)),
                (
                    "grid".into(),
                    format!("{}x{}x{}", m[3], m[4], m[5] * p.ranks as f64),
                ),
            ];
        }
        Workload::Stream => {
            // metrics: 0 triad bytes per iteration, 1 best triad secs, 2 avg abs relative
            // error (max over arrays), 3 median triad secs.
            let bytes = metric(0).iter().sum::<f64>();
            let med = max(metric(3));
            let best = max(metric(1));
            let err = max(metric(2));
            r.figure_name = "triad_gbps".into();
            r.unit = "GB/s".into();
            r.figure = bytes / med / 1e9;
            r.valid = err <= stream::EPSILON;
            r.detail = vec![
                (
                    "triad_best_gbps".into(),
                    format!("{:.3}", bytes / best / 1e9),
                ),
                ("rel_err".into(), format!("{err:e}")),
            ];
        }
        Workload::Gups => {
            // metrics: 0 updates, 1 verification errors, 2 table entries.
            let updates = metric(0).iter().sum::<f64>();
            let errors = metric(1).iter().sum::<f64>();
            let entries = metric(2).iter().sum::<f64>();
            r.figure_name = "gups".into();
            r.unit = "GUP/s".into();
            r.figure = updates / total / 1e9;
            r.valid = gups::verification_passed(errors as u64, entries as u64);
            r.detail = vec![
                ("updates".into(), format!("{}", updates as u64)),
                ("errors".into(), format!("{}", errors as u64)),
                ("table_entries".into(), format!("{}", entries as u64)),
            ];
        }
        Workload::Fwq => {
            // metrics: 0 quantum loop count.
            r.figure_name = "quantum_p50_secs".into();
            r.unit = "s".into();
            let mut v = r.iter_secs.clone();
            v.sort_by(f64::total_cmp);
            r.figure = v.get(v.len() / 2).copied().unwrap_or(0.0);
            r.valid = outs.iter().all(|o| o.status == 1);
            r.detail = vec![("quantum_loops".into(), format!("{}", metric(0)[0] as u64))];
        }
        Workload::Faults => {
            // metrics: 0 pages touched per cycle; 1 faults taken while touching (all cycles)
            let mut hist = [0u64; HIST_BUCKETS];
            for o in &outs {
                for (h, x) in hist.iter_mut().zip(o.hist.iter()) {
                    *h += x;
                }
            }
            let pages = metric(0).iter().sum::<f64>();
            let p50 = hist_quantile(&hist, 0.5);
            r.figure_name = "touch_p50_ns".into();
            r.unit = "ns".into();
            r.figure = p50 as f64;
            r.valid = outs.iter().all(|o| o.status == 1);
            r.detail = vec![
                ("pages_per_cycle".into(), format!("{}", pages as u64)),
                (
                    "faults_per_cycle".into(),
                    format!("{:.1}", r.minflt as f64 / n),
                ),
                ("p90_ns".into(), format!("{}", hist_quantile(&hist, 0.9))),
                ("p99_ns".into(), format!("{}", hist_quantile(&hist, 0.99))),
                ("p999_ns".into(), format!("{}", hist_quantile(&hist, 0.999))),
                ("max_ns".into(), format!("{}", hist_quantile(&hist, 1.0))),
            ];
        }
    }
    r
}
