//! The end of a run: the outcome classified, the report assembled (KVM's page counters are
//! read before the VM goes), the output disk unpacked, then teardown in `Stopped`'s field order.

use super::running::Stopped;
use super::Outcome;
use crate::config::VmConfig;
use crate::devices::VmEvent;
use crate::exit;
use crate::kvm_stats::{self, KvmPages};
use crate::report::Report;
use std::sync::atomic::Ordering;

/// Reports the stopped VM and tears it down.
pub(super) fn finish(cfg: &VmConfig, stopped: Stopped) -> Outcome {
    let Stopped {
        shared,
        bus,
        pci_teardown,
        vm,
        ram,
        event,
        run_seconds,
        platform,
        layout,
        numa,
        prefault,
        kernel,
        mut output_disk,
        vf_report,
        disks_report,
        phases,
        started,
        pins,
        host_page,
        vsock_stop,
        vsock_file,
    } = stopped;
    // The guest is gone: its event thread leaves guest memory alone, and no client may
    // find PATH any more.
    drop(vsock_stop);
    drop(vsock_file);
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
        startup_phases_ms: phases.done.into_iter().collect(),
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
    drop(ram);
    Outcome { exit_code, report }
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

#[cfg(test)]
mod tests {
    use super::*;

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
