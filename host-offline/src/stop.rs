//! SIGINT and SIGTERM while the tool changes the host. Dying there would leave blocks
//! offline and pages taken until someone runs `release --all`; instead the handler only
//! records the signal, the blocking write it interrupts returns EINTR (no SA_RESTART), and
//! the operation undoes its changes and ends with 128 + the signal as its status.

use std::sync::atomic::{AtomicI32, Ordering};

static REQUESTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop(sig: libc::c_int) {
    REQUESTED.store(sig, Ordering::SeqCst);
}

/// Installs the handlers and returns the flag they set, for `Host::with_stop`.
pub fn install() -> &'static AtomicI32 {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction with a zeroed struct, an empty mask and a handler that only
        // stores to an atomic (async-signal-safe).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    &REQUESTED
}

/// The signal's name for messages.
pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}
