//! `recover`: the one command after any crash (a job's epilog, or at boot). It puts back
//! what dead processes left on the host:
//!
//! 1. VFs: every claim record under `RUN/vf` whose claimant is gone (hpmmap-vf's
//!    [`records::recover`]: GUIDs and policy, then the original driver and
//!    `driver_override`), then the VFs such a process enabled with `--vf-create`
//!    ([`records::recover_sriov`]).
//! 2. Reservations: an interrupted pool resize is settled and blocks left offline by an
//!    interrupted cycle are brought back; a job whose reserve was killed gets back to what it
//!    held before that reserve; a job's whole reservation (pages and dax devices) is released
//!    when no hpmmap-vmm of the job runs and no reserve for it runs, and either the job is
//!    named (`--job ID`, the job's epilog), or it was reserved in an earlier boot, or a
//!    process of it is known to have died: a VF claim of the job recovered above, or a jail
//!    directory or cgroup of the job left without a process.
//! 3. Jails: `RUN/jail/<job>/` directories and `CGROUP/hpmmap/<job>/` cgroups (layout in
//!    docs/architecture.md, Interface 5) of jobs with no live process: mounts under a jail
//!    directory are detached first, and nothing on another file system is ever deleted;
//!    cgroups are removed leaf first with rmdir, only when `cgroup.procs` is empty.
//!
//! Live jobs are never touched: a claim whose process runs, a job whose VMM or reserve
//! runs, a cgroup with a process in it.

use crate::error::{Error, Result};
use crate::host::Host;
use crate::jobs;
use crate::release::{self, Amount};
use crate::session::Session;
use hpmmap_vf::records::{self, Recovered, SriovRecovered};
use hpmmap_vf::Sysfs;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct RecoverOptions {
    /// The job whose epilog this is: its reservation goes once its VMM is gone.
    pub job: Option<String>,
    /// `/run/hpmmap` (VF claim records under `vf/`, jail directories under `jail/`).
    pub run_dir: PathBuf,
    /// The hpmmap cgroup parent, `/sys/fs/cgroup/hpmmap`.
    pub cgroup_dir: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoverReport {
    /// One line per thing done or left, in order.
    pub lines: Vec<String>,
    /// Jobs whose reservation was released (or cut back to before a killed reserve).
    pub jobs_released: Vec<String>,
    /// Jobs left alone because a process of theirs runs.
    pub jobs_live: Vec<String>,
    /// Something could not be put back (the line says what); run again later.
    pub failed: bool,
}

/// Whether a process of `job` runs: an hpmmap-vmm with `--job job`, a process in its
/// cgroup, or the pid in its jail's `vmm.pid`.
fn job_alive(
    host: &Host,
    opts: &RecoverOptions,
    job: &str,
    vmms: &[(u32, Option<String>)],
) -> bool {
    if vmms.iter().any(|(_, j)| j.as_deref() == Some(job)) {
        return true;
    }
    let cg = opts.cgroup_dir.join(job);
    if cgroup_has_procs(&cg) {
        return true;
    }
    if let Ok(t) = fs::read_to_string(opts.run_dir.join("jail").join(job).join("vmm.pid")) {
        let mut it = t.split_whitespace();
        if let Some(pid) = it.next().and_then(|p| p.parse().ok()) {
            let start = it.next().and_then(|s| s.parse().ok());
            if jobs::alive(host, pid, start) {
                return true;
            }
        }
    }
    false
}

/// A cgroup (or one below it) with a process in it.
fn cgroup_has_procs(dir: &Path) -> bool {
    if !dir.is_dir() {
        return false;
    }
    if fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|t| !t.trim().is_empty()) {
        return true;
    }
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .any(|e| cgroup_has_procs(&e.path()))
}

