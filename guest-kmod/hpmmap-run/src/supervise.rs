//! Runs the rank as hpmmap-run's child, so that hpmmap-run is still there to read the
//! rank's counters after it ended; hpmmap-run ends the way the rank ended (its exit
//! status, or the same signal), and the rank dies with hpmmap-run (PR_SET_PDEATHSIG).
//!
//! Signals: the rank stays in hpmmap-run's process group, and the senders that stop
//! ranks signal the whole group (a terminal's ^C, Open MPI's daemon with kill(-pid),
//! hpmmap-agent with killpg) or every process of the job (Slurm), so the rank gets each
//! of them itself, once. hpmmap-run therefore does not pass them on (that would deliver
//! them twice) and ignores them while the rank runs, to be there when it ends. A signal
//! sent to hpmmap-run's pid alone does not reach the rank; SIGKILL of hpmmap-run kills
//! it (PR_SET_PDEATHSIG).

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};

/// What hpmmap-run ignores while the rank runs: the signals that stop or poke a rank.
const IGNORED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Starts `command` (it inherits the registration hpmmap-run made for its next exec).
pub fn spawn(command: &[OsString]) -> std::io::Result<Child> {
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // Only now: the child has exec'd (spawn returns after its exec), so it keeps the
    // dispositions it was started with.
    for sig in IGNORED {
        // SAFETY: setting a disposition to SIG_IGN has no memory-safety preconditions.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    Ok(child)
}

/// Waits for the rank.
pub fn wait(child: &mut Child) -> std::io::Result<ExitStatus> {
    child.wait()
}

/// Ends hpmmap-run as the rank ended: its exit code, or the signal that killed it
/// (raised again on ourselves without a core dump of hpmmap-run; 128 + signal should
/// the signal not end us).
pub fn exit_like(status: ExitStatus) -> ! {
    if let Some(sig) = status.signal() {
        // SAFETY: resetting a disposition, dropping the core limit and raising a signal
        // on ourselves have no memory-safety preconditions.
        unsafe {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
        std::process::exit(128 + sig);
    }
    std::process::exit(status.code().unwrap_or(1))
}
