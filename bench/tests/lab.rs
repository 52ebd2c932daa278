//! The VM configurations: the lab output parser on a captured real lab run, the command
//! lines the runners build, and one real nested-lab run of vm-thp and vm-hpmmap through the
//! harness. Every figure here is an emulation figure (nested lab under QEMU/TCG): the
//! assertions are about behaviour (faults, verification), never speed.

use std::path::{Path, PathBuf};
use std::process::Command;

use hpmmap_bench::config::{Config, Place, LAB_LABEL};
use hpmmap_bench::lab::{parse_output, LabCell, LabPlan};
use hpmmap_bench::model::{Cell, Profile, WorkloadSize};
use hpmmap_bench::runner::{lab_record, offline_args, LabRunner};
use hpmmap_bench::table::{Header, Results};
use hpmmap_bench::vm::{self, VmError, VmShape};
use hpmmap_bench::workloads::Workload;

/// Real output of `hpmmap-bench run --quick --configs vm-thp,vm-hpmmap --workloads
/// faults,cg --profiles iso,B` on the kvm_pvm development host (nested lab, QEMU/TCG), with
/// the cg size then too small to converge (5 iterations) and one L2 boot that
/// triple-faulted before the retry existed: a success, a workload failure and a VMM failure.
const CAPTURED: &str = include_str!("data/lab-output-kvm-pvm-host.txt");

#[test]
fn parser_reads_a_captured_lab_run() {
    let out = parse_output(CAPTURED).unwrap();
    assert!(out.done);
    assert_eq!(out.runs.len(), 8);
    assert!(out
        .l1
        .contains(&("hugepages_1g".to_string(), "2".to_string())));
    assert_eq!(out.profile_stops.len(), 1);
    assert!(out.profile_stops[0].alive && out.profile_stops[0].profile == Profile::B);

    let records: Vec<_> = out.runs.iter().map(lab_record).collect();
    let find = |p: Profile, w: Workload, c: Config| {
        records
            .iter()
            .find(|r| r.profile == p && r.workload == w && r.config == c)
            .unwrap()
    };
    // hpmmap: verified, no fault in the measured phase, none inside hpmmap mappings, and
    // KVM mapped the guest's RAM with 1 GiB pages.
    for p in [Profile::Iso, Profile::B] {
        let h = find(p, Workload::Faults, Config::VmHpmmap);
        let rep = h.report.as_ref().unwrap();
        assert!(rep.valid);
        assert_eq!(rep.minflt + rep.majflt, 0);
        let info = h.vm.as_ref().unwrap();
        assert_eq!(info.job_runs, "hpmmap");
        assert_eq!(info.job_exit, Some(0));
        assert!(info
            .hpmmap_counters
            .contains(&("faults".to_string(), "0".to_string())));
        assert_eq!(info.vmm.pages_1g, Some(2));
        assert_eq!(h.place, Place::Lab);
    }
    // The guest's THP: first touch faults (one per 2 MiB page here: 16 MiB x 4 cycles).
    let t = find(Profile::Iso, Workload::Faults, Config::VmThp);
    let rep = t.report.as_ref().unwrap();
    assert!(rep.valid);
    assert_eq!(rep.minflt, 32);
    assert_eq!(t.vm.as_ref().unwrap().job_runs, "direct");
    assert!(t.vm.as_ref().unwrap().hpmmap_counters.is_empty());
    // The workload's own failure and the VMM's are failures with their reason.
    let cg = find(Profile::Iso, Workload::Cg, Config::VmHpmmap);
    assert!(cg.report.is_none());
    assert!(
        cg.error.as_deref().unwrap().contains("did not verify"),
        "{:?}",
        cg.error
    );
    let tf = find(Profile::B, Workload::Faults, Config::VmThp);
    assert!(
        tf.error.as_deref().unwrap().contains("exited with 72"),
        "{:?}",
        tf.error
    );

    // The table keeps lab rows apart: no slowdown, labelled, not speed-comparable.
    let header = lab_header();
    let res = Results::build(header, records);
    assert_eq!(res.rows.len(), 8);
    for r in &res.rows {
        assert_eq!(r.place, Place::Lab);
        assert!(!r.speed_comparable);
        assert_eq!(r.measured_on, LAB_LABEL);
        assert_eq!(r.slowdown, None);
    }
    let svg = hpmmap_bench::svg::plot(&res);
    assert!(svg.contains(&hpmmap_bench::svg::escape(LAB_LABEL)));
    assert!(svg.contains("faults / run (measured phase)"));
    assert!(!svg.contains("runtime (s)"));
}

#[test]
fn a_guest_that_ran_without_hpmmap_is_not_a_vm_hpmmap_result() {
    let out = parse_output(CAPTURED).unwrap();
    let thp = out
        .runs
        .iter()
        .find(|r| r.config == Config::VmThp && r.profile == Profile::Iso)
        .unwrap();
    assert!(vm::parse_serial(&thp.serial, Config::VmThp).is_ok());
    assert!(matches!(
        vm::parse_serial(&thp.serial, Config::VmHpmmap),
        Err(VmError::WrongRunner { .. })
    ));
}

