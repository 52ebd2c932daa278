//! Progress lines on stderr, so long downloads, unpacks and boots are never silent.

use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

pub fn step(msg: impl std::fmt::Display) {
    if !QUIET.load(Ordering::Relaxed) {
        eprintln!("[hpmmap-image] {msg}");
    }
}

/// A suffix for temporary names that differs between processes and between calls in one
/// process (tests build images from several threads at once).
pub fn unique() -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
