//! The task channel's wire format: framed messages over any byte stream (a vsock connection
//! in the job's VM, a Unix socket in tests).
//!
//! A frame is one type byte, a little-endian u32 payload length, and the payload. Every type
//! has its own length limit, checked before anything is allocated, so a peer that lies about
//! a length costs the other side at most that limit. Both sides open with [`Frame::Hello`]
//! carrying [`MAGIC`] and [`VERSION`]; a different version is refused, never guessed at.
//!
//! Host to guest: Hello, Spawn, Stdin, StdinEof, Signal, PmiData, PmiEof, PmiAck. Guest to
//! host: Hello, Started, Stdout, Stderr, StdinAck, Exit, Error, PmiData, PmiEof, PmiAck.

use std::io::{self, Read, Write};
use thiserror::Error;

/// Protocol version; bump on any change a peer of the previous version would misread.
/// 2: the Spawn's flags byte (wrap, PMI relay) and the PMI frames.
pub const VERSION: u16 = 2;
/// First bytes of a Hello payload: a stray client (or the wrong port) is told apart at once.
pub const MAGIC: [u8; 4] = *b"HPMT";
/// Type byte + u32 length.
pub const HEADER_LEN: usize = 5;
/// Largest Stdin/Stdout/Stderr payload: senders cut their data into pieces of this size.
pub const MAX_DATA: usize = 64 * 1024;
/// Largest Spawn payload. Linux takes up to 2 MiB of argv and environment per exec by
/// default (a quarter of an 8 MiB stack); a Slurm task's are a few KiB, so 1 MiB leaves room.
pub const MAX_SPAWN: usize = 1024 * 1024;
/// Largest Error text.
pub const MAX_TEXT: usize = 4096;
/// Stdin bytes the host may have sent but the agent not yet written to the task (acknowledged
/// with [`Frame::StdinAck`]): a task that does not read its stdin holds at most this much in
/// the agent, and the host stops reading its own stdin until the task catches up.
pub const STDIN_WINDOW: usize = 256 * 1024;
/// PMI bytes either side may have sent and the other not yet written to its end of the PMI
/// socket (acknowledged with PmiAck): the same bound as stdin, in each direction.
pub const PMI_WINDOW: usize = 256 * 1024;

const T_HELLO: u8 = 0x01;
const T_SPAWN: u8 = 0x02;
const T_STDIN: u8 = 0x03;
const T_STDIN_EOF: u8 = 0x04;
const T_SIGNAL: u8 = 0x05;
const T_HOST_PMI_DATA: u8 = 0x06;
const T_HOST_PMI_EOF: u8 = 0x07;
const T_HOST_PMI_ACK: u8 = 0x08;
const T_STARTED: u8 = 0x81;
const T_STDOUT: u8 = 0x82;
const T_STDERR: u8 = 0x83;
const T_STDIN_ACK: u8 = 0x84;
const T_EXIT: u8 = 0x85;
const T_ERROR: u8 = 0x86;
const T_AGENT_PMI_DATA: u8 = 0x87;
const T_AGENT_PMI_EOF: u8 = 0x88;
const T_AGENT_PMI_ACK: u8 = 0x89;

const FLAG_WRAP: u8 = 1;
const FLAG_PMI: u8 = 2;

/// What the host asks the agent to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    /// The program and its arguments; the program is looked up in the guest's fixed PATH.
    pub argv: Vec<Vec<u8>>,
    /// Absolute working directory in the guest.
    pub cwd: Vec<u8>,
    /// Variables on the allow-list ([`crate::envlist`]); the agent adds PATH, HOME and LANG.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// The Slurm task id (the MPI rank), for the agent's log.
    pub task: u32,
    /// Run under `hpmmap-run --`.
    pub wrap: bool,
    /// The host relays a PMI descriptor: the agent gives the task one end of a socketpair
    /// as `PMI_FD`, and PMI frames carry its bytes.
    pub pmi: bool,
}

/// How a task ended, as a shell sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// exit(code), 0..=255.
    Code(u8),
    /// Killed by this signal.
    Signal(u8),
}

