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
    #[error("the ranks must be forked from a single-threaded process ({0})")]
    Threaded(String),
}

/// Whether this process runs one thread, from /proc/self/task. A child forked from a
/// multi-threaded process may find a lock (malloc's, stdout's) held by a thread that does
/// not exist in it, and the ranks run arbitrary code.
fn single_threaded() -> Result<(), RankError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(|e| RankError::Threaded(format!("/proc/self/task: {e}")))?
        .count();
    if threads != 1 {
        return Err(RankError::Threaded(format!("{threads} threads")));
    }
    Ok(())
}

/// Forks `comm.ranks` processes running `body(rank)`; waits for all. If one fails, the
/// others are killed (they would wait forever at the next barrier) and its error returned.
/// The calling process must be single-threaded (checked): the ranks run `body`, which
/// allocates and prints, after fork.
pub fn run_ranks<F>(comm: &Comm, body: F) -> Result<(), RankError>
where
    F: Fn(usize) -> anyhow::Result<()>,
{
    // Buffered output would be duplicated into every child.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    single_threaded()?;
    let parent = std::process::id();
    let mut pids = Vec::with_capacity(comm.ranks);
    for rank in 0..comm.ranks {
        // SAFETY: the process is single-threaded (checked above), so the child's copy of
        // the address space holds no lock owned by a thread it lacks and may run any code;
        // the shared `comm` mapping is the only memory the two sides write together.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let source = std::io::Error::last_os_error();
            kill_all(&pids);
            return Err(RankError::Fork { rank, source });
        }
        if pid == 0 {
            // A rank must not outlive the run that coordinates it.
            // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            if std::os::unix::process::parent_id() != parent {
                // SAFETY: _exit ends this child at once without running the parent's
                // atexit handlers or flushing its copies of the parent's buffers.
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
            // SAFETY: as above; the rank's own output was flushed just before.
            unsafe { libc::_exit(code) };
        }
        pids.push(pid);
    }

    let mut first_err = None;
    let mut alive = vec![true; pids.len()];
    let mut left = pids.len();
    while left > 0 {
        let mut status = 0;
        // SAFETY: `status` is a live c_int for the kernel to write.
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
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET only indexes the bit array (bounds-checked, a panic past
    // CPU_SETSIZE); `set` is a live local.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live cpu_set_t and the size passed is its size.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live, writable cpu_set_t and the size passed is its size.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: c < CPU_SETSIZE, a bit of `set`, which the kernel filled.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

fn kill_all(pids: &[libc::pid_t]) {
    for &p in pids {
        // SAFETY: kill touches no memory; `p` is a rank we forked and have not reaped, so
        // the pid still names our child and cannot have been reused.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_not_forked_from_a_multi_threaded_process() {
        // A second thread for the whole call, whatever --test-threads says.
        let (hold, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || wait.recv());
        let comm = Comm::new(2, 0, 1).unwrap();
        let err = run_ranks(&comm, |_| Ok(())).unwrap_err();
        drop(hold);
        let _ = other.join();
        assert!(
            matches!(&err, RankError::Threaded(why) if why.ends_with(" threads")),
            "{err}"
        );
    }
}
