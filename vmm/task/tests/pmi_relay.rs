//! The PMI relay, end to end with the real binaries: this harness plays slurmstepd's side
//! (a socketpair, one end inherited by `hpmmap-task` as `PMI_FD`, as `srun --mpi=pmi2`
//! gives each task), the real `hpmmap-agent` on a Unix socket runs the task, and the task
//! speaks PMI-1 style lines on the `PMI_FD` the agent gave it. The harness answers with
//! fixed lines: Slurm's own pmi2 server (and a real MPI library on top) is exercised in the
//! Slurm lab (images/, tests/lab), not here; what is checked here is that the bytes cross
//! byte-exact both ways, in pieces past one frame, with end of file both ways.

mod common;

use common::*;
use hpmmap_task::protocol::{self, ExitStatus, Frame, Side, Spawn, MAX_DATA, VERSION};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The descriptor number the client inherits its PMI socket as (slurmstepd picks its own).
const CLIENT_PMI_FD: i32 = 10;

/// An agent for PMI tasks: no hpmmap module behind it, tasks run directly.
fn pmi_agent(extra: &[&str]) -> Agent {
    let mut args = vec!["--no-hpmmap"];
    args.extend_from_slice(extra);
    Agent::start(&args)
}

/// The client with `PMI_FD` set (and --pass-env, which is what relays it), running
/// `script` under sh in the agent.
fn pmi_client(a: &Agent, pmi_fd: &str, script: &str) -> Command {
    let mut c = a.client();
    c.env("PMI_FD", pmi_fd)
        .env("PMI_RANK", "0")
        .env("PMI_SIZE", "1")
        .args(["--pass-env", "--no-wrap", "--", "sh", "-c", script]);
    c
}

/// Gives `c` `end` as descriptor [`CLIENT_PMI_FD`], as slurmstepd gives a task its PMI
/// socket. dup2 in the child alone: the harness's copy stays close-on-exec, so no other
/// test's child holds it open and end of file means what it says.
fn inherit_as_pmi_fd(c: &mut Command, end: &UnixStream) {
    let fd = end.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe dup2/fcntl on a descriptor the child inherited.
    unsafe {
        c.pre_exec(move || as_client_pmi_fd(fd));
    }
}

