//! The KVM side for real, on this host's /dev/kvm: a guest makes conf1 cycles, writes and
//! reads a VF BAR through the KVM memory slot the device registered, programs MSI-X
//! through the trapped table, and the vector's eventfd raises the MSI in vCPU 0's LAPIC
//! through the GSI route and irqfd. VFIO itself is hpmmap-vf's MOCK (no IOMMU or VF on
//! the build host; its BAR "mmaps" are anonymous memory). A kvm-tier skip where /dev/kvm is absent.

use std::sync::Arc;

use hpmmap_pci::hooks::FIRST_MSI_GSI;
use hpmmap_pci::msix::MsiMessage;
use hpmmap_pci::vfio::mock::{MockDevice, MockGroup, MockVfio};
use hpmmap_pci::vfio::GuestRamRegion;
use hpmmap_pci::{
    IrqRouter, KvmHooks, KvmIrqRouting, KvmMemorySlots, PciRoot, PciWindows, VfioPciDevice,
};
use iced_x86::code_asm::*;
use kvm_bindings::{kvm_irqchip, kvm_segment, KVM_IRQCHIP_PIC_MASTER, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use vmm_sys_util::eventfd::EventFd;

const NAME: &str = "0000:3b:00.3";
const RAM: u64 = 2 << 20;
const CODE: u64 = 0x10000;
/// 64-bit BARs start at 4 GiB for a guest whose RAM ends below it.
const BAR0: u64 = 4 << 30;
const BAR3: u64 = BAR0 + 0x4000;
const VECTOR: u32 = 0x45;

fn kvm_or_skip(test: &str) -> Option<Kvm> {
    match Kvm::new() {
        Ok(k) => {
            hpmmap_testkit::ran(hpmmap_testkit::Tier::Kvm, test);
            Some(k)
        }
        Err(e) => {
            hpmmap_testkit::skip(
                hpmmap_testkit::Tier::Kvm,
                test,
                format!("/dev/kvm unusable: {e}"),
            );
            None
        }
    }
}

fn vf_config() -> Vec<u8> {
    hpmmap_pci::testing::igbvf_config()
}

/// Anonymous guest RAM; unmapped on drop.
struct Ram(*mut u8);
impl Ram {
    fn new() -> Ram {
        // SAFETY: fresh anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RAM as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Ram(p.cast())
    }
    fn write(&self, gpa: u64, bytes: &[u8]) {
        assert!(gpa + bytes.len() as u64 <= RAM);
        // SAFETY: inside the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.0.add(gpa as usize), bytes.len())
        }
    }
    fn write_u64s(&self, gpa: u64, v: &[u64]) {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.write(gpa, &b);
    }
}
impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.0.cast(), RAM as usize) };
    }
}

/// Long mode with identity 2 MiB pages for [0, 2 MiB) and [4 GiB, 4 GiB + 2 MiB).
fn long_mode(ram: &Ram, vcpu: &kvm_ioctls::VcpuFd) {
    const GDT: u64 = 0x500;
    const PML4: u64 = 0x1000;
    let gdt = [0u64, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    ram.write_u64s(GDT, &gdt);
    let mut pml4 = [0u64; 512];
    pml4[0] = 0x2000 | 3;
    let mut pdpt = [0u64; 512];
    pdpt[0] = 0x3000 | 3;
    pdpt[4] = 0x4000 | 3;
    let mut pd0 = [0u64; 512];
    pd0[0] = 0x83;
    let mut pd4 = [0u64; 512];
    pd4[0] = BAR0 | 0x83;
    ram.write_u64s(PML4, &pml4);
    ram.write_u64s(0x2000, &pdpt);
    ram.write_u64s(0x3000, &pd0);
    ram.write_u64s(0x4000, &pd4);
    let seg = |sel: u16, type_: u8, l: u8, db: u8| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: sel,
        type_,
        present: 1,
        dpl: 0,
        db,
        s: 1,
        l,
        g: 1,
        ..Default::default()
    };
    let mut s = vcpu.get_sregs().unwrap();
    s.gdt.base = GDT;
    s.gdt.limit = 23;
    s.cs = seg(8, 11, 1, 0);
    let data = seg(16, 3, 0, 1);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    s.tr = kvm_segment {
        limit: 0xffff,
        type_: 11,
        present: 1,
        ..Default::default()
    };
    s.cr3 = PML4;
    s.cr4 |= 1 << 5;
    s.cr0 |= 1 | (1 << 4) | (1 << 31);
    s.efer |= (1 << 8) | (1 << 10);
    vcpu.set_sregs(&s).unwrap();
    let r = kvm_bindings::kvm_regs {
        rip: CODE,
        rsp: 0x8000,
        rflags: 2, // IF clear: the MSI stays in the IRR for the test to see
        ..Default::default()
    };
    vcpu.set_regs(&r).unwrap();
}

