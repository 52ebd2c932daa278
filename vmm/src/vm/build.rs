//! Building the VM: the checks that need no allocation, guest RAM, the KVM VM and its memory
//! slots, the PCI bus with the VF and the virtio disks, kernel and boot structures, the device
//! bus and the vCPUs (configured, not yet running).

use super::{host, Controller, RamHost, VmBus, VmmError};
use crate::arch::x86_64::acpi::{self, AcpiTables};
use crate::arch::x86_64::{boot, cpuid, layout as bl, mptable, paging, regs};
use crate::config::{SerialTarget, VmConfig};
use crate::devices::{self, pv, Bus, VmEvent};
use crate::loader;
use crate::memory::layout::GuestLayout;
use crate::memory::numa::GuestNuma;
use crate::memory::{GuestRam, RamOptions, RamPart};
use crate::platform::Platform;
use crate::vcpu;
use kvm_bindings::{kvm_pit_config, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const TSS_ADDRESS: usize = 0xFFFB_D000;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// How long each startup phase took, for the report (`startup_phases_ms`).
pub(super) struct Phases {
    last: Instant,
    pub(super) done: Vec<(&'static str, f64)>,
}

impl Phases {
    fn new(started: Instant) -> Self {
        Phases {
            last: started,
            done: Vec::new(),
        }
    }

    pub(super) fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done
            .push((name, now.duration_since(self.last).as_secs_f64() * 1e3));
        self.last = now;
    }
}

/// Tears the guest PCI bus down (irqfds, routes, BAR slots, VFIO, then the VF's original
/// driver) when it goes out of scope, so that an error return after the VF is on the bus
/// still gives it back. The signal thread holds the bus forever, so dropping the bus is
/// not enough.
pub(super) struct PciTeardown(Option<Arc<hpmmap_pci::PciRoot>>);

impl Drop for PciTeardown {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            p.shutdown();
        }
    }
}

/// Everything the run needs, built and checked; nothing runs in the guest yet.
pub(super) struct Built {
    pub platform: Platform,
    pub layout: GuestLayout,
    pub numa: Option<GuestNuma>,
    /// `--vsock`'s event thread, kept off guest memory when this drops (before `ram`).
    pub vsock_stop: Option<crate::devices::virtio::vsock::worker::Stop>,
    pub ram: Arc<GuestRam>,
    pub prefault: crate::memory::PrefaultStats,
    pub vm: Arc<VmFd>,
    pub pci_teardown: PciTeardown,
    pub kernel: loader::LoadedKernel,
    pub bus: Arc<VmBus>,
    pub events: Receiver<VmEvent>,
    pub vcpus: Vec<VcpuFd>,
    pub output_disk: Option<crate::devices::virtio::output::OutputDisk>,
    pub vf_report: Option<crate::report::VfReport>,
    pub disks_report: Vec<crate::devices::virtio::attach::DiskReport>,
    /// `--vsock`: the device and its muxer, for the event thread started with the vCPUs.
    pub vsock: Option<crate::devices::virtio::vsock::Vsock>,
    pub vsock_file: Option<crate::devices::virtio::vsock::unix::SocketFile>,
    pub phases: Phases,
    pub started: Instant,
}

