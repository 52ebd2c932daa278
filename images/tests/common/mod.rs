//! What the image tests share: how a refused build must look.
// Each test file compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

/// Nothing of a refused build is left: no --out, no staging directory beside it.
pub fn assert_nothing_left(out: &Path, what: &str) {
    assert!(!out.exists(), "{what}: left {} behind", out.display());
    let stray: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{what}: left temporaries: {stray:?}");
}

/// A refused build: exit 2, one line on stderr holding each of `expect`, nothing left.
/// Returns the line.
pub fn assert_refused(o: &Output, out: &Path, what: &str, expect: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{what}: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line: {err}");
    for e in expect {
        assert!(lines[0].contains(e), "{what}: expected {e:?} in {err}");
    }
    assert_nothing_left(out, what);
    lines[0].to_string()
}
