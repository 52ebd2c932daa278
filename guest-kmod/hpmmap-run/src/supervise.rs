//! Runs the rank as hpmmap-run's child, so that hpmmap-run is still there to read the
//! rank's counters after it ended: signals a batch system or MPI launcher sends to
//! hpmmap-run go on to the rank, the rank dies with hpmmap-run (PR_SET_PDEATHSIG), and
//! hpmmap-run ends the way the rank ended (its exit status, or the same signal).

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};

/// Signals passed on to the rank when a process sent them (kill, sigqueue). The same
/// signal from the kernel (a terminal's ^C or ^\\ goes to the whole foreground group)
/// already reached the rank and is not sent twice.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 && code <= 0 {
        // SAFETY: kill is async-signal-safe; pid is our own child's.
        unsafe { libc::kill(pid, sig) };
    }
}

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
    CHILD.store(child.id() as i32, Ordering::Relaxed);
    for sig in FORWARDED {
        // SAFETY: a zeroed sigaction with an SA_SIGINFO handler whose body is
        // async-signal-safe (an atomic load and kill).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    Ok(child)
}

/// Waits for the rank (a wait interrupted by a forwarded signal is retried by std).
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
