//! Helpers for the cross-layer tests: what the lab needs here, the guest test program, and
//! reading the `key=value` lines and hpmmap counters that lab scenarios print.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use hpmmap_image;
pub use hpmmap_testkit::Tier;

/// Whether the lab scenario `test` runs here: `None` records a run, `Some(why)` a lab-tier
/// skip (a failure where HPMMAP_REQUIRE lists lab).
pub fn lab_ready(test: &str, why_not: Option<String>) -> bool {
    hpmmap_testkit::enter(Tier::Lab, test, why_not.map_or(Ok(()), Err))
}

/// One more test of a shared lab boot ran (the boot itself was counted once by its tests).
pub fn lab_ran(test: &str) {
    hpmmap_testkit::ran(Tier::Lab, test);
}

/// A lab-tier skip found after the run was counted (an image built without the module).
pub fn lab_skip(test: &str, why: impl std::fmt::Display) {
    hpmmap_testkit::skip(Tier::Lab, test, why);
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Why the nested lab cannot run on this machine, if it cannot.
pub fn lab_skip_reason() -> Option<String> {
    hpmmap_image::qemu::nested_lab_unavailable()
}

/// The directory holding `name` among the lab's binary directories, if it is built.
pub fn built_host_binary(name: &str) -> Result<PathBuf, String> {
    let dirs = hpmmap_image::lab::default_bin_dirs(&workspace_root());
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} is not built (looked in {dirs:?}); cargo build -p {name}"))
}

/// Builds guest-kmod/tests/hpmmap-test.c as a static binary (warnings are errors, as in
/// guest-kmod/lab/run.sh). Err: why it cannot be built here (no C compiler or static libc).
pub fn build_guest_test_program(out: &Path) -> Result<(), String> {
    let ws = workspace_root();
    let cc = ["gcc-12", "gcc", "cc"]
        .into_iter()
        .find(|c| {
            Command::new("sh")
                .args(["-c", &format!("command -v {c} >/dev/null")])
                .status()
                .is_ok_and(|s| s.success())
        })
        .ok_or("no C compiler (gcc) for the guest test program")?;
    let o = Command::new(cc)
        .args(["-O2", "-static", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(ws.join("guest-kmod/module"))
        .arg("-o")
        .arg(out)
        .arg(ws.join("guest-kmod/tests/hpmmap-test.c"))
        .arg("-lpthread")
        .output()
        .map_err(|e| format!("{cc}: {e}"))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        if err.contains("cannot find -lc") || err.contains("cannot find -lpthread") {
            return Err(format!("{cc} has no static libc (libc6-dev)"));
        }
        panic!("hpmmap-test.c does not build:\n{err}");
    }
    Ok(())
}

/// The value of the first `key=value` line of `text`.
pub fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    text.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
}

/// The lines of `text` that start with `prefix`, without it.
pub fn prefixed<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix))
        .collect()
}

/// The counters the job init prints after the job (`hpmmap-init: hpmmap counters: k=v ...`).
pub fn hpmmap_counters(console: &[&str]) -> Option<BTreeMap<String, String>> {
    let line = console
        .iter()
        .find_map(|l| l.split("hpmmap-init: hpmmap counters:").nth(1))?;
    Some(
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_prefixes_and_counters() {
        let text = "a=1\nx: hpmmap-init: hpmmap counters: pool_bytes=1073741824 pool_source=pv@0xfeb00000,page_shift=30\r\nx: other\nb=two words\na=3\n";
        assert_eq!(value(text, "a"), Some("1"));
        assert_eq!(value(text, "b"), Some("two words"));
        assert_eq!(value(text, "c"), None);
        let x = prefixed(text, "x: ");
        assert_eq!(x.len(), 2);
        let c = hpmmap_counters(&x).unwrap();
        assert_eq!(c["pool_bytes"], "1073741824");
        assert_eq!(c["pool_source"], "pv@0xfeb00000,page_shift=30");
        assert!(hpmmap_counters(&["nothing"]).is_none());
    }
}
