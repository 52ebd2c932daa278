//! `--job ID` against hpmmap-offline's per-job reservations (its state file,
//! `/run/hpmmap/offline.json` or `HPMMAP_OFFLINE_STATE`): on a node where jobs reserve
//! their pages, a VMM of a job uses only that job's pages, and a device-dax device held for
//! another job is refused. A host without the state file, or whose state lists no jobs,
//! is not checked (the single-job setup).

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
    let Some(job) = job else {
        return Ok(());
    };
    if opts.page_size != PageSize::Huge1G {
        return Ok(());
    }
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
        // Without --job: not this check's business; 2M pages: not hpmmap-offline's pool.
        check(None, &opts(6, None), &st).unwrap();
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
}
