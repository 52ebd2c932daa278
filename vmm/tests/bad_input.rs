//! Each bad input from the issue is refused with exit status 2 and one line on stderr that
//! names the flag and the value, leaving nothing behind (no serial log, no report).

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn good_kernel(dir: &TempDir) -> String {
    let code = asm64(|a| pv_exit(a, 0));
    let elf = elf64(
        PAYLOAD_BASE,
        &[Segment {
            addr: PAYLOAD_BASE,
            bytes: code,
        }],
        &[],
    );
    dir.write("ok.elf", &elf).display().to_string()
}

fn assert_refused(r: &Run, dir: &TempDir, wants: &[&str]) {
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", r.stderr);
    assert!(lines[0].starts_with("hpmmap-vmm: "), "{}", lines[0]);
    for w in wants {
        assert!(lines[0].contains(w), "{w:?} not in {:?}", lines[0]);
    }
    assert!(r.stdout.is_empty(), "guest output: {}", r.stdout);
    assert!(!dir.path("serial.log").exists(), "serial log left behind");
    assert!(!dir.path("r.json").exists(), "report left behind");
}

fn refuse(dir: &TempDir, args: &[&str], wants: &[&str]) {
    let serial = dir.path("serial.log");
    let rep = dir.path("r.json");
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--serial",
        serial.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ]);
    let r = run_vmm(&all, T);
    assert_refused(&r, dir, wants);
}

#[test]
fn refused_without_touching_kvm() {
    let dir = TempDir::new("bad-cli");
    let k = good_kernel(&dir);
    let k = k.as_str();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--mem", "12X", "--kernel", k], &["--mem", "12X"]),
        (
            &["--mem", "64M", "--kernel", k, "--vcpus", "0"],
            &["--vcpus 0"],
        ),
        (
            &["--mem", "64M", "--kernel", k, "--hugepages", "3G"],
            &["--hugepages", "3G"],
        ),
        (&["--mem", "64M"], &["--image"]),
        (
            &["--mem", "64M", "--image", "/nonexistent/image"],
            &["--image /nonexistent/image"],
        ),
        (
            &["--mem", "64M", "--kernel", k, "--cpu-affinity", "0-1,x"],
            &["--cpu-affinity", "0-1,x"],
        ),
        // InfiniBand options are checked before any VF is looked at (issue 18).
        (
            &[
                "--mem", "64M", "--kernel", k, "--vf", "ib0", "--pkey", "0x7fff",
            ],
            &["0x7fff"],
        ),
        (
            &[
                "--mem", "64M", "--kernel", k, "--vf", "ib0", "--pkey", "0x8000",
            ],
            &["0x8000"],
        ),
        (
            &[
                "--mem",
                "64M",
                "--kernel",
                k,
                "--vf",
                "ib0",
                "--vf-guid",
                "0x12345",
            ],
            &["0x12345"],
        ),
    ];
    for (args, wants) in cases {
        refuse(&dir, args, wants);
    }
}

/// `--jail` (issue 13): bad input is one line and exit 2, and leaves no directory, no
/// cgroup and nothing of an existing directory changed.
#[test]
fn jail_refusals_leave_nothing_behind() {
    let dir = TempDir::new("bad-jail");
    let k = good_kernel(&dir);
    let k = k.as_str();
    let full = dir.path("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("keep"), "x").unwrap();
    let fresh = dir.path("fresh");
    let fresh = fresh.to_str().unwrap();
    let base = ["--mem", "64M", "--kernel", k];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (with(&base, &["--uid", "65534"]), &["--jail"]),
        (
            with(&base, &["--jail", fresh, "--uid", "65534"]),
            &["--gid"],
        ),
        (
            with(&base, &["--jail", fresh, "--uid", "0", "--gid", "0"]),
            &["must not keep root"],
        ),
        (
            with(
                &base,
                &["--jail", "relative/dir", "--uid", "1", "--gid", "1"],
            ),
            &["absolute"],
        ),
        (
            with(
                &base,
                &["--jail", full.to_str().unwrap(), "--uid", "1", "--gid", "1"],
            ),
            &["not empty"],
        ),
        (
            with(
                &base,
                &[
                    "--jail",
                    fresh,
                    "--uid",
                    "1",
                    "--gid",
                    "1",
                    "--cgroup",
                    "/tmp/not-a-cgroup/job",
                ],
            ),
            &["--cgroup", "not a cgroup v2 directory"],
        ),
        (
            with(&base, &["--seccomp", "maybe"]),
            &["--seccomp", "maybe"],
        ),
        (
            with(&base, &["--jail", "--uid", "1", "--gid", "1"]),
            &["--jail needs a directory, or --job ID"],
        ),
        (
            with(
                &base,
                &[
                    "--job", "badjail", "--jail", fresh, "--uid", "1", "--gid", "1",
                ],
            ),
            &["with --job badjail the jail is /run/hpmmap/jail/badjail"],
        ),
        (
            with(
                &base,
                &[
                    "--job",
                    "badjail",
                    "--jail",
                    "--uid",
                    "1",
                    "--gid",
                    "1",
                    "--cgroup",
                    "/sys/fs/cgroup/other",
                ],
            ),
            &["with --job badjail the cgroup is /sys/fs/cgroup/hpmmap/badjail"],
        ),
    ];
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    for (args, wants) in &cases {
        if !root && wants.iter().any(|w| !w.starts_with("--")) {
            continue; // a non-root run is refused for being non-root first
        }
        refuse(&dir, args, wants);
        assert!(
            !std::path::Path::new(fresh).exists(),
            "{args:?} left {fresh}"
        );
        assert_eq!(std::fs::read_to_string(full.join("keep")).unwrap(), "x");
        assert!(!std::path::Path::new("/run/hpmmap/jail/badjail").exists());
    }
}

