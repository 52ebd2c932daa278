//! The one call the VMM makes to get a VF: resolve, (create,) check, bind, and for an
//! InfiniBand VF set its GUIDs and link policy, with every change recorded so it is undone
//! on release, on drop, on error, from the VMM's signal handling ([`restore_all`]) and,
//! through the claim record on disk, after a crash ([`crate::records::recover`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::bind::{bind_vfio, prepare_bind, restore_binding, BindRecord};
use crate::discover::{locate, pick_free_vf, vf_state, Located, VfSpec, VfState};
use crate::error::VfError;
use crate::ib::{self, Guid, IbOptions, IbSetup, Pkey};
use crate::iommu::check_group_viable;
use crate::pci::PciAddr;
use crate::records::{self, ClaimRecord};
use crate::sriov::{disable_vfs_if_unused, enable_vfs, SriovRecord};
use crate::sysfs::Sysfs;

/// `--vf NAME [--vf-create N]`. The InfiniBand flags (`--vf-guid`, `--pkey`, `--job`)
/// are [`IbOptions`], passed to [`claim_vf_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfRequest {
    pub spec: String,
    pub create: Option<u32>,
}

/// Everything that must be put back, in the order it is put back.
#[derive(Debug)]
struct RestorePlan {
    sysfs: Sysfs,
    /// GUIDs and policy, and how many of their writes were applied.
    ib: Option<(IbSetup, usize)>,
    binding: Option<BindRecord>,
    sriov: Option<SriovRecord>,
    /// `RUN/vf/<PF>.sriov`, removed once the VFs are disabled again.
    sriov_record: Option<PathBuf>,
    /// The record on disk, removed once everything is back.
    record: Option<(PathBuf, ClaimRecord)>,
}

