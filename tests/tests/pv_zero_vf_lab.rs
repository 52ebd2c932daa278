//! PV ZERO with a VF passed through (issue 13.2), in the nested lab: the hpmmap module in an
//! L2 job with an igb VF allocates and frees pool memory in rounds, each allocation cleared
//! by the host through PV ZERO (the module's `pv_zero_bytes` grows every round); the VF
//! still carries traffic after every ZERO (L2 pings L1's PF through it), and the VMM's
//! guest RAM memfd stays whole for the VM's life (its hugetlb size in /proc/PID/smaps, read
//! by L1 all along, is guest RAM every time: no hole punched, no page back in the pool).
//! L1 has 2560M for VF traffic (images/README.md), so guest RAM is on 2 MiB host pages; the
//! ZERO path is the same for 1 GiB pages. Scenario: tests/lab/pv-zero-vf.sh. Figures are
//! emulation figures (nested lab, QEMU/TCG).

use hpmmap_image::builder::{build, BuildOptions};
use hpmmap_image::lab::{parse_add, Lab, LabConfig, LabOutput, MAX_BOOTS};
use hpmmap_tests::*;
use std::path::PathBuf;
use std::time::Duration;

const SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/pv-zero-vf.sh");
const IGB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/igb.sh");
const ROUNDS: u32 = 5;

/// The job: the VF up at 10.99.0.2, then ROUNDS of a 256 MiB buffer taken from the pool and
/// given back (busybox dd), each followed by the module's ZERO count and a ping of L1's PF.
fn job() -> String {
    let z = "/sys/kernel/hpmmap/pv_zero_bytes";
    format!(
        "/bin/busybox sh -c 'ip link set eth0 up; ip addr add 10.99.0.2/24 dev eth0; \
         i=0; while [ $i -lt 30 ] && [ \"$(cat /sys/class/net/eth0/carrier)\" != 1 ]; do sleep 1; i=$((i+1)); done; \
         echo ZV-START zero=$(cat {z}) carrier=$(cat /sys/class/net/eth0/carrier); \
         r=1; while [ $r -le {ROUNDS} ]; do \
         dd if=/dev/zero of=/dev/null bs=256M count=1 2>/dev/null; z=$(cat {z}); \
         ping -c 2 -W 3 10.99.0.1 > /dev/null 2>&1; echo ZV-ROUND $r zero=$z ping=$?; \
         r=$((r+1)); done; echo ZV-END'"
    )
}

fn run() -> Option<LabOutput> {
    let skip = lab_skip_reason().or_else(|| built_host_binary("hpmmap-vmm").err());
    if !lab_ready("pv_zero_vf_lab", skip) {
        return None;
    }
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pv-zero-vf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let img = base.join("img");
    let mut opts = BuildOptions::new(&img);
    opts.job = Some(job());
    opts.modules = vec!["igbvf".into()];
    let m = build(&opts).unwrap_or_else(|e| panic!("hpmmap-image build: {e}"));
    assert!(
        m.hpmmap,
        "the job image has no hpmmap module: {}",
        m.notes.join("; ")
    );
    let adds = [
        format!("{}:/img", img.display()),
        format!("{SCENARIO}:/root/pv-zero-vf.sh"),
        format!("{IGB}:/root/igb.sh"),
    ]
    .iter()
    .map(|a| parse_add(a).unwrap())
    .collect();
    let lab = Lab::prepare(LabConfig {
        mem: 2560 << 20,
        hugepages_1g: 0,
        timeout: Duration::from_secs(600),
        adds,
        ..LabConfig::default()
    })
    .unwrap_or_else(|e| panic!("the lab: {e}"));
    let out = lab
        .run_rebooting("VMM_LIMIT=300 sh /root/pv-zero-vf.sh", MAX_BOOTS)
        .unwrap_or_else(|e| panic!("the PV ZERO + VF lab run failed: {e}"));
    let _ = std::fs::remove_dir_all(&base);
    println!(
        "PV ZERO with a VF in the nested lab (QEMU/TCG; emulation timings), {:.1} s:\n{}",
        out.elapsed.as_secs_f64(),
        out.output
    );
    Some(out)
}

fn get<'a>(o: &'a LabOutput, key: &str) -> &'a str {
    value(&o.output, key).unwrap_or_else(|| panic!("no {key}= line in:\n{}", o.output))
}

#[test]
fn pv_zero_keeps_the_memfd_whole_and_the_vf_carrying_traffic() {
    let Some(o) = run() else {
        return;
    };
    let out = &o.output;
    assert_eq!(get(&o, "sriov_rc"), "0", "{out}");
    assert_eq!(get(&o, "pages_2m"), "1024", "{out}");
    assert_eq!(get(&o, "vmm_rc"), "0", "{out}");
    let vm = prefixed(out, "vm: ");
    let start = vm
        .iter()
        .find(|l| l.contains("ZV-START"))
        .unwrap_or_else(|| panic!("the job did not start:\n{out}"));
    assert!(start.ends_with("carrier=1"), "the VF has no link: {start}");
    let field = |l: &str, k: &str| -> u64 {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k}= in {l}"))
    };
    let mut zero = field(start, "zero");
    let rounds: Vec<&&str> = vm.iter().filter(|l| l.contains("ZV-ROUND")).collect();
    assert_eq!(rounds.len(), ROUNDS as usize, "{out}");
    for l in rounds {
        let z = field(l, "zero");
        assert!(
            z > zero,
            "no PV ZERO in this round: {l} (before: {zero})\n{out}"
        );
        zero = z;
        assert_eq!(
            field(l, "ping"),
            0,
            "the VF carried no traffic after a ZERO: {l}\n{out}"
        );
    }
    assert!(vm.iter().any(|l| l.contains("ZV-END")), "{out}");
    // The memfd stayed whole: 2 GiB of 2 MiB hugetlb pages in every sample.
    assert!(
        get(&o, "smaps_samples").parse::<u32>().unwrap() >= 3,
        "{out}"
    );
    assert_eq!(get(&o, "smaps_hugetlb_kb_min"), "2097152", "{out}");
    assert_eq!(get(&o, "smaps_hugetlb_kb_max"), "2097152", "{out}");
    assert_eq!(
        get(&o, "vf_drivers_end"),
        get(&o, "vf_drivers_start"),
        "{out}"
    );
}
