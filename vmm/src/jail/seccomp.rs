//! Seccomp filters, one per kind of thread, built with rust-vmm's `seccompiler`. The guest
//! is untrusted and reaches the VMM through the vCPU threads' exits, so a vCPU thread gets
//! the narrowest filter: KVM and VFIO ioctls by request number, memory management for the
//! allocator, writes to the console and eventfds. The main thread, which tears the VM down
//! (VFIO, KVM slots, the VF's driver back through sysfs, the report), gets what that needs
//! and nothing that starts a program, opens a socket or changes the system. Every filter
//! forbids new processes: `clone` only with CLONE_THREAD, `clone3` answers ENOSYS so that
//! glibc falls back to `clone`, whose flags a filter can see.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("seccomp filter for the {0} thread: {1}")]
    Build(&'static str, String),
    #[error("installing the seccomp filter for the {0} thread: {1}")]
    Install(&'static str, String),
}

/// `--seccomp`: what a forbidden system call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompLevel {
    /// The process dies with SIGSYS (Firecracker's default).
    #[default]
    Kill,
    /// The call goes through and the kernel logs it (audit type 1326): for finding what a
    /// filter misses.
    Log,
    /// No filters.
    Off,
}

impl std::str::FromStr for SeccompLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill" => Ok(SeccompLevel::Kill),
            "log" => Ok(SeccompLevel::Log),
            "off" => Ok(SeccompLevel::Off),
            _ => Err(format!("'{s}' is not kill, log or off")),
        }
    }
}

/// The kinds of thread the VMM runs once the guest does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs KVM_RUN and the device emulation of the exits (PV, serial, PCI, VFIO).
    Vcpu,
    /// Waits for the outcome, kicks the vCPUs, tears down, writes the report.
    Main,
    /// Waits for SIGINT/SIGTERM/SIGHUP.
    Signals,
    /// Feeds stdin to the serial port.
    Console,
    /// virtio-vsock's event thread: the Unix sockets and the rx queue's MSI-X.
    Vsock,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Main => "main",
            ThreadKind::Signals => "signal",
            ThreadKind::Console => "console",
            ThreadKind::Vsock => "vsock",
        }
    }
}

const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const KVMIO: u64 = 0xAE;
const VFIO_TYPE: u64 = b';' as u64;
const VFIO_BASE: u64 = 100;

const fn kvm_io(nr: u64) -> u64 {
    ioc(IOC_NONE, KVMIO, nr, 0)
}
const fn kvm_iow<T>(nr: u64) -> u64 {
    ioc(IOC_WRITE, KVMIO, nr, std::mem::size_of::<T>() as u64)
}
const fn kvm_ior<T>(nr: u64) -> u64 {
    ioc(IOC_READ, KVMIO, nr, std::mem::size_of::<T>() as u64)
}
const fn vfio_io(n: u64) -> u64 {
    ioc(IOC_NONE, VFIO_TYPE, VFIO_BASE + n, 0)
}

pub const KVM_RUN: u64 = kvm_io(0x80);
pub const KVM_GET_REGS: u64 = kvm_ior::<kvm_bindings::kvm_regs>(0x81);
pub const KVM_GET_SREGS: u64 = kvm_ior::<kvm_bindings::kvm_sregs>(0x83);
pub const KVM_SET_USER_MEMORY_REGION: u64 =
    kvm_iow::<kvm_bindings::kvm_userspace_memory_region>(0x46);
pub const KVM_SET_GSI_ROUTING: u64 = kvm_iow::<kvm_bindings::kvm_irq_routing>(0x6a);
pub const KVM_IRQFD: u64 = kvm_iow::<kvm_bindings::kvm_irqfd>(0x76);
pub const KVM_SIGNAL_MSI: u64 = kvm_iow::<kvm_bindings::kvm_msi>(0xa5);
pub const KVM_GET_STATS_FD: u64 = kvm_io(0xce);
pub const VFIO_GROUP_UNSET_CONTAINER: u64 = vfio_io(5);
pub const VFIO_DEVICE_SET_IRQS: u64 = vfio_io(10);
pub const VFIO_DEVICE_RESET: u64 = vfio_io(11);
pub const VFIO_IOMMU_UNMAP_DMA: u64 = vfio_io(14);