impl ExitStatus {
    /// The status a shell reports: the code, or 128 + the signal.
    pub fn shell_code(self) -> u8 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128u8.saturating_add(s),
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u16,
    },
    Spawn(Spawn),
    Stdin(Vec<u8>),
    StdinEof,
    Signal(u8),
    Started {
        pid: u32,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    StdinAck(u32),
    Exit(ExitStatus),
    Error(String),
    /// PMI bytes from the host's PMI descriptor (host to agent) or from the task's end of
    /// the guest's socketpair (agent to host).
    PmiData(Side, Vec<u8>),
    /// That side's PMI end reached end of file.
    PmiEof(Side),
    /// This many of the other side's PmiData bytes were written to the sender's PMI end.
    PmiAck(Side, u32),
}

/// Who sends a PMI frame: each direction has its own type byte, so a frame sent the wrong
/// way is refused by its type like any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Host,
    Agent,
}

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("channel: {0}")]
    Io(#[from] io::Error),
    #[error("the channel closed in the middle of a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("{name} frame of {len} bytes exceeds its limit of {max}")]
    TooLong {
        name: &'static str,
        len: usize,
        max: usize,
    },
    #[error("malformed {name} frame: {what}")]
    Malformed { name: &'static str, what: String },
}

fn name_of(ty: u8) -> Option<&'static str> {
    Some(match ty {
        T_HELLO => "Hello",
        T_SPAWN => "Spawn",
        T_STDIN => "Stdin",
        T_STDIN_EOF => "StdinEof",
        T_SIGNAL => "Signal",
        T_STARTED => "Started",
        T_STDOUT => "Stdout",
        T_STDERR => "Stderr",
        T_STDIN_ACK => "StdinAck",
        T_EXIT => "Exit",
        T_ERROR => "Error",
        T_HOST_PMI_DATA | T_AGENT_PMI_DATA => "PmiData",
        T_HOST_PMI_EOF | T_AGENT_PMI_EOF => "PmiEof",
        T_HOST_PMI_ACK | T_AGENT_PMI_ACK => "PmiAck",
        _ => return None,
    })
}

/// The largest payload a frame of this type may carry.
fn max_len(ty: u8) -> usize {
    match ty {
        T_HELLO => MAGIC.len() + 2,
        T_SPAWN => MAX_SPAWN,
        T_STDIN | T_STDOUT | T_STDERR | T_HOST_PMI_DATA | T_AGENT_PMI_DATA => MAX_DATA,
        T_STDIN_EOF | T_HOST_PMI_EOF | T_AGENT_PMI_EOF => 0,
        T_HOST_PMI_ACK | T_AGENT_PMI_ACK => 4,
        T_SIGNAL => 1,
        T_STARTED | T_STDIN_ACK => 4,
        T_EXIT => 2,
        T_ERROR => MAX_TEXT,
        _ => 0,
    }
}

impl Frame {
    fn type_byte(&self) -> u8 {
        match self {
            Frame::Hello { .. } => T_HELLO,
            Frame::Spawn(_) => T_SPAWN,
            Frame::Stdin(_) => T_STDIN,
            Frame::StdinEof => T_STDIN_EOF,
            Frame::Signal(_) => T_SIGNAL,
            Frame::Started { .. } => T_STARTED,
            Frame::Stdout(_) => T_STDOUT,
            Frame::Stderr(_) => T_STDERR,
            Frame::StdinAck(_) => T_STDIN_ACK,
            Frame::Exit(_) => T_EXIT,
            Frame::Error(_) => T_ERROR,
            Frame::PmiData(Side::Host, _) => T_HOST_PMI_DATA,
            Frame::PmiData(Side::Agent, _) => T_AGENT_PMI_DATA,
            Frame::PmiEof(Side::Host) => T_HOST_PMI_EOF,
            Frame::PmiEof(Side::Agent) => T_AGENT_PMI_EOF,
            Frame::PmiAck(Side::Host, _) => T_HOST_PMI_ACK,
            Frame::PmiAck(Side::Agent, _) => T_AGENT_PMI_ACK,
        }
    }

