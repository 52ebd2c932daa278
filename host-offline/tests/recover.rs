//! `recover` (issue 13.5) against one tree: the recorded one-node host (hugetlb, with the
//! kernel's reaction SIMULATED by tests/common/fake_kernel.rs) merged with hpmmap-vf's
//! hand-built ConnectX-6 tree whose job 'crashed1' (pid 9999, gone) left VF 0000:3b:00.3 on
//! vfio-pci (its writes SIMULATED by hpmmap-vf's sim), plus jail directories and cgroups in
//! the layout of docs/architecture.md (Interface 5).

mod common;

use common::fake_kernel::FakeKernel;
use common::trees::{self, Tree};
use hpmmap_offline::host::Host;
use hpmmap_offline::recover::{self, RecoverOptions};
use hpmmap_offline::reserve::{self, Placement, ReserveOptions};
use hpmmap_offline::size::GIB;
use hpmmap_offline::state;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

fn host(t: &Tree, k: &FakeKernel) -> Host {
    Host::new(t.sys(), t.proc())
        .with_writer(k.writer())
        .quiet(true)
}

fn opts(size_gib: u64, job: &str) -> ReserveOptions {
    ReserveOptions {
        size_gib,
        placement: Placement::Node(0),
        keep_bytes: GIB,
        allow_partial: false,
        offline_blocks: true,
        job: Some(job.into()),
    }
}

fn rec_opts(t: &Tree, job: Option<&str>) -> RecoverOptions {
    RecoverOptions {
        job: job.map(String::from),
        run_dir: t.path("run/hpmmap"),
        cgroup_dir: t.path("sys/fs/cgroup/hpmmap"),
    }
}

/// The one-node host with the VF tree of a crashed job merged in.
fn node_with_crashed_vf(tag: &str) -> Tree {
    let t = trees::one_node(tag);
    let vf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmm/vf/tests/fixtures/connectx6-crashed");
    hpmmap_vf::sim::copy_tree(&vf, t.dir.path()).unwrap();
    std::fs::create_dir_all(t.path("sys/class/iommu")).unwrap();
    t.write("proc/sys/kernel/random/boot_id", "boot-2\n");
    t
}

