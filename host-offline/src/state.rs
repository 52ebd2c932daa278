//! The state file: what this tool changed on the host, written *before* each change, so a
//! later `release --all` (after a crash too) can put the host back as it was.
//!
//! Format (JSON, version 2; a version 1 file, which had no `jobs`, loads as version 2 with
//! every page unassigned and is written back as version 2):
//! ```json
//! { "format": "hpmmap-offline-state", "version": 1,
//!   "sysfs_root": "/sys", "proc_root": "/proc",
//!   "nodes": { "0": { "baseline_nr": 0, "reserved": 2, "adopted": 16 } },
//!   "pending": { "node": 0, "before": 2, "target": 3 },
//!   "blocks": [ { "id": 140, "node": 0, "original_state": "online", "original_zone": "Normal" },
//!               { "id": 40, "node": 0, "original_state": "online", "original_zone": "Movable",
//!                 "dax": "dax0.0" },
//!               { "id": 180, "node": 0, "original_state": "online", "original_zone": "Movable",
//!                 "zone_moved": true } ],
//!   "devdax": [ { "device": "dax0.1", "original_driver": null, "original_size": 0,
//!                 "original_align": 2097152, "size": 2147483648, "align": 1073741824 } ],
//!   "jobs": { "alpha": { "nodes": { "0": 2 }, "created_unix": 1795000000,
//!                        "boot_id": "0b7c...", "devdax": ["dax0.1"],
//!                        "reserving": { "pid": 4242, "start": 81234, "had": { "0": 0 } } } },
//!   "updated_unix": 1795000000 }
//! ```
//! `reserved` counts the 1 GiB pages this tool added to a node's pool and has not given
//! back; `adopted` the free pages that were already in the pool (set at boot with
//! `hugepages=N`, or by hand) and that it counts as held for hpmmap without changing the pool; `pending` is a pool resize that was started and not yet confirmed; `blocks` are
//! memory blocks whose state the tool may have changed; `devdax` are dax devices it
//! reconfigured, with what they were before. `jobs` splits the pages held per node between
//! jobs (`reserve --job ID`); what the jobs do not hold of a node's pages is the unassigned
//! reservation of the commands without `--job`. `reserving` is set while a reserve for the
//! job runs (its process, and what the job held before it), so that `recover` can give back
//! what a killed reserve took.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "hpmmap-offline-state";
pub const VERSION: u32 = 2;
/// Versions this build reads (older ones are migrated on load).
pub const READS: &[u32] = &[1, 2];
pub const DEFAULT_PATH: &str = "/run/hpmmap/offline.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The node's nr_hugepages before this tool first grew it (for the record; release
    /// works from `reserved` so that other users of the pool are left alone).
    pub baseline_nr: u64,
    /// Pages this tool added to the pool: `release` shrinks the pool by them.
    pub reserved: u64,
    /// Free pages that were in the pool already (a boot-time `hugepages=N`): held for hpmmap
    /// without growing the pool, so `release` forgets them and leaves the pool as it was.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub adopted: u64,
}

impl NodeState {
    pub fn held(&self) -> u64 {
        self.reserved + self.adopted
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingResize {
    pub node: u32,
    pub before: u64,
    pub target: u64,
    /// The job the resize was for: settled into its share, whoever settles it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockChange {
    pub id: u64,
    pub node: Option<u32>,
    pub original_state: String,
    pub original_zone: Option<String>,
    /// The dax device whose system-ram memory this block is: restored after that device
    /// is back with kmem (the kernel removes the block while the device is in devdax mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dax: Option<String>,
    /// Brought back into a kernel zone on purpose (a 1 GiB page can live there, not in
    /// ZONE_MOVABLE): put back into `original_zone` by `release --all` only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub zone_moved: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaxChange {
    pub device: String,
    pub original_driver: Option<String>,
    pub original_size: u64,
    pub original_align: u64,
    pub size: u64,
    pub align: u64,
}

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// Field 22 of /proc/PID/stat.
    #[serde(default)]
    pub start: Option<u64>,
    /// Pages per node the job held before this reserve started.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub had: BTreeMap<u32, u64>,
}

/// One job's share of what hpmmap-offline holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// 1 GiB pages per node.
    #[serde(default)]
    pub nodes: BTreeMap<u32, u64>,
    #[serde(default)]
    pub created_unix: u64,
    /// `/proc/sys/kernel/random/boot_id` when the job reserved: a job of an earlier boot
    /// has no VMM any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// dax devices held for the job (`reserve --devdax --job ID`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devdax: Vec<String>,
    /// A reserve for this job is running (or was killed: its process is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserving: Option<Owner>,
}

