//! The one call the VMM makes to get a VF: resolve, (create,) check, bind, with every
//! change recorded so it is undone on release, on drop, on error, and from the VMM's
//! signal handling ([`restore_all`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::bind::{bind_vfio, prepare_bind, restore_binding, BindRecord};
use crate::discover::{locate, pick_free_vf, vf_state, Located, VfSpec, VfState};
use crate::error::VfError;
use crate::iommu::check_group_viable;
use crate::pci::PciAddr;
use crate::sriov::{disable_vfs_if_unused, enable_vfs, SriovRecord};
use crate::sysfs::Sysfs;

/// `--vf NAME [--vf-create N]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfRequest {
    pub spec: String,
    pub create: Option<u32>,
}

/// Everything that must be put back, in the order it is put back.
#[derive(Debug)]
struct RestorePlan {
    sysfs: Sysfs,
    binding: Option<BindRecord>,
    sriov: Option<SriovRecord>,
}

impl RestorePlan {
    fn run(self) -> Result<(), VfError> {
        let b = match &self.binding {
            Some(rec) => restore_binding(&self.sysfs, rec),
            None => Ok(()),
        };
        // After the rebind, so that our VF no longer counts as a vfio-pci user.
        let s = match &self.sriov {
            Some(rec) => disable_vfs_if_unused(&self.sysfs, rec).map(|_| ()),
            None => Ok(()),
        };
        b.and(s)
    }
}

type Slot = Arc<Mutex<Option<RestorePlan>>>;

fn registry() -> MutexGuard<'static, BTreeMap<u64, Slot>> {
    static REG: OnceLock<Mutex<BTreeMap<u64, Slot>>> = OnceLock::new();
    // A panic elsewhere while holding the lock must not stop teardown.
    REG.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn lock(slot: &Slot) -> MutexGuard<'_, Option<RestorePlan>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// Undoes every claim still held by this process (rebinds the original drivers,
/// disables VFs we enabled). For the VMM's SIGTERM/SIGINT path: call it from normal
/// thread context after the signal was noticed (not inside the async handler, it takes
/// locks and writes files), and after the VFIO device, group and container are closed,
/// because the kernel's vfio-pci unbind waits for the device to be released.
/// Returns the errors met; an empty vector means everything was put back.
pub fn restore_all() -> Vec<VfError> {
    let slots: Vec<Slot> = std::mem::take(&mut *registry()).into_values().collect();
    slots
        .iter()
        .filter_map(|s| lock(s).take())
        .filter_map(|p| p.run().err())
        .collect()
}

/// A VF bound to vfio-pci for this process. Dropping it (or [`VfClaim::release`]) puts
/// the host back as it was.
#[derive(Debug)]
pub struct VfClaim {
    id: u64,
    slot: Slot,
    sysfs: Sysfs,
    pf: PciAddr,
    vf: PciAddr,
    vf_index: Option<u32>,
    group: u32,
    original_driver: Option<String>,
}

impl VfClaim {
    pub fn vf(&self) -> PciAddr {
        self.vf
    }
    pub fn pf(&self) -> PciAddr {
        self.pf
    }
    /// N of the PF's `virtfnN` link, when the VF was chosen from the PF.
    pub fn vf_index(&self) -> Option<u32> {
        self.vf_index
    }
    pub fn iommu_group(&self) -> u32 {
        self.group
    }
    /// `/dev/vfio/<group>`.
    pub fn group_path(&self) -> PathBuf {
        self.sysfs.dev(format!("vfio/{}", self.group))
    }
    /// `/sys/bus/pci/devices/<vf>`, which VFIO names the device by.
    pub fn sysfs_path(&self) -> PathBuf {
        self.sysfs.pci_dev(self.vf)
    }
    pub fn original_driver(&self) -> Option<&str> {
        self.original_driver.as_deref()
    }

    /// Puts everything back now and reports how it went.
    pub fn release(mut self) -> Result<(), VfError> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<(), VfError> {
        registry().remove(&self.id);
        let plan = lock(&self.slot).take();
        match plan {
            Some(p) => p.run(),
            None => Ok(()),
        }
    }

    fn update(&self, f: impl FnOnce(&mut RestorePlan)) {
        if let Some(p) = lock(&self.slot).as_mut() {
            f(p);
        }
    }
}

impl Drop for VfClaim {
    fn drop(&mut self) {
        if let Err(e) = self.release_inner() {
            eprintln!("hpmmap-vf: restoring VF {}: {e}", self.vf);
        }
    }
}

/// Resolves `--vf`, enables VFs if asked and needed, picks a free VF, checks its IOMMU
/// group and binds it to vfio-pci. On any error everything done so far is undone
/// before the error is returned.
pub fn claim_vf(sysfs: &Sysfs, req: &VfRequest) -> Result<VfClaim, VfError> {
    let spec = VfSpec::parse(&req.spec)?;
    let located = locate(sysfs, &spec)?;
    let pf = located.pf();

    let id = {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
    let slot: Slot = Arc::new(Mutex::new(Some(RestorePlan {
        sysfs: sysfs.clone(),
        binding: None,
        sriov: None,
    })));
    registry().insert(id, slot.clone());
    // From here on, an early return drops `claim`, which undoes what was recorded.
    let mut claim = VfClaim {
        id,
        slot,
        sysfs: sysfs.clone(),
        pf,
        vf: pf,
        vf_index: None,
        group: 0,
        original_driver: None,
    };

    let (vf_index, vf) = match located {
        Located::Vf { vf, .. } => {
            if let VfState::Busy { reason, path } = vf_state(sysfs, vf)? {
                return Err(VfError::VfInUse { vf, reason, path });
            }
            (None, vf)
        }
        Located::Pf(pf) => {
            if let Some(n) = req.create {
                if let Some(rec) = enable_vfs(sysfs, pf, n)? {
                    claim.update(|p| p.sriov = Some(rec));
                }
            }
            let (idx, vf, _) = pick_free_vf(sysfs, pf)?;
            (Some(idx), vf)
        }
    };
    claim.vf = vf;
    claim.vf_index = vf_index;
    claim.group = check_group_viable(sysfs, vf)?;
    let rec = prepare_bind(sysfs, vf)?;
    claim.original_driver = rec.original_driver.clone();
    claim.update(|p| p.binding = Some(rec.clone()));
    bind_vfio(sysfs, &rec)?;
    Ok(claim)
}