fn plan() -> LabPlan {
    let mut sizes = std::collections::BTreeMap::new();
    sizes.insert(
        Workload::Cg,
        WorkloadSize {
            mem_per_rank: 16 << 20,
            iters: 40,
        },
    );
    LabPlan {
        cells: vec![
            LabCell {
                rep: 0,
                profile: Profile::A,
                workload: Workload::Cg,
                config: Config::VmHpmmap,
            },
            LabCell {
                rep: 0,
                profile: Profile::A,
                workload: Workload::Cg,
                config: Config::VmThp,
            },
        ],
        sizes,
        ranks: 1,
        shape: VmShape::default(),
        warmup_secs: 3,
        run_timeout_secs: 300,
        l1_cpus: 2,
    }
}

#[test]
fn runners_build_the_hpmmap_vmm_and_hpmmap_lab_command_lines() {
    let cell = Cell {
        workload: Workload::Faults,
        config: Config::VmHpmmap,
    };
    let size = WorkloadSize {
        mem_per_rank: 64 << 20,
        iters: 8,
    };
    // On a host whose KVM boots Linux: the VM on the ranks' CPUs.
    let shape = VmShape {
        mem_gib: 2,
        vcpus: 1,
        cpu_affinity: Some("1".into()),
    };
    let args = vm::workload_args(cell, &size, 1, &[1]);
    assert_eq!(
        vm::vmm_args(
            Config::VmHpmmap,
            Path::new("/img/vm-hpmmap"),
            &shape,
            &args,
            Path::new("/s/serial.log"),
            Path::new("/s/report.json")
        )
        .unwrap(),
        [
            "--mem", "2G", "--vcpus", "1", "--image", "/img/vm-hpmmap", "--cmdline",
            "hpmmap_workload_args=faults,--ranks,1,--mem-per-rank,67108864,--iters,8,--mode,thp,--tol,0",
            "--serial", "/s/serial.log", "--report", "/s/report.json", "--cpu-affinity", "1"
        ]
    );
    let thp = vm::vmm_args(
        Config::VmThp,
        Path::new("/img/vm-thp"),
        &shape,
        &args,
        Path::new("/s/serial.log"),
        Path::new("/s/report.json"),
    )
    .unwrap();
    assert_eq!(thp[12..], ["--pool", "0", "--cpu-affinity", "1"]);
    assert_eq!(
        vm::image_build_args(Config::VmThp, Path::new("/o/vm-thp"), Path::new("/w")),
        [
            "build",
            "--quiet",
            "--out",
            "/o/vm-thp",
            "--job",
            "/w",
            "--no-hpmmap"
        ]
    );
    assert_eq!(
        vm::image_build_args(Config::VmHpmmap, Path::new("/o/vm-hpmmap"), Path::new("/w")),
        ["build", "--quiet", "--out", "/o/vm-hpmmap", "--job", "/w"]
    );
    assert_eq!(offline_args(true, 2), ["-q", "reserve", "--size", "2G"]);

    // In the lab: one boot with the guest's GiBs as 1 GiB pages, the images, stress-ng and
    // the script added.
    let p = plan();
    let runner = LabRunner {
        lab: "/t/hpmmap-lab".into(),
        bins: "/t".into(),
        images: vec![
            (Config::VmThp, "/i/vm-thp".into()),
            (Config::VmHpmmap, "/i/vm-hpmmap".into()),
        ],
        stress_ng: Some("/usr/bin/stress-ng".into()),
        scratch: "/s".into(),
    };
    let timeout = p.lab_timeout_secs().to_string();
    assert_eq!(
        runner.args(&p),
        [
            "run",
            "--mem",
            "5G",
            "--cpus",
            "2",
            "--hugepages",
            "2",
            "--timeout",
            &timeout,
            "--bins",
            "/t",
            "--work",
            "/s/lab-work",
            "--add",
            "/i/vm-thp:/bench/vm-thp",
            "--add",
            "/i/vm-hpmmap:/bench/vm-hpmmap",
            "--add",
            "/usr/bin/stress-ng:/usr/bin/stress-ng",
            "--add",
            "/s/plan.sh:/bench/plan.sh",
            "--",
            "sh /bench/plan.sh"
        ]
    );
    assert!(p.lab_timeout_secs() >= 2 * 300);
    // The script is valid shell.
    let script = p.script().unwrap();
    let f = std::env::temp_dir().join(format!("hpmmap-bench-plan-{}.sh", std::process::id()));
    std::fs::write(&f, &script).unwrap();
    let st = Command::new("sh").arg("-n").arg(&f).status().unwrap();
    std::fs::remove_file(&f).unwrap();
    assert!(st.success(), "{script}");
    assert!(script.contains("run_one 0 A cg vm-hpmmap '--mem 2G --vcpus 2 --image /bench/vm-hpmmap --cmdline hpmmap_workload_args=cg,"));
}