fn conf1(a: &mut CodeAssembler, reg: u32, port_off: u16, value: u32, width: u8) {
    a.mov(dx, 0xCF8u32).unwrap();
    a.mov(eax, 0x8000_0800 | reg).unwrap(); // 00:01.0
    a.out(dx, eax).unwrap();
    a.mov(dx, 0xCFC + u32::from(port_off)).unwrap();
    a.mov(eax, value).unwrap();
    match width {
        2 => a.out(dx, ax).unwrap(),
        _ => a.out(dx, eax).unwrap(),
    }
}

fn guest_code() -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    // Memory decode on: the device registers its BAR slots.
    conf1(&mut a, 0x04, 0, 0x0006, 2);
    // Through BAR0's slot: no exit if it is a KVM memory slot.
    a.mov(rbx, BAR0).unwrap();
    a.mov(dword_ptr(rbx + 0x100), 0x1234_5678u32).unwrap();
    a.mov(eax, dword_ptr(rbx + 0x100)).unwrap();
    a.mov(dx, 0x10u32).unwrap();
    a.out(dx, eax).unwrap();
    // MSI-X vector 0 -> LAPIC 0, fixed, VECTOR; unmasked; then MSI-X enable.
    a.mov(rbx, BAR3).unwrap();
    a.mov(dword_ptr(rbx), 0xfee0_0000u32).unwrap();
    a.mov(dword_ptr(rbx + 4), 0u32).unwrap();
    a.mov(dword_ptr(rbx + 8), VECTOR).unwrap();
    a.mov(dword_ptr(rbx + 12), 0u32).unwrap();
    conf1(&mut a, 0x70, 2, 0x8000, 2);
    a.mov(dx, 0x11u32).unwrap();
    a.out(dx, al).unwrap();
    // Done (not HLT: with the in-kernel LAPIC and IF clear, HLT never comes back).
    a.mov(dx, 0x12u32).unwrap();
    a.out(dx, al).unwrap();
    a.assemble(CODE).unwrap()
}

fn lapic_irr_has(vcpu: &kvm_ioctls::VcpuFd, vector: u32) -> bool {
    let l = vcpu.get_lapic().unwrap();
    let off = 0x200 + (vector as usize / 32) * 0x10;
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = l.regs[off + i] as u8;
    }
    u32::from_le_bytes(b) & (1 << (vector % 32)) != 0
}

fn enable_lapic(vcpu: &kvm_ioctls::VcpuFd) {
    let mut l = vcpu.get_lapic().unwrap();
    // Spurious-interrupt vector register: APIC software enable (a disabled LAPIC drops
    // fixed interrupts).
    let v: u32 = 0x1ff;
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        l.regs[0xf0 + i] = *x as _;
    }
    vcpu.set_lapic(&l).unwrap();
}

fn new_vm(kvm: &Kvm) -> Arc<VmFd> {
    let vm = kvm.create_vm().unwrap();
    let _ = vm.set_tss_address(0xfffb_d000);
    vm.create_irq_chip().unwrap();
    Arc::new(vm)
}