    /// Who sent it, for a PMI frame; None for any other.
    pub fn pmi_sender(&self) -> Option<Side> {
        match self {
            Frame::PmiData(s, _) | Frame::PmiEof(s) | Frame::PmiAck(s, _) => Some(*s),
            _ => None,
        }
    }

    /// The frame's name, for errors ("expected Spawn, got Stdin").
    pub fn name(&self) -> &'static str {
        name_of(self.type_byte()).unwrap_or("?")
    }

    /// Header and payload. A payload over its type's limit is an error: data frames must be
    /// cut by the sender, and an Error text is cut here at a char boundary instead.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let ty = self.type_byte();
        let mut p = Vec::new();
        match self {
            Frame::Hello { version } => {
                p.extend_from_slice(&MAGIC);
                p.extend_from_slice(&version.to_le_bytes());
            }
            Frame::Spawn(s) => encode_spawn(s, &mut p),
            Frame::Stdin(d) | Frame::Stdout(d) | Frame::Stderr(d) | Frame::PmiData(_, d) => {
                p.extend_from_slice(d)
            }
            Frame::StdinEof | Frame::PmiEof(_) => {}
            Frame::PmiAck(_, n) => p.extend_from_slice(&n.to_le_bytes()),
            Frame::Signal(n) => p.push(*n),
            Frame::Started { pid } => p.extend_from_slice(&pid.to_le_bytes()),
            Frame::StdinAck(n) => p.extend_from_slice(&n.to_le_bytes()),
            Frame::Exit(ExitStatus::Code(c)) => p.extend_from_slice(&[0, *c]),
            Frame::Exit(ExitStatus::Signal(s)) => p.extend_from_slice(&[1, *s]),
            Frame::Error(t) => {
                let mut cut = t.len().min(MAX_TEXT);
                while !t.is_char_boundary(cut) {
                    cut -= 1;
                }
                p.extend_from_slice(&t.as_bytes()[..cut]);
            }
        }
        let max = max_len(ty);
        if p.len() > max {
            return Err(FrameError::TooLong {
                name: self.name(),
                len: p.len(),
                max,
            });
        }
        let mut out = Vec::with_capacity(HEADER_LEN + p.len());
        out.push(ty);
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&p);
        Ok(out)
    }
}

fn put_bytes(p: &mut Vec<u8>, b: &[u8]) {
    p.extend_from_slice(&(b.len() as u32).to_le_bytes());
    p.extend_from_slice(b);
}

fn encode_spawn(s: &Spawn, p: &mut Vec<u8>) {
    let mut flags = 0;
    if s.wrap {
        flags |= FLAG_WRAP;
    }
    if s.pmi {
        flags |= FLAG_PMI;
    }
    p.push(flags);
    p.extend_from_slice(&s.task.to_le_bytes());
    put_bytes(p, &s.cwd);
    p.extend_from_slice(&(s.argv.len() as u32).to_le_bytes());
    for a in &s.argv {
        put_bytes(p, a);
    }
    p.extend_from_slice(&(s.env.len() as u32).to_le_bytes());
    for (k, v) in &s.env {
        put_bytes(p, k);
        put_bytes(p, v);
    }
}

/// Reads a payload field by field; every length is checked against what is left, so a count
/// or length from the peer never sizes an allocation beyond the (bounded) payload.
struct Cursor<'a> {
    buf: &'a [u8],
    name: &'static str,
}

impl<'a> Cursor<'a> {
    fn bad(&self, what: impl Into<String>) -> FrameError {
        FrameError::Malformed {
            name: self.name,
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(self.bad(format!("{what} needs {n} bytes, {} left", self.buf.len())));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self, what: &str) -> Result<Vec<u8>, FrameError> {
        let n = self.u32(what)? as usize;
        Ok(self.take(n, what)?.to_vec())
    }

    /// A count of items each at least `min_item` bytes long: more than could fit is malformed.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, FrameError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(self.bad(format!(
                "{n} {what} cannot fit in the {} bytes left",
                self.buf.len()
            )));
        }
        Ok(n)
    }

    fn end(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.bad(format!("{} bytes after the last field", self.buf.len())))
        }
    }
}