/// What the guest's exits need from a vCPU thread: running, dumping registers on a fatal
/// exit, and the VF's BAR slots, MSI-X routes and irqfds as the guest programs them.
const VCPU_IOCTLS: &[u64] = &[
    KVM_RUN,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_SET_USER_MEMORY_REGION,
    KVM_SET_GSI_ROUTING,
    KVM_IRQFD,
    KVM_SIGNAL_MSI,
    VFIO_DEVICE_SET_IRQS,
    VFIO_DEVICE_RESET,
];
/// Teardown and the report: what VCPU_IOCTLS undo, VFIO's DMA unmap and container release,
/// KVM's statistics.
const MAIN_IOCTLS: &[u64] = &[
    KVM_SET_USER_MEMORY_REGION,
    KVM_SET_GSI_ROUTING,
    KVM_IRQFD,
    KVM_GET_STATS_FD,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    VFIO_DEVICE_SET_IRQS,
    VFIO_DEVICE_RESET,
    VFIO_GROUP_UNSET_CONTAINER,
    VFIO_IOMMU_UNMAP_DMA,
    libc::TCGETS,
];

/// Every thread: the allocator, futexes, signals the VMM itself uses, time, exiting.
const BASE: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_restart_syscall,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_tgkill,
    libc::SYS_prctl,
];

/// The main thread's files: the report (created, written, renamed into place), the VF's
/// driver given back through sysfs, /proc/self for the page size and NUMA placement.
const MAIN_FILES: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_getdents64,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_flock,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_getcwd,
    libc::SYS_eventfd2,
    libc::SYS_dup,
    libc::SYS_dup3,
];

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

fn ioctls(requests: &[u64]) -> Result<Vec<SeccompRule>, String> {
    requests
        .iter()
        .map(|&r| {
            // The request is an unsigned long but only its low 32 bits are meaningful.
            SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                r & 0xffff_ffff,
            )
            .map_err(|e| e.to_string())?])
            .map_err(|e| e.to_string())
        })
        .collect()
}

/// The rules of one kind of thread (syscall number -> conditions; empty: any arguments).
fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut r: BTreeMap<i64, Vec<SeccompRule>> = BASE.iter().map(|&s| (s, vec![])).collect();
    // Threads, never processes.
    let thread_only = SeccompRule::new(vec![cond(
        0,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        libc::CLONE_THREAD as u64,
    )?])
    .map_err(|e| e.to_string())?;
    r.insert(libc::SYS_clone, vec![thread_only]);
    // Rust's debug builds check that an fd is open before closing it (F_GETFD).
    r.insert(
        libc::SYS_fcntl,
        vec![
            SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, libc::F_GETFD as u64)?])
                .map_err(|e| e.to_string())?,
        ],
    );
    match kind {
        ThreadKind::Vcpu => {
            r.insert(libc::SYS_ioctl, ioctls(VCPU_IOCTLS)?);
            // virtio-blk runs on the vCPU that kicks it: pread64/pwrite64 (in BASE) on
            // descriptors opened before the run, and FLUSH.
            r.insert(libc::SYS_fdatasync, vec![]);
        }
        ThreadKind::Main => {
            r.insert(libc::SYS_ioctl, ioctls(MAIN_IOCTLS)?);
            r.extend(MAIN_FILES.iter().map(|&s| (s, vec![])));
            r.insert(libc::SYS_fcntl, vec![]);
        }
        ThreadKind::Signals => {
            r.insert(libc::SYS_rt_sigtimedwait, vec![]);
        }
        ThreadKind::Vsock => {
            // Accepting clients, connecting to PATH_<port> (socket + connect, non-blocking
            // from the start), peeking at a client's command, reading and writing streams,
            // half-closing them; MSI-X for the rx queue; FIONBIO for accepted sockets.
            for s in [
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_ctl,
                libc::SYS_accept4,
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_recvfrom,
                libc::SYS_sendto,
                libc::SYS_shutdown,
            ] {
                r.insert(s, vec![]);
            }
            r.insert(libc::SYS_ioctl, ioctls(&[KVM_SIGNAL_MSI, libc::FIONBIO])?);
        }
        ThreadKind::Console => {
            for s in [
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_ctl,
            ] {
                r.insert(s, vec![]);
            }
        }
    }
    Ok(r)
}