#[test]
fn guest_reaches_bar_through_a_kvm_slot_and_msix_reaches_the_lapic() {
    let Some(kvm) = kvm_or_skip("guest_reaches_bar_through_a_kvm_slot_and_msix_reaches_the_lapic")
    else {
        return;
    };
    let vm = new_vm(&kvm);
    let ram = Ram::new();
    ram.write(CODE, &guest_code());
    // SAFETY: `ram` outlives the VM (dropped after it at the end of the test).
    unsafe {
        vm.set_user_memory_region(kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: RAM,
            userspace_addr: ram.0 as u64,
        })
    }
    .unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    vcpu.set_cpuid2(&cpuid).unwrap();
    enable_lapic(&vcpu);
    long_mode(&ram, &vcpu);

    let mock = Arc::new(MockVfio::new(vec![MockGroup {
        id: 31,
        viable: true,
        devices: vec![MockDevice {
            name: NAME.into(),
            bar_sizes: [0x4000, 0, 0, 0x4000, 0, 0],
            config: vf_config(),
            msix_vectors: 3,
        }],
    }]));
    let hooks = KvmHooks {
        slots: Arc::new(KvmMemorySlots::new(vm.clone(), 1)),
        router: Arc::new(KvmIrqRouting::new(vm.clone())),
    };
    let guest_ram = [GuestRamRegion {
        gpa: 0,
        hva: ram.0 as u64,
        size: RAM,
    }];
    let dev = VfioPciDevice::open(mock.clone(), 31, NAME, &guest_ram, hooks).unwrap();
    let root = PciRoot::new(PciWindows::for_ram_end(RAM));
    assert_eq!(root.add_device(Box::new(dev)).unwrap(), 1);

    let mut bar0_exits = 0;
    let mut table_exits = 0;
    let mut bar_value = None;
    let mut irr_before = None;
    let mut irr_after = None;
    for _ in 0..10_000 {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(0x10, d) => {
                bar_value = Some(u32::from_le_bytes(d.try_into().unwrap()));
            }
            VcpuExit::IoOut(0x11, _) => {
                // The device raises vector 0: VFIO would write this eventfd.
                let fd = mock.irq_sets().last().unwrap().3[0];
                irr_before = Some(lapic_irr_has(&vcpu, VECTOR));
                let one = 1u64;
                // SAFETY: `fd` is the eventfd the device handed to VFIO's SET_IRQS (the mock
                // records it); the device owns it and lives in `root` to the end of the test,
                // so it is open. The buffer is `one`, a live u64, and the length its 8 bytes.
                let written = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
                assert_eq!(written, 8);
                // MSI irqfds inject synchronously where they can; allow the work item.
                let t = std::time::Instant::now();
                while !lapic_irr_has(&vcpu, VECTOR) && t.elapsed().as_secs() < 2 {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                irr_after = Some(lapic_irr_has(&vcpu, VECTOR));
            }
            VcpuExit::IoOut(0x12, _) => break,
            VcpuExit::IoOut(p, d) => assert!(root.pio_write(p, d), "port {p:#x}"),
            VcpuExit::IoIn(p, d) => assert!(root.pio_read(p, d), "port {p:#x}"),
            VcpuExit::MmioWrite(a, d) => {
                bar0_exits += u32::from((BAR0..BAR0 + 0x4000).contains(&a));
                table_exits += u32::from((BAR3..BAR3 + 0x1000).contains(&a));
                assert!(root.mmio_write(a, d), "MMIO {a:#x}");
            }
            VcpuExit::MmioRead(a, d) => {
                bar0_exits += u32::from((BAR0..BAR0 + 0x4000).contains(&a));
                assert!(root.mmio_read(a, d), "MMIO {a:#x}");
            }
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert_eq!(
        bar_value,
        Some(0x1234_5678),
        "the guest's BAR0 write read back from the slot's memory"
    );
    assert_eq!(bar0_exits, 0, "BAR0 is a KVM memory slot: no exits");
    assert_eq!(table_exits, 4, "the MSI-X table page traps");
    assert_eq!(irr_before, Some(false));
    assert_eq!(
        irr_after,
        Some(true),
        "eventfd -> irqfd -> GSI route -> LAPIC IRR vector {VECTOR:#x}"
    );
    drop(vcpu);
    root.shutdown();
    assert_eq!(mock.open_handles(), 0);
}

#[test]
fn msi_routes_keep_the_default_pic_and_ioapic_routes() {
    let Some(kvm) = kvm_or_skip("msi_routes_keep_the_default_pic_and_ioapic_routes") else {
        return;
    };
    let vm = new_vm(&kvm);
    let routing = KvmIrqRouting::new(vm.clone());
    let gsi = routing.allocate_gsis(2).unwrap();
    assert_eq!(gsi, FIRST_MSI_GSI);
    routing
        .set_msi_route(
            gsi,
            MsiMessage {
                address: 0xfee0_0000,
                data: 0x30,
            },
        )
        .unwrap();
    // The serial port's interrupt (GSI 4) must still reach the PIC through an irqfd.
    let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    routing.register_irqfd(&fd, 4).unwrap();
    fd.write(1).unwrap();
    let pic_irr = || {
        let mut c = kvm_irqchip {
            chip_id: KVM_IRQCHIP_PIC_MASTER,
            ..Default::default()
        };
        vm.get_irqchip(&mut c).unwrap();
        // SAFETY: chip_id PIC_MASTER selects the pic member.
        unsafe { c.chip.pic.irr }
    };
    let t = std::time::Instant::now();
    while pic_irr() & (1 << 4) == 0 && t.elapsed().as_secs() < 2 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_ne!(pic_irr() & (1 << 4), 0, "GSI 4 still routed to PIC pin 4");
    routing.unregister_irqfd(&fd, 4).unwrap();
    routing.remove_route(gsi).unwrap();
    // Out-of-range GSIs are refused before KVM sees them.
    assert!(routing
        .set_msi_route(
            3,
            MsiMessage {
                address: 0xfee0_0000,
                data: 0
            }
        )
        .is_err());
}
