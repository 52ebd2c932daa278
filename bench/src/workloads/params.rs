//! Which workload a run is and its parameters (the `hpmmap-workload` command line).

use crate::memory::AllocMode;

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
