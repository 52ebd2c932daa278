//! Moving a device to vfio-pci and back, through `driver_override`, the old driver's
//! `unbind` and the bus's `drivers_probe`.
//!
//! `driver_override` (rather than `vfio-pci/new_id`) binds exactly this function and
//! no sibling with the same vendor:device, and survives the unbind/probe race in which
//! the old driver could grab the device back.

use crate::discover::VFIO_PCI;
use crate::error::VfError;
use crate::pci::PciAddr;
use crate::sysfs::Sysfs;

/// What to put back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindRecord {
    pub dev: PciAddr,
    /// The driver the device was on before, if any.
    pub original_driver: Option<String>,
    /// `driver_override` before we wrote it (`None` for the kernel's "(null)").
    pub original_override: Option<String>,
}

impl BindRecord {
    /// Whether binding changes anything (a device idle on vfio-pci is left as it was).
    pub fn needs_bind(&self) -> bool {
        self.original_driver.as_deref() != Some(VFIO_PCI)
    }
}

/// Reads what binding will change and checks vfio-pci is there; writes nothing.
pub fn prepare_bind(sysfs: &Sysfs, dev: PciAddr) -> Result<BindRecord, VfError> {
    let vfio_dir = sysfs.pci_driver_dir(VFIO_PCI);
    if !vfio_dir.exists() {
        return Err(VfError::VfioPciMissing { path: vfio_dir });
    }
    let ov = sysfs.read_opt(&sysfs.pci_dev(dev).join("driver_override"))?;
    Ok(BindRecord {
        dev,
        original_driver: sysfs.driver_of(dev)?,
        original_override: ov.filter(|v| v != "(null)" && !v.is_empty()),
    })
}

/// Binds the device to vfio-pci. On error the caller runs [`restore_binding`].
pub fn bind_vfio(sysfs: &Sysfs, rec: &BindRecord) -> Result<(), VfError> {
    if !rec.needs_bind() {
        return Ok(());
    }
    let dev = rec.dev;
    let name = dev.to_string();
    sysfs.write(&sysfs.pci_dev(dev).join("driver_override"), VFIO_PCI)?;
    if let Some(orig) = &rec.original_driver {
        sysfs.write(&sysfs.pci_driver_dir(orig).join("unbind"), &name)?;
    }
    let probe = sysfs.sys("bus/pci/drivers_probe");
    sysfs.write(&probe, &name)?;
    match sysfs.driver_of(dev)? {
        Some(d) if d == VFIO_PCI => Ok(()),
        other => Err(VfError::BindFailed {
            device: dev,
            driver: VFIO_PCI.into(),
            detail: match other {
                // vfio-pci refuses devices without an IOMMU group, among others; dmesg says which.
                None => "vfio-pci did not take the device after drivers_probe (see dmesg)".into(),
                Some(d) => format!("device ended up on {d}"),
            },
            path: sysfs.pci_dev(dev).join("driver"),
        }),
    }
}

/// Puts the device back on its original driver with its original `driver_override`.
/// Every step is tried even when an earlier one fails; the first error is returned.
pub fn restore_binding(sysfs: &Sysfs, rec: &BindRecord) -> Result<(), VfError> {
    if !rec.needs_bind() {
        return Ok(());
    }
    let dev = rec.dev;
    let dev_dir = sysfs.pci_dev(dev);
    if !dev_dir.exists() {
        // The VF went away (its PF's VFs were disabled): nothing left to restore.
        return Ok(());
    }
    let name = dev.to_string();
    let mut first_err: Option<VfError> = None;
    let mut note = |r: Result<(), VfError>| {
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    };
    let current = sysfs.driver_of(dev)?;
    if current.as_deref() == Some(VFIO_PCI) {
        note(sysfs.write(&sysfs.pci_driver_dir(VFIO_PCI).join("unbind"), &name));
    }
    // A lone newline clears the override (the kernel treats an empty override as none).
    let ov = rec.original_override.clone().unwrap_or_else(|| "\n".into());
    note(sysfs.write(&dev_dir.join("driver_override"), &ov));
    if let Some(orig) = &rec.original_driver {
        if sysfs.driver_of(dev)?.as_deref() != Some(orig.as_str()) {
            let bind = sysfs.write(&sysfs.pci_driver_dir(orig).join("bind"), &name);
            if bind.is_err() {
                // The override may have been restored to something else, or the driver
                // dir be gone; let the bus choose as it did at boot.
                note(sysfs.write(&sysfs.sys("bus/pci/drivers_probe"), &name));
            }
            let now = sysfs.driver_of(dev)?;
            if now.as_deref() != Some(orig.as_str()) {
                note(Err(VfError::BindFailed {
                    device: dev,
                    driver: orig.clone(),
                    detail: match now {
                        None => "device left without a driver".into(),
                        Some(d) => format!("device is on {d}"),
                    },
                    path: dev_dir.join("driver"),
                }));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
