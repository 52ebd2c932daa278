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
//! - [`plan`]: configurations, competitors, sizes, the guest's script.
//! - [`guest`]: the image (hpmmap-image's job image plus an overlay), the plugin, QEMU.
//! - [`parse`]: the guest console and the plugin's log into runs.
//! - [`report`]: summaries, the markdown table and the plotters plot.

pub mod guest;
pub mod parse;
pub mod plan;
pub mod report;
pub mod run;

pub use plan::{Competitor, IcountConfig, Plan};

/// The guest's vCPUs: 0 runs init and the driver script, 1 and 2 the competitors, 3 the
/// rank.
pub const VCPUS: usize = 4;
pub const RANK_CPU: usize = 3;
pub const COMPETITOR_CPUS: [usize; 2] = [1, 2];

/// Where the rank's code is linked (`-Ttext-segment`): the plugin counts user code in
/// [`RANK_TEXT_LO`, [`RANK_TEXT_HI`]) as the rank's; busybox (0x400000) and the
/// competitors (PIE, dynamic) lie elsewhere.
pub const RANK_TEXT_LO: u64 = 0x1000_0000;
pub const RANK_TEXT_HI: u64 = 0x2000_0000;

/// What the table's header says about the clock.
pub const CLOCK_LABEL: &str = "QEMU/TCG instruction-count clock (`-icount shift=0,sleep=off`, single-threaded TCG): 1 instruction = 1 ns; deterministic, independent of host load";
pub const CLOCK_COUNTS: &str = "counts: instructions on the rank's CPU: its own code plus every guest-kernel instruction there (page faults, zeroing, compaction, reclaim, khugepaged, lock waits, IPIs, interrupts, kernel threads)";
pub const CLOCK_MISSES: &str = "does not count: TLB misses, cache misses, memory bandwidth, NUMA (they cost no instructions): THP's and 1 GiB pages' TLB advantage is invisible here";

#[derive(Debug, thiserror::Error)]
pub enum IcountError {
    #[error("qemu-system-x86_64 is not installed")]
    NoQemu,
    #[error("QEMU cannot load TCG plugins (-plugin): {0}")]
    NoPlugins(String),
    #[error("building {what}: {why}")]
    Build { what: String, why: String },
    #[error("the rank binary {path}: {why}")]
    RankBinary { path: String, why: String },
    #[error("job image: {0}")]
    Image(String),
    #[error("QEMU: {0}")]
    Qemu(String),
    #[error("guest output: {0}")]
    Parse(String),
    #[error("{0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
}