/// The BPF programs of one kind of thread at `level` (none for `off`): the allowlist, and a
/// second filter that answers `clone3` with ENOSYS (the kernel takes the most severe answer
/// of all installed filters, so `clone3` is allowed by the first and refused by the second;
/// glibc then falls back to `clone`, whose flags the first one checks).
pub fn programs(kind: ThreadKind, level: SeccompLevel) -> Result<Vec<BpfProgram>, SeccompError> {
    let mismatch = match level {
        SeccompLevel::Off => return Ok(vec![]),
        SeccompLevel::Kill => SeccompAction::KillProcess,
        SeccompLevel::Log => SeccompAction::Log,
    };
    let build = |e: String| SeccompError::Build(kind.name(), e);
    let mut allow = rules(kind).map_err(build)?;
    allow.insert(libc::SYS_clone3, vec![]);
    let compile = |rules, mismatch, matched| -> Result<BpfProgram, SeccompError> {
        SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
            .map_err(|e| build(e.to_string()))?
            .try_into()
            .map_err(|e: seccompiler::BackendError| build(e.to_string()))
    };
    // The clone3 filter goes in first: once the allowlist is in, seccomp(2) itself is refused.
    Ok(vec![
        compile(
            [(libc::SYS_clone3, vec![])].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
        )?,
        compile(allow, mismatch, SeccompAction::Allow)?,
    ])
}

/// Installs the filters of `kind` on the calling thread (threads it creates inherit them).
pub fn install(kind: ThreadKind, level: SeccompLevel) -> Result<(), SeccompError> {
    for p in programs(kind, level)? {
        seccompiler::apply_filter(&p)
            .map_err(|e| SeccompError::Install(kind.name(), e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Values from linux/kvm.h and linux/vfio.h on x86_64.
        assert_eq!(KVM_RUN, 0xAE80);
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(KVM_GET_SREGS, 0x8138_AE83);
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_AE46);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_AE6A);
        assert_eq!(KVM_IRQFD, 0x4020_AE76);
        assert_eq!(KVM_SIGNAL_MSI, 0x4020_AEA5);
        assert_eq!(KVM_GET_STATS_FD, 0xAECE);
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3B6E);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3B72);
        assert_eq!(VFIO_GROUP_UNSET_CONTAINER, 0x3B69);
    }

    #[test]
    fn every_kind_compiles_and_off_has_none() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::Main,
            ThreadKind::Signals,
            ThreadKind::Console,
            ThreadKind::Vsock,
        ] {
            assert_eq!(programs(kind, SeccompLevel::Kill).unwrap().len(), 2);
            assert!(programs(kind, SeccompLevel::Off).unwrap().is_empty());
        }
    }

    /// A forbidden call kills the process with SIGSYS (checked in a child, which the
    /// filter then takes down instead of the test runner).
    #[test]
    fn a_forbidden_call_from_a_vcpu_thread_kills_with_sigsys() {
        // SAFETY: the child only makes system calls and exits; it never returns here.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match install(ThreadKind::Vcpu, SeccompLevel::Kill) {
                // SAFETY: plain system calls in the child.
                Ok(()) => unsafe {
                    libc::syscall(libc::SYS_getppid);
                    3
                },
                Err(_) => 4,
            };
            // SAFETY: leaves the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn a_thread_may_be_started_but_not_a_process() {
        // SAFETY: as above.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match install(ThreadKind::Vcpu, SeccompLevel::Kill) {
                Ok(()) => {
                    // A thread works (glibc: clone3 -> ENOSYS -> clone with CLONE_THREAD).
                    let t = std::thread::spawn(|| 7).join().unwrap_or(0);
                    if t != 7 {
                        5
                    } else {
                        // SAFETY: fork in the filtered child: clone without CLONE_THREAD.
                        unsafe { libc::fork() };
                        6
                    }
                }
                Err(_) => 4,
            };
            // SAFETY: as above.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: as above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "a fork must be killed, after a thread started: status {status:#x}"
        );
    }
}
