//! The job's program: split `--job 'CMD ARGS'` like a shell would, find CMD on the host,
//! and gather what it needs in the guest: nothing for a static binary, its shared
//! libraries and loader (as `ldd` reports them) for a dynamic one.

use crate::elf::{is_elf, Elf};
use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum JobError {
    #[error("--job: empty command")]
    Empty,
    #[error("--job {0:?}: unbalanced quote")]
    Quote(String),
    #[error("--job: program {0:?} not found (no such file, and not in PATH)")]
    NotFound(String),
    #[error("--job: {path}: cannot run it in the guest: {reason}")]
    NotRunnable { path: PathBuf, reason: String },
    #[error("--job: {path} is dynamically linked and its libraries cannot be resolved: {reason}")]
    Libraries { path: PathBuf, reason: String },
}

/// Words of a command line: whitespace separates, single quotes are literal, double
/// quotes allow `\"` and `\\`, a backslash outside quotes escapes the next character.
pub fn split(s: &str) -> Result<Vec<String>, JobError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(JobError::Quote(s.to_string())),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c)
                            }
                            None => return Err(JobError::Quote(s.to_string())),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(JobError::Quote(s.to_string())),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err(JobError::Quote(s.to_string())),
                }
            }
            c => {
                in_word = true;
                cur.push(c)
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    if words.is_empty() {
        return Err(JobError::Empty);
    }
    Ok(words)
}

/// Single-quotes a word for the guest's sh.
pub fn sh_quote(w: &str) -> String {
    if !w.is_empty()
        && w.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&c))
    {
        return w.to_string();
    }
    format!("'{}'", w.replace('\'', r"'\''"))
}

pub fn find_program(name: &str) -> Result<PathBuf, JobError> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(JobError::NotFound(name.to_string()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| JobError::NotFound(name.to_string()))
}

/// A file to place in the guest: its guest path and the host file holding its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    pub guest: String,
    pub host: PathBuf,
}

/// What `prog` needs besides itself: the loader and shared libraries of a dynamic ELF,
/// nothing for a static one or a `#!/bin/sh` script (busybox provides sh).
pub fn runtime_files(prog: &Path) -> Result<Vec<GuestFile>, JobError> {
    let not_runnable = |reason: String| JobError::NotRunnable {
        path: prog.to_path_buf(),
        reason,
    };
    let data = std::fs::read(prog).map_err(|e| not_runnable(e.to_string()))?;
    if data.starts_with(b"#!") {
        let line = data.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let interp = String::from_utf8_lossy(&line[2..]).trim().to_string();
        let first = interp.split_whitespace().next().unwrap_or("");
        return if ["/bin/sh", "/bin/ash", "/bin/busybox"].contains(&first) {
            Ok(vec![])
        } else {
            Err(not_runnable(format!(
                "a script for {first:?}, which the image does not have (only /bin/sh, from busybox)"
            )))
        };
    }
    if !is_elf(&data) {
        return Err(not_runnable(
            "neither an ELF executable nor a #! script".into(),
        ));
    }
    let elf = Elf::parse(&data).map_err(|e| not_runnable(e.to_string()))?;
    if !matches!(elf.e_type(), 2 | 3) {
        return Err(not_runnable("an ELF file that is not an executable".into()));
    }
    if data[18] != 62 {
        return Err(not_runnable("not an x86-64 executable".into()));
    }
    if elf.is_static().map_err(|e| not_runnable(e.to_string()))? {
        return Ok(vec![]);
    }
    shared_libraries(prog)
}

fn shared_libraries(prog: &Path) -> Result<Vec<GuestFile>, JobError> {
    let libs_err = |reason: String| JobError::Libraries {
        path: prog.to_path_buf(),
        reason,
    };
    let out = Command::new("ldd")
        .arg(prog)
        .output()
        .map_err(|e| libs_err(format!("cannot run ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(libs_err(format!("ldd failed: {}", err.trim())));
    }
    let (files, missing) = parse_ldd(&text);
    if !missing.is_empty() {
        return Err(libs_err(format!(
            "not found on this host: {}",
            missing.join(", ")
        )));
    }
    Ok(files)
}

/// (libraries with paths, names ldd could not find) from ldd's output.
pub fn parse_ldd(text: &str) -> (Vec<GuestFile>, Vec<String>) {
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        let path = if let Some((name, rest)) = l.split_once("=>") {
            let rest = rest.trim();
            if rest.starts_with("not found") {
                missing.push(name.trim().to_string());
                continue;
            }
            rest.split_whitespace().next().unwrap_or("")
        } else {
            l.split_whitespace().next().unwrap_or("")
        };
        if path.starts_with('/') {
            files.push(GuestFile {
                guest: path.to_string(),
                host: PathBuf::from(path),
            });
        }
    }
    (files, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(split("a b  c").unwrap(), ["a", "b", "c"]);
        assert_eq!(split(r#"sh -c 'exit 3'"#).unwrap(), ["sh", "-c", "exit 3"]);
        assert_eq!(
            split(r#"x "a \"b\"" c\ d"#).unwrap(),
            ["x", r#"a "b""#, "c d"]
        );
        assert_eq!(split("x ''").unwrap(), ["x", ""]);
        assert!(matches!(split("   "), Err(JobError::Empty)));
        assert!(matches!(split("a 'b"), Err(JobError::Quote(_))));
    }

    #[test]
    fn quotes_round_trip_through_split() {
        for w in ["plain", "with space", "it's", "$HOME", ""] {
            assert_eq!(split(&sh_quote(w)).unwrap(), [w]);
        }
    }

    #[test]
    fn ldd_output() {
        let t = "\tlinux-vdso.so.1 (0x00007ffc)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n\tlibfoo.so.1 => not found\n";
        let (f, m) = parse_ldd(t);
        let g: Vec<&str> = f.iter().map(|f| f.guest.as_str()).collect();
        assert_eq!(
            g,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert_eq!(m, ["libfoo.so.1"]);
    }

    #[test]
    fn host_programs() {
        let t = find_program("true").unwrap();
        let libs = runtime_files(&t).unwrap();
        assert!(libs.iter().any(|f| f.guest.contains("libc.so")), "{libs:?}");
        assert!(matches!(
            find_program("hpmmap-no-such-prog"),
            Err(JobError::NotFound(_))
        ));
        let e = runtime_files(Path::new("/etc/passwd"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/passwd") && e.contains("neither an ELF"),
            "{e}"
        );
    }
}
