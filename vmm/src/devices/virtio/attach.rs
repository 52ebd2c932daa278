//! Puts a run's disks on the guest's PCI bus: opened before guest RAM is allocated (a bad
//! disk costs nothing) and before `--jail` (the jailed VMM keeps the descriptors and needs
//! no path), attached once guest memory exists.

use super::block::{BlockDevice, DiskError, DiskSpec};
use super::output::{OutputDisk, OutputError, SERIAL};
use super::pci::VirtioPci;
use super::VirtioDevice;
use crate::config::VmConfig;
use kvm_ioctls::VmFd;
use std::sync::Arc;
use thiserror::Error;
use vm_memory::GuestMemoryMmap;

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("{0}")]
    Disk(#[from] DiskError),
    #[error("{0}")]
    Output(#[from] OutputError),
    #[error("{0}")]
    Vsock(#[from] super::vsock::unix::VsockError),
    #[error("--vsock {}: {source}", path.display())]
    VsockBus {
        path: std::path::PathBuf,
        #[source]
        source: hpmmap_pci::PciError,
    },
    #[error("virtio-blk {serial}: {source}")]
    Bus {
        serial: String,
        #[source]
        source: hpmmap_pci::PciError,
    },
}

impl AttachError {
    pub fn is_input(&self) -> bool {
        match self {
            AttachError::Disk(_) => true,
            AttachError::Output(o) => o.is_input(),
            AttachError::Vsock(v) => v.is_input(),
            AttachError::Bus { .. } | AttachError::VsockBus { .. } => false,
        }
    }
}

/// The disks of `cfg`, opened, and `--output`'s disk, created (its DIR too).
pub fn open(cfg: &VmConfig) -> Result<(Vec<BlockDevice>, Option<OutputDisk>), AttachError> {
    let mut devs = Vec::new();
    for spec in &cfg.disks {
        devs.push(BlockDevice::open(spec)?);
    }
    let out = match &cfg.output {
        Some(o) => {
            let owner = cfg.jail.as_ref().map(|j| (j.uid, j.gid));
            let disk = OutputDisk::create(&o.dir, o.bytes, owner)?;
            let file = disk
                .backing()
                .map_err(|e| OutputError::Host(o.dir.clone(), e))?;
            devs.push(BlockDevice::with_file(file, &o.dir, o.bytes, false, SERIAL));
            Some(disk)
        }
        None => None,
    };
    Ok((devs, out))
}

/// Each disk as a virtio-blk function on `root`, in order.
pub fn add_to_bus(
    devs: Vec<BlockDevice>,
    mem: &GuestMemoryMmap,
    vm: &Arc<VmFd>,
    root: &hpmmap_pci::PciRoot,
) -> Result<(), AttachError> {
    // MSI-X messages are injected with KVM_SIGNAL_MSI; no GSI routes are set through it.
    let router: Arc<dyn hpmmap_pci::IrqRouter> =
        Arc::new(hpmmap_pci::KvmIrqRouting::new(vm.clone()));
    for d in devs {
        let serial = d.name();
        let t = VirtioPci::new(Box::new(d), mem.clone(), router.clone());
        root.add_device(Box::new(t))
            .map_err(|source| AttachError::Bus { serial, source })?;
    }
    Ok(())
}

/// `--vsock`: the device on `root`, its muxer holding the bound listener. The event
/// thread starts with the vCPUs ([`super::vsock::worker::spawn`]).
pub fn add_vsock(
    listener: super::vsock::unix::Listener,
    mem: &GuestMemoryMmap,
    vm: &Arc<VmFd>,
    root: &hpmmap_pci::PciRoot,
) -> Result<super::vsock::Vsock, AttachError> {
    use super::vsock::{device::VsockDevice, muxer::Muxer, GUEST_CID};
    let path = listener.path.clone();
    let wake = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| super::vsock::unix::VsockError::Host(path.clone(), e))?;
    let muxer = Arc::new(std::sync::Mutex::new(Muxer::new(GUEST_CID, listener, wake)));
    let router: Arc<dyn hpmmap_pci::IrqRouter> =
        Arc::new(hpmmap_pci::KvmIrqRouting::new(vm.clone()));
    let dev = VsockDevice::new(muxer.clone());
    let transport = Arc::new(std::sync::Mutex::new(VirtioPci::new(
        Box::new(dev),
        mem.clone(),
        router,
    )));
    root.add_device(Box::new(super::pci::SharedPci(transport.clone())))
        .map_err(|source| AttachError::VsockBus { path, source })?;
    Ok(super::vsock::Vsock { transport, muxer })
}

/// The report's line per disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiskReport {
    pub path: String,
    pub serial: String,
    pub ro: bool,
    pub bytes: u64,
}

pub fn report(cfg: &VmConfig) -> Vec<DiskReport> {
    let mut v: Vec<DiskReport> = cfg
        .disks
        .iter()
        .map(|d: &DiskSpec| DiskReport {
            path: d.path.display().to_string(),
            serial: d.serial.clone(),
            ro: d.ro,
            bytes: d.check().unwrap_or(0),
        })
        .collect();
    if let Some(o) = &cfg.output {
        v.push(DiskReport {
            path: format!("{} (temporary)", o.dir.display()),
            serial: SERIAL.into(),
            ro: false,
            bytes: o.bytes,
        });
    }
    v
}
