//! Claim records: one file per claimed VF under `RUN/vf/` (`/run/hpmmap/vf` on a host),
//! written before the first change to the host and removed when everything was put back.
//!
//! They serve three readers: a process that died without releasing (SIGKILL, a host
//! kernel oops in the VMM, a power cut of the node leaves nothing to do) is undone by
//! [`recover`] (`hpmmap-vf recover`); a VF with a record is busy for every other claim;
//! and `hpmmap-vf partitions` turns the records of running jobs into OpenSM partitions.
//!
//! Format: `key=value` lines after a version line, so an admin can read them with `cat`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::bind::{restore_binding, BindRecord};
use crate::error::VfError;
use crate::ib::{self, Guid, IbSetup, Pkey};
use crate::pci::PciAddr;
use crate::sysfs::Sysfs;

const MAGIC: &str = "hpmmap-vf-claim 1";
const SRIOV_MAGIC: &str = "hpmmap-vf-sriov 1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRecord {
    pub pid: u32,
    /// The process's start time (field 22 of /proc/PID/stat), so a reused pid does not
    /// pass for the claimant.
    pub start: Option<u64>,
    pub host: String,
    pub job: String,
    pub pf: PciAddr,
    pub vf: PciAddr,
    pub binding: BindRecord,
    pub ib: Option<IbSetup>,
    /// How many of the IB attribute writes were applied (0..=3): recovery restores
    /// exactly those.
    pub ib_done: usize,
}

/// `RUN/vf`.
pub fn dir(sysfs: &Sysfs) -> PathBuf {
    sysfs.paths().run.join("vf")
}

pub fn path_for(sysfs: &Sysfs, vf: PciAddr) -> PathBuf {
    dir(sysfs).join(format!("{vf}.claim"))
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VfError {
    let path = path.to_path_buf();
    move |source| VfError::Sysfs { op, path, source }
}

impl ClaimRecord {
    pub fn to_text(&self) -> String {
        let mut s = format!("{MAGIC}\n");
        let mut kv = |k: &str, v: &str| s.push_str(&format!("{k}={v}\n"));
        kv("pid", &self.pid.to_string());
        kv(
            "start",
            &self.start.map(|s| s.to_string()).unwrap_or_default(),
        );
        kv("host", &self.host);
        kv("job", &self.job);
        kv("pf", &self.pf.to_string());
        kv("vf", &self.vf.to_string());
        kv(
            "original_driver",
            self.binding.original_driver.as_deref().unwrap_or(""),
        );
        kv(
            "original_override",
            self.binding.original_override.as_deref().unwrap_or(""),
        );
        if let Some(ib) = &self.ib {
            kv("vf_index", &ib.index.to_string());
            kv("guid", &ib.guid.to_string());
            kv("pkey", &ib.pkey.map(|p| p.to_string()).unwrap_or_default());
            kv("orig_node", &ib.orig_node);
            kv("orig_port", &ib.orig_port);
            kv("orig_policy", &ib.orig_policy);
            kv("ib_done", &self.ib_done.to_string());
        }
        s
    }

    pub fn parse(path: &Path, text: &str) -> Result<ClaimRecord, VfError> {
        let bad = |reason: String| VfError::BadRecord {
            path: path.to_path_buf(),
            reason,
        };
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad(format!("first line is not '{MAGIC}'")));
        }
        let mut m = std::collections::BTreeMap::new();
        for l in lines {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| bad(format!("line '{l}' is not key=value")))?;
            m.insert(k.to_string(), v.to_string());
        }
        let get = |k: &str| m.get(k).cloned().ok_or_else(|| bad(format!("no {k}")));
        let opt = |k: &str| m.get(k).filter(|v| !v.is_empty()).cloned();
        let addr = |k: &str| -> Result<PciAddr, VfError> {
            get(k)?
                .parse()
                .map_err(|_| bad(format!("{k} is not a PCI address")))
        };
        let num = |k: &str| -> Result<u64, VfError> {
            get(k)?
                .parse()
                .map_err(|_| bad(format!("{k} is not a number")))
        };
        let vf = addr("vf")?;
        let pf = addr("pf")?;
        let ib = match opt("guid") {
            None => None,
            Some(g) => Some(IbSetup {
                pf,
                index: num("vf_index")? as u32,
                guid: Guid::parse_any(&g).map_err(|e| bad(format!("guid: {e}")))?,
                pkey: opt("pkey")
                    .map(|p| Pkey::parse(&p).map_err(|e| bad(e.to_string())))
                    .transpose()?,
                orig_node: get("orig_node")?,
                orig_port: get("orig_port")?,
                orig_policy: get("orig_policy")?,
            }),
        };
        Ok(ClaimRecord {
            pid: num("pid")? as u32,
            start: opt("start").and_then(|s| s.parse().ok()),
            host: get("host")?,
            job: get("job")?,
            pf,
            vf,
            binding: BindRecord {
                dev: vf,
                original_driver: opt("original_driver"),
                original_override: opt("original_override"),
            },
            ib_done: if ib.is_some() {
                num("ib_done")? as usize
            } else {
                0
            },
            ib,
        })
    }

    /// Writes the record atomically (temporary file, fsync, rename) so that a crash never
    /// leaves half a record for recovery to choke on.
    pub fn save(&self, sysfs: &Sysfs) -> Result<PathBuf, VfError> {
        let d = dir(sysfs);
        fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        let path = path_for(sysfs, self.vf);
        write_atomic(&path, &self.to_text())?;
        Ok(path)
    }
}

