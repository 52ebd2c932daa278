//! The guest machine of the instruction-count runs (its vCPUs and their roles, where the
//! rank's code is linked) and what its clock counts, as the table's header says it.

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
