//! What a rank's body works with: its context, its fault meter, the measured loop every
//! workload runs its iterations in, and the markers the instruction-count plugin counts
//! between.

use std::time::Instant;

use anyhow::Result;

use super::params::Params;
use crate::comm::{Comm, RankOut};
use crate::memory::faults_now;

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
