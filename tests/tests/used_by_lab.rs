//! The used-by command (issue 19) in the nested lab: on an L1 host set up as the README says
//! (1 GiB pages on its kernel command line, an SR-IOV NIC with VFs), the README's steps run
//! as a user types them: `hpmmap-offline reserve --size NG`, `hpmmap-vmm --mem NG --vcpus V
//! --vf PF --image IMG`, `hpmmap-offline release --all` (tests/lab/used-by.sh). Checked per
//! phase: reserve exits 0 and adopts the boot-time pages (growing the pool only by what is
//! missing), every GiB of guest RAM is a 1 GiB NPT page (`pages_1g`), the guest sees its
//! vCPUs and the VF on its PCI bus, the job exits 0, the VF is back on its host driver, and
//! release leaves the pool exactly as the host had it.
//!
//! CI runs the short form (one L1 boot: 2 GiB on boot-time pages, then 3 GiB on boot-time
//! plus run-time pages, with 2 and 4 vCPUs). The full size (18 GiB, 16 vCPUs, on 18 boot-time
//! pages, then on 9 boot-time pages plus 9 reserved at run time, one L1 of 21 GiB each) needs
//! about 20 GiB of this machine's memory, so it is its own command (README.md, "The used-by
//! command"):
//! `cargo test -p hpmmap-tests --test used_by_lab -- --ignored --nocapture`.
//! Figures from here are emulation figures (nested lab under QEMU/TCG), never hardware.

use hpmmap_image::builder::{build, BuildOptions};
use hpmmap_image::lab::{parse_add, Lab, LabConfig, LabOutput, MAX_BOOTS};
use hpmmap_tests::*;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/used-by.sh");
const RETRY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/retry.sh");
const IGB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/igb.sh");

struct Phase {
    name: &'static str,
    gib: u64,
    vcpus: u32,
    /// Run the VMM jailed (`--jail DIR --uid 65534 --gid 65534`).
    jail: bool,
}

/// One L1 boot: its RAM, the 1 GiB pages on its kernel command line, the phases run in it.
struct Host {
    mem_gib: u64,
    boot_pages: u64,
    phases: &'static [Phase],
    /// Seconds one L2 boot may take (prefault and boot grow with RAM and vCPUs).
    vmm_limit: u64,
    timeout: Duration,
}

const SHORT: Host = Host {
    mem_gib: 10,
    boot_pages: 2,
    phases: &[
        Phase {
            name: "boot",
            gib: 2,
            vcpus: 2,
            jail: true,
        },
        Phase {
            name: "grow",
            gib: 3,
            vcpus: 4,
            jail: false,
        },
    ],
    vmm_limit: 240,
    timeout: Duration::from_secs(900),
};

const FULL_BOOT_PAGES: Host = Host {
    mem_gib: 21,
    boot_pages: 18,
    phases: &[Phase {
        name: "boottime",
        gib: 18,
        vcpus: 16,
        jail: false,
    }],
    vmm_limit: 1200,
    timeout: Duration::from_secs(2400),
};

/// Half the pages at boot, half reserved at run time, in an L1 one GiB larger. Measured
/// 2026-12-06, the nested lab cannot make them: four of a 21 GiB L1's GiB ranges and five of a
/// 22 GiB L1's hold unmovable kernel memory, so reserve got 8 of the 9 run-time pages (16 of
/// 18 with none at boot), then gave them back (exit 3, pool as before). Boot-time pages are
/// placed before the kernel spreads out, which is why README recommends them.
const FULL_RUN_TIME_PAGES: Host = Host {
    mem_gib: 22,
    boot_pages: 9,
    phases: &[Phase {
        name: "runtime",
        gib: 18,
        vcpus: 16,
        jail: false,
    }],
    ..FULL_BOOT_PAGES
};

fn skip_reason() -> Option<String> {
    lab_skip_reason()
        .or_else(|| built_host_binary("hpmmap-vmm").err())
        .or_else(|| built_host_binary("hpmmap-offline").err())
}

