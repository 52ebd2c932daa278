//! The process's exit statuses. A job's own status (0–255, written to the PV device's EXIT
//! register) is passed through unchanged; the VMM's own outcomes use the values below, which
//! `--help` documents. They can collide with a job that exits with the same number: the report's
//! `exit_reason` tells them apart.

/// Bad command line or host setup the user must fix (missing kernel, too few huge pages, ...).
pub const USAGE: i32 = 2;
/// The VMM itself failed on the host (a KVM ioctl, a thread).
pub const VMM_FAILURE: i32 = 70;
/// The guest kernel panicked (panic banner on the console, or a KVM crash event).
pub const GUEST_PANIC: i32 = 71;
/// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
pub const TRIPLE_FAULT: i32 = 72;
/// KVM could not run the guest: KVM_EXIT_INTERNAL_ERROR (e.g. an instruction kvm_pvm does not
/// emulate), a failed VM entry, or an exit this VMM does not handle.
pub const KVM_INTERNAL_ERROR: i32 = 73;
/// The guest powered off (i8042 reset, KVM shutdown event) without writing an exit status.
pub const NO_STATUS: i32 = 74;

pub const HELP: &str = "\
Exit status:
  0-255  the job's exit status, written by the guest to the PV device's EXIT register
  2      bad input: an unusable flag value, kernel, initramfs or image; no /dev/kvm or no
         permission; too few free huge pages; a --vf that names no device, a PF without
         SR-IOV or without VFs, no free VF, a VF in use; nothing is left allocated or bound
  70     the VMM failed on the host (for --vf also: no IOMMU group, a non-viable group,
         vfio-pci missing, a failed bind, VFIO or DMA mapping; the VF is given back)
  71     the guest kernel panicked
  72     a vCPU triple-faulted (KVM_EXIT_SHUTDOWN)
  73     KVM_EXIT_INTERNAL_ERROR, failed VM entry or unhandled exit (exit data and vCPU
         registers are printed)
  74     the guest powered off without reporting an exit status
  128+N  stopped by signal N (SIGINT, SIGTERM, SIGHUP); the report is still written
The report (stderr, and --report PATH as JSON) names the exit reason.
`hpmmap-vmm selftest --vf NAME [--mem SIZE]` exits 0 when every --vf prerequisite is met,
1 when one is missing.";
