//! Enabling VFs on a PF (`--vf-create N`) and disabling them again when we enabled them.

use crate::discover::{list_vfs, vf_state, VfState};
use crate::error::VfError;
use crate::pci::PciAddr;
use crate::sysfs::Sysfs;

/// VFs this process enabled on a PF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SriovRecord {
    pub pf: PciAddr,
    pub enabled: u32,
}

/// Enables `n` VFs when the PF has none. Returns None when VFs already exist (nothing
/// to create, nothing to undo later).
pub fn enable_vfs(sysfs: &Sysfs, pf: PciAddr, n: u32) -> Result<Option<SriovRecord>, VfError> {
    let dir = sysfs.pci_dev(pf);
    let total_path = dir.join("sriov_totalvfs");
    if !total_path.exists() {
        return Err(VfError::NoSriov {
            pf,
            path: total_path,
        });
    }
    let total = sysfs.read_u32(&total_path)?;
    let num_path = dir.join("sriov_numvfs");
    let current = sysfs.read_u32(&num_path)?;
    if n == 0 || n > total {
        return Err(VfError::TooManyVfs {
            pf,
            requested: n,
            total,
            path: total_path,
        });
    }
    if current != 0 {
        return Ok(None);
    }
    sysfs.write(&num_path, &n.to_string())?;
    Ok(Some(SriovRecord { pf, enabled: n }))
}

/// Sets `sriov_numvfs` back to 0 unless another user holds one of the VFs (disabling
/// would pull the device out from under them). Returns whether it disabled them.
pub fn disable_vfs_if_unused(sysfs: &Sysfs, rec: &SriovRecord) -> Result<bool, VfError> {
    for (_, vf) in list_vfs(sysfs, rec.pf)? {
        match vf_state(sysfs, vf)? {
            VfState::Unbound | VfState::IdleDriver(_) => {}
            VfState::IdleVfio | VfState::Busy { .. } => return Ok(false),
        }
    }
    sysfs.write(&sysfs.pci_dev(rec.pf).join("sriov_numvfs"), "0")?;
    Ok(true)
}