pub fn recover(
    host: &Host,
    state_path: &Path,
    vf: &Sysfs,
    opts: &RecoverOptions,
) -> Result<RecoverReport> {
    if let Some(j) = &opts.job {
        crate::state::validate_job(j)?;
    }
    let mut r = RecoverReport::default();
    let mut died: BTreeSet<String> = BTreeSet::new();

    // 1. VFs.
    for x in records::recover(vf) {
        match x {
            Recovered::Live(c) => r.lines.push(format!(
                "VF {}: job '{}' (pid {}) still runs; left alone",
                c.vf, c.job, c.pid
            )),
            Recovered::Restored(c) => {
                r.lines.push(format!(
                    "VF {}: job '{}' (pid {}) is gone; put back on {}",
                    c.vf,
                    c.job,
                    c.pid,
                    c.binding.original_driver.as_deref().unwrap_or("no driver")
                ));
                died.insert(c.job.clone());
            }
            Recovered::Failed(c, e) => {
                r.failed = true;
                r.lines
                    .push(format!("VF {}: job '{}': {e}; record kept", c.vf, c.job));
                died.insert(c.job.clone());
            }
            Recovered::Unreadable(p, e) => {
                r.failed = true;
                r.lines.push(format!("{}: {e}", p.display()));
            }
        }
    }
    for x in records::recover_sriov(vf) {
        match x {
            SriovRecovered::Live(c) => r.lines.push(format!(
                "PF {}: VFs enabled by pid {} (still running); left alone",
                c.pf, c.pid
            )),
            SriovRecovered::Disabled(c) => r.lines.push(format!(
                "PF {}: {} VF(s) enabled by pid {} (gone) disabled",
                c.pf, c.enabled, c.pid
            )),
            SriovRecovered::InUse(c) => r.lines.push(format!(
                "PF {}: VFs enabled by pid {} (gone) still in use; left enabled",
                c.pf, c.pid
            )),
            SriovRecovered::Failed(c, e) => {
                r.failed = true;
                r.lines.push(format!("PF {}: {e}", c.pf));
            }
            SriovRecovered::Unreadable(p, e) => {
                r.failed = true;
                r.lines.push(format!("{}: {e}", p.display()));
            }
        }
    }

    // Jobs with a jail directory or cgroup and no process: they ran and died.
    let vmms = jobs::vmm_processes(host);
    let jail_root = opts.run_dir.join("jail");
    let mut leftovers: BTreeSet<String> = BTreeSet::new();
    for dir in [&jail_root, &opts.cgroup_dir] {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if crate::state::validate_job(&name).is_ok() {
                    leftovers.insert(name);
                }
            }
        }
    }
    for job in &leftovers {
        if !job_alive(host, opts, job, &vmms) {
            died.insert(job.clone());
        }
    }

    // 2. Reservations.
    if state_path.exists() {
        recover_reservations(host, state_path, opts, &vmms, &died, &mut r)?;
    }

    // 3. Jails and cgroups of dead jobs.
    for job in &leftovers {
        if job_alive(host, opts, job, &vmms) {
            r.lines
                .push(format!("jail of job {job}: a process runs; left alone"));
            continue;
        }
        let dir = jail_root.join(job);
        if dir.is_dir() {
            match remove_jail_dir(host, &dir) {
                Ok(()) => r.lines.push(format!("jail {}: removed", dir.display())),
                Err(e) => {
                    r.failed = true;
                    r.lines.push(format!("jail {}: {e}", dir.display()));
                }
            }
        }
        let cg = opts.cgroup_dir.join(job);
        if cg.is_dir() {
            match remove_cgroup(host, &cg) {
                Ok(()) => r.lines.push(format!("cgroup {}: removed", cg.display())),
                Err(e) => {
                    r.failed = true;
                    r.lines.push(format!("cgroup {}: {e}", cg.display()));
                }
            }
        }
    }
    if r.lines.is_empty() {
        r.lines.push("nothing to recover".into());
    }
    Ok(r)
}

