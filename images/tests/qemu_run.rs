//! What `qemu::run` does when QEMU itself dies on a signal, and `qemu::run_watched` when the
//! guest stops beating. Neither can be provoked in a real QEMU on demand (QEMU/TCG 10.0's
//! `iotlb_to_section` assertion was seen once in CI, in the firmware of a 2-vCPU L1; an L1
//! asleep for good once in a stack lab run), so a stand-in emulator (a shell script named
//! by HPMMAP_QEMU) does what they did: SIGABRT after QEMU's stderr line, or a heartbeat that
//! stops while the process lives on. Its own file so that HPMMAP_QEMU is set in no other
//! test's process; one test, so that no two cases set it at once.

use hpmmap_image::qemu::{self, QemuError};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A fresh directory `hpmmap-qemu-<pid>-<name>` holding a stand-in emulator, `fake-qemu`,
/// that runs `body` with `$dir` set to that directory; HPMMAP_QEMU names it from now on.
fn stand_in(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hpmmap-qemu-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("fake-qemu");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ndir='{}'\n{body}\n", dir.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::env::set_var("HPMMAP_QEMU", &script);
    dir
}

/// The body of a stand-in that crashes on its first `crashes` starts, then writes a console
/// and exits with `exit`. It counts its starts in `$dir/starts`.
fn crashing_body(crashes: u32, exit: i32) -> String {
    format!(
        r#"ulimit -c 0
n=$(( $(cat "$dir/starts" 2>/dev/null || echo 0) + 1 ))
echo $n > "$dir/starts"
for a; do case $a in file:*) log=${{a#file:}};; esac; done
echo "console of start $n" > "$log"
if [ $n -le {crashes} ]; then
    echo "qemu-system-x86_64: system/physmem.c:2678: iotlb_to_section: Assertion failed." >&2
    kill -ABRT $$
fi
echo "HPMMAP-JOB-EXIT 0" >> "$log"
exit {exit}"#
    )
}

fn starts(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("starts"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn case(name: &str, crashes: u32, exit: i32) -> (PathBuf, Result<qemu::Finished, QemuError>) {
    let dir = stand_in(name, &crashing_body(crashes, exit));
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

    // A guest that beats 3 times and then lives on silently: killed about `stall` after
    // its last beat, long before the timeout, with the heartbeat file named.
    let (dir4, beats) = beating_qemu(
        "stall",
        "for i in 1 2 3; do echo . >> \"$alive\"; sleep 0.3; done; sleep 60",
    );
    let start = std::time::Instant::now();
    let r = qemu::run_watched(&beats.0, Duration::from_secs(50), &beats.1, Some(&beats.2));
    let took = start.elapsed();
    match r {
        Err(e @ QemuError::Stalled { .. }) => {
            assert!(e.to_string().contains("alive.log"), "{e}");
        }
        other => panic!("expected Stalled, got {:?}", other.map(|f| f.console)),
    }
    assert!(
        took < Duration::from_secs(20),
        "stopped after {took:?}, not at once"
    );
    // A guest that beats until it ends is never taken for a stalled one.
    let (dir5, beats) = beating_qemu(
        "alive",
        "for i in 1 2 3 4 5 6 7 8; do echo . >> \"$alive\"; sleep 0.5; done",
    );
    let r = qemu::run_watched(&beats.0, Duration::from_secs(50), &beats.1, Some(&beats.2));
    assert!(r.is_ok(), "{:?}", r.err());
    for d in [dir4, dir5] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A stand-in emulator running `body` with `$alive` set to its heartbeat file, and the
/// arguments, console path and 2 s heartbeat watch to run it with.
fn beating_qemu(name: &str, body: &str) -> (PathBuf, (Vec<OsString>, PathBuf, qemu::Heartbeat)) {
    let dir = stand_in(
        name,
        &format!("alive=\"$dir/alive.log\"\n: > \"$alive\"\n{body}"),
    );
    let heartbeat = qemu::Heartbeat {
        file: dir.join("alive.log"),
        stall: Duration::from_secs(2),
    };
    (
        dir.clone(),
        (Vec::new(), dir.join("console.log"), heartbeat),
    )
}
