//! Tier 2: the real hpmmap-vmm binary on this host's KVM with payloads assembled here.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn payload(dir: &TempDir, name: &str, code: Vec<u8>) -> String {
    let elf = elf64(
        PAYLOAD_BASE,
        &[Segment {
            addr: PAYLOAD_BASE,
            bytes: code,
        }],
        &[],
    );
    dir.write(name, &elf).display().to_string()
}

#[test]
fn serial_prints_and_exit_status_comes_back() {
    if !kvm_or_skip("serial_prints_and_exit_status_comes_back") {
        return;
    }
    let dir = TempDir::new("hello");
    for status in [0u32, 3, 255] {
        let k = payload(
            &dir,
            "hello.elf",
            asm64(|a| {
                print(a, &format!("hello from the guest {status}\n"))?;
                pv_exit(a, status)
            }),
        );
        let rep = dir.path("r.json");
        let r = run_vmm(
            &[
                "--mem",
                "64M",
                "--hugepages",
                "none",
                "--kernel",
                &k,
                "--report",
                rep.to_str().unwrap(),
            ],
            T,
        );
        assert_eq!(r.code, Some(status as i32), "{}", r.stderr);
        assert_eq!(r.stdout, format!("hello from the guest {status}\n"));
        let j = report(&rep);
        assert_eq!(j["exit_reason"], "job-exit");
        assert_eq!(j["job_exit_status"], status);
        assert_eq!(j["exit_code"], status);
        assert_eq!(j["kernel_format"], "elf64");
        assert_eq!(j["entry"], "linux64");
        assert_eq!(j["guest_ram_bytes"], 64u64 << 20);
        assert_eq!(j["host_page_size_bytes"], 4096);
        assert!(j["start_to_first_instruction_ms"].as_f64().unwrap() > 0.0);
    }
}
