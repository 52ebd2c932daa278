//! The guest side: `hpmmap-agent` accepts connections (one per task) and runs each task in a
//! thread of its own, so tasks start, run and end independently of each other.

pub mod listen;
mod task;
pub mod user;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub struct Config {
    /// The launcher a `wrap` task runs under (`hpmmap-run -- ARGV`).
    pub hpmmap_run: PathBuf,
    /// Who tasks run as; None keeps the agent's own ids.
    pub user: Option<user::User>,
    /// After the host goes away: how long a task has between SIGHUP and SIGKILL.
    pub grace: Duration,
}

/// Accepts forever. A failed accept (descriptors exhausted, an aborted connection) is logged
/// and retried after a pause; a listener that only fails is given up after a while.
pub fn serve(listener: listen::Listener, cfg: Config) -> std::io::Error {
    let cfg = Arc::new(cfg);
    let mut failures = 0u32;
    loop {
        match listener.accept() {
            Ok(conn) => {
                failures = 0;
                let cfg = Arc::clone(&cfg);
                let spawned = std::thread::Builder::new()
                    .name("task".into())
                    .spawn(move || task::serve(conn, &cfg));
                if let Err(e) = spawned {
                    eprintln!("hpmmap-agent: cannot start a task thread: {e}");
                }
            }
            Err(e) => {
                failures += 1;
                eprintln!("hpmmap-agent: accept: {e}");
                if failures >= 100 {
                    return e;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