impl JobState {
    pub fn on(&self, node: u32) -> u64 {
        self.nodes.get(&node).copied().unwrap_or(0)
    }
    pub fn total(&self) -> u64 {
        self.nodes.values().sum()
    }
    pub fn is_empty(&self) -> bool {
        self.total() == 0 && self.devdax.is_empty() && self.reserving.is_none()
    }
}

/// A job name: `[A-Za-z0-9_.-]{1,64}` (the same rule as the VF claims' `--job`).
pub fn validate_job(job: &str) -> Result<()> {
    let ok = !job.is_empty()
        && job.len() <= 64
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::input(format!(
            "--job '{}': a job name is 1 to 64 of A-Z a-z 0-9 _ . -",
            job.escape_debug()
        )))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub format: String,
    pub version: u32,
    pub sysfs_root: PathBuf,
    pub proc_root: PathBuf,
    #[serde(default)]
    pub nodes: BTreeMap<u32, NodeState>,
    #[serde(default)]
    pub pending: Option<PendingResize>,
    #[serde(default)]
    pub blocks: Vec<BlockChange>,
    #[serde(default)]
    pub devdax: Vec<DaxChange>,
    /// Per-job shares of the pages held (and dax devices), by job name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub jobs: BTreeMap<String, JobState>,
    #[serde(default)]
    pub updated_unix: u64,
}

impl State {
    pub fn new(sysfs_root: &Path, proc_root: &Path) -> Self {
        State {
            format: FORMAT.into(),
            version: VERSION,
            sysfs_root: sysfs_root.to_path_buf(),
            proc_root: proc_root.to_path_buf(),
            nodes: BTreeMap::new(),
            pending: None,
            blocks: Vec::new(),
            devdax: Vec::new(),
            jobs: BTreeMap::new(),
            updated_unix: 0,
        }
    }

    /// Pages of the node held for `job`, or (None) for no job: the part no job holds.
    pub fn owned(&self, job: Option<&str>, node: u32) -> u64 {
        match job {
            Some(j) => self.jobs.get(j).map(|s| s.on(node)).unwrap_or(0),
            None => self.unassigned(node),
        }
    }

    /// Pages of the node that no job holds (the reservation of the commands without --job).
    pub fn unassigned(&self, node: u32) -> u64 {
        self.held(node).saturating_sub(self.jobs_on(node))
    }

    /// Pages of the node held by jobs.
    pub fn jobs_on(&self, node: u32) -> u64 {
        self.jobs.values().map(|j| j.on(node)).sum()
    }