fn work_dir(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("used-by-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Boots L1 for `host` with the default job image and runs the scenario; `None` after
/// printing why when the lab cannot run here.
fn run(host: &Host, tag: &str) -> Option<LabOutput> {
    if !lab_ready(&format!("used_by_lab {tag}"), skip_reason()) {
        return None;
    }
    let base = work_dir(tag);
    let img = base.join("img");
    let m = build(&BuildOptions::new(&img)).unwrap_or_else(|e| panic!("hpmmap-image build: {e}"));
    if !m.hpmmap {
        let why = format!(
            "the job image has no hpmmap module ({})",
            m.notes.join("; ")
        );
        lab_skip(&format!("used_by_lab {tag}"), why);
        return None;
    }
    let adds = [
        format!("{}:/img", img.display()),
        format!("{SCENARIO}:/root/used-by.sh"),
        format!("{RETRY}:/root/retry.sh"),
        format!("{IGB}:/root/igb.sh"),
    ]
    .iter()
    .map(|a| parse_add(a).unwrap())
    .collect();
    let lab = Lab::prepare(LabConfig {
        mem: host.mem_gib << 30,
        hugepages_1g: host.boot_pages as u32,
        timeout: host.timeout,
        adds,
        ..LabConfig::default()
    })
    .unwrap_or_else(|e| panic!("the lab: {e}"));
    let phases: Vec<String> = host
        .phases
        .iter()
        .map(|p| {
            let jail = if p.jail { ":jail" } else { "" };
            format!("{}:{}:{}{jail}", p.name, p.gib, p.vcpus)
        })
        .collect();
    let cmd = format!(
        "VMM_LIMIT={} sh /root/used-by.sh {}",
        host.vmm_limit,
        phases.join(" ")
    );
    // L1's own kernel sometimes oopses under QEMU/TCG's nested SVM while its KVM runs an L2
    // (vmm/README.md, Known issue); everything in L1 starts from its initramfs, so another
    // boot starts clean.
    let out = lab
        .run_rebooting(&cmd, MAX_BOOTS)
        .unwrap_or_else(|e| panic!("the used-by lab run failed: {e}"));
    let _ = std::fs::remove_dir_all(&base);
    println!(
        "used-by command in the nested lab (nested lab under QEMU/TCG; emulation timings), \
         L1 {} GiB with hugepages={} on its command line, {:.1} s:\n{}",
        host.mem_gib,
        host.boot_pages,
        out.elapsed.as_secs_f64(),
        out.output
    );
    Some(out)
}

fn get<'a>(o: &'a LabOutput, key: &str) -> &'a str {
    value(&o.output, key).unwrap_or_else(|| panic!("no {key}= line in:\n{}", o.output))
}

/// The phase's VMM output without the lines of boots that were retried.
fn final_boot<'a>(o: &'a LabOutput, name: &str) -> Vec<&'a str> {
    prefixed(&o.output, &format!("{name}: "))
        .into_iter()
        .filter(|l| !l.starts_with("attempt"))
        .collect()
}