fn decode_spawn(buf: &[u8]) -> Result<Spawn, FrameError> {
    let mut c = Cursor { buf, name: "Spawn" };
    let flags = c.u8("flags")?;
    if flags & !(FLAG_WRAP | FLAG_PMI) != 0 {
        return Err(c.bad(format!("flags 0x{flags:02x} (known: 1 wrap, 2 PMI relay)")));
    }
    let (wrap, pmi) = (flags & FLAG_WRAP != 0, flags & FLAG_PMI != 0);
    let task = c.u32("task")?;
    let cwd = c.bytes("cwd")?;
    let argc = c.count("arguments", 4)?;
    let mut argv = Vec::with_capacity(argc);
    for _ in 0..argc {
        argv.push(c.bytes("argument")?);
    }
    let envc = c.count("variables", 8)?;
    let mut env = Vec::with_capacity(envc);
    for _ in 0..envc {
        let k = c.bytes("variable name")?;
        let v = c.bytes("variable value")?;
        env.push((k, v));
    }
    c.end()?;
    let s = Spawn {
        argv,
        cwd,
        env,
        task,
        wrap,
        pmi,
    };
    s.check().map_err(|what| c.bad(what))?;
    Ok(s)
}

impl Spawn {
    /// What exec needs: a program, no NUL inside any string, an absolute cwd, `=`-free names.
    /// Whether a name is on the allow-list is [`crate::envlist`]'s question, not the format's.
    pub fn check(&self) -> Result<(), String> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err("no program".into());
        }
        if self.argv.iter().any(|a| a.contains(&0)) {
            return Err("an argument contains a NUL byte".into());
        }
        if self.cwd.first() != Some(&b'/') || self.cwd.contains(&0) {
            return Err("the working directory is not an absolute path".into());
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(&b'=') || k.contains(&0) {
                return Err(format!(
                    "bad variable name {:?}",
                    String::from_utf8_lossy(k)
                ));
            }
            if v.contains(&0) {
                return Err(format!(
                    "variable {} contains a NUL byte",
                    String::from_utf8_lossy(k)
                ));
            }
        }
        Ok(())
    }
}

fn decode_payload(ty: u8, p: &[u8]) -> Result<Frame, FrameError> {
    let name = name_of(ty).ok_or(FrameError::UnknownType(ty))?;
    let fixed = |want: usize| -> Result<(), FrameError> {
        if p.len() == want {
            Ok(())
        } else {
            Err(FrameError::Malformed {
                name,
                what: format!("{} bytes, expected {want}", p.len()),
            })
        }
    };
    let le32 = |p: &[u8]| u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
    Ok(match ty {
        T_HELLO => {
            fixed(MAGIC.len() + 2)?;
            if p[..4] != MAGIC {
                return Err(FrameError::Malformed {
                    name,
                    what: "not an hpmmap task channel (bad magic)".into(),
                });
            }
            Frame::Hello {
                version: u16::from_le_bytes([p[4], p[5]]),
            }
        }
        T_SPAWN => Frame::Spawn(decode_spawn(p)?),
        T_STDIN => Frame::Stdin(p.to_vec()),
        T_STDOUT => Frame::Stdout(p.to_vec()),
        T_STDERR => Frame::Stderr(p.to_vec()),
        T_STDIN_EOF => {
            fixed(0)?;
            Frame::StdinEof
        }
        T_SIGNAL => {
            fixed(1)?;
            Frame::Signal(p[0])
        }
        T_STARTED => {
            fixed(4)?;
            Frame::Started { pid: le32(p) }
        }
        T_STDIN_ACK => {
            fixed(4)?;
            Frame::StdinAck(le32(p))
        }
        T_EXIT => {
            fixed(2)?;
            match p[0] {
                0 => Frame::Exit(ExitStatus::Code(p[1])),
                1 => Frame::Exit(ExitStatus::Signal(p[1])),
                k => {
                    return Err(FrameError::Malformed {
                        name,
                        what: format!("exit kind {k} (0 code, 1 signal)"),
                    })
                }
            }
        }
        T_ERROR => Frame::Error(String::from_utf8_lossy(p).into_owned()),
        T_HOST_PMI_DATA => Frame::PmiData(Side::Host, p.to_vec()),
        T_AGENT_PMI_DATA => Frame::PmiData(Side::Agent, p.to_vec()),
        T_HOST_PMI_EOF | T_AGENT_PMI_EOF => {
            fixed(0)?;
            Frame::PmiEof(if ty == T_HOST_PMI_EOF {
                Side::Host
            } else {
                Side::Agent
            })
        }
        T_HOST_PMI_ACK | T_AGENT_PMI_ACK => {
            fixed(4)?;
            let side = if ty == T_HOST_PMI_ACK {
                Side::Host
            } else {
                Side::Agent
            };
            Frame::PmiAck(side, le32(p))
        }
        _ => return Err(FrameError::UnknownType(ty)),
    })
}

