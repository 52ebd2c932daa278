//! One thread per vCPU: KVM_RUN, exits dispatched to the device bus, fatal exits reported with
//! the vCPU's registers. Threads are stopped by a flag plus a signal that kicks KVM_RUN out.

use crate::devices::{pv::PvHost, Bus, EventSink, VmEvent};
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;
const KVM_EXIT_INTERNAL_ERROR: u32 = 17;

/// The signal that interrupts KVM_RUN when the VM stops.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler once, so the kick interrupts KVM_RUN instead of killing us.
pub fn install_kick_handler() -> std::io::Result<()> {
    static DONE: OnceLock<std::io::Result<()>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    });
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
    }
}

pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks against its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as above.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &set))
            .collect()
    }
}

pub fn format_registers(regs: &kvm_regs, sregs: &kvm_sregs) -> String {
    format!(
        "rip={:#018x} rsp={:#018x} rflags={:#x}\n  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} rbp={:#018x} r8={:#018x}\n  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}(l={} db={}) ss={:#x}",
        regs.rip, regs.rsp, regs.rflags, regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi,
        regs.rdi, regs.rbp, regs.r8, sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer,
        sregs.cs.selector, sregs.cs.l, sregs.cs.db, sregs.ss.selector
    )
}

fn registers_of(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => format_registers(&r, &s),
        _ => "registers unavailable".into(),
    }
}

/// The instruction KVM could not emulate, when an emulation failure carries its bytes:
/// data[0] = flags (bit 0: bytes present), then one byte of length and up to 15 bytes.
pub fn insn_bytes(suberror: u32, data: &[u64]) -> Option<Vec<u8>> {
    const EMULATION: u32 = 1;
    const FLAG_INSTRUCTION_BYTES: u64 = 1;
    if suberror != EMULATION || data.len() < 3 || data[0] & FLAG_INSTRUCTION_BYTES == 0 {
        return None;
    }
    let mut raw = data[1].to_le_bytes().to_vec();
    raw.extend_from_slice(&data[2].to_le_bytes());
    let len = (raw[0] as usize).min(15);
    Some(raw[1..1 + len].to_vec())
}

/// Shared between the VM and its vCPU threads.
pub struct VcpuShared<S: EventSink, H: PvHost> {
    pub bus: Arc<Bus<S, H>>,
    pub stop: Arc<AtomicBool>,
    /// When the BSP first entered the guest.
    pub first_entry: Arc<OnceLock<Instant>>,
}

impl<S: EventSink, H: PvHost> Clone for VcpuShared<S, H> {
    fn clone(&self) -> Self {
        VcpuShared {
            bus: self.bus.clone(),
            stop: self.stop.clone(),
            first_entry: self.first_entry.clone(),
        }
    }
}

/// Runs one vCPU until the VM stops or this vCPU cannot go on.
/// Runs a vCPU thread's body; a panic in it becomes a VMM failure event, so the main thread
/// tears the VM down and exits 70 instead of waiting forever for an event that never comes.
pub fn guarded(index: u32, sink: &dyn EventSink, body: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        sink.event(VmEvent::VmmFailure(format!(
            "vCPU {index} thread panicked: {what}"
        )));
    }
}

