//! The nested KVM lab, for real: L1 is Debian's kernel under QEMU/TCG with SVM+NPT, VT-d
//! and an igb SR-IOV NIC. One boot runs lab/scenario.sh; each test asserts its part.
//! Figures here are emulation figures (nested lab under QEMU/TCG), never hardware ones.

use hpmmap_image::lab::{self, parse_add, Lab, LabConfig, LabError, LabOutput};
use hpmmap_testkit::Tier;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const LAB: &str = env!("CARGO_BIN_EXE_hpmmap-lab");
const SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/scenario.sh");

/// Whether the nested lab can run `test` here; a lab-tier skip (hpmmap-testkit) when not.
fn lab_ready(test: &str) -> bool {
    let ready = hpmmap_image::qemu::nested_lab_unavailable().map_or(Ok(()), Err);
    hpmmap_testkit::enter(Tier::Lab, test, ready)
}

fn scenario() -> Option<&'static LabOutput> {
    static RUN: OnceLock<Result<LabOutput, String>> = OnceLock::new();
    if !lab_ready("lab scenario") {
        return None;
    }
    let r = RUN.get_or_init(|| {
        let cfg = LabConfig {
            mem: 6 << 30,
            timeout: Duration::from_secs(400),
            adds: vec![parse_add(&format!("{SCENARIO}:/root/scenario.sh")).unwrap()],
            ..LabConfig::default()
        };
        let lab = Lab::prepare(cfg).map_err(|e| e.to_string())?;
        // L1's kernel under QEMU/TCG's nested SVM oopses now and then while its KVM runs
        // a guest (vmm/README.md, Known issue): up to MAX_BOOTS boots.
        lab.run_rebooting("sh /root/scenario.sh", lab::MAX_BOOTS)
            .map_err(|e| e.to_string())
    });
    match r {
        Ok(o) => {
            println!(
                "lab scenario (nested lab under QEMU/TCG, {:.1} s):\n{}",
                o.elapsed.as_secs_f64(),
                o.output
            );
            Some(o)
        }
        Err(e) => panic!("lab scenario failed: {e}"),
    }
}

fn value<'a>(o: &'a LabOutput, key: &str) -> &'a str {
    o.output
        .lines()
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| {
            panic!(
                "no {key}= in the scenario output:\n{}\nconsole:\n{}",
                o.output, o.console
            )
        })
}

#[test]
fn kvm_with_nested_paging_in_l1() {
    let Some(o) = scenario() else { return };
    assert_eq!(value(o, "kvm_dev"), "yes");
    assert_eq!(value(o, "npt"), "Y");
}

#[test]
fn one_gib_pages_reserved_in_l1() {
    let Some(o) = scenario() else { return };
    let n: u32 = value(o, "hugepages_1g").parse().unwrap();
    assert!(n >= 1, "{}", o.output);
}

#[test]
fn igb_vf_binds_to_vfio_pci_and_its_group_appears() {
    let Some(o) = scenario() else { return };
    assert_eq!(value(o, "totalvfs"), "7");
    assert_eq!(value(o, "driver"), "vfio-pci");
    assert_eq!(value(o, "node"), "yes");
    assert_eq!(
        value(o, "numvfs_after"),
        "0",
        "the scenario leaves no VF behind"
    );
}

#[test]
fn kvm_payload_on_one_1g_page_reads_pages_1g() {
    let Some(o) = scenario() else { return };
    let probe: Vec<&str> = o
        .output
        .lines()
        .filter(|l| l.starts_with("hpmmap-kvm-probe:"))
        .collect();
    assert_eq!(probe.len(), 2, "{}", o.output);
    let stat = |line: &str, k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line}"))
    };
    assert!(
        probe[0].contains("backing 1G hugetlb touched 262144 of 262144"),
        "{}",
        probe[0]
    );
    assert!(stat(probe[0], "pages_1g") >= 1, "{}", probe[0]);
    // The counter is real: the same payload on 4 KiB pages maps no 1 GiB page.
    assert!(probe[1].contains("backing 4K"), "{}", probe[1]);
    assert_eq!(stat(probe[1], "pages_1g"), 0, "{}", probe[1]);
    assert!(stat(probe[1], "pages_4k") > 0, "{}", probe[1]);
}

#[test]
fn command_status_comes_back() {
    let Some(o) = scenario() else { return };
    assert_eq!(o.status, 7, "the scenario ends with exit 7");
}