/// Issue 13: on a node where jobs hold 1 GiB pages, a VMM without `--job` is refused the
/// jobs' free pages (hpmmap-offline's state file read through `HPMMAP_OFFLINE_STATE`; its
/// `sysfs_root` points at a recorded tree with 2 free pages, both job a's).
#[test]
fn a_vmm_without_a_job_is_refused_the_jobs_pages() {
    if !kvm_or_skip("a_vmm_without_a_job_is_refused_the_jobs_pages") {
        return;
    }
    let dir = TempDir::new("bad-nojob");
    let k = good_kernel(&dir);
    let node = dir.path("sys/devices/system/node/node0/hugepages/hugepages-1048576kB");
    std::fs::create_dir_all(&node).unwrap();
    std::fs::write(node.join("free_hugepages"), "2\n").unwrap();
    std::fs::create_dir_all(dir.path("proc")).unwrap();
    let state = dir.write(
        "offline.json",
        format!(
            r#"{{"format":"hpmmap-offline-state","version":2,"sysfs_root":"{}","proc_root":"{}",
               "nodes":{{"0":{{"baseline_nr":0,"reserved":2}}}},"jobs":{{"a":{{"nodes":{{"0":2}}}}}}}}"#,
            dir.path("sys").display(),
            dir.path("proc").display()
        )
        .as_bytes(),
    );
    let serial = dir.path("serial.log");
    let rep = dir.path("r.json");
    let r = run_cmd(
        Command::new(vmm_bin())
            .env("HPMMAP_OFFLINE_STATE", &state)
            .args(["--mem", "1G", "--hugepages", "1G", "--kernel", &k])
            .arg("--serial")
            .arg(&serial)
            .arg("--report")
            .arg(&rep),
        T,
    );
    assert_refused(
        &r,
        &dir,
        &[
            "no --job: needs 1 1 GiB page(s) but only 0 free are held for no job",
            "2 free page(s) belong to job(s) a 2",
        ],
    );
}