fn recover_reservations(
    host: &Host,
    state_path: &Path,
    opts: &RecoverOptions,
    vmms: &[(u32, Option<String>)],
    died: &BTreeSet<String>,
    r: &mut RecoverReport,
) -> Result<()> {
    // An interrupted resize and the blocks of an interrupted cycle, whoever left them.
    {
        let Some(mut session) = Session::open(host, state_path, false)? else {
            return Ok(());
        };
        if let Some(n) = session.settle_pending()? {
            r.lines.push(n);
        }
        for failed in session.restore_blocks(false)? {
            r.failed = true;
            r.lines.push(format!("block still not restored: {failed}"));
        }
        session.finish()?;
    }
    let Some(st) = crate::state::load(state_path)? else {
        return Ok(());
    };
    let boot = jobs::boot_id(host);
    for (name, j) in &st.jobs {
        if let Some(o) = &j.reserving {
            if jobs::alive(host, o.pid, o.start) {
                r.lines.push(format!(
                    "job {name}: its reserve (pid {}) is running; left alone",
                    o.pid
                ));
                r.jobs_live.push(name.clone());
                continue;
            }
        }
        if job_alive(host, opts, name, vmms) {
            r.lines.push(format!(
                "job {name}: a process of the job runs; reservation kept"
            ));
            r.jobs_live.push(name.clone());
            continue;
        }
        let earlier_boot = matches!((&j.boot_id, &boot), (Some(a), Some(b)) if a != b);
        let whole =
            opts.job.as_deref() == Some(name.as_str()) || earlier_boot || died.contains(name);
        let amount = if whole {
            Some(Amount::All)
        } else if let Some(o) = &j.reserving {
            // Killed half-way: back to what the job held before that reserve.
            let extra: u64 = j
                .nodes
                .iter()
                .map(|(n, p)| p.saturating_sub(o.had.get(n).copied().unwrap_or(0)))
                .sum();
            (extra > 0).then_some(Amount::Gib(extra))
        } else {
            None
        };
        if let Some(amount) = amount {
            let rel = release::release_for(host, state_path, amount, Some(name))?;
            let given: u64 = rel.nodes.iter().map(|n| n.released).sum();
            r.lines.push(format!(
                "job {name}: {}; released {given} GiB{}{}",
                if opts.job.as_deref() == Some(name.as_str()) {
                    "no process of the job runs"
                } else if earlier_boot {
                    "reserved in an earlier boot"
                } else if died.contains(name) {
                    "its VMM is gone"
                } else {
                    "its reserve was killed"
                },
                if rel.devdax_released.is_empty() {
                    String::new()
                } else {
                    format!(", dax {}", rel.devdax_released.join(", "))
                },
                if rel.complete {
                    String::new()
                } else {
                    format!(
                        "; kept: {}",
                        rel.nodes
                            .iter()
                            .flat_map(|n| n.reasons.iter().cloned())
                            .chain(rel.notes.iter().cloned())
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                }
            ));
            r.failed |= !rel.complete;
            r.jobs_released.push(name.clone());
        }
        if j.reserving.is_some() {
            // The killed reserve is settled: its mark goes.
            if let Some(mut session) = Session::open(host, state_path, false)? {
                if let Some(e) = session.state.jobs.get_mut(name) {
                    e.reserving = None;
                }
                session.state.prune();
                session.finish()?;
            }
        }
    }
    Ok(())
}

/// Mount points at or below `dir`, deepest first, from PROC/self/mountinfo.
fn mounts_below(host: &Host, dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string(host.proc_root().join("self/mountinfo")) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_mount)
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    out.dedup();
    out
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Removes a dead job's jail directory: mounts under it detached first (on the live host),
/// then the tree, never crossing into another file system (a mount that would not go is
/// an error, and what is on it stays).
fn remove_jail_dir(host: &Host, dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if host.is_live() {
        for m in mounts_below(host, dir) {
            let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).map_err(|_| {
                Error::input(format!("{}: a mount point with a NUL byte", m.display()))
            })?;
            // SAFETY: a valid C string; MNT_DETACH never blocks on busy mounts.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(io(&m, "umount", std::io::Error::last_os_error()));
            }
        }
    }
    let dev = fs::symlink_metadata(dir)
        .map_err(|e| io(dir, "stat", e))?
        .dev();
    remove_same_dev(dir, dev)
}

fn remove_same_dev(path: &Path, dev: u64) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(path).map_err(|e| io(path, "stat", e))?;
    if m.dev() != dev {
        return Err(Error::StateIo {
            path: path.into(),
            why: "another file system is mounted here; not removing it".into(),
        });
    }
    if m.is_dir() {
        for e in fs::read_dir(path).map_err(|e| io(path, "read", e))? {
            let e = e.map_err(|e| io(path, "read", e))?;
            remove_same_dev(&e.path(), dev)?;
        }
        fs::remove_dir(path).map_err(|e| io(path, "rmdir", e))
    } else {
        fs::remove_file(path).map_err(|e| io(path, "remove", e))
    }
}

/// rmdir of a cgroup and the cgroups below it, leaf first. On cgroupfs a cgroup directory
/// goes with rmdir although it lists files; in a recorded tree (plain files) those files are
/// removed first, as the kernel would.
fn remove_cgroup(host: &Host, dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).map_err(|e| io(dir, "read", e))? {
        let e = e.map_err(|e| io(dir, "read", e))?;
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(host, &p)?;
        } else if !host.is_live() {
            fs::remove_file(&p).map_err(|e| io(&p, "remove", e))?;
        }
    }
    fs::remove_dir(dir).map_err(|e| io(dir, "rmdir", e))
}

fn io(path: &Path, op: &str, e: std::io::Error) -> Error {
    Error::StateIo {
        path: path.into(),
        why: format!("{op}: {e}"),
    }
}