impl RestorePlan {
    fn run(self) -> Result<(), VfError> {
        // GUIDs first, while the VF is still off the host driver, so that driver comes
        // back up with the VF's original identity.
        let i = match &self.ib {
            Some((setup, done)) => ib::restore(&self.sysfs, setup, *done),
            None => Ok(()),
        };
        let b = match &self.binding {
            Some(rec) => restore_binding(&self.sysfs, rec),
            None => Ok(()),
        };
        // The record goes once the VF is back, before the VFs are disabled, which counts
        // a VF with a record as someone's. A failed restore keeps it: once this process
        // is gone, recover retries.
        let r = match (&self.record, i.is_ok() && b.is_ok()) {
            (Some((path, _)), true) => match std::fs::remove_file(path) {
                Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                    Err(VfError::Sysfs {
                        op: "remove",
                        path: path.clone(),
                        source,
                    })
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        };
        // After the rebind, so that our VF no longer counts as a vfio-pci user.
        // VFs another claim still holds stay enabled, and so does their record: once that
        // claim is gone, `recover` disables them.
        let s = match &self.sriov {
            Some(rec) => disable_vfs_if_unused(&self.sysfs, rec).map(|disabled| {
                if disabled {
                    if let Some(p) = &self.sriov_record {
                        let _ = std::fs::remove_file(p);
                    }
                }
            }),
            None => Ok(()),
        };
        i.and(b).and(r).and(s)
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
    guid: Option<Guid>,
    pkey: Option<Pkey>,
    job: String,
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
    /// The node and port GUID the VF carries while claimed (InfiniBand VFs only).
    pub fn guid(&self) -> Option<Guid> {
        self.guid
    }
    /// The job's P_Key, for the guest and for partitions.conf.
    pub fn pkey(&self) -> Option<Pkey> {
        self.pkey
    }
    /// The job name in the claim record and partitions.conf.
    pub fn job(&self) -> &str {
        &self.job
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
/// group and binds it to vfio-pci; an InfiniBand VF also gets GUIDs derived from its PF's
/// and link policy Follow. On any error everything done so far is undone before the error
/// is returned. Same as [`claim_vf_with`] with no `--vf-guid`, `--pkey` or `--job`.
pub fn claim_vf(sysfs: &Sysfs, req: &VfRequest) -> Result<VfClaim, VfError> {
    claim_vf_with(sysfs, req, &IbOptions::default())
}

/// [`claim_vf`] with the InfiniBand options. Input errors (`--pkey` or `--vf-guid` for a
/// VF that is not InfiniBand, a P_Key or GUID another job holds) come before any change.
pub fn claim_vf_with(sysfs: &Sysfs, req: &VfRequest, opts: &IbOptions) -> Result<VfClaim, VfError> {
    let spec = VfSpec::parse(&req.spec)?;
    if let Some(j) = &opts.job {
        ib::validate_job(j)?;
    }
    let located = locate(sysfs, &spec)?;
    let pf = located.pf();
    let ib_port = ib::ib_port_of(sysfs, pf)?;
    if ib_port.is_none() {
        let flag = match (opts.pkey, opts.guid) {
            (Some(_), _) => Some("--pkey"),
            (None, Some(_)) => Some("--vf-guid"),
            _ => None,
        };
        if let Some(flag) = flag {
            return Err(VfError::NotInfiniband {
                flag,
                pf,
                path: sysfs.pci_dev(pf).join("infiniband"),
            });
        }
    }
    let pid = records::own_pid();
    let job = opts.job.clone().unwrap_or_else(|| format!("pid{pid}"));
    // From choosing the VF until its record is on disk no other claim chooses: the record
    // then makes the VF busy for them until this process is gone and recovered.
    let guard = records::claim_lock(sysfs)?;
    let others = live_records(sysfs);
    if let Some(p) = opts.pkey {
        if let Some((path, r)) = others.iter().find(|(_, r)| {
            r.job != job && r.ib.as_ref().and_then(|i| i.pkey).map(|k| k.base()) == Some(p.base())
        }) {
            return Err(VfError::PkeyInUse {
                pkey: format!("{:#06x}", p.base()),
                job: r.job.clone(),
                path: path.clone(),
            });
        }
    }

    let id = {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    };
    let slot: Slot = Arc::new(Mutex::new(Some(RestorePlan {
        sysfs: sysfs.clone(),
        ib: None,
        binding: None,
        sriov: None,
        sriov_record: None,
        record: None,
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
        guid: None,
        pkey: opts.pkey,
        job: job.clone(),
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
                // On disk before the VFs exist: a crash after the write leaves the record
                // for `recover`, which disables them.
                let cur = sysfs.read_u32(&sysfs.pci_dev(pf).join("sriov_numvfs"));
                let spath = if cur.as_ref().is_ok_and(|&c| c == 0) {
                    Some(
                        records::SriovClaim {
                            pid,
                            start: records::start_time(sysfs, pid),
                            host: records::hostname(sysfs),
                            pf,
                            enabled: n,
                        }
                        .save(sysfs)?,
                    )
                } else {
                    None
                };
                match enable_vfs(sysfs, pf, n) {
                    Ok(Some(rec)) => claim.update(|p| {
                        p.sriov = Some(rec);
                        p.sriov_record = spath;
                    }),
                    other => {
                        if let Some(p) = spath {
                            let _ = std::fs::remove_file(p);
                        }
                        other?;
                    }
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
    let setup = match &ib_port {
        None => None,
        Some(port) => {
            let index = match vf_index {
                Some(i) => i,
                None => ib::vf_index(sysfs, pf, vf)?,
            };
            let setup = ib::plan(sysfs, pf, port, index, opts)?;
            if let Some((path, r)) = others
                .iter()
                .find(|(_, r)| r.ib.as_ref().map(|i| i.guid) == Some(setup.guid))
            {
                return Err(VfError::GuidInUse {
                    guid: setup.guid.to_string(),
                    vf,
                    job: r.job.clone(),
                    path: path.clone(),
                });
            }
            Some(setup)
        }
    };
    claim.guid = setup.as_ref().map(|s| s.guid);

    // The record goes to disk before the first change, so that a crash at any point
    // after it leaves enough to put the VF back.
    let mut record = ClaimRecord {
        pid,
        start: records::start_time(sysfs, pid),
        host: records::hostname(sysfs),
        job,
        pf,
        vf,
        binding: rec.clone(),
        ib: setup.clone(),
        ib_done: 0,
    };
    let path = record.save(sysfs)?;
    claim.update(|p| p.record = Some((path.clone(), record.clone())));
    drop(guard);

    claim.original_driver = rec.original_driver.clone();
    claim.update(|p| p.binding = Some(rec.clone()));
    bind_vfio(sysfs, &rec)?;

    if let Some(setup) = setup {
        claim.update(|p| p.ib = Some((setup.clone(), 0)));
        for (i, (attr, value, _)) in setup.steps(sysfs).into_iter().enumerate() {
            // Counted before the write: a write that fails half-way (the driver applied
            // it, then failed) is restored too; restoring an unchanged value is harmless.
            record.ib_done = i + 1;
            record.save(sysfs)?;
            claim.update(|p| {
                p.ib = Some((setup.clone(), i + 1));
                p.record = Some((path.clone(), record.clone()));
            });
            if let Err(e) = ib::write_attr(sysfs, &attr, &value) {
                if matches!(e, VfError::GuidRefused { .. }) {
                    // Refused: nothing was applied, and writing the original back
                    // would be refused too.
                    record.ib_done = i;
                    let _ = record.save(sysfs);
                    claim.update(|p| {
                        p.ib = Some((setup.clone(), i));
                        p.record = Some((path.clone(), record.clone()));
                    });
                }
                return Err(e);
            }
        }
    }
    Ok(claim)
}

/// Records of claims whose process still runs (this one's included).
fn live_records(sysfs: &Sysfs) -> Vec<(PathBuf, ClaimRecord)> {
    records::list(sysfs)
        .into_iter()
        .filter_map(|(p, r)| r.ok().map(|r| (p, r)))
        .filter(|(_, r)| records::is_live(sysfs, r))
        .collect()
}
