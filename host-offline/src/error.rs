//! Error type of the library. The classification drives the binary's exit status: input
//! errors are found before anything on the host is touched, so they always mean "host
//! unchanged".

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flag value, unknown node, request that can never fit, missing kernel support,
    /// not root, foreign state file: detected before any write.
    #[error("{0}")]
    Input(String),
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("{path}: unexpected content {content:?}: {why}")]
    Parse {
        path: PathBuf,
        content: String,
        why: String,
    },
    #[error("state file {path}: {why}")]
    StateIo { path: PathBuf, why: String },
    /// SIGINT or SIGTERM: the operation stopped and undid what it could.
    #[error("stopped by {}; this run's changes were undone", crate::stop::signal_name(*.signal))]
    Interrupted { signal: i32 },
}

impl Error {
    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }

    /// True when the failure was detected before the host was changed.
    pub fn is_input(&self) -> bool {
        matches!(self, Error::Input(_))
    }

    /// The status a process ends with for this error when it is not an input error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Input(_) => 2,
            Error::Interrupted { signal } => (128 + signal) as u8,
            _ => 1,
        }
    }

    /// True for a write the kernel gave up on at the time limit (see `deadline`).
    pub fn timed_out(&self) -> bool {
        matches!(self, Error::Write { source, .. } if source.kind() == io::ErrorKind::TimedOut)
    }

    /// The errno of an I/O failure, when there is one (EBUSY from a block that refuses to
    /// go offline is an expected outcome, not a crash).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Read { source, .. } | Error::Write { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The C library's text for an errno, without Rust's " (os error N)" suffix.
pub fn strerror(errno: i32) -> String {
    let full = io::Error::from_raw_os_error(errno).to_string();
    match full.rfind(" (os error ") {
        Some(i) => full[..i].to_string(),
        None => full,
    }
}
