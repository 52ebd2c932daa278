//! `--mem-backend devdax:` for real, in the nested lab: L1 (Debian's kernel under QEMU/TCG
//! with SVM+NPT) keeps 3 GiB from its kernel at boot (`memmap=3G!4G`, a legacy pmem range);
//! the namespace is turned into device-dax with 1 GiB alignment (what `ndctl
//! create-namespace -m devdax --align 1G` does), `hpmmap-offline reserve --devdax` takes it,
//! hpmmap-vmm boots the job image as L2 on it, `hpmmap-offline status` names the VMM's pid
//! while it runs, and `release --all` gives it back after. A request larger than the device
//! is refused first. Skips with the reason where the lab cannot run. Emulation figures only.

mod common;

use common::lab::*;

/// Run in L1 (busybox sh). Markers `NAME=value` are what the test reads.
const SCRIPT: &str = r#"
nd=/sys/bus/nd/devices
seed=$(cat $nd/region0/dax_seed) &&
echo namespace0.0 > /sys/bus/nd/drivers/nd_pmem/unbind &&
echo 1073741824 > $nd/$seed/align &&
echo ram > $nd/$seed/mode &&
cat /proc/sys/kernel/random/uuid > $nd/$seed/uuid &&
echo namespace0.0 > $nd/$seed/namespace &&
echo $seed > /sys/bus/nd/drivers/dax_pmem/bind || { echo DEVDAX-SETUP=failed; exit 9; }
echo DEVDAX-SETUP=ok
hpmmap-offline reserve --devdax --size 2G; echo RESERVE-STATUS=$?
hpmmap-vmm --image /img --mem 3G --mem-backend devdax:/dev/dax0.0 2>&1; echo TOOBIG-STATUS=$?
timeout 300 hpmmap-vmm --image /img --mem 2G --mem-backend devdax:/dev/dax0.0 \
    --report /tmp/r.json > /tmp/vm.log 2>&1 &
vmm=$!
echo VMM-PID=$vmm
i=0
while [ $i -lt 120 ] && ! hpmmap-offline status | grep -q "mapped by pid $vmm"; do
    sleep 1; i=$((i+1))
done
echo STATUS-WHILE-RUNNING-BEGIN; hpmmap-offline status; echo STATUS-WHILE-RUNNING-END
wait $vmm; echo VMM-STATUS=$?
cat /tmp/vm.log
echo REPORT-BEGIN; cat /tmp/r.json; echo REPORT-END
# Jailed (issue 13): the device's fd is opened as root, then the VMM runs as nobody.
timeout 300 hpmmap-vmm --image /img --mem 2G --mem-backend devdax:/dev/dax0.0 \
    --jail /run/hpmmap-jail-dax --uid 65534 --gid 65534 --report /tmp/rj.json > /tmp/vmj.log 2>&1
echo JAILED-STATUS=$?
grep -E "HPMMAP-JOB-EXIT|error|Error" /tmp/vmj.log | sed 's/^/jailed: /'
echo JAILED-LEFT=$([ -e /run/hpmmap-jail-dax ] && echo yes || echo no)
echo JREPORT-BEGIN; cat /tmp/rj.json; echo JREPORT-END
hpmmap-offline release --all; echo RELEASE-STATUS=$?
hpmmap-offline status
"#;

fn marker<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the lab output:\n{out}"))
}

#[test]
fn job_image_boots_on_a_devdax_device_with_1g_pages() {
    let name = "job_image_boots_on_a_devdax_device_with_1g_pages";
    let Some((tools, _dir, img)) = lab_with_image(name) else {
        return;
    };
    let lab_args = [
        "--mem",
        "6G",
        "--cpus",
        "2",
        "--hugepages",
        "0",
        "--pmem",
        "3G",
        "--timeout",
        "800",
    ];
    let Some(LabRun { out, .. }) = tools.run_retrying(name, &lab_args, &img, SCRIPT) else {
        return;
    };
    println!("{out}");
    assert_eq!(marker(&out, "DEVDAX-SETUP"), "ok");
    assert_eq!(marker(&out, "RESERVE-STATUS"), "0", "reserve --devdax");
    assert!(
        out.contains("/dev/dax0.0: 2 GiB with 1 GiB alignment on node 0"),
        "{out}"
    );
    assert_eq!(marker(&out, "TOOBIG-STATUS"), "2", "3G on a 2 GiB device");
    assert!(
        out.contains("--mem 3G: more than dax0.0's 2G (--mem-backend devdax:/dev/dax0.0)"),
        "{out}"
    );
    let pid = marker(&out, "VMM-PID");
    let running = out
        .split("STATUS-WHILE-RUNNING-BEGIN")
        .nth(1)
        .and_then(|s| s.split("STATUS-WHILE-RUNNING-END").next())
        .unwrap();
    assert!(
        running.contains(&format!(
            "dax dax0.0: size 2 GiB, align 1 GiB, node 0, driver device_dax, mapped by pid {pid}"
        )),
        "status names the VMM while it runs:\n{running}"
    );
    assert_eq!(marker(&out, "VMM-STATUS"), "0", "the job's exit status");
    assert!(out.contains("HPMMAP-JOB-EXIT 0"), "{out}");
    let j = json_between(&out, "REPORT-BEGIN", "REPORT-END");
    assert_eq!(j["memory_backend"], "devdax:/dev/dax0.0");
    assert_eq!(j["exit_reason"], "job-exit");
    assert_eq!(j["guest_ram_bytes"], 2u64 << 30);
    assert_eq!(
        j["host_page_size_bytes"],
        1u64 << 30,
        "smaps: the device maps in 1 GiB pages"
    );
    assert_eq!(
        j["kvm_pages"]["pages_1g"], 2,
        "KVM maps every GiB of guest RAM with one 1 GiB page"
    );
    assert_eq!(j["pool_bytes"], 1u64 << 30);
    assert!(
        out.contains("pool_source=pv@0xfeb00000,page_shift=30,ranges=1"),
        "the guest module took its pool from the PV device:\n{out}"
    );
    // The same job, jailed: the device was opened and cleared as root, the VMM then ran
    // as 65534 in its own namespaces; the keeper wrote the report and removed the jail.
    assert_eq!(marker(&out, "JAILED-STATUS"), "0", "jailed run\n{out}");
    assert!(out.contains("jailed: HPMMAP-JOB-EXIT 0"), "{out}");
    assert_eq!(marker(&out, "JAILED-LEFT"), "no");
    let jr = json_between(&out, "JREPORT-BEGIN", "JREPORT-END");
    assert_eq!(jr["memory_backend"], "devdax:/dev/dax0.0");
    assert_eq!(jr["jail"]["uid"], 65534, "{jr}");
    assert_eq!(jr["kvm_pages"]["pages_1g"], 2, "{jr}");
    assert_eq!(marker(&out, "RELEASE-STATUS"), "0", "release --all");
    assert!(out.contains("hpmmap-offline holds nothing now"), "{out}");
}
