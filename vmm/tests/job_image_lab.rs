//! Tier 3 through the images/ lab (`hpmmap-lab run`): a job image made by `hpmmap-image build`
//! boots as L2 under this hpmmap-vmm inside L1 (Debian's kernel under QEMU/TCG with SVM+NPT),
//! with 2 vCPUs, and the VMM's report is checked: the job's exit status, KVM's pages_1g equal
//! to guest RAM in GiB, 1 GiB host pages read back from smaps, the pool announced by the PV
//! device and taken by the guest's hpmmap module. Skips with the reason where the lab tools,
//! QEMU or Debian's packages are not to be had. Figures here are emulation timings.

mod common;

use common::lab::*;

#[test]
fn job_image_boots_as_l2_with_two_vcpus_and_a_right_report() {
    let name = "job_image_boots_as_l2_with_two_vcpus_and_a_right_report";
    let Some((tools, _dir, img)) = lab_with_image(name) else {
        return;
    };
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(img.join("manifest.json")).unwrap()).unwrap();

    let cmd = format!(
        "{VMM_RETRYING}\nvmm_retrying --image /img --mem 2G --vcpus 2 --report /tmp/r.json; \
         echo VMM-STATUS=$?; echo REPORT-BEGIN; cat /tmp/r.json; echo REPORT-END"
    );
    // Two vCPUs of an L2 Linux under nested SVM emulated by TCG fail now and then: the L1
    // script boots again after those signatures, and L1 is booted again if its kernel died.
    let Some(r) = tools.run_retrying(name, &L2_ON_1G_PAGES, &img, &cmd) else {
        return;
    };
    let out = last_attempts(&r.out);
    assert_eq!(r.code, Some(0), "lab run:\n{out}");
    assert!(
        out.contains("VMM-STATUS=0"),
        "job exit status 0 through the PV device:\n{out}"
    );
    assert!(out.contains("HPMMAP-JOB-EXIT 0"), "{out}");
    let j = json_between(&out, "REPORT-BEGIN", "REPORT-END");
    assert_eq!(j["exit_reason"], "job-exit");
    assert_eq!(j["job_exit_status"], 0);
    assert_eq!(j["vcpus"], 2);
    assert_eq!(j["kernel_format"], "elf-pvh");
    assert_eq!(j["guest_ram_bytes"], 2u64 << 30);
    assert_eq!(j["host_page_size_bytes"], 1u64 << 30);
    assert_eq!(
        j["kvm_pages"]["pages_1g"], 2,
        "pages_1g equals guest RAM in GiB"
    );
    assert_eq!(j["pool_ranges"][0]["base"], 1u64 << 30);
    assert_eq!(j["pool_bytes"], 1u64 << 30);
    assert_eq!(j["job"], manifest["job"]);
    assert!(j["platform"].as_str().unwrap().starts_with("nested lab"));
    assert!(out.contains("2 vCPUs"), "the guest saw both vCPUs:\n{out}");
    if manifest["hpmmap"] == true {
        assert!(
            out.contains("pool_source=pv@0xfeb00000,page_shift=30,ranges=1"),
            "the module took its pool from the PV device:\n{out}"
        );
    }
}

/// `vmm_retrying` itself, on this host with busybox's sh (L1's shell) and a stand-in
/// `hpmmap-vmm` that exits with the statuses it is given, one per start: the nested-lab
/// signatures (72, 143) boot again up to 3 boots unless the guest's init announced the job,
/// any other status is returned at once, and only the last boot's lines survive
/// `last_attempts`.
#[test]
fn vmm_retrying_boots_again_only_after_nested_signatures() {
    let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
    else {
        hpmmap_testkit::skip(
            common::Tier::Tools,
            "vmm_retrying_boots_again_only_after_nested_signatures",
            "busybox is not installed (package busybox-static)",
        );
        return;
    };
    let dir = common::TempDir::new("vmm_retrying");
    let bin = dir.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("hpmmap-vmm");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nn=$(( $(cat {d}/starts 2>/dev/null || echo 0) + 1 ))\necho $n > {d}/starts\n\
             s=$(echo $FAKE_STATUSES | cut -d' ' -f$n)\n[ -z \"$FAKE_STARTED\" ] || echo \"hpmmap-init: platform: x; job runs hpmmap\"\n\
             echo \"boot $n HPMMAP-JOB-EXIT $s\"\nexit $s\n",
            d = dir.path("").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run_with = |statuses: &str, started: &str| -> (Option<i32>, String, u32) {
        let _ = std::fs::remove_file(dir.path("starts"));
        let out = std::process::Command::new(busybox)
            .args([
                "sh",
                "-c",
                &format!("{VMM_RETRYING}\nvmm_retrying --mem 2G"),
            ])
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
            )
            .env("FAKE_STATUSES", statuses)
            .env("FAKE_STARTED", started)
            .output()
            .unwrap();
        let starts = std::fs::read_to_string(dir.path("starts"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code(), text, starts)
    };
    let run = |statuses: &str| run_with(statuses, "");

    let (code, out, starts) = run("72 143 0");
    assert_eq!((code, starts), (Some(0), 3), "{out}");
    assert!(out.contains("L1-VMM-RETRY attempt 1 status 72"), "{out}");
    assert!(out.contains("L1-VMM-RETRY attempt 2 status 143"), "{out}");
    assert_eq!(
        last_attempts(&out).matches("HPMMAP-JOB-EXIT").count(),
        1,
        "only the last boot's markers: {out}"
    );
    assert!(last_attempts(&out).contains("boot 3 HPMMAP-JOB-EXIT 0"));

    let (code, out, starts) = run("72 72 72 0");
    assert_eq!((code, starts), (Some(72), 3), "three boots at most: {out}");

    let (code, out, starts) = run("3 0");
    assert_eq!(
        (code, starts),
        (Some(3), 1),
        "a job's own status is final: {out}"
    );

    // A hang or a triple fault after the init announced the job is the job's: never retried.
    let (code, out, starts) = run_with("143 0", "1");
    assert_eq!(
        (code, starts),
        (Some(143), 1),
        "a started job is not booted again: {out}"
    );
}