/// In the child: makes `fd` the inheritable descriptor [`CLIENT_PMI_FD`]. When the
/// harness's copy already has that number (the tests run in parallel, so numbers vary),
/// dup2 does nothing, not even clear close-on-exec: the client then started without its
/// PMI_FD, 1 run in about 20.
fn as_client_pmi_fd(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl and dup2 take plain descriptors; async-signal-safe.
    let r = unsafe {
        if fd == CLIENT_PMI_FD {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, CLIENT_PMI_FD)
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
    let agent = pmi_agent(&[]);
    let (harness, client_end) = UnixStream::pair().unwrap();
    let mut c = pmi_client(&agent, &CLIENT_PMI_FD.to_string(), RANK);
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
    let agent = pmi_agent(&[]);
    let (harness, client_end) = UnixStream::pair().unwrap();
    let mut c = pmi_client(
        &agent,
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
    let agent = pmi_agent(&[]);
    let (harness, client_end) = UnixStream::pair().unwrap();
    let mut c = pmi_client(&agent, &CLIENT_PMI_FD.to_string(), "echo hi; exit 3");
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
    let agent = pmi_agent(&[]);
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
        let mut c = pmi_client(&agent, &value, "echo ran");
        if let Some(fd) = fd {
            // SAFETY: close, dup2 and fcntl in the child only, async-signal-safe, on
            // descriptors the child inherited.
            unsafe {
                c.pre_exec(move || {
                    if fd < 0 {
                        libc::close(CLIENT_PMI_FD);
                        Ok(())
                    } else {
                        as_client_pmi_fd(fd)
                    }
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

/// A raw host: Hello and a Spawn of `argv` (with or without a PMI relay), then `frames`
/// written by a thread (the agent stops reading once it gives up); the agent's frames.
fn raw_host(a: &Agent, argv: &[&str], pmi: bool, frames: Vec<Frame>) -> Vec<Frame> {
    let mut s = UnixStream::connect(&a.sock).unwrap();
    protocol::write_frame(&mut s, &Frame::Hello { version: VERSION }).unwrap();
    let spawn = Spawn {
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        cwd: b"/".to_vec(),
        env: vec![],
        task: 0,
        wrap: false,
        pmi,
    };
    protocol::write_frame(&mut s, &Frame::Spawn(spawn)).unwrap();
    let mut w = s.try_clone().unwrap();
    thread::spawn(move || {
        for f in frames {
            if protocol::write_frame(&mut w, &f).is_err() {
                return;
            }
        }
    });
    frames_until_closed(&mut s)
}

/// The PMI window is the agent's bound: a host that sends a task that does not read its
/// PMI_FD more than the window (past what the socketpair itself holds) is a broken host,
/// and the task is hung up, long before its `sleep 30` ends.
#[test]
fn pmi_bytes_past_the_window_hang_the_task_up() {
    let a = pmi_agent(&["--grace", "500"]);
    let t = Instant::now();
    let flood = vec![Frame::PmiData(Side::Host, vec![b'x'; MAX_DATA]); 64];
    let got = raw_host(&a, &["sleep", "30"], true, flood);
    assert!(matches!(got[1], Frame::Started { .. }), "{got:?}");
    assert_eq!(
        got.last(),
        Some(&Frame::Exit(ExitStatus::Signal(libc::SIGHUP as u8)))
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(
        a.logs("PMI bytes, past the window of 262144"),
        "{}",
        a.log()
    );
}

/// PMI frames for a task without a relay, or in the agent's direction, are protocol
/// failures: the task is hung up.
#[test]
fn pmi_frames_without_a_relay_or_the_wrong_way_hang_the_task_up() {
    let a = pmi_agent(&["--grace", "500"]);
    for (pmi, f, why) in [
        (
            false,
            Frame::PmiData(Side::Host, b"cmd=init\n".to_vec()),
            "a PmiData frame from the host, and no PMI relay",
        ),
        (
            false,
            Frame::PmiEof(Side::Host),
            "a PmiEof frame from the host, and no PMI relay",
        ),
        (
            true,
            Frame::PmiData(Side::Agent, b"cmd=init\n".to_vec()),
            "unexpected PmiData frame from the host",
        ),
        (
            true,
            Frame::PmiAck(Side::Agent, 1),
            "unexpected PmiAck frame from the host",
        ),
    ] {
        let got = raw_host(&a, &["sleep", "30"], pmi, vec![f.clone()]);
        assert_eq!(
            got.last(),
            Some(&Frame::Exit(ExitStatus::Signal(libc::SIGHUP as u8))),
            "{f:?}: {got:?}"
        );
        assert!(a.logs(why), "{}", a.log());
    }
}

/// Twenty PMI tasks in a row leave the agent as they found it: one thread (the relay's two
/// end with each task) and the same descriptors (both socketpair ends closed).
#[test]
fn pmi_tasks_leave_no_thread_or_descriptor_in_the_agent() {
    let a = pmi_agent(&[]);
    let fds = || a.fds();
    let threads = || a.threads();
    let before = fds();
    for i in 0..20 {
        let (harness, client_end) = UnixStream::pair().unwrap();
        let mut c = pmi_client(
            &a,
            &CLIENT_PMI_FD.to_string(),
            "printf 'cmd=finalize\\n' >&$PMI_FD",
        );
        inherit_as_pmi_fd(&mut c, &client_end);
        let (pid, rx) = spawn(c);
        drop(client_end);
        harness
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut got = Vec::new();
        (&harness).read_to_end(&mut got).unwrap();
        assert_eq!(text(&got), "cmd=finalize\n", "task {i}");
        let out = finish(pid, rx);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    }
    let end = Instant::now() + Duration::from_secs(10);
    while (threads() != 1 || fds() != before) && Instant::now() < end {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(threads(), 1);
    assert_eq!(fds(), before);
}

/// A task that writes 1 MiB to its PMI_FD and exits at once, to a host side that starts
/// reading only a second later: every byte arrives before the client ends (the agent sends
/// the task's PMI bytes before its Exit, the client writes them out before it exits), and
/// the window holds both sides back meanwhile.
#[test]
fn pmi_bytes_written_just_before_the_task_exits_all_arrive() {
    let agent = pmi_agent(&[]);
    let (harness, client_end) = UnixStream::pair().unwrap();
    let mut c = pmi_client(
        &agent,
        &CLIENT_PMI_FD.to_string(),
        "yes | head -c 1048576 >&$PMI_FD",
    );
    inherit_as_pmi_fd(&mut c, &client_end);
    let (pid, rx) = spawn(c);
    drop(client_end);
    thread::sleep(Duration::from_secs(1));
    harness
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    (&harness).read_to_end(&mut got).unwrap();
    let out = finish(pid, rx);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(got.len(), 1 << 20);
    assert!(got.chunks(2).all(|c| c == b"y\n"));
}

/// A real MPI wire-up through the relay: MPICH's Hydra (`mpiexec.hydra`) runs a PMI-1
/// server and hands each process its end as `PMI_FD`, the same wire protocol and the same
/// hand-over as `srun --mpi=pmi2` (Slurm's own server is the Slurm lab's part). Each process
/// here is `hpmmap-task`, whose rank runs in the agent: three ranks find each other through
/// the relay and sum 1 + 2 + 3 with MPI_Allreduce. Without --pass-env (no relay) the same
/// ranks come up as three singletons, which shows it is the relay that wires them.
#[test]
fn mpich_ranks_wire_up_through_the_relay() {
    const TEST: &str = "pmi_relay::mpich_ranks_wire_up_through_the_relay";
    let have = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("mpicc") || !have("mpiexec.hydra") {
        hpmmap_testkit::skip(
            hpmmap_testkit::Tier::Tools,
            TEST,
            "MPICH (mpicc, mpiexec.hydra: Debian's mpich) is not installed",
        );
        return;
    }
    let dir = scratch("mpich");
    let src = dir.join("allreduce.c");
    std::fs::write(
        &src,
        "#include <mpi.h>\n#include <stdio.h>\n\
         int main(int argc, char **argv) {\n\
         int rank, size; long mine, sum = 0;\n\
         MPI_Init(&argc, &argv);\n\
         MPI_Comm_rank(MPI_COMM_WORLD, &rank);\n\
         MPI_Comm_size(MPI_COMM_WORLD, &size);\n\
         mine = rank + 1;\n\
         MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);\n\
         printf(\"rank=%d size=%d sum=%ld\\n\", rank, size, sum);\n\
         MPI_Finalize();\n\
         return 0;\n}\n",
    )
    .unwrap();
    let bin = dir.join("allreduce");
    let cc = Command::new("mpicc")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(cc.status.success(), "{cc:?}");
    let agent = pmi_agent(&[]);
    let ranks = |relay: bool| {
        let mut c = Command::new("mpiexec.hydra");
        c.args(["-n", "3", CLIENT, "--unix"]).arg(&agent.sock);
        if relay {
            c.arg("--pass-env");
        }
        c.args(["--no-wrap", "--"]).arg(&bin);
        let (pid, rx) = spawn(c);
        let out = finish(pid, rx);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let mut lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
        lines.sort();
        lines
    };
    assert_eq!(
        ranks(true),
        [
            "rank=0 size=3 sum=6",
            "rank=1 size=3 sum=6",
            "rank=2 size=3 sum=6"
        ]
    );
    assert_eq!(ranks(false), ["rank=0 size=1 sum=1"; 3]);
    hpmmap_testkit::ran(hpmmap_testkit::Tier::Tools, TEST);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The client's side of the same bounds, against a stand-in agent: PMI bytes for a client
/// without a relay, or past the window to one whose PMI socket nobody reads, are channel
/// failures (255, one line), never buffered without bound.
#[test]
fn the_client_refuses_pmi_frames_without_a_relay_or_past_the_window() {
    let dir = scratch("pmi-standin");
    let sock = dir.join("agent.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let standin = thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = l.accept().unwrap();
            let _ = protocol::read_frame(&mut s);
            let _ = protocol::read_frame(&mut s);
            protocol::write_frame(&mut s, &Frame::Hello { version: VERSION }).unwrap();
            protocol::write_frame(&mut s, &Frame::Started { pid: 1 }).unwrap();
            for _ in 0..64 {
                let f = Frame::PmiData(Side::Agent, vec![b'y'; MAX_DATA]);
                if protocol::write_frame(&mut s, &f).is_err() {
                    break;
                }
            }
        }
    });
    let client = |relay: bool| {
        let mut c = Command::new(CLIENT);
        c.arg("--unix").arg(&sock).env_clear();
        if relay {
            c.env("PMI_FD", CLIENT_PMI_FD.to_string()).arg("--pass-env");
        }
        c.args(["--no-wrap", "--", "true"]);
        c
    };
    let out = finish_pair(spawn(client(false)));
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert_eq!(
        text(&out.stderr),
        "hpmmap-task: a PmiData frame from the agent, and no PMI relay\n"
    );
    // The harness holds its end open and never reads it.
    let (_harness, client_end) = UnixStream::pair().unwrap();
    let mut c = client(true);
    inherit_as_pmi_fd(&mut c, &client_end);
    let out = finish_pair(spawn(c));
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("PMI bytes, past the window of 262144"),
        "{err}"
    );
    standin.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn finish_pair((pid, rx): (u32, mpsc::Receiver<Output>)) -> Output {
    finish(pid, rx)
}