/// Builds the VM in the order that keeps refused input cheap: every check first, then the
/// VF claim and the disks (before RAM is allocated and before any jail), then RAM and KVM.
pub(super) fn build(cfg: &VmConfig, started: Instant) -> Result<Built, VmmError> {
    let platform = Platform::detect();
    let kvm = open_kvm()?;
    let (layout, numa) = preflight(cfg, &kvm)?;
    let acpi_tables = acpi::build(
        &acpi_platform(&layout, cfg.vcpus, numa.as_ref()),
        crate::memory::layout::ACPI_START,
        (crate::memory::layout::ACPI_END - crate::memory::layout::ACPI_START) as usize,
    )?;
    // Bound to vfio-pci from here; released on every return (drop) and by PciTeardown.
    let vf_claim = claim_vf(cfg)?;
    // Disks open before RAM is allocated and before --jail; --output's DIR is made here.
    let (block_devs, output_disk) =
        crate::devices::virtio::attach::open(cfg).map_err(VmmError::Storage)?;
    let disks_report = crate::devices::virtio::attach::report(cfg);
    // PATH is made here, with the disks, and removed by `vsock_file` on every return.
    let (vsock_listener, vsock_file) = match &cfg.vsock {
        Some(p) => {
            let (l, f) = crate::devices::virtio::vsock::unix::Listener::bind(p)
                .map_err(|e| VmmError::Storage(e.into()))?;
            (Some(l), Some(f))
        }
        None => (None, None),
    };
    let mut phases = Phases::new(started);
    phases.mark("start_and_checks");
    // After the checks, so that refused input stays a one-line error.
    if let Some(w) = platform.boot_warning() {
        eprintln!("hpmmap-vmm: note: {w}");
    }

    let (ram, prefault) = GuestRam::create(&ram_options(cfg, numa.as_ref()))?;
    phases.mark("guest_ram");
    let ram = Arc::new(ram);
    // Shared with the VF's memory slots and GSI routing, which vCPU threads update.
    let vm = Arc::new(kvm.create_vm().map_err(host("KVM_CREATE_VM"))?);
    // Needed by VMX for real-mode emulation; harmless elsewhere and refused by some KVMs.
    let _ = vm.set_tss_address(TSS_ADDRESS);
    vm.create_irq_chip().map_err(host("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(host("KVM_CREATE_PIT2"))?;
    for (slot, r) in layout.ram_regions().iter().enumerate() {
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: r.gpa,
            memory_size: r.size,
            userspace_addr: ram.host_address() + r.host_offset,
        };
        // SAFETY: the region is inside our guest RAM mapping, which outlives the VM.
        unsafe { vm.set_user_memory_region(region) }.map_err(host("KVM_SET_USER_MEMORY_REGION"))?;
    }
    let mem = ram.guest_memory(&layout)?;
    phases.mark("kvm_vm");
    let vf_report = vf_claim.as_ref().map(crate::report::VfReport::of);
    let root = Arc::new(hpmmap_pci::PciRoot::new(pci_windows(&layout)));
    let pci_teardown = PciTeardown(Some(root.clone()));
    if let (Some(claim), Some(spec)) = (vf_claim, &cfg.vf) {
        pci_bus(spec, claim, &vm, &ram, &layout, &root)?;
        phases.mark("vfio_and_pci");
    }
    crate::devices::virtio::attach::add_to_bus(block_devs, &mem, &vm, &root)
        .map_err(VmmError::Storage)?;
    let vsock = match vsock_listener {
        Some(l) => Some(
            crate::devices::virtio::attach::add_vsock(l, &mem, &vm, &root)
                .map_err(VmmError::Storage)?,
        ),
        None => None,
    };
    let pci = Some(root);
    let kernel = loader::load_kernel(&mem, &layout, &cfg.kernel)?;
    let initrd = match &cfg.initrd {
        Some(p) => Some(loader::load_initrd(&mem, &layout, &kernel, p)?),
        None => None,
    };
    write_boot_structures(
        &mem,
        &layout,
        &kernel,
        initrd,
        &cfg.cmdline,
        cfg.vcpus,
        &acpi_tables,
    )?;
    phases.mark("load_and_boot_structures");

    let serial_irq =
        vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(host("eventfd"))?;
    vm.register_irqfd(&serial_irq, devices::COM1_IRQ)
        .map_err(host("KVM_IRQFD"))?;
    let out = open_serial(&cfg.serial)?;
    let (tx, events) = mpsc::channel();
    let bus: Arc<VmBus> = Arc::new(Bus {
        serial: Arc::new(Mutex::new(devices::serial::SerialPort::with_limit(
            serial_irq,
            out,
            cfg.serial_limit,
        ))),
        i8042: Mutex::new(devices::i8042::I8042::default()),
        pv: Mutex::new(pv::PvDevice::new(
            layout.pool_ranges().to_vec(),
            ram.page_size().shift(),
        )),
        pv_host: RamHost {
            ram: ram.clone(),
            layout: layout.clone(),
            mem: mem.clone(),
        },
        sink: Controller { tx: Mutex::new(tx) },
        unhandled: devices::Unhandled::default(),
        result: Mutex::new(None),
        pci,
    });

    // Asked once: the same for every vCPU, and hundreds of vCPUs should cost linear time.
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(host("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpus = Vec::new();
    for i in 0..cfg.vcpus {
        vcpus.push(configure_vcpu(&supported, &vm, i, cfg.vcpus, &kernel)?);
    }
    vcpu::install_kick_handler().map_err(host("signal handler"))?;
    phases.mark("vcpus");
    Ok(Built {
        platform,
        layout,
        numa,
        vsock_stop: None,
        ram,
        prefault,
        vm,
        pci_teardown,
        kernel,
        bus,
        events,
        vcpus,
        output_disk,
        vf_report,
        disks_report,
        vsock,
        vsock_file,
        phases,
        started,
    })
}

/// `--vf`: claims the VF (bound to vfio-pci; released on drop). Done before guest RAM is
/// allocated so that a bad name costs nothing.
fn claim_vf(cfg: &VmConfig) -> Result<Option<hpmmap_vf::VfClaim>, VmmError> {
    let Some(spec) = &cfg.vf else {
        return Ok(None);
    };
    let req = hpmmap_vf::VfRequest {
        spec: spec.clone(),
        create: cfg.vf_create,
    };
    hpmmap_vf::claim_vf_with(&hpmmap_vf::Sysfs::host(), &req, &cfg.vf_ib)
        .map(Some)
        .map_err(|source| VmmError::Vf {
            spec: spec.clone(),
            source,
        })
}

/// The guest's PCI root bus (host bridge only, until a VF joins it): every guest has one, so
/// that the bus the ACPI tables describe (DSDT PCI0, MCFG) answers.
fn pci_windows(layout: &GuestLayout) -> hpmmap_pci::PciWindows {
    let ram_end = layout
        .ram_regions()
        .iter()
        .map(|r| r.gpa + r.size)
        .max()
        .unwrap_or(0);
    hpmmap_pci::PciWindows::for_ram_end(ram_end)
}

/// The guest node of each vCPU (0 without --numa).
fn vcpu_nodes(vcpus: u32, numa: Option<&GuestNuma>) -> Vec<u32> {
    let mut v = vec![0; vcpus as usize];
    for n in numa.map(|g| g.nodes.as_slice()).unwrap_or_default() {
        for &c in &n.cpus {
            v[c as usize] = n.id;
        }
    }
    v
}

/// What the ACPI tables describe: every vCPU (APIC ID = index) and RAM range with its guest
/// node, the host's distances, the PCI bus.
fn acpi_platform(layout: &GuestLayout, vcpus: u32, numa: Option<&GuestNuma>) -> acpi::Platform {
    let windows = pci_windows(layout);
    acpi::Platform {
        cpus: vcpu_nodes(vcpus, numa)
            .into_iter()
            .enumerate()
            .map(|(i, node)| acpi::CpuAffinity {
                apic_id: i as u32,
                node,
            })
            .collect(),
        memory: layout
            .node_ranges()
            .iter()
            .map(|(node, r)| acpi::MemAffinity {
                base: r.base,
                size: r.size,
                node: *node,
            })
            .collect(),
        distances: numa
            .map(|g| g.distances.clone())
            .unwrap_or_else(|| vec![vec![crate::memory::numa::LOCAL_DISTANCE]]),
        pci: acpi::PciHostBridge {
            ecam_base: hpmmap_pci::layout::ECAM_BASE,
            ecam_size: hpmmap_pci::layout::ECAM_SIZE,
            mmio32: windows.mmio32,
            mmio64: windows.mmio64,
        },
    }
}

/// Opens VFIO for the claimed VF, DMA-maps all guest RAM (IOVA = GPA) and puts the VF on
/// the root bus. BAR slots follow the RAM slots; every GSI route goes through one router.
fn pci_bus(
    spec: &str,
    claim: hpmmap_vf::VfClaim,
    vm: &Arc<VmFd>,
    ram: &GuestRam,
    layout: &GuestLayout,
    root: &hpmmap_pci::PciRoot,
) -> Result<(), VmmError> {
    let err = |source| VmmError::Pci {
        spec: spec.to_string(),
        source,
    };
    let regions = layout.ram_regions();
    let ram_map: Vec<_> = regions
        .iter()
        .map(|r| hpmmap_pci::vfio::GuestRamRegion {
            gpa: r.gpa,
            hva: ram.host_address() + r.host_offset,
            size: r.size,
        })
        .collect();
    let hooks = hpmmap_pci::KvmHooks {
        slots: Arc::new(hpmmap_pci::KvmMemorySlots::new(
            vm.clone(),
            regions.len() as u32,
        )),
        router: Arc::new(hpmmap_pci::KvmIrqRouting::new(vm.clone())),
    };
    let vf = claim.vf();
    let dev = hpmmap_pci::VfioPciDevice::from_claim(
        claim,
        Arc::new(hpmmap_pci::vfio::KernelVfio::host()),
        &ram_map,
        hooks,
    )
    .map_err(err)?;
    let slot = root.add_device(Box::new(dev)).map_err(err)?;
    eprintln!("hpmmap-vmm: --vf {spec}: VF {vf} on the guest's PCI bus at 00:{slot:02x}.0");
    Ok(())
}

fn open_kvm() -> Result<Kvm, VmmError> {
    Kvm::new().map_err(|e| {
        VmmError::Kvm(match e.errno() {
            libc::ENOENT => {
                "/dev/kvm: not found (is the kvm module loaded? this host cannot run VMs)".into()
            }
            libc::EACCES | libc::EPERM => {
                "/dev/kvm: permission denied (run as root or join the kvm group)".into()
            }
            _ => format!("/dev/kvm: cannot open: {e}"),
        })
    })
}

/// Every check that needs no allocation, in the order a user would fix them.
fn preflight(cfg: &VmConfig, kvm: &Kvm) -> Result<(GuestLayout, Option<GuestNuma>), VmmError> {
    // KVM_CAP_MAX_VCPUS; past 254 the guest learns its CPUs from the MADT's x2APIC entries.
    let max = kvm.get_max_vcpus() as u32;
    if cfg.vcpus > max {
        return Err(VmmError::Kvm(format!(
            "--vcpus {}: above the maximum of {max} vCPUs this KVM allows (KVM_CAP_MAX_VCPUS)",
            cfg.vcpus
        )));
    }
    let numa = match &cfg.numa {
        Some(req) => Some(req.resolve(
            std::path::Path::new("/sys"),
            cfg.vcpus,
            cfg.mem,
            cfg.hugepages,
        )?),
        None => None,
    };
    let sizes: Vec<u64> = match &numa {
        Some(g) => g.nodes.iter().map(|n| n.mem).collect(),
        None => vec![cfg.mem],
    };
    let layout = GuestLayout::with_nodes(cfg.mem, cfg.pool, &sizes)?;
    loader::probe_kernel(&cfg.kernel)?;
    if let Some(rd) = &cfg.initrd {
        let size = loader::probe_initrd(rd)?;
        // The precise check (above the kernel) follows the kernel load; this one needs no RAM.
        if size
            > layout
                .low_usable_end()
                .saturating_sub(crate::memory::layout::HIGH_MEMORY_START)
        {
            return Err(loader::LoadError::InitrdTooLarge {
                path: rd.clone(),
                size,
                limit: layout.low_usable_end(),
                kernel_end: crate::memory::layout::HIGH_MEMORY_START,
            }
            .into());
        }
    }
    // Whose pages first: a VMM short of its own pages is told so before the pool count.
    crate::memory::reservation::check(
        cfg.vf_ib.job.as_deref(),
        &ram_options(cfg, numa.as_ref()),
        &crate::memory::reservation::state_path(),
    )
    .map_err(crate::memory::MemoryError::Reservation)?;
    crate::memory::check_request(&ram_options(cfg, numa.as_ref()))?;
    Ok((layout, numa))
}

fn ram_options(cfg: &VmConfig, numa: Option<&GuestNuma>) -> RamOptions {
    RamOptions {
        bytes: cfg.mem,
        page_size: cfg.hugepages,
        backend: cfg.mem_backend.clone(),
        numa_node: cfg.numa_node,
        workers: cfg.prefault_workers,
        progress: true,
        parts: numa
            .map(|g| {
                g.nodes
                    .iter()
                    .map(|n| RamPart {
                        bytes: n.mem,
                        host_node: n.host_node,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn write_boot_structures(
    mem: &GuestMemoryMmap,
    layout: &GuestLayout,
    kernel: &loader::LoadedKernel,
    initrd: Option<boot::Initrd>,
    cmdline: &str,
    vcpus: u32,
    acpi: &AcpiTables,
) -> Result<(), VmmError> {
    let w = |addr: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(host("writing boot structures"))
    };
    let mut cl = cmdline.as_bytes().to_vec();
    cl.push(0);
    w(bl::CMDLINE_ADDR, &cl)?;
    let gdt: Vec<u8> = crate::arch::x86_64::gdt::gdt()
        .iter()
        .flat_map(|d| d.to_le_bytes())
        .collect();
    w(bl::GDT_ADDR, &gdt)?;
    for (addr, table) in paging::identity_tables() {
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
        w(addr, &bytes)?;
    }
    // The MP table stays for guests booted with acpi=off, as far as its 8-bit APIC IDs reach.
    if vcpus <= mptable::MAX_CPUS {
        w(bl::MPTABLE_ADDR, &mptable::build(bl::MPTABLE_ADDR, vcpus))?;
    }
    w(acpi.base, &acpi.bytes)?;
    let e820 = layout.e820();
    let bad_e820 = |e: boot::BootInfoError| VmmError::Kvm(format!("--mem: {e}"));
    match kernel.mode {
        regs::EntryMode::Linux64 => {
            let zp = boot::zero_page(
                &e820,
                bl::CMDLINE_ADDR,
                cmdline.len(),
                initrd,
                kernel.setup_header,
                Some(acpi.rsdp),
            )
            .map_err(bad_e820)?;
            w(bl::ZERO_PAGE_ADDR, boot::pod_bytes(&zp))?;
        }
        regs::EntryMode::Pvh => {
            let (info, pieces) =
                boot::pvh_start_info(&e820, bl::CMDLINE_ADDR, initrd, Some(acpi.rsdp))
                    .map_err(bad_e820)?;
            w(bl::PVH_START_INFO_ADDR, boot::pod_bytes(&info))?;
            for (addr, bytes) in pieces {
                w(addr, &bytes)?;
            }
        }
    }
    Ok(())
}

fn configure_vcpu(
    supported: &kvm_bindings::CpuId,
    vm: &VmFd,
    index: u32,
    count: u32,
    kernel: &loader::LoadedKernel,
) -> Result<kvm_ioctls::VcpuFd, VmmError> {
    let vcpu = vm
        .create_vcpu(index as u64)
        .map_err(host("KVM_CREATE_VCPU"))?;
    let entries = cpuid::filter(supported.as_slice(), index, count);
    let cpuid = kvm_bindings::CpuId::from_entries(&entries).map_err(host("CPUID table"))?;
    vcpu.set_cpuid2(&cpuid).map_err(host("KVM_SET_CPUID2"))?;
    let msrs = Msrs::from_entries(&regs::boot_msrs()).map_err(host("MSR table"))?;
    // MSRs a nested or software KVM does not emulate are skipped, not fatal.
    let _ = vcpu.set_msrs(&msrs);
    let mut lapic = vcpu.get_lapic().map_err(host("KVM_GET_LAPIC"))?;
    let set_lvt = |regs: &mut [std::os::raw::c_char], off: usize, mode: u32| {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = regs[off + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            regs[off + i] = *x as std::os::raw::c_char;
        }
    };
    set_lvt(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(host("KVM_SET_LAPIC"))?;
    if index == 0 {
        let sregs = vcpu.get_sregs().map_err(host("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&regs::sregs(kernel.mode, sregs))
            .map_err(host("KVM_SET_SREGS"))?;
        vcpu.set_regs(&regs::regs(kernel.mode, kernel.entry))
            .map_err(host("KVM_SET_REGS"))?;
        let fpu = kvm_bindings::kvm_fpu {
            fcw: 0x37F,
            mxcsr: 0x1F80,
            ..Default::default()
        };
        vcpu.set_fpu(&fpu).map_err(host("KVM_SET_FPU"))?;
    }
    // Application processors stay in wait-for-SIPI, as on hardware: the guest starts them.
    Ok(vcpu)
}

fn open_serial(target: &SerialTarget) -> Result<Box<dyn std::io::Write + Send>, VmmError> {
    Ok(match target {
        SerialTarget::Stdout => Box::new(std::io::stdout()),
        SerialTarget::File(p) => Box::new(std::fs::File::create(p).map_err(|e| {
            VmmError::Config(crate::config::ConfigError(format!(
                "--serial {}: cannot create: {e}",
                p.display()
            )))
        })?),
    })
}
