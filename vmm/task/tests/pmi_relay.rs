//! The PMI relay, end to end with the real binaries: this harness plays slurmstepd's side
//! (a socketpair, one end inherited by `hpmmap-task` as `PMI_FD`, as `srun --mpi=pmi2`
//! gives each task), the real `hpmmap-agent` on a Unix socket runs the task, and the task
//! speaks PMI-1 style lines on the `PMI_FD` the agent gave it. The harness answers with
//! fixed lines: Slurm's own pmi2 server (and a real MPI library on top) is exercised in the
//! Slurm lab (images/, tests/lab), not here; what is checked here is that the bytes cross
//! byte-exact both ways, in pieces past one frame, with end of file both ways.

use hpmmap_task::protocol::{self, Frame, VERSION};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const AGENT: &str = env!("CARGO_BIN_EXE_hpmmap-agent");
const CLIENT: &str = env!("CARGO_BIN_EXE_hpmmap-task");
/// Longest any one client run may take before the test calls it hung.
const HUNG: Duration = Duration::from_secs(60);
/// The descriptor number the client inherits its PMI socket as (slurmstepd picks its own).
const CLIENT_PMI_FD: i32 = 10;

fn scratch(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "hpmmap-pmi-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Agent {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Agent {
    fn start() -> Agent {
        let dir = scratch("agent");
        let sock = dir.join("agent.sock");
        let mut child = Command::new(AGENT)
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--no-hpmmap")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next().expect("agent said nothing").unwrap();
        assert!(first.contains("listening on unix:"), "{first}");
        // The agent's log is not asserted on here; drained so it never blocks on a full pipe.
        thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Agent { child, dir, sock }
    }

    /// The client with `PMI_FD` set (and --pass-env, which is what relays it), running
    /// `script` under sh in the agent.
    fn client(&self, pmi_fd: &str, script: &str) -> Command {
        let mut c = Command::new(CLIENT);
        c.arg("--unix")
            .arg(&self.sock)
            .env_clear()
            .env("PMI_FD", pmi_fd)
            .env("PMI_RANK", "0")
            .env("PMI_SIZE", "1")
            .args(["--pass-env", "--no-wrap", "--", "sh", "-c", script]);
        c
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Gives `c` `end` as descriptor [`CLIENT_PMI_FD`], as slurmstepd gives a task its PMI
/// socket. dup2 in the child alone: the harness's copy stays close-on-exec, so no other
/// test's child holds it open and end of file means what it says.
fn inherit_as_pmi_fd(c: &mut Command, end: &UnixStream) {
    let fd = end.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec and calls only dup2,
    // which is async-signal-safe, on a descriptor the child inherited.
    unsafe {
        c.pre_exec(move || {
            if libc::dup2(fd, CLIENT_PMI_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts a client; its output is collected by a thread, handed over by the receiver.
fn spawn(mut c: Command) -> (u32, mpsc::Receiver<Output>) {
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    (pid, rx)
}

fn finish(pid: u32, rx: mpsc::Receiver<Output>) -> Output {
    match rx.recv_timeout(HUNG) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: kill takes plain integers; the pid is our own child's.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("hpmmap-task hung");
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const INIT: &[u8] = b"cmd=init pmi_version=1 pmi_subversion=1\n";

/// The rank's side of a PMI-1 exchange: init, then two more requests, each answered before
/// the next is sent, every answer echoed on stdout. The task's PMI_FD is the agent's
/// socketpair end (a socket in the guest), not the number the host had.
const RANK: &str = r#"
test -S /dev/fd/$PMI_FD && echo "PMI_FD is a socket"
test "$PMI_RANK/$PMI_SIZE" = 0/1 && echo "rank 0 of 1"
printf 'cmd=init pmi_version=1 pmi_subversion=1\n' >&$PMI_FD
read -r a <&$PMI_FD; echo "$a"
printf 'cmd=get_maxes\n' >&$PMI_FD
read -r a <&$PMI_FD; echo "$a"
printf 'cmd=barrier_in\n' >&$PMI_FD
read -r a <&$PMI_FD; echo "$a"
"#;

#[test]
fn pmi_lines_cross_byte_exact_both_ways_for_several_round_trips() {
    let agent = Agent::start();
    let (harness, client_end) = UnixStream::pair().unwrap();
    let mut c = agent.client(&CLIENT_PMI_FD.to_string(), RANK);
    inherit_as_pmi_fd(&mut c, &client_end);
    let (pid, rx) = spawn(c);
    drop(client_end);
    harness
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut r = BufReader::new(harness.try_clone().unwrap());
    let mut w = &harness;
    let answers: [(&[u8], &[u8]); 3] = [
        (
            INIT,
            b"cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n",
        ),
        (
            b"cmd=get_maxes\n",
            b"cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024\n",
        ),
        (b"cmd=barrier_in\n", b"cmd=barrier_out\n"),
    ];
    for (want, answer) in answers {
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).unwrap();
        assert_eq!(text(&line), text(want));
        w.write_all(answer).unwrap();
    }
    let out = finish(pid, rx);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "PMI_FD is a socket\nrank 0 of 1\n\
         cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n\
         cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024\n\
         cmd=barrier_out\n"
    );
    // The task ended, so its end closed: the harness's end reads end of file.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

/// 1 MiB and a bit (sixteen and more frames, four windows) to the task, which echoes it
/// back through the same PMI_FD until end of file: the harness's end of file reaches the
/// task, and the task's end of file (it exits) reaches the harness after every byte.
#[test]
fn large_payloads_cross_past_one_frame_and_end_of_file_crosses_both_ways() {
    let agent = Agent::start();
    let (harness, client_end) = UnixStream::pair().unwrap();
    let mut c = agent.client(
        &CLIENT_PMI_FD.to_string(),
        "cat <&$PMI_FD >&$PMI_FD; echo done",
    );
    inherit_as_pmi_fd(&mut c, &client_end);
    let (pid, rx) = spawn(c);
    drop(client_end);
    let data: Vec<u8> = (0..(1 << 20) + 17u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut w = harness.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    harness
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut back = Vec::new();
    (&harness).read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    let out = finish(pid, rx);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "done\n");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the echoed bytes differ");
}

/// A task that never touches PMI_FD runs as any other; its end closes when it exits, which
/// the harness sees as end of file.
#[test]
fn a_task_that_never_touches_pmi_fd_runs_and_its_end_closes() {
    let agent = Agent::start();
    let (harness, client_end) = UnixStream::pair().unwrap();
    let mut c = agent.client(&CLIENT_PMI_FD.to_string(), "echo hi; exit 3");
    inherit_as_pmi_fd(&mut c, &client_end);
    let (pid, rx) = spawn(c);
    drop(client_end);
    let out = finish(pid, rx);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(text(&out.stdout), "hi\n");
    assert_eq!(text(&out.stderr), "");
    harness
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    (&harness).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

/// A PMI_FD that names no open socket or pipe is refused, one line and exit 2, rather than
/// passed on as a number that would name nothing (or something else) in the guest.
/// Without --pass-env no PMI variable crosses and nothing is relayed.
#[test]
fn a_pmi_fd_naming_no_socket_or_pipe_is_refused_with_one_line() {
    let agent = Agent::start();
    let file = std::fs::File::open("/dev/null").unwrap();
    let cases: Vec<(String, Option<i32>, &str)> = vec![
        // Nothing at 10 in the client (closed there: the test runner may hold a 10 of its
        // own that is not close-on-exec).
        ("10".into(), Some(-1), "descriptor 10 is not open"),
        ("abc".into(), None, "not a descriptor number"),
        ("1".into(), None, "a standard stream"),
        (
            CLIENT_PMI_FD.to_string(),
            Some(file.as_raw_fd()),
            "a character device, not a socket or pipe",
        ),
    ];
    for (value, fd, want) in cases {
        let mut c = agent.client(&value, "echo ran");
        if let Some(fd) = fd {
            // SAFETY: dup2 and close in the child only, async-signal-safe, on descriptors
            // the child inherited.
            unsafe {
                c.pre_exec(move || {
                    if fd < 0 {
                        libc::close(CLIENT_PMI_FD);
                    } else {
                        libc::dup2(fd, CLIENT_PMI_FD);
                    }
                    Ok(())
                });
            }
        }
        let (pid, rx) = spawn(c);
        let out = finish(pid, rx);
        assert_eq!(out.status.code(), Some(2), "PMI_FD={value}: {out:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("hpmmap-task: PMI_FD={value}: ")) && err.contains(want),
            "{err}"
        );
        assert_eq!(text(&out.stdout), "");
    }
    let mut c = Command::new(CLIENT);
    c.arg("--unix")
        .arg(&agent.sock)
        .env_clear()
        .env("PMI_FD", "10")
        .args(["--no-wrap", "--", "sh", "-c", "echo \"[$PMI_FD]\""]);
    let (pid, rx) = spawn(c);
    let out = finish(pid, rx);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "[]\n");
}

/// An agent of protocol version 1 (before the PMI frames) refuses this client's Hello with
/// an Error and closes; a peer answering Hello 1 is refused by the client. Either way one
/// line and 255, never a task run on a misread Spawn.
#[test]
fn an_agent_of_another_protocol_version_fails_clearly() {
    let dir = scratch("old-agent");
    let sock = dir.join("old.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let standin = thread::spawn(move || {
        // What version 1's agent sends a host of another version, then it closes.
        let (mut s, _) = l.accept().unwrap();
        let Ok(Some(Frame::Hello { version })) = protocol::read_frame(&mut s) else {
            panic!("no Hello");
        };
        let t = format!("the host speaks task protocol version {version}, this agent 1");
        protocol::write_frame(&mut s, &Frame::Error(t)).unwrap();
        drop(s);
        // An agent that answers Hello 1.
        let (mut s, _) = l.accept().unwrap();
        let _ = protocol::read_frame(&mut s);
        protocol::write_frame(&mut s, &Frame::Hello { version: 1 }).unwrap();
        // Whatever the client sent after its Hello is left unread: it must not wait for it.
        thread::sleep(Duration::from_millis(200));
    });
    let client = || {
        let mut c = Command::new(CLIENT);
        c.arg("--unix").arg(&sock).env_clear().args(["--", "true"]);
        c
    };
    let (pid, rx) = spawn(client());
    let out = finish(pid, rx);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        format!(
            "hpmmap-task: agent: the host speaks task protocol version {VERSION}, this agent 1\n"
        )
    );
    let (pid, rx) = spawn(client());
    let out = finish(pid, rx);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        format!("hpmmap-task: the agent speaks task protocol version 1, this client {VERSION}\n")
    );
    standin.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