/// Type and length from a header, the length checked against the type's limit.
fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(u8, usize), FrameError> {
    let ty = h[0];
    let name = name_of(ty).ok_or(FrameError::UnknownType(ty))?;
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
    let max = max_len(ty);
    if len > max {
        return Err(FrameError::TooLong { name, len, max });
    }
    Ok((ty, len))
}

/// Decodes the first frame of `buf`: the frame and the bytes it used. A buffer that ends
/// inside the frame is [`FrameError::Truncated`] (a stream reader waits for more instead).
pub fn decode(buf: &[u8]) -> Result<(Frame, usize), FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Truncated {
            got: buf.len(),
            want: HEADER_LEN,
        });
    }
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&buf[..HEADER_LEN]);
    let (ty, len) = parse_header(&h)?;
    let want = HEADER_LEN + len;
    if buf.len() < want {
        return Err(FrameError::Truncated {
            got: buf.len(),
            want,
        });
    }
    Ok((decode_payload(ty, &buf[HEADER_LEN..want])?, want))
}

/// Fills `buf` from `r`; returns how many bytes came before EOF.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The next frame from a stream; `None` when the stream ends cleanly between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, FrameError> {
    let mut h = [0u8; HEADER_LEN];
    match read_full(r, &mut h)? {
        0 => return Ok(None),
        HEADER_LEN => {}
        got => {
            return Err(FrameError::Truncated {
                got,
                want: HEADER_LEN,
            })
        }
    }
    let (ty, len) = parse_header(&h)?;
    // The limit was checked above: this allocation is at most MAX_SPAWN.
    let mut p = vec![0u8; len];
    let got = read_full(r, &mut p)?;
    if got < len {
        return Err(FrameError::Truncated {
            got: HEADER_LEN + got,
            want: HEADER_LEN + len,
        });
    }
    decode_payload(ty, &p).map(Some)
}

