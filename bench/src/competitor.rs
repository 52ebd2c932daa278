//! Competing commodity workloads the harness starts and stops itself.
//!
//! Each competitor runs in its own process group; stopping it signals the whole group
//! (SIGTERM, then SIGKILL after a grace period) and reaps every member. The harness makes
//! itself a child subreaper ([`become_subreaper`]), so members orphaned when their parent
//! dies (make's compilers) are re-parented to it and reaped here, never left behind.
//! `Drop` stops a competitor that was not stopped explicitly.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CompetitorError {
    #[error("starting {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{name}: process group {pgid} still has members after SIGKILL")]
    LeftBehind { name: String, pgid: i32 },
    #[error("{0}")]
    Prepare(String),
}

pub struct Competitor {
    name: String,
    pgid: i32,
    stopped: bool,
}

/// Re-parents orphaned descendants to this process so it can reap them.
pub fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
}

/// Pids of the live (non-zombie) members of a process group, from /proc.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[0] != "Z" && f[2].parse::<i32>().ok() == Some(pgid) {
            pids.push(pid);
        }
    }
    pids
}

/// The CPU set of `cpus` (None for an empty list: no pinning). Built before fork, so
/// that the child only makes the system call.
fn cpu_set(cpus: &[usize]) -> Option<libc::cpu_set_t> {
    if cpus.is_empty() {
        return None;
    }
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: CPU_SET only indexes the bit array of the live local `set`
        // (bounds-checked: a CPU past CPU_SETSIZE panics here, in the parent).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    Some(set)
}

