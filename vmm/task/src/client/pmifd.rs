//! The task's PMI descriptor on the host: `srun --mpi=pmi2` makes slurmstepd hand each task
//! a PMI socket whose number is in `PMI_FD`. The client takes it over and relays it to the
//! task in the VM ([`crate::pmi`]).
//!
//! A `PMI_FD` that names no open socket or pipe is refused (exit 2, one line) rather than
//! passed on as a number: in the guest that number would name nothing, or worse, another
//! of the task's descriptors, and the rank would fail far from the cause.

use crate::sys::{self, FdKind};
use std::os::fd::{FromRawFd, OwnedFd};

/// The descriptor `PMI_FD` (the value of this process's variable) names, made this
/// process's own; an error names the problem.
pub fn take(value: &str) -> Result<OwnedFd, String> {
    let fd: i32 = match value.parse() {
        Ok(n) if n >= 3 => n,
        Ok(n) if n >= 0 => {
            return Err(format!(
                "PMI_FD={value}: a standard stream, not a PMI descriptor to relay"
            ))
        }
        _ => return Err(format!("PMI_FD={value}: not a descriptor number")),
    };
    match sys::fd_kind(fd) {
        Ok(FdKind::Socket | FdKind::Pipe) => {}
        Ok(FdKind::Other(what)) => {
            return Err(format!(
                "PMI_FD={value}: descriptor {fd} is {what}, not a socket or pipe"
            ))
        }
        Err(e) => {
            return Err(format!(
                "PMI_FD={value}: descriptor {fd} is not open in hpmmap-task ({e})"
            ))
        }
    }
    // SAFETY: fd is open (fstat succeeded), was inherited from slurmstepd, and nothing else
    // in this process owns it: this is the one place that takes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