#[test]
fn refused_by_the_vmm() {
    if !kvm_or_skip("refused_by_the_vmm") {
        return;
    }
    let dir = TempDir::new("bad-vmm");
    let k = good_kernel(&dir);
    let k = k.as_str();
    let text = dir
        .write("notakernel", b"#!/bin/sh\necho hello\n")
        .display()
        .to_string();
    let big_rd = dir.path("big.cpio");
    std::fs::File::create(&big_rd)
        .unwrap()
        .set_len(48 << 20)
        .unwrap();
    let big_rd = big_rd.display().to_string();
    // An ELF whose segment lies far outside a 64 MiB guest.
    let far = elf64(
        0x4000_0000,
        &[Segment {
            addr: 0x4000_0000,
            bytes: vec![0xF4; 16],
        }],
        &[],
    );
    let far = dir.write("far.elf", &far).display().to_string();
    let none = ["--hugepages", "none"];
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--mem", "64M", "--kernel", "/nonexistent/vmlinux"],
            vec!["--kernel /nonexistent/vmlinux"],
        ),
        (
            vec!["--mem", "64M", "--kernel", "/tmp"],
            vec!["--kernel /tmp", "directory"],
        ),
        (
            vec!["--mem", "64M", "--kernel", &text],
            vec!["--kernel", "neither an ELF nor a bzImage"],
        ),
        (
            vec!["--mem", "64M", "--kernel", k, "--initrd", "/nonexistent/rd"],
            vec!["--initrd /nonexistent/rd"],
        ),
        (
            vec!["--mem", "32M", "--kernel", k, "--initrd", &big_rd],
            vec!["--initrd", "48M", "does not fit"],
        ),
        (
            vec!["--mem", "16M", "--kernel", k],
            vec!["--mem 16M", "minimum"],
        ),
        (
            vec!["--mem", "1537M", "--kernel", k],
            vec!["--mem 1537M", "not a multiple of the 1G page size"],
        ),
        (
            vec!["--mem", "65M", "--kernel", k, "--hugepages", "2M"],
            vec!["--mem 65M", "2M"],
        ),
        (
            vec!["--mem", "64M", "--kernel", k, "--vcpus", "100000"],
            vec!["--vcpus 100000", "KVM_CAP_MAX_VCPUS"],
        ),
        (
            vec!["--mem", "2G", "--kernel", k, "--pool", "4G"],
            vec!["--pool 4G", "larger"],
        ),
        (
            vec!["--mem", "3G", "--kernel", k, "--pool", "1536M"],
            vec!["--pool 1536M", "multiple of 1G"],
        ),
        (
            vec!["--mem", "64M", "--kernel", k, "--numa-node", "7"],
            vec!["--numa-node 7", "no such NUMA node"],
        ),
        (vec!["--mem", "64T", "--kernel", k], vec!["--mem 64T"]),
        (
            vec![
                "--mem",
                "1G",
                "--kernel",
                k,
                "--mem-backend",
                "devdax:/dev/null",
            ],
            vec!["devdax:/dev/null", "not a device-dax device"],
        ),
        (
            vec![
                "--mem",
                "1G",
                "--kernel",
                k,
                "--mem-backend",
                "devdax:/dev/dax9.9",
            ],
            vec!["devdax:/dev/dax9.9", "No such file"],
        ),
        (
            vec!["--mem", "1G", "--kernel", k, "--mem-backend", "pmem0"],
            vec!["--mem-backend", "pmem0", "devdax:/dev/daxX.Y"],
        ),
    ];
    for (mut args, wants) in cases {
        if args.contains(&"64M") || args.contains(&"32M") || args.contains(&"16M") {
            args.extend(none);
        }
        refuse(&dir, &args, &wants);
    }
    // This one gets as far as loading the kernel into guest RAM.
    let serial = dir.path("serial.log");
    let r = run_vmm(
        &[
            "--mem",
            "64M",
            "--hugepages",
            "none",
            "--kernel",
            &far,
            "--serial",
            serial.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr
            .lines()
            .last()
            .unwrap()
            .contains(&format!("--kernel {far}")),
        "{}",
        r.stderr
    );
    assert!(!serial.exists());
}

#[test]
fn no_dev_kvm_or_no_permission() {
    if !root_kvm_or_skip(
        "no_dev_kvm_or_no_permission",
        "needs root to hide /dev/kvm in a mount namespace",
    ) {
        return;
    }
    let dir = TempDir::new("nokvm");
    let k = good_kernel(&dir);
    let bin = vmm_bin();
    let script =
        format!("mount -t tmpfs none /dev && exec {bin} --mem 64M --hugepages none --kernel {k}");
    let r = run_cmd(
        Command::new("unshare").args(["--mount", "sh", "-c", &script]),
        T,
    );
    if r.code == Some(1) && r.stderr.contains("unshare") {
        hpmmap_testkit::skip(
            Tier::Root,
            "no_dev_kvm_or_no_permission",
            format!("cannot unshare here ({})", r.stderr.trim()),
        );
        return;
    }
    assert_refused(&r, &dir, &["/dev/kvm", "not found"]);
    // As an unprivileged user the device (0600 root) is refused. The kernel must be readable
    // by that user, so it is copied to a world-readable place.
    let ro = std::env::temp_dir().join(format!("hpmmap-nokvm-{}.elf", std::process::id()));
    std::fs::copy(&k, &ro).unwrap();
    let mode = std::fs::metadata("/dev/kvm")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    if mode.map(|m| m & 0o006 != 0).unwrap_or(true) {
        hpmmap_testkit::not_applicable(
            Tier::Kvm,
            "no_dev_kvm_or_no_permission (permission half)",
            "/dev/kvm is world-accessible",
        );
    } else {
        let r = run_cmd(
            Command::new("setpriv").args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                bin,
                "--mem",
                "64M",
                "--hugepages",
                "none",
                "--kernel",
                ro.to_str().unwrap(),
            ]),
            T,
        );
        if r.stderr.starts_with("setpriv:") {
            hpmmap_testkit::skip(
                Tier::Root,
                "no_dev_kvm_or_no_permission (permission half)",
                format!("nobody cannot run the test binary: {}", r.stderr.trim()),
            );
        } else {
            assert_refused(&r, &dir, &["/dev/kvm", "permission denied"]);
        }
    }
    let _ = std::fs::remove_file(ro);
}

