//! Errors of VF discovery, binding and VFIO. Each names the cause and the sysfs or
//! device path it was found at, because the operator fixing it works from that path.

use std::io;
use std::path::PathBuf;

use crate::pci::PciAddr;

#[derive(Debug, thiserror::Error)]
pub enum VfError {
    #[error("--vf '{name}': not a device name or PCI address ({reason})")]
    BadSpec { name: String, reason: String },

    #[error("--vf '{name}': no such device (looked in {})", display_paths(.searched))]
    NoSuchDevice {
        name: String,
        searched: Vec<PathBuf>,
    },

    #[error("--vf '{name}': {path} is not a PCI function")]
    NotPci { name: String, path: PathBuf },

    #[error("PF {pf} has no SR-IOV capability ({path} is missing)")]
    NoSriov { pf: PciAddr, path: PathBuf },

    #[error("PF {pf} has SR-IOV but no VFs enabled ({path} = 0); pass --vf-create N")]
    NoVfsEnabled { pf: PciAddr, path: PathBuf },

    #[error("--vf-create {requested}: PF {pf} supports at most {total} VFs ({path})")]
    TooManyVfs {
        pf: PciAddr,
        requested: u32,
        total: u32,
        path: PathBuf,
    },

    #[error("--vf-create {requested}: PF {pf} already has {current} VFs ({path}); changing the count would remove VFs others may use")]
    VfsAlreadyEnabled {
        pf: PciAddr,
        requested: u32,
        current: u32,
        path: PathBuf,
    },

    #[error("no free VF on PF {pf}: {}", .busy.join("; "))]
    NoFreeVf { pf: PciAddr, busy: Vec<String> },

    #[error("VF {vf} is in use: {reason} ({path})")]
    VfInUse {
        vf: PciAddr,
        reason: String,
        path: PathBuf,
    },

    #[error("{device} has no IOMMU group ({path} is missing): the IOMMU is off; boot with intel_iommu=on or amd_iommu=on")]
    NoIommuGroup { device: PciAddr, path: PathBuf },

    #[error("IOMMU group {group} of VF {vf} is not viable: {member} is bound to {driver} ({path}); unbind it or move the VF behind an ACS-capable port")]
    GroupNotViable {
        group: u32,
        vf: PciAddr,
        member: String,
        driver: String,
        path: PathBuf,
    },

    #[error("vfio-pci driver is not loaded ({path} is missing): run 'modprobe vfio-pci'")]
    VfioPciMissing { path: PathBuf },

    #[error("binding {device} to {driver} failed: {detail} ({path})")]
    BindFailed {
        device: PciAddr,
        driver: String,
        detail: String,
        path: PathBuf,
    },

    #[error("{op} {path}: {source}")]
    Sysfs {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("sysfs attribute {path} holds '{value}', expected {expected}")]
    BadAttr {
        path: PathBuf,
        value: String,
        expected: &'static str,
    },

    #[error("--vf-guid '{value}': {reason}")]
    BadGuid { value: String, reason: String },

    #[error("--pkey '{value}': {reason}")]
    BadPkey { value: String, reason: String },

    #[error("--job '{value}': job names are 1-64 of A-Z a-z 0-9 _ . - (they become OpenSM partition names)")]
    BadJob { value: String },

    #[error("{flag} needs an InfiniBand VF, but PF {pf} is not an InfiniBand port ({path})")]
    NotInfiniband {
        flag: &'static str,
        pf: PciAddr,
        path: PathBuf,
    },

    #[error("PF {pf} ({driver}) offers no VF GUID/policy attributes ({path} is missing): mlx5_core of MLNX_OFED provides sriov/N/{{node,port,policy}}; without them the VF cannot join the fabric")]
    GuidUnsupported {
        pf: PciAddr,
        driver: String,
        path: PathBuf,
    },

    #[error("the driver refused '{value}' for {path}: {source}")]
    GuidRefused {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },

    #[error("P_Key {pkey} is already held by job '{job}' ({path}); each job needs its own P_Key for isolation")]
    PkeyInUse {
        pkey: String,
        job: String,
        path: PathBuf,
    },

    #[error("port GUID {guid} of VF {vf} is already in job '{job}''s partition ({path}); run 'hpmmap-vf recover' if that job is gone")]
    GuidInUse {
        guid: String,
        vf: PciAddr,
        job: String,
        path: PathBuf,
    },

    #[error("claim record {path}: {reason}")]
    BadRecord { path: PathBuf, reason: String },

    #[error("{path}:{line}: {reason}")]
    BadPartitions {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

fn display_paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl VfError {
    /// Whether the error lies in what the user asked for (exit status 2) rather than in
    /// the host's state or a failed operation (exit status 1).
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            VfError::BadSpec { .. }
                | VfError::NoSuchDevice { .. }
                | VfError::NotPci { .. }
                | VfError::NoSriov { .. }
                | VfError::NoVfsEnabled { .. }
                | VfError::TooManyVfs { .. }
                | VfError::VfsAlreadyEnabled { .. }
                | VfError::VfInUse { .. }
                | VfError::BadGuid { .. }
                | VfError::BadPkey { .. }
                | VfError::BadJob { .. }
                | VfError::NotInfiniband { .. }
                | VfError::PkeyInUse { .. }
                | VfError::GuidInUse { .. }
        )
    }
}