/// Asserts everything issue 19 asks of each phase; returns one summary line per phase.
fn check(host: &Host, o: &LabOutput) -> Vec<String> {
    assert_eq!(get(o, "sriov_rc"), "0", "{}", o.output);
    let vf_ids = get(o, "vf_ids").to_string();
    assert!(!vf_ids.is_empty(), "no VFs in L1:\n{}", o.output);
    let vf_id = vf_ids.split(' ').next().unwrap().to_string();
    let start_pool = format!("{0},{0}", host.boot_pages);
    assert_eq!(get(o, "pool_boot"), start_pool, "L1's boot-time pages");
    let mut summary = vec![];
    for p in host.phases {
        let n = p.name;
        let key = |k: &str| format!("{n}_{k}");
        let output = || o.output.as_str();
        assert_eq!(get(o, &key("pool_before")), start_pool, "{}", output());
        // reserve: exit 0; the free boot-time pages adopted, the pool grown by the rest.
        assert_eq!(
            get(o, &key("reserve_rc")),
            "0",
            "{n}: reserve\n{}",
            output()
        );
        let adopted = p.gib.min(host.boot_pages);
        let added = p.gib - adopted;
        let reserve_text = prefixed(&o.output, &format!("{n} reserve: ")).join("\n");
        let line = if adopted > 0 {
            format!(
                "node 0: {0} of {0} GiB reserved ({adopted} free page(s) already in the pool \
                 adopted, {added} added by this run",
                p.gib
            )
        } else {
            format!(
                "node 0: {0} of {0} GiB reserved ({added} added by this run",
                p.gib
            )
        };
        assert!(reserve_text.contains(&line), "{n}: {reserve_text}");
        assert!(!reserve_text.contains("passed over"), "{n}: {reserve_text}");
        let grown = host.boot_pages.max(p.gib);
        assert_eq!(
            get(o, &key("pool_reserved")),
            format!("{grown},{grown}"),
            "{n}: the pool grows only by what was missing"
        );
        let st: Value = serde_json::from_str(get(o, &key("status_reserved"))).unwrap();
        assert_eq!(st["nodes"][0]["reserved_by_hpmmap"], p.gib, "{st}");
        assert_eq!(st["nodes"][0]["adopted_by_hpmmap"], adopted, "{st}");

        // The used-by command itself.
        let lines = final_boot(o, n);
        let text = lines.join("\n");
        assert_eq!(get(o, &key("vmm_rc")), "0", "{n}: hpmmap-vmm\n{text}");
        assert!(text.contains("HPMMAP-JOB-EXIT 0"), "{n}: {text}");
        let r: Value = serde_json::from_str(get(o, &key("report")))
            .unwrap_or_else(|e| panic!("{n}: report: {e}\n{}", output()));
        assert_eq!(r["exit_reason"], "job-exit", "{r}");
        assert_eq!(r["guest_ram_bytes"], p.gib << 30, "{r}");
        assert_eq!(r["vcpus"], p.vcpus, "{r}");
        assert_eq!(r["host_page_size_bytes"], 1u64 << 30, "{r}");
        assert_eq!(
            r["kvm_pages"]["pages_1g"], p.gib,
            "{n}: every GiB of guest RAM is one 1 GiB NPT page: {r}"
        );
        let workers = r["prefault"]["workers"].as_u64().unwrap();
        let why = r["prefault"]["workers_reason"].as_str().unwrap();
        // The lab pins the VMM to one L1 CPU (taskset), which the report must say.
        assert_eq!(workers, 1, "{r}");
        assert!(why.contains("confined to one CPU"), "{why}");
        assert!(
            text.contains(&format!(", {} vCPUs, cpu", p.vcpus)),
            "{n}: the guest sees {} vCPUs:\n{text}",
            p.vcpus
        );
        let pci = lines
            .iter()
            .find(|l| l.contains("hpmmap-init: pci:"))
            .unwrap_or_else(|| panic!("{n}: no pci line from the guest:\n{text}"));
        assert!(
            pci.contains(&vf_id),
            "{n}: the VF {vf_id} in the guest: {pci}"
        );
        assert_eq!(
            get(o, &key("vf_drivers_after")),
            get(o, "vf_drivers_start"),
            "{n}: every VF back on its host driver"
        );

        assert_eq!(get(o, &key("jail_left")), "no", "{n}: the jail directory");
        if p.jail {
            // Issue 13: the jailed VMM ran the job with the VF; the keeper gave the VF back
            // (checked above) and wrote the report the VMM sent it.
            assert_eq!(r["seccomp"], "kill", "{r}");
            assert_eq!(r["jail"]["uid"], 65534, "{r}");
        }
        // release --all: the host as it was.
        assert_eq!(get(o, &key("release_rc")), "0", "{}", output());
        assert_eq!(get(o, &key("pool_after")), start_pool, "{n}: release");
        assert_eq!(get(o, &key("state_left")), "no", "{n}: state file");
        summary.push(format!(
            "| {n} | {} | {} GiB ({adopted} adopted, {added} added) | {} | prefault {:.1} s, {workers} worker | {} | {} | {} |",
            host.boot_pages,
            p.gib,
            p.vcpus,
            r["prefault"]["seconds"].as_f64().unwrap_or(0.0),
            r["kvm_pages"]["pages_1g"],
            pci.split("pci:").nth(1).unwrap_or("").trim(),
            r["run_seconds"].as_f64().map(|s| format!("{s:.0} s")).unwrap_or_default()
        ));
    }
    summary
}

#[test]
fn used_by_command_short_form_in_the_lab() {
    let Some(o) = run(&SHORT, "short") else {
        return;
    };
    for line in check(&SHORT, &o) {
        println!("{line}");
    }
}

/// The full size, 18 GiB and 16 vCPUs with a VF, on one L1; prints its row of README's table.
fn full_size(host: &Host, tag: &str) {
    let Some(o) = run(host, tag) else {
        return;
    };
    let mut table = vec![
        "| phase | L1 boot pages | reserved | vCPUs | prefault | pages_1g | PCI in the guest | job run |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    table.extend(check(host, &o));
    println!("{}", table.join("\n"));
}

/// 18 boot-time pages (`hugepagesz=1G hugepages=18` on L1's command line).
#[test]
#[ignore = "full size: about 20 GiB of memory and 2-3 minutes; run by hand (README)"]
fn used_by_command_at_full_size_on_boot_time_pages() {
    full_size(&FULL_BOOT_PAGES, "full-boot");
}

/// 9 boot-time pages plus 9 reserved at run time.
#[test]
#[ignore = "full size, 21 GiB of memory; fails in the nested lab: 5 of 22 GiB ranges hold unmovable kernel memory (README)"]
fn used_by_command_at_full_size_on_boot_and_run_time_pages() {
    full_size(&FULL_RUN_TIME_PAGES, "full-run");
}
