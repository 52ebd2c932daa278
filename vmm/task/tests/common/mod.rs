//! What the task channel's tests share: a real `hpmmap-agent` on a Unix socket of its own,
//! its log, and what it holds (threads, descriptors) as /proc shows them.
// Each test file compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use hpmmap_task::protocol::{self, Frame};
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const AGENT: &str = env!("CARGO_BIN_EXE_hpmmap-agent");
pub const CLIENT: &str = env!("CARGO_BIN_EXE_hpmmap-task");
/// Longest any one client run may take before the test calls it hung.
pub const HUNG: Duration = Duration::from_secs(60);

/// An empty directory of this test process's own.
pub fn scratch(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "hpmmap-task-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A running agent on a socket of its own; its log lines are kept for assertions.
pub struct Agent {
    pub child: Child,
    pub dir: PathBuf,
    pub sock: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    pub fn start(extra: &[&str]) -> Agent {
        Agent::start_by(Command::new(AGENT), extra)
    }

    /// `cmd` execs the agent with its arguments appended.
    pub fn start_by(mut cmd: Command, extra: &[&str]) -> Agent {
        let dir = scratch("agent");
        let sock = dir.join("agent.sock");
        let mut child = cmd
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next().expect("agent said nothing").unwrap();
        assert!(first.contains("listening on unix:"), "{first}");
        let log = Arc::new(Mutex::new(vec![first]));
        let l = Arc::clone(&log);
        thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Agent {
            child,
            dir,
            sock,
            log,
        }
    }

    /// The client, on this agent's socket, with an empty environment.
    pub fn client(&self) -> Command {
        let mut c = Command::new(CLIENT);
        c.arg("--unix").arg(&self.sock).env_clear();
        c
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Whether the agent logs `s` within a few seconds (its stderr is read by a thread).
    pub fn logs(&self, s: &str) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while !self.log().contains(s) {
            if Instant::now() > end {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// The agent's open descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// The agent's threads.
    pub fn threads(&self) -> u32 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Threads:")
                    .map(|n| n.trim().parse::<u32>().unwrap())
            })
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every frame the agent sends on `s` until it closes the channel (20 s at most per frame).
/// An agent that hangs up on a host whose bytes it left unread ends the stream with a reset
/// instead of end of file, after every frame it sent: both mean the agent is done.
pub fn frames_until_closed(s: &mut UnixStream) -> Vec<Frame> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = vec![];
    loop {
        match protocol::read_frame(s) {
            Ok(Some(f)) => got.push(f),
            Ok(None) => break,
            Err(protocol::FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                break
            }
            Err(e) => panic!("{e} after {got:?}"),
        }
    }
    got
}
