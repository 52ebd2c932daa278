//! Guest RAM on 1 GiB host pages, on this host's KVM: the pages really are 1 GiB (smaps), the
//! pool is announced and zeroed through the PV device, and a shortage is an error, never a
//! fallback. These tests reserve what they need under the shared hugetlb lock and give back
//! exactly what they added.

mod common;

use common::*;
use iced_x86::code_asm::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

fn kernel(dir: &TempDir, code: Vec<u8>) -> String {
    let elf = elf64(
        PAYLOAD_BASE,
        &[Segment {
            addr: PAYLOAD_BASE,
            bytes: code,
        }],
        &[],
    );
    dir.write("p.elf", &elf).display().to_string()
}

/// One reservation for all of them: growing the pool can take the kernel long (compaction).
#[test]
fn guest_ram_on_1g_host_pages() {
    if !kvm_or_skip("guest_ram_on_1g_host_pages") {
        return;
    }
    let Some(_pages) = HugePages::reserve("guest_ram_on_1g_host_pages", 2) else {
        return;
    };
    two_gib_guest_on_1g_pages_with_pool_zeroing();
    smaps_shows_1g_pages_under_every_gib_of_guest_ram();
    too_few_1g_pages_is_an_error_not_a_fallback();
    a_vmm_without_a_job_leaves_the_jobs_pages_alone();
}

/// Issue 13: with hpmmap-offline's state saying job x holds all but one of the free pages,
/// a VMM without `--job` gets the one no job holds and is refused two (this host's real
/// hugetlb counters, a state file of our own through `HPMMAP_OFFLINE_STATE`).
fn a_vmm_without_a_job_leaves_the_jobs_pages_alone() {
    let free: u64 = std::fs::read_to_string(
        "/sys/devices/system/node/node0/hugepages/hugepages-1048576kB/free_hugepages",
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    assert!(
        free >= 2,
        "the test reserved 2 pages; node 0 has {free} free"
    );
    let dir = TempDir::new("nojob");
    let state = dir.write(
        "offline.json",
        format!(
            r#"{{"format":"hpmmap-offline-state","version":2,"nodes":{{"0":{{"baseline_nr":0,"reserved":{held}}}}},
               "jobs":{{"x":{{"nodes":{{"0":{held}}}}}}}}}"#,
            held = free - 1
        )
        .as_bytes(),
    );
    let k = kernel(&dir, asm64(|a| pv_exit(a, 0)));
    let vmm = |mem: &str| {
        run_cmd(
            std::process::Command::new(vmm_bin())
                .env("HPMMAP_OFFLINE_STATE", &state)
                .args(["--mem", mem, "--kernel", &k]),
            T,
        )
    };
    let r = vmm("2G");
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "no --job: needs 2 1 GiB page(s) but only 1 free are held for no job; {} free \
             page(s) belong to job(s) x {}",
            free - 1,
            free - 1
        )),
        "{}",
        r.stderr
    );
    let r = vmm("1G");
    assert_eq!(
        r.code,
        Some(0),
        "the page no job holds is there: {}",
        r.stderr
    );
}

