//! `--job ID` against hpmmap-offline's per-job reservations (its state file,
//! `/run/hpmmap/offline.json` or `HPMMAP_OFFLINE_STATE`): on a node where jobs reserve
//! their pages, a VMM of a job uses only that job's pages, a device-dax device held for
//! another job is refused, and a VMM without `--job` may use only the free 1 GiB pages no
//! job holds (the jobs' pages that their VMMs have not mapped yet are in the same free pool,
//! and the kernel would hand them out to anyone). A host without the state file, or whose
//! state lists no jobs, is not checked (the single-job setup).

use std::path::{Path, PathBuf};

use super::hugepages::PageSize;
use super::{RamBackend, RamOptions};

pub const DEFAULT_STATE: &str = "/run/hpmmap/offline.json";

pub fn state_path() -> PathBuf {
    std::env::var_os("HPMMAP_OFFLINE_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_STATE.into())
}

/// Checks the request against the job's reservation; the error is one line naming the
/// cause and the command that fixes it.
pub fn check(job: Option<&str>, opts: &RamOptions, state: &Path) -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string(state) else {
        return Ok(());
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(()); // hpmmap-offline itself refuses a damaged file
    };
    let Some(jobs) = v
        .get("jobs")
        .and_then(|j| j.as_object())
        .filter(|j| !j.is_empty())
    else {
        return Ok(());
    };
    if let RamBackend::DevDax(path) = &opts.backend {
        let name = std::fs::canonicalize(path)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        for (other, j) in jobs {
            let held = j
                .get("devdax")
                .and_then(|d| d.as_array())
                .is_some_and(|d| d.iter().any(|x| x.as_str() == Some(name.as_str())));
            if held && Some(other.as_str()) != job {
                return Err(format!(
                    "--mem-backend devdax:{}: {name} is held for job {other} ({})",
                    path.display(),
                    state.display()
                ));
            }
        }
        return Ok(());
    }
    if opts.page_size != PageSize::Huge1G {
        return Ok(());
    }
    let Some(job) = job else {
        return unassigned_pages_suffice(jobs, opts, state, &HostRoots::of_state(&v));
    };
    let nodes = jobs
        .get(job)
        .and_then(|j| j.get("nodes"))
        .and_then(|n| n.as_object());
    let on = |node: Option<u32>| -> u64 {
        nodes
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| node.is_none_or(|n| k.parse::<u32>().ok() == Some(n)))
                    .filter_map(|(_, p)| p.as_u64())
                    .sum()
            })
            .unwrap_or(0)
    };
    let gib = PageSize::Huge1G.bytes();
    let mut wanted: Vec<(Option<u32>, u64)> = Vec::new();
    for p in opts.parts() {
        let node = p.host_node.or(opts.numa_node);
        match wanted.iter_mut().find(|(n, _)| *n == node) {
            Some(w) => w.1 += p.bytes / gib,
            None => wanted.push((node, p.bytes / gib)),
        }
    }
    for (node, need) in wanted {
        let have = on(node);
        if have < need {
            let where_ = node.map(|n| format!(" on node {n}")).unwrap_or_default();
            return Err(format!(
                "--job {job}: needs {need} 1 GiB page(s){where_} but hpmmap-offline holds {have} for job {job} ({}); \
                 run `hpmmap-offline reserve --job {job} --size {need}G{}` first",
                state.display(),
                node.map(|n| format!(" --node {n}")).unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// Where the host's sysfs and procfs are: the state file's `sysfs_root` / `proc_root`
/// (hpmmap-offline records them; tests point them at recorded trees), else /sys and /proc.
struct HostRoots {
    sys: PathBuf,
    proc: PathBuf,
}

impl HostRoots {
    fn of_state(v: &serde_json::Value) -> HostRoots {
        let root = |k: &str, d: &str| {
            v.get(k)
                .and_then(|r| r.as_str())
                .map(PathBuf::from)
                .unwrap_or_else(|| d.into())
        };
        HostRoots {
            sys: root("sysfs_root", "/sys"),
            proc: root("proc_root", "/proc"),
        }
    }

    /// Free 1 GiB pages per node (a host without node directories: all on node 0).
    fn free_1g(&self) -> Vec<(u32, u64)> {
        let read =
            |p: PathBuf| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
        let mut out: Vec<(u32, u64)> = std::fs::read_dir(self.sys.join("devices/system/node"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n: u32 = e.file_name().to_str()?.strip_prefix("node")?.parse().ok()?;
                let f = read(
                    e.path()
                        .join("hugepages/hugepages-1048576kB/free_hugepages"),
                )?;
                Some((n, f))
            })
            .collect();
        if out.is_empty() {
            if let Some(f) = read(
                self.sys
                    .join("kernel/mm/hugepages/hugepages-1048576kB/free_hugepages"),
            ) {
                out.push((0, f));
            }
        }
        out.sort();
        out
    }

    /// 1 GiB pages per node that running hpmmap-vmm processes of each job have mapped
    /// (PROC/PID/numa_maps of processes named hpmmap-vmm with `--job ID`).
    fn mapped_by_jobs(&self) -> std::collections::BTreeMap<(String, u32), u64> {
        let mut out = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(&self.proc)
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name()
                .to_str()
                .is_none_or(|n| n.parse::<u32>().is_err())
            {
                continue;
            }
            let d = e.path();
            let comm = std::fs::read_to_string(d.join("comm")).unwrap_or_default();
            if comm.trim() != "hpmmap-vmm" {
                continue;
            }
            let Some(job) = std::fs::read(d.join("cmdline"))
                .ok()
                .and_then(|c| job_of_cmdline(&c))
            else {
                continue;
            };
            let maps = std::fs::read_to_string(d.join("numa_maps")).unwrap_or_default();
            for l in maps
                .lines()
                .filter(|l| l.contains("kernelpagesize_kB=1048576"))
            {
                for w in l.split_whitespace() {
                    let Some((n, c)) = w.strip_prefix('N').and_then(|x| x.split_once('=')) else {
                        continue;
                    };
                    if let (Ok(n), Ok(c)) = (n.parse::<u32>(), c.parse::<u64>()) {
                        *out.entry((job.clone(), n)).or_default() += c;
                    }
                }
            }
        }
        out
    }
}

/// The value of `--job ID` / `--job=ID` in a NUL-separated command line (as hpmmap-offline
/// finds a VMM's job).
fn job_of_cmdline(cmdline: &[u8]) -> Option<String> {
    let mut it = cmdline.split(|&b| b == 0).map(String::from_utf8_lossy);
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "--job" {
            return it.next().map(|s| s.into_owned());
        }
        if let Some(v) = a.strip_prefix("--job=") {
            return Some(v.to_string());
        }
    }
    None
}

/// A VMM without `--job`: what it asks for must fit in the free 1 GiB pages minus the jobs'
/// pages not mapped yet (a job holds `nodes[N]` pages; those its VMMs map are not free).
fn unassigned_pages_suffice(
    jobs: &serde_json::Map<String, serde_json::Value>,
    opts: &RamOptions,
    state: &Path,
    host: &HostRoots,
) -> Result<(), String> {
    let free = host.free_1g();
    let mapped = host.mapped_by_jobs();
    // Per node: the free pages that belong to jobs, and the jobs holding them.
    let held_free = |node: u32| -> (u64, Vec<String>) {
        let mut sum = 0;
        let mut who = Vec::new();
        for (name, j) in jobs {
            let held = j
                .get("nodes")
                .and_then(|n| n.get(node.to_string()))
                .and_then(|p| p.as_u64())
                .unwrap_or(0);
            let used = mapped.get(&(name.clone(), node)).copied().unwrap_or(0);
            let f = held.saturating_sub(used);
            if f > 0 {
                sum += f;
                who.push(format!("{name} {f}"));
            }
        }
        (sum, who)
    };
    let gib = PageSize::Huge1G.bytes();
    let mut wanted: Vec<(Option<u32>, u64)> = Vec::new();
    for p in opts.parts() {
        let node = p.host_node.or(opts.numa_node);
        match wanted.iter_mut().find(|(n, _)| *n == node) {
            Some(w) => w.1 += p.bytes / gib,
            None => wanted.push((node, p.bytes / gib)),
        }
    }
    for (node, need) in wanted {
        let nodes: Vec<u32> = match node {
            Some(n) => vec![n],
            None => free.iter().map(|(n, _)| *n).collect(),
        };
        let (mut have, mut theirs, mut who) = (0u64, 0u64, Vec::new());
        for n in nodes {
            let f = free.iter().find(|(m, _)| *m == n).map_or(0, |(_, f)| *f);
            let (h, w) = held_free(n);
            have += f.saturating_sub(h);
            theirs += h.min(f);
            who.extend(w);
        }
        if have < need {
            let where_ = node.map(|n| format!(" on node {n}")).unwrap_or_default();
            return Err(format!(
                "no --job: needs {need} 1 GiB page(s){where_} but only {have} free are held for \
                 no job; {theirs} free page(s) belong to job(s) {} ({}); give the job's --job ID, \
                 or `hpmmap-offline reserve --size {need}G` pages for no job",
                who.join(", "),
                state.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(gib: u64, node: Option<u32>) -> RamOptions {
        RamOptions {
            bytes: gib << 30,
            backend: RamBackend::Memfd,
            page_size: PageSize::Huge1G,
            numa_node: node,
            workers: 0,
            progress: false,
            parts: Vec::new(),
        }
    }

    #[test]
    fn a_job_uses_only_its_own_reservation() {
        let tmp = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hpmmap-resv-").unwrap();
        let st = tmp.as_path().join("offline.json");
        // No state, or a state without jobs: not checked.
        check(Some("a"), &opts(4, None), &st).unwrap();
        std::fs::write(&st, r#"{"format":"hpmmap-offline-state","version":2,"nodes":{"0":{"baseline_nr":0,"reserved":6}}}"#).unwrap();
        check(Some("a"), &opts(4, None), &st).unwrap();
        std::fs::write(
            &st,
            r#"{"format":"hpmmap-offline-state","version":2,"nodes":{"0":{"baseline_nr":0,"reserved":6}},
                "jobs":{"a":{"nodes":{"0":2}},"b":{"nodes":{"0":4},"devdax":["dax0.0"]}}}"#,
        )
        .unwrap();
        check(Some("a"), &opts(2, Some(0)), &st).unwrap();
        let e = check(Some("a"), &opts(3, None), &st).unwrap_err();
        assert!(
            e.contains("needs 3 1 GiB page(s) but hpmmap-offline holds 2 for job a"),
            "{e}"
        );
        assert!(e.contains("reserve --job a --size 3G"), "{e}");
        let e = check(Some("c"), &opts(1, Some(1)), &st).unwrap_err();
        assert!(
            e.contains("on node 1") && e.contains("holds 0 for job c"),
            "{e}"
        );
        // 2M pages: not hpmmap-offline's pool.
        let mut two_m = opts(6, None);
        two_m.page_size = PageSize::Huge2M;
        check(Some("a"), &two_m, &st).unwrap();
        // A device held for job b is refused to others.
        let dev = tmp.as_path().join("dax0.0");
        std::fs::write(&dev, b"").unwrap();
        let mut dax = opts(2, None);
        dax.backend = RamBackend::DevDax(dev);
        let e = check(Some("a"), &dax, &st).unwrap_err();
        assert!(e.contains("dax0.0 is held for job b"), "{e}");
        check(Some("b"), &dax, &st).unwrap();
    }

    /// A recorded host: free 1 GiB pages per node, and a running hpmmap-vmm of job a whose
    /// numa_maps is a real process's holding one 1 GiB page on node 0
    /// (host-offline/tests/fixtures/vm-holder-proc).
    fn recorded_host(dir: &Path, free: &[(u32, u64)], state_jobs: &str) -> PathBuf {
        for (n, f) in free {
            let d = dir.join(format!(
                "sys/devices/system/node/node{n}/hugepages/hugepages-1048576kB"
            ));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("free_hugepages"), format!("{f}\n")).unwrap();
        }
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../host-offline/tests/fixtures/vm-holder-proc"
        );
        let p = dir.join("proc/4242");
        std::fs::create_dir_all(&p).unwrap();
        for f in ["comm", "numa_maps"] {
            std::fs::copy(format!("{fixture}/{f}"), p.join(f)).unwrap();
        }
        std::fs::write(p.join("cmdline"), b"hpmmap-vmm\0--mem\x001G\0--job\0a\0").unwrap();
        // The keeper of a jailed VMM: same name and command line, no guest RAM.
        let k = dir.join("proc/4241");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("comm"), "hpmmap-vmm\n").unwrap();
        std::fs::write(k.join("cmdline"), b"hpmmap-vmm\0--job\0a\0").unwrap();
        std::fs::write(k.join("numa_maps"), "").unwrap();
        let st = dir.join("offline.json");
        std::fs::write(
            &st,
            format!(
                r#"{{"format":"hpmmap-offline-state","version":2,"sysfs_root":"{}","proc_root":"{}",
                   "nodes":{{"0":{{"baseline_nr":0,"reserved":4}},"1":{{"baseline_nr":0,"reserved":2}}}},
                   "jobs":{state_jobs}}}"#,
                dir.join("sys").display(),
                dir.join("proc").display()
            ),
        )
        .unwrap();
        st
    }

    #[test]
    fn without_a_job_only_pages_no_job_holds_are_used() {
        let tmp = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hpmmap-resv-").unwrap();
        // Node 0: 3 free; job a holds 2 (1 mapped by its VMM, 1 free), job b holds 1 (free).
        // Node 1: 2 free, job b holds both.
        let st = recorded_host(
            tmp.as_path(),
            &[(0, 3), (1, 2)],
            r#"{"a":{"nodes":{"0":2}},"b":{"nodes":{"0":1,"1":2}}}"#,
        );
        // 1 of node 0's 3 free pages is no job's.
        check(None, &opts(1, Some(0)), &st).unwrap();
        let e = check(None, &opts(2, Some(0)), &st).unwrap_err();
        assert!(
            e.starts_with(
                "no --job: needs 2 1 GiB page(s) on node 0 but only 1 free are held for no job; \
                 2 free page(s) belong to job(s) a 1, b 1"
            ),
            "{e}"
        );
        assert!(e.contains("offline.json"), "{e}");
        let e = check(None, &opts(1, Some(1)), &st).unwrap_err();
        assert!(
            e.contains("on node 1 but only 0 free") && e.contains("job(s) b 2"),
            "{e}"
        );
        // Unbound: all nodes together, still 1.
        check(None, &opts(1, None), &st).unwrap();
        let e = check(None, &opts(2, None), &st).unwrap_err();
        assert!(e.contains("needs 2 1 GiB page(s) but only 1 free"), "{e}");
        // A job's VMM on its own pages is not affected by the others.
        check(Some("b"), &opts(1, Some(0)), &st).unwrap();
        // Once job a's VMM maps both its pages, the free ones are no job's but b's.
        let st = recorded_host(
            tmp.as_path(),
            &[(0, 2), (1, 2)],
            r#"{"a":{"nodes":{"0":1}},"b":{"nodes":{"1":2}}}"#,
        );
        check(None, &opts(2, Some(0)), &st).unwrap();
    }
}