/// Writes one frame with a single write_all, so frames from threads sharing a stream behind
/// a lock never interleave.
pub fn write_frame(w: &mut impl Write, f: &Frame) -> Result<(), FrameError> {
    let b = f.encode()?;
    w.write_all(&b)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn() -> Spawn {
        Spawn {
            argv: vec![
                b"sh".to_vec(),
                b"-c".to_vec(),
                b"echo 'a b'".to_vec(),
                vec![],
            ],
            cwd: b"/home/hpmmap".to_vec(),
            env: vec![
                (b"SLURM_PROCID".to_vec(), b"3".to_vec()),
                (b"PMI_FD".to_vec(), vec![]),
            ],
            task: 3,
            wrap: true,
            pmi: true,
        }
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Hello { version: VERSION },
            Frame::Spawn(spawn()),
            Frame::Stdin(vec![0, 1, 2, 255]),
            Frame::Stdin(vec![7; MAX_DATA]),
            Frame::StdinEof,
            Frame::Signal(15),
            Frame::Started { pid: 4242 },
            Frame::Stdout(b"out\n".to_vec()),
            Frame::Stderr(vec![]),
            Frame::StdinAck(65536),
            Frame::Exit(ExitStatus::Code(3)),
            Frame::Exit(ExitStatus::Signal(9)),
            Frame::Error("cannot execute 'x': No such file or directory".into()),
            Frame::PmiData(
                Side::Host,
                b"cmd=init pmi_version=1 pmi_subversion=1\n".to_vec(),
            ),
            Frame::PmiData(Side::Agent, vec![9; MAX_DATA]),
            Frame::PmiEof(Side::Host),
            Frame::PmiEof(Side::Agent),
            Frame::PmiAck(Side::Host, 1),
            Frame::PmiAck(Side::Agent, 65536),
        ]
    }

    #[test]
    fn every_frame_round_trips_through_a_stream_and_a_buffer() {
        let mut stream = Vec::new();
        for f in all_frames() {
            write_frame(&mut stream, &f).unwrap();
            let b = f.encode().unwrap();
            assert_eq!(decode(&b).unwrap(), (f.clone(), b.len()));
        }
        let mut r = &stream[..];
        for f in all_frames() {
            assert_eq!(read_frame(&mut r).unwrap(), Some(f));
        }
        assert_eq!(
            read_frame(&mut r).unwrap(),
            None,
            "clean end between frames"
        );
    }

    #[test]
    fn a_stream_cut_anywhere_inside_a_frame_is_truncated_not_a_clean_end() {
        let b = Frame::Spawn(spawn()).encode().unwrap();
        for cut in 1..b.len() {
            let mut r = &b[..cut];
            match read_frame(&mut r) {
                Err(FrameError::Truncated { got, want }) => {
                    assert_eq!(got, cut);
                    assert_eq!(
                        want,
                        if cut < HEADER_LEN {
                            HEADER_LEN
                        } else {
                            b.len()
                        }
                    );
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
            assert!(matches!(
                decode(&b[..cut]),
                Err(FrameError::Truncated { .. })
            ));
        }
    }

    /// A header claiming 4 GiB is refused from the header alone: nothing is allocated or read.
    #[test]
    fn an_oversized_length_is_refused_before_reading_the_payload() {
        for (ty, max) in [
            (T_STDOUT, MAX_DATA),
            (T_SPAWN, MAX_SPAWN),
            (T_ERROR, MAX_TEXT),
            (T_SIGNAL, 1),
            (T_HOST_PMI_DATA, MAX_DATA),
            (T_AGENT_PMI_ACK, 4),
        ] {
            for len in [max as u32 + 1, u32::MAX] {
                let mut h = vec![ty];
                h.extend_from_slice(&len.to_le_bytes());
                match read_frame(&mut &h[..]) {
                    Err(FrameError::TooLong { len: l, max: m, .. }) => {
                        assert_eq!((l, m), (len as usize, max))
                    }
                    other => panic!("type {ty:#x} len {len}: {other:?}"),
                }
            }
        }
        let e = Frame::Stdout(vec![0; MAX_DATA + 1]).encode().unwrap_err();
        assert!(e.to_string().contains("exceeds its limit"), "{e}");
    }

    #[test]
    fn an_error_text_over_the_limit_is_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_TEXT);
        let b = Frame::Error(long).encode().unwrap();
        let (f, _) = decode(&b).unwrap();
        let Frame::Error(t) = f else { panic!() };
        assert!(t.len() <= MAX_TEXT && t.len() >= MAX_TEXT - 1);
        assert!(t.chars().all(|c| c == 'é'));
    }

    #[test]
    fn unknown_types_and_bad_fixed_payloads_are_errors() {
        assert!(matches!(
            decode(&[0x7f, 0, 0, 0, 0]),
            Err(FrameError::UnknownType(0x7f))
        ));
        // Past a fixed type's size is refused from the header.
        assert!(matches!(
            decode(&[T_STDIN_EOF, 1, 0, 0, 0, 0]),
            Err(FrameError::TooLong { max: 0, .. })
        ));
        // Started with 3 bytes, Exit of kind 2, Hello with the wrong magic.
        for bad in [
            &[T_STARTED, 3, 0, 0, 0, 1, 2, 3][..],
            &[T_EXIT, 2, 0, 0, 0, 2, 0][..],
            &[T_HELLO, 6, 0, 0, 0, b'H', b'T', b'T', b'P', 1, 0][..],
        ] {
            assert!(
                matches!(decode(bad), Err(FrameError::Malformed { .. })),
                "{bad:?}: {:?}",
                decode(bad)
            );
        }
    }

    fn spawn_payload(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut p = Vec::new();
        f(&mut p);
        let mut out = vec![T_SPAWN];
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&p);
        out
    }

    #[test]
    fn a_spawn_whose_counts_or_lengths_overrun_its_payload_is_malformed() {
        // 4 billion arguments announced in a 20-byte payload: refused before any allocation.
        let many_args = spawn_payload(|p| {
            p.push(0);
            p.extend_from_slice(&0u32.to_le_bytes());
            put_bytes(p, b"/");
            p.extend_from_slice(&u32::MAX.to_le_bytes());
        });
        let e = decode(&many_args).unwrap_err();
        assert!(e.to_string().contains("cannot fit"), "{e}");
        // A string length past the end.
        let long_cwd = spawn_payload(|p| {
            p.push(0);
            p.extend_from_slice(&0u32.to_le_bytes());
            p.extend_from_slice(&1000u32.to_le_bytes());
            p.extend_from_slice(b"/tmp");
        });
        assert!(matches!(
            decode(&long_cwd),
            Err(FrameError::Malformed { .. })
        ));
        // Trailing bytes.
        let mut b = Frame::Spawn(spawn()).encode().unwrap();
        b.push(0);
        let len = (b.len() - HEADER_LEN) as u32;
        b[1..5].copy_from_slice(&len.to_le_bytes());
        let e = decode(&b).unwrap_err();
        assert!(e.to_string().contains("after the last field"), "{e}");
    }

    #[test]
    fn a_spawn_exec_could_not_run_is_malformed() {
        type Edit = Box<dyn Fn(&mut Spawn)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.argv.clear()), "no program"),
            (Box::new(|s| s.argv[0].clear()), "no program"),
            (Box::new(|s| s.argv[1] = b"a\0b".to_vec()), "NUL"),
            (Box::new(|s| s.cwd = b"relative".to_vec()), "absolute"),
            (
                Box::new(|s| s.env[0].0 = b"A=B".to_vec()),
                "bad variable name",
            ),
            (Box::new(|s| s.env[0].1 = b"x\0".to_vec()), "NUL"),
        ];
        for (edit, want) in cases {
            let mut s = spawn();
            edit(&mut s);
            let b = Frame::Spawn(s).encode().unwrap();
            let e = decode(&b).unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }

    #[test]
    fn spawn_flags_carry_wrap_and_pmi_and_unknown_flags_are_malformed() {
        for (wrap, pmi) in [(false, false), (true, false), (false, true), (true, true)] {
            let s = Spawn {
                wrap,
                pmi,
                ..spawn()
            };
            let b = Frame::Spawn(s.clone()).encode().unwrap();
            assert_eq!(decode(&b).unwrap().0, Frame::Spawn(s));
        }
        let mut b = Frame::Spawn(spawn()).encode().unwrap();
        b[HEADER_LEN] = 4;
        let e = decode(&b).unwrap_err().to_string();
        assert!(e.contains("flags 0x04"), "{e}");
    }

    #[test]
    fn shell_codes_follow_the_shell() {
        assert_eq!(ExitStatus::Code(0).shell_code(), 0);
        assert_eq!(ExitStatus::Code(3).shell_code(), 3);
        assert_eq!(ExitStatus::Signal(15).shell_code(), 143);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    }
}
