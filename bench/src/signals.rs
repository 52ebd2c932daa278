//! Stopping the harness: SIGINT, SIGTERM and SIGHUP set a flag that every wait of the
//! harness checks; a stopped wait returns [`Interrupted`], so the competitors are stopped,
//! the huge pages given back and no results written as the error unwinds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::model::Interrupted;

/// Set by SIGINT / SIGTERM / SIGHUP; every wait in the harness checks it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: an all-zero sigaction is valid (no flags, empty mask, SIG_DFL) before the
        // handler is set; without SA_SIGINFO the kernel calls it as `fn(c_int)`, which
        // `on_signal` is, and it only stores to an atomic (async-signal-safe). `sa` lives
        // across the call and the old action is not asked for (null).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Whether a stop was asked for.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

pub fn check_stop() -> Result<()> {
    if stop_requested() {
        return Err(Interrupted.into());
    }
    Ok(())
}

pub fn sleep_checked(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_stop()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    check_stop()
}
