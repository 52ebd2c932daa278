//! Tier 3 with a hand-made L2: hpmmap-vmm boots Debian's Linux kernel (the job image's) as L2
//! on a real KVM with nested paging, one level down inside QEMU/TCG (the images/ lab: L1
//! `-cpu EPYC,+svm,+npt,+pdpe1gb`, kvm_amd with npt=Y, 1 GiB hugetlb pages on its command
//! line). Both boot paths are run: the vmlinux ELF by its PVH entry and the bzImage by the
//! 64-bit boot protocol. The L2 init, a busybox script, touches the pool, asks for a PV ZERO
//! and reports its exit status through the PV device; KVM's pages_1g must then equal guest RAM
//! in GiB.
//!
//! Needs what the lab needs (QEMU, Debian's kernel package, busybox-static, cpio, gzip); skips
//! with the reason otherwise. Figures from here are emulation timings.

mod common;

use common::lab::*;
use common::TempDir;
use std::process::Command;

const L2_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "L2-CPUS $(grep -c ^processor /proc/cpuinfo)"
dmesg | grep "BIOS-e820"
# Touch the first and last word of the pool GiB (e820-reserved, so /dev/mem may reach it).
devmem 0x40000000 32 0x12345678 && devmem 0x7ffffff0 32 1 && echo "L2-POOL $(devmem 0x40000000 32)"
# PV ZERO of the pool GiB (the host punches and refaults its 1 GiB page), then touch it again.
devmem 0xfeb00020 64 0x40000000; devmem 0xfeb00028 64 0x40000000; devmem 0xfeb00030 32 1
echo "L2-ZERO status=$(devmem 0xfeb0000c 32) after=$(devmem 0x40000000 32) magic=$(devmem 0xfeb00000 32)"
devmem 0x40000000 32 0x5a5a5a5a
echo "HPMMAP-JOB-EXIT 7"
devmem 0xfeb00034 32 7
sleep 5
reboot -f
"#;

/// Run in L1 after `VMM_RETRYING`: both boot paths, each with a report. A hung guest is
/// stopped by SIGTERM (the VMM exits 143 with its report) and booted again.
const L1_SCRIPT: &str = r#"
echo "L1-NPT $(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)"
for run in pvh bzimage; do
  k=/img/vmlinux; [ $run = bzimage ] && k=/img/bzImage
  vmm_retrying --mem 2G --vcpus 2 --kernel $k --initrd /l2/l2.cpio.gz \
      --cmdline "console=ttyS0 quiet" --report /tmp/r.json
  echo "L1-VMM-EXIT $run $?"
  echo "L1-REPORT-BEGIN $run"; cat /tmp/r.json; echo "L1-REPORT-END $run"
done
"#;

/// The L2 initramfs: static busybox and the init above.
fn l2_initramfs(dir: &TempDir) -> Option<std::path::PathBuf> {
    let ok = Command::new("sh")
        .args(["-c", "ldd /bin/busybox 2>&1 | grep -q 'not a dynamic'"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return None;
    }
    let root = dir.path("l2root");
    for d in ["bin", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::fs::write(root.join("init"), L2_INIT).unwrap();
    let out = dir.path("l2");
    std::fs::create_dir_all(&out).unwrap();
    let st = Command::new("sh")
        .args([
            "-c",
            &format!(
                "chmod +x {r}/init && cd {r} && find . | cpio -o -H newc 2>/dev/null | gzip -1 > {o}/l2.cpio.gz",
                r = root.display(),
                o = out.display()
            ),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "cpio of the L2 initramfs");
    Some(out)
}

fn report_of(log: &str, run: &str) -> serde_json::Value {
    json_between(
        log,
        &format!("L1-REPORT-BEGIN {run}"),
        &format!("L1-REPORT-END {run}"),
    )
}

#[test]
fn linux_boots_as_l2_on_1g_pages_in_nested_kvm() {
    let name = "linux_boots_as_l2_on_1g_pages_in_nested_kvm";
    let Some((tools, dir, img)) = lab_with_image(name) else {
        return;
    };
    let Some(l2) = l2_initramfs(&dir) else {
        hpmmap_testkit::skip(
            common::Tier::Lab,
            name,
            "/bin/busybox is missing or not static (package busybox-static)",
        );
        return;
    };
    let add = format!("{}:/l2", l2.display());
    let mut lab_args = L2_ON_1G_PAGES.to_vec();
    lab_args.extend(["--add", &add]);
    // Two vCPUs of an L2 Linux under nested SVM emulated by TCG fail now and then: the L1
    // script boots again after those signatures, and L1 is booted again if its kernel died.
    let script = format!("{VMM_RETRYING}{L1_SCRIPT}");
    let Some(r) = tools.run_retrying(name, &lab_args, &img, &script) else {
        return;
    };
    let log = last_attempts(&r.out);
    std::fs::write(std::env::temp_dir().join("hpmmap-vmm-nested.log"), &log).unwrap();
    assert_eq!(
        r.code,
        Some(0),
        "the lab run failed; log in /tmp/hpmmap-vmm-nested.log"
    );
    assert!(
        log.contains("L1-NPT Y"),
        "kvm_amd with nested paging in L1: {log}"
    );
    for run in ["pvh", "bzimage"] {
        assert!(
            log.contains(&format!("L1-VMM-EXIT {run} 7")),
            "{run}: exit status 7 expected\n{log}"
        );
        let j = report_of(&log, run);
        assert_eq!(j["exit_reason"], "job-exit", "{run}");
        assert_eq!(j["vcpus"], 2);
        assert_eq!(j["host_page_size_bytes"], 1u64 << 30, "{run}");
        assert_eq!(
            j["kvm_pages"]["pages_1g"], 2,
            "{run}: every GiB of guest RAM is a 1 GiB NPT page"
        );
        assert_eq!(j["pool_ranges"][0]["base"], 1u64 << 30);
        assert_eq!(
            j["kernel_format"],
            if run == "pvh" { "elf-pvh" } else { "bz-image" }
        );
        assert!(
            j["platform"].as_str().unwrap().starts_with("nested lab"),
            "{run}"
        );
    }
    assert_eq!(
        log.matches("L2-CPUS 2").count(),
        2,
        "both guests saw 2 vCPUs"
    );
    assert_eq!(log.matches("L2-POOL 0x12345678").count(), 2);
    assert_eq!(
        log.matches("L2-ZERO status=0x00000000 after=0x00000000 magic=0x4D4D5048")
            .count(),
        2,
        "PV ZERO on a real KVM: STATUS ok and the pool reads zero"
    );
    assert_eq!(
        log.matches("BIOS-e820: [mem 0x0000000040000000-0x000000007fffffff] reserved")
            .count(),
        2,
        "the pool is e820-reserved in the guest"
    );
}