pub fn run_loop<S: EventSink, H: PvHost>(index: u32, mut vcpu: VcpuFd, sh: VcpuShared<S, H>) {
    let bus = &sh.bus;
    while !sh.stop.load(Ordering::Acquire) {
        if index == 0 && sh.first_entry.get().is_none() {
            let _ = sh.first_entry.set(Instant::now());
        }
        let fatal = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                bus.pio_write(port, data);
                None
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                bus.pio_read(port, data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                bus.mmio_read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                bus.mmio_write(addr, data);
                None
            }
            // Only without an in-kernel LAPIC; with one, HLT waits in KVM.
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::IrqWindowOpen) | Ok(VcpuExit::Intr) => None,
            Ok(VcpuExit::Shutdown) => {
                let regs = registers_of(&vcpu);
                // AMD SVM leaves the VMCB undefined on shutdown and KVM re-INITs the vCPU.
                let note = if regs.starts_with("rip=0x000000000000fff0") {
                    " (post-INIT registers: on AMD SVM, KVM resets a vCPU that shut down, so the faulting state is lost)"
                } else {
                    ""
                };
                Some(VmEvent::TripleFault(format!(
                    "vCPU {index}: triple fault (KVM_EXIT_SHUTDOWN){note}\n  {regs}"
                )))
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => {
                    VmEvent::GuestShutdown(format!("vCPU {index}: KVM system event {kind}"))
                }
                KVM_SYSTEM_EVENT_CRASH => VmEvent::GuestPanic(format!("vCPU {index}: guest crash event")),
                k => VmEvent::InternalError(format!("vCPU {index}: unknown system event {k}")),
            }),
            Ok(VcpuExit::InternalError) => {
                let run = vcpu.get_kvm_run();
                let detail = if run.exit_reason == KVM_EXIT_INTERNAL_ERROR {
                    // SAFETY: the exit reason says the union holds `internal`.
                    let internal = unsafe { run.__bindgen_anon_1.internal };
                    let n = (internal.ndata as usize).min(internal.data.len());
                    let kind = match internal.suberror {
                        1 => "emulation failure",
                        2 => "simultaneous exceptions",
                        3 => "delivery event",
                        4 => "unexpected exit reason",
                        _ => "other",
                    };
                    let insn = insn_bytes(internal.suberror, &internal.data[..n])
                        .map(|b| {
                            let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
                            format!(", instruction bytes {}", hex.join(" "))
                        })
                        .unwrap_or_default();
                    format!(
                        "suberror {} ({kind}), data {:x?}{insn}",
                        internal.suberror,
                        &internal.data[..n]
                    )
                } else {
                    "no detail".into()
                };
                Some(VmEvent::InternalError(format!(
                    "vCPU {index}: KVM_EXIT_INTERNAL_ERROR: {detail}\n  {}",
                    registers_of(&vcpu)
                )))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VmEvent::InternalError(format!(
                "vCPU {index}: KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x} on host CPU {cpu})\n  {}",
                registers_of(&vcpu)
            ))),
            Ok(other) => {
                let what = format!("{other:?}");
                Some(VmEvent::InternalError(format!(
                    "vCPU {index}: unexpected exit {what}\n  {}",
                    registers_of(&vcpu)
                )))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(VmEvent::VmmFailure(format!("vCPU {index}: KVM_RUN failed: {e}"))),
        };
        if let Some(ev) = fatal {
            bus.sink.event(ev);
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panicking_vcpu_thread_becomes_a_vmm_failure() {
        struct Sink(std::sync::Mutex<Vec<VmEvent>>);
        impl EventSink for Sink {
            fn event(&self, e: VmEvent) {
                self.0.lock().unwrap().push(e);
            }
        }
        let sink = Sink(std::sync::Mutex::new(vec![]));
        let t = std::thread::scope(|s| {
            s.spawn(|| guarded(3, &sink, || panic!("bad exit {}", 7)))
                .join()
        });
        assert!(t.is_ok(), "the panic stays inside the guard");
        guarded(0, &sink, || {});
        let ev = sink.0.lock().unwrap();
        assert_eq!(
            *ev,
            vec![VmEvent::VmmFailure(
                "vCPU 3 thread panicked: bad exit 7".into()
            )]
        );
    }

    use super::*;

    #[test]
    fn decodes_the_instruction_of_an_emulation_failure() {
        // Recorded from Debian 6.1 on kvm_pvm: lock cmpxchg16b [rbp+0x20].
        let data = [1, 0x7420_4dc7_0f48_f00f, 0x894d_0824_448b_4c66, 0x1000];
        let b = insn_bytes(1, &data).unwrap();
        assert_eq!(b.len(), 15);
        assert_eq!(&b[..5], &[0xf0, 0x48, 0x0f, 0xc7, 0x4d]);
        assert_eq!(insn_bytes(1, &[0, 0, 0]), None);
        assert_eq!(insn_bytes(2, &data), None);
        assert_eq!(insn_bytes(1, &data[..2]), None);
    }
}
