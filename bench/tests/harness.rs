//! The harness starts and stops the competing workloads and leaves no process behind;
//! end to end it writes the table, JSON and plot; interrupted, it cleans up and writes
//! nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hpmmap_bench::competitor::{self, builds_done, group_members, BuildLoop, Competitor};

/// The end-to-end runs grow and restore the shared 2 MiB pool: one at a time.
static POOL_LOCK: Mutex<()> = Mutex::new(());

/// A scratch directory removed when the test ends.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("hpmmap-bench-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// Processes whose environment carries `mark` (all descendants of a marked command).
fn marked_processes(mark: &str) -> Vec<i32> {
    let needle = mark.as_bytes();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == needle) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            if !zombie {
                pids.push(pid);
            }
        }
    }
    pids
}

/// A small real C project: a few translation units and a Makefile.
fn tiny_tree(dir: &Path) -> PathBuf {
    let src = dir.join("tiny-src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4 {
        std::fs::write(
            src.join(format!("u{i}.c")),
            format!("int f{i}(int x) {{ int s = 0; for (int k = 0; k < x; k++) s += k * {i}; return s; }}\n"),
        )
        .unwrap();
    }
    std::fs::write(
        src.join("main.c"),
        "int f0(int);int f1(int);int f2(int);int f3(int);\nint main(void){return (f0(3)+f1(3)+f2(3)+f3(3)) & 1;}\n",
    )
    .unwrap();
    std::fs::write(
        src.join("Makefile"),
        "OBJS = main.o u0.o u1.o u2.o u3.o\nprog: $(OBJS)\n\t$(CC) -O2 -o $@ $(OBJS)\n%.o: %.c\n\t$(CC) -O2 -c -o $@ $<\nclean:\n\trm -f prog $(OBJS)\n",
    )
    .unwrap();
    src
}

fn nr_hugepages() -> String {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
        .unwrap_or_default()
}

#[test]
fn competitor_group_is_stopped_with_every_member_even_one_ignoring_sigterm() {
    competitor::become_subreaper();
    let dir = tempdir("group");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("sleep 300 & (trap '' TERM; sleep 300; sleep 300) & sh -c 'sleep 300' & wait");
    let mut c = Competitor::start("tree", cmd, &[], &dir.join("log")).unwrap();
    let pgid = c.pgid();
    let deadline = Instant::now() + Duration::from_secs(5);
    while group_members(pgid).len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(group_members(pgid).len() >= 5, "{:?}", group_members(pgid));
    assert!(c.is_running());
    let t0 = Instant::now();
    c.stop().unwrap();
    assert!(
        group_members(pgid).is_empty(),
        "left: {:?}",
        group_members(pgid)
    );
    // The SIGTERM-proof member needed the SIGKILL after the grace period.
    assert!(t0.elapsed() >= Duration::from_secs(2));
    assert!(!c.is_running());
}

#[test]
fn dropping_a_competitor_stops_it() {
    competitor::become_subreaper();
    let dir = tempdir("drop");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg("sleep 300 & sleep 300 & wait");
    let c = Competitor::start("drop", cmd, &[], &dir.join("log")).unwrap();
    let pgid = c.pgid();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!group_members(pgid).is_empty());
    drop(c);
    assert!(group_members(pgid).is_empty());
}

#[test]
fn stress_ng_profile_starts_and_stops() {
    if !competitor::have("stress-ng") {
        hpmmap_testkit::skip(
            hpmmap_testkit::Tier::Tools,
            "stress_ng_profile_starts_and_stops",
            "stress-ng is not installed (apt-get install stress-ng)",
        );
        return;
    }
    competitor::become_subreaper();
    let dir = tempdir("stress");
    let mut c = Competitor::start(
        "stress-ng",
        competitor::stress_command("32m", "16m"),
        &[],
        &dir.join("log"),
    )
    .unwrap();
    let pgid = c.pgid();
    // The parent plus its vm and mmap workers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while group_members(pgid).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(group_members(pgid).len() >= 3, "{:?}", group_members(pgid));
    c.stop().unwrap();
    assert!(group_members(pgid).is_empty());
}

#[test]
fn build_loop_builds_a_real_tree_repeatedly_and_stops() {
    if !competitor::have("make") || !competitor::have("cc") {
        hpmmap_testkit::skip(
            hpmmap_testkit::Tier::Tools,
            "build_loop_builds_a_real_tree_repeatedly_and_stops",
            "make / cc not installed",
        );
        return;
    }
    competitor::become_subreaper();
    let dir = tempdir("build");
    let src = tiny_tree(&dir);
    let b = BuildLoop {
        src,
        obj: dir.join("obj"),
        jobs: 2,
    };
    assert!(!b.is_kernel_tree());
    b.prepare().unwrap();
    let log = dir.join("build.log");
    let mut c = Competitor::start("build", b.command(), &[], &log).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while builds_done(&log).0 < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        builds_done(&log).0 >= 2,
        "log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(builds_done(&log).1, 0);
    let pgid = c.pgid();
    c.stop().unwrap();
    assert!(group_members(pgid).is_empty());
}

