//! Confinement of the VMM process for tenants (DESIGN.md, threat model): with `--jail DIR
//! --uid U --gid G [--cgroup PATH]` a keeper process stays root to clean up after the job
//! (`keeper`), and the VMM drops to the job's uid in new namespaces rooted at DIR once its
//! devices are open (`confine`); every thread runs under its seccomp filter (`seccomp`).

pub mod confine;
pub mod keeper;
pub mod layout;
pub mod seccomp;

use std::path::PathBuf;
use thiserror::Error;

/// Locked memory the VMM may hold beyond guest RAM after the drop (eventfds, VFIO).
pub const MEMLOCK_SLACK: u64 = 64 << 20;
/// memory.max of the VMM's cgroup: its own overhead only (tens of MiB measured; guest RAM
/// is hugetlb or device memory, which memory.max does not count).
pub const VMM_MEMORY_MAX: u64 = 1 << 30;

/// `--jail DIR --uid U --gid G [--cgroup PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailOptions {
    pub dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub cgroup: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum JailError {
    #[error("--jail {0}: exists and is not empty (the job's root must start empty)")]
    NotEmpty(PathBuf),
    #[error("--jail {0}: {1}")]
    Dir(PathBuf, String),
    #[error("--cgroup {path}: {why}")]
    Cgroup { path: PathBuf, why: String },
    #[error("--jail: {0} failed: {1}")]
    Sys(&'static str, std::io::Error),
}

impl JailError {
    /// Errors the user can fix on the command line or the host (exit 2).
    pub fn is_input(&self) -> bool {
        !matches!(self, JailError::Sys(..))
    }
}
