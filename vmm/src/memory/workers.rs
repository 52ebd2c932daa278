//! How many threads prefault guest RAM, on which CPUs, and why. Zeroing 1 GiB pages is
//! memory-bound work done by whichever CPU faults them: the CPUs of the node the memory is
//! bound to do it fastest and leave the other node's CPUs to its own jobs (Cloud
//! Hypervisor's prefault threads follow the memory zone's node the same way). A VMM confined
//! to a few CPUs (taskset, a cgroup cpuset, a jail) uses just those.

use crate::units::{format_cpu_list, parse_cpu_list};
use std::path::Path;

/// The plan for one prefault: `workers` threads, each allowed on `cpus` (empty: wherever the
/// process may run), and the reason in words for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPlan {
    pub workers: usize,
    pub cpus: Vec<usize>,
    pub reason: String,
}

/// The CPUs of a host NUMA node, from sysfs (`nodeN/cpulist`; empty for a memory-only node).
pub fn node_cpus(sys_root: &Path, node: u32) -> Vec<usize> {
    std::fs::read_to_string(sys_root.join(format!("devices/system/node/node{node}/cpulist")))
        .ok()
        .and_then(|t| parse_cpu_list(t.trim()).ok())
        .unwrap_or_default()
}

/// Decides the plan. `requested`: `--prefault-workers` (0: choose); `allowed`: the CPUs
/// the process may run on; `node`: the host node guest RAM is bound to, with its CPUs;
/// `chunks`: how many pieces the RAM is cut into (no use for more workers than that).
pub fn plan(
    requested: usize,
    allowed: &[usize],
    node: Option<(u32, &[usize])>,
    chunks: u64,
) -> WorkerPlan {
    let cap = |n: usize| n.min(chunks.max(1) as usize).max(1);
    if requested > 0 {
        let workers = cap(requested);
        return WorkerPlan {
            workers,
            cpus: vec![],
            reason: capped(
                format!("--prefault-workers {requested}"),
                workers,
                requested,
                chunks,
            ),
        };
    }
    let allowed_text = if allowed.is_empty() {
        "unknown".to_string()
    } else {
        format_cpu_list(allowed)
    };
    if let Some((n, cpus)) = node {
        let local: Vec<usize> = cpus
            .iter()
            .copied()
            .filter(|c| allowed.contains(c))
            .collect();
        if !local.is_empty() {
            let workers = cap(local.len());
            let reason = capped(
                format!(
                    "one per CPU of host node {n} that the VMM may use ({})",
                    format_cpu_list(&local)
                ),
                workers,
                local.len(),
                chunks,
            );
            return WorkerPlan {
                workers,
                cpus: local,
                reason,
            };
        }
        let workers = cap(allowed.len().max(1));
        let why = if cpus.is_empty() {
            format!("host node {n} has no CPUs (memory only)")
        } else {
            format!(
                "the VMM may not run on host node {n}'s CPUs ({})",
                format_cpu_list(cpus)
            )
        };
        return WorkerPlan {
            workers,
            cpus: vec![],
            reason: capped(
                format!("{why}: one per CPU it may use ({allowed_text})"),
                workers,
                allowed.len().max(1),
                chunks,
            ),
        };
    }
    let workers = cap(allowed.len().max(1));
    let mut reason = format!("one per CPU the VMM may use ({allowed_text})");
    if allowed.len() == 1 {
        reason.push_str(
            "; the VMM is confined to one CPU (taskset, cgroup cpuset): widen its affinity \
             for a faster prefault",
        );
    }
    WorkerPlan {
        workers,
        cpus: vec![],
        reason: capped(reason, workers, allowed.len().max(1), chunks),
    }
}

fn capped(reason: String, workers: usize, wanted: usize, chunks: u64) -> String {
    if workers < wanted {
        format!("{reason}, capped at {chunks} piece(s) of guest RAM")
    } else {
        reason
    }
}

/// Lets the calling thread run on `cpus` only (no-op for an empty list).
pub fn restrict_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET is only given CPUs below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(r: std::ops::Range<usize>) -> Vec<usize> {
        r.collect()
    }

    #[test]
    fn bound_memory_is_prefaulted_by_its_nodes_cpus_that_the_vmm_may_use() {
        let node0 = cpus(0..16);
        let p = plan(0, &cpus(0..32), Some((0, &node0)), 18);
        assert_eq!((p.workers, p.cpus.clone()), (16, node0.clone()));
        assert_eq!(
            p.reason,
            "one per CPU of host node 0 that the VMM may use (0-15)"
        );
        // A VMM confined to CPUs 8-23 on a node of 0-15: the 8 it shares with the node.
        let p = plan(0, &cpus(8..24), Some((0, &node0)), 18);
        assert_eq!((p.workers, p.cpus), (8, cpus(8..16)));
        assert!(p.reason.contains("(8-15)"), "{}", p.reason);
    }

    #[test]
    fn workers_never_outnumber_the_pieces_of_guest_ram() {
        let node1 = cpus(16..32);
        let p = plan(0, &cpus(0..32), Some((1, &node1)), 2);
        assert_eq!(p.workers, 2);
        assert!(
            p.reason.ends_with("capped at 2 piece(s) of guest RAM"),
            "{}",
            p.reason
        );
        let p = plan(64, &cpus(0..4), None, 10);
        assert_eq!(p.workers, 10);
        assert!(
            p.reason.starts_with("--prefault-workers 64"),
            "{}",
            p.reason
        );
    }

    #[test]
    fn a_vmm_confined_to_one_cpu_says_so() {
        let p = plan(0, &[1], None, 18);
        assert_eq!(p.workers, 1);
        assert!(
            p.reason.contains("(1)") && p.reason.contains("confined to one CPU"),
            "{}",
            p.reason
        );
    }

    #[test]
    fn a_node_without_usable_cpus_falls_back_to_the_allowed_ones() {
        let p = plan(0, &cpus(0..4), Some((2, &[])), 18);
        assert_eq!((p.workers, p.cpus.is_empty()), (4, true));
        assert!(
            p.reason
                .starts_with("host node 2 has no CPUs (memory only)"),
            "{}",
            p.reason
        );
        let node1 = cpus(4..8);
        let p = plan(0, &cpus(0..4), Some((1, &node1)), 18);
        assert_eq!(p.workers, 4);
        assert!(
            p.reason.contains("may not run on host node 1's CPUs (4-7)"),
            "{}",
            p.reason
        );
    }

    #[test]
    fn node_cpus_come_from_sysfs() {
        let d = std::env::temp_dir().join(format!("hpmmap-workers-{}", std::process::id()));
        let n = d.join("devices/system/node/node1");
        std::fs::create_dir_all(&n).unwrap();
        std::fs::write(n.join("cpulist"), "8-11,24-27\n").unwrap();
        assert_eq!(node_cpus(&d, 1), vec![8, 9, 10, 11, 24, 25, 26, 27]);
        assert!(node_cpus(&d, 0).is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
