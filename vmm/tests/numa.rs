//! `--numa` and the ACPI tables through the binary: bad node specifications are refused with
//! exit status 2 and one line naming the problem (bad_input.rs style), and on the host's own
//! KVM a two-node guest runs with one memfd per node, its RSDP where the zero page says, and
//! a per-node report. The nested lab proves what a Linux guest makes of it (numa_lab.rs).

mod common;

use common::*;
use iced_x86::code_asm::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn ok_kernel(dir: &TempDir) -> String {
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

fn refuse(dir: &TempDir, args: &[&str], wants: &[&str]) {
    let rep = dir.path("r.json");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--report", rep.to_str().unwrap()]);
    let r = run_vmm(&all, T);
    assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", r.stderr);
    assert!(lines[0].starts_with("hpmmap-vmm: "), "{}", lines[0]);
    for w in wants {
        assert!(lines[0].contains(w), "{w:?} not in {:?}", lines[0]);
    }
    assert!(r.stdout.is_empty());
    assert!(!rep.exists(), "report left behind");
}

#[test]
fn bad_numa_specs_exit_2_with_one_line() {
    let dir = TempDir::new("numa-bad");
    let k = ok_kernel(&dir);
    let k = k.as_str();
    let base = [
        "--kernel",
        k,
        "--hugepages",
        "none",
        "--vcpus",
        "4",
        "--mem",
        "2G",
    ];
    let cases: &[(&[&str], &[&str])] = &[
        (
            &[
                "--numa",
                "node=0,cpus=0-2,mem=1G",
                "--numa",
                "node=1,cpus=2-3,mem=1G",
            ],
            &["node=1", "vCPU 2 is also in node 0"],
        ),
        (
            &[
                "--numa",
                "node=0,cpus=0,mem=1G",
                "--numa",
                "node=1,cpus=1,mem=1G",
            ],
            &["vCPUs 2-3 are in no node"],
        ),
        (
            &[
                "--numa",
                "node=0,cpus=0-1,mem=1G",
                "--numa",
                "node=1,cpus=2-3,mem=2G",
            ],
            &["add up to 3G, not --mem 2G"],
        ),
        (
            &[
                "--numa",
                "node=0,cpus=0-1,mem=1536M",
                "--numa",
                "node=1,cpus=2-3,mem=512M",
            ],
            &["node=0", "mem=1536M", "whole number of GiB"],
        ),
        (
            &["--numa", "node=0,cpus=0-7,mem=2G"],
            &["vCPU 4 does not exist"],
        ),
        (
            &["--numa", "node=0,cpus=0-3"],
            &["--numa", "mem= is missing"],
        ),
        (
            &["--numa", "auto", "--numa", "node=0,cpus=0-3,mem=2G"],
            &["'auto' cannot be combined"],
        ),
        (
            &["--numa", "node=0,cpus=0-3,mem=2G", "--numa-node", "0"],
            &["--numa", "--numa-node"],
        ),
        (
            &[
                "--numa",
                "node=0,cpus=0-1,mem=1G,host-node=7",
                "--numa",
                "node=1,cpus=2-3,mem=1G",
            ],
            &["node=0", "host-node=7", "no such host NUMA node"],
        ),
    ];
    for (extra, wants) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        refuse(&dir, &args, wants);
    }
    // A host node without enough free 1 GiB pages (this host's are counted, not assumed).
    let need = free_1g_pages() + 1;
    let mem = format!("{need}G");
    let spec = format!("node=0,cpus=0,mem={need}G,host-node=0");
    refuse(
        &dir,
        &["--kernel", k, "--mem", &mem, "--numa", &spec],
        &[
            "--numa node=0",
            "host node 0 has",
            &format!("the node needs {need}"),
        ],
    );
}

