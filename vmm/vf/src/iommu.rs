//! IOMMU group viability: VFIO hands a whole group to one user, so every other device in
//! the VF's group must be harmless to give away.

use crate::discover::VFIO_PCI;
use crate::error::VfError;
use crate::pci::PciAddr;
use crate::sysfs::Sysfs;

/// Drivers the kernel lets share a group with a VFIO user: vfio-pci and its
/// vendor variants, and the drivers that declare `driver_managed_dma` because they do no
/// DMA of their own (pci-stub, and pcieport on bridges).
fn driver_is_harmless(driver: &str) -> bool {
    driver == VFIO_PCI
        || driver.ends_with("-vfio-pci")
        || driver.ends_with("_vfio_pci")
        || driver == "pci-stub"
        || driver == "pcieport"
}

/// The VF's IOMMU group number, after checking that every other member of the group is
/// bound to a harmless driver or to none. The VF itself is exempt: it is about to be
/// bound to vfio-pci.
pub fn check_group_viable(sysfs: &Sysfs, vf: PciAddr) -> Result<u32, VfError> {
    let group = sysfs
        .iommu_group_of(vf)?
        .ok_or_else(|| VfError::NoIommuGroup {
            device: vf,
            path: sysfs.pci_dev(vf).join("iommu_group"),
        })?;
    let devices_dir = sysfs.sys(format!("kernel/iommu_groups/{group}/devices"));
    let members = sysfs.list(&devices_dir)?.ok_or_else(|| VfError::Sysfs {
        op: "list",
        path: devices_dir.clone(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    for m in members {
        if m == vf.to_string() {
            continue;
        }
        let driver_link = devices_dir.join(&m).join("driver");
        if let Some(driver) = sysfs.link_name(&driver_link)? {
            if !driver_is_harmless(&driver) {
                return Err(VfError::GroupNotViable {
                    group,
                    vf,
                    member: m,
                    driver,
                    path: driver_link,
                });
            }
        }
    }
    Ok(group)
}