/// Temporary file in the same directory, fsync, rename over `path`.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), VfError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(io_err("write", path))
}

/// Every record in `dir`, each parsed or the error that says why it could not be.
pub fn list_in(dir: &Path) -> Vec<(PathBuf, Result<ClaimRecord, VfError>)> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "claim"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| {
            let r = fs::read_to_string(&p)
                .map_err(io_err("read", &p))
                .and_then(|t| ClaimRecord::parse(&p, &t));
            (p, r)
        })
        .collect()
}

pub fn list(sysfs: &Sysfs) -> Vec<(PathBuf, Result<ClaimRecord, VfError>)> {
    list_in(&dir(sysfs))
}

/// This host's name, as records and partition comments name it.
pub fn hostname(sysfs: &Sysfs) -> String {
    sysfs
        .read_opt(&sysfs.proc("sys/kernel/hostname"))
        .ok()
        .flatten()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// This process's pid as the host sees it. Under `hpmmap-vmm --jail` the VMM runs in a pid
/// namespace of its own, where getpid() says 1; /proc (mounted for the host's namespace, and
/// still in view while the VF is claimed) resolves `self` to the host's pid, which is what a
/// record must name for `recover`, run in the host's namespace, to check.
pub fn own_pid() -> u32 {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|l| l.to_str()?.parse().ok())
        .unwrap_or_else(std::process::id)
}

/// Field 22 (starttime) of /proc/PID/stat; the comm field may hold spaces and parentheses,
/// so count from the last ')'.
pub fn start_time(sysfs: &Sysfs, pid: u32) -> Option<u64> {
    let s = sysfs
        .read_opt(&sysfs.proc(format!("{pid}/stat")))
        .ok()
        .flatten()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A process that has exited and waits for its parent to reap it (a jailed VMM killed with
/// its keeper waits for init): its descriptors are closed, VFIO's included.
fn is_zombie(sysfs: &Sysfs, pid: u32) -> bool {
    sysfs
        .read_opt(&sysfs.proc(format!("{pid}/stat")))
        .ok()
        .flatten()
        .and_then(|s| Some(s[s.rfind(')')? + 1..].split_whitespace().next()? == "Z"))
        .unwrap_or(false)
}

/// Whether the claimant still runs. Records of other hosts (a registry shared between
/// nodes) cannot be checked from here and count as live.
pub fn is_live(sysfs: &Sysfs, rec: &ClaimRecord) -> bool {
    if rec.host != hostname(sysfs) {
        return true;
    }
    if !sysfs.proc(rec.pid.to_string()).exists() || is_zombie(sysfs, rec.pid) {
        return false;
    }
    match (rec.start, start_time(sysfs, rec.pid)) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// What [`recover`] did with one record.
#[derive(Debug)]
pub enum Recovered {
    /// Its process runs: left alone.
    Live(ClaimRecord),
    /// Put back and removed.
    Restored(ClaimRecord),
    /// Put back only in part; the record stays so a later run can try again.
    Failed(ClaimRecord, VfError),
    /// Not readable: left for the admin, with why.
    Unreadable(PathBuf, VfError),
}

/// Undoes the claims of processes that are gone: GUIDs and policy back to what they were,
/// the VF back on its original driver, the record removed. Records of live processes are
/// left alone. The one command after a crash: `hpmmap-vf recover`.
pub fn recover(sysfs: &Sysfs) -> Vec<Recovered> {
    let mut out = Vec::new();
    for (path, r) in list(sysfs) {
        let rec = match r {
            Ok(rec) => rec,
            Err(e) => {
                out.push(Recovered::Unreadable(path, e));
                continue;
            }
        };
        if is_live(sysfs, &rec) {
            out.push(Recovered::Live(rec));
            continue;
        }
        let res = undo(sysfs, &rec);
        match res {
            Ok(()) => match fs::remove_file(&path) {
                Ok(()) => out.push(Recovered::Restored(rec)),
                Err(e) => out.push(Recovered::Failed(rec, io_err("remove", &path)(e))),
            },
            Err(e) => out.push(Recovered::Failed(rec, e)),
        }
    }
    out
}

/// GUIDs and policy first, while the VF is off the host driver, so that the host's VF
/// driver comes up with its original identity; then the binding.
pub fn undo(sysfs: &Sysfs, rec: &ClaimRecord) -> Result<(), VfError> {
    let a = match &rec.ib {
        Some(setup) => ib::restore(sysfs, setup, rec.ib_done),
        None => Ok(()),
    };
    let b = restore_binding(sysfs, &rec.binding);
    a.and(b)
}

/// The lock every claim takes from choosing a VF until its record is on disk: a flock on
/// `RUN/vf` itself (no file left behind). Two claims started at the same moment on the same
/// PF are serialised, and the second sees the first's record (a busy VF) when it chooses.
pub struct ClaimLock {
    _dir: fs::File,
}

pub fn claim_lock(sysfs: &Sysfs) -> Result<ClaimLock, VfError> {
    use std::os::unix::io::AsRawFd;
    let d = dir(sysfs);
    fs::create_dir_all(&d).map_err(io_err("create", &d))?;
    let f = fs::File::open(&d).map_err(io_err("open", &d))?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(ClaimLock { _dir: f });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(io_err("lock", &d)(e));
        }
    }
}

/// VFs a claim enabled with `--vf-create` (`RUN/vf/<PF>.sriov`), written before
/// `sriov_numvfs` is set, so that `recover` disables them after a crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SriovClaim {
    pub pid: u32,
    pub start: Option<u64>,
    pub host: String,
    pub pf: PciAddr,
    pub enabled: u32,
}

