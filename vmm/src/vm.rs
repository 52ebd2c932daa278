//! Building and running one VM: checks, guest RAM, KVM objects, boot structures, vCPU threads,
//! waiting for the outcome, tearing down, reporting.

use crate::arch::x86_64::acpi::{self, AcpiTables};
use crate::arch::x86_64::{boot, cpuid, layout as bl, mptable, paging, regs};
use crate::config::{SerialTarget, VmConfig};
use crate::devices::{self, pv, Bus, EventSink, VmEvent};
use crate::exit;
use crate::jail::seccomp::{self, SeccompLevel, ThreadKind};
use crate::kvm_stats::{self, KvmPages};
use crate::loader;
use crate::memory::layout::GuestLayout;
use crate::memory::numa::GuestNuma;
use crate::memory::{GuestRam, RamOptions, RamPart};
use crate::platform::Platform;
use crate::report::Report;
use crate::vcpu::{self, VcpuShared};
use kvm_bindings::{kvm_pit_config, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// How long the console may keep printing after a panic banner before the VM is stopped.
const PANIC_GRACE: Duration = Duration::from_millis(1000);
/// After the exit status: stop once the console has been quiet this long...
const EXIT_DRAIN_IDLE: Duration = Duration::from_millis(100);
/// ...or after this long at most.
const EXIT_DRAIN_MAX: Duration = Duration::from_millis(2000);
const TSS_ADDRESS: usize = 0xFFFB_D000;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

#[derive(Debug, Error)]
pub enum VmmError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Layout(#[from] crate::memory::layout::LayoutError),
    #[error("{0}")]
    Memory(#[from] crate::memory::MemoryError),
    #[error("{0}")]
    Load(#[from] loader::LoadError),
    /// /dev/kvm missing, unusable, or a request beyond what KVM allows.
    #[error("{0}")]
    Kvm(String),
    /// `--numa` that this host cannot give (host node, free pages, auto).
    #[error("{0}")]
    Numa(#[from] crate::memory::numa::NumaError),
    /// The ACPI tables do not fit their reserved area.
    #[error("--vcpus: {0}")]
    Acpi(#[from] acpi::AcpiError),
    /// A KVM or host call that should not fail did.
    #[error("{0}: {1}")]
    Host(&'static str, String),
    /// `--vf`: the VF could not be found, claimed or bound (names the sysfs path).
    #[error("{}", vf_message(.spec, .source))]
    Vf {
        spec: String,
        #[source]
        source: hpmmap_vf::VfError,
    },
    /// `--jail`: the VMM could not be confined.
    #[error("{0}")]
    Jail(#[from] crate::jail::JailError),
    /// `--vf`: VFIO or the guest PCI bus failed after the VF was claimed.
    /// `--disk`, `--output` or the image's rootfs: a disk that cannot be opened or attached.
    #[error("{0}")]
    Storage(crate::devices::virtio::attach::AttachError),
    #[error("--vf {spec}: {source}")]
    Pci {
        spec: String,
        #[source]
        source: hpmmap_pci::PciError,
    },
}

/// One line naming the flag: hpmmap-vf's messages name it already when the cause lies in
/// the flag's value (`--vf 'x': ...`, `--vf-create N: ...`), not when it lies in the host.
fn vf_message(spec: &str, e: &hpmmap_vf::VfError) -> String {
    let m = e.to_string();
    if m.starts_with("--vf") {
        m
    } else {
        format!("--vf {spec}: {m}")
    }
}

impl VmmError {
    pub fn exit_code(&self) -> i32 {
        match self {
            VmmError::Memory(m) if !m.is_input() => exit::VMM_FAILURE,
            VmmError::Host(..) => exit::VMM_FAILURE,
            VmmError::Vf { source, .. } if !source.is_input_error() => exit::VMM_FAILURE,
            VmmError::Pci { .. } => exit::VMM_FAILURE,
            VmmError::Storage(e) if !e.is_input() => exit::VMM_FAILURE,
            VmmError::Jail(j) if !j.is_input() => exit::VMM_FAILURE,
            _ => exit::USAGE,
        }
    }
}

fn host<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> VmmError {
    move |e| VmmError::Host(what, e.to_string())
}

/// Collects the first decisive event for the main thread.
pub struct Controller {
    tx: Mutex<Sender<VmEvent>>,
}

impl EventSink for Controller {
    fn event(&self, e: VmEvent) {
        let _ = self.tx.lock().unwrap().send(e);
    }
}

/// The PV device's access to guest RAM.
pub struct RamHost {
    ram: Arc<GuestRam>,
    layout: GuestLayout,
    mem: GuestMemoryMmap,
}

impl pv::PvHost for RamHost {
    fn zero(&self, gpa: u64, len: u64) -> std::io::Result<()> {
        let off = self
            .layout
            .gpa_to_offset(gpa, len)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        self.ram.zero(off, len)
    }

    fn read_guest(&self, gpa: u64, len: u64) -> Option<Vec<u8>> {
        self.layout.gpa_to_offset(gpa, len)?;
        let mut v = vec![0u8; len as usize];
        self.mem.read_slice(&mut v, GuestAddress(gpa)).ok()?;
        Some(v)
    }
}

pub type VmBus = Bus<Controller, RamHost>;

/// Tears the guest PCI bus down (irqfds, routes, BAR slots, VFIO, then the VF's original
/// driver) when it goes out of scope, so that an error return after the VF is on the bus
/// still gives it back. The signal thread holds the bus forever, so dropping the bus is
/// not enough.
struct PciTeardown(Option<Arc<hpmmap_pci::PciRoot>>);

impl Drop for PciTeardown {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            p.shutdown();
        }
    }
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
        .map(|r| hpmmap_vf::vfio::GuestRamRegion {
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
        Arc::new(hpmmap_vf::vfio::KernelVfio::new("/dev")),
        &ram_map,
        hooks,
    )
    .map_err(err)?;
    let slot = root.add_device(Box::new(dev)).map_err(err)?;
    eprintln!("hpmmap-vmm: --vf {spec}: VF {vf} on the guest's PCI bus at 00:{slot:02x}.0");
    Ok(())
}

/// The end of a run.
pub struct Outcome {
    pub exit_code: i32,
    pub report: Report,
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

/// Maps the first decisive event to (reason, detail, job status, process exit status).
fn classify(ev: &VmEvent) -> (&'static str, String, Option<u8>, i32) {
    match ev {
        VmEvent::JobExit(s) => (
            "job-exit",
            format!("the job exited with {s}"),
            Some(*s),
            *s as i32,
        ),
        VmEvent::GuestShutdown(d) => (
            "guest-shutdown",
            format!("{d}, no exit status reported"),
            None,
            exit::NO_STATUS,
        ),
        VmEvent::GuestPanic(d) => ("guest-panic", d.clone(), None, exit::GUEST_PANIC),
        VmEvent::TripleFault(d) => ("triple-fault", d.clone(), None, exit::TRIPLE_FAULT),
        VmEvent::InternalError(d) => (
            "kvm-internal-error",
            d.clone(),
            None,
            exit::KVM_INTERNAL_ERROR,
        ),
        VmEvent::VmmFailure(d) => ("vmm-failure", d.clone(), None, exit::VMM_FAILURE),
        VmEvent::Signal(n) => ("signal", format!("stopped by signal {n}"), None, 128 + n),
    }
}

/// Waits for the first decisive event. After a job's exit status or a panic banner the guest
/// keeps running a little: its kernel still has console output queued (the job's last lines,
/// the panic trace), which would otherwise be lost.
fn wait_for_outcome(
    rx: &Receiver<VmEvent>,
    console_idle: impl Fn() -> Option<Duration>,
) -> VmEvent {
    let first = rx
        .recv()
        .unwrap_or(VmEvent::VmmFailure("all event senders gone".into()));
    if let VmEvent::JobExit(_) = first {
        let deadline = Instant::now() + EXIT_DRAIN_MAX;
        while Instant::now() < deadline {
            if console_idle().is_none_or(|d| d >= EXIT_DRAIN_IDLE) {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(10)) {
                // Anything after the exit status (a reset, a fault) does not change the outcome.
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        return first;
    }
    if let VmEvent::GuestPanic(_) = first {
        let deadline = Instant::now() + PANIC_GRACE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(VmEvent::JobExit(s)) => return VmEvent::JobExit(s),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }
    first
}

/// Turns SIGINT/SIGTERM/SIGHUP into an orderly stop (vCPUs joined, report written): they are
/// blocked in every thread and taken by one thread with sigwait.
fn watch_stop_signals(bus: Arc<VmBus>, seccomp: SeccompLevel) {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask affects this thread and the
    // threads it creates afterwards.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Err(e) = seccomp::install(ThreadKind::Signals, seccomp) {
                bus.sink.event(VmEvent::VmmFailure(e.to_string()));
            }
            loop {
                let mut sig = 0;
                // SAFETY: waits on the set built above.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                    bus.sink.event(VmEvent::Signal(sig));
                }
            }
        });
}

pub fn run(cfg: &VmConfig, started: Instant) -> Result<Outcome, VmmError> {
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
    let (block_devs, mut output_disk) =
        crate::devices::virtio::attach::open(cfg).map_err(VmmError::Storage)?;
    let disks_report = crate::devices::virtio::attach::report(cfg);
    let mut phases: Vec<(&'static str, f64)> = Vec::new();
    let mut mark = {
        let mut last = started;
        move |phases: &mut Vec<(&'static str, f64)>, name: &'static str| {
            let now = Instant::now();
            phases.push((name, now.duration_since(last).as_secs_f64() * 1e3));
            last = now;
        }
    };
    mark(&mut phases, "start_and_checks");
    // After the checks, so that refused input stays a one-line error.
    if let Some(w) = platform.boot_warning() {
        eprintln!("hpmmap-vmm: note: {w}");
    }

    let (ram, prefault) = GuestRam::create(&ram_options(cfg, numa.as_ref()))?;
    mark(&mut phases, "guest_ram");
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
    mark(&mut phases, "kvm_vm");
    let vf_report = vf_claim.as_ref().map(crate::report::VfReport::of);
    let root = Arc::new(hpmmap_pci::PciRoot::new(pci_windows(&layout)));
    let pci_teardown = PciTeardown(Some(root.clone()));
    if let (Some(claim), Some(spec)) = (vf_claim, &cfg.vf) {
        pci_bus(spec, claim, &vm, &ram, &layout, &root)?;
        mark(&mut phases, "vfio_and_pci");
    }
    crate::devices::virtio::attach::add_to_bus(block_devs, &mem, &vm, &root)
        .map_err(VmmError::Storage)?;
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
    mark(&mut phases, "load_and_boot_structures");

    let serial_irq =
        vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(host("eventfd"))?;
    vm.register_irqfd(&serial_irq, devices::COM1_IRQ)
        .map_err(host("KVM_IRQFD"))?;
    let out = open_serial(&cfg.serial)?;
    let (tx, rx) = mpsc::channel();
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
    mark(&mut phases, "vcpus");
    let stop = Arc::new(AtomicBool::new(false));
    let shared = VcpuShared {
        bus: bus.clone(),
        stop: stop.clone(),
        first_entry: Arc::new(OnceLock::new()),
    };
    // Read while /proc is in view: the jail has none.
    let host_page = ram.kernel_page_size().ok().flatten();
    // Everything privileged is open and no other thread runs yet: confine the VMM.
    if let Some(j) = &cfg.jail {
        crate::jail::confine::enter(j, cfg.mem, cfg.cpu_affinity.as_deref(), cfg.numa_node)?;
    }
    // Before any thread that could otherwise take the signal is created.
    watch_stop_signals(bus.clone(), cfg.seccomp);
    let run_start = Instant::now();
    // --cpu-affinity wins; else a --numa node's vCPUs go on its host node's CPUs.
    let pins: Vec<Option<usize>> = match (&cfg.cpu_affinity, &numa) {
        (Some(l), _) => l.iter().map(|c| Some(*c)).collect(),
        (None, Some(g)) => crate::memory::numa::vcpu_pins(
            std::path::Path::new("/sys"),
            &g.nodes,
            cfg.vcpus,
            &vcpu::allowed_cpus(),
        ),
        (None, None) => vec![None; cfg.vcpus as usize],
    };
    let mut threads = Vec::new();
    let seccomp_level = cfg.seccomp;
    for (i, fd) in vcpus.into_iter().enumerate() {
        let sh = shared.clone();
        let pin = pins.get(i).copied().flatten();
        let t = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || {
                if let Some(cpu) = pin {
                    if let Err(e) = vcpu::pin_current_thread(cpu) {
                        sh.bus.sink.event(VmEvent::VmmFailure(format!(
                            "vCPU {i}: pinning to CPU {cpu} failed: {e}"
                        )));
                        return;
                    }
                }
                // The guest reaches the VMM through this thread's exits: the narrowest filter.
                if let Err(e) = seccomp::install(ThreadKind::Vcpu, seccomp_level) {
                    sh.bus.sink.event(VmEvent::VmmFailure(e.to_string()));
                    return;
                }
                let sink = sh.bus.clone();
                vcpu::guarded(i as u32, &sink.sink, move || {
                    vcpu::run_loop(i as u32, fd, sh)
                })
            })
            .map_err(host("spawning a vCPU thread"))?;
        threads.push(t);
    }
    let input = crate::console::spawn_input(bus.serial.clone(), stop.clone(), cfg.seccomp);
    // Every thread exists now; the main thread's own filter last, since threads inherit it.
    if let Err(e) = seccomp::install(ThreadKind::Main, cfg.seccomp) {
        bus.sink.event(VmEvent::VmmFailure(e.to_string()));
    }
    #[cfg(debug_assertions)]
    if std::env::var_os("HPMMAP_VMM_SECCOMP_TEST").is_some() {
        // Test-only (debug builds): a call no filter allows, to prove the filter acts.
        // SAFETY: getppid has no preconditions.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }

    let console = bus.serial.clone();
    let event = wait_for_outcome(&rx, || console.lock().unwrap().idle_for());
    stop.store(true, Ordering::Release);
    // Kick until every vCPU has left KVM_RUN: a kick that lands just before a thread enters
    // KVM_RUN is lost, the next one is not.
    while threads.iter().any(|t| !t.is_finished()) {
        for t in threads.iter().filter(|t| !t.is_finished()) {
            // SAFETY: the thread is alive (not finished) and its handle is valid.
            unsafe { libc::pthread_kill(t.as_pthread_t(), vcpu::kick_signal()) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for t in threads {
        let _ = t.join();
    }
    if let Some(t) = input {
        let _ = t.join();
    }
    bus.serial.lock().unwrap().flush();
    let run_seconds = run_start.elapsed().as_secs_f64();

    let kvm_pages = kvm_stats::read_stats(&vm)
        .ok()
        .and_then(|s| KvmPages::from_stats(&s));
    let (reason, detail, job_status, exit_code) = classify(&event);
    if !matches!(event, VmEvent::JobExit(_) | VmEvent::GuestShutdown(_)) {
        eprintln!("hpmmap-vmm: {reason}: {detail}");
    }
    // The guest is stopped: its output disk is complete.
    let output = output_disk.as_mut().map(|o| o.unpack());
    let report = Report {
        platform: platform.describe().to_string(),
        kernel: cfg.kernel.display().to_string(),
        kernel_format: kernel.format,
        entry: kernel.mode,
        job: cfg.job.clone(),
        vcpus: cfg.vcpus,
        guest_ram_bytes: cfg.mem,
        pool_bytes: layout.pool_bytes(),
        pool_ranges: layout.pool_ranges().to_vec(),
        hugepages_requested: cfg.hugepages,
        memory_backend: ram.backend().to_string(),
        host_page_size_bytes: host_page,
        kvm_pages,
        prefault,
        start_to_first_instruction_ms: shared
            .first_entry
            .get()
            .map(|t| t.duration_since(started).as_secs_f64() * 1e3),
        startup_phases_ms: phases.into_iter().collect(),
        run_seconds,
        exit_reason: reason.to_string(),
        exit_detail: detail,
        job_exit_status: job_status,
        exit_code,
        result: bus.result.lock().unwrap().clone(),
        unhandled_pio: bus.unhandled.pio.load(Ordering::Relaxed),
        unhandled_mmio: bus.unhandled.mmio.load(Ordering::Relaxed),
        seccomp: cfg.seccomp,
        jail: cfg.jail.as_ref().map(crate::report::JailReport::of),
        vf: vf_report,
        guest_ib: bus.serial.lock().unwrap().ib_lines(),
        numa_nodes: numa
            .as_ref()
            .map(|g| crate::report::numa_nodes(g, &layout, &ram, &pins))
            .unwrap_or_default(),
        disks: disks_report,
        output,
        image: cfg.image_bytes.map(
            |(initramfs_bytes, rootfs_bytes)| crate::report::ImageReport {
                initramfs_bytes,
                rootfs_bytes,
            },
        ),
    };
    drop(shared);
    drop(bus);
    // The vCPUs are gone; the VF's slots, routes and VFIO go before the VM.
    drop(pci_teardown);
    drop(vm);
    Ok(Outcome { exit_code, report })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn exit_status_waits_for_the_console_to_go_quiet() {
        let (tx, rx) = mpsc::channel();
        tx.send(VmEvent::JobExit(3)).unwrap();
        tx.send(VmEvent::GuestShutdown("late reset".into()))
            .unwrap();
        let calls = Cell::new(0);
        let started = Instant::now();
        let ev = wait_for_outcome(&rx, || {
            calls.set(calls.get() + 1);
            // Busy for the first few polls, then quiet.
            Some(if calls.get() < 4 {
                Duration::ZERO
            } else {
                EXIT_DRAIN_IDLE
            })
        });
        assert_eq!(ev, VmEvent::JobExit(3));
        assert_eq!(calls.get(), 4);
        assert!(started.elapsed() < EXIT_DRAIN_MAX);
        // A guest that never printed does not wait at all.
        tx.send(VmEvent::JobExit(0)).unwrap();
        assert_eq!(wait_for_outcome(&rx, || None), VmEvent::JobExit(0));
    }

    #[test]
    fn a_panic_waits_out_its_grace_period() {
        let (tx, rx) = mpsc::channel();
        tx.send(VmEvent::GuestPanic("banner".into())).unwrap();
        tx.send(VmEvent::TripleFault("reboot after panic".into()))
            .unwrap();
        let started = Instant::now();
        let ev = wait_for_outcome(&rx, || None);
        assert!(matches!(ev, VmEvent::GuestPanic(_)));
        assert!(started.elapsed() >= PANIC_GRACE);
    }

    #[test]
    fn vf_errors_name_the_flag_and_pick_the_status() {
        let input = VmmError::Vf {
            spec: "0000:00:02.0".into(),
            source: hpmmap_vf::VfError::NoSriov {
                pf: "0000:00:02.0".parse().unwrap(),
                path: "/sys/bus/pci/devices/0000:00:02.0/sriov_totalvfs".into(),
            },
        };
        assert_eq!(input.exit_code(), exit::USAGE);
        let m = input.to_string();
        assert!(m.starts_with("--vf 0000:00:02.0: PF"), "{m}");
        assert!(m.contains("/sys/bus/pci/devices/0000:00:02.0/sriov_totalvfs"));
        // Already names the flag: not named twice.
        let named = VmmError::Vf {
            spec: "x".into(),
            source: hpmmap_vf::VfError::BadSpec {
                name: "x".into(),
                reason: "r".into(),
            },
        };
        assert!(named.to_string().starts_with("--vf 'x'"));
        assert_eq!(named.exit_code(), exit::USAGE);
        let host_state = VmmError::Vf {
            spec: "ib0".into(),
            source: hpmmap_vf::VfError::NoIommuGroup {
                device: "0000:3b:00.2".parse().unwrap(),
                path: "/sys/bus/pci/devices/0000:3b:00.2/iommu_group".into(),
            },
        };
        assert_eq!(host_state.exit_code(), exit::VMM_FAILURE);
        assert!(host_state.to_string().starts_with("--vf ib0: "));
    }

    #[test]
    fn outcomes_map_to_documented_statuses() {
        assert_eq!(classify(&VmEvent::JobExit(9)).3, 9);
        assert_eq!(
            classify(&VmEvent::GuestPanic(String::new())).3,
            exit::GUEST_PANIC
        );
        assert_eq!(
            classify(&VmEvent::TripleFault(String::new())).3,
            exit::TRIPLE_FAULT
        );
        assert_eq!(
            classify(&VmEvent::InternalError(String::new())).3,
            exit::KVM_INTERNAL_ERROR
        );
        assert_eq!(
            classify(&VmEvent::GuestShutdown(String::new())).3,
            exit::NO_STATUS
        );
        assert_eq!(
            classify(&VmEvent::VmmFailure(String::new())).3,
            exit::VMM_FAILURE
        );
        assert_eq!(classify(&VmEvent::Signal(15)).3, 143);
    }
}
