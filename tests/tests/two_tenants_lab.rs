//! Two tenants on one node at once (issue 13.7), in the nested lab: two jailed hpmmap-vmm
//! under different uids, each with its own VF and its own 1 GiB pages, run at the same time;
//! each job writes its pattern through its hpmmap pool (tests/lab/pattern.c over /dev/mem:
//! the pool is e820-reserved); after both exit, a third job that gets every page they had
//! scans its pool and finds no word of either pattern, nor any non-zero word: the host hands
//! a job's 1 GiB pages to the next one zeroed. The scanner's first GiB (its kernel's) cannot be
//! read from user space, so it scans 3 of the 4 pages; at least one of them held a pattern.
//! The same for device-dax in an L1 of its own: two jailed VMMs under different uids on dax0.0
//! and dax1.0 (L1's two legacy pmem ranges, `--pmem 6G --pmem-ranges 2`) at once, each writing
//! its pattern through its pool; after both exit, the next job on each device scans its pool
//! (the GiB the tenant before it wrote) and finds no word of either pattern, nor any non-zero
//! word: the VMM clears device memory before a guest sees it.
//! Scenarios: tests/lab/two-tenants.sh, tests/lab/two-tenants-devdax.sh. Figures are emulation
//! figures (nested lab, QEMU/TCG).

use hpmmap_image::builder::{build, BuildOptions};
use hpmmap_image::lab::{parse_add, Lab, LabConfig, LabOutput, MAX_BOOTS};
use hpmmap_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab");
const A: &str = "0xa1a1a1a1a1a1a1a1";
const B: &str = "0xb2b2b2b2b2b2b2b2";

