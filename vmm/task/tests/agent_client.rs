//! The real `hpmmap-agent` (listening on a Unix socket) driven by the real `hpmmap-task`:
//! real processes, real signals, real pipes. Only the transport differs from the job's VM:
//! there the agent listens on AF_VSOCK port 52 and the client reaches it through
//! hpmmap-vmm's `--vsock` socket; that transport is tested with the VMM's vsock device, by
//! its tests, not here. The CONNECT/OK handshake in front of it is checked here against a
//! stand-in that relays to the agent's Unix socket.

mod common;

use common::*;
use hpmmap_task::protocol::{self, ExitStatus, Frame, Spawn, VERSION};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Runs a client to its end, feeding it `input`; panics if it hangs.
fn run(mut cmd: Command, input: Vec<u8>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    match rx.recv_timeout(HUNG) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: kill takes plain integers; the pid is our own child's.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("hpmmap-task {cmd:?} hung");
        }
    }
}

/// A live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn gone_within(pids: &[u32], d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if pids.iter().all(|&p| !alive(p)) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A child of `parent` running `comm`.
fn child_named(parent: u32, comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent && head.ends_with(&format!("({comm}"))).then_some(pid)
    })
}

fn read_line(r: &mut impl BufRead) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l.trim_end().to_string()
}

