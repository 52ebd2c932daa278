//! The host side: `hpmmap-task` connects to the agent in the job's VM, asks it to run one
//! task, and stands in for that task on the host: its stdin, stdout, stderr, signals and
//! exit status are the task's.

pub mod connect;
pub mod pmifd;
mod session;
pub mod signals;

pub use session::run;

use thiserror::Error;

/// The channel failed: no status from the task (the client exits 255).
#[derive(Debug, Error)]
#[error("{0}")]
pub struct ChannelError(pub String);

impl From<crate::protocol::FrameError> for ChannelError {
    fn from(e: crate::protocol::FrameError) -> ChannelError {
        ChannelError(e.to_string())
    }
}