/// Why the lab cannot run here, if it cannot (the images crate answers for every lab test).
fn skip_reason() -> Option<String> {
    hpmmap_image::qemu::nested_lab_unavailable()
}

/// hpmmap-vmm, hpmmap-image and hpmmap-lab beside this crate's binaries (where the harness
/// looks), built with cargo when `cargo test -p hpmmap-bench` alone did not build them.
fn workspace_tools() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_hpmmap-bench"))
        .parent()
        .unwrap()
        .to_path_buf();
    let have = |n: &str| dir.join(n).is_file();
    if !(have("hpmmap-vmm") && have("hpmmap-image") && have("hpmmap-lab")) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut c = Command::new(cargo);
        c.args(["build", "--quiet", "-p", "hpmmap-vmm", "-p", "hpmmap-image"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        let st = c.status().unwrap();
        assert!(st.success(), "building hpmmap-vmm / hpmmap-image failed");
    }
    dir
}

#[test]
fn real_lab_vm_thp_faults_and_vm_hpmmap_does_not() {
    let test = "real_lab_vm_thp_faults_and_vm_hpmmap_does_not";
    if !hpmmap_testkit::enter(
        hpmmap_testkit::Tier::Lab,
        test,
        skip_reason().map_or(Ok(()), Err),
    ) {
        return;
    }
    let _tools = workspace_tools();
    let out =
        Scratch(std::env::temp_dir().join(format!("hpmmap-bench-lab-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&out.0);
    let out = &out.0;
    let child = Command::new(env!("CARGO_BIN_EXE_hpmmap-bench"))
        .args([
            "run",
            "--quick",
            "--configs",
            "vm-thp,vm-hpmmap",
            "--workloads",
            "faults",
            "--profiles",
            "iso",
            "--lab-reps",
            "1",
            "--out",
        ])
        .arg(out)
        .env("HPMMAP_WORKLOAD_BIN", env!("CARGO_BIN_EXE_hpmmap-workload"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{err}");
    assert!(o.status.success(), "{err}");
    assert!(
        !std::env::temp_dir()
            .join(format!("hpmmap-bench-images-{pid}"))
            .exists(),
        "job images left behind"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let row = |c: &str| rows.iter().find(|r| r["config"] == c).unwrap().clone();
    let (thp, hp) = (row("vm-thp"), row("vm-hpmmap"));
    for r in [&thp, &hp] {
        assert_eq!(r["place"], "lab", "{r}");
        assert_eq!(r["measured_on"], LAB_LABEL);
        assert_eq!(r["speed_comparable"], false);
        assert!(r["slowdown"].is_null());
        assert_eq!(r["runs_failed"], 0, "{r}\n{err}");
        assert_eq!(r["all_valid"], true, "{r}");
    }
    // The behavioural figure: hpmmap's measured phase takes no page fault, the guest's THP
    // takes them on first touch.
    assert_eq!(hp["faults_max"], 0, "{hp}");
    assert_eq!(hp["hpmmap_module_faults_max"], 0, "{hp}");
    assert!(thp["faults_mean"].as_f64().unwrap() > 0.0, "{thp}");
    assert!(hp["kvm_pages_1g_min"].as_u64().unwrap() >= 1, "{hp}");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains(LAB_LABEL) && md.contains("n/a (emulated)"),
        "{md}"
    );
    assert!(out.join("logs/lab-output.txt").is_file());
}

/// A directory removed when the test ends, passed or not.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn render_rewrites_the_table_and_plot_from_results_json() {
    let out = parse_output(CAPTURED).unwrap();
    let records: Vec<_> = out.runs.iter().map(lab_record).collect();
    let header = lab_header();
    let dir =
        Scratch(std::env::temp_dir().join(format!("hpmmap-bench-render-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(
        dir.0.join("results.json"),
        Results::build(header, records).to_json(),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_hpmmap-bench"))
        .arg("render")
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(dir.0.join("results.md")).unwrap();
    assert!(md.contains(&format!("## VM rows: {LAB_LABEL}")), "{md}");
    let svg = std::fs::read_to_string(dir.0.join("results.svg")).unwrap();
    assert!(svg.contains("faults / run (measured phase)"));
    // No results file: a bad argument.
    let o = Command::new(env!("CARGO_BIN_EXE_hpmmap-bench"))
        .args(["render", "/nonexistent-hpmmap-dir"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// The header of a quick lab pass on this machine, for results built from captured runs.
fn lab_header() -> Header {
    serde_json::from_value(serde_json::json!({
        "platform": hpmmap_bench::platform::Platform::detect(),
        "started_utc": "", "finished_utc": "", "command": "", "note": null,
        "load_start": "", "load_end": "", "ranks": 1, "reps": 1, "sizes": [],
        "competitors": [], "builds_completed": [], "vm_rows_absent": null,
        "vm_place": LAB_LABEL, "lab": null, "notes": [], "quick": true
    }))
    .unwrap()
}