fn wait_timeout(c: &mut Child, d: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn argv_cwd_and_allow_listed_env_are_carried_and_other_variables_dropped() {
    let a = Agent::start(&[]);
    let cwd = scratch("cwd");
    let mut c = a.client();
    c.args([
        "--no-wrap",
        "--pass-env",
        "--env",
        "SLURM_PROCID=7",
        "--cwd",
    ])
    .arg(&cwd)
    .env("SLURM_JOB_ID", "42")
    .env("SLURM_PROCID", "0")
    .env("PMIX_RANK", "7")
    .env("OMPI_MCA_btl", "self,tcp")
    .env("SECRET_TOKEN", "do-not-pass")
    .env("LD_PRELOAD", "/host/lib.so")
    .env("PATH", "/host-only-bin:/usr/bin:/bin")
    .args(["--", "sh", "-c"])
    .arg(r#"printf '<%s>' "$0" "$@"; echo; pwd; env | sort"#)
    .args(["zero", "a b", "", "-x", "ü"]);
    let out = run(c, vec![]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("<zero><a b><><-x><ü>"));
    assert_eq!(lines.next(), Some(cwd.to_str().unwrap()));
    let env: Vec<&str> = lines.collect();
    for want in [
        "SLURM_JOB_ID=42",
        "SLURM_PROCID=7",
        "PMIX_RANK=7",
        "OMPI_MCA_btl=self,tcp",
        "LANG=C.UTF-8",
        "PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
    ] {
        assert!(env.contains(&want), "{want} missing from {env:?}");
    }
    assert!(env.iter().any(|l| l.starts_with("HOME=/")), "{env:?}");
    assert!(
        !stdout.contains("do-not-pass") && !stdout.contains("/host"),
        "{stdout}"
    );
    // Only the allow-list, the fixed three, and what sh adds itself (PWD).
    for l in &env {
        let name = l.split('=').next().unwrap();
        assert!(
            ["SLURM_", "PMI", "OMPI_"]
                .iter()
                .any(|p| name.starts_with(p))
                || ["PATH", "HOME", "LANG", "PWD"].contains(&name),
            "{l} should not be in the task's environment"
        );
    }
    let _ = std::fs::remove_dir_all(&cwd);
}

#[test]
fn stdout_and_stderr_stay_separate() {
    let a = Agent::start(&[]);
    let mut c = a.client();
    c.args(["--no-wrap", "--cwd", "/", "--", "sh", "-c"])
        .arg("echo out1; echo err1 >&2; echo out2; echo err2 >&2");
    let out = run(c, vec![]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "out1\nout2\n");
    assert_eq!(text(&out.stderr), "err1\nerr2\n");
}

/// 1 MiB through the task and back: four stdin windows, flow control included.
#[test]
fn one_mib_of_stdin_comes_back_byte_exact() {
    let a = Agent::start(&[]);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let input: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut c = a.client();
    c.args(["--no-wrap", "--cwd", "/", "--", "cat"]);
    let out = run(c, input.clone());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "bytes differ");
    // A task that never reads stdin is not held up by the host's input.
    let mut c = a.client();
    c.args(["--no-wrap", "--cwd", "/", "--", "sh", "-c", "exit 0"]);
    let out = run(c, input);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn exit_codes_are_the_tasks_and_failed_starts_answer_like_a_shell() {
    let a = Agent::start(&[]);
    let code = |args: &[&str]| {
        let mut c = a.client();
        c.args(["--no-wrap", "--cwd", "/"]).args(args);
        let out = run(c, vec![]);
        (out.status.code().unwrap(), text(&out.stderr))
    };
    assert_eq!(code(&["--", "true"]).0, 0);
    assert_eq!(code(&["--", "sh", "-c", "exit 3"]).0, 3);
    let (c, err) = code(&["--", "no-such-program-hpmmap"]);
    assert_eq!(c, 127, "{err}");
    assert!(
        err.contains("no-such-program-hpmmap") && err.lines().count() == 1,
        "{err}"
    );
    let mut cmd = a.client();
    cmd.args(["--no-wrap", "--cwd", "/no/such/dir", "--", "true"]);
    let out = run(cmd, vec![]);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(text(&out.stderr).contains("/no/such/dir"), "{out:?}");
}

/// What srun's Ctrl-C and scancel do: SIGINT, SIGTERM to the client reach the task's whole
/// group in the guest, and the client ends with the task's status (128 + N).
#[test]
fn sigterm_and_sigint_reach_the_tasks_group_and_give_128_plus_n() {
    let a = Agent::start(&[]);
    for (sig, want) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let mut c = a.client();
        c.args(["--no-wrap", "--cwd", "/", "--", "sh", "-c"])
            .arg("sleep 30 & echo $!; exec sleep 31")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let bg: u32 = read_line(&mut out).parse().unwrap();
        assert!(alive(bg));
        let t = Instant::now();
        // SAFETY: kill takes plain integers; the pid is our own child's.
        unsafe { libc::kill(child.id() as i32, sig) };
        let st = wait_timeout(&mut child, Duration::from_secs(20)).expect("client did not end");
        assert_eq!(st.code(), Some(want), "signal {sig}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(
            gone_within(&[bg], Duration::from_secs(5)),
            "the task's background child {bg} survived"
        );
    }
}

/// The signal goes to the group, not only to the task's first process: a shell that traps
/// SIGTERM sees its foreground child die of it at once and reports that.
#[test]
fn a_signal_reaches_every_process_of_the_task_not_only_the_first() {
    let a = Agent::start(&[]);
    let mut c = a.client();
    c.args(["--no-wrap", "--cwd", "/", "--", "sh", "-c"])
        .arg("trap 'echo sh got TERM' TERM; echo $$; sleep 30; echo \"sleep: $?\"")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let sh: u32 = read_line(&mut out).parse().unwrap();
    // A signal before sh has started sleep would only hit sh.
    let end = Instant::now() + Duration::from_secs(10);
    while child_named(sh, "sleep").is_none() {
        assert!(Instant::now() < end, "sh {sh} never started sleep");
        thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill takes plain integers; the pid is our own child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = wait_timeout(&mut child, Duration::from_secs(20)).expect("client did not end");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "sh got TERM\nsleep: 143\n");
    assert_eq!(st.code(), Some(0));
}

/// What a task leaves running in its group when its first process exits ends with it, as
/// slurmstepd ends a step's processes.
#[test]
fn processes_a_task_leaves_in_its_group_end_with_it() {
    let a = Agent::start(&[]);
    let mut c = a.client();
    c.args(["--no-wrap", "--cwd", "/", "--", "sh", "-c"])
        .arg("sleep 30 >/dev/null 2>&1 & echo $!");
    let out = run(c, vec![]);
    assert!(out.status.success(), "{out:?}");
    let bg: u32 = text(&out.stdout).trim().parse().unwrap();
    assert!(
        gone_within(&[bg], Duration::from_secs(5)),
        "{bg} left running"
    );
}

/// An agent started with signals ignored (nohup, a shell's `&`) still gives its tasks the
/// default actions: otherwise srun's Ctrl-C would not end them.
#[test]
fn tasks_start_with_default_signal_actions_whatever_the_agent_inherited() {
    let mut sh = Command::new("sh");
    sh.args([
        "-c",
        "trap '' HUP INT QUIT TERM USR1 USR2; exec \"$0\" \"$@\"",
        AGENT,
    ]);
    let a = Agent::start_by(sh, &[]);
    let mut c = a.client();
    c.args(["--no-wrap", "--cwd", "/", "--", "sh", "-c"])
        .arg("grep -E '^Sig(Ign|Blk)' /proc/self/status");
    let out = run(c, vec![]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
}

/// The client killed outright (what slurmstepd's final SIGKILL does): the agent hangs the
/// task up, and a task that ignores SIGHUP is killed after the grace period.
#[test]
fn a_client_killed_mid_task_leaves_no_task_process_behind() {
    let a = Agent::start(&["--grace", "2000"]);
    let start = |script: &str| {
        let mut c = a.client();
        c.args(["--no-wrap", "--cwd", "/", "--", "sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let pids: Vec<u32> = read_line(&mut out)
            .split(' ')
            .map(|p| p.parse().unwrap())
            .collect();
        (child, pids)
    };
    let (mut client, pids) = start("sleep 30 & echo $$ $!; wait");
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");
    client.kill().unwrap();
    client.wait().unwrap();
    assert!(
        gone_within(&pids, Duration::from_secs(5)),
        "task processes {pids:?} outlived their client"
    );

    let (mut client, pids) = start("trap '' HUP; sleep 30 & echo $$ $!; wait");
    client.kill().unwrap();
    client.wait().unwrap();
    let t = Instant::now();
    thread::sleep(Duration::from_millis(500));
    assert!(
        pids.iter().all(|&p| alive(p)),
        "SIGHUP is ignored, SIGKILL waits for the grace period"
    );
    assert!(
        gone_within(&pids, Duration::from_secs(8)),
        "task processes {pids:?} survived SIGKILL"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(a.logs("SIGHUP to its group"), "{}", a.log());
}

#[test]
fn two_tasks_at_once_one_dies_and_the_other_finishes() {
    let a = Agent::start(&[]);
    let mut c = a.client();
    c.args(["--no-wrap", "--cwd", "/", "--", "sh", "-c"])
        .arg("sleep 2; echo b done")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut b = c.spawn().unwrap();
    let mut c = a.client();
    c.args([
        "--no-wrap",
        "--cwd",
        "/",
        "--",
        "sh",
        "-c",
        "echo a; kill -KILL $$",
    ]);
    let out = run(c, vec![]);
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    assert_eq!(text(&out.stdout), "a\n");
    assert!(
        b.try_wait().unwrap().is_none(),
        "the other task ended with it"
    );
    let st = wait_timeout(&mut b, Duration::from_secs(20)).expect("task b did not end");
    let mut s = String::new();
    b.stdout.take().unwrap().read_to_string(&mut s).unwrap();
    assert!(st.success(), "{st:?}");
    assert_eq!(s, "b done\n");
}

#[test]
fn sixteen_tasks_at_once_each_get_their_own_output_and_status() {
    let a = Agent::start(&[]);
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let mut c = a.client();
            c.args(["--no-wrap", "--cwd", "/", "--task"])
                .arg(i.to_string())
                .args(["--env"])
                .arg(format!("SLURM_PROCID={i}"))
                .args(["--", "sh", "-c"])
                .arg("sleep 0.5; echo rank $SLURM_PROCID; echo e$SLURM_PROCID >&2; exit $((SLURM_PROCID % 8))");
            thread::spawn(move || run(c, vec![]))
        })
        .collect();
    for (i, t) in clients.into_iter().enumerate() {
        let out = t.join().unwrap();
        assert_eq!(out.status.code(), Some(i as i32 % 8), "{out:?}");
        assert_eq!(text(&out.stdout), format!("rank {i}\n"));
        assert_eq!(text(&out.stderr), format!("e{i}\n"));
    }
}

/// `hpmmap-task -- yes | head -1`: the reader of the client's output goes away, and the
/// task gets SIGPIPE as it would writing to that pipe itself, instead of running on unread.
#[test]
fn a_closed_output_gives_the_task_sigpipe() {
    let a = Agent::start(&[]);
    let mut c = a.client();
    c.args(["--no-wrap", "--cwd", "/", "--", "yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    assert_eq!(read_line(&mut out), "y");
    drop(out);
    let st = wait_timeout(&mut child, Duration::from_secs(20)).expect("client did not end");
    assert_eq!(st.code(), Some(128 + libc::SIGPIPE));
}

/// The guest side gone mid-task (the agent killed, the VM down): no status exists, and the
/// client says so in one line with 255, never a made-up task status.
#[test]
fn an_agent_gone_mid_task_is_a_channel_failure_255() {
    let mut a = Agent::start(&[]);
    let mut c = a.client();
    c.args([
        "--no-wrap",
        "--cwd",
        "/",
        "--",
        "sh",
        "-c",
        "echo up; exec sleep 30",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    assert_eq!(read_line(&mut out), "up");
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let st = wait_timeout(&mut child, Duration::from_secs(20)).expect("client did not end");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(st.code(), Some(255), "{err}");
    // Closed or reset, depending on what the agent had left unread.
    assert!(
        err.starts_with("hpmmap-task: the channel")
            && err.contains("before the task's exit status")
            && err.lines().count() == 1,
        "{err}"
    );
}

/// Tasks leave nothing in the agent: after fifty, one thread (the accept loop), the same
/// descriptors as before, no child.
#[test]
fn fifty_tasks_leave_no_thread_descriptor_or_child_in_the_agent() {
    let a = Agent::start(&[]);
    let pid = a.child.id();
    let fds = || a.fds();
    let threads = || a.threads();
    let before = fds();
    for _ in 0..50 {
        let mut c = a.client();
        c.args(["--no-wrap", "--cwd", "/", "--", "cat"]);
        let out = run(c, b"hi\n".to_vec());
        assert_eq!(text(&out.stdout), "hi\n", "{out:?}");
    }
    let end = Instant::now() + Duration::from_secs(10);
    while (threads() != 1 || fds() != before) && Instant::now() < end {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(threads(), 1);
    assert_eq!(fds(), before);
    assert!(child_named(pid, "cat").is_none() && child_named(pid, "sh").is_none());
}

/// The launcher here is a stand-in script: the real hpmmap-run needs the guest's hpmmap
/// module (its own tests run it in a guest). What is checked is the agent's part: the
/// program runs as `LAUNCHER -- ARGV` unless --no-wrap.
#[test]
fn wrap_runs_the_task_under_the_launcher() {
    let dir = scratch("wrap");
    let launcher = dir.join("hpmmap-run");
    std::fs::write(
        &launcher,
        "#!/bin/sh\necho \"launcher: $*\" >&2\n[ \"$1\" = -- ] && shift\nexec \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &launcher,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let a = Agent::start(&["--hpmmap-run", launcher.to_str().unwrap()]);
    let mut c = a.client();
    c.args(["--cwd", "/", "--", "sh", "-c", "echo in task; exit 4"]);
    let out = run(c, vec![]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(text(&out.stdout), "in task\n");
    assert_eq!(
        text(&out.stderr),
        "launcher: -- sh -c echo in task; exit 4\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A VM without hpmmap (`--no-hpmmap`): a task that asks for it runs directly, and the
/// launcher is never started.
#[test]
fn without_hpmmap_wrapped_tasks_run_directly() {
    let dir = scratch("nowrap");
    let a = Agent::start(&["--no-hpmmap"]);
    let mut c = a.client();
    c.args(["--cwd", "/", "--", "sh", "-c", "echo direct; exit 5"]);
    let out = run(c, vec![]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(text(&out.stdout), "direct\n");
    assert_eq!(text(&out.stderr), "");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The image's environment (`--env-file`) is every task's base: its PATH finds the image's
/// programs, its own variables are there, and the host's allow-listed names still arrive;
/// a malformed file stops the agent with one line and exit 2.
#[test]
fn the_image_environment_is_the_base_of_every_task() {
    let dir = scratch("envfile");
    let bin = dir.join("imgbin");
    std::fs::create_dir_all(&bin).unwrap();
    let tool = bin.join("image-tool");
    std::fs::write(&tool, "#!/bin/sh\necho tool ran\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let env = dir.join("env");
    std::fs::write(
        &env,
        format!(
            "# the image's --env\nPATH={}:/usr/bin:/bin\nOMP_NUM_THREADS=1\nSPACED=a b  c\n\n",
            bin.display()
        ),
    )
    .unwrap();
    let a = Agent::start(&["--no-hpmmap", "--env-file", env.to_str().unwrap()]);
    let mut c = a.client();
    c.env("SLURM_PROCID", "7").args([
        "--pass-env",
        "--cwd",
        "/",
        "--",
        "sh",
        "-c",
        "image-tool; echo \"$OMP_NUM_THREADS|$SPACED|$SLURM_PROCID|$LANG\"",
    ]);
    let out = run(c, vec![]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(text(&out.stdout), "tool ran\n1|a b  c|7|C.UTF-8\n");
    let bad = dir.join("bad-env");
    std::fs::write(&bad, "PATH=/bin\nnot a variable\n").unwrap();
    let out = Command::new(AGENT)
        .args([
            "--listen",
            &format!("unix:{}", dir.join("x.sock").display()),
        ])
        .args(["--env-file", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad-env:2: not NAME=VALUE"), "{err}");
    assert!(!dir.join("x.sock").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn raw(a: &Agent) -> UnixStream {
    UnixStream::connect(&a.sock).unwrap()
}

/// The agent checks the allow-list itself, and refuses a protocol version it does not speak.
#[test]
fn the_agent_refuses_off_list_variables_and_other_versions() {
    let a = Agent::start(&[]);
    let mut s = raw(&a);
    protocol::write_frame(&mut s, &Frame::Hello { version: VERSION }).unwrap();
    let spawn = Spawn {
        argv: vec![b"true".to_vec()],
        cwd: b"/".to_vec(),
        env: vec![
            (b"SLURM_PROCID".to_vec(), b"0".to_vec()),
            (b"LD_PRELOAD".to_vec(), b"/x.so".to_vec()),
        ],
        task: 0,
        wrap: false,
        pmi: false,
    };
    protocol::write_frame(&mut s, &Frame::Spawn(spawn)).unwrap();
    let got = frames_until_closed(&mut s);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], Frame::Hello { version: VERSION });
    assert!(
        matches!(&got[1], Frame::Error(t) if t.contains("LD_PRELOAD") && t.contains("allow-list")),
        "{got:?}"
    );
    assert_eq!(got[2], Frame::Exit(ExitStatus::Code(126)));

    // A protocol failure after Hello: a Signal where Spawn belongs.
    let mut s = raw(&a);
    protocol::write_frame(&mut s, &Frame::Hello { version: VERSION }).unwrap();
    protocol::write_frame(&mut s, &Frame::Signal(15)).unwrap();
    let got = frames_until_closed(&mut s);
    assert!(
        matches!(&got[..], [Frame::Hello { .. }, Frame::Error(t)] if t.contains("expected Spawn, got Signal")),
        "{got:?}"
    );

    let mut s = raw(&a);
    protocol::write_frame(&mut s, &Frame::Hello { version: 99 }).unwrap();
    let got = frames_until_closed(&mut s);
    assert!(
        matches!(&got[..], [Frame::Error(t)] if t.contains("version 99")),
        "{got:?}"
    );
    // The agent still serves the next task.
    let mut c = a.client();
    c.args(["--no-wrap", "--cwd", "/", "--", "true"]);
    assert!(run(c, vec![]).status.success());
}

/// The stdin window is the agent's bound, not only the client's courtesy: a host that sends
/// past it to a task that does not read is a broken host, and the task is hung up.
#[test]
fn stdin_past_the_window_hangs_the_task_up() {
    let a = Agent::start(&["--grace", "500"]);
    let mut s = raw(&a);
    protocol::write_frame(&mut s, &Frame::Hello { version: VERSION }).unwrap();
    let spawn = Spawn {
        argv: vec![b"sleep".to_vec(), b"30".to_vec()],
        cwd: b"/".to_vec(),
        env: vec![],
        task: 0,
        wrap: false,
        pmi: false,
    };
    protocol::write_frame(&mut s, &Frame::Spawn(spawn)).unwrap();
    // Six 64 KiB frames: the 64 KiB pipe takes one, the window (256 KiB) four more.
    let chunk = vec![b'x'; protocol::MAX_DATA];
    for _ in 0..6 {
        protocol::write_frame(&mut s, &Frame::Stdin(chunk.clone())).unwrap();
    }
    let got = frames_until_closed(&mut s);
    assert!(matches!(got[1], Frame::Started { .. }), "{got:?}");
    assert_eq!(
        got.last(),
        Some(&Frame::Exit(ExitStatus::Signal(libc::SIGHUP as u8)))
    );
    assert!(a.logs("past the window"), "{}", a.log());
}

/// How the client shows an agent's protocol failure (Error, then the channel closes): one
/// line, 255. The real agent only does that for a broken host, so a stand-in plays it.
#[test]
fn an_agent_error_without_exit_is_one_line_and_255() {
    let dir = scratch("bad-agent");
    let sock = dir.join("bad.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let standin = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        assert!(matches!(
            protocol::read_frame(&mut s),
            Ok(Some(Frame::Hello { .. }))
        ));
        assert!(matches!(
            protocol::read_frame(&mut s),
            Ok(Some(Frame::Spawn(_)))
        ));
        protocol::write_frame(&mut s, &Frame::Hello { version: VERSION }).unwrap();
        protocol::write_frame(&mut s, &Frame::Error("boom".into())).unwrap();
    });
    let mut c = Command::new(CLIENT);
    c.arg("--unix").arg(&sock).args(["--", "true"]);
    let out = run(c, vec![]);
    standin.join().unwrap();
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert_eq!(text(&out.stderr), "hpmmap-task: agent: boom\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stand-in for hpmmap-vmm's hybrid vsock socket: answers CONNECT with `answer`, then (on
/// OK) relays bytes to the agent's Unix socket. Returns the socket and the line it received.
fn vsock_standin(
    dir: &Path,
    agent: &Path,
    answer: &'static str,
) -> (PathBuf, mpsc::Receiver<String>) {
    let path = dir.join("vmm.vsock");
    let l = UnixListener::bind(&path).unwrap();
    let agent = agent.to_path_buf();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut host, _) = l.accept().unwrap();
        let mut line = Vec::new();
        let mut b = [0u8];
        while host.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        tx.send(text(&line)).unwrap();
        host.write_all(answer.as_bytes()).unwrap();
        if !answer.starts_with("OK ") {
            return;
        }
        let guest = UnixStream::connect(&agent).unwrap();
        let (mut h2, mut g2) = (host.try_clone().unwrap(), guest.try_clone().unwrap());
        let up = thread::spawn(move || {
            let _ = std::io::copy(&mut h2, &mut g2);
            let _ = g2.shutdown(std::net::Shutdown::Write);
        });
        let (mut g, mut h) = (guest, host);
        let _ = std::io::copy(&mut g, &mut h);
        let _ = h.shutdown(std::net::Shutdown::Write);
        let _ = up.join();
    });
    (path, rx)
}

#[test]
fn vsock_mode_speaks_connect_ok_first() {
    let a = Agent::start(&[]);
    let dir = scratch("vsock");
    let (vmm, seen) = vsock_standin(&dir, &a.sock, "OK 1073741824\n");
    let mut c = Command::new(CLIENT);
    c.arg("--vsock")
        .arg(&vmm)
        .args([
            "--port",
            "1234",
            "--no-wrap",
            "--cwd",
            "/",
            "--",
            "sh",
            "-c",
        ])
        .arg("cat; echo via vsock; exit 5");
    let out = run(c, b"in\n".to_vec());
    assert_eq!(seen.recv().unwrap(), "CONNECT 1234");
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(text(&out.stdout), "in\nvia vsock\n");

    let dir2 = scratch("vsock-refused");
    let (vmm, _seen) = vsock_standin(&dir2, &a.sock, "");
    let mut c = Command::new(CLIENT);
    c.arg("--vsock").arg(&vmm).args(["--", "true"]);
    let out = run(c, vec![]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("CONNECT 52") && err.lines().count() == 1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

#[test]
fn bad_usage_is_2_and_an_unreachable_agent_255_each_with_one_line() {
    let dir = scratch("usage");
    let sock = dir.join("none.sock");
    let usage: &[&[&str]] = &[
        &["--unix", "/x", "--env", "LD_PRELOAD=x", "--", "true"],
        &["--unix", "/x", "--env", "SLURM_X", "--", "true"],
        &["--unix", "/x", "--cwd", "relative", "--", "true"],
    ];
    for args in usage {
        let out = run(
            {
                let mut c = Command::new(CLIENT);
                c.args(*args);
                c
            },
            vec![],
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    // Past the 1 MiB a Spawn may carry (each argument under Linux's 128 KiB per string).
    let mut c = Command::new(CLIENT);
    c.args(["--unix", "/x", "--", "echo"])
        .args((0..10).map(|_| "x".repeat(120 << 10)));
    let out = run(c, vec![]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("exceeds its limit") && err.lines().count() == 1,
        "{err}"
    );
    let clap_usage: &[&[&str]] = &[&["--unix", "/x", "true"], &["--", "true"], &["--bogus"]];
    for args in clap_usage {
        let mut c = Command::new(CLIENT);
        c.args(*args);
        let out = run(c, vec![]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("hpmmap-task: ") && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    let out = Command::new(AGENT)
        .arg("--listen")
        .arg("tcp:1")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("tcp:1") && err.lines().count() == 1, "{err}");
    let mut c = Command::new(CLIENT);
    c.arg("--unix").arg(&sock).args(["--", "true"]);
    let out = run(c, vec![]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("cannot connect") && err.lines().count() == 1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tasks run as the job user: the agent must be root to switch (it is, in the guest).
#[test]
fn tasks_run_as_the_job_user() {
    use hpmmap_testkit::Tier;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let test = "tasks_run_as_the_job_user";
    if !hpmmap_testkit::enter(
        Tier::Root,
        test,
        if root { Ok(()) } else { Err("not root".into()) },
    ) {
        return;
    }
    let nobody = hpmmap_task::agent::user::lookup("nobody", Path::new("/etc/passwd"))
        .expect("this host has a nobody user");
    let a = Agent::start(&["--user", "nobody"]);
    let mut c = a.client();
    c.args(["--no-wrap", "--cwd", "/", "--", "sh", "-c"])
        .arg("id -u; id -g; id -G; echo $HOME");
    let out = run(c, vec![]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}\n{}\n{}\n{}\n",
            nobody.uid,
            nobody.gid,
            nobody.gid,
            nobody.home.display()
        )
    );
    let out = Command::new(AGENT)
        .args([
            "--listen",
            "unix:/nonexistent/x",
            "--user",
            "no-such-user-hpmmap",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no-such-user-hpmmap"));
}
