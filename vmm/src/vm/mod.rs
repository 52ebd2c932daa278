//! One VM's life in named steps, as the VMM runs it: [`build`] (checks, guest RAM, the KVM VM,
//! devices, boot structures, vCPUs), [`running`] (confinement, the vCPU threads, waiting for
//! the outcome, stopping them), [`finish`] (the report, then teardown in a fixed order).

mod build;
mod finish;
mod running;

use crate::config::VmConfig;
use crate::devices::{pv, Bus, EventSink, VmEvent};
use crate::exit;
use crate::loader;
use crate::memory::layout::GuestLayout;
use crate::memory::GuestRam;
use crate::report::Report;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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
    Acpi(#[from] crate::arch::x86_64::acpi::AcpiError),
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

pub(crate) fn host<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> VmmError {
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

/// The end of a run.
pub struct Outcome {
    pub exit_code: i32,
    pub report: Report,
}

/// Builds the VM, runs it until the outcome, reports and tears down.
pub fn run(cfg: &VmConfig, started: Instant) -> Result<Outcome, VmmError> {
    let built = build::build(cfg, started)?;
    let stopped = running::start(cfg, built)?.wait();
    Ok(finish::finish(cfg, stopped))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
