//! The isolation benchmark on QEMU's instruction-count clock (issue 17).
//!
//! One QEMU/TCG guest per configuration (`-accel tcg,thread=single -icount
//! shift=0,sleep=off`, Debian's kernel, [`VCPUS`] vCPUs, no nesting) runs every workload ×
//! competitor inside it. Guest time is then instructions executed (1 ns each), the same on
//! every run and any host however loaded. But the vCPUs share that clock round robin: a
//! rank's elapsed time, and its guest-accounted CPU time too, grow when another vCPU only
//! burns CPU (measured: 0.40 s of work read 0.9-1.06 s beside a CPU hog). So the rank's
//! figure is counted by a TCG plugin (`bench/icount/hpmmap-icount.c`): the instructions of
//! the rank's own code plus every guest-kernel instruction on the rank's CPU (faults,
//! zeroing, compaction, reclaim, interrupts, IPIs, kernel threads there), between marker
//! instructions the workload executes at each iteration boundary
//! ([`crate::workloads::icount_mark`]). TLB misses, caches and memory bandwidth cost no
//! instructions and do not show.
//!
//! - [`machine`]: the guest's vCPUs, where the rank's code lies, what the clock counts;
//!   [`error`]: what can go wrong.
//! - [`plan`]: configurations, competitors, sizes, the guest's script.
//! - [`guest`]: the image (hpmmap-image's job image plus an overlay), the plugin, QEMU.
//! - [`parse`]: the guest console and the plugin's log into runs.
//! - [`report`]: summaries, the markdown table and the plotters plot.

pub mod error;
pub mod guest;
pub mod machine;
pub mod parse;
pub mod plan;
pub mod report;
pub mod run;

pub use error::IcountError;
pub use machine::{
    CLOCK_COUNTS, CLOCK_LABEL, CLOCK_MISSES, COMPETITOR_CPUS, RANK_CPU, RANK_TEXT_HI, RANK_TEXT_LO,
    VCPUS,
};
pub use plan::{Competitor, IcountConfig, Plan};
