//! The STREAM kernels (copy, scale, add, triad) over three arrays per rank, validated the
//! way STREAM validates: the same sequence is replayed on scalars and every array's
//! average relative error must stay below [`EPSILON`]. The headline figure is the triad's
//! bandwidth; an iteration is one pass of all four kernels.

use std::time::Instant;

use anyhow::Result;

use super::rank::{measured_loop, FaultMeter, RankCtx};
use crate::memory::Buf;

/// STREAM's tolerance for doubles.
pub const EPSILON: f64 = 1e-13;
const SCALAR: f64 = 3.0;

/// Average relative error of `a` against the expected value `want`.
pub fn avg_rel_error(a: &[f64], want: f64) -> f64 {
    let sum: f64 = a.iter().map(|v| (v - want).abs()).sum();
    sum / a.len() as f64 / want.abs()
}

/// The values every element holds after `iters` passes, replayed on scalars.
pub fn expected(iters: usize) -> (f64, f64, f64) {
    let (mut a, mut b, mut c) = (1.0f64, 2.0f64, 0.0f64);
    a *= 2.0;
    for _ in 0..iters {
        c = a;
        b = SCALAR * c;
        c = a + b;
        a = b + SCALAR * c;
    }
    (a, b, c)
}

pub fn rank_main(ctx: &RankCtx) -> Result<()> {
    let n = (ctx.p.mem_per_rank / 3 / 8) as usize;
    let mode = ctx.p.mode;
    let setup = FaultMeter::start();
    let mut a: Buf<f64> = Buf::new(n, mode)?;
    let mut b: Buf<f64> = Buf::new(n, mode)?;
    let mut c: Buf<f64> = Buf::new(n, mode)?;
    a.fill(1.0);
    b.fill(2.0);
    c.fill(0.0);
    for v in a.iter_mut() {
        *v *= 2.0;
    }
    let mut triad = vec![0.0f64; ctx.p.iters];
    let mut done = 0usize;
    measured_loop(ctx, &setup, |_| {
        c.copy_from_slice(&a);
        for (bj, cj) in b.iter_mut().zip(c.iter()) {
            *bj = SCALAR * cj;
        }
        for ((cj, aj), bj) in c.iter_mut().zip(a.iter()).zip(b.iter()) {
            *cj = aj + bj;
        }
        let t0 = Instant::now();
        for ((aj, bj), cj) in a.iter_mut().zip(b.iter()).zip(c.iter()) {
            *aj = bj + SCALAR * cj;
        }
        triad[done] = t0.elapsed().as_secs_f64();
        done += 1;
        Ok(true)
    })?;
    triad.truncate(done);
    let (ea, eb, ec) = expected(triad.len());
    let err = avg_rel_error(&a, ea)
        .max(avg_rel_error(&b, eb))
        .max(avg_rel_error(&c, ec));
    let best = triad.iter().cloned().fold(f64::MAX, f64::min);
    triad.sort_by(f64::total_cmp);
    let median = triad[triad.len() / 2];
    ctx.out().metrics[..4].copy_from_slice(&[(3 * 8 * n) as f64, best, err, median]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_replay_matches_one_hand_computed_pass() {
        // a=2; c=2; b=6; c=8; a=6+24=30
        assert_eq!(expected(1), (30.0, 6.0, 8.0));
        assert_eq!(avg_rel_error(&[30.0, 30.0], 30.0), 0.0);
        assert!(avg_rel_error(&[30.0, 31.0], 30.0) > EPSILON);
    }
}
