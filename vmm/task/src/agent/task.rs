//! One connection, one task: handshake, Spawn, then the task's streams, signals and status.
//!
//! Threads per task: this one waits for the task; one reads the host's frames (stdin,
//! signals, the host going away); one writes stdin to the task; one each relays stdout and
//! stderr. Frames from several threads go out through one lock, whole frames at a time.

use super::Config;
use crate::envlist;
use crate::pmi::Relay;
use crate::protocol::{self, ExitStatus, Frame, Side, Spawn, MAX_DATA, STDIN_WINDOW, VERSION};
use crate::sys;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the task's stdout and stderr may stay open after its group is gone (a process
/// that left the group with setsid can hold them): the Exit frame is not held back longer.
const DRAIN: Duration = Duration::from_secs(5);
/// How long a new connection may take to send Hello and Spawn.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Highest signal number Linux delivers (SIGRTMAX).
const MAX_SIGNAL: u8 = 64;

type Writer = Arc<Mutex<UnixStream>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A thread that panicked holding the lock left the data usable (a stream, a flag).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends one frame; false once the host cannot be written to.
fn send(w: &Writer, f: &Frame) -> bool {
    protocol::write_frame(&mut *lock(w), f).is_ok()
}

/// Why no task runs: a protocol failure (Error, then the channel closes, so the client
/// reports a channel failure) or a task that could not start (Error, then Exit with the
/// status a shell gives: 127 not found, 126 cannot execute).
enum Refusal {
    Protocol(String),
    Exec(String, u8),
}

pub fn serve(conn: UnixStream, cfg: &Config) {
    if let Err(e) = run(conn, cfg) {
        eprintln!("hpmmap-agent: {e}");
    }
}

