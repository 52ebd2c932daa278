//! Tier 2: the real hpmmap-vmm binary on this host's KVM with payloads assembled here.

mod common;

use common::*;
use iced_x86::code_asm::*;
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

#[test]
fn guest_writes_land_in_guest_ram() {
    if !kvm_or_skip("guest_writes_land_in_guest_ram") {
        return;
    }
    let dir = TempDir::new("writes");
    // The guest stores a line in its RAM and hands its address to the PV RESULT command: the
    // VMM reads it back through its own mapping of guest RAM.
    let text = "written by the guest at 0x300000";
    let k = payload(
        &dir,
        "w.elf",
        asm64(|a| {
            store_text(a, 0x30_0000, text)?;
            pv_command(a, 2, 0x30_0000, text.len() as u64)?;
            pv_exit(a, 0)
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
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(report(&rep)["result"], text);
    assert!(r.stderr.contains(&format!("result: {text}")));
}

/// The AP trampoline: 16-bit real mode at 0x10000 (SIPI vector 0x10). Each AP reads its APIC
/// ID from CPUID leaf 1, stores 'A'+id at 0x3100+id and counts itself in at 0x3000.
fn ap_trampoline() -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(eax, 1u32).unwrap();
    a.cpuid().unwrap();
    a.shr(ebx, 24u32).unwrap();
    a.mov(al, bl).unwrap();
    a.add(al, b'A' as u32).unwrap();
    a.mov(byte_ptr(bx + 0x3100), al).unwrap();
    a.lock().inc(word_ptr(0x3000u32)).unwrap();
    let mut l = a.create_label();
    a.set_label(&mut l).unwrap();
    a.cli().unwrap();
    a.hlt().unwrap();
    a.jmp(l).unwrap();
    a.assemble(0x1_0000).unwrap()
}

/// The BSP starts every AP with INIT-SIPI-SIPI through its LAPIC (as Linux does), waits for
/// them to check in, and returns the IDs they saw as its result line.
fn smp_payload(dir: &TempDir, vcpus: u32) -> String {
    let bsp = asm64(|a| {
        a.mov(rdi, 0x3100u64)?;
        a.mov(byte_ptr(rdi), b'A' as u32)?;
        a.mov(rsi, 0xFEE0_0000u64)?;
        // INIT to all but self, then two SIPIs with vector 0x10.
        a.mov(dword_ptr(rsi + 0x300), 0x000C_4500u32)?;
        for _ in 0..2 {
            a.mov(dword_ptr(rsi + 0x300), 0x000C_4610u32)?;
        }
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.pause()?;
        a.mov(rax, 0x3000u64)?;
        a.movzx(eax, word_ptr(rax))?;
        a.cmp(eax, (vcpus - 1) as i32)?;
        a.jne(wait)?;
        print(a, "all vCPUs in\n")?;
        pv_command(a, 2, 0x3100, vcpus as u64)?;
        pv_exit(a, 0)
    });
    let elf = elf64(
        PAYLOAD_BASE,
        &[
            Segment {
                addr: 0x1_0000,
                bytes: ap_trampoline(),
            },
            Segment {
                addr: PAYLOAD_BASE,
                bytes: bsp,
            },
        ],
        &[],
    );
    dir.write("smp.elf", &elf).display().to_string()
}

#[test]
fn n_vcpus_run() {
    if !kvm_or_skip("n_vcpus_run") {
        return;
    }
    let dir = TempDir::new("smp");
    for (vcpus, affinity) in [(2u32, Some("1,0")), (4, None)] {
        let k = smp_payload(&dir, vcpus);
        let rep = dir.path("r.json");
        let v = vcpus.to_string();
        let mut args = vec![
            "--mem",
            "64M",
            "--hugepages",
            "none",
            "--vcpus",
            &v,
            "--kernel",
            &k,
        ];
        args.extend(["--report", rep.to_str().unwrap()]);
        if let Some(c) = affinity {
            args.extend(["--cpu-affinity", c]);
        }
        let r = run_vmm(&args, T);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert_eq!(r.stdout, "all vCPUs in\n");
        let want: String = (0..vcpus).map(|i| (b'A' + i as u8) as char).collect();
        let j = report(&rep);
        assert_eq!(j["result"], want.as_str());
        assert_eq!(j["vcpus"], vcpus);
    }
}

fn run_small(dir: &TempDir, code: Vec<u8>) -> (Run, serde_json::Value) {
    let k = payload(dir, "p.elf", code);
    let rep = dir.path("r.json");
    let _ = std::fs::remove_file(&rep);
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
    let j = report(&rep);
    (r, j)
}

#[test]
fn boot_params_carry_the_command_line_with_the_pv_address() {
    if !kvm_or_skip("boot_params_carry_the_command_line_with_the_pv_address") {
        return;
    }
    let dir = TempDir::new("bootparams");
    // RSI points at the zero page: hand cmd_line_ptr / cmdline_size back as the result.
    let (r, j) = run_small(
        &dir,
        asm64(|a| {
            a.mov(r12, rsi)?;
            a.mov(eax, dword_ptr(r12 + 0x228))?;
            a.mov(ecx, dword_ptr(r12 + 0x238))?;
            a.mov(rdx, PV_ARG_ADDR)?;
            a.mov(qword_ptr(rdx), rax)?;
            a.mov(rdx, PV_ARG_LEN)?;
            a.mov(qword_ptr(rdx), rcx)?;
            a.mov(rdx, PV_COMMAND)?;
            a.mov(dword_ptr(rdx), 2u32)?;
            // The e820 count at 0x1E8 is the exit status.
            a.movzx(eax, byte_ptr(r12 + 0x1E8))?;
            a.mov(rdx, PV_EXIT)?;
            a.mov(dword_ptr(rdx), eax)?;
            halt_forever(a)
        }),
    );
    assert_eq!(
        r.code,
        Some(5),
        "e820 entries: RAM, EBDA, ACPI tables, BIOS, RAM: {}",
        r.stderr
    );
    assert_eq!(
        j["result"],
        "console=ttyS0 reboot=k panic=1 pci=off hpmmap.pv=0xfeb00000"
    );
}

#[test]
fn pvh_entry_for_an_elf_with_the_pvh_note() {
    if !kvm_or_skip("pvh_entry_for_an_elf_with_the_pvh_note") {
        return;
    }
    let dir = TempDir::new("pvh");
    // 32-bit protected mode, no paging, EBX = start_info: exit 0 when its magic is right.
    let mut a = CodeAssembler::new(32).unwrap();
    let mut bad = a.create_label();
    let mut out = a.create_label();
    a.mov(edx, COM1).unwrap();
    a.mov(al, b'P' as u32).unwrap();
    a.out(dx, al).unwrap();
    a.mov(ecx, 0u32).unwrap();
    a.cmp(dword_ptr(ebx), 0x336E_C578u32 as i32).unwrap();
    a.jne(bad).unwrap();
    a.cmp(dword_ptr(ebx + 4), 1).unwrap();
    a.jne(bad).unwrap();
    a.jmp(out).unwrap();
    a.set_label(&mut bad).unwrap();
    a.mov(ecx, 9u32).unwrap();
    a.set_label(&mut out).unwrap();
    a.mov(eax, PV_EXIT as u32).unwrap();
    a.mov(dword_ptr(eax), ecx).unwrap();
    let mut l = a.create_label();
    a.set_label(&mut l).unwrap();
    a.hlt().unwrap();
    a.jmp(l).unwrap();
    let entry = 0x10_0000u64;
    let code = a.assemble(entry).unwrap();
    let elf = elf64(
        entry,
        &[Segment {
            addr: entry,
            bytes: code,
        }],
        &[("Xen", 18, (entry as u32).to_le_bytes().to_vec())],
    );
    let k = dir.write("pvh.elf", &elf);
    let rep = dir.path("r.json");
    let r = run_vmm(
        &[
            "--mem",
            "64M",
            "--hugepages",
            "none",
            "--kernel",
            k.to_str().unwrap(),
            "--report",
            rep.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, "P");
    let j = report(&rep);
    assert_eq!(j["kernel_format"], "elf-pvh");
    assert_eq!(j["entry"], "pvh");
}

#[test]
fn i8042_reset_is_a_shutdown_without_status() {
    if !kvm_or_skip("i8042_reset_is_a_shutdown_without_status") {
        return;
    }
    let dir = TempDir::new("reset");
    let (r, j) = run_small(
        &dir,
        asm64(|a| {
            a.mov(al, 0xFEu32)?;
            a.out(0x64, al)?;
            halt_forever(a)
        }),
    );
    assert_eq!(r.code, Some(74), "{}", r.stderr);
    assert_eq!(j["exit_reason"], "guest-shutdown");
}

#[test]
fn triple_fault_has_its_own_status_and_registers() {
    if !kvm_or_skip("triple_fault_has_its_own_status_and_registers") {
        return;
    }
    let dir = TempDir::new("triple");
    // The boot IDT is empty: #UD -> #GP -> #DF -> shutdown.
    let (r, j) = run_small(&dir, asm64(|a| a.ud2()));
    assert_eq!(r.code, Some(72), "{}", r.stderr);
    assert_eq!(j["exit_reason"], "triple-fault");
    assert!(r.stderr.contains("rip="), "registers printed: {}", r.stderr);
}

#[test]
fn unemulated_instruction_is_a_kvm_internal_error() {
    if !kvm_or_skip("unemulated_instruction_is_a_kvm_internal_error") {
        return;
    }
    if !is_kvm_pvm() {
        hpmmap_testkit::not_applicable(
            Tier::Kvm,
            "unemulated_instruction_is_a_kvm_internal_error",
            "only kvm_pvm refuses int3 at CPL0",
        );
        return;
    }
    let dir = TempDir::new("internal");
    let (r, j) = run_small(&dir, asm64(|a| a.int3()));
    assert_eq!(r.code, Some(73), "{}", r.stderr);
    assert_eq!(j["exit_reason"], "kvm-internal-error");
    assert!(r.stderr.contains("KVM_EXIT_INTERNAL_ERROR"), "{}", r.stderr);
    assert!(r.stderr.contains("suberror"), "{}", r.stderr);
    assert!(r.stderr.contains("rip="), "{}", r.stderr);
}

#[test]
fn kernel_panic_on_the_console_has_its_own_status() {
    if !kvm_or_skip("kernel_panic_on_the_console_has_its_own_status") {
        return;
    }
    let dir = TempDir::new("panic");
    let (r, j) = run_small(
        &dir,
        asm64(|a| {
            print(a, "Kernel panic - not syncing: test payload\n")?;
            halt_forever(a)
        }),
    );
    assert_eq!(r.code, Some(71), "{}", r.stderr);
    assert_eq!(j["exit_reason"], "guest-panic");
    assert!(r.stdout.contains("not syncing: test payload"));
}

#[test]
fn garbage_io_neither_crashes_nor_hangs_the_vmm() {
    if !kvm_or_skip("garbage_io_neither_crashes_nor_hangs_the_vmm") {
        return;
    }
    let dir = TempDir::new("garbage");
    let (r, j) = run_small(
        &dir,
        asm64(|a| {
            // Every port below 0x400 but the i8042 command port: write, then read.
            let mut ports = a.create_label();
            let mut skip = a.create_label();
            a.xor(ecx, ecx)?;
            a.set_label(&mut ports)?;
            a.cmp(ecx, 0x64)?;
            a.je(skip)?;
            a.mov(edx, ecx)?;
            a.mov(al, cl)?;
            a.xor(al, 0x5A)?;
            a.out(dx, al)?;
            a.in_(al, dx)?;
            a.in_(eax, dx)?;
            a.set_label(&mut skip)?;
            a.inc(ecx)?;
            a.cmp(ecx, 0x400)?;
            a.jne(ports)?;
            // Every dword of the PV page except COMMAND and EXIT, then 1-byte and 8-byte
            // accesses, then unmapped MMIO in the hole.
            let mut pv = a.create_label();
            let mut pv_skip = a.create_label();
            a.mov(rsi, PV)?;
            a.xor(ecx, ecx)?;
            a.set_label(&mut pv)?;
            a.cmp(ecx, 0x30)?;
            a.je(pv_skip)?;
            a.cmp(ecx, 0x34)?;
            a.je(pv_skip)?;
            a.mov(dword_ptr(rsi + rcx), 0xA5A5_A5A5u32)?;
            a.mov(eax, dword_ptr(rsi + rcx))?;
            a.set_label(&mut pv_skip)?;
            a.add(ecx, 4)?;
            a.cmp(ecx, 0x1000)?;
            a.jne(pv)?;
            a.mov(byte_ptr(rsi + 0x34), 1u32)?;
            a.mov(al, byte_ptr(rsi + 3))?;
            a.mov(rax, -1i64)?;
            a.mov(qword_ptr(rsi + 0x31), rax)?;
            a.mov(rdi, 0xD000_0000u64)?;
            a.mov(qword_ptr(rdi), rax)?;
            a.mov(rax, qword_ptr(rdi))?;
            // The device must still answer properly.
            a.mov(eax, dword_ptr(rsi))?;
            a.cmp(eax, 0x4D4D_5048)?;
            let mut ok = a.create_label();
            a.je(ok)?;
            pv_exit(a, 1)?;
            a.set_label(&mut ok)?;
            pv_exit(a, 0)
        }),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(j["exit_reason"], "job-exit");
    assert!(j["unhandled_pio"].as_u64().unwrap() > 1000);
    assert!(j["unhandled_mmio"].as_u64().unwrap() >= 2);
}

#[test]
fn small_page_guest_ram_is_one_locked_mapping() {
    if !kvm_or_skip("small_page_guest_ram_is_one_locked_mapping") {
        return;
    }
    let dir = TempDir::new("locked");
    let k = ready_payload(&dir);
    let (a, b, kps, flags) =
        running_guest_ram_smaps(&["--mem", "64M", "--hugepages", "none", "--kernel", &k]);
    assert_eq!(b - a, 64 << 20);
    assert_eq!(a % (2 << 20), 0);
    assert_eq!(kps, "4 kB");
    assert!(flags.iter().any(|f| f == "lo"), "mlocked: {flags:?}");
}

#[test]
fn sigterm_stops_the_guest_in_order_and_writes_the_report() {
    if !kvm_or_skip("sigterm_stops_the_guest_in_order_and_writes_the_report") {
        return;
    }
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new("sigterm");
    let k = ready_payload(&dir);
    let rep = dir.path("r.json");
    let mut child = std::process::Command::new(vmm_bin())
        .args([
            "--mem",
            "64M",
            "--hugepages",
            "none",
            "--vcpus",
            "2",
            "--kernel",
            &k,
        ])
        .args(["--report", rep.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(128 + 15));
    let j = report(&rep);
    assert_eq!(j["exit_reason"], "signal");
    assert_eq!(j["exit_code"], 143);
}

#[test]
fn image_directory_boots_kernel_initramfs_and_cmdline() {
    if !kvm_or_skip("image_directory_boots_kernel_initramfs_and_cmdline") {
        return;
    }
    let dir = TempDir::new("image");
    // Result: the command line; exit status: 0 when the zero page names an initramfs of the
    // image's size.
    let rd = vec![0x42u8; 12345];
    let code = asm64(|a| {
        a.mov(r12, rsi)?;
        a.mov(eax, dword_ptr(r12 + 0x228))?;
        a.mov(ecx, dword_ptr(r12 + 0x238))?;
        a.mov(rdx, PV_ARG_ADDR)?;
        a.mov(qword_ptr(rdx), rax)?;
        a.mov(rdx, PV_ARG_LEN)?;
        a.mov(qword_ptr(rdx), rcx)?;
        a.mov(rdx, PV_COMMAND)?;
        a.mov(dword_ptr(rdx), 2u32)?;
        let mut bad = a.create_label();
        a.cmp(dword_ptr(r12 + 0x21C), 12345)?;
        a.jne(bad)?;
        // The initramfs bytes are where the zero page says.
        a.mov(eax, dword_ptr(r12 + 0x218))?;
        a.cmp(byte_ptr(rax), 0x42)?;
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
    dir.write("vmlinux", &elf);
    dir.write("initramfs.cpio.gz", &rd);
    dir.write(
        "manifest.json",
        br#"{ "format": 1, "kernel": "vmlinux", "bzimage": "bzImage",
              "initramfs": "initramfs.cpio.gz", "cmdline": "console=ttyS0 quiet",
              "kernel_version": "6.1.0-56-amd64", "job": "probe", "hpmmap": true,
              "packages": {}, "files": {} }"#,
    );
    let rep = dir.path("r.json");
    let r = run_vmm(
        &[
            "--mem",
            "64M",
            "--hugepages",
            "none",
            "--image",
            dir.0.to_str().unwrap(),
            "--cmdline",
            "extra=1",
            "--report",
            rep.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let j = report(&rep);
    assert_eq!(
        j["result"],
        "console=ttyS0 quiet extra=1 hpmmap.pv=0xfeb00000"
    );
    assert_eq!(j["job"], "probe");
}

#[test]
fn console_input_reaches_the_guest() {
    if !kvm_or_skip("console_input_reaches_the_guest") {
        return;
    }
    use std::io::{Read, Write};
    let dir = TempDir::new("stdin");
    // Echo every received byte back, upper-cased, until a newline; then exit 0.
    let k = payload(
        &dir,
        "echo.elf",
        asm64(|a| {
            print(a, "ready\n")?;
            let mut poll = a.create_label();
            let mut done = a.create_label();
            a.set_label(&mut poll)?;
            a.mov(edx, COM1 + 5)?;
            a.in_(al, dx)?;
            a.test(al, 1)?;
            a.je(poll)?;
            a.mov(edx, COM1)?;
            a.in_(al, dx)?;
            a.cmp(al, b'\n' as i32)?;
            a.je(done)?;
            a.sub(al, 0x20)?;
            a.out(dx, al)?;
            a.jmp(poll)?;
            a.set_label(&mut done)?;
            print(a, "\n")?;
            pv_exit(a, 0)
        }),
    );
    let mut child = std::process::Command::new(vmm_bin())
        .args(["--mem", "64M", "--hugepages", "none", "--kernel", &k])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hpmmap\n").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(rest, "HPMMAP\n");
    assert_eq!(st.code(), Some(0));
}

/// CPUs this test process may run on (what the VMM it starts inherits).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data, filled by the kernel.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &set))
            .collect()
    }
}

/// Issue 19: prefault uses the CPUs of the memory's node that the VMM may use, one worker
/// each, and the report says how many ran and why. A VMM confined to one CPU (taskset, as
/// the nested lab runs it) prefaults with one worker and says it is confined.
#[test]
fn prefault_workers_follow_the_vmms_cpus_and_its_memory_node() {
    if !kvm_or_skip("prefault_workers_follow_the_vmms_cpus_and_its_memory_node") {
        return;
    }
    let dir = TempDir::new("workers");
    let k = payload(&dir, "w.elf", asm64(|a| pv_exit(a, 0)));
    let rep = dir.path("r.json");
    // 128 MiB on 4 KiB pages is 4 pieces of 32 MiB: room for up to 4 workers.
    let base = ["--mem", "128M", "--hugepages", "none", "--kernel", &k];
    let report_arg = ["--report", rep.to_str().unwrap()];

    let allowed = allowed_cpus();
    let r = run_vmm(&[&base[..], &report_arg[..]].concat(), T);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let j = report(&rep);
    let want = allowed.len().min(4);
    assert_eq!(j["prefault"]["workers"], want, "{j}");
    let why = j["prefault"]["workers_reason"].as_str().unwrap();
    assert!(why.starts_with("one per CPU the VMM may use ("), "{why}");

    let node0_cpus =
        std::fs::read_to_string("/sys/devices/system/node/node0/cpulist").unwrap_or_default();
    let Some(&cpu) = allowed.first() else {
        panic!("no allowed CPU");
    };
    let pinned = run_cmd(
        std::process::Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(vmm_bin())
            .args(base)
            .args(["--numa-node", "0"])
            .args(report_arg),
        T,
    );
    assert_eq!(pinned.code, Some(0), "{}", pinned.stderr);
    let j = report(&rep);
    assert_eq!(j["prefault"]["workers"], 1, "{j}");
    let why = j["prefault"]["workers_reason"].as_str().unwrap();
    if node0_cpus.trim().is_empty() {
        println!("note: node0 lists no CPUs here; checked the fallback reason only");
        assert!(why.contains("host node 0 has no CPUs"), "{why}");
    } else {
        assert_eq!(
            why,
            format!("one per CPU of host node 0 that the VMM may use ({cpu})")
        );
    }
}

/// Issue 13: a system call outside the filters kills the VMM with SIGSYS (default
/// `--seccomp kill`); `log` lets it through; `off` installs none. The trigger is a test-only
/// hook of debug builds (HPMMAP_VMM_SECCOMP_TEST): the main thread makes a forbidden call
/// once every thread has its filter.
#[test]
fn a_forbidden_system_call_kills_the_vmm_with_sigsys() {
    use std::os::unix::process::ExitStatusExt;
    if !kvm_or_skip("a_forbidden_system_call_kills_the_vmm_with_sigsys") {
        return;
    }
    let dir = TempDir::new("seccomp");
    let k = payload(&dir, "s.elf", asm64(|a| pv_exit(a, 0)));
    let run = |level: Option<&str>| {
        let mut c = std::process::Command::new(vmm_bin());
        c.args(["--mem", "64M", "--hugepages", "none", "--kernel", &k])
            .env("HPMMAP_VMM_SECCOMP_TEST", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(l) = level {
            c.args(["--seccomp", l]);
        }
        c.status().unwrap()
    };
    let st = run(None);
    assert_eq!(st.signal(), Some(libc::SIGSYS), "default: {st:?}");
    assert_eq!(run(Some("kill")).signal(), Some(libc::SIGSYS));
    assert_eq!(
        run(Some("log")).code(),
        Some(0),
        "log lets the call through"
    );
    assert_eq!(run(Some("off")).code(), Some(0));
}

/// Issue 13: `--jail DIR --uid U --gid G`. While the guest runs, the VMM (the keeper's child)
/// runs as U/G with no_new_privs, seccomp filters, and its own pid (it is pid 1 there), mount
/// and network namespaces;
/// a SIGTERM to the keeper reaches it, the keeper writes the report it sent and removes DIR.
#[test]
fn a_jailed_vmm_runs_unprivileged_in_its_own_namespaces() {
    use std::io::BufRead;
    if !root_kvm_or_skip(
        "a_jailed_vmm_runs_unprivileged_in_its_own_namespaces",
        "--jail needs root",
    ) {
        return;
    }
    let dir = TempDir::new("jail");
    let k = payload(
        &dir,
        "j.elf",
        asm64(|a| {
            print(a, "ready\n")?;
            halt_forever(a)
        }),
    );
    let jail = dir.path("root");
    let rep = dir.path("r.json");
    // A cgroup v2 directory when the host has one (this one mounts v2 at /sys/fs/cgroup/unified
    // next to v1 controllers; CI machines may differ).
    let cgroup = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(std::path::Path::new)
        .find(|d| d.join("cgroup.subtree_control").is_file())
        .map(|d| d.join(format!("hpmmap-test-{}", std::process::id())));
    let mut cmd = std::process::Command::new(vmm_bin());
    cmd.args([
        "--mem",
        "64M",
        "--hugepages",
        "none",
        "--kernel",
        &k,
        "--jail",
    ])
    .arg(&jail)
    .args(["--uid", "65534", "--gid", "65534", "--report"])
    .arg(&rep);
    if let Some(cg) = &cgroup {
        cmd.arg("--cgroup").arg(cg);
    } else {
        println!("note: no cgroup v2 here; --cgroup not checked");
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next();
    if first
        .as_ref()
        .and_then(|l| l.as_ref().ok())
        .map(String::as_str)
        != Some("ready")
    {
        let _ = child.wait();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
        panic!("the jailed VMM did not start the guest: {first:?}\n{err}");
    }
    let keeper = child.id();
    let kids = std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children")).unwrap();
    let vmm: u32 = kids.split_whitespace().next().unwrap().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(field("Uid"), "65534 65534 65534 65534", "{status}");
    assert_eq!(field("Gid"), "65534 65534 65534 65534", "{status}");
    assert_eq!(field("Groups"), "", "{status}");
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "filters on every thread");
    let ns = |pid: &str, n: &str| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap();
    for n in ["mnt", "net", "ipc", "uts", "pid"] {
        assert_ne!(ns(&vmm.to_string(), n), ns("self", n), "{n} namespace");
    }
    assert_eq!(
        field("NSpid"),
        format!("{vmm} 1"),
        "the VMM is pid 1 of its own pid namespace"
    );
    assert_eq!(
        ns(&keeper.to_string(), "pid"),
        ns("self", "pid"),
        "the keeper stays in the host's pid namespace"
    );
    assert!(jail.is_dir(), "the jail exists while the job runs");
    if let Some(cg) = &cgroup {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l.trim() == vmm.to_string()),
            "the VMM is in its cgroup {}: {procs}",
            cg.display()
        );
    }
    // SAFETY: signals the keeper we started.
    unsafe { libc::kill(keeper as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert_eq!(
        st.code(),
        Some(143),
        "the VMM's status comes back through the keeper"
    );
    let j = report(&rep);
    assert_eq!(j["exit_reason"], "signal", "{j}");
    assert_eq!(j["host_page_size_bytes"], 4096, "{j}");
    assert!(!jail.exists(), "the keeper removes the jail directory");
    if let Some(cg) = &cgroup {
        assert!(!cg.exists(), "the keeper removes the cgroup");
    }
}

/// Issue 13: `--job ID --jail` puts the jail at /run/hpmmap/jail/ID. A keeper killed with
/// SIGKILL takes the VMM with it (parent-death signal): no jailed VMM runs on unsupervised,
/// and what the pair leaves is what `hpmmap-offline recover` removes.
#[test]
fn a_jailed_job_killed_with_its_keeper_leaves_what_recover_removes() {
    use std::io::BufRead;
    if !root_kvm_or_skip(
        "a_jailed_job_killed_with_its_keeper_leaves_what_recover_removes",
        "--jail needs root",
    ) {
        return;
    }
    let offline = std::path::Path::new(vmm_bin()).with_file_name("hpmmap-offline");
    assert!(
        offline.is_file(),
        "{} is not built (cargo build --workspace)",
        offline.display()
    );
    let dir = TempDir::new("jailjob");
    let k = payload(
        &dir,
        "j.elf",
        asm64(|a| {
            print(a, "ready\n")?;
            halt_forever(a)
        }),
    );
    let job = format!("hostjail-{}", std::process::id());
    let jail = std::path::PathBuf::from("/run/hpmmap/jail").join(&job);
    let mut child = std::process::Command::new(vmm_bin())
        .args([
            "--mem",
            "64M",
            "--hugepages",
            "none",
            "--kernel",
            &k,
            "--job",
            &job,
        ])
        .args(["--jail", "--uid", "65534", "--gid", "65534"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok);
    if first.as_deref() != Some("ready") {
        let _ = child.wait();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
        panic!("the jailed VMM did not start the guest: {first:?}\n{err}");
    }
    let keeper = child.id();
    let kids = std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children")).unwrap();
    let vmm: u32 = kids.split_whitespace().next().unwrap().parse().unwrap();
    assert!(jail.is_dir(), "--job {job} --jail: {}", jail.display());
    // SAFETY: signals the keeper we started.
    unsafe { libc::kill(keeper as i32, libc::SIGKILL) };
    let st = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    let gone = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    };
    let t0 = std::time::Instant::now();
    while !gone(vmm) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(vmm), "the VMM {vmm} outlived its keeper");
    assert!(
        jail.is_dir(),
        "nobody cleaned up: the jail is left for recover"
    );
    let out = std::process::Command::new(&offline)
        .args(["recover", "--job", &job, "--state-file"])
        .arg(dir.path("offline.json"))
        .args(["--run-dir", "/run/hpmmap", "--cgroup-dir"])
        .arg(dir.path("cgroup"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!jail.exists(), "recover removes {}: {text}", jail.display());
}