pub fn sriov_path(sysfs: &Sysfs, pf: PciAddr) -> PathBuf {
    dir(sysfs).join(format!("{pf}.sriov"))
}

impl SriovClaim {
    pub fn to_text(&self) -> String {
        format!(
            "{SRIOV_MAGIC}\npid={}\nstart={}\nhost={}\npf={}\nenabled={}\n",
            self.pid,
            self.start.map(|s| s.to_string()).unwrap_or_default(),
            self.host,
            self.pf,
            self.enabled
        )
    }

    pub fn parse(path: &Path, text: &str) -> Result<SriovClaim, VfError> {
        let bad = |reason: String| VfError::BadRecord {
            path: path.to_path_buf(),
            reason,
        };
        let mut lines = text.lines();
        if lines.next() != Some(SRIOV_MAGIC) {
            return Err(bad(format!("first line is not '{SRIOV_MAGIC}'")));
        }
        let m: std::collections::BTreeMap<&str, &str> =
            lines.filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| m.get(k).copied().ok_or_else(|| bad(format!("no {k}")));
        Ok(SriovClaim {
            pid: get("pid")?
                .parse()
                .map_err(|_| bad("pid is not a number".into()))?,
            start: m.get("start").and_then(|s| s.parse().ok()),
            host: get("host")?.to_string(),
            pf: get("pf")?
                .parse()
                .map_err(|_| bad("pf is not a PCI address".into()))?,
            enabled: get("enabled")?
                .parse()
                .map_err(|_| bad("enabled is not a number".into()))?,
        })
    }

    pub fn save(&self, sysfs: &Sysfs) -> Result<PathBuf, VfError> {
        let d = dir(sysfs);
        fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        let path = sriov_path(sysfs, self.pf);
        write_atomic(&path, &self.to_text())?;
        Ok(path)
    }

    fn as_claim(&self) -> ClaimRecord {
        ClaimRecord {
            pid: self.pid,
            start: self.start,
            host: self.host.clone(),
            job: String::new(),
            pf: self.pf,
            vf: self.pf,
            binding: BindRecord {
                dev: self.pf,
                original_driver: None,
                original_override: None,
            },
            ib: None,
            ib_done: 0,
        }
    }
}

/// What [`recover_sriov`] did with one `--vf-create` record.
#[derive(Debug)]
pub enum SriovRecovered {
    /// Its process runs: left alone.
    Live(SriovClaim),
    /// VFs disabled (or already gone); record removed.
    Disabled(SriovClaim),
    /// A VF is still in use (another job's claim, a vfio user): left enabled, record kept.
    InUse(SriovClaim),
    Failed(SriovClaim, VfError),
    Unreadable(PathBuf, VfError),
}