fn run(conn: UnixStream, cfg: &Config) -> io::Result<()> {
    let mut rd = conn.try_clone()?;
    let w: Writer = Arc::new(Mutex::new(conn.try_clone()?));
    // A host that connects and says nothing must not hold a thread forever.
    rd.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let spawn = handshake(&mut rd, &w);
    rd.set_read_timeout(None)?;
    let started = spawn.and_then(|s| start(&s, cfg).map(|c| (s, c)));
    let (spawn, (child, pmi)) = match started {
        Ok(x) => x,
        Err(r) => {
            let (text, code) = match r {
                Refusal::Protocol(t) => (t, None),
                Refusal::Exec(t, c) => (t, Some(c)),
            };
            eprintln!("hpmmap-agent: {text}");
            send(&w, &Frame::Error(text));
            if let Some(c) = code {
                send(&w, &Frame::Exit(ExitStatus::Code(c)));
            }
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
    };
    supervise(conn, rd, w, &spawn, child, pmi, cfg.grace)
}

fn handshake(rd: &mut UnixStream, w: &Writer) -> Result<Spawn, Refusal> {
    let next = |rd: &mut UnixStream, want: &str| match protocol::read_frame(rd) {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(Refusal::Protocol(format!(
            "the host closed the channel before {want}"
        ))),
        Err(protocol::FrameError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(Refusal::Protocol(format!(
                "no {want} from the host within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            )))
        }
        Err(e) => Err(Refusal::Protocol(e.to_string())),
    };
    match next(rd, "Hello")? {
        Frame::Hello { version } if version == VERSION => {}
        Frame::Hello { version } => {
            return Err(Refusal::Protocol(format!(
                "the host speaks task protocol version {version}, this agent {VERSION}"
            )))
        }
        f => {
            return Err(Refusal::Protocol(format!(
                "expected Hello, got {}",
                f.name()
            )))
        }
    }
    if !send(w, &Frame::Hello { version: VERSION }) {
        return Err(Refusal::Protocol("the host went away after Hello".into()));
    }
    match next(rd, "Spawn")? {
        Frame::Spawn(s) => Ok(s),
        f => Err(Refusal::Protocol(format!(
            "expected Spawn, got {}",
            f.name()
        ))),
    }
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// Starts the task in a process group of its own, as the job user, with exactly the asked
/// argv, cwd and (allow-listed) environment plus the fixed PATH, HOME and LANG; with the
/// task's end of the PMI socketpair as `PMI_FD` when the host relays one (the agent's end
/// is returned with the child).
fn start(s: &Spawn, cfg: &Config) -> Result<(Child, Option<OwnedFd>), Refusal> {
    // The client filters too; a name off the list here means a client that does not.
    if let Some((k, _)) = s.env.iter().find(|(k, _)| !envlist::allowed(k)) {
        return Err(Refusal::Exec(
            format!(
                "variable {} is not on the allow-list ({})",
                String::from_utf8_lossy(k),
                envlist::describe()
            ),
            126,
        ));
    }
    let cwd = Path::new(os(&s.cwd));
    match std::fs::metadata(cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Refusal::Exec(
                format!("cannot change to {}: not a directory", cwd.display()),
                126,
            ))
        }
        Err(e) => {
            return Err(Refusal::Exec(
                format!("cannot change to {}: {e}", cwd.display()),
                126,
            ))
        }
    }
    let pmi = if s.pmi {
        Some(pmi_pair().map_err(|e| {
            Refusal::Exec(format!("cannot make the task's PMI socketpair: {e}"), 126)
        })?)
    } else {
        None
    };
    let launcher = if s.wrap {
        cfg.hpmmap_run.as_ref()
    } else {
        None
    };
    let program: PathBuf = match launcher {
        Some(l) => l.clone(),
        None => PathBuf::from(os(&s.argv[0])),
    };
    let mut cmd = Command::new(&program);
    if launcher.is_some() {
        cmd.arg("--").args(s.argv.iter().map(|a| os(a)));
    } else {
        cmd.args(s.argv[1..].iter().map(|a| os(a)));
    }
    let home = match &cfg.user {
        Some(u) => u.home.clone().into_os_string(),
        None => std::env::var_os("HOME").unwrap_or_else(|| envlist::FALLBACK_HOME.into()),
    };
    cmd.env_clear()
        .env("PATH", envlist::FIXED_PATH)
        .env("HOME", home)
        .env("LANG", envlist::FIXED_LANG)
        // The image's own environment may set PATH and LANG for its software; the host's
        // allow-listed names (never PATH, HOME or LANG) come last.
        .envs(cfg.base_env.iter().map(|(k, v)| (k, v)))
        .envs(s.env.iter().map(|(k, v)| (os(k), os(v))))
        .current_dir(cwd)
        // Its own group: the host's signals reach the task and its children, nothing else.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and calls only sigaction,
    // which is async-signal-safe, on a stack-local struct.
    unsafe {
        cmd.pre_exec(default_signals);
    }
    if let Some((_, task_end)) = &pmi {
        // The host's PMI_FD names a descriptor of the host's: the task's is this one.
        let fd = task_end.as_raw_fd();
        cmd.env("PMI_FD", fd.to_string());
        // SAFETY: the closure runs in the child between fork and exec and calls only fcntl,
        // which is async-signal-safe, on a descriptor the parent keeps open across spawn.
        unsafe {
            cmd.pre_exec(move || inherit(fd));
        }
    }
    if let Some(u) = &cfg.user {
        // std drops supplementary groups when root sets a uid, then setgid, then setuid.
        cmd.uid(u.uid).gid(u.gid);
    }
    let child = cmd.spawn().map_err(|e| {
        let code = if e.kind() == io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        let what = if launcher.is_some() {
            format!("the launcher {} (--hpmmap-run)", program.display())
        } else {
            program.display().to_string()
        };
        Refusal::Exec(
            format!(
                "cannot execute {what} (task {}, in {}): {e}",
                s.task,
                cwd.display()
            ),
            code,
        )
    })?;
    // The task's end is the task's now (dropped here): the agent keeps only its own, so the
    // agent's reader sees end of file once every process holding the task's end is gone.
    Ok((child, pmi.map(|(agent_end, _)| agent_end)))
}

/// A socketpair for the task's PMI: (the agent's end, the task's end), both close-on-exec
/// (the task's is made inheritable in the task alone) and numbered 3 or more, so that the
/// child's stdio setup, which comes before, cannot overwrite the task's end.
fn pmi_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, t) = UnixStream::pair()?;
    let t = OwnedFd::from(t);
    let t = if t.as_raw_fd() < 3 {
        // SAFETY: fcntl duplicates a descriptor we own; the new one is checked, then owned.
        let r = unsafe { libc::fcntl(t.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: r is a new descriptor nobody else owns.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r) }
    } else {
        t
    };
    Ok((OwnedFd::from(a), t))
}

/// In the child: clears close-on-exec on `fd`, so the task inherits it.
fn inherit(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the child inherited from the parent's open copy.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the task every signal's default action. The agent may have been started with some
/// ignored (nohup, a shell's `&` ignores SIGINT and SIGQUIT; glibc's posix_spawn leaves its
/// internal signals 32 and 33 ignored), and ignored signals stay ignored across exec: a task
/// would then shrug off srun's Ctrl-C. std resets SIGPIPE and the signal mask itself.
fn default_signals() -> io::Result<()> {
    // The kernel's struct sigaction on x86_64 (handler, flags, restorer, mask): all zero is
    // SIG_DFL with no flags and an empty mask. The raw call, because glibc's sigaction
    // refuses its internal signals.
    let act = [0u64; 4];
    for sig in 1..=libc::c_long::from(MAX_SIGNAL) {
        if sig == libc::c_long::from(libc::SIGKILL) || sig == libc::c_long::from(libc::SIGSTOP) {
            continue;
        }
        // SAFETY: `act` is a valid kernel sigaction for the call's duration, the old action
        // is not wanted (null), and 8 is the kernel's sigset size on x86_64.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                act.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
    }
    Ok(())
}

/// The task's process group, and whether its leader has been reaped: until then the leader's
/// zombie keeps the group id taken, so signals to the group cannot reach anyone else.
struct Group {
    pgid: u32,
    reaped: Mutex<bool>,
    cv: Condvar,
}

impl Group {
    fn signal(&self, sig: libc::c_int) {
        let reaped = lock(&self.reaped);
        if !*reaped {
            // ESRCH: the whole group has exited and the leader waits to be reaped.
            let _ = sys::killpg(self.pgid, sig);
        }
    }

    fn is_reaped(&self) -> bool {
        *lock(&self.reaped)
    }

    /// Waits for the leader, kills what it left in its group (slurmstepd ends a step's
    /// processes with the step the same way), then reaps it.
    fn reap(&self, child: &mut Child) -> io::Result<std::process::ExitStatus> {
        sys::wait_exit_keep_zombie(self.pgid)?;
        let mut reaped = lock(&self.reaped);
        let _ = sys::killpg(self.pgid, libc::SIGKILL);
        let status = child.wait()?;
        *reaped = true;
        self.cv.notify_all();
        Ok(status)
    }

    /// True when the leader was reaped within `d`.
    fn wait_reaped(&self, d: Duration) -> bool {
        let g = lock(&self.reaped);
        let (g, _) = self
            .cv
            .wait_timeout_while(g, d, |reaped| !*reaped)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

fn supervise(
    conn: UnixStream,
    rd: UnixStream,
    w: Writer,
    s: &Spawn,
    mut child: Child,
    pmi: Option<OwnedFd>,
    grace: Duration,
) -> io::Result<()> {
    let pid = child.id();
    let group = Arc::new(Group {
        pgid: pid,
        reaped: Mutex::new(false),
        cv: Condvar::new(),
    });
    eprintln!(
        "hpmmap-agent: task {} pid {pid}: {}",
        s.task,
        String::from_utf8_lossy(&s.argv[0])
    );
    send(&w, &Frame::Started { pid });
    let (stdin, stdout, stderr) = (
        child.stdin.take().expect("piped"),
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let threads = (|| -> io::Result<_> {
        let pmi = match pmi {
            Some(fd) => Some(Arc::new(Relay::start(Side::Agent, fd, Arc::clone(&w))?)),
            None => None,
        };
        let relays = [
            spawn_thread("stdout", {
                let w = Arc::clone(&w);
                move || relay(stdout, &w, Frame::Stdout)
            })?,
            spawn_thread("stderr", {
                let w = Arc::clone(&w);
                move || relay(stderr, &w, Frame::Stderr)
            })?,
        ];
        let (tx, rx) = mpsc::channel();
        let inflight = Arc::new(AtomicUsize::new(0));
        spawn_thread("stdin", {
            let (w, inflight) = (Arc::clone(&w), Arc::clone(&inflight));
            move || write_stdin(stdin, rx, &w, &inflight)
        })?;
        let host = spawn_thread("host", {
            let (group, pmi) = (Arc::clone(&group), pmi.clone());
            move || read_host(rd, tx, &group, &inflight, pmi.as_deref(), grace)
        })?;
        Ok((relays, host, pmi))
    })();
    let (relays, host, pmi) = match threads {
        Ok(t) => t,
        Err(e) => {
            // A task nobody can talk to must not run on: end it, and the channel with it
            // (no Exit: the client reports a channel failure).
            group.signal(libc::SIGKILL);
            let _ = group.reap(&mut child);
            send(
                &w,
                &Frame::Error(format!("cannot start the task's threads: {e}")),
            );
            let _ = conn.shutdown(Shutdown::Both);
            return Err(e);
        }
    };

    let status = group.reap(&mut child)?;
    let deadline = Instant::now() + DRAIN;
    // What the task wrote to its PMI end before it ended goes out before its Exit, like its
    // output.
    let pmi_pending = || pmi.as_ref().is_some_and(|p| !p.sent_all());
    while (relays.iter().any(|t| !t.is_finished()) || pmi_pending()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let exit = match (status.code(), status.signal()) {
        (Some(c), _) => ExitStatus::Code(c as u8),
        (None, Some(sig)) => ExitStatus::Signal(sig as u8),
        // Neither code nor signal happens only for stopped/continued children, which wait
        // does not return; a shell would call an unknown end a failure.
        (None, None) => ExitStatus::Code(255),
    };
    eprintln!("hpmmap-agent: task {} pid {pid}: {exit}", s.task);
    send(&w, &Frame::Exit(exit));
    // Ends the host reader (and with it the stdin writer); frames already sent still arrive.
    let _ = conn.shutdown(Shutdown::Both);
    // A process that left the group may still hold the task's PMI end: the relay's threads
    // do not wait for it.
    if let Some(p) = &pmi {
        p.close();
    }
    let _ = host.join();
    Ok(())
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name.into()).spawn(f)
}

/// Copies one of the task's output pipes to the host as frames. When the host is gone the
/// pipe is still drained, so the task does not block on a full pipe during its grace period.
fn relay(mut from: impl Read, w: &Writer, frame: fn(Vec<u8>) -> Frame) {
    let mut buf = vec![0u8; MAX_DATA];
    let mut host = true;
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if host {
                    host = send(w, &frame(buf[..n].to_vec()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Writes the host's stdin to the task and acknowledges each piece once written, which is
/// what lets the host send more (the window). A task that closed its stdin gets no more;
/// the host's bytes are still acknowledged so that it does not wait forever.
fn write_stdin(mut stdin: ChildStdin, rx: Receiver<Vec<u8>>, w: &Writer, inflight: &AtomicUsize) {
    let mut open = true;
    for d in rx {
        if open && stdin.write_all(&d).is_err() {
            open = false;
        }
        inflight.fetch_sub(d.len(), Ordering::SeqCst);
        if !send(w, &Frame::StdinAck(d.len() as u32)) {
            break;
        }
    }
    // Dropping stdin here is the task's end of input.
}

/// Reads the host's frames until the channel ends. The host going away (or breaking the
/// protocol) while the task runs hangs the task up: SIGHUP to its group, SIGKILL after the
/// grace period.
fn read_host(
    mut rd: UnixStream,
    tx: Sender<Vec<u8>>,
    group: &Group,
    inflight: &AtomicUsize,
    pmi: Option<&Relay>,
    grace: Duration,
) {
    let mut tx = Some(tx);
    let why = loop {
        match protocol::read_frame(&mut rd) {
            Ok(Some(Frame::Stdin(d))) => {
                let now = inflight.fetch_add(d.len(), Ordering::SeqCst) + d.len();
                if now > STDIN_WINDOW {
                    break format!(
                        "the host sent {now} bytes of stdin, past the window of {STDIN_WINDOW}"
                    );
                }
                match &tx {
                    Some(t) => {
                        let _ = t.send(d);
                    }
                    None => break "the host sent stdin after its end".to_string(),
                }
            }
            Ok(Some(Frame::StdinEof)) => tx = None,
            Ok(Some(Frame::Signal(n))) if (1..=MAX_SIGNAL).contains(&n) => {
                group.signal(libc::c_int::from(n))
            }
            Ok(Some(Frame::Signal(n))) => break format!("the host sent signal {n}"),
            Ok(Some(f)) if f.pmi_sender() == Some(Side::Host) => {
                let name = f.name();
                match pmi.map(|p| p.receive(f)) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => break e,
                    None => break format!("a {name} frame from the host, and no PMI relay"),
                }
            }
            Ok(Some(f)) => break format!("unexpected {} frame from the host", f.name()),
            Ok(None) => break "the host closed the channel".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    drop(tx);
    if let Some(p) = pmi {
        p.close();
    }
    if group.is_reaped() {
        return;
    }
    eprintln!(
        "hpmmap-agent: pid {}: {why}: SIGHUP to its group, SIGKILL after {} ms",
        group.pgid,
        grace.as_millis()
    );
    group.signal(libc::SIGHUP);
    if !group.wait_reaped(grace) {
        group.signal(libc::SIGKILL);
    }
}
