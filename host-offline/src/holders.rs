//! Which running hpmmap-vmm processes hold 1 GiB hugetlb pages, found through procfs: a
//! process whose comm or exe is `hpmmap-vmm`, its smaps mappings with `KernelPageSize:
//! 1048576 kB` (how many pages), and its numa_maps (on which node).

use crate::host::Host;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;

pub const VMM_NAME: &str = "hpmmap-vmm";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    /// 1 GiB pages mapped (faulted in) by the process.
    pub pages: u64,
    /// The same pages per node, from numa_maps; pages it could not place are under no key.
    pub per_node: BTreeMap<u32, u64>,
    /// The job it runs for (`--job ID` on its command line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

impl Holder {
    pub fn on_node(&self, node: u32) -> u64 {
        self.per_node.get(&node).copied().unwrap_or(0)
    }
}

/// 1 GiB pages mapped according to one smaps text.
pub fn smaps_1g_pages(text: &str) -> u64 {
    let mut total_kb = 0u64;
    let mut in_1g = false;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let key = it.next().unwrap_or("");
        let val = it.next().and_then(|v| v.parse::<u64>().ok());
        match (key, val) {
            ("KernelPageSize:", Some(v)) => in_1g = v == 1_048_576,
            ("Shared_Hugetlb:", Some(v)) | ("Private_Hugetlb:", Some(v)) if in_1g => total_kb += v,
            _ => {}
        }
    }
    total_kb / 1_048_576
}

/// 1 GiB pages per node according to one numa_maps text.
pub fn numa_maps_1g_pages(text: &str) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if !line.contains("kernelpagesize_kB=1048576") {
            continue;
        }
        for field in line.split_whitespace() {
            if let Some((k, v)) = field.split_once('=') {
                if let (Some(node), Ok(pages)) = (
                    k.strip_prefix('N').and_then(|n| n.parse::<u32>().ok()),
                    v.parse::<u64>(),
                ) {
                    *out.entry(node).or_insert(0) += pages;
                }
            }
        }
    }
    out
}

pub fn is_vmm(host: &Host, pid: &str) -> Option<String> {
    let dir = host.proc_root().join(pid);
    let comm = fs::read_to_string(dir.join("comm"))
        .ok()?
        .trim_end()
        .to_string();
    if comm == VMM_NAME {
        return Some(comm);
    }
    let exe = fs::read_link(dir.join("exe")).ok()?;
    let name = exe.file_name()?.to_string_lossy().into_owned();
    // A replaced binary reads as "hpmmap-vmm (deleted)".
    if name == VMM_NAME || name == format!("{VMM_NAME} (deleted)") {
        Some(comm)
    } else {
        None
    }
}

/// Running hpmmap-vmm processes that map at least one 1 GiB page. Processes that vanish or
/// cannot be read mid-scan are skipped: procfs is a moving target.
pub fn vm_holders(host: &Host) -> Vec<Holder> {
    let mut out = Vec::new();
    for pid in host.list(host.proc_root()) {
        let Ok(pid_n) = pid.parse::<u32>() else {
            continue;
        };
        let Some(comm) = is_vmm(host, &pid) else {
            continue;
        };
        let dir = host.proc_root().join(&pid);
        let Ok(smaps) = fs::read_to_string(dir.join("smaps")) else {
            continue;
        };
        let pages = smaps_1g_pages(&smaps);
        if pages == 0 {
            continue;
        }
        let per_node = fs::read_to_string(dir.join("numa_maps"))
            .map(|t| numa_maps_1g_pages(&t))
            .unwrap_or_default();
        out.push(Holder {
            pid: pid_n,
            comm,
            pages,
            per_node,
            job: crate::jobs::job_of_pid(host, pid_n),
        });
    }
    out.sort_by_key(|h| h.pid);
    out
}

/// [`held_on_node`] counting only the VMMs of `job` (None: every VMM).
pub fn held_on_node_by(holders: &[Holder], node: u32, job: Option<&str>) -> u64 {
    let mine: Vec<Holder> = holders
        .iter()
        .filter(|h| job.is_none() || h.job.as_deref() == job)
        .cloned()
        .collect();
    held_on_node(&mine, node)
}

/// Pages held by hpmmap-vmm processes on `node`. Pages numa_maps could not place are
/// counted on every node: for release, over-counting what a VM holds is the safe side.
pub fn held_on_node(holders: &[Holder], node: u32) -> u64 {
    holders
        .iter()
        .map(|h| {
            let placed: u64 = h.per_node.values().sum();
            h.on_node(node) + h.pages.saturating_sub(placed)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f0000000000-7f0080000000 rw-s 00000000 00:0f 1234 /memfd:guest-ram (deleted)
Size:            2097152 kB
KernelPageSize:  1048576 kB
MMUPageSize:     1048576 kB
Rss:                   0 kB
Shared_Hugetlb:  1048576 kB
Private_Hugetlb: 1048576 kB
7f1000000000-7f1000200000 rw-p 00000000 00:00 0
Size:               2048 kB
KernelPageSize:        4 kB
Private_Hugetlb:    2048 kB
";

    #[test]
    fn smaps_counts_only_1g_mappings() {
        assert_eq!(smaps_1g_pages(SMAPS), 2);
        assert_eq!(smaps_1g_pages(""), 0);
    }

    #[test]
    fn numa_maps_counts_per_node() {
        let t = "7f0000000000 default file=/memfd:guest-ram\\040(deleted) huge dirty=3 N0=2 N1=1 kernelpagesize_kB=1048576\n\
                 559dad859000 default file=/usr/bin/cat mapped=2 N0=2 kernelpagesize_kB=4\n";
        let m = numa_maps_1g_pages(t);
        assert_eq!(m.get(&0), Some(&2));
        assert_eq!(m.get(&1), Some(&1));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn unplaced_pages_count_against_every_node() {
        let h = Holder {
            pid: 1,
            comm: VMM_NAME.into(),
            pages: 3,
            per_node: BTreeMap::from([(0, 2)]),
            job: None,
        };
        assert_eq!(held_on_node(std::slice::from_ref(&h), 0), 3);
        assert_eq!(held_on_node(std::slice::from_ref(&h), 1), 1);
    }
}
