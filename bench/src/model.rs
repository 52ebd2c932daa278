//! The types every layer of the benchmark harness shares: the competing-load profiles, a
//! cell of the plan and its sizes, what one run left behind ([`RunRecord`], with what a VM
//! run adds), and the interruption error. It sits below everything that plans, runs,
//! tabulates or plots runs, and imports only the leaf modules (configurations, the
//! workloads and their report format).

use serde::{Deserialize, Serialize};

use crate::config::{Config, Place};
use crate::report::WorkloadReport;
use crate::workloads::Workload;

/// Competing commodity load around a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Profile {
    /// Nothing else running.
    #[serde(rename = "iso")]
    Iso,
    /// One parallel build.
    A,
    /// Two parallel builds plus stress-ng memory stressors.
    B,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Self::Iso, Self::A, Self::B];

    pub fn name(self) -> &'static str {
        match self {
            Self::Iso => "iso",
            Self::A => "A",
            Self::B => "B",
        }
    }

    pub fn from_name(s: &str) -> Option<Profile> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
    }

    pub fn builds(self) -> usize {
        match self {
            Self::Iso => 0,
            Self::A => 1,
            Self::B => 2,
        }
    }
}

/// Parses sizes like 4096, 64K, 64M, 2G (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("invalid size {s:?} (expected e.g. 4096, 64K, 256M, 1G)"))
}

/// One measured cell of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub workload: Workload,
    pub config: Config,
}

/// Sizes and iteration counts for one workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadSize {
    pub mem_per_rank: u64,
    pub iters: usize,
}

/// One workload run as the harness saw it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub rep: usize,
    pub profile: Profile,
    pub workload: Workload,
    pub config: Config,
    #[serde(default)]
    pub place: Place,
    pub wall_secs: f64,
    pub error: Option<String>,
    pub report: Option<WorkloadReport>,
    /// VM runs: what the guest and hpmmap-vmm said besides the workload's lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmRunInfo>,
}

/// The parts of `hpmmap-vmm`'s JSON report a run record keeps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VmmFacts {
    pub platform: Option<String>,
    pub exit_reason: Option<String>,
    pub exit_code: Option<i64>,
    pub host_page_size_bytes: Option<u64>,
    pub pages_1g: Option<u64>,
    pub run_seconds: Option<f64>,
}

impl VmmFacts {
    pub fn from_json(v: &serde_json::Value) -> VmmFacts {
        VmmFacts {
            platform: v["platform"].as_str().map(str::to_string),
            exit_reason: v["exit_reason"].as_str().map(str::to_string),
            exit_code: v["exit_code"].as_i64(),
            host_page_size_bytes: v["host_page_size_bytes"].as_u64(),
            pages_1g: v["kvm_pages"]["pages_1g"].as_u64(),
            run_seconds: v["run_seconds"].as_f64(),
        }
    }
}

/// Everything a VM run adds to its record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmRunInfo {
    pub job_runs: String,
    pub job_exit: Option<i32>,
    pub hpmmap_counters: Vec<(String, String)>,
    pub vmm: VmmFacts,
}

#[derive(Debug, thiserror::Error)]
#[error("interrupted by a signal; competitors stopped, huge pages returned, no results written")]
pub struct Interrupted;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_reject_garbage() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