#[test]
fn two_guest_nodes_on_host_kvm_with_acpi_and_a_per_node_report() {
    if !kvm_or_skip("two_guest_nodes_on_host_kvm_with_acpi_and_a_per_node_report") {
        return;
    }
    let dir = TempDir::new("numa-host");
    // The zero page's acpi_rsdp_addr (0x70) must point at "RSD PTR ": exit 0 if so, else 1.
    let code = asm64(|a| {
        let mut bad = a.create_label();
        a.mov(rax, qword_ptr(rsi + 0x70))?;
        a.cmp(rax, 0xA_0000)?;
        a.jne(bad)?;
        a.mov(rcx, qword_ptr(rax))?;
        a.mov(rdx, u64::from_le_bytes(*b"RSD PTR "))?;
        a.cmp(rcx, rdx)?;
        a.jne(bad)?;
        pv_exit(a, 0)?;
        a.set_label(&mut bad)?;
        pv_exit(a, 1)
    });
    let elf = elf64(
        PAYLOAD_BASE,
        &[Segment {
            addr: PAYLOAD_BASE,
            bytes: code,
        }],
        &[],
    );
    let k = dir.write("rsdp.elf", &elf).display().to_string();
    let rep = dir.path("r.json");
    let r = run_vmm(
        &[
            "--kernel",
            &k,
            "--hugepages",
            "none",
            "--mem",
            "2G",
            "--vcpus",
            "2",
            "--numa",
            "node=0,cpus=0,mem=1G,host-node=0",
            "--numa",
            "node=1,cpus=1,mem=1G,host-node=0",
            "--report",
            rep.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(r.code, Some(0), "RSDP in the zero page: {}", r.stderr);
    let j = report(&rep);
    let nodes = j["numa_nodes"]
        .as_array()
        .expect("numa_nodes in the report");
    assert_eq!(nodes.len(), 2);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["node"], i);
        assert_eq!(n["host_node"], 0);
        assert_eq!(n["ram_bytes"], GIB);
        assert_eq!(n["vcpus"], i.to_string());
        assert_eq!(
            n["host_pages_by_node"]["0"],
            GIB / 4096,
            "every 4 KiB page of the node's own memfd on host node 0: {n}"
        );
    }
    assert_eq!(nodes[1]["gpa_ranges"][0]["base"], GIB);
    // Each node keeps its first GiB: a 1 GiB node has no pool.
    assert_eq!(j["pool_bytes"], 0);
    assert!(
        r.stderr
            .contains("guest node 1: 1G RAM, vCPUs 1, host node 0"),
        "{}",
        r.stderr
    );
}

#[test]
fn three_hundred_vcpus_past_the_xapic_limit_on_host_kvm() {
    let test = "three_hundred_vcpus_past_the_xapic_limit_on_host_kvm";
    if !kvm_or_skip(test) {
        return;
    }
    let dir = TempDir::new("numa-300");
    let k = ok_kernel(&dir);
    let rep = dir.path("r.json");
    let run = |vcpus: &str| {
        run_vmm(
            &[
                "--kernel",
                &k,
                "--hugepages",
                "none",
                "--mem",
                "64M",
                "--vcpus",
                vcpus,
                "--report",
                rep.to_str().unwrap(),
            ],
            T,
        )
    };
    let r = run("300");
    if r.code == Some(2) && r.stderr.contains("KVM_CAP_MAX_VCPUS") {
        let why = format!("this KVM allows fewer than 300 vCPUs: {}", r.stderr.trim());
        hpmmap_testkit::not_applicable(Tier::Kvm, test, why);
        return;
    }
    // 300 vCPUs created and configured (x2APIC IDs in the MADT, no MP table); the boot
    // vCPU's payload exits at once while the others wait for INIT/SIPI.
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let j = report(&rep);
    assert_eq!(j["vcpus"], 300);
    let many = j["startup_phases_ms"]["vcpus"].as_f64().unwrap();
    let r = run("30");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let few = report(&rep)["startup_phases_ms"]["vcpus"].as_f64().unwrap();
    println!("vCPU setup on host KVM: 30 vCPUs {few:.1} ms, 300 vCPUs {many:.1} ms");
    // No worse than linear, with room for a noisy shared machine.
    assert!(
        many < 10.0 * few * 3.0 + 200.0,
        "30: {few} ms, 300: {many} ms"
    );
}

#[test]
fn numa_auto_on_host_kvm_makes_one_node_per_host_node() {
    let test = "numa_auto_on_host_kvm_makes_one_node_per_host_node";
    if !kvm_or_skip(test) {
        return;
    }
    let online = std::fs::read_to_string("/sys/devices/system/node/online").unwrap_or_default();
    let host_nodes = online
        .trim()
        .split(',')
        .map(|p| match p.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum::<usize>();
    if host_nodes > 2 {
        hpmmap_testkit::not_applicable(
            Tier::Kvm,
            test,
            format!("{host_nodes} host nodes, more than this 2-vCPU guest can spread over"),
        );
        return;
    }
    let dir = TempDir::new("numa-auto");
    let k = ok_kernel(&dir);
    let rep = dir.path("r.json");
    let r = run_vmm(
        &[
            "--kernel",
            &k,
            "--hugepages",
            "none",
            "--mem",
            "2G",
            "--vcpus",
            "2",
            "--numa",
            "auto",
            "--report",
            rep.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let j = report(&rep);
    let nodes = j["numa_nodes"].as_array().expect("numa_nodes");
    // As many guest nodes as host nodes (4 KiB pages: every online node), RAM split evenly.
    assert_eq!(nodes.len(), host_nodes, "{j}");
    let total: u64 = nodes.iter().map(|n| n["ram_bytes"].as_u64().unwrap()).sum();
    assert_eq!(total, 2 * GIB);
    assert_eq!(nodes[0]["host_node"], 0);
}
