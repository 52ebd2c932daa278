//! Tenants on one node (issue 13.3-13.5) in the nested lab: one L1 boot (8 GiB, 2 vCPUs, 2
//! boot-time 1 GiB pages, a 2 GiB pmem range, the igb PF with two VFs) runs
//! tests/lab/tenants.sh:
//!
//! 1. two jobs reserve 1 GiB each (`--job`); a VMM of a job without a reservation exits 2;
//!    two VMMs of the two jobs started at the same moment on the same PF get two different
//!    VFs and both boot; each job's release gives back its own pages; a VMM without `--job`
//!    exits 2 naming the jobs whose free pages it would have taken;
//! 2. a VMM on /dev/dax0.0 locks it: a second VMM on the device exits 2 naming its pid;
//! 3. `kill -9` of hpmmap-vmm right after its VF claim, during prefault, and while its job
//!    runs; each time one `hpmmap-offline recover` puts the VF back on igbvf (no
//!    driver_override, no claim record) and releases the job's pages;
//!    The same for a jailed VMM of a job (`--job ID --jail`, pid 1 of its own pid namespace,
//!    its VF claim naming its host pid), killed itself (its keeper cleans up; the epilog's
//!    `recover --job ID` releases the pages) and through its keeper (the VMM dies with it;
//!    `recover` finds the jail directory, the cgroup, the VF and the pages and cleans all);
//! 4. `kill -9` of hpmmap-offline in the middle of a reserve; `recover` leaves the pool as
//!    at boot and no state.
//!
//! The ignored test runs tests/lab/partition-cycles.sh in a 9 GiB L1 with a 3 GiB pmem range: 20 reserve / run / release cycles on
//! a device-dax partition kept as ZONE_MOVABLE system RAM while idle, beside 20 on plain
//! hugetlb pages (host-offline/README.md has the figures). Emulation figures only.

use hpmmap_image::lab::{parse_add, Lab, LabConfig, LabOutput, MAX_BOOTS};
use hpmmap_tests::*;
use std::path::PathBuf;
use std::time::Duration;

const SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/tenants.sh");
const CYCLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/partition-cycles.sh");
const RETRY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/retry.sh");
const JAIL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/tenants-jail.sh");

fn skip_reason() -> Option<String> {
    lab_skip_reason()
        .or_else(|| built_host_binary("hpmmap-vmm").err())
        .or_else(|| built_host_binary("hpmmap-offline").err())
}

fn work_dir(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tenants-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Boots L1 with the default job image and `extra` files, runs `cmd`; None after printing
/// why when the lab cannot run here.
fn run(
    tag: &str,
    cmd: &str,
    extra: &[String],
    timeout: Duration,
    (mem_gib, pmem_gib, boot_pages): (u64, u64, u32),
) -> Option<LabOutput> {
    if !lab_ready(&format!("tenants_lab {tag}"), skip_reason()) {
        return None;
    }
    let base = work_dir(tag);
    let img = base.join("img");
    let m = hpmmap_image::builder::build(&hpmmap_image::builder::BuildOptions::new(&img))
        .unwrap_or_else(|e| panic!("hpmmap-image build: {e}"));
    if !m.hpmmap {
        let why = format!(
            "the job image has no hpmmap module ({})",
            m.notes.join("; ")
        );
        lab_skip(&format!("tenants_lab {tag}"), why);
        return None;
    }
    let mut adds = vec![
        format!("{}:/img", img.display()),
        format!("{SCENARIO}:/root/tenants.sh"),
        format!("{CYCLES}:/root/partition-cycles.sh"),
        format!("{RETRY}:/root/retry.sh"),
        format!("{JAIL}:/root/tenants-jail.sh"),
    ];
    adds.extend(extra.iter().cloned());
    let lab = Lab::prepare(LabConfig {
        mem: mem_gib << 30,
        hugepages_1g: boot_pages,
        pmem: pmem_gib << 30,
        timeout,
        adds: adds.iter().map(|a| parse_add(a).unwrap()).collect(),
        ..LabConfig::default()
    })
    .unwrap_or_else(|e| panic!("the lab: {e}"));
    let out = lab
        .run_rebooting(cmd, MAX_BOOTS)
        .unwrap_or_else(|e| panic!("the tenants lab run failed: {e}"));
    let _ = std::fs::remove_dir_all(&base);
    println!(
        "tenants lab (nested lab under QEMU/TCG; emulation timings), {:.1} s:\n{}",
        out.elapsed.as_secs_f64(),
        out.output
    );
    Some(out)
}

fn get<'a>(o: &'a LabOutput, key: &str) -> &'a str {
    value(&o.output, key).unwrap_or_else(|| panic!("no {key}= line in:\n{}", o.output))
}

