//! The keeper: with `--jail`, hpmmap-vmm forks before anything else. The child is the VMM
//! (it drops root once its devices are open); the parent stays root, forwards stop signals
//! to it, and after it ends does what needs root and a view of the host: writes the report
//! the child sent through a pipe, gives VFs back to their drivers (`hpmmap_vf::records`, the
//! crash-recovery path, so a VMM killed with SIGKILL is covered too), removes the jail
//! directory and the cgroup, and exits with the child's status. The child is pid 1 of a pid
//! namespace of its own and dies with the keeper (SIGKILL as its parent-death signal).

use super::{JailError, JailOptions};
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// What the keeper cleans up after the child, and where the report goes.
pub struct KeeperJob {
    pub opts: JailOptions,
    pub report: Option<PathBuf>,
    pub has_vf: bool,
    /// `--vsock PATH`: the VMM binds it before it enters the jail, where it can no longer
    /// see it to remove it; the keeper does.
    pub vsock: Option<PathBuf>,
}

/// In the child: the write end of the report pipe.
pub struct Child {
    pub report_fd: OwnedFd,
}

/// Prepares the jail (directory, cgroup) and forks. Returns in the child only; the parent
/// waits, cleans up and exits.
pub fn start(job: KeeperJob) -> Result<Child, JailError> {
    super::layout::make_parents(&job.opts.dir, job.opts.cgroup.as_deref())
        .map_err(|e| JailError::Dir(job.opts.dir.clone(), format!("making its parents: {e}")))?;
    make_jail_dir(&job.opts.dir)?;
    if let Some(cg) = &job.opts.cgroup {
        if let Err(e) = std::fs::create_dir(cg) {
            let _ = std::fs::remove_dir(&job.opts.dir);
            return Err(JailError::Cgroup {
                path: cg.clone(),
                why: e.to_string(),
            });
        }
    }
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        let e = std::io::Error::last_os_error();
        cleanup(&job);
        return Err(JailError::Sys("pipe2", e));
    }
    // The child (the VMM) is pid 1 of a pid namespace of its own: it cannot see or signal
    // any host process. The keeper stays in the host's namespace, and so do the records the
    // VMM writes (hpmmap_vf::records::own_pid names it by its host pid).
    // SAFETY: plain system call; it changes only the namespace of this process's next child.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } < 0 {
        let e = std::io::Error::last_os_error();
        cleanup(&job);
        return Err(JailError::Sys("unshare(pid namespace)", e));
    }
    // SAFETY: the process is single-threaded here (main, before anything else started).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        cleanup(&job);
        return Err(JailError::Sys("fork", e));
    }
    if pid == 0 {
        // SAFETY: both fds are ours from pipe2.
        unsafe { libc::close(fds[0]) };
        close_inherited(fds[1]);
        REPORT_FD.store(fds[1], Ordering::Relaxed);
        as_namespace_init();
        stay_tied()?;
        // SAFETY: the write end is ours (the pipe was just made and nothing else holds it).
        let report_fd = unsafe { OwnedFd::from_raw_fd(fds[1]) };
        return Ok(Child { report_fd });
    }
    // SAFETY: the write end belongs to the child now.
    unsafe { libc::close(fds[1]) };
    CHILD.store(pid, Ordering::Relaxed);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs an async-signal-safe handler.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
    // SAFETY: the read end is ours.
    let mut pipe = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    let mut report = Vec::new();
    let _ = pipe.read_to_end(&mut report);
    let status = wait(pid);
    if let Some(p) = &job.report {
        if !report.is_empty() {
            if let Err(e) = write_atomic(p, &report) {
                eprintln!("hpmmap-vmm: --report {}: cannot write: {e}", p.display());
            }
        }
    }
    cleanup(&job);
    std::process::exit(status);
}

/// In the child: the write end of the report pipe, whose reader is the keeper.
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn exit_on_signal(sig: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + sig) };
}