fn work_dir(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("two-tenants-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The L2 initramfs: static busybox, the pattern program, the init. Err: why not here.
fn l2_initramfs(base: &Path) -> Result<PathBuf, String> {
    let static_bb = Command::new("sh")
        .args(["-c", "ldd /bin/busybox 2>&1 | grep -q 'not a dynamic'"])
        .status()
        .is_ok_and(|s| s.success());
    if !static_bb {
        return Err("/bin/busybox is missing or not static (busybox-static)".into());
    }
    let root = base.join("l2root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let cc = Command::new("gcc")
        .args(["-O2", "-static", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(root.join("bin/pattern"))
        .arg(format!("{LAB}/pattern.c"))
        .output()
        .map_err(|e| format!("gcc: {e}"))?;
    if !cc.status.success() {
        let err = String::from_utf8_lossy(&cc.stderr);
        if err.contains("cannot find -lc") {
            return Err("gcc has no static libc (libc6-dev)".into());
        }
        panic!("pattern.c does not build:\n{err}");
    }
    std::fs::copy(format!("{LAB}/two-tenants-init.sh"), root.join("init")).unwrap();
    let out = base.join("l2");
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
    Ok(out)
}

/// The L1 of one scenario: its config beyond the common part, the command it runs.
struct Scenario {
    tag: &'static str,
    cfg: LabConfig,
    cmd: &'static str,
}

/// Boots L1 for `sc` and runs its command. Ok(None): the L2 initramfs cannot be built here.
fn boot(sc: Scenario) -> Result<Option<LabOutput>, String> {
    let base = work_dir(sc.tag);
    let l2 = match l2_initramfs(&base) {
        Ok(p) => p,
        Err(why) => return Err(format!("SKIP: {why}")),
    };
    let img = base.join("img");
    build(&BuildOptions::new(&img)).map_err(|e| format!("hpmmap-image build: {e}"))?;
    let adds = [
        format!("{}:/img", img.display()),
        format!("{}:/l2", l2.display()),
        format!("{LAB}/two-tenants.sh:/root/two-tenants.sh"),
        format!("{LAB}/two-tenants-devdax.sh:/root/two-tenants-devdax.sh"),
        format!("{LAB}/two-tenants-vm.sh:/root/two-tenants-vm.sh"),
        format!("{LAB}/igb.sh:/root/igb.sh"),
    ]
    .iter()
    .map(|a| parse_add(a).map_err(|e| e.to_string()))
    .collect::<Result<_, _>>()?;
    let lab = Lab::prepare(LabConfig { adds, ..sc.cfg }).map_err(|e| format!("the lab: {e}"))?;
    let out = lab
        .run_rebooting(sc.cmd, MAX_BOOTS)
        .map_err(|e| format!("the two-tenants ({}) lab run failed: {e}", sc.tag))?;
    let _ = std::fs::remove_dir_all(&base);
    println!(
        "two tenants ({}) in the nested lab (QEMU/TCG; emulation timings), {:.1} s:\n{}",
        sc.tag,
        out.elapsed.as_secs_f64(),
        out.output
    );
    Ok(Some(out))
}

/// Runs `sc` for `test`; None where the lab cannot run here (a recorded skip).
fn run(test: &str, sc: Scenario) -> Option<LabOutput> {
    // One L1 at a time: the tests of this file run in parallel threads.
    static ONE_L1: Mutex<()> = Mutex::new(());
    let skip = lab_skip_reason().or_else(|| built_host_binary("hpmmap-vmm").err());
    if !lab_ready(test, skip) {
        return None;
    }
    let _l1 = ONE_L1.lock().unwrap_or_else(|e| e.into_inner());
    match boot(sc) {
        Ok(o) => o,
        Err(why) if why.starts_with("SKIP: ") => {
            lab_skip(test, &why[6..]);
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn get<'a>(o: &'a LabOutput, key: &str) -> &'a str {
    value(&o.output, key).unwrap_or_else(|| panic!("no {key}= line in:\n{}", o.output))
}

fn report(o: &LabOutput, name: &str) -> Value {
    serde_json::from_str(get(o, &format!("{name}_report")))
        .unwrap_or_else(|e| panic!("{name}: report: {e}\n{}", o.output))
}

#[test]
fn two_jailed_tenants_leave_no_byte_for_the_next_job() {
    let Some(o) = run(
        "two_tenants_lab",
        Scenario {
            tag: "hugetlb",
            cfg: LabConfig {
                mem: 8 << 30,
                hugepages_1g: 4,
                timeout: Duration::from_secs(900),
                ..LabConfig::default()
            },
            cmd: "sh /root/two-tenants.sh",
        },
    ) else {
        return;
    };
    let o = &o;
    assert_eq!(get(o, "sriov_rc"), "0");
    assert_eq!(get(o, "pool_start"), "4,4");
    let mut vfs = vec![];
    for (n, uid) in [("a", 65534), ("b", 65533)] {
        assert_eq!(get(o, &format!("{n}_rc")), "0", "{n}\n{}", o.output);
        let lines = prefixed(&o.output, &format!("{n}: ")).join("\n");
        assert!(
            lines.contains("PATTERN-fill base=0x40000000 size=0x40000000"),
            "{n} wrote its pool:\n{lines}"
        );
        assert!(
            lines.contains("L2-VF 0x8086:0x10ca"),
            "{n} has a VF:\n{lines}"
        );
        let r = report(o, n);
        assert_eq!(r["jail"]["uid"], uid, "{r}");
        assert_eq!(r["seccomp"], "kill", "{r}");
        assert_eq!(r["kvm_pages"]["pages_1g"], 2, "{r}");
        vfs.push(r["vf"]["vf"].as_str().unwrap().to_string());
        assert_eq!(get(o, &format!("{n}_jail_left")), "no");
    }
    assert_ne!(vfs[0], vfs[1], "each tenant its own VF");
    // Both at once: each VMM started before the other ended (L1 uptime, seconds).
    let t = |k: &str| -> f64 { get(o, k).parse().unwrap() };
    assert!(
        t("a_start") < t("b_end") && t("b_start") < t("a_end"),
        "the tenants ran at the same time: a {}..{}, b {}..{}",
        t("a_start"),
        t("a_end"),
        t("b_start"),
        t("b_end")
    );
    assert_eq!(
        get(o, "vf_drivers_after"),
        get(o, "vf_drivers_start"),
        "VFs back"
    );
    assert_eq!(get(o, "pool_after_tenants"), "4,4");
    // The third job on all 4 pages: no word of either tenant, no non-zero word at all.
    assert_eq!(get(o, "s_rc"), "0", "{}", o.output);
    let s = prefixed(&o.output, "s: ").join("\n");
    let scans: Vec<&str> = s
        .lines()
        .filter(|l| l.starts_with("PATTERN-scan"))
        .collect();
    assert_eq!(scans.len(), 2, "two pool ranges scanned:\n{s}");
    for l in &scans {
        assert!(
            l.contains(&format!("{A}=0")) && l.contains(&format!("{B}=0")),
            "{l}"
        );
        assert!(l.ends_with("nonzero=0"), "{l}");
    }
    let total: u64 = scans
        .iter()
        .filter_map(|l| l.split("size=").nth(1)?.split(' ').next())
        .map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap())
        .sum();
    assert_eq!(total, 3 << 30, "3 of the 4 pages scanned");
    assert_eq!(report(o, "s")["kvm_pages"]["pages_1g"], 4);
    assert_eq!(get(o, "pool_end"), "4,4");
}

/// The scan lines of job `name`: each with no word of either pattern and no non-zero word;
/// returns the bytes they covered.
fn clean_scans(o: &LabOutput, name: &str) -> u64 {
    let s = prefixed(&o.output, &format!("{name}: ")).join("\n");
    let scans: Vec<&str> = s
        .lines()
        .filter(|l| l.starts_with("PATTERN-scan"))
        .collect();
    assert!(!scans.is_empty(), "{name} scanned nothing:\n{s}");
    for l in &scans {
        assert!(
            l.contains(&format!("{A}=0")) && l.contains(&format!("{B}=0")),
            "{name}: {l}"
        );
        assert!(l.ends_with("nonzero=0"), "{name}: {l}");
    }
    scans
        .iter()
        .filter_map(|l| l.split("size=").nth(1)?.split(' ').next())
        .map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap())
        .sum()
}

#[test]
fn two_jailed_tenants_on_devdax_leave_no_byte_for_the_next_job() {
    // Device-dax in a static pmem namespace with 1 GiB alignment loses its first GiB to the
    // info block's padding: 3 GiB ranges give 2 GiB devices (vmm/tests/devdax_lab.rs). With
    // the hugetlb scenario's 4 pages beside them L1 would need 13 GiB, hence its own L1: the
    // ranges end at 11 GiB, L1 keeps 2 GiB below 4 GiB, the GiB between the ranges and one
    // above them.
    let Some(o) = run(
        "two_tenants_lab devdax",
        Scenario {
            tag: "devdax",
            cfg: LabConfig {
                mem: 10 << 30,
                hugepages_1g: 0,
                pmem: 6 << 30,
                pmem_ranges: 2,
                timeout: Duration::from_secs(900),
                ..LabConfig::default()
            },
            cmd: "sh /root/two-tenants-devdax.sh",
        },
    ) else {
        return;
    };
    let o = &o;
    assert_eq!(get(o, "dd_regions"), "region0 region1", "two pmem regions");
    assert_eq!(get(o, "dd_setup"), "ok", "{}", o.output);
    for d in ["dax0", "dax1"] {
        assert_eq!(
            get(o, &format!("dd_{d}")),
            "2147483648,1073741824",
            "{d}: 2 GiB, 1 GiB aligned"
        );
    }
    for (n, uid, dev) in [("da", 65534, "dax0.0"), ("db", 65533, "dax1.0")] {
        assert_eq!(get(o, &format!("{n}_rc")), "0", "{n}\n{}", o.output);
        let lines = prefixed(&o.output, &format!("{n}: ")).join("\n");
        assert!(
            lines.contains("PATTERN-fill base=0x40000000 size=0x40000000"),
            "{n} wrote its pool:\n{lines}"
        );
        let r = report(o, n);
        assert_eq!(r["memory_backend"], format!("devdax:/dev/{dev}"), "{r}");
        assert_eq!(r["jail"]["uid"], uid, "{r}");
        assert_eq!(r["seccomp"], "kill", "{r}");
        assert_eq!(r["kvm_pages"]["pages_1g"], 2, "{r}");
        assert_eq!(get(o, &format!("{n}_jail_left")), "no");
    }
    let t = |k: &str| -> f64 { get(o, k).parse().unwrap() };
    assert!(
        t("da_start") < t("db_end") && t("db_start") < t("da_end"),
        "the tenants ran at the same time: da {}..{}, db {}..{}",
        t("da_start"),
        t("da_end"),
        t("db_start"),
        t("db_end")
    );
    // The next job on each device: its pool is the GiB the tenant wrote (device offset 1 GiB).
    for (s, dev) in [("s0", "dax0.0"), ("s1", "dax1.0")] {
        assert_eq!(get(o, &format!("{s}_rc")), "0", "{}", o.output);
        assert_eq!(clean_scans(o, s), 1 << 30, "{s}: its 1 GiB pool scanned");
        let r = report(o, s);
        assert_eq!(r["memory_backend"], format!("devdax:/dev/{dev}"), "{r}");
        assert_eq!(r["kvm_pages"]["pages_1g"], 2, "{r}");
    }
}
