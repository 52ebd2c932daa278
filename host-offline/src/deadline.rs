//! A time limit on one blocking sysfs write.
//!
//! Writing `offline` to a memory block makes the kernel migrate every page out of it, and it
//! retries for as long as a page refuses to move (a page pinned by a pipe, by a driver, by
//! RDMA): since Linux 5.7 there is no timeout, only "until a signal is pending". A tool that
//! waits forever there holds the host's memory half offline. So the write runs under a
//! per-thread timer whose signal (SIGALRM, caught by a handler that does nothing) makes the
//! kernel back off with EINTR and put the block back as it was.

use std::io;
use std::sync::Once;
use std::time::{Duration, Instant};

extern "C" fn on_alarm(_: libc::c_int) {}

fn install_alarm_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: sigaction with a zeroed struct, an empty mask and a handler that touches
        // nothing; no SA_RESTART, so an interrupted write returns EINTR instead of restarting.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_alarm as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
        }
    });
}

/// A one-shot timer that signals the calling thread (not the process: other threads, such as
/// a test harness's, must not be interrupted).
struct ThreadTimer(libc::timer_t);

impl ThreadTimer {
    fn arm(limit: Duration) -> io::Result<Self> {
        install_alarm_handler();
        // SAFETY: sigevent is plain data (zeroed is a valid value); timer_create writes the
        // id into `id`, which this struct then owns and deletes on drop.
        unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = libc::SIGALRM;
            sev.sigev_notify_thread_id = libc::gettid();
            let mut id: libc::timer_t = std::mem::zeroed();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) != 0 {
                return Err(io::Error::last_os_error());
            }
            let timer = ThreadTimer(id);
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                // An all-zero it_value would disarm the timer instead of firing at once.
                it_value: libc::timespec {
                    tv_sec: limit.as_secs() as libc::time_t,
                    tv_nsec: limit.subsec_nanos().max(1) as libc::c_long,
                },
            };
            if libc::timer_settime(timer.0, 0, &spec, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(timer)
        }
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: the id came from timer_create and is deleted once.
        unsafe {
            libc::timer_delete(self.0);
        }
    }
}

/// The error a write that ran out of time returns (kind TimedOut, no errno: the kernel's
/// own answer was EINTR, which would read as "interrupted").
pub fn timed_out(limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "no answer within {} s; the kernel backed off",
            limit.as_secs_f64()
        ),
    )
}

/// Runs `op` with a timer that interrupts it after `limit`. An EINTR at or after the limit is
/// the timer's and becomes [`timed_out`]; an earlier EINTR (SIGINT, SIGTERM) is passed on.
pub fn within<T>(limit: Duration, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let start = Instant::now();
    let timer = ThreadTimer::arm(limit)?;
    let result = op();
    drop(timer);
    match result {
        Err(e) if e.raw_os_error() == Some(libc::EINTR) && start.elapsed() >= limit => {
            Err(timed_out(limit))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_blocked_read_is_cut_at_the_limit_and_a_quick_one_leaves_no_timer() {
        let mut fds = [0; 2];
        // SAFETY: pipe fills the two descriptors, closed below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // Nobody writes to the pipe: a read blocks until a signal arrives.
        let blocked_read = || {
            let mut b = [0u8; 1];
            // SAFETY: reads at most one byte into a local buffer.
            let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n)
            }
        };
        let dev_null = std::fs::File::open("/dev/null").unwrap();
        let quick = within(Duration::from_millis(300), || {
            // SAFETY: a read from /dev/null (end of file at once) into a local buffer.
            Ok(unsafe { libc::read(dev_null.as_raw_fd(), [0u8; 1].as_mut_ptr().cast(), 1) })
        });
        assert_eq!(quick.unwrap(), 0);

        // Had the quick call's timer survived, it would cut this read at 300 ms with a plain
        // EINTR; only this call's own timer may end it, at 700 ms.
        let t = Instant::now();
        let e = within(Duration::from_millis(700), blocked_read).unwrap_err();
        let took = t.elapsed();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_secs(5),
            "{took:?}"
        );
        // SAFETY: closing the descriptors pipe returned.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
