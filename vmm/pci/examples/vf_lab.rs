//! Lab check (run by lab/vf-in-kvm-under-qemu.sh inside a QEMU/TCG guest with VT-d, an
//! igb SR-IOV NIC and KVM on emulated SVM+NPT): a real VF through the real stack.
//!
//! Claims the VF (`--vf`), opens VFIO with the kernel ioctls, DMA-maps a KVM guest's RAM,
//! puts the VF on the PCI root bus with KVM memory slots and GSI routing, then runs a tiny
//! long-mode guest that, through the VMM's conf1 ports, enables memory decode and bus
//! mastering, programs MSI-X vector 0 through the trapped table, enables MSI-X, unmasks
//! the igbvf's interrupt (EIMS) and raises it (EICS) through BAR0's KVM slot, i.e. real
//! device MMIO from the nested guest. Checks: EIMS reads back in the guest, the table
//! traps, and the MSI reaches vCPU 0's LAPIC (IRR) through VFIO's eventfd, the irqfd and
//! the GSI route. Then tears everything down and checks the VF is back on its driver.
//! Prints `VF-PCI-LAB pass` or `VF-PCI-LAB fail: ...`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hpmmap_pci::layout::CONF1_ADDRESS_PORT;
use hpmmap_pci::vfio::{GuestRamRegion, KernelVfio};
use hpmmap_pci::{KvmHooks, KvmIrqRouting, KvmMemorySlots, PciRoot, PciWindows, VfioPciDevice};
use hpmmap_vf::{claim_vf, Sysfs, VfRequest};
use iced_x86::code_asm::*;
use kvm_bindings::{kvm_segment, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit};

const RAM: u64 = 64 << 20;
const CODE: u64 = 0x10000;
const VECTOR: u32 = 0x45;
const IGBVF_EICS: u64 = 0x1520;
const IGBVF_EIMS: u64 = 0x1524;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let vf = match args.as_slice() {
        [_, flag, v] if flag == "--vf" => v.clone(),
        _ => {
            eprintln!("usage: vf_lab --vf NAME");
            std::process::exit(2);
        }
    };
    match run(&vf) {
        Ok(()) => println!("VF-PCI-LAB pass"),
        Err(e) => {
            println!("VF-PCI-LAB fail: {e}");
            std::process::exit(1);
        }
    }
}

fn ram() -> *mut u8 {
    // SAFETY: fresh anonymous mapping, never unmapped (the process exits).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            RAM as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap guest RAM");
    p.cast()
}

fn put(ram: *mut u8, gpa: u64, v: &[u64]) {
    for (i, x) in v.iter().enumerate() {
        // SAFETY: inside guest RAM (callers stay below 1 MiB).
        unsafe { (ram.add(gpa as usize + 8 * i) as *mut u64).write_unaligned(*x) }
    }
}

fn conf1(a: &mut CodeAssembler, dev: u8, reg: u32, value: u32) {
    a.mov(dx, u32::from(CONF1_ADDRESS_PORT)).unwrap();
    a.mov(eax, 0x8000_0000 | (u32::from(dev) << 11) | (reg & 0xfc))
        .unwrap();
    a.out(dx, eax).unwrap();
    a.mov(dx, 0xCFCu32 + (reg & 3)).unwrap();
    a.mov(eax, value).unwrap();
    a.out(dx, ax).unwrap();
}

