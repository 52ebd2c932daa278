//! The hpmmap semantics suite in a real guest: builds hpmmap.ko against Debian's 6.1
//! kernel, boots it under QEMU/TCG with a `memmap=` pool and runs `hpmmap-test suite`
//! through a static `hpmmap-run` (guest-kmod/lab/run.sh). Prints `SKIP: <reason>` and
//! passes where QEMU, the compiler or the kernel packages are missing.

use std::path::PathBuf;
use std::process::Command;

/// Every case the guest must report as passed; a case that vanished is a failure too.
const CASES: &[&str] = &[
    "bad-ioctl",
    "zero-and-reuse",
    "large-pages",
    "map-fixed",
    "partial-munmap",
    "mprotect",
    "mremap",
    "madvise-dontneed",
    "brk",
    "threads",
    "tlb-shootdown",
    "fork",
    "exit-cleanup",
    "exec-cleanup",
    "killed-mid-mmap",
    "pin-user-pages",
    "pool-exhausted",
    "bad-input",
    "zero-faults-1g",
    "page-size-2M",
    "launcher-bad-flag",
    "launcher-missing-program",
    "pool-full-at-end",
    "none-registered-at-end",
    "rmmod",
    "kernel-log-clean",
];

#[test]
fn semantics_suite_in_a_qemu_guest() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guest-lab");
    let res = Command::new("bash")
        .arg(root.join("guest-kmod/lab/run.sh"))
        .arg("suite")
        .arg(&out)
        .output()
        .expect("run guest-kmod/lab/run.sh");
    let stdout = String::from_utf8_lossy(&res.stdout);
    let stderr = String::from_utf8_lossy(&res.stderr);
    if res.status.code() == Some(3) {
        let reason = stderr
            .lines()
            .find(|l| l.starts_with("SKIP:"))
            .unwrap_or("SKIP: lab prerequisites missing");
        println!("{reason}");
        return;
    }
    let report: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("ok") || l.starts_with("not ok") || l.starts_with('#'))
        .collect();
    println!("{}", report.join("\n"));
    let failed: Vec<&&str> = report.iter().filter(|l| l.starts_with("not ok")).collect();
    assert!(
        failed.is_empty(),
        "guest cases failed: {failed:#?}\n{stderr}"
    );
    for case in CASES {
        let want = format!("ok - {case}");
        assert!(
            report
                .iter()
                .any(|l| *l == want || l.starts_with(&format!("{want} "))),
            "case {case} not reported as passed\n{stdout}\n{stderr}"
        );
    }
    assert!(
        res.status.success(),
        "guest job failed: {:?}\n{stderr}",
        res.status
    );
}