    /// Changes `job`'s pages on the node by `delta` (no job: nothing to record, the
    /// unassigned part is what the jobs do not hold).
    pub fn job_add(&mut self, job: Option<&str>, node: u32, delta: i64) {
        let Some(j) = job else { return };
        let e = self.jobs.entry(j.to_string()).or_default();
        let n = e.nodes.entry(node).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            e.nodes.remove(&node);
        }
    }

    /// After pages went missing (dissolved, given back by someone else): the jobs cannot
    /// hold more than the node's books, so the difference comes off `first` (the job of
    /// the run that lost them), then the others in name order.
    pub fn fit_jobs(&mut self, node: u32, first: Option<&str>) {
        let mut over = self.jobs_on(node).saturating_sub(self.held(node));
        if over == 0 {
            return;
        }
        let mut names: Vec<String> = first.map(String::from).into_iter().collect();
        names.extend(
            self.jobs
                .keys()
                .filter(|k| Some(k.as_str()) != first)
                .cloned(),
        );
        for name in names {
            if over == 0 {
                break;
            }
            let Some(j) = self.jobs.get_mut(&name) else {
                continue;
            };
            let have = j.on(node);
            let take = have.min(over);
            over -= take;
            if have == take {
                j.nodes.remove(&node);
            } else {
                j.nodes.insert(node, have - take);
            }
        }
    }

    /// Pages this tool added to the node's pool.
    pub fn added(&self, node: u32) -> u64 {
        self.nodes.get(&node).map(|n| n.reserved).unwrap_or(0)
    }

    /// Pages of the node's existing pool this tool adopted.
    pub fn adopted(&self, node: u32) -> u64 {
        self.nodes.get(&node).map(|n| n.adopted).unwrap_or(0)
    }

    /// Everything held for hpmmap on the node: added plus adopted.
    pub fn held(&self, node: u32) -> u64 {
        self.nodes.get(&node).map(NodeState::held).unwrap_or(0)
    }

    pub fn total_held(&self) -> u64 {
        self.nodes.values().map(NodeState::held).sum()
    }

    pub fn total_adopted(&self) -> u64 {
        self.nodes.values().map(|n| n.adopted).sum()
    }

    /// Drops node entries that hold nothing any more.
    pub fn prune(&mut self) {
        self.nodes.retain(|_, n| n.held() > 0);
        self.jobs.retain(|_, j| !j.is_empty());
    }

    /// Nothing held and nothing to undo: the file can go.
    pub fn is_empty(&self) -> bool {
        self.total_held() == 0
            && self.pending.is_none()
            && self.blocks.is_empty()
            && self.devdax.is_empty()
            && self.jobs.values().all(JobState::is_empty)
    }
}

/// Reads a state file; `Ok(None)` when there is none. A file of another format or version
/// is an input error: acting on a layout we do not understand could damage the host.
pub fn load(path: &Path) -> Result<Option<State>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::StateIo {
                path: path.into(),
                why: e.to_string(),
            })
        }
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::input(format!(
            "state file {}: not JSON ({e}); not touching the host",
            path.display()
        ))
    })?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(Error::input(format!(
            "state file {}: not an {FORMAT} file; not touching the host",
            path.display()
        )));
    }
    let version = value.get("version").and_then(|v| v.as_u64());
    if !version.is_some_and(|v| READS.iter().any(|&r| r as u64 == v)) {
        return Err(Error::input(format!(
            "state file {}: version {} but this hpmmap-offline reads versions 1 and {VERSION}; \
             finish with the hpmmap-offline that wrote it (or check the host and remove the \
             file); not touching the host",
            path.display(),
            version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "missing".into())
        )));
    }
    let v = version.unwrap_or(0);
    let mut st: State = serde_json::from_value(value).map_err(|e| {
        Error::input(format!(
            "state file {}: malformed version {v} state ({e}); not touching the host",
            path.display()
        ))
    })?;
    // Version 1 had no jobs: every page it lists is unassigned, which is what an empty
    // `jobs` means in version 2.
    st.version = VERSION;
    Ok(Some(st))
}

