//! The signals the client passes to the task: what srun's Ctrl-C and scancel make
//! slurmstepd send to a task (SIGINT, SIGTERM, later SIGKILL, which nobody can catch and
//! which ends the client: the agent then hangs the task up), plus the ones users send to
//! ask a program something (SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2).

use crate::protocol::{self, Frame};
use crate::sys::SigSet;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

pub const FORWARDED: &[libc::c_int] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Where signals go: nowhere yet (before the task started, a signal ends the client as it
/// would have ended the task), then the channel.
pub type Sink = Arc<Mutex<Option<Arc<Mutex<UnixStream>>>>>;

/// Blocks [`FORWARDED`] in the calling thread (call it first thing in main, before any
/// thread exists, so no thread takes them the default way) and starts the thread that
/// takes them one at a time.
pub fn start() -> std::io::Result<Sink> {
    let set = SigSet::of(FORWARDED);
    set.block()?;
    let sink: Sink = Arc::new(Mutex::new(None));
    let s = Arc::clone(&sink);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || forward(set, &s))?;
    Ok(sink)
}

fn forward(set: SigSet, sink: &Sink) {
    while let Ok(sig) = set.wait() {
        let w = sink.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let sent = w.is_some_and(|w| {
            let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
            protocol::write_frame(&mut *w, &Frame::Signal(sig as u8)).is_ok()
        });
        if !sent {
            // No task to give it to: end the way the task would have, like a shell.
            std::process::exit(128 + sig);
        }
    }
}
