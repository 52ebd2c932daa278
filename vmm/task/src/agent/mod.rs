//! The guest side: `hpmmap-agent` accepts connections (one per task) and runs each task in a
//! thread of its own, so tasks start, run and end independently of each other.

pub mod listen;
mod task;
pub mod user;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub struct Config {
    /// The launcher a `wrap` task runs under (`hpmmap-run -- ARGV`); None when the VM has no
    /// hpmmap (its image was built with --no-hpmmap, or the module did not load): every
    /// task then runs directly, as the image's own job would.
    pub hpmmap_run: Option<PathBuf>,
    /// The image's environment (`--env-file`): what its own job sees (PATH with its MPI,
    /// LD_LIBRARY_PATH, --env K=V), under the host's allow-listed variables.
    pub base_env: Vec<(OsString, OsString)>,
    /// Who tasks run as; None keeps the agent's own ids.
    pub user: Option<user::User>,
    /// After the host goes away: how long a task has between SIGHUP and SIGKILL.
    pub grace: Duration,
}

/// Reads an environment file: one `NAME=VALUE` per line (the value taken as is, to the end
/// of the line), blank lines and lines starting with `#` skipped.
pub fn read_env_file(p: &std::path::Path) -> Result<Vec<(OsString, OsString)>, String> {
    use std::os::unix::ffi::OsStrExt;
    let text = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let eq = line.iter().position(|b| *b == b'=');
        let name_ok = |k: &[u8]| {
            !k.is_empty()
                && !k[0].is_ascii_digit()
                && k.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        };
        match eq {
            Some(i) if name_ok(&line[..i]) && !line.contains(&0) => out.push((
                std::ffi::OsStr::from_bytes(&line[..i]).to_owned(),
                std::ffi::OsStr::from_bytes(&line[i + 1..]).to_owned(),
            )),
            _ => {
                return Err(format!(
                    "{}:{}: not NAME=VALUE: {}",
                    p.display(),
                    n + 1,
                    String::from_utf8_lossy(line)
                ))
            }
        }
    }
    Ok(out)
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
