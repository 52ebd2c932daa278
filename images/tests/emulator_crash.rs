//! What `qemu::run` does when QEMU itself dies on a signal. The real crash (QEMU/TCG 10.0's
//! `iotlb_to_section` assertion, seen once in CI in the firmware of a 2-vCPU L1) cannot be
//! provoked on demand, so a stand-in emulator (a shell script named by HPMMAP_QEMU)
//! aborts itself the way QEMU's assertion does: SIGABRT after one stderr line. Its own
//! file so that HPMMAP_QEMU is set in no other test's process.

use hpmmap_image::qemu::{self, QemuError};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A stand-in emulator that crashes on its first `crashes` starts, then writes a console
/// and exits with `exit`. It counts its starts in `dir/starts`.
fn fake_qemu(dir: &Path, crashes: u32, exit: i32) -> PathBuf {
    let script = dir.join("fake-qemu");
    let text = format!(
        r#"#!/bin/sh
ulimit -c 0
n=$(( $(cat '{dir}/starts' 2>/dev/null || echo 0) + 1 ))
echo $n > '{dir}/starts'
for a; do case $a in file:*) log=${{a#file:}};; esac; done
echo "console of start $n" > "$log"
if [ $n -le {crashes} ]; then
    echo "qemu-system-x86_64: system/physmem.c:2678: iotlb_to_section: Assertion failed." >&2
    kill -ABRT $$
fi
echo "HPMMAP-JOB-EXIT 0" >> "$log"
exit {exit}
"#,
        dir = dir.display()
    );
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn starts(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("starts"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn case(name: &str, crashes: u32, exit: i32) -> (PathBuf, Result<qemu::Finished, QemuError>) {
    let dir = std::env::temp_dir().join(format!("hpmmap-crash-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_var("HPMMAP_QEMU", fake_qemu(&dir, crashes, exit));
    let log = dir.join("console.log");
    let args: Vec<OsString> = vec!["-serial".into(), format!("file:{}", log.display()).into()];
    let r = qemu::run(&args, Duration::from_secs(30), &log);
    (dir, r)
}

#[test]
fn an_emulator_crash_boots_once_more_and_only_once() {
    // One crash: the second start's console comes back, the first is kept beside it.
    let (dir, r) = case("once", 1, 0);
    let f = r.expect("a single QEMU crash is retried");
    assert_eq!(starts(&dir), 2);
    assert!(f.console.contains("console of start 2"), "{}", f.console);
    assert_eq!(qemu::job_status(&f.console), Some(0));
    let kept = std::fs::read_to_string(dir.join("console.crash-1.log")).unwrap();
    assert!(kept.contains("console of start 1"), "{kept}");
    let err = std::fs::read_to_string(dir.join("console.crash-1.stderr")).unwrap();
    assert!(err.contains("iotlb_to_section"), "{err}");

    // Two crashes: an error that says the emulator crashed twice, no third start.
    let (dir2, r) = case("twice", 2, 0);
    match r {
        Err(e @ QemuError::CrashedTwice { signal, .. }) => {
            assert_eq!(signal, libc::SIGABRT);
            let msg = e.to_string();
            assert!(msg.contains("crashed twice"), "{msg}");
            assert!(msg.contains("iotlb_to_section"), "{msg}");
        }
        other => panic!("expected CrashedTwice, got {:?}", other.map(|f| f.console)),
    }
    assert_eq!(starts(&dir2), 2);

    // An exit status QEMU chose is the guest's or the command line's business: no retry.
    let (dir3, r) = case("exit", 0, 1);
    assert!(
        matches!(r, Err(QemuError::Failed { code: Some(1), .. })),
        "{:?}",
        r.map(|f| f.console)
    );
    assert_eq!(starts(&dir3), 1);

    for d in [dir, dir2, dir3] {
        let _ = std::fs::remove_dir_all(d);
    }
}
