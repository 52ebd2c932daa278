//! Page-fault microbenchmark: every iteration maps `mem_per_rank` bytes with the run's
//! allocation mode, writes one word into each 4 KiB page, timing each first touch, and
//! unmaps. The touch latencies go into a log-linear histogram (the fault latency
//! distribution; touches that hit an already-mapped huge page show up as its fast mode),
//! and getrusage counts the faults the cycles took.

use std::time::Instant;

use anyhow::Result;

use super::rank::{measured_loop, FaultMeter, RankCtx};
use crate::comm::{hist_bucket, HIST_BUCKETS};
use crate::memory::Region;

const PAGE: usize = 4096;

pub fn rank_main(ctx: &RankCtx) -> Result<()> {
    let bytes = ctx.p.mem_per_rank as usize;
    let pages = bytes / PAGE;
    let setup = FaultMeter::start();
    let mut hist = [0u64; HIST_BUCKETS];
    measured_loop(ctx, &setup, |_| {
        let region = Region::new(bytes, ctx.p.mode)?;
        let base = region.as_ptr();
        for i in 0..pages {
            let t0 = Instant::now();
            // SAFETY: i * PAGE < pages * PAGE <= bytes <= region.len(): in bounds of the
            // writable mapping `region` owns, which lives until the drop below.
            unsafe { base.add(i * PAGE).write_volatile(1) };
            let ns = t0.elapsed().as_nanos() as u64;
            hist[hist_bucket(ns)] += 1;
        }
        drop(region);
        Ok(true)
    })?;
    let out = ctx.out();
    out.hist = hist;
    out.metrics[0] = pages as f64;
    Ok(())
}
