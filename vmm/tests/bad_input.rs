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
    ];
    for (args, wants) in cases {
        refuse(&dir, args, wants);
    }
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
            vec!["--mem", "64M", "--kernel", k, "--vcpus", "255"],
            vec!["--vcpus 255", "maximum"],
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
    if !kvm_or_skip("no_dev_kvm_or_no_permission") {
        return;
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        println!(
            "SKIP: no_dev_kvm_or_no_permission: needs root to hide /dev/kvm in a mount namespace"
        );
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
        println!(
            "SKIP: no_dev_kvm_or_no_permission: cannot unshare here ({})",
            r.stderr.trim()
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
        println!(
            "SKIP: no_dev_kvm_or_no_permission (permission half): /dev/kvm is world-accessible"
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
            println!(
                "SKIP: no_dev_kvm_or_no_permission (permission half): nobody cannot run the test binary: {}",
                r.stderr.trim()
            );
        } else {
            assert_refused(&r, &dir, &["/dev/kvm", "permission denied"]);
        }
    }
    let _ = std::fs::remove_file(ro);
}