#[test]
fn tenants_share_a_node_and_recover_cleans_after_every_kill() {
    let Some(o) = run(
        "main",
        "VMM_LIMIT=240 sh /root/tenants.sh",
        &[],
        Duration::from_secs(1500),
        (8, 2, 2),
    ) else {
        return;
    };
    let out = &o.output;
    let start = get(&o, "vf_drivers_start").to_string();
    assert_eq!(get(&o, "pool_boot"), "2,2", "{out}");
    // 1. two jobs
    assert_eq!(get(&o, "a_reserve_rc"), "0", "{out}");
    assert_eq!(get(&o, "b_reserve_rc"), "0", "{out}");
    assert_eq!(get(&o, "c_vmm_rc"), "2", "{out}");
    assert!(out.contains("--job c: needs 1 1 GiB page(s)"), "{out}");
    assert_eq!(get(&o, "nojob_vmm_rc"), "2", "{out}");
    assert!(
        out.contains(
            "no --job: needs 1 1 GiB page(s) but only 0 free are held for no job; \
             2 free page(s) belong to job(s) a 1, b 1"
        ),
        "{out}"
    );
    assert_eq!(
        get(&o, "nojob_pool"),
        "2,2",
        "the refused VMM took no page: {out}"
    );
    let (va, vb) = (get(&o, "a_vf"), get(&o, "b_vf"));
    assert!(!va.is_empty() && !vb.is_empty(), "{out}");
    assert_ne!(va, vb, "two VMMs started at once got one VF:\n{out}");
    assert_eq!(get(&o, "a_vmm_rc"), "0", "{out}");
    assert_eq!(get(&o, "b_vmm_rc"), "0", "{out}");
    assert_eq!(get(&o, "two_vf_drivers_after"), start, "{out}");
    assert_eq!(get(&o, "two_claims_after"), "", "{out}");
    assert!(
        get(&o, "a_jobs_after_release").starts_with("job b: 1 GiB"),
        "{out}"
    );
    assert_eq!(get(&o, "two_pool_after"), "2,2", "{out}");
    assert_eq!(get(&o, "two_state_left"), "no", "{out}");
    // 2. device-dax lock
    assert_eq!(get(&o, "dax_setup_rc"), "0", "{out}");
    let d1 = get(&o, "d1_pid");
    assert!(!d1.is_empty(), "{out}");
    assert_eq!(get(&o, "d2_vmm_rc"), "2", "{out}");
    assert_eq!(get(&o, "d3_vmm_rc"), "2", "{out}");
    assert!(out.contains("dax0.0 is held for job d"), "{out}");
    assert!(
        out.contains(&format!("dax0.0 is in use by pid {d1}")),
        "the second VMM did not name the holder:\n{out}"
    );
    assert_eq!(get(&o, "d1_vmm_rc"), "0", "{out}");
    // 3. kill -9 of the VMM at three moments
    for (job, moment) in [
        ("kclaim", "claim"),
        ("kprefault", "prefault"),
        ("krunning", "running"),
    ] {
        let k = |s: &str| get(&o, &format!("{job}_{s}")).to_string();
        assert_eq!(k("reserve_rc"), "0", "{out}");
        assert!(
            k("killed_at").starts_with(&format!("{moment}:yes")),
            "{job}: the kill missed its moment: {}\n{out}",
            k("killed_at")
        );
        assert!(k("claims_after_kill").contains(".claim"), "{job}: {out}");
        // Left on vfio-pci, or with no driver when the kill came inside the rebind.
        assert_ne!(k("vf_drivers_after_kill"), start, "{job}: {out}");
        assert_eq!(k("recover_rc"), "0", "{job}: {out}");
        assert_eq!(k("vf_drivers_after_recover"), start, "{job}: {out}");
        assert_eq!(
            k("overrides_after_recover").trim(),
            "(null) (null)",
            "{job}: {out}"
        );
        assert_eq!(k("claims_after_recover"), "", "{job}: {out}");
        assert_eq!(k("pool_after_recover"), "2,2", "{job}: {out}");
        assert_eq!(k("state_left"), "no", "{job}: {out}");
    }
    // 3b. kill -9 of a jailed VMM of a job, and of its keeper
    assert_eq!(get(&o, "cgroup2_mounted"), "yes", "{out}");
    for (job, who) in [("jvmm", "vmm"), ("jkeeper", "keeper")] {
        let k = |s: &str| get(&o, &format!("{job}_{s}")).to_string();
        assert_eq!(k("reserve_rc"), "0", "{job}: {out}");
        assert_eq!(k("running"), "1", "{job}: the job did not run:\n{out}");
        let vmm = k("vmm");
        assert_eq!(
            k("nspid"),
            format!("{vmm} 1"),
            "{job}: pid 1 of its namespace: {out}"
        );
        assert_eq!(k("pidns_own"), "yes", "{job}: {out}");
        assert_eq!(k("uid"), "65534", "{job}: {out}");
        assert_eq!(
            k("claim_pid").trim(),
            vmm,
            "{job}: the claim names the host pid: {out}"
        );
        assert_eq!(k("in_cgroup"), "1", "{job}: {out}");
        assert_eq!(k("jail_while_running"), "yes", "{job}: {out}");
        assert_eq!(
            k("vmm_gone"),
            "yes",
            "{job}: the VMM outlived the kill: {out}"
        );
        if who == "keeper" {
            assert_eq!(k("keeper_rc"), "137", "{out}");
            // Nobody cleaned up: recover finds it all.
            assert_eq!(k("jail_after_kill"), "yes", "{out}");
            assert_eq!(k("cgroup_after_kill"), "yes", "{out}");
            assert!(k("claims_after_kill").contains(".claim"), "{out}");
        } else {
            // The keeper gave the VF back and removed the jail and the cgroup.
            assert_eq!(k("keeper_rc"), "137", "{out}");
            assert_eq!(k("jail_after_kill"), "no", "{out}");
            assert_eq!(k("cgroup_after_kill"), "no", "{out}");
            assert_eq!(k("claims_after_kill"), "", "{out}");
        }
        assert_eq!(k("recover_rc"), "0", "{job}: {out}");
        assert_eq!(k("vf_drivers_after_recover"), start, "{job}: {out}");
        assert_eq!(
            k("overrides_after_recover").trim(),
            "(null) (null)",
            "{job}: {out}"
        );
        assert_eq!(k("claims_after_recover"), "", "{job}: {out}");
        assert_eq!(k("jail_after_recover"), "no", "{job}: {out}");
        assert_eq!(k("cgroup_after_recover"), "no", "{job}: {out}");
        assert_eq!(k("pool_after_recover"), "2,2", "{job}: {out}");
        assert_eq!(k("state_left"), "no", "{job}: {out}");
    }
    // 4. kill -9 of hpmmap-offline in a reserve: inside a block cycle, the job marked
    // as reserving with the boot-time pages adopted
    assert!(
        get(&o, "kr_killed_at").parse::<u32>().unwrap_or(0) >= 1,
        "the reserve was not killed inside a block cycle:\n{out}"
    );
    let st = get(&o, "kr_state");
    assert!(
        st.contains(r#""kr":{"nodes":{"0":"#) && st.contains(r#""reserving""#),
        "{out}"
    );
    assert_eq!(get(&o, "kr_recover_rc"), "0", "{out}");
    assert!(
        out.contains("job kr: its reserve was killed; released "),
        "{out}"
    );
    assert_eq!(get(&o, "kr_blocks_offline_after"), "0", "{out}");
    assert_eq!(get(&o, "kr_pool_after_recover"), "2,2", "{out}");
    assert_eq!(get(&o, "kr_state_left"), "no", "{out}");
    assert_eq!(get(&o, "vf_drivers_end"), start, "{out}");
}

/// L1's kernel's kmem.ko from the package cache the lab unpacked its kernel into.
fn kmem_module() -> Option<PathBuf> {
    let cache = std::env::var_os("HPMMAP_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hpmmap")))?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache.join("unpacked"))
        .ok()?
        .flatten()
        .flat_map(|k| {
            std::fs::read_dir(k.path().join("lib/modules"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|v| v.path().join("kernel/drivers/dax/kmem.ko"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

#[test]
#[ignore = "about 15-25 minutes of nested lab: run by hand (host-offline/README.md)"]
fn twenty_reserve_run_release_cycles_on_a_movable_partition_beside_hugetlb() {
    let Some(kmem) = kmem_module() else {
        lab_skip(
            "twenty_reserve_run_release_cycles_on_a_movable_partition_beside_hugetlb",
            "no kmem.ko of L1's kernel in the package cache",
        );
        return;
    };
    let Some(o) = run(
        "cycles",
        "VMM_LIMIT=240 KMEM=/root/kmem.ko sh /root/partition-cycles.sh 20 2",
        &[format!("{}:/root/kmem.ko", kmem.display())],
        Duration::from_secs(3600),
        // a 3 GiB pmem range makes a 2 GiB device with 1 GiB alignment (the rest holds its
        // metadata); L1 keeps 6 GiB of RAM and has no boot-time pages, so the hugetlb
        // cycles take every page at run time
        (9, 3, 0),
    ) else {
        return;
    };
    let out = &o.output;
    assert_eq!(get(&o, "dax_setup_rc"), "0", "{out}");
    assert_eq!(get(&o, "kmem_insmod_rc"), "0", "{out}");
    assert_eq!(get(&o, "dax_driver_idle"), "kmem", "{out}");
    assert_eq!(get(&o, "dax_cycles_ok"), "20/20", "{out}");
    println!(
        "device-dax partition: {} cycles ok; plain hugetlb beside it: {}",
        get(&o, "dax_cycles_ok"),
        get(&o, "huge_cycles_ok")
    );
}
