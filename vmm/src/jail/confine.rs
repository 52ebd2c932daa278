//! Confining the VMM once everything privileged is open (/dev/kvm, the VM, guest RAM locked,
//! VFIO, the kernel loaded, the console file): its cgroup, a locked-memory limit covering
//! guest RAM, new mount/IPC/UTS/network namespaces with the job's empty directory as root,
//! then the job's uid and gid with no way back (no_new_privs, not dumpable). Open file
//! descriptors keep working; nothing can be opened by path any more.

use super::{JailError, JailOptions};
use std::ffi::CString;
use std::path::Path;

fn sys(what: &'static str, rc: libc::c_int) -> Result<(), JailError> {
    if rc < 0 {
        return Err(JailError::Sys(what, std::io::Error::last_os_error()));
    }
    Ok(())
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default()
}

/// Puts the calling process in its cgroup (created by the keeper): cpuset from the vCPUs'
/// CPUs and the memory's node, memory.max for the VMM's own overhead (guest RAM is hugetlb
/// or device memory, charged elsewhere).
fn join_cgroup(dir: &Path, cpus: Option<&[usize]>, node: Option<u32>) -> Result<(), JailError> {
    let write = |file: &str, value: String| -> Result<(), JailError> {
        std::fs::write(dir.join(file), value.as_bytes()).map_err(|e| JailError::Cgroup {
            path: dir.join(file),
            why: e.to_string(),
        })
    };
    if let Some(c) = cpus {
        write("cpuset.cpus", crate::units::format_cpu_list(c))?;
    }
    if let Some(n) = node {
        write("cpuset.mems", n.to_string())?;
    }
    if dir.join("memory.max").exists() {
        write("memory.max", super::VMM_MEMORY_MAX.to_string())?;
    }
    write("cgroup.procs", "0".into())
}

/// Enters the jail. Must run while the process has one thread (unshare of the mount
/// namespace refuses otherwise).
pub fn enter(
    opts: &JailOptions,
    guest_ram: u64,
    cpus: Option<&[usize]>,
    node: Option<u32>,
) -> Result<(), JailError> {
    if let Some(cg) = &opts.cgroup {
        join_cgroup(cg, cpus, node)?;
    }
    // VFIO and mlock were charged as root; a limit that covers guest RAM keeps later
    // accounting (a re-pin, a DMA remap) from failing after the drop.
    let lim = libc::rlimit {
        rlim_cur: guest_ram + super::MEMLOCK_SLACK,
        rlim_max: guest_ram + super::MEMLOCK_SLACK,
    };
    // SAFETY: plain system calls with valid pointers to locals; this process is single-
    // threaded here (checked by unshare's EINVAL otherwise).
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) < 0 {
            // Raising the hard limit takes CAP_SYS_RESOURCE, which some hosts withhold even
            // from root. Guest RAM and the VF's DMA mappings are locked already (as root,
            // with CAP_IPC_LOCK); only later locking would meet the lower limit.
            let mut now = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut now);
            eprintln!(
                "hpmmap-vmm: note: --jail: RLIMIT_MEMLOCK stays at {} KiB ({}); guest RAM is \
                 locked already",
                now.rlim_cur >> 10,
                std::io::Error::last_os_error()
            );
        }
        sys(
            "unshare(mount, IPC, UTS, network namespaces)",
            libc::unshare(
                libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET,
            ),
        )?;
        // Nothing this process mounts or unmounts reaches the host.
        sys(
            "making / private",
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
        )?;
        let root = cstr(&opts.dir);
        sys(
            "bind-mounting the jail directory",
            libc::mount(
                root.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ),
        )?;
        sys("chdir to the jail", libc::chdir(root.as_ptr()))?;
        // pivot_root(".", "."): the old root is stacked under the new one and unmounted
        // right away, so no directory for it is needed in the jail.
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) == 0 {
            sys(
                "unmounting the host's root",
                libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
            )?;
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // The host runs from its initramfs (rootfs cannot be pivoted away, e.g. the
            // nested lab's L1): move the jail over / and chroot, as switch_root does. The
            // uid drop below takes CAP_SYS_CHROOT, so there is no way back out.
            sys(
                "moving the jail over /",
                libc::mount(
                    c".".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_MOVE,
                    std::ptr::null(),
                ),
            )?;
            sys("chroot", libc::chroot(c".".as_ptr()))?;
        } else {
            return Err(JailError::Sys(
                "pivot_root",
                std::io::Error::last_os_error(),
            ));
        }
        sys("chdir /", libc::chdir(c"/".as_ptr()))?;
        sys("setgroups", libc::setgroups(0, std::ptr::null()))?;
        sys("setresgid", libc::setresgid(opts.gid, opts.gid, opts.gid))?;
        sys("setresuid", libc::setresuid(opts.uid, opts.uid, opts.uid))?;
        sys(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
        )?;
        // Another process of the same uid must not ptrace or read the VMM's memory.
        sys(
            "prctl(PR_SET_DUMPABLE)",
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0),
        )?;
    }
    // The uid change cleared the parent-death signal.
    super::keeper::stay_tied()
}
