//! Reaching the agent: through the VMM's hybrid vsock socket (Firecracker's convention:
//! `CONNECT <port>\n`, answered `OK <host port>\n`, then the socket is a byte stream to the
//! guest's listener), or straight to an agent's Unix socket in tests.

use super::ChannelError;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// The guest port hpmmap-agent listens on.
pub const DEFAULT_PORT: u32 = 52;
/// How long the VMM may take to answer CONNECT (it answers once the guest accepted).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longer than any `OK <u32>` answer.
const MAX_ANSWER: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// hpmmap-vmm's `--vsock PATH` socket and the guest port.
    Vsock { path: PathBuf, port: u32 },
    /// hpmmap-agent's `--listen unix:PATH`.
    Unix(PathBuf),
}

pub fn connect(t: &Target) -> Result<UnixStream, ChannelError> {
    let path = match t {
        Target::Vsock { path, .. } | Target::Unix(path) => path,
    };
    let mut s = UnixStream::connect(path)
        .map_err(|e| ChannelError(format!("cannot connect to {}: {e}", path.display())))?;
    if let Target::Vsock { path, port } = t {
        let fail =
            |what: String| ChannelError(format!("{} (CONNECT {port}): {what}", path.display()));
        s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(|e| fail(e.to_string()))?;
        s.write_all(format!("CONNECT {port}\n").as_bytes())
            .map_err(|e| fail(e.to_string()))?;
        // One byte at a time: what follows the newline is already the agent's.
        let mut line = Vec::new();
        loop {
            let mut b = [0u8];
            match s.read(&mut b) {
                Ok(0) => {
                    return Err(fail(format!(
                        "the VMM closed the connection (no listener on the port?){}",
                        if line.is_empty() {
                            String::new()
                        } else {
                            format!(" after {:?}", String::from_utf8_lossy(&line))
                        }
                    )))
                }
                Ok(_) if b[0] == b'\n' => break,
                Ok(_) => line.push(b[0]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fail(format!("no answer: {e}"))),
            }
            if line.len() > MAX_ANSWER {
                return Err(fail("the answer is not a line".into()));
            }
        }
        let answer = String::from_utf8_lossy(&line);
        let ok = answer
            .strip_prefix("OK ")
            .is_some_and(|n| n.trim().parse::<u32>().is_ok());
        if !ok {
            return Err(fail(format!("the VMM answered {answer:?}")));
        }
        s.set_read_timeout(None).map_err(|e| fail(e.to_string()))?;
    }
    Ok(s)
}