/// Disables the VFs that processes now gone enabled with `--vf-create`, once none of them
/// is in use (run after [`recover`], which puts their VFs back on the host driver).
pub fn recover_sriov(sysfs: &Sysfs) -> Vec<SriovRecovered> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir(sysfs))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sriov"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let rec = match fs::read_to_string(&path)
            .map_err(io_err("read", &path))
            .and_then(|t| SriovClaim::parse(&path, &t))
        {
            Ok(r) => r,
            Err(e) => {
                out.push(SriovRecovered::Unreadable(path, e));
                continue;
            }
        };
        if is_live(sysfs, &rec.as_claim()) {
            out.push(SriovRecovered::Live(rec));
            continue;
        }
        let num = sysfs.pci_dev(rec.pf).join("sriov_numvfs");
        let now = sysfs.read_u32(&num).unwrap_or(0);
        let res = if now == 0 {
            Ok(true)
        } else {
            crate::sriov::disable_vfs_if_unused(
                sysfs,
                &crate::sriov::SriovRecord {
                    pf: rec.pf,
                    enabled: rec.enabled,
                },
            )
        };
        match res {
            Ok(true) => match fs::remove_file(&path) {
                Ok(()) => out.push(SriovRecovered::Disabled(rec)),
                Err(e) => out.push(SriovRecovered::Failed(rec, io_err("remove", &path)(e))),
            },
            Ok(false) => out.push(SriovRecovered::InUse(rec)),
            Err(e) => out.push(SriovRecovered::Failed(rec, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{is_live, own_pid, ClaimRecord};
    use crate::bind::BindRecord;
    use crate::sysfs::{HostPaths, Sysfs};

    /// A claimant that has exited and waits to be reaped (a jailed VMM killed together with
    /// its keeper, waiting for init) holds no VF any more: its record is recoverable.
    #[test]
    fn a_zombie_claimant_is_not_live() {
        let root = std::env::temp_dir().join(format!("hpmmap-vf-zombie-{}", std::process::id()));
        let sysfs = Sysfs::new(
            HostPaths::under(&root),
            std::sync::Arc::new(crate::sysfs::KernelWriter),
        );
        std::fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
        std::fs::write(root.join("proc/sys/kernel/hostname"), "n1\n").unwrap();
        std::fs::create_dir_all(root.join("proc/77")).unwrap();
        let vf = "0000:01:10.0".parse().unwrap();
        let rec = ClaimRecord {
            pid: 77,
            start: Some(500),
            host: "n1".into(),
            job: "j".into(),
            pf: "0000:01:00.0".parse().unwrap(),
            vf,
            binding: BindRecord {
                dev: vf,
                original_driver: Some("igbvf".into()),
                original_override: None,
            },
            ib: None,
            ib_done: 0,
        };
        let stat = |state: &str| {
            format!(
                "77 (hpmmap-vmm) {state} 1 77 77 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 3 0 500 0 0\n"
            )
        };
        std::fs::write(root.join("proc/77/stat"), stat("S")).unwrap();
        assert!(is_live(&sysfs, &rec));
        std::fs::write(root.join("proc/77/stat"), stat("Z")).unwrap();
        assert!(!is_live(&sysfs, &rec));
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A process in a pid namespace of its own (as the jailed VMM is) names itself by the
    /// host's pid, the one its parent in the host's namespace sees.
    #[test]
    fn own_pid_is_the_hosts_pid_inside_a_pid_namespace() {
        assert_eq!(own_pid(), std::process::id());
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "this test needs root (a pid namespace)");
        let t = std::thread::spawn(|| {
            // SAFETY: affects only the children of this thread, which forks one below.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWPID) }, 0);
            let mut fds = [0; 2];
            // SAFETY: pipe fills the array.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            // SAFETY: the child only reads /proc, writes to the pipe and _exits.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                // SAFETY: getpid has no preconditions.
                let ns = unsafe { libc::getpid() } as u32;
                let msg = format!("{ns} {}", own_pid());
                // SAFETY: writes a local buffer to our pipe, then exits without unwinding.
                unsafe {
                    libc::write(fds[1], msg.as_ptr().cast(), msg.len());
                    libc::_exit(0);
                }
            }
            // SAFETY: the write end is the child's.
            unsafe { libc::close(fds[1]) };
            let mut buf = [0u8; 64];
            // SAFETY: reads into a local buffer from our pipe.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            let mut st = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut st, 0) };
            (
                pid as u32,
                String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned(),
            )
        });
        let (host_pid, said) = t.join().unwrap();
        assert_eq!(said, format!("1 {host_pid}"));
    }
}
