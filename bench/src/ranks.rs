//! N ranks as forked processes of one run, sharing a [`Comm`].

use std::io::Write;

use crate::comm::Comm;

#[derive(Debug, thiserror::Error)]
pub enum RankError {
    #[error("fork of rank {rank} failed: {source}")]
    Fork { rank: usize, source: std::io::Error },
    #[error("rank {rank} failed: {msg}")]
    Failed { rank: usize, msg: String },
    #[error("rank {rank} {how}")]
    Died { rank: usize, how: String },
}

/// Forks `comm.ranks` processes running `body(rank)`; waits for all. If one fails, the
/// others are killed (they would wait forever at the next barrier) and its error returned.
pub fn run_ranks<F>(comm: &Comm, body: F) -> Result<(), RankError>
where
    F: Fn(usize) -> anyhow::Result<()>,
{
    // Buffered output would be duplicated into every child.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let parent = unsafe { libc::getpid() };
    let mut pids = Vec::with_capacity(comm.ranks);
    for rank in 0..comm.ranks {
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let source = std::io::Error::last_os_error();
            kill_all(&pids);
            return Err(RankError::Fork { rank, source });
        }
        if pid == 0 {
            // A rank must not outlive the run that coordinates it.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            if unsafe { libc::getppid() } != parent {
                unsafe { libc::_exit(3) };
            }
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(rank)));
            let code = match result {
                Ok(Ok(())) => {
                    comm.out(rank).status = 1;
                    0
                }
                Ok(Err(e)) => {
                    comm.out(rank).set_error(&format!("{e:#}"));
                    1
                }
                Err(_) => {
                    comm.out(rank).set_error("panicked");
                    1
                }
            };
            let _ = std::io::stdout().flush();
            unsafe { libc::_exit(code) };
        }
        pids.push(pid);
    }

    let mut first_err = None;
    let mut alive = vec![true; pids.len()];
    let mut left = pids.len();
    while left > 0 {
        let mut status = 0;
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        let Some(rank) = pids.iter().position(|&p| p == pid) else {
            continue;
        };
        alive[rank] = false;
        left -= 1;
        let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        if !ok && first_err.is_none() {
            let out = comm.out(rank);
            first_err = Some(if out.status == 2 {
                RankError::Failed {
                    rank,
                    msg: out.error(),
                }
            } else if libc::WIFSIGNALED(status) {
                RankError::Died {
                    rank,
                    how: format!("killed by signal {}", libc::WTERMSIG(status)),
                }
            } else {
                RankError::Died {
                    rank,
                    how: format!("exited with status {}", libc::WEXITSTATUS(status)),
                }
            });
            let running: Vec<_> = (0..pids.len())
                .filter(|&r| alive[r])
                .map(|r| pids[r])
                .collect();
            kill_all(&running);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Pins the calling process to one CPU.
pub fn pin_to(cpu: usize) -> std::io::Result<()> {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

fn kill_all(pids: &[libc::pid_t]) {
    for &p in pids {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}