/// `hpmmap-lab check` is the answer the shell labs and the vmm tests ask: ready here (the
/// tier gate above says the lab can run), and with no QEMU on PATH it says so and exits 1.
#[test]
fn cli_check_says_whether_the_lab_can_run() {
    if !lab_ready("cli_check_says_whether_the_lab_can_run") {
        return;
    }
    let o = Command::new(LAB).arg("check").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_eq!(out.trim(), "hpmmap-lab: ready");
    let o = Command::new(LAB)
        .arg("check")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("cannot run here: qemu-system-x86_64 is not installed"),
        "{out}"
    );
}

#[test]
fn cli_runs_a_command_and_refuses_bad_input() {
    if !lab_ready("cli_runs_a_command_and_refuses_bad_input") {
        return;
    }
    // A command that does not exist in L1: refused before anything boots.
    let o = Command::new(LAB)
        .args(["run", "--", "hpmmap-no-such-tool", "-x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("\"hpmmap-no-such-tool\" does not exist in the lab"),
        "{err}"
    );
    for (args, expect) in [
        (vec!["run", "--mem", "lots", "--", "true"], "--mem lots"),
        (
            vec!["run", "--mem", "2G", "--hugepages", "2", "--", "true"],
            "too small",
        ),
        (vec!["run", "--cpus", "0", "--", "true"], "--cpus 0"),
        (vec!["run", "--pmem", "1536M", "--", "true"], "--pmem 1536M"),
        (
            vec![
                "run",
                "--mem",
                "4G",
                "--hugepages",
                "0",
                "--pmem",
                "3G",
                "--",
                "true",
            ],
            "needs L1 RAM up to 7 GiB",
        ),
        (
            vec!["run", "--pmem", "3G", "--pmem-ranges", "2", "--", "true"],
            "--pmem-ranges 2: --pmem 3072M does not split into 2 ranges of whole GiB",
        ),
        (
            vec!["run", "--pmem-ranges", "2", "--", "true"],
            "--pmem-ranges 2: needs --pmem",
        ),
        (
            vec![
                "run",
                "--mem",
                "6G",
                "--hugepages",
                "0",
                "--pmem",
                "4G",
                "--pmem-ranges",
                "2",
                "--",
                "true",
            ],
            "needs L1 RAM up to 9 GiB (--mem 7G or more)",
        ),
        (
            vec!["run", "--add", "/no/such:/x", "--", "true"],
            "--add /no/such:/x",
        ),
        (
            vec!["run", "--stall-secs", "3", "--", "true"],
            "--stall-secs 3: must be at least 10",
        ),
    ] {
        let o = Command::new(LAB).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    // A hang is killed at the timeout and the console is shown; its logs stay in --work.
    let work = std::env::temp_dir().join(format!("hpmmap-lab-timeout-{}", std::process::id()));
    let o = Command::new(LAB)
        .args(["run", "--work"])
        .arg(&work)
        .args([
            "--mem",
            "2G",
            "--hugepages",
            "0",
            "--timeout",
            "8",
            "--",
            "sleep 600",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("did not finish within 8 s") && err.contains("console log"),
        "{err}"
    );
    assert!(
        work.join("console.log").is_file(),
        "the console log is kept"
    );
    assert!(
        !work.join("initramfs.cpio").exists(),
        "the initramfs is not"
    );
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn lab_library_rejects_a_command_missing_from_l1() {
    if !lab_ready("lab_library_rejects_a_command_missing_from_l1") {
        return;
    }
    let lab = Lab::prepare(LabConfig {
        mem: 2 << 30,
        hugepages_1g: 0,
        ..LabConfig::default()
    })
    .unwrap();
    assert!(lab.lab_bins().iter().any(|b| b == "hpmmap-kvm-probe"));
    let e = lab.run("/lab/bin/hpmmap-nothing --flag").unwrap_err();
    assert!(matches!(e, LabError::UnknownCommand(..)), "{e}");
    // Builtins, applets and lab binaries pass the check (without booting: empty is refused).
    assert!(matches!(
        lab.run("   ").unwrap_err(),
        LabError::EmptyCommand
    ));
}

/// The whole stack: a job image built here boots as L2 under hpmmap-vmm inside L1, the
/// hpmmap module gets its pool from the PV device, and the job's status comes back through
/// the PV device's EXIT register as hpmmap-vmm's exit status (0 and non-zero).
#[test]
fn job_image_boots_as_l2_under_hpmmap_vmm() {
    if !lab_ready("job_image_boots_as_l2_under_hpmmap_vmm") {
        return;
    }
    let ws = hpmmap_image::workspace::root();
    let dirs = hpmmap_image::lab::default_bin_dirs(&ws);
    if !dirs.iter().any(|d| d.join("hpmmap-vmm").is_file()) {
        let why =
            format!("hpmmap-vmm is not built (looked in {dirs:?}); cargo build -p hpmmap-vmm");
        hpmmap_testkit::skip(Tier::Lab, "job_image_boots_as_l2_under_hpmmap_vmm", why);
        return;
    }
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("lab-l2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let image = |name: &str, job: &str| {
        let out = base.join(name);
        let o = Command::new(env!("CARGO_BIN_EXE_hpmmap-image"))
            .args(["build", "--quiet", "--out"])
            .arg(&out)
            .args(["--job", job])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        parse_add(&format!("{}:/{name}", out.display())).unwrap()
    };
    let ok = image("ok", "hpmmap-workload stream --mem-per-rank 24M --iters 2");
    let with_hpmmap = hpmmap_image::manifest::Manifest::read(&base.join("ok"))
        .unwrap()
        .hpmmap;
    let fail = image(
        "fail",
        "/bin/busybox sh -c 'echo failing on purpose; exit 3'",
    );
    let lab = Lab::prepare(LabConfig {
        mem: 6 << 30,
        timeout: Duration::from_secs(500),
        adds: vec![ok, fail],
        bin_dirs: dirs,
        ..LabConfig::default()
    })
    .unwrap();
    let o = lab
        .run("hpmmap-vmm --image /ok --mem 2G; echo ok_status=$?; hpmmap-vmm --image /fail --mem 2G; echo fail_status=$?")
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "L2 under hpmmap-vmm (nested lab under QEMU/TCG):\n{}",
        o.output
    );
    assert_eq!(value(&o, "ok_status"), "0", "{}", o.output);
    assert_eq!(value(&o, "fail_status"), "3", "{}", o.output);
    assert!(
        o.output
            .lines()
            .any(|l| l.contains("HPMMAP-RESULT v=1 workload=stream")
                && l.contains(" mem_per_rank=25165824 iters=2 ")
                && l.contains(" valid=1 ")),
        "{}",
        o.output
    );
    assert!(o.output.contains("failing on purpose"), "{}", o.output);
    // With the module in the image, the PV device gives it its pool.
    let mode = if with_hpmmap {
        "job runs hpmmap"
    } else {
        "job runs direct"
    };
    assert!(o.output.contains(mode), "{}", o.output);
    assert!(
        o.output.contains("pages_1g=2"),
        "guest RAM on 1 GiB pages: {}",
        o.output
    );
    std::fs::remove_dir_all(&base).unwrap();
}

/// An L1 that stops beating is killed long before its timeout and, with `--boots 2`, booted
/// once more. The stop is made by hand (the command kills L1's heartbeat loop and sleeps):
/// the real one, every L1 vCPU asleep for good under nested SVM, cannot be had on demand.
#[test]
fn cli_kills_an_l1_that_stops_beating_and_boots_it_again() {
    if !lab_ready("cli_kills_an_l1_that_stops_beating_and_boots_it_again") {
        return;
    }
    let kill_beat = "for p in /proc/[0-9]*; do \
                     [ \"$(readlink $p/fd/1)\" = /dev/ttyS2 ] && kill -9 ${p#/proc/}; \
                     done; echo beat-stopped; sleep 600";
    let start = std::time::Instant::now();
    let o = Command::new(LAB)
        .args([
            "run",
            "--mem",
            "2G",
            "--hugepages",
            "0",
            "--timeout",
            "300",
            "--stall-secs",
            "12",
            "--boots",
            "2",
            "--",
            kill_beat,
        ])
        .output()
        .unwrap();
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("L1 itself failed on boot 1"),
        "the first stop boots L1 again: {err}"
    );
    assert!(
        err.contains("the guest stopped: its heartbeat") && err.contains("alive.log"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(200),
        "killed at the stall, not at the 300 s timeout: {took:?}"
    );
}