fn run(spec: &str) -> Result<(), String> {
    let sysfs = Sysfs::host();
    let claim = claim_vf(
        &sysfs,
        &VfRequest {
            spec: spec.into(),
            create: None,
        },
    )
    .map_err(|e| e.to_string())?;
    let vf_addr = claim.vf().to_string();
    let driver_before = claim.original_driver().map(str::to_string);
    println!(
        "[1/5] claimed {vf_addr} (was on {driver_before:?}), IOMMU group {}",
        claim.iommu_group()
    );

    let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let _ = vm.set_tss_address(0xfffb_d000);
    vm.create_irq_chip()
        .map_err(|e| format!("KVM_CREATE_IRQCHIP: {e}"))?;
    let vm = Arc::new(vm);
    let mem = ram();
    // SAFETY: `mem` stays mapped for the life of the process.
    unsafe {
        vm.set_user_memory_region(kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: RAM,
            userspace_addr: mem as u64,
        })
    }
    .map_err(|e| format!("RAM slot: {e}"))?;

    let hooks = KvmHooks {
        slots: Arc::new(KvmMemorySlots::new(vm.clone(), 1)),
        router: Arc::new(KvmIrqRouting::new(vm.clone())),
    };
    let guest_ram = [GuestRamRegion {
        gpa: 0,
        hva: mem as u64,
        size: RAM,
    }];
    let dev = VfioPciDevice::from_claim(claim, Arc::new(KernelVfio::host()), &guest_ram, hooks)
        .map_err(|e| e.to_string())?;
    println!(
        "[2/5] VFIO open, {} MiB of guest RAM DMA-mapped (IOVA = GPA)",
        RAM >> 20
    );
    let root = PciRoot::new(PciWindows::for_ram_end(RAM));
    let slot = root.add_device(Box::new(dev)).map_err(|e| e.to_string())?;
    let cfg = |off: u16, len: usize| {
        root.config_read(
            hpmmap_pci::address::ConfigAddress {
                bus: 0,
                device: slot,
                function: 0,
                offset: off,
            },
            len,
        )
    };
    let bar =
        |i: u16| u64::from(cfg(0x10 + 4 * i, 4) & !0xf) | (u64::from(cfg(0x14 + 4 * i, 4)) << 32);
    let (bar0, bar3) = (bar(0), bar(3));
    let mut cap = cfg(0x34, 1) as u16;
    while cap != 0 && cfg(cap, 1) != 0x11 {
        cap = cfg(cap + 1, 1) as u16;
    }
    let table = cfg(cap + 4, 4);
    println!(
        "[3/5] 00:{slot:02x}.0 id {:#010x}, BAR0 {bar0:#x}, BAR3 {bar3:#x}, MSI-X cap {cap:#x} table {table:#x}",
        cfg(0, 4)
    );
    if cap == 0 || table & 7 != 3 {
        return Err("not an igbvf layout (MSI-X table in BAR3)".into());
    }
    let table_gpa = bar3 + u64::from(table & !7);

    // Long mode: identity 2 MiB pages for RAM's first 2 MiB and for the BARs' 2 MiB.
    put(
        mem,
        0x500,
        &[0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff],
    );
    let mut pml4 = [0u64; 512];
    pml4[0] = 0x2000 | 3;
    let mut pdpt = [0u64; 512];
    pdpt[0] = 0x3000 | 3;
    pdpt[(bar0 >> 30) as usize] = 0x4000 | 3;
    let mut pd0 = [0u64; 512];
    pd0[0] = 0x83;
    let mut pdb = [0u64; 512];
    pdb[((bar0 >> 21) & 511) as usize] = (bar0 & !0x1f_ffff) | 0x83;
    put(mem, 0x1000, &pml4);
    put(mem, 0x2000, &pdpt);
    put(mem, 0x3000, &pd0);
    put(mem, 0x4000, &pdb);
    if (bar3 & !0x1f_ffff) != (bar0 & !0x1f_ffff) {
        return Err("BAR0 and BAR3 not in one 2 MiB page".into());
    }
    let mut a = CodeAssembler::new(64).unwrap();
    conf1(&mut a, slot, 0x04, 0x0006);
    a.mov(rbx, table_gpa).unwrap();
    a.mov(dword_ptr(rbx), 0xfee0_0000u32).unwrap();
    a.mov(dword_ptr(rbx + 4), 0u32).unwrap();
    a.mov(dword_ptr(rbx + 8), VECTOR).unwrap();
    a.mov(dword_ptr(rbx + 12), 0u32).unwrap();
    conf1(&mut a, slot, u32::from(cap) + 2, 0x8000);
    a.mov(rbx, bar0).unwrap();
    a.mov(dword_ptr(rbx + IGBVF_EIMS), 0x7u32).unwrap();
    a.mov(eax, dword_ptr(rbx + IGBVF_EIMS)).unwrap();
    a.mov(dx, 0x10u32).unwrap();
    a.out(dx, eax).unwrap();
    a.mov(dword_ptr(rbx + IGBVF_EICS), 0x1u32).unwrap();
    a.mov(dx, 0x11u32).unwrap();
    a.out(dx, al).unwrap();
    let code = a.assemble(CODE).unwrap();
    // SAFETY: inside guest RAM.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), mem.add(CODE as usize), code.len()) };

    let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("vCPU: {e}"))?;
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    vcpu.set_cpuid2(&cpuid).map_err(|e| format!("CPUID: {e}"))?;
    let mut l = vcpu.get_lapic().unwrap();
    for (i, x) in 0x1ffu32.to_le_bytes().iter().enumerate() {
        l.regs[0xf0 + i] = *x as _;
    }
    vcpu.set_lapic(&l).unwrap();
    let seg = |sel: u16, type_: u8, lm: u8, db: u8| kvm_segment {
        limit: 0xffff_ffff,
        selector: sel,
        type_,
        present: 1,
        db,
        s: 1,
        l: lm,
        g: 1,
        ..Default::default()
    };
    let mut s = vcpu.get_sregs().unwrap();
    s.gdt.base = 0x500;
    s.gdt.limit = 23;
    s.cs = seg(8, 11, 1, 0);
    let d = seg(16, 3, 0, 1);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (d, d, d, d, d);
    s.tr = kvm_segment {
        limit: 0xffff,
        type_: 11,
        present: 1,
        ..Default::default()
    };
    s.cr3 = 0x1000;
    s.cr4 |= 1 << 5;
    s.cr0 |= 1 | (1 << 4) | (1 << 31);
    s.efer |= (1 << 8) | (1 << 10);
    vcpu.set_sregs(&s).unwrap();
    vcpu.set_regs(&kvm_bindings::kvm_regs {
        rip: CODE,
        rsp: 0x8000,
        rflags: 2,
        ..Default::default()
    })
    .unwrap();

    let irr = |vcpu: &kvm_ioctls::VcpuFd| {
        let l = vcpu.get_lapic().unwrap();
        let off = 0x200 + (VECTOR as usize / 32) * 0x10;
        let b: Vec<u8> = l.regs[off..off + 4].iter().map(|x| *x as u8).collect();
        u32::from_le_bytes(b.try_into().unwrap()) & (1 << (VECTOR % 32)) != 0
    };
    println!("[4/5] running the guest");
    let (mut eims, mut table_exits, mut bar0_exits, mut fired) = (None, 0, 0, false);
    for _ in 0..100_000 {
        match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
            VcpuExit::IoOut(0x10, d) => eims = Some(u32::from_le_bytes(d.try_into().unwrap())),
            VcpuExit::IoOut(0x11, _) => {
                let t = Instant::now();
                while !irr(&vcpu) && t.elapsed() < Duration::from_secs(3) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                fired = irr(&vcpu);
                break;
            }
            VcpuExit::IoOut(p, d) => {
                root.pio_write(p, d);
            }
            VcpuExit::IoIn(p, d) => {
                root.pio_read(p, d);
            }
            VcpuExit::MmioWrite(a, d) => {
                table_exits += u32::from((table_gpa..table_gpa + 0x1000).contains(&a));
                bar0_exits += u32::from((bar0..bar0 + 0x4000).contains(&a));
                root.mmio_write(a, d);
            }
            VcpuExit::MmioRead(a, d) => {
                bar0_exits += u32::from((bar0..bar0 + 0x4000).contains(&a));
                root.mmio_read(a, d);
            }
            other => return Err(format!("unexpected exit {other:?}")),
        }
    }
    for l in std::fs::read_to_string("/proc/interrupts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("vfio"))
    {
        println!(
            "      {}",
            l.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    println!(
        "      guest read EIMS {eims:x?} through BAR0's slot ({bar0_exits} BAR0 exits), {table_exits} MSI-X table exits, LAPIC IRR vector {VECTOR:#x}: {fired}"
    );
    drop(vcpu);
    println!("[5/5] teardown");
    root.shutdown();
    let now = sysfs
        .driver_of(vf_addr.parse().map_err(|e| format!("{e:?}"))?)
        .map_err(|e| e.to_string())?;
    println!("      {vf_addr} on {now:?} (was {driver_before:?})");
    let mut bad = Vec::new();
    if eims.is_none_or(|v| v & 7 != 7) {
        bad.push(format!("EIMS read back {eims:x?}"));
    }
    if bar0_exits != 0 {
        bad.push(format!("{bar0_exits} BAR0 exits"));
    }
    if table_exits != 4 {
        bad.push(format!("{table_exits} table exits"));
    }
    if !fired {
        bad.push("no MSI in the LAPIC".into());
    }
    if now != driver_before {
        bad.push("driver not restored".into());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}