fn vf_driver(t: &Tree, vf: &str) -> Option<String> {
    std::fs::read_link(t.path(&format!("sys/bus/pci/devices/{vf}/driver")))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

#[test]
fn recover_puts_back_what_dead_jobs_left_and_leaves_live_jobs_alone() {
    let t = node_with_crashed_vf("recover");
    let k = FakeKernel::new(t.dir.path());
    k.with(|m| {
        m.free_ranges.insert(0, 12);
    });
    let h = host(&t, &k);
    let vf = hpmmap_vf::sim::sim_sysfs(t.dir.path());
    // A job of the previous boot, then this boot's jobs.
    t.write("proc/sys/kernel/random/boot_id", "boot-1\n");
    reserve::reserve(&h, &t.state(), &opts(1, "oldboot")).unwrap();
    t.write("proc/sys/kernel/random/boot_id", "boot-2\n");
    reserve::reserve(&h, &t.state(), &opts(2, "crashed1")).unwrap();
    reserve::reserve(&h, &t.state(), &opts(2, "alive")).unwrap();
    reserve::reserve(&h, &t.state(), &opts(1, "epilog")).unwrap();
    assert_eq!(t.nr(0), 6);
    // 'alive' runs: its VMM maps its two pages, its cgroup has the process.
    trees::add_vm(&t, 5001, 0, 2);
    t.write(
        "proc/5001/cmdline",
        "hpmmap-vmm\0--job\0alive\0--mem\x002G\0",
    );
    t.write("sys/fs/cgroup/hpmmap/alive/cgroup.procs", "5001\n");
    t.write("run/hpmmap/jail/alive/vmm.pid", "5001\n");
    // 'crashed1' (kill -9 after its VF claim): jail and cgroups left behind, empty.
    t.write("run/hpmmap/jail/crashed1/vmm.pid", "9999 123\n");
    t.write("run/hpmmap/jail/crashed1/root/dev/null", "");
    t.write("sys/fs/cgroup/hpmmap/crashed1/cgroup.procs", "");
    t.write("sys/fs/cgroup/hpmmap/crashed1/vcpu0/cgroup.procs", "");
    // A jail of a job that held nothing else.
    t.write("run/hpmmap/jail/gone2/vmm.pid", "9998\n");
    assert_eq!(vf_driver(&t, "0000:3b:00.3").as_deref(), Some("vfio-pci"));

    let r = recover::recover(&h, &t.state(), &vf, &rec_opts(&t, None)).unwrap();
    let text = r.lines.join("\n");
    assert!(!r.failed, "{text}");
    // The VF is back where it was before the job (unbound), the record gone.
    assert_eq!(vf_driver(&t, "0000:3b:00.3"), None, "{text}");
    assert!(!t.path("run/hpmmap/vf/0000:3b:00.3.claim").exists());
    assert!(
        text.contains("VF 0000:3b:00.3: job 'crashed1' (pid 9999) is gone"),
        "{text}"
    );
    // Reservations: crashed1 (VMM gone) and oldboot (earlier boot) released; alive kept
    // (its VMM runs); epilog kept (nothing says it is dead until its epilog names it).
    assert_eq!(r.jobs_released, ["crashed1", "oldboot"], "{text}");
    assert!(
        text.contains("job crashed1: its VMM is gone; released 2 GiB"),
        "{text}"
    );
    assert!(
        text.contains("job oldboot: reserved in an earlier boot; released 1 GiB"),
        "{text}"
    );
    assert!(r.jobs_live.contains(&"alive".to_string()), "{text}");
    assert_eq!(t.nr(0), 3);
    let st = state::load(&t.state()).unwrap().unwrap();
    assert_eq!(
        st.jobs.keys().map(String::as_str).collect::<Vec<_>>(),
        ["alive", "epilog"]
    );
    // Jails and cgroups of the dead jobs are gone, the live job's stay.
    assert!(!t.path("run/hpmmap/jail/crashed1").exists(), "{text}");
    assert!(!t.path("run/hpmmap/jail/gone2").exists(), "{text}");
    assert!(!t.path("sys/fs/cgroup/hpmmap/crashed1").exists(), "{text}");
    assert!(t.path("run/hpmmap/jail/alive/vmm.pid").exists());
    assert!(t.path("sys/fs/cgroup/hpmmap/alive/cgroup.procs").exists());

    // The epilog of 'epilog' names it; 'alive' still runs and is refused its release.
    let r = recover::recover(&h, &t.state(), &vf, &rec_opts(&t, Some("epilog"))).unwrap();
    assert_eq!(r.jobs_released, ["epilog"], "{:?}", r.lines);
    let r = recover::recover(&h, &t.state(), &vf, &rec_opts(&t, Some("alive"))).unwrap();
    assert!(r.jobs_released.is_empty(), "{:?}", r.lines);
    assert_eq!(t.nr(0), 2);
    // Then 'alive' ends: its epilog's recover releases everything; the state file goes.
    trees::remove_vm(&t, 5001, 0, 2);
    t.write("sys/fs/cgroup/hpmmap/alive/cgroup.procs", "");
    std::fs::remove_file(t.path("run/hpmmap/jail/alive/vmm.pid")).unwrap();
    let r = recover::recover(&h, &t.state(), &vf, &rec_opts(&t, Some("alive"))).unwrap();
    assert!(!r.failed, "{:?}", r.lines);
    assert_eq!(t.nr(0), 0);
    assert!(!t.state().exists());
    assert!(!t.path("run/hpmmap/jail/alive").exists());
    let r = recover::recover(&h, &t.state(), &vf, &rec_opts(&t, None)).unwrap();
    assert_eq!(r.lines, ["nothing to recover"]);
    k.with(|m| assert!(m.violations.is_empty(), "{:?}", m.violations));
}

/// `kill -9` of hpmmap-offline in the middle of a reserve for a job: the resize it had
/// started is settled into the job's share, and the job goes back to what it held before.
#[test]
fn a_reserve_killed_half_way_is_undone_by_recover() {
    let t = node_with_crashed_vf("killedreserve");
    let k = FakeKernel::new(t.dir.path());
    k.with(|m| {
        m.free_ranges.insert(0, 8);
    });
    let h = host(&t, &k);
    let vf = hpmmap_vf::sim::sim_sysfs(t.dir.path());
    std::fs::remove_file(t.path("run/hpmmap/vf/0000:3b:00.3.claim")).unwrap();
    reserve::reserve(&h, &t.state(), &opts(1, "k")).unwrap();
    reserve::reserve(&h, &t.state(), &opts(1, "other")).unwrap();
    k.with(|m| m.crash_at = Some(4)); // dies right after nr_hugepages = 4 took effect
    let res = catch_unwind(AssertUnwindSafe(|| {
        reserve::reserve(&h, &t.state(), &opts(4, "k"))
    }));
    assert!(res.is_err(), "the simulated crash did not happen");
    assert_eq!(t.nr(0), 4);
    // The test process is the killed reserve: make its pid one that is gone.
    let text = std::fs::read_to_string(t.state()).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["pending"].is_object(), "{text}");
    assert_eq!(v["jobs"]["k"]["reserving"]["had"]["0"], 1, "{text}");
    v["jobs"]["k"]["reserving"]["pid"] = 999_999.into();
    std::fs::write(t.state(), serde_json::to_string(&v).unwrap()).unwrap();
    let s = hpmmap_offline::status::gather(&h, &t.state()).unwrap();
    assert!(
        hpmmap_offline::status::render_text(&s).contains("its reserve (pid 999999) was killed"),
        "{}",
        hpmmap_offline::status::render_text(&s)
    );

    k.with(|m| m.crash_at = None);
    let r = recover::recover(&h, &t.state(), &vf, &rec_opts(&t, None)).unwrap();
    assert!(!r.failed, "{:?}", r.lines);
    assert_eq!(r.jobs_released, ["k"], "{:?}", r.lines);
    let st = state::load(&t.state()).unwrap().unwrap();
    assert!(st.pending.is_none());
    assert_eq!((st.owned(Some("k"), 0), st.owned(Some("other"), 0)), (1, 1));
    assert!(st.jobs["k"].reserving.is_none());
    assert_eq!(t.nr(0), 2);
    k.with(|m| assert!(m.violations.is_empty(), "{:?}", m.violations));
}

