//! Running the built VM: confinement once everything privileged is open, the signal thread,
//! the vCPU threads under their seccomp filters, waiting for the first decisive event, and
//! stopping every vCPU.

use super::build::{Built, PciTeardown, Phases};
use super::{host, Controller, RamHost, VmBus, VmmError};
use crate::config::VmConfig;
use crate::devices::{EventSink, VmEvent};
use crate::jail::seccomp::{self, SeccompLevel, ThreadKind};
use crate::loader;
use crate::memory::layout::GuestLayout;
use crate::memory::numa::GuestNuma;
use crate::memory::GuestRam;
use crate::platform::Platform;
use crate::vcpu::{self, VcpuShared};
use kvm_ioctls::VmFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the console may keep printing after a panic banner before the VM is stopped.
const PANIC_GRACE: Duration = Duration::from_millis(1000);
/// After the exit status: stop once the console has been quiet this long...
const EXIT_DRAIN_IDLE: Duration = Duration::from_millis(100);
/// ...or after this long at most.
const EXIT_DRAIN_MAX: Duration = Duration::from_millis(2000);

/// The VM with its vCPU threads running.
pub(super) struct Running {
    built: Built,
    shared: VcpuShared<Controller, RamHost>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    input: Option<JoinHandle<()>>,
    pins: Vec<Option<usize>>,
    host_page: Option<u64>,
    run_start: Instant,
}

/// The VM after its outcome: every vCPU joined, the guest stopped. Fields drop in the order
/// teardown needs: the vCPUs' shared state and the device bus, then the PCI bus (the VF's
/// slots, routes and VFIO), then the VM, then guest RAM.
pub(super) struct Stopped {
    pub shared: VcpuShared<Controller, RamHost>,
    pub bus: Arc<VmBus>,
    pub pci_teardown: PciTeardown,
    pub vm: Arc<VmFd>,
    pub ram: Arc<GuestRam>,
    pub event: VmEvent,
    pub run_seconds: f64,
    pub platform: Platform,
    pub layout: GuestLayout,
    pub numa: Option<GuestNuma>,
    pub prefault: crate::memory::PrefaultStats,
    pub kernel: loader::LoadedKernel,
    pub output_disk: Option<crate::devices::virtio::output::OutputDisk>,
    pub vf_report: Option<crate::report::VfReport>,
    pub disks_report: Vec<crate::devices::virtio::attach::DiskReport>,
    pub phases: Phases,
    pub started: Instant,
    pub pins: Vec<Option<usize>>,
    pub host_page: Option<u64>,
    /// `--vsock`'s event thread stop and socket file, both before guest RAM goes.
    pub vsock_stop: Option<crate::devices::virtio::vsock::worker::Stop>,
    pub vsock_file: Option<crate::devices::virtio::vsock::unix::SocketFile>,
}

/// Confines the VMM (`--jail`) and starts the signal thread and the vCPU threads.
pub(super) fn start(cfg: &VmConfig, built: Built) -> Result<Running, VmmError> {
    let stop = Arc::new(AtomicBool::new(false));
    let shared = VcpuShared {
        bus: built.bus.clone(),
        stop: stop.clone(),
        first_entry: Arc::new(OnceLock::new()),
    };
    // Read while /proc is in view: the jail has none.
    let host_page = built.ram.kernel_page_size().ok().flatten();
    // Everything privileged is open and no other thread runs yet: confine the VMM.
    if let Some(j) = &cfg.jail {
        crate::jail::confine::enter(j, cfg.mem, cfg.cpu_affinity.as_deref(), cfg.numa_node)?;
    }
    // Before any thread that could otherwise take the signal is created.
    watch_stop_signals(built.bus.clone(), cfg.seccomp);
    let run_start = Instant::now();
    // --cpu-affinity wins; else a --numa node's vCPUs go on its host node's CPUs.
    let pins: Vec<Option<usize>> = match (&cfg.cpu_affinity, &built.numa) {
        (Some(l), _) => l.iter().map(|c| Some(*c)).collect(),
        (None, Some(g)) => crate::memory::numa::vcpu_pins(
            std::path::Path::new("/sys"),
            &g.nodes,
            cfg.vcpus,
            &vcpu::allowed_cpus(),
        ),
        (None, None) => vec![None; cfg.vcpus as usize],
    };
    let mut built = built;
    let mut threads = Vec::new();
    let seccomp_level = cfg.seccomp;
    for (i, fd) in std::mem::take(&mut built.vcpus).into_iter().enumerate() {
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
    let input = crate::console::spawn_input(built.bus.serial.clone(), stop.clone(), cfg.seccomp);
    if let Some(v) = built.vsock.take() {
        let sink = built.bus.clone();
        let vsock_stop = crate::devices::virtio::vsock::worker::spawn(
            v.transport,
            v.muxer,
            cfg.seccomp,
            move |e| sink.sink.event(VmEvent::VmmFailure(e)),
        )
        .map_err(host("spawning the virtio-vsock thread"))?;
        built.vsock_stop = Some(vsock_stop);
    }
    // Every thread exists now; the main thread's own filter last, since threads inherit it.
    if let Err(e) = seccomp::install(ThreadKind::Main, cfg.seccomp) {
        built.bus.sink.event(VmEvent::VmmFailure(e.to_string()));
    }
    #[cfg(debug_assertions)]
    if std::env::var_os("HPMMAP_VMM_SECCOMP_TEST").is_some() {
        // Test-only (debug builds): a call no filter allows, to prove the filter acts.
        // SAFETY: getppid has no preconditions.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    Ok(Running {
        built,
        shared,
        stop,
        threads,
        input,
        pins,
        host_page,
        run_start,
    })
}

impl Running {
    /// Waits for the outcome, then stops and joins every vCPU and the console input thread.
    pub(super) fn wait(self) -> Stopped {
        let Running {
            built,
            shared,
            stop,
            threads,
            input,
            pins,
            host_page,
            run_start,
        } = self;
        let console = built.bus.serial.clone();
        let event = wait_for_outcome(&built.events, || console.lock().unwrap().idle_for());
        stop.store(true, Ordering::Release);
        // Kick until every vCPU has left KVM_RUN: a kick that lands just before a thread
        // enters KVM_RUN is lost, the next one is not.
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
        built.bus.serial.lock().unwrap().flush();
        let run_seconds = run_start.elapsed().as_secs_f64();
        Stopped {
            shared,
            bus: built.bus,
            pci_teardown: built.pci_teardown,
            vm: built.vm,
            ram: built.ram,
            event,
            run_seconds,
            platform: built.platform,
            layout: built.layout,
            numa: built.numa,
            prefault: built.prefault,
            kernel: built.kernel,
            output_disk: built.output_disk,
            vf_report: built.vf_report,
            disks_report: built.disks_report,
            phases: built.phases,
            started: built.started,
            pins,
            host_page,
            vsock_stop: built.vsock_stop,
            vsock_file: built.vsock_file,
        }
    }
}

/// Waits for the first decisive event. After a job's exit status or a panic banner the guest
/// keeps running a little: its kernel still has console output queued (the job's last lines,
/// the panic trace), which would otherwise be lost.
pub(super) fn wait_for_outcome(
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::mpsc;

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
}
