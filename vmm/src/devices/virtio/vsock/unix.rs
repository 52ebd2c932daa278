//! The host side of the hybrid vsock: the Unix socket PATH that host clients connect to
//! (`CONNECT <port>\n`, answered `OK <host_port>\n`), the sockets `PATH_<port>` that the
//! guest's connections to host ports reach, and the socket file's removal at teardown.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The longest command line a client may send before it is dropped.
pub const COMMAND_MAX: usize = 64;

#[derive(Debug, Error)]
pub enum VsockError {
    #[error("--vsock {0}: {1}")]
    Input(PathBuf, String),
    #[error("--vsock {0}: {1}")]
    Host(PathBuf, std::io::Error),
}

impl VsockError {
    pub fn is_input(&self) -> bool {
        matches!(self, VsockError::Input(..))
    }
}

/// Checks `--vsock PATH` without changing anything: the directory exists, PATH does not,
/// and it fits a sockaddr_un.
pub fn check(path: &Path) -> Result<(), VsockError> {
    let bad = |why: String| Err(VsockError::Input(path.to_path_buf(), why));
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return bad(format!("directory {} does not exist", parent.display()));
    }
    if std::fs::symlink_metadata(path).is_ok() {
        return bad("exists (the VMM creates the socket and removes it when it ends)".into());
    }
    // sun_path is 108 bytes with its NUL; the guest's ports add `_<port>` (up to 11 bytes).
    if path.as_os_str().as_bytes().len() + 11 > 107 {
        return bad(
            "too long for a Unix socket path (with `_<port>` it must fit 107 bytes)".into(),
        );
    }
    Ok(())
}

/// The socket file: removed when the run ends (or the build fails after binding).
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// PATH, bound and listening (non-blocking).
pub struct Listener {
    pub listener: UnixListener,
    pub path: PathBuf,
}

impl Listener {
    /// Binds PATH; the [`SocketFile`] removes it (kept by the run, apart from the
    /// listener, which the event thread holds until the process ends).
    pub fn bind(path: &Path) -> Result<(Listener, SocketFile), VsockError> {
        check(path)?;
        let listener = UnixListener::bind(path).map_err(|e| match e.kind() {
            ErrorKind::AddrInUse => VsockError::Input(path.to_path_buf(), "exists".into()),
            _ => VsockError::Host(path.to_path_buf(), e),
        })?;
        let file = SocketFile(path.to_path_buf());
        listener
            .set_nonblocking(true)
            .map_err(|e| VsockError::Host(path.to_path_buf(), e))?;
        Ok((
            Listener {
                listener,
                path: path.to_path_buf(),
            },
            file,
        ))
    }

    /// Where the guest's connections to host port `port` go.
    pub fn port_path(&self, port: u32) -> PathBuf {
        port_path(&self.path, port)
    }
}

pub fn port_path(base: &Path, port: u32) -> PathBuf {
    let mut s = base.as_os_str().to_os_string();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// What a client's first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// No full line yet.
    Incomplete,
    /// `CONNECT <port>\n`, `len` bytes long (the line and its newline).
    Connect {
        port: u32,
        len: usize,
    },
    Bad,
}

/// Parses the first line of `b` (what a peek returned).
pub fn parse_command(b: &[u8]) -> Command {
    let Some(nl) = b.iter().position(|&c| c == b'\n') else {
        return if b.len() >= COMMAND_MAX {
            Command::Bad
        } else {
            Command::Incomplete
        };
    };
    if nl >= COMMAND_MAX {
        return Command::Bad;
    }
    let line = std::str::from_utf8(&b[..nl]).unwrap_or("");
    let line = line.strip_suffix('\r').unwrap_or(line);
    match line.split_once(' ') {
        Some(("CONNECT", p)) => match p.trim().parse::<u32>() {
            Ok(port) => Command::Connect { port, len: nl + 1 },
            Err(_) => Command::Bad,
        },
        _ => Command::Bad,
    }
}

/// Reads the client's command line without taking any byte after it (the client may
/// send its data right behind the command).
pub fn read_command(s: &mut UnixStream) -> std::io::Result<Command> {
    let mut buf = [0u8; COMMAND_MAX];
    // SAFETY: buf is a valid writable buffer of its length; the descriptor is open.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n == 0 {
        return Ok(Command::Bad);
    }
    let c = parse_command(&buf[..n as usize]);
    if let Command::Connect { len, .. } = c {
        use std::io::Read;
        let mut line = vec![0u8; len];
        s.read_exact(&mut line)?;
    }
    Ok(c)
}

/// Connects to a host listener without blocking: a listener whose backlog is full refuses
/// like a missing one.
pub fn connect(path: &Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket owned by nothing else.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un and len does not exceed its size.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_one_line_and_nothing_after_it() {
        assert_eq!(
            parse_command(b"CONNECT 52\nrest"),
            Command::Connect { port: 52, len: 11 }
        );
        assert_eq!(
            parse_command(b"CONNECT 1234\r\n"),
            Command::Connect {
                port: 1234,
                len: 14
            }
        );
        assert_eq!(parse_command(b"CONNECT 5"), Command::Incomplete);
        assert_eq!(parse_command(b"CONNECT x\n"), Command::Bad);
        assert_eq!(parse_command(b"CONNECT 99999999999\n"), Command::Bad);
        assert_eq!(parse_command(b"LISTEN 5\n"), Command::Bad);
        assert_eq!(parse_command(&[b'A'; COMMAND_MAX]), Command::Bad);
    }

    #[test]
    fn path_checks_bind_and_removal() {
        let dir = std::env::temp_dir().join(format!("hpmmap-vsock-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("v.sock");
        let e = check(&dir.join("missing/v.sock")).unwrap_err();
        assert!(
            e.is_input() && e.to_string().contains("does not exist"),
            "{e}"
        );
        let (l, file) = Listener::bind(&p).unwrap();
        assert!(check(&p).unwrap_err().to_string().contains("exists"));
        assert_eq!(l.port_path(52), dir.join("v.sock_52"));
        // A client's command leaves its data in the socket.
        let mut c = UnixStream::connect(&p).unwrap();
        use std::io::{Read, Write};
        c.write_all(b"CONNECT 7\nDATA").unwrap();
        let (mut s, _) = l.listener.accept().unwrap();
        assert_eq!(
            read_command(&mut s).unwrap(),
            Command::Connect { port: 7, len: 10 }
        );
        let mut d = [0u8; 4];
        s.read_exact(&mut d).unwrap();
        assert_eq!(&d, b"DATA");
        // Nobody listens on PATH_9: refused at once.
        assert!(connect(&l.port_path(9)).is_err());
        let side = UnixListener::bind(l.port_path(9)).unwrap();
        assert!(connect(&l.port_path(9)).is_ok());
        drop(side);
        std::fs::remove_file(l.port_path(9)).unwrap();
        drop(file);
        assert!(!p.exists(), "the socket file goes with its guard");
        drop(l);
        let long = dir.join("x".repeat(120));
        assert!(check(&long).unwrap_err().to_string().contains("too long"));
        std::fs::remove_dir(&dir).unwrap();
    }
}