fn bench_cmd(out: &Path, cache: &Path, src: &Path, mark: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hpmmap-bench"));
    c.arg("run")
        .args(["--quick", "--build-src"])
        .arg(src)
        .arg("--out")
        .arg(out)
        .args([
            "--stress-vm-bytes",
            "64m",
            "--stress-mmap-bytes",
            "32m",
            "--warmup",
            "0.5",
        ])
        .args(extra)
        .env("HPMMAP_CACHE", cache)
        .env("HPMMAP_WORKLOAD_BIN", env!("CARGO_BIN_EXE_hpmmap-workload"))
        .env("HPMMAP_BENCH_TEST_MARK", mark)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[test]
fn harness_end_to_end_writes_table_json_and_plot_and_leaves_nothing() {
    if !competitor::have("stress-ng") || !competitor::have("make") {
        hpmmap_testkit::skip(
            hpmmap_testkit::Tier::Tools,
            "harness_end_to_end_writes_table_json_and_plot_and_leaves_nothing",
            "stress-ng or make missing",
        );
        return;
    }
    let _g = POOL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("e2e");
    let src = tiny_tree(&dir);
    let mark = format!("HPMMAP_BENCH_TEST_MARK=e2e-{}", std::process::id());
    let pool_before = nr_hugepages();
    let out = bench_cmd(
        &dir.join("out"),
        &dir.join("cache"),
        &src,
        mark.split_once('=').unwrap().1,
        &[
            "--reps",
            "1",
            "--workloads",
            "cg,faults",
            "--configs",
            "populate,hugetlb",
            "--profiles",
            "iso,A,B",
            "--mem-per-rank",
            "2M",
            "--iters",
            "60",
        ],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr:\n{err}");
    assert!(err.contains("[12/12"), "progress lines missing:\n{err}");
    assert!(
        marked_processes(&mark).is_empty(),
        "left behind: {:?}",
        marked_processes(&mark)
    );
    assert_eq!(nr_hugepages(), pool_before, "2 MiB pool not restored");

    let md = std::fs::read_to_string(dir.join("out/results.md")).unwrap();
    assert!(md.contains("**Platform:**") && md.contains("cores"), "{md}");
    assert!(md.contains("VM rows absent") || md.contains("VM"), "{md}");
    assert!(md.contains("## cg") && md.contains("## faults"), "{md}");
    assert!(
        md.contains("| populate | B |") && md.contains("| hugetlb | iso |"),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/results.json")).unwrap())
            .unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 2 * 3);
    for r in rows {
        assert_eq!(r["runs"], 1);
        assert_eq!(r["runs_failed"], 0, "{r}");
        assert_eq!(r["all_valid"], true, "{r}");
        if r["profile"] == "iso" {
            assert_eq!(r["slowdown"], 1.0);
        }
    }
    assert_eq!(json["runs"].as_array().unwrap().len(), 12);
    let svg = std::fs::read_to_string(dir.join("out/results.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // One bar per (workload, configuration, profile).
    assert_eq!(svg.matches("<title>").count(), 12);
    let built = std::fs::read_to_string(dir.join("out/logs/build-0.log")).unwrap_or_default();
    assert!(built.contains("BUILD-DONE rc=0"), "build log: {built}");
}

#[test]
fn sigterm_mid_run_stops_everything_and_writes_no_results() {
    if !competitor::have("stress-ng") || !competitor::have("make") {
        hpmmap_testkit::skip(
            hpmmap_testkit::Tier::Tools,
            "sigterm_mid_run_stops_everything_and_writes_no_results",
            "stress-ng or make missing",
        );
        return;
    }
    let _g = POOL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir("sigterm");
    let src = tiny_tree(&dir);
    let mark = format!("HPMMAP_BENCH_TEST_MARK=sig-{}", std::process::id());
    let pool_before = nr_hugepages();
    let mut child = bench_cmd(
        &dir.join("out"),
        &dir.join("cache"),
        &src,
        mark.split_once('=').unwrap().1,
        &[
            "--reps",
            "50",
            "--workloads",
            "cg",
            "--configs",
            "hugetlb,thp",
            "--profiles",
            "B",
            "--mem-per-rank",
            "4M",
        ],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    // Wait until profile B's competitors run, then interrupt.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && !(dir.join("out/logs/stress-ng.log").exists() && marked_processes(&mark).len() > 4)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        marked_processes(&mark).len() > 4,
        "competitors never started"
    );
    // SAFETY: kill touches none of our memory; `child` is not reaped yet (wait is below),
    // so its pid still names the harness we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        marked_processes(&mark).is_empty(),
        "left behind: {:?}",
        marked_processes(&mark)
    );
    assert_eq!(nr_hugepages(), pool_before, "2 MiB pool not restored");
    assert!(!dir.join("out/results.md").exists());
    assert!(!dir.join("out/results.json").exists());
}

#[test]
fn bad_harness_arguments_exit_2() {
    for (args, needle) in [
        (vec!["run", "--configs", "thp,bogus"], "--configs"),
        (vec!["run", "--profiles", "C"], "--profiles"),
        (vec!["run", "--workloads", "hpl"], "--workloads"),
        (vec!["run", "--reps", "0"], "--reps"),
        (vec!["run", "--build-src", "/nonexistent"], "--build-src"),
        (vec!["run", "--configs", "thp,vm"], "--configs"),
        (vec!["run", "--lab"], "--lab"),
        (
            vec!["run", "--configs", "vm-thp", "--lab-mem-per-rank", "2G"],
            "--lab-mem-per-rank",
        ),
        (
            vec!["run", "--configs", "vm-thp", "--lab-reps", "0"],
            "--lab-reps",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_hpmmap-bench"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}"
        );
    }
}
