//! hpmmap-kvm-probe: one vCPU in 32-bit protected mode (no guest paging) stores to every
//! 4 KiB page of 1 GiB of guest RAM, then halts; the host checks the stores landed and
//! reads KVM's binary statistics (KVM_GET_STATS_FD) for the VM's pages_4k/2m/1g.
//!   hpmmap-kvm-probe [--backing 1G|4K]
//! Exit: 0 done, 1 KVM failure, 2 bad arguments or no 1 GiB page to back the guest.

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::Instant;

const GIB: usize = 1 << 30;
const CODE_GPA: u64 = 0x1000;
const KVM_GET_STATS_FD: libc::c_ulong = 0xAE00 | 0xCE;

/// mov edi, 0; loop: mov byte [edi], 1; add edi, 0x1000; cmp edi, 0x40000000; jb loop; hlt
const PAYLOAD: [u8; 23] = [
    0xBF, 0x00, 0x00, 0x00, 0x00, // mov edi, 0
    0xC6, 0x07, 0x01, // mov byte [edi], 1
    0x81, 0xC7, 0x00, 0x10, 0x00, 0x00, // add edi, 0x1000
    0x81, 0xFF, 0x00, 0x00, 0x00, 0x40, // cmp edi, 0x40000000
    0x72, 0xEF, // jb -17 (to the store)
    0xF4, // hlt
];

fn fail(code: u8, msg: String) -> ExitCode {
    eprintln!("hpmmap-kvm-probe: {msg}");
    ExitCode::from(code)
}

fn map_ram(huge: bool) -> Result<*mut u8, String> {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    if huge {
        flags = libc::MAP_PRIVATE
            | libc::MAP_ANONYMOUS
            | libc::MAP_HUGETLB
            | (30 << libc::MAP_HUGE_SHIFT);
    }
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            GIB,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        return Err(if huge {
            format!(
                "cannot map one 1 GiB hugetlb page ({e}); reserve one (hugepagesz=1G hugepages=1)"
            )
        } else {
            format!("cannot map 1 GiB of anonymous memory ({e})")
        });
    }
    Ok(p as *mut u8)
}

fn flat(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// name -> first u64 of each statistic, from the binary stats fd (KVM API 4.133).
fn read_stats(vm_fd: i32) -> Result<Vec<(String, u64)>, String> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd.
    let fd = unsafe { libc::ioctl(vm_fd, KVM_GET_STATS_FD, 0) };
    if fd < 0 {
        return Err(format!(
            "KVM_GET_STATS_FD: {}",
            std::io::Error::last_os_error()
        ));
    }
    let pread = |off: usize, len: usize| -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; len];
        // SAFETY: b is len bytes long.
        let n = unsafe { libc::pread(fd, b.as_mut_ptr() as *mut libc::c_void, len, off as i64) };
        if n != len as isize {
            return Err(format!(
                "reading KVM stats: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(b)
    };
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let h = pread(0, 24)?;
    let (name_size, num_desc, desc_off, data_off) =
        (u32_at(&h, 4), u32_at(&h, 8), u32_at(&h, 16), u32_at(&h, 20));
    let stride = 16 + name_size;
    let descs = pread(desc_off, stride * num_desc)?;
    let mut out = Vec::new();
    for i in 0..num_desc {
        let d = &descs[i * stride..(i + 1) * stride];
        let offset = u32_at(d, 8);
        let name = &d[16..];
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        let v = pread(data_off + offset, 8)?;
        out.push((
            String::from_utf8_lossy(&name[..end]).into_owned(),
            u64::from_le_bytes(v.try_into().unwrap()),
        ));
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    Ok(out)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let huge = match args
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] | ["--backing", "1G"] => true,
        ["--backing", "4K"] => false,
        _ => {
            return fail(
                2,
                format!("usage: hpmmap-kvm-probe [--backing 1G|4K], not {args:?}"),
            )
        }
    };
    let ram = match map_ram(huge) {
        Ok(p) => p,
        Err(e) => return fail(2, e),
    };
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => return fail(1, format!("/dev/kvm: {e}")),
    };
    let run = || -> Result<(f64, Vec<(String, u64)>), String> {
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        // SAFETY: ram is GIB bytes, mapped above; the payload fits in its first page range.
        unsafe {
            std::ptr::copy_nonoverlapping(
                PAYLOAD.as_ptr(),
                ram.add(CODE_GPA as usize),
                PAYLOAD.len(),
            )
        };
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: GIB as u64,
            userspace_addr: ram as u64,
        };
        // SAFETY: the region stays mapped for the VM's lifetime.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        let mut vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        let mut sregs = vcpu
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        sregs.cs = flat(0x8, 11);
        for s in [
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.ss,
            &mut sregs.fs,
            &mut sregs.gs,
        ] {
            *s = flat(0x10, 3);
        }
        sregs.cr0 = 1; // PE, no paging: guest-physical = linear
        vcpu.set_sregs(&sregs)
            .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
        let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
        regs.rip = CODE_GPA;
        regs.rflags = 2;
        vcpu.set_regs(&regs)
            .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        let t = Instant::now();
        match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
            VcpuExit::Hlt => {}
            other => return Err(format!("unexpected exit {other:?}")),
        }
        let secs = t.elapsed().as_secs_f64();
        let stats = read_stats(vm.as_raw_fd())?;
        Ok((secs, stats))
    };
    let (secs, stats) = match run() {
        Ok(r) => r,
        Err(e) => return fail(1, e),
    };
    // SAFETY: GIB bytes mapped above.
    let mem = unsafe { std::slice::from_raw_parts(ram, GIB) };
    let touched = (0..GIB).step_by(4096).filter(|&o| mem[o] == 1).count();
    let get = |n: &str| stats.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
    println!(
        "hpmmap-kvm-probe: backing {} touched {touched} of {} pages in {secs:.3} s; pages_4k={} pages_2m={} pages_1g={}",
        if huge { "1G hugetlb" } else { "4K anonymous" },
        GIB / 4096,
        get("pages_4k").map_or("absent".into(), |v| v.to_string()),
        get("pages_2m").map_or("absent".into(), |v| v.to_string()),
        get("pages_1g").map_or("absent".into(), |v| v.to_string()),
    );
    if touched != GIB / 4096 {
        return fail(1, format!("only {touched} pages hold the payload's stores"));
    }
    ExitCode::SUCCESS
}
