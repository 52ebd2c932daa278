//! Tier 3: virtio-blk under a real Linux guest (L2 in the nested QEMU/TCG lab). The job
//! image's job finds its disks by serial in /sys/block/vdX/serial, hashes a known read-only
//! disk (checked against L1's sha256), writes a read-write disk (read back in L1), is refused
//! a write to the read-only disk, reads the image's rootfs disk (the manifest's `rootfs`,
//! serial `hpmmap-root`), and leaves files in its output directory, which come back through
//! `--output` (the image's init writes the tar stream when it can, else the job does).
//! Figures here are emulation timings.

mod common;

use common::lab::*;
use common::{run_cmd, TempDir};
use std::process::Command;
use std::time::Duration;

const JOB: &str = r#"#!/bin/sh
n=0
while [ ! -e /sys/block/vdd ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
dev() { for b in /sys/block/vd*; do [ "$(cat $b/serial)" = "$1" ] && echo /dev/${b##*/}; done; }
for b in /sys/block/vd*; do
    echo "GUEST-DISK ${b##*/} serial=$(cat $b/serial) ro=$(cat $b/ro) sectors=$(cat $b/size)"
done
k=$(dev known); s=$(dev scratch); o=$(dev hpmmap-out); r=$(dev hpmmap-root)
echo "GUEST-ROOT-SHA256 $(sha256sum < $r | cut -d' ' -f1)"
echo "GUEST-KNOWN-SHA256 $(sha256sum < $k | cut -d' ' -f1)"
printf 'written by the L2 guest\n' | dd of=$s bs=512 conv=sync,fsync 2>/dev/null && echo GUEST-SCRATCH-WRITTEN
if dd if=/dev/zero of=$k bs=512 count=1 conv=fsync 2>/dev/null; then echo GUEST-RO-WRITE-ACCEPTED; else echo GUEST-RO-WRITE-REFUSED; fi
out=${HPMMAP_OUTPUT:-/tmp/joboutput}
mkdir -p $out/sub
echo hello > $out/a.txt
echo nested > $out/sub/b.txt
ln -s /etc/passwd $out/link
if [ -z "$HPMMAP_OUTPUT" ]; then
    (cd $out && tar -cf $o .) && sync && echo GUEST-TAR-BY-JOB
fi
exit 0
"#;

#[test]
fn linux_guest_uses_virtio_disks_by_serial_and_output_comes_back() {
    let name = "linux_guest_uses_virtio_disks_by_serial_and_output_comes_back";
    let Some(tools) = lab_tools_or_skip(name) else {
        return;
    };
    let dir = TempDir::new(name);
    let job = dir.write("disk-job.sh", JOB.as_bytes());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = dir.path("img");
    let b = run_cmd(
        Command::new(&tools.image)
            .args(["build", "--quiet", "--no-hpmmap", "--out"])
            .arg(&img)
            .arg("--job")
            .arg(&job)
            .args(["--module", "virtio_pci", "--module", "virtio_blk"]),
        Duration::from_secs(900),
    );
    assert_eq!(b.code, Some(0), "hpmmap-image build: {}", b.stderr);
    // A root filesystem disk in the manifest, as `hpmmap-image build --root-on disk` records
    // it: any content does for the VMM, which attaches it read-only as hpmmap-root.
    let root: Vec<u8> = (0..2u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(img.join("rootfs.img"), &root).unwrap();
    let mpath = img.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    m["rootfs"] = serde_json::json!({
        "file": "rootfs.img", "format": "squashfs", "sha256": "", "bytes": root.len()
    });
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();

    let cmd = format!(
        "{VMM_RETRYING}\n\
         dd if=/dev/urandom of=/tmp/known.img bs=1M count=4 2>/dev/null\n\
         dd if=/dev/zero of=/tmp/scratch.img bs=1M count=1 2>/dev/null\n\
         echo L1-KNOWN-SHA256 $(sha256sum /tmp/known.img | cut -d' ' -f1)\n\
         echo L1-ROOT-SHA256 $(sha256sum /img/rootfs.img | cut -d' ' -f1)\n\
         vmm_retrying --image /img --mem 2G --disk /tmp/known.img,ro,serial=known \
         --disk /tmp/scratch.img,serial=scratch --output /tmp/out --output-size 16M \
         --report /tmp/r.json; echo VMM-STATUS=$?\n\
         echo L1-KNOWN-AFTER $(sha256sum /tmp/known.img | cut -d' ' -f1)\n\
         echo \"L1-SCRATCH $(head -c 23 /tmp/scratch.img)\"\n\
         echo \"L1-OUT-A $(cat /tmp/out/a.txt)\"; echo \"L1-OUT-B $(cat /tmp/out/sub/b.txt)\"\n\
         [ -e /tmp/out/link ] || [ -L /tmp/out/link ] && echo L1-OUT-LINK-PRESENT\n\
         echo L1-LEFT $(ls -A /tmp | grep -c hpmmap-out)\n\
         echo REPORT-BEGIN; cat /tmp/r.json; echo REPORT-END"
    );
    let Some(r) = tools.run_retrying(name, &L2_ON_1G_PAGES, &img, &cmd) else {
        return;
    };
    let out = last_attempts(&r.out);
    assert_eq!(r.code, Some(0), "lab run:\n{out}");
    assert!(out.contains("VMM-STATUS=0"), "{out}");
    let field = |key: &str| -> String {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
            .trim()
            .to_string()
    };
    let known = field("L1-KNOWN-SHA256");
    assert_eq!(known.len(), 64, "{out}");
    assert_eq!(
        field("GUEST-KNOWN-SHA256"),
        known,
        "the guest read the known disk"
    );
    assert_eq!(field("L1-KNOWN-AFTER"), known, "read-only disk unchanged");
    assert_eq!(
        field("GUEST-ROOT-SHA256"),
        field("L1-ROOT-SHA256"),
        "the guest read the image's rootfs disk"
    );
    assert!(
        out.contains("serial=hpmmap-root ro=1 sectors=4096"),
        "{out}"
    );
    assert!(out.contains("GUEST-RO-WRITE-REFUSED"), "{out}");
    assert!(out.contains("serial=known ro=1 sectors=8192"), "{out}");
    assert!(out.contains("serial=scratch ro=0 sectors=2048"), "{out}");
    assert!(
        out.contains("serial=hpmmap-out ro=0 sectors=32768"),
        "{out}"
    );
    assert!(out.contains("GUEST-SCRATCH-WRITTEN"), "{out}");
    assert_eq!(field("L1-SCRATCH"), "written by the L2 guest");
    assert_eq!(field("L1-OUT-A"), "hello");
    assert_eq!(field("L1-OUT-B"), "nested");
    assert!(
        !out.contains("L1-OUT-LINK-PRESENT"),
        "a link came back:\n{out}"
    );
    assert_eq!(field("L1-LEFT"), "0", "the backing file is gone");
    let j = json_between(&out, "REPORT-BEGIN", "REPORT-END");
    assert_eq!(j["exit_reason"], "job-exit");
    assert_eq!(j["output"]["files"], 2, "{j}");
    assert_eq!(j["output"]["bytes"], 13);
    assert_eq!(j["output"]["skipped"], 1, "the symlink");
    let disks = j["disks"].as_array().unwrap();
    let serials: Vec<_> = disks
        .iter()
        .map(|d| d["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials, ["hpmmap-root", "known", "scratch", "hpmmap-out"]);
    assert_eq!(
        (&disks[0]["ro"], &disks[1]["ro"]),
        (&true.into(), &true.into())
    );
    assert!(j["image"]["initramfs_bytes"].as_u64().unwrap() > 0);
    assert_eq!(j["image"]["rootfs_bytes"], 2u64 << 20);
    for l in out.lines().filter(|l| {
        l.contains("GUEST-") || l.contains("L1-") || l.contains("output:") || l.contains("root:")
    }) {
        println!("{}", l.trim());
    }
    println!(
        "virtio lab: L2 run_seconds {} (nested lab emulation)",
        j["run_seconds"]
    );
}
