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

    let cmd = "timeout 300 hpmmap-vmm --image /img --mem 2G --vcpus 2 --report /tmp/r.json; \
               echo VMM-STATUS=$?; echo REPORT-BEGIN; cat /tmp/r.json; echo REPORT-END";
    // Two vCPUs of an L2 Linux under nested SVM emulated by TCG fail now and then (a guest
    // triple fault on vCPU 1, or an RCU stall on vCPU 0 that the timeout above ends; see the
    // vmm README): one retry, and the first failure is printed.
    let lab_args = L2_ON_1G_PAGES;
    let mut attempt = 0;
    let r = loop {
        attempt += 1;
        let Some(r) = tools.run(name, &lab_args, &img, cmd) else {
            return;
        };
        let intermittent = r.out.contains("VMM-STATUS=72") || r.out.contains("VMM-STATUS=143");
        if intermittent && attempt == 1 {
            let lines: Vec<&str> = r.out.lines().filter(|l| l.contains("hpmmap-vmm")).collect();
            println!(
                "RETRY: {name}: intermittent nested failure on attempt 1:\n{}",
                lines.join("\n")
            );
            continue;
        }
        break r;
    };
    let out = r.out;
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
