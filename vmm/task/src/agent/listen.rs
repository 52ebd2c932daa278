//! Where the agent listens: `vsock:PORT` in the job's VM, `unix:PATH` for tests on the host.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Vsock(u32),
    Unix(PathBuf),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Listen, String> {
        if let Some(p) = s.strip_prefix("vsock:") {
            return p
                .parse()
                .map(Listen::Vsock)
                .map_err(|_| format!("{s:?}: the vsock port must be a number (vsock:52)"));
        }
        if let Some(p) = s.strip_prefix("unix:").filter(|p| !p.is_empty()) {
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        Err(format!("{s:?}: expected vsock:PORT or unix:PATH"))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Vsock(p) => write!(f, "vsock:{p}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

pub enum Listener {
    Vsock(OwnedFd),
    Unix(UnixListener),
}

impl Listener {
    pub fn bind(at: &Listen) -> io::Result<Listener> {
        match at {
            Listen::Vsock(port) => crate::sys::vsock_listen(*port).map(Listener::Vsock),
            Listen::Unix(path) => UnixListener::bind(path).map(Listener::Unix),
        }
    }

    /// The next connection as a stream socket. A vsock connection is carried in a UnixStream
    /// too: both are connected SOCK_STREAM sockets, and read, write and shutdown (all the
    /// agent calls) are the same system calls whatever the address family.
    pub fn accept(&self) -> io::Result<UnixStream> {
        match self {
            Listener::Vsock(fd) => crate::sys::accept(fd).map(UnixStream::from),
            Listener::Unix(l) => l.accept().map(|(s, _)| s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_and_bad_ones_say_why() {
        assert_eq!("vsock:52".parse(), Ok(Listen::Vsock(52)));
        assert_eq!(
            "unix:/run/a.sock".parse(),
            Ok(Listen::Unix("/run/a.sock".into()))
        );
        assert_eq!(Listen::Vsock(52).to_string(), "vsock:52");
        for bad in ["vsock:x", "vsock:", "unix:", "tcp:1", "52"] {
            let e = bad.parse::<Listen>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}