/// Every PCI function of this host and the driver it is bound to, to show a refused `--vf`
/// left no binding behind.
fn pci_bindings() -> Vec<(String, Option<String>)> {
    let mut v: Vec<_> = std::fs::read_dir("/sys/bus/pci/devices")
        .map(|d| d.filter_map(Result::ok).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let drv = std::fs::read_link(e.path().join("driver"))
                .ok()
                .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()));
            (e.file_name().to_string_lossy().into_owned(), drv)
        })
        .collect();
    v.sort();
    v
}

/// `--vf` that cannot be satisfied on this host (no such device; a PCI function without
/// SR-IOV): exit 2, one line naming --vf and the sysfs path of the cause, no binding changed.
/// This host has no SR-IOV and no IOMMU; the real claim path is the pci lab's.
#[test]
fn vf_refused() {
    if !kvm_or_skip("vf_refused") {
        return;
    }
    let dir = TempDir::new("bad-vf");
    let k = good_kernel(&dir);
    let before = pci_bindings();
    refuse(
        &dir,
        &[
            "--mem",
            "64M",
            "--hugepages",
            "none",
            "--kernel",
            &k,
            "--vf",
            "nosuchdev0",
        ],
        &[
            "--vf",
            "nosuchdev0",
            "no such device",
            "/sys/class/net/nosuchdev0",
        ],
    );
    // A real PCI function without SR-IOV, named as a PF.
    let plain = before.iter().map(|(a, _)| a.clone()).find(|a| {
        !std::path::Path::new("/sys/bus/pci/devices")
            .join(a)
            .join("sriov_totalvfs")
            .exists()
    });
    match plain {
        Some(addr) => refuse(
            &dir,
            &[
                "--mem",
                "64M",
                "--hugepages",
                "none",
                "--kernel",
                &k,
                "--vf",
                &addr,
            ],
            &[
                "--vf",
                &addr,
                "no SR-IOV",
                &format!("/sys/bus/pci/devices/{addr}/sriov_totalvfs"),
            ],
        ),
        None => hpmmap_testkit::not_applicable(
            Tier::Root,
            "vf_refused (no SR-IOV half)",
            "no PCI function without SR-IOV",
        ),
    }
    // --vf-create without --vf is a usage error, before anything is looked up.
    refuse(
        &dir,
        &["--mem", "64M", "--kernel", &k, "--vf-create", "2"],
        &["--vf"],
    );
    assert_eq!(pci_bindings(), before, "a PCI binding changed");
}

/// `selftest --vf` prints every check it made and fails on this host (no IOMMU, no VF).
#[test]
fn vf_selftest_reports_and_fails() {
    let r = run_vmm(&["selftest", "--vf", "nosuchdev0", "--mem", "1G"], T);
    assert_eq!(
        r.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
    for check in ["IOMMU", "vfio-pci", "PF / SR-IOV", "RLIMIT_MEMLOCK"] {
        assert!(
            r.stdout.lines().any(|l| l.contains(check)),
            "no {check:?} check in:\n{}",
            r.stdout
        );
    }
    assert!(
        r.stdout.contains("nosuchdev0") && r.stdout.contains("no such device"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("selftest failed"), "{}", r.stdout);
    assert!(r.stdout.contains("fix:"), "{}", r.stdout);
    // Bad arguments to the subcommand are usage errors.
    let r = run_vmm(&["selftest"], T);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--vf"), "{}", r.stderr);
    let r = run_vmm(&["selftest", "--vf", "ib0", "--mem", "12X"], T);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--mem"), "{}", r.stderr);
}
