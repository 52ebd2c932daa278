//! One child program run to its end: its own process group, dying with the harness,
//! output collected, killed as a group on a timeout or a stop (the VMM, the lab, a native
//! workload process).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::model::Interrupted;
use crate::signals::stop_requested;

/// Runs `cmd` in its own process group (dying with the harness), collecting stdout and
/// stderr; the group is killed on timeout or signal.
pub fn run_child(
    mut cmd: Command,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: the closure runs in the child between fork and exec while the harness may
    // have other threads: it makes one async-signal-safe system call, allocating nothing.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd.spawn().with_context(|| format!("starting {prog}"))?;
    let pgid = child.id() as i32;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    // SAFETY: kill touches none of our memory; the target is the group `cmd` was made the
    // leader of above.
    let kill_group = || unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    };
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if stop_requested() {
            kill_group();
            let _ = child.wait();
            return Err(Interrupted.into());
        }
        if start.elapsed() > timeout {
            kill_group();
            let _ = child.wait();
            bail!("timed out after {:.0} s", timeout.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Children die with their parent (PDEATHSIG); make sure of it before going on.
    kill_group();
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    Ok((status, out, err))
}
