//! Jobs on a shared node: which process is alive (pid plus start time, so a reused pid does
//! not pass for a dead one), this boot's id, and which job an hpmmap-vmm runs for (its
//! `--job ID` argument).

use crate::host::Host;
use crate::state::Owner;
use std::collections::BTreeMap;
use std::fs;

/// Field 22 (starttime) of PROC/PID/stat; the comm field may hold spaces and parentheses,
/// so count from the last ')'.
pub fn start_time(host: &Host, pid: u32) -> Option<u64> {
    let s = fs::read_to_string(host.proc_root().join(pid.to_string()).join("stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// This process as an [`Owner`], with what the job held before.
pub fn me(host: &Host, had: BTreeMap<u32, u64>) -> Owner {
    let pid = std::process::id();
    Owner {
        pid,
        start: if host.is_live() {
            start_time(host, pid)
        } else {
            None
        },
        had,
    }
}

/// Whether the process still runs: its PROC/PID exists and (when both are known) started
/// at the recorded time.
pub fn alive(host: &Host, pid: u32, start: Option<u64>) -> bool {
    let stat = fs::read_to_string(host.proc_root().join(pid.to_string()).join("stat"));
    if !host.proc_root().join(pid.to_string()).exists() || stat.is_ok_and(|s| is_zombie(&s)) {
        return false;
    }
    match (start, start_time(host, pid)) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// A stat line of a process that has exited and waits to be reaped (its files, the
/// mappings of its pages included, are gone).
fn is_zombie(stat: &str) -> bool {
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        == Some("Z")
}

/// PROC/sys/kernel/random/boot_id.
pub fn boot_id(host: &Host) -> Option<String> {
    fs::read_to_string(host.proc_root().join("sys/kernel/random/boot_id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The value of `--job ID` / `--job=ID` in a NUL-separated command line.
pub fn job_of_cmdline(cmdline: &[u8]) -> Option<String> {
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "--job" {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix("--job=") {
            return Some(v.to_string());
        }
    }
    None
}

/// The job an hpmmap-vmm process runs for, from PROC/PID/cmdline.
pub fn job_of_pid(host: &Host, pid: u32) -> Option<String> {
    let c = fs::read(host.proc_root().join(pid.to_string()).join("cmdline")).ok()?;
    job_of_cmdline(&c)
}

/// Running hpmmap-vmm processes (pid, job), mapping pages or not.
pub fn vmm_processes(host: &Host) -> Vec<(u32, Option<String>)> {
    let mut out = Vec::new();
    for pid in host.list(host.proc_root()) {
        let Ok(n) = pid.parse::<u32>() else { continue };
        if crate::holders::is_vmm(host, &pid).is_some() {
            out.push((n, job_of_pid(host, n)));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_is_not_alive() {
        assert!(is_zombie("77 (hpmmap-vmm) Z 1 77 77 0 -1"));
        assert!(!is_zombie("77 (a) Z) S 1 77 77 0 -1"));
        assert!(!is_zombie("77 (hpmmap-vmm) S 1 77 77 0 -1"));
    }

    #[test]
    fn job_argument_in_both_spellings() {
        assert_eq!(
            job_of_cmdline(b"hpmmap-vmm\0--mem\x002G\0--job\0alpha\0").as_deref(),
            Some("alpha")
        );
        assert_eq!(
            job_of_cmdline(b"hpmmap-vmm\0--job=b.2\0").as_deref(),
            Some("b.2")
        );
        assert_eq!(job_of_cmdline(b"hpmmap-vmm\0--mem\x002G\0"), None);
        assert_eq!(job_of_cmdline(b"hpmmap-vmm\0--\0--job\0x\0"), None);
    }
}