/// Pins the calling process to `set` (no-op for None). Async-signal-safe: one system call,
/// no allocation (`last_os_error` holds only the errno).
fn set_affinity(set: Option<&libc::cpu_set_t>) -> std::io::Result<()> {
    let Some(set) = set else {
        return Ok(());
    };
    // SAFETY: `set` is a live cpu_set_t and the size passed is its size.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Competitor {
    /// Starts `cmd` as the leader of a new process group, pinned to `cpus` (inherited by
    /// everything it starts), stdout and stderr appended to `log`.
    pub fn start(
        name: &str,
        mut cmd: Command,
        cpus: &[usize],
        log: &Path,
    ) -> Result<Competitor, CompetitorError> {
        let spawn_err = |source| CompetitorError::Spawn {
            name: name.into(),
            source,
        };
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        let set = cpu_set(cpus);
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec, where the harness may
        // have other threads: it only makes two async-signal-safe system calls (prctl,
        // sched_setaffinity) on `set`, built and moved in before the fork; it allocates
        // nothing and takes no lock.
        unsafe {
            cmd.pre_exec(move || {
                // The leader dies with the harness even if the harness is SIGKILLed.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                set_affinity(set.as_ref())
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        let pgid = child.id() as i32;
        // Waiting happens through waitpid on the group, not through `child`.
        drop(child);
        Ok(Competitor {
            name: name.into(),
            pgid,
            stopped: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// Whether any member of the group still runs.
    pub fn is_running(&self) -> bool {
        reap_group(self.pgid);
        !group_members(self.pgid).is_empty()
    }

    /// Stops the whole group and reaps it; an error if anything survived SIGKILL.
    pub fn stop(&mut self) -> Result<(), CompetitorError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let pgid = self.pgid;
        // SAFETY: kill touches no memory. The group is ours: its leader was our child and
        // is reaped only through this group, and while any member lives the pgid cannot be
        // reused.
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
            libc::kill(-pgid, libc::SIGCONT);
        }
        let mut killed = false;
        let mut deadline = Instant::now() + Duration::from_secs(3);
        loop {
            reap_group(pgid);
            if group_members(pgid).is_empty() {
                // Members gone; reap what is left as zombies (ours through the subreaper).
                reap_group(pgid);
                return Ok(());
            }
            if Instant::now() >= deadline {
                if killed {
                    return Err(CompetitorError::LeftBehind {
                        name: self.name.clone(),
                        pgid,
                    });
                }
                // SAFETY: as above: no memory touched, the group still has members.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                killed = true;
                deadline = Instant::now() + Duration::from_secs(5);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Competitor {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("hpmmap-bench: {e}");
        }
    }
}

/// Reaps every exited child in the process group without blocking.
fn reap_group(pgid: i32) {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a live c_int for the kernel to write.
        let r = unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

/// A parallel build of a real source tree, restarted as soon as it finishes (build,
/// clean, build...), so it competes for the whole measurement. A Linux tree is built
/// out of tree (`O=`) with `tinyconfig`'s `vmlinux`; any other tree with a Makefile is
/// copied once into `obj` and built there with `make` / `make clean`.
/// Each completed build appends `BUILD-DONE rc=N` to the log.
pub struct BuildLoop {
    pub src: PathBuf,
    pub obj: PathBuf,
    pub jobs: usize,
}

impl BuildLoop {
    pub fn is_kernel_tree(&self) -> bool {
        self.src.join("Kconfig").exists() && self.src.join("Makefile").exists()
    }

    /// One-time preparation: the kernel configuration, or the copy of a plain tree.
    pub fn prepare(&self) -> Result<(), CompetitorError> {
        std::fs::create_dir_all(&self.obj)
            .map_err(|e| CompetitorError::Prepare(format!("{}: {e}", self.obj.display())))?;
        let status = if self.is_kernel_tree() {
            if self.obj.join(".config").exists() {
                return Ok(());
            }
            Command::new("make")
                .arg("-s")
                .arg("-C")
                .arg(&self.src)
                .arg(format!("O={}", self.obj.display()))
                .arg("tinyconfig")
                .stdout(Stdio::null())
                .status()
        } else {
            if self.obj.join("Makefile").exists() {
                return Ok(());
            }
            Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", self.src.display()))
                .arg(&self.obj)
                .status()
        };
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(CompetitorError::Prepare(format!(
                "preparing the build of {} in {} failed ({s})",
                self.src.display(),
                self.obj.display()
            ))),
            Err(e) => Err(CompetitorError::Prepare(format!("running make/cp: {e}"))),
        }
    }

    pub fn command(&self) -> Command {
        let (build, clean) = if self.is_kernel_tree() {
            (
                format!(
                    "make -s -C '{}' O='{}' -j{} vmlinux",
                    self.src.display(),
                    self.obj.display(),
                    self.jobs
                ),
                format!(
                    "make -s -C '{}' O='{}' clean",
                    self.src.display(),
                    self.obj.display()
                ),
            )
        } else {
            (
                format!("make -s -C '{}' -j{}", self.obj.display(), self.jobs),
                format!("make -s -C '{}' clean", self.obj.display()),
            )
        };
        // A failing build sleeps a little so it cannot turn into a fork storm.
        let script = format!(
            "while :; do {build} >/dev/null; rc=$?; echo \"BUILD-DONE rc=$rc\"; \
             [ $rc = 0 ] || sleep 1; {clean} >/dev/null 2>&1; done"
        );
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }
}

/// Counts of completed builds in a build loop's log: (succeeded, failed).
pub fn builds_done(log: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let ok = text.lines().filter(|l| *l == "BUILD-DONE rc=0").count() as u64;
    let all = text.lines().filter(|l| l.starts_with("BUILD-DONE")).count() as u64;
    (ok, all - ok)
}

/// stress-ng memory stressors: a `vm` worker cycling through its access patterns over
/// `vm_bytes`, and an `mmap` worker mapping, touching and unmapping `mmap_bytes` (fault
/// and reclaim churn).
pub fn stress_command(vm_bytes: &str, mmap_bytes: &str) -> Command {
    let mut c = Command::new("stress-ng");
    c.args([
        "--vm",
        "1",
        "--vm-bytes",
        vm_bytes,
        "--mmap",
        "1",
        "--mmap-bytes",
        mmap_bytes,
        "--timeout",
        "0",
        "--quiet",
    ]);
    c
}

/// Whether a program is on PATH.
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}