/// As pid 1 of its namespace the VMM would ignore every signal it has no handler for, the
/// keeper's forwarded SIGINT/SIGTERM/SIGHUP included. Until the VMM blocks them for its
/// orderly stop (vm/running.rs, sigwait), they end it as their default action would.
fn as_namespace_init() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs an async-signal-safe handler.
        unsafe { libc::signal(sig, exit_on_signal as *const () as libc::sighandler_t) };
    }
}

/// In the child: SIGKILL when the keeper dies, so that no VMM runs on with nobody left to
/// give its VF back, remove its jail and report its status (`hpmmap-offline recover` then
/// finds the job dead and cleans up). The kernel clears this setting when the uid changes,
/// so the jail sets it again after the drop. Fails when the keeper is gone already: the
/// pipe to it has no reader any more.
pub fn stay_tied() -> Result<(), JailError> {
    // SAFETY: plain prctl on this process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } < 0 {
        return Err(JailError::Sys(
            "prctl(PR_SET_PDEATHSIG)",
            std::io::Error::last_os_error(),
        ));
    }
    let fd = REPORT_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return Ok(());
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: polls one descriptor of ours, without waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n > 0 && p.revents & libc::POLLERR != 0 {
        return Err(JailError::Sys(
            "keeping the keeper",
            std::io::Error::from_raw_os_error(libc::EPIPE),
        ));
    }
    Ok(())
}

/// The job's directory: created empty, or an existing empty one (anything in it would be
/// visible to the guest's VMM).
fn make_jail_dir(dir: &Path) -> Result<(), JailError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let empty = std::fs::read_dir(dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if empty {
                Ok(())
            } else {
                Err(JailError::NotEmpty(dir.to_path_buf()))
            }
        }
        Err(e) => Err(JailError::Dir(dir.to_path_buf(), e.to_string())),
    }
}

/// Everything the job left that needs root: VFs whose VMM is gone, the directory, the cgroup.
fn cleanup(job: &KeeperJob) {
    if job.has_vf {
        use hpmmap_vf::records::Recovered;
        for r in hpmmap_vf::records::recover(&hpmmap_vf::Sysfs::host()) {
            match r {
                Recovered::Failed(rec, e) => {
                    eprintln!("hpmmap-vmm: --jail: giving {} back: {e}", rec.vf)
                }
                Recovered::Unreadable(p, e) => {
                    eprintln!("hpmmap-vmm: --jail: {}: {e}", p.display())
                }
                Recovered::Live(_) | Recovered::Restored(_) => {}
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(&job.opts.dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!(
                "hpmmap-vmm: --jail {}: not removed: {e}",
                job.opts.dir.display()
            );
        }
    }
    if let Some(cg) = &job.opts.cgroup {
        let _ = std::fs::remove_dir(cg);
    }
    if let Some(p) = &job.vsock {
        // Only the socket: config refused a PATH that existed before the VMM started.
        use std::os::unix::fs::FileTypeExt;
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
            if let Err(e) = std::fs::remove_file(p) {
                eprintln!("hpmmap-vmm: --vsock {}: not removed: {e}", p.display());
            }
        }
    }
}

/// Waits for the child; its exit status, or 128+N for a signal.
fn wait(pid: libc::pid_t) -> i32 {
    loop {
        let mut st = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            if libc::WIFEXITED(st) {
                return libc::WEXITSTATUS(st);
            }
            if libc::WIFSIGNALED(st) {
                return 128 + libc::WTERMSIG(st);
            }
        } else if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return crate::exit::VMM_FAILURE;
        }
    }
}

/// Closes every descriptor the process inherited (the VMM opens what it needs itself), except
/// stdio and `keep`.
fn close_inherited(keep: RawFd) {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds.into_iter().filter(|&f| f > 2 && f != keep) {
        // SAFETY: closing a descriptor of this process that nothing in it uses yet (the
        // directory fd of the listing is closed already or fails harmlessly).
        unsafe { libc::close(fd) };
    }
}

fn write_atomic(p: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = p.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, p)
}
