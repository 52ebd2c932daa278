//! The workloads compute correct results: run through the real binary (ranks are forked
//! processes, which a multi-threaded test process should not fork itself).

use std::path::Path;
use std::process::Command;

use hpmmap_bench::hugepages::{HugePool, POOL_2M};
use hpmmap_bench::report::WorkloadReport;

fn run(args: &[&str]) -> (i32, WorkloadReport) {
    let out = Command::new(env!("CARGO_BIN_EXE_hpmmap-workload"))
        .args(args)
        .output()
        .expect("running hpmmap-workload");
    let text = String::from_utf8_lossy(&out.stdout);
    let report = WorkloadReport::parse(&text).unwrap_or_else(|e| {
        panic!(
            "{args:?}: {e}\nstdout:\n{text}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

fn detail_f(r: &WorkloadReport, k: &str) -> f64 {
    r.detail(k)
        .unwrap_or_else(|| panic!("no {k}"))
        .parse()
        .unwrap()
}

#[test]
fn cg_converges_to_the_known_solution_on_one_and_on_three_ranks() {
    let (rc, r) = run(&[
        "cg",
        "--mem-per-rank",
        "1M",
        "--mode",
        "plain",
        "--tol",
        "1e-10",
    ]);
    assert_eq!(rc, 0);
    assert!(r.valid);
    assert!(detail_f(&r, "residual") <= 1e-10);
    assert!(detail_f(&r, "err_max") < 1e-7, "{:?}", r.detail);
    let iters = detail_f(&r, "cg_iters") as usize;
    assert!(iters > 5 && iters < 200 && iters == r.iter_secs.len());

    // Three ranks: halo exchange and allreduce through the shared region; the global
    // grid is three times as deep and must still converge to all ones.
    let (rc, r3) = run(&[
        "cg",
        "--ranks",
        "3",
        "--mem-per-rank",
        "1M",
        "--mode",
        "thp",
        "--tol",
        "1e-10",
    ]);
    assert_eq!(rc, 0);
    assert!(r3.valid && r3.ranks == 3);
    assert!(detail_f(&r3, "err_max") < 1e-7);
    let grid = r3.detail("grid").unwrap().to_string();
    let one = r.detail("grid").unwrap().to_string();
    let z = |g: &str| g.rsplit('x').next().unwrap().parse::<f64>().unwrap();
    assert_eq!(z(&grid), 3.0 * z(&one), "{grid} vs {one}");
}

#[test]
fn cg_stopped_early_fails_its_verification() {
    let (rc, r) = run(&["cg", "--mem-per-rank", "1M", "--iters", "3", "--tol", "0"]);
    assert_eq!(rc, 1);
    assert!(!r.valid);
    assert_eq!(r.iter_secs.len(), 3);
    assert!(detail_f(&r, "residual") > 1e-6);
}

#[test]
fn stream_checksums_match_the_scalar_replay() {
    let (rc, r) = run(&[
        "stream",
        "--ranks",
        "2",
        "--mem-per-rank",
        "6M",
        "--iters",
        "4",
        "--mode",
        "populate",
    ]);
    assert_eq!(rc, 0);
    assert!(r.valid);
    assert_eq!(detail_f(&r, "rel_err"), 0.0);
    assert!(r.figure > 0.0 && r.unit == "GB/s");
    assert_eq!(r.iter_secs.len(), 4);
}

#[test]
fn gups_passes_the_hpcc_verification() {
    let (rc, r) = run(&[
        "gups",
        "--ranks",
        "2",
        "--mem-per-rank",
        "2M",
        "--iters",
        "4",
    ]);
    assert_eq!(rc, 0);
    assert!(r.valid);
    assert_eq!(r.detail("errors"), Some("0"));
    // 2 ranks × 2^18 entries × 4 updates each.
    assert_eq!(r.detail("updates"), Some("2097152"));
    assert_eq!(r.detail("table_entries"), Some("524288"));
}

#[test]
fn faults_counts_one_fault_per_4k_page_and_few_with_huge_pages() {
    let thp_never = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .map(|s| s.contains("[never]") || s.contains("[always]"))
        .unwrap_or(true);
    let (rc, r) = run(&[
        "faults",
        "--mem-per-rank",
        "4M",
        "--iters",
        "5",
        "--mode",
        "plain",
    ]);
    assert_eq!(rc, 0);
    assert_eq!(r.detail("pages_per_cycle"), Some("1024"));
    if thp_never {
        hpmmap_testkit::not_applicable(
            hpmmap_testkit::Tier::Root,
            "plain-page fault count",
            "THP is not in madvise mode",
        );
    } else {
        assert!(
            r.minflt >= 5 * 1024,
            "{} faults for 5 × 1024 pages",
            r.minflt
        );
        assert!(r.minflt < 5 * 1024 + 64, "{} faults", r.minflt);
    }
    assert!(detail_f(&r, "p99_ns") >= r.figure);

    if std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| !s.contains("[never]"))
    {
        let (_, t) = run(&[
            "faults",
            "--mem-per-rank",
            "4M",
            "--iters",
            "5",
            "--mode",
            "thp",
        ]);
        assert!(
            t.minflt < 5 * 256,
            "THP: {} faults for 5 × 1024 pages",
            t.minflt
        );
    } else {
        hpmmap_testkit::not_applicable(
            hpmmap_testkit::Tier::Root,
            "THP fault count",
            "THP disabled",
        );
    }

    let dir = Path::new(POOL_2M);
    match HugePool::reserve(dir, 4) {
        Ok(_pool) => {
            let (rc, h) = run(&[
                "faults",
                "--mem-per-rank",
                "4M",
                "--iters",
                "5",
                "--mode",
                "hugetlb",
            ]);
            assert_eq!(rc, 0);
            // 2 huge pages per 4 MiB cycle, plus a few faults of the process itself.
            assert!(
                h.minflt >= 10 && h.minflt < 40,
                "hugetlb: {} faults",
                h.minflt
            );
        }
        Err(e) => hpmmap_testkit::skip(
            hpmmap_testkit::Tier::Hugetlb,
            "hugetlb fault count",
            format!("cannot grow the 2 MiB pool: {e}"),
        ),
    }
}

#[test]
fn bad_arguments_exit_2_with_the_flag_named() {
    for (args, needle) in [
        (vec!["cg", "--mode", "huge"], "--mode"),
        (vec!["cg", "--mem-per-rank", "12Q"], "--mem-per-rank"),
        (vec!["cg", "--ranks", "0"], "--ranks"),
        (vec!["cg", "--tol=-1"], "--tol"),
        (vec!["nosuch"], "nosuch"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_hpmmap-workload"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Job images start the workload without arguments; the VM runner passes them through the
/// guest kernel's command line into the environment (`hpmmap_workload_args`).
#[test]
fn arguments_come_from_the_environment_only_without_command_line_ones() {
    let bin = env!("CARGO_BIN_EXE_hpmmap-workload");
    let out = Command::new(bin)
        .env(
            "hpmmap_workload_args",
            "faults,--mem-per-rank,4M,--iters,2,--mode,plain,--tol,0",
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let r = WorkloadReport::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(r.workload, "faults");
    assert_eq!(r.mem_per_rank, 4 << 20);
    assert_eq!(r.iter_secs.len(), 2);
    // Given arguments win over the variable.
    let out = Command::new(bin)
        .args(["gups", "--mem-per-rank", "1M", "--iters", "1"])
        .env("hpmmap_workload_args", "faults")
        .output()
        .unwrap();
    let r = WorkloadReport::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(r.workload, "gups");
    // A bad word in the variable is a bad argument like any other.
    let out = Command::new(bin)
        .env("hpmmap_workload_args", "faults,--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
