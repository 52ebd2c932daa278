//! Every sysfs and procfs access of the tool goes through a `Host`: two roots (what `/sys` and
//! `/proc` are; a recorded tree in tests) and a writer. Reads go straight to the files; writes
//! go through `SysWriter` so that tests can put a simulation of the kernel's reaction to a
//! write behind it (a recorded tree only stores what was written).

use crate::deadline;
use crate::error::{Error, Result};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

pub trait SysWriter: Send + Sync {
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;

    /// A write the kernel may work on indefinitely (a memory block going offline): given up
    /// after `limit` with an error of kind TimedOut.
    fn write_within(&self, path: &Path, value: &str, limit: Duration) -> io::Result<()> {
        let _ = limit;
        self.write(path, value)
    }
}

/// Writes the way the kernel expects an attribute to be written: one write(2) of the whole
/// value on an existing file. Never creates a file: an attribute that is not there means
/// the kernel lacks the feature, and creating it would hide that.
pub struct KernelWriter;

impl SysWriter for KernelWriter {
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)?;
        // One write(2), never retried: write_all would restart a write the kernel gave up
        // with EINTR (the deadline's signal), and an attribute takes the value whole.
        let n = f.write(value.as_bytes())?;
        if n != value.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("the kernel took {n} of {} bytes", value.len()),
            ));
        }
        Ok(())
    }

    fn write_within(&self, path: &Path, value: &str, limit: Duration) -> io::Result<()> {
        deadline::within(limit, || self.write(path, value))
    }
}

/// How long one memory block may take to go offline before the tool gives up on it. A
/// block with only movable pages goes offline in well under a second; one with a pinned
/// page never does.
pub const DEFAULT_OFFLINE_LIMIT: Duration = Duration::from_secs(20);

pub struct Host {
    sys: PathBuf,
    proc: PathBuf,
    writer: Box<dyn SysWriter>,
    quiet: bool,
    offline_limit: Duration,
    /// Set (to the signal number) when the user asked the tool to stop.
    stop: Option<&'static AtomicI32>,
}

impl Host {
    pub fn new(sys: impl Into<PathBuf>, proc: impl Into<PathBuf>) -> Self {
        Host {
            sys: sys.into(),
            proc: proc.into(),
            writer: Box::new(KernelWriter),
            quiet: false,
            offline_limit: DEFAULT_OFFLINE_LIMIT,
            stop: None,
        }
    }

    pub fn with_offline_limit(mut self, limit: Duration) -> Self {
        self.offline_limit = limit;
        self
    }

    pub fn offline_limit(&self) -> Duration {
        self.offline_limit
    }

    /// The flag a SIGINT / SIGTERM handler sets (see `stop`).
    pub fn with_stop(mut self, flag: &'static AtomicI32) -> Self {
        self.stop = Some(flag);
        self
    }

    /// The signal that asked the tool to stop, if one did.
    pub fn stop_requested(&self) -> Option<i32> {
        self.stop
            .map(|f| f.load(Ordering::SeqCst))
            .filter(|&s| s != 0)
    }

    pub fn with_writer(mut self, writer: Box<dyn SysWriter>) -> Self {
        self.writer = writer;
        self
    }

    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    pub fn sys_root(&self) -> &Path {
        &self.sys
    }

    pub fn proc_root(&self) -> &Path {
        &self.proc
    }

    /// True when this is the live kernel's sysfs (root privileges then matter).
    pub fn is_live(&self) -> bool {
        self.sys == Path::new("/sys")
    }

    pub fn sys(&self, rel: &str) -> PathBuf {
        self.sys.join(rel)
    }

    pub fn proc(&self, rel: &str) -> PathBuf {
        self.proc.join(rel)
    }

    pub fn read(&self, path: &Path) -> Result<String> {
        fs::read_to_string(path)
            .map(|s| s.trim_end().to_string())
            .map_err(|source| Error::Read {
                path: path.to_path_buf(),
                source,
            })
    }

    pub fn read_u64(&self, path: &Path) -> Result<u64> {
        let s = self.read(path)?;
        s.trim().parse().map_err(|_| Error::Parse {
            path: path.to_path_buf(),
            content: s.clone(),
            why: "expected a decimal number".into(),
        })
    }

    pub fn write(&self, path: &Path, value: &str) -> Result<()> {
        self.writer
            .write(path, value)
            .map_err(|source| write_error(path, value, source))
    }

    /// A write the kernel may never finish (see `SysWriter::write_within`), bounded by the
    /// host's offline limit.
    pub fn write_bounded(&self, path: &Path, value: &str) -> Result<()> {
        self.writer
            .write_within(path, value, self.offline_limit)
            .map_err(|source| write_error(path, value, source))
    }

    /// Names in a directory, sorted; a missing directory reads as empty.
    pub fn list(&self, dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = match fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }

    /// Progress and diagnostics for long operations, on stderr.
    pub fn progress(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("hpmmap-offline: {}", msg.as_ref());
        }
    }
}

fn write_error(path: &Path, value: &str, source: io::Error) -> Error {
    Error::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    }
}

/// Numbers a kernel list may name (nodes and CPUs): below 65536. Without a bound a list of
/// `0-4294967295` expanded into 16 GiB (fuzz finding units-parse_list-unbounded).
pub const LIST_LIMIT: u32 = 1 << 16;

/// Parses a kernel list such as `0-3,8,10-11`; `None` for a malformed list or a number
/// from [`LIST_LIMIT`] up.
pub fn parse_list(text: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b >= LIST_LIMIT {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok().filter(|&n| n < LIST_LIMIT)?),
        }
    }
    Some(out)
}

/// Numeric suffix of names like `node3` or `memory120`.
pub fn suffix_number(name: &str, prefix: &str) -> Option<u64> {
    let rest = name.strip_prefix(prefix)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse() {
        assert_eq!(parse_list("0").unwrap(), vec![0]);
        assert_eq!(parse_list("0-2,5\n").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_list("").unwrap(), Vec::<u32>::new());
        assert!(parse_list("3-1").is_none());
        assert!(parse_list("x").is_none());
    }

    /// fuzz/seeds/units/units-parse_list-unbounded: the range expanded into 16 GiB.
    #[test]
    fn lists_are_bounded() {
        assert!(parse_list("0-4294967295").is_none());
        assert!(parse_list("65536").is_none());
        assert!(parse_list("0,65536-65537").is_none());
        assert_eq!(parse_list("0-65535").unwrap().len(), 1 << 16);
    }

    #[test]
    fn suffixes() {
        assert_eq!(suffix_number("node12", "node"), Some(12));
        assert_eq!(suffix_number("node", "node"), None);
        assert_eq!(suffix_number("nodex", "node"), None);
        assert_eq!(suffix_number("memory7", "node"), None);
    }
}
