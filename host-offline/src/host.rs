//! Every sysfs and procfs access of the tool goes through a `Host`: two roots (what `/sys` and
//! `/proc` are; a recorded tree in tests) and a writer. Reads go straight to the files; writes
//! go through `SysWriter` so that tests can put a simulation of the kernel's reaction to a
//! write behind it (a recorded tree only stores what was written).

use crate::error::{Error, Result};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub trait SysWriter: Send + Sync {
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
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
        f.write_all(value.as_bytes())
    }
}

pub struct Host {
    sys: PathBuf,
    proc: PathBuf,
    writer: Box<dyn SysWriter>,
    quiet: bool,
}

impl Host {
    pub fn new(sys: impl Into<PathBuf>, proc: impl Into<PathBuf>) -> Self {
        Host {
            sys: sys.into(),
            proc: proc.into(),
            writer: Box::new(KernelWriter),
            quiet: false,
        }
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
            .map_err(|source| Error::Write {
                path: path.to_path_buf(),
                value: value.to_string(),
                source,
            })
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

/// Parses a kernel list such as `0-3,8,10-11`.
pub fn parse_list(text: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
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

    #[test]
    fn suffixes() {
        assert_eq!(suffix_number("node12", "node"), Some(12));
        assert_eq!(suffix_number("node", "node"), None);
        assert_eq!(suffix_number("nodex", "node"), None);
        assert_eq!(suffix_number("memory7", "node"), None);
    }
}