fn two_gib_guest_on_1g_pages_with_pool_zeroing() {
    let free_before = free_1g_pages();
    let dir = TempDir::new("1g");
    let text = "pool page survives its own zeroing";
    // The second GiB is the pool. Dirty it, ask the host to zero it, check it reads zero and
    // that STATUS is OK, then leave a line in it for the VMM to read back.
    let k = kernel(
        &dir,
        asm64(|a| {
            let mut fail = a.create_label();
            a.mov(rdi, GIB)?;
            a.mov(rax, 0x1122_3344_5566_7788u64)?;
            a.mov(qword_ptr(rdi), rax)?;
            a.mov(qword_ptr(rdi + 0x3FFF_FFF8), rax)?;
            pv_command(a, 1, GIB, GIB)?;
            a.mov(rax, PV_STATUS)?;
            a.mov(eax, dword_ptr(rax))?;
            a.test(eax, eax)?;
            a.jne(fail)?;
            a.mov(rdi, GIB)?;
            a.mov(rax, qword_ptr(rdi))?;
            a.or(rax, qword_ptr(rdi + 0x3FFF_FFF8))?;
            a.test(rax, rax)?;
            a.jne(fail)?;
            // Zeroing outside the pool is refused with ERANGE (2).
            pv_command(a, 1, 0, GIB)?;
            a.mov(rax, PV_STATUS)?;
            a.cmp(dword_ptr(rax), 2)?;
            a.jne(fail)?;
            store_text(a, GIB + 0x1000, text)?;
            pv_command(a, 2, GIB + 0x1000, text.len() as u64)?;
            pv_exit(a, 0)?;
            a.set_label(&mut fail)?;
            pv_exit(a, 1)
        }),
    );
    let rep = dir.path("r.json");
    let r = run_vmm(
        &[
            "--mem",
            "2G",
            "--kernel",
            &k,
            "--report",
            rep.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let j = report(&rep);
    assert_eq!(j["host_page_size_bytes"], 1u64 << 30);
    assert_eq!(j["hugepages_requested"], "1G");
    assert_eq!(j["guest_ram_bytes"], 2u64 << 30);
    assert_eq!(j["pool_bytes"], 1u64 << 30);
    assert_eq!(j["pool_ranges"][0]["base"], 1u64 << 30);
    assert_eq!(j["pool_ranges"][0]["size"], 1u64 << 30);
    assert_eq!(j["result"], text);
    assert!(j["prefault"]["gib_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(free_1g_pages(), free_before, "the VMM gave every page back");
}

fn smaps_shows_1g_pages_under_every_gib_of_guest_ram() {
    let free_before = free_1g_pages();
    let dir = TempDir::new("smaps");
    let k = kernel(
        &dir,
        asm64(|a| {
            print(a, "ready\n")?;
            halt_forever(a)
        }),
    );
    let (a, b, kps, flags) = running_guest_ram_smaps(&["--mem", "2G", "--kernel", &k]);
    assert_eq!(a % GIB, 0, "mapping is 1 GiB-aligned");
    assert_eq!(b - a, 2 * GIB, "one mapping covers both GiBs");
    assert_eq!(kps, "1048576 kB");
    // mlock leaves hugetlb VMAs unflagged (they are never swapped); the small-page test in
    // host_kvm.rs checks the lock.
    assert!(
        flags.iter().any(|f| f == "ht"),
        "hugetlb mapping: {flags:?}"
    );
    // Killed, the VMM still leaves nothing: the pages return to the pool.
    let deadline = Instant::now() + Duration::from_secs(10);
    while free_1g_pages() != free_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(free_1g_pages(), free_before, "pages returned");
}

fn too_few_1g_pages_is_an_error_not_a_fallback() {
    let free = free_1g_pages();
    let want = free + 1;
    let dir = TempDir::new("short");
    let k = kernel(&dir, asm64(|a| pv_exit(a, 0)));
    let mem = format!("{want}G");
    let rep = dir.path("r.json");
    let r = run_vmm(
        &[
            "--mem",
            &mem,
            "--kernel",
            &k,
            "--report",
            rep.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    let l = lines[0];
    assert!(l.contains(&format!("--mem {mem}")), "{l}");
    assert!(l.contains(&format!("only {free} are free")), "{l}");
    assert!(l.contains("hpmmap-offline reserve --size"), "{l}");
    assert!(
        l.contains("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"),
        "{l}"
    );
    assert!(!rep.exists());
    assert_eq!(free_1g_pages(), free);
}

/// The 2 MiB path and NUMA binding: smaller pages when asked, still read back from smaps.
#[test]
fn guest_ram_on_2m_pages_bound_to_node_0() {
    if !kvm_or_skip("guest_ram_on_2m_pages_bound_to_node_0") {
        return;
    }
    let Some(_pages) = HugePages::reserve_2m("guest_ram_on_2m_pages_bound_to_node_0", 32) else {
        return;
    };
    let dir = TempDir::new("2m");
    let k = kernel(&dir, asm64(|a| pv_exit(a, 0)));
    let rep = dir.path("r.json");
    let r = run_vmm(
        &[
            "--mem",
            "64M",
            "--hugepages",
            "2M",
            "--numa-node",
            "0",
            "--kernel",
            &k,
            "--report",
            rep.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let j = report(&rep);
    assert_eq!(j["host_page_size_bytes"], 2u64 << 20);
    assert_eq!(j["hugepages_requested"], "2M");
}
