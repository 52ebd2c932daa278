//! One task from the host's side: Hello and Spawn out, then the agent's frames in until the
//! task's Exit, with this process's stdin going out in a thread of its own.

use super::connect::{self, Target};
use super::signals::Sink;
use super::ChannelError;
use crate::pmi::Relay;
use crate::protocol::{self, Frame, Side, Spawn, MAX_DATA, STDIN_WINDOW, VERSION};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};

type Writer = Arc<Mutex<UnixStream>>;

/// How long the task's last PMI bytes may take to be written to the host's PMI socket after
/// its Exit (the same bound the agent gives the task's output after it ends).
const PMI_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

fn send(w: &Writer, f: &Frame) -> Result<(), ChannelError> {
    let mut s = w.lock().unwrap_or_else(|e| e.into_inner());
    Ok(protocol::write_frame(&mut *s, f)?)
}

/// Bytes of stdin the agent will take now: the window less what it has not acknowledged.
struct Credit {
    bytes: Mutex<usize>,
    cv: Condvar,
}

impl Credit {
    fn add(&self, n: usize) {
        let mut b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        *b = (*b + n).min(STDIN_WINDOW);
        self.cv.notify_all();
    }

    /// Waits for some credit and takes up to `max` of it.
    fn take(&self, max: usize) -> usize {
        let b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let mut b = self
            .cv
            .wait_while(b, |b| *b == 0)
            .unwrap_or_else(|e| e.into_inner());
        let n = (*b).min(max);
        *b -= n;
        n
    }

    /// Gives back what was taken but not used.
    fn put_back(&self, n: usize) {
        self.add(n);
    }
}

/// Runs `spawn` through the agent at `target`; the task's status as a shell reports it.
/// `pmi`: the task's PMI descriptor (the Spawn asks for a relay), relayed once the task runs.
pub fn run(
    target: &Target,
    spawn: Spawn,
    signals: &Sink,
    mut pmi: Option<OwnedFd>,
) -> Result<u8, ChannelError> {
    debug_assert_eq!(spawn.pmi, pmi.is_some());
    let stream = connect::connect(target)?;
    let mut rd = stream
        .try_clone()
        .map_err(|e| ChannelError(format!("channel: {e}")))?;
    let w: Writer = Arc::new(Mutex::new(stream));
    send(&w, &Frame::Hello { version: VERSION })?;
    // An agent that refuses the Hello (another protocol version) says why and closes, maybe
    // before the Spawn is written: its answer is read first, it is the better explanation.
    let spawn_sent = send(&w, &Frame::Spawn(spawn));
    let answer = match (protocol::read_frame(&mut rd), spawn_sent) {
        (Err(_), Err(e)) => return Err(e),
        (answer, sent) => {
            if !matches!(answer, Ok(Some(Frame::Hello { version })) if version != VERSION)
                && !matches!(answer, Ok(Some(Frame::Error(_))))
            {
                sent?;
            }
            answer?
        }
    };
    match answer {
        Some(Frame::Hello { version }) if version == VERSION => {}
        Some(Frame::Hello { version }) => {
            return Err(ChannelError(format!(
                "the agent speaks task protocol version {version}, this client {VERSION}"
            )))
        }
        Some(Frame::Error(t)) => return Err(ChannelError(format!("agent: {t}"))),
        Some(f) => {
            return Err(ChannelError(format!(
                "expected the agent's Hello, got {}",
                f.name()
            )))
        }
        None => {
            return Err(ChannelError(
                "the channel closed before the agent's Hello".into(),
            ))
        }
    }
    *signals.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&w));

    let credit = Arc::new(Credit {
        bytes: Mutex::new(STDIN_WINDOW),
        cv: Condvar::new(),
    });
    let mut stdin_started = false;
    let mut relay: Option<Relay> = None;
    let mut last_error = None;
    let (mut out, mut err) = (io::stdout(), io::stderr());
    let (mut out_open, mut err_open) = (true, true);
    loop {
        let frame = protocol::read_frame(&mut rd).map_err(|e| {
            ChannelError(format!(
                "the channel failed before the task's exit status: {e}"
            ))
        })?;
        match frame {
            Some(Frame::Started { .. }) if !stdin_started => {
                stdin_started = true;
                let (sw, credit) = (Arc::clone(&w), Arc::clone(&credit));
                std::thread::Builder::new()
                    .name("stdin".into())
                    .spawn(move || forward_stdin(&sw, &credit))
                    .map_err(|e| ChannelError(format!("cannot start the stdin thread: {e}")))?;
                if let Some(fd) = pmi.take() {
                    relay =
                        Some(Relay::start(Side::Host, fd, Arc::clone(&w)).map_err(|e| {
                            ChannelError(format!("cannot start the PMI relay: {e}"))
                        })?);
                }
            }
            Some(f) if f.pmi_sender() == Some(Side::Agent) => {
                let name = f.name();
                match relay.as_ref().map(|r| r.receive(f)) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => return Err(ChannelError(e)),
                    None => {
                        return Err(ChannelError(format!(
                            "a {name} frame from the agent, and no PMI relay"
                        )))
                    }
                }
            }
            Some(Frame::Stdout(d)) => {
                if out_open && out.write_all(&d).and_then(|_| out.flush()).is_err() {
                    out_open = false;
                    broken_pipe(&w)?;
                }
            }
            Some(Frame::Stderr(d)) => {
                if err_open && err.write_all(&d).and_then(|_| err.flush()).is_err() {
                    err_open = false;
                    broken_pipe(&w)?;
                }
            }
            Some(Frame::StdinAck(n)) => credit.add(n as usize),
            // The agent's reason comes right before an Exit (the task could not start) or the
            // channel's end (a protocol failure): printed then, so the user reads one line.
            Some(Frame::Error(t)) => last_error = Some(t),
            Some(Frame::Exit(s)) => {
                if let Some(t) = last_error {
                    eprintln!("hpmmap-task: {t}");
                }
                // The agent sent the task's last PMI bytes before its Exit: they reach the
                // host's PMI socket before this process ends (unless nobody reads it).
                if let Some(r) = &relay {
                    r.flush(PMI_FLUSH);
                }
                return Ok(s.shell_code());
            }
            Some(f) => {
                return Err(ChannelError(format!(
                    "unexpected {} frame from the agent",
                    f.name()
                )))
            }
            None => {
                return Err(ChannelError(match last_error {
                    Some(t) => format!("agent: {t}"),
                    None => "the channel closed before the task's exit status".into(),
                }))
            }
        }
    }
}

/// Where the client's output cannot be written (its reader went away: `hpmmap-task -- yes |
/// head -1`), the task gets SIGPIPE, as it would have writing to that pipe itself; otherwise
/// it would run on in the guest with nobody reading.
fn broken_pipe(w: &Writer) -> Result<(), ChannelError> {
    send(w, &Frame::Signal(libc::SIGPIPE as u8))
}

/// This process's stdin to the task, never more than the agent's window ahead of it, then
/// StdinEof. A read error counts as the end of input.
fn forward_stdin(w: &Writer, credit: &Credit) {
    let mut stdin = io::stdin().lock();
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        let n = credit.take(MAX_DATA);
        match stdin.read(&mut buf[..n]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => credit.put_back(n),
            Ok(0) | Err(_) => break,
            Ok(got) => {
                credit.put_back(n - got);
                if send(w, &Frame::Stdin(buf[..got].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
    let _ = send(w, &Frame::StdinEof);
}