/// Replaces the state file atomically (temp file, fsync, rename, fsync of the directory),
/// so a crash leaves either the old or the new state, never half of one.
pub fn save(path: &Path, state: &mut State) -> Result<()> {
    let io = |why: String| Error::StateIo {
        path: path.into(),
        why,
    };
    state.updated_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = parent(path);
    fs::create_dir_all(&dir).map_err(|e| io(format!("create {}: {e}", dir.display())))?;
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(state).map_err(|e| io(e.to_string()))?;
    let mut f = fs::File::create(&tmp).map_err(|e| io(format!("create {}: {e}", tmp.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .map_err(|e| io(format!("write {}: {e}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(|e| io(format!("rename {}: {e}", tmp.display())))?;
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes the state file: the host holds nothing for hpmmap any more.
pub fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::StateIo {
            path: path.into(),
            why: format!("remove: {e}"),
        }),
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Exclusive lock serialising hpmmap-offline runs that share a state file. The lock is a
/// flock on the state file's directory, so taking it leaves no extra file behind.
pub struct Lock {
    _dir: fs::File,
}

pub fn lock(path: &Path, create_dir: bool, wait_note: impl Fn()) -> Result<Option<Lock>> {
    let dir = parent(path);
    if !dir.exists() {
        if !create_dir {
            return Ok(None);
        }
        fs::create_dir_all(&dir).map_err(|e| Error::StateIo {
            path: path.into(),
            why: format!("create {}: {e}", dir.display()),
        })?;
    }
    let f = fs::File::open(&dir).map_err(|e| Error::StateIo {
        path: path.into(),
        why: format!("open {}: {e}", dir.display()),
    })?;
    // SAFETY: flock on a descriptor we own; no memory is shared with the kernel.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        wait_note();
        // SAFETY: as above.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(Error::StateIo {
                path: path.into(),
                why: format!(
                    "lock {}: {}",
                    dir.display(),
                    std::io::Error::last_os_error()
                ),
            });
        }
    }
    Ok(Some(Lock { _dir: f }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hpmmap-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_atomic_replace() {
        let d = tmpdir("rt");
        let p = d.join("offline.json");
        assert_eq!(load(&p).unwrap(), None);
        let mut s = State::new(Path::new("/sys"), Path::new("/proc"));
        s.nodes.insert(
            0,
            NodeState {
                baseline_nr: 1,
                reserved: 2,
                adopted: 3,
            },
        );
        s.pending = Some(PendingResize {
            node: 0,
            before: 3,
            target: 4,
            job: None,
        });
        save(&p, &mut s).unwrap();
        assert!(!d.join("offline.json.tmp").exists());
        assert_eq!(load(&p).unwrap().unwrap(), s);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_written_before_adoption_existed_loads_with_nothing_adopted() {
        let d = tmpdir("noadopt");
        let p = d.join("offline.json");
        fs::write(
            &p,
            r#"{"format":"hpmmap-offline-state","version":1,"sysfs_root":"/sys","proc_root":"/proc","nodes":{"0":{"baseline_nr":0,"reserved":2}}}"#,
        )
        .unwrap();
        let s = load(&p).unwrap().unwrap();
        assert_eq!((s.added(0), s.adopted(0), s.held(0)), (2, 0, 2));
        // a version 1 file is migrated: no jobs, every page unassigned
        assert_eq!((s.version, s.jobs.len(), s.unassigned(0)), (2, 0, 2));
        let mut s2 = s.clone();
        save(&p, &mut s2).unwrap();
        assert!(!fs::read_to_string(&p).unwrap().contains("adopted"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn job_shares_follow_the_books() {
        let mut s = State::new(Path::new("/sys"), Path::new("/proc"));
        s.nodes.insert(
            0,
            NodeState {
                baseline_nr: 0,
                reserved: 3,
                adopted: 2,
            },
        );
        s.job_add(Some("a"), 0, 2);
        s.job_add(Some("b"), 0, 2);
        s.job_add(None, 0, 5);
        assert_eq!((s.owned(Some("a"), 0), s.owned(None, 0)), (2, 1));
        s.nodes.get_mut(&0).unwrap().reserved = 0; // 3 pages lost: 1 unassigned, then b's first
        s.fit_jobs(0, Some("b"));
        assert_eq!((s.owned(Some("a"), 0), s.owned(Some("b"), 0)), (2, 0));
        s.prune();
        assert!(!s.jobs.contains_key("b"));
        assert!(validate_job("job-1.x_2").is_ok());
        for bad in ["", "a b", "../x", &"x".repeat(65)] {
            assert!(validate_job(bad).unwrap_err().is_input(), "{bad}");
        }
    }

    #[test]
    fn other_versions_and_formats_are_input_errors() {
        let d = tmpdir("ver");
        let p = d.join("offline.json");
        fs::write(
            &p,
            r#"{"format":"hpmmap-offline-state","version":3,"nodes":{}}"#,
        )
        .unwrap();
        let e = load(&p).unwrap_err();
        assert!(e.is_input());
        assert!(e.to_string().contains("version 3"), "{e}");
        fs::write(&p, r#"{"format":"something-else","version":1}"#).unwrap();
        assert!(load(&p).unwrap_err().is_input());
        fs::write(&p, "not json").unwrap();
        assert!(load(&p).unwrap_err().is_input());
        fs::write(
            &p,
            r#"{"format":"hpmmap-offline-state","version":1,"nodes":7}"#,
        )
        .unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("malformed"));
        fs::remove_dir_all(&d).unwrap();
    }
}
