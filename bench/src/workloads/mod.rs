//! The four workloads. Each runs `ranks` forked processes that share a [`Comm`]; every
//! rank allocates its own arrays (weak scaling: `mem_per_rank` bytes each) with the run's
//! [`AllocMode`], initialises them (the setup phase), then runs `iters` measured
//! iterations bracketed by barriers, and verifies its result after the measured phase.

//!
//! The workloads' modules share only [`params`] and [`rank`] (siblings); this module runs
//! them and sums their ranks' outcomes into a report.

pub mod cg;
pub mod faults;
pub mod fwq;
pub mod gups;
pub mod params;
pub mod rank;
pub mod stream;

use anyhow::{bail, Result};

pub use params::{Params, Workload, MIN_MEM};
pub use rank::{icount_mark, RankCtx, MARK_BEGIN, MARK_END, MARK_ITER, MARK_START};

use crate::comm::{hist_quantile, Comm, RankOut, HIST_BUCKETS};
use crate::ranks::run_ranks;
use crate::report::WorkloadReport;

/// Runs the workload's ranks and reports their outcome; bad parameters are an error
/// before anything is forked.
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
