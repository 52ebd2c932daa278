//! The hpmmap semantics suite in a real guest: guest-kmod/lab/run.sh boots the nested lab's
//! L1 (`hpmmap-lab run --hpmmap-ko`: Debian's 6.1 kernel under QEMU/TCG, hpmmap.ko built
//! for it, a `memmap=` pool on its command line) and runs `hpmmap-test suite` through a
//! static `hpmmap-run` in it (guest-kmod/lab/suite.sh), then a two-node NUMA L1.
//! A qemu-tier skip (hpmmap-testkit: a failure where HPMMAP_REQUIRE lists qemu) where QEMU
//! with igb, the compiler or the kernel packages are missing.

use std::path::PathBuf;
use std::process::Command;

/// Every case the guest must report as passed; a case that vanished is a failure too.
const SUITE_CASES: &[&str] = &[
    "insmod-bad-params",
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
    "page-tables",
    "exec-cleanup",
    "killed-mid-mmap",
    "pin-user-pages",
    // issue 12: quarantine, offsets, interfaces, madvise/munmap like Linux, failure
    // injection, the randomized syscall driver
    "pin-held-past-munmap",
    "vmsplice-then-munmap",
    "pin-part-of-mapped-block",
    "pin-split-fixed-shrink",
    "vmsplice-part-of-mapped-block",
    "pin-then-dontneed-or-brk-shrink",
    "mremap-grow-small-own-offsets",
    "o_direct-then-munmap",
    "io_uring-fixed-buffers",
    "fork-child-keeps-copy",
    "offsets-recycled",
    "interfaces",
    "madvise-munmap-mprotect-like-linux",
    "coredump-like-linux",
    "unmap-pieces-cost",
    "fail-inject",
    "syscall-fuzz",
    "pool-exhausted",
    "bad-input",
    // issue 15.3 (counters per rank) and issue 12 (MADV_HWPOISON refused)
    "rank-counters",
    "rank-records-bounded-and-private",
    "madvise-hwpoison-refused",
    "launcher-rank-line",
    "zero-faults-1g",
    "page-size-2M",
    "launcher-bad-flag",
    "launcher-missing-program",
    "rmmod-while-in-use",
    "pool-full-at-end",
    "none-registered-at-end",
    "quarantine-empty-at-end",
    "rmmod",
    "kernel-log-clean",
];

const NUMA_CASES: &[&str] = &[
    "numa-two-node-pool",
    "numa-node-1",
    "numa-node-0",
    "fork",
    "pool-full-at-end",
    "rmmod",
    "kernel-log-clean",
];

enum Lab {
    Skipped(String),
    Ran {
        ok: bool,
        report: Vec<String>,
        log: String,
    },
}

fn run_lab(mode: &str) -> Lab {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guest-lab");
    let res = Command::new("bash")
        .arg(root.join("guest-kmod/lab/run.sh"))
        .arg(mode)
        .arg(&out)
        .output()
        .expect("run guest-kmod/lab/run.sh");
    let stdout = String::from_utf8_lossy(&res.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&res.stderr).into_owned();
    if res.status.code() == Some(3) {
        let reason = stderr
            .lines()
            .find(|l| l.starts_with("SKIP:"))
            .unwrap_or("SKIP: lab prerequisites missing")
            .to_string();
        return Lab::Skipped(reason);
    }
    let report = stdout
        .lines()
        .filter(|l| l.starts_with("ok") || l.starts_with("not ok") || l.starts_with('#'))
        .map(str::to_string)
        .collect();
    Lab::Ran {
        ok: res.status.success(),
        report,
        log: format!("{stdout}\n{stderr}"),
    }
}

fn check(mode: &str, cases: &[&str]) {
    let (ok, report, log) = match run_lab(mode) {
        Lab::Skipped(reason) => {
            let reason = reason.trim_start_matches("SKIP:").trim();
            hpmmap_testkit::skip(
                hpmmap_testkit::Tier::Qemu,
                &format!("guest suite {mode}"),
                reason,
            );
            return;
        }
        Lab::Ran { ok, report, log } => {
            hpmmap_testkit::ran(hpmmap_testkit::Tier::Qemu, &format!("guest suite {mode}"));
            (ok, report, log)
        }
    };
    println!("[{mode}]\n{}", report.join("\n"));
    let failed: Vec<&String> = report.iter().filter(|l| l.starts_with("not ok")).collect();
    assert!(
        failed.is_empty(),
        "{mode}: guest cases failed: {failed:#?}\n{log}"
    );
    for case in cases {
        let want = format!("ok - {case}");
        assert!(
            report
                .iter()
                .any(|l| *l == want || l.starts_with(&format!("{want} "))),
            "{mode}: case {case} not reported as passed\n{log}"
        );
    }
    assert!(ok, "{mode}: guest job failed\n{log}");
}

/// One test for both boots: they share the lab's build directory.
#[test]
fn semantics_suite_and_numa_pool_in_qemu_guests() {
    check("suite", SUITE_CASES);
    check("numa", NUMA_CASES);
}