/// The binary: `recover` on the merged tree puts the VF back (exit 0); a bad --job is one
/// line, exit 2, nothing touched.
#[test]
fn binary_recover_exit_codes() {
    let t = node_with_crashed_vf("recovercli");
    let before = t.snapshot();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hpmmap-offline"))
            .arg("--sysfs-root")
            .arg(t.sys())
            .arg("--proc-root")
            .arg(t.proc())
            .arg("--state-file")
            .arg(t.state())
            .arg("recover")
            .arg("--run-dir")
            .arg(t.path("run/hpmmap"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["--job", "a/b"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--job 'a/b'"), "{err}");
    trees::assert_same(&before, &t.snapshot());
    let o = run(&[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("VF 0000:3b:00.3: job 'crashed1' (pid 9999) is gone"),
        "{out}"
    );
    assert_eq!(vf_driver(&t, "0000:3b:00.3"), None);
}

/// On this machine's real kernel (root): a dead job's jail directory with a tmpfs mounted
/// inside it (the mount is detached, the directory removed, nothing of the host touched)
/// and its cgroup v2 subtree with a child cgroup (removed leaf first by rmdir); a live
/// job's cgroup (this test process in it) is left alone. Skips, saying why, without root or
/// a cgroup2 mount.
#[test]
fn live_kernel_jail_mount_and_cgroups_of_a_dead_job_are_removed() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        hpmmap_testkit::skip(
            hpmmap_testkit::Tier::Root,
            "live_kernel_jail_mount_and_cgroups_of_a_dead_job_are_removed",
            "needs root (mount, cgroupfs)",
        );
        return;
    }
    let cg2 = Path::new("/sys/fs/cgroup/unified");
    let cg2 = if Path::new("/sys/fs/cgroup/cgroup.procs").exists()
        && !Path::new("/sys/fs/cgroup/cpu").exists()
    {
        Path::new("/sys/fs/cgroup")
    } else {
        cg2
    };
    let cg_parent = cg2.join(format!("hpmmap-recover-test-{}", std::process::id()));
    if std::fs::create_dir(&cg_parent).is_err() {
        hpmmap_testkit::skip(
            hpmmap_testkit::Tier::Root,
            "live_kernel_jail_mount_and_cgroups_of_a_dead_job_are_removed",
            format!("cannot create a cgroup under {}", cg2.display()),
        );
        return;
    }
    let scratch = common::Scratch::new("livejail");
    let run = scratch.path().join("run");
    let jail = run.join("jail/deadjob");
    let mnt = jail.join("root/scratch");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(jail.join("vmm.pid"), "999999\n").unwrap();
    let src = std::ffi::CString::new("tmpfs").unwrap();
    let target = std::ffi::CString::new(mnt.to_str().unwrap()).unwrap();
    // SAFETY: valid C strings; a tmpfs of our own under our scratch directory.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
    std::fs::write(mnt.join("on-tmpfs"), "x").unwrap();
    // Where this process is in the cgroup2 hierarchy now, to go back there.
    let home = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("0::")
                .map(|p| p.trim_start_matches('/').to_string())
        })
        .unwrap_or_default();
    std::fs::create_dir_all(cg_parent.join("deadjob/vcpu0")).unwrap();
    std::fs::create_dir_all(cg_parent.join("livejob")).unwrap();
    std::fs::write(
        cg_parent.join("livejob/cgroup.procs"),
        std::process::id().to_string(),
    )
    .unwrap();

    let h = Host::new("/sys", "/proc").quiet(true);
    let vf = hpmmap_vf::Sysfs::new(
        hpmmap_vf::HostPaths {
            run: run.clone(),
            ..hpmmap_vf::HostPaths::host()
        },
        std::sync::Arc::new(hpmmap_vf::sysfs::KernelWriter),
    );
    let opts = RecoverOptions {
        job: None,
        run_dir: run.clone(),
        cgroup_dir: cg_parent.clone(),
    };
    let r = recover::recover(&h, &scratch.path().join("state.json"), &vf, &opts).unwrap();
    // Put this process back where it was before checking anything.
    let back = cg2.join(&home).join("cgroup.procs");
    std::fs::write(&back, std::process::id().to_string()).unwrap();
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(mnt.to_str().unwrap());
    let left = (
        jail.exists(),
        cg_parent.join("deadjob").exists(),
        cg_parent.join("livejob").exists(),
    );
    let _ = std::fs::remove_dir(cg_parent.join("livejob"));
    let _ = std::fs::remove_dir(&cg_parent);
    assert!(!r.failed, "{:?}", r.lines);
    assert!(!mounted, "the jail's tmpfs is still mounted: {:?}", r.lines);
    assert_eq!(left, (false, false, true), "{:?}", r.lines);
    assert!(
        r.lines
            .iter()
            .any(|l| l.contains("jail of job livejob: a process runs")),
        "{:?}",
        r.lines
    );
}
