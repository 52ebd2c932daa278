//! Fixed work quantum (FWQ, the OS-noise benchmark of the LLNL/Sandia suites): every
//! iteration runs the same arithmetic loop, touching no memory beyond the stack, so any
//! difference between iterations is time the rank's CPU spent elsewhere: interrupts,
//! kernel threads, IPIs, page faults of nothing but the kernel's own doing. On the
//! instruction-count clock (`crate::icount`) the quantum is a fixed number of instructions
//! and the excess of an iteration over the fastest one is its detour.

use anyhow::Result;

use super::rank::{measured_loop, FaultMeter, RankCtx};

/// Loop trips per quantum: about a million instructions (measured: 0.5 per trip, the
/// compiler folds pairs of steps), 1 ms on the instruction-count clock: a scheduler tick
/// (4 ms at HZ=250) lands in about every fourth quantum.
pub const QUANTUM_LOOPS: u64 = 2_000_000;

pub fn rank_main(ctx: &RankCtx) -> Result<()> {
    let setup = FaultMeter::start();
    let mut acc = 0x9e37_79b9_7f4a_7c15u64;
    measured_loop(ctx, &setup, |_| {
        for _ in 0..QUANTUM_LOOPS {
            acc = acc
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
        }
        // Keep the loop: its result is observed.
        std::hint::black_box(acc);
        Ok(true)
    })?;
    let out = ctx.out();
    out.metrics[0] = QUANTUM_LOOPS as f64;
    Ok(())
}
