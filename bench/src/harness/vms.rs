//! Preparing the VM configurations: where they run (this host's KVM, the nested lab, or
//! nowhere, with the reason), their job images, and on this host the 1 GiB pages.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use super::options::{host_vm_mem_gib, Options};
use crate::config::{Config, LAB_LABEL};
use crate::model::Interrupted;
use crate::platform::Platform;
use crate::runner::{lab_prerequisites, HostVm, LabRunner, Reservation, TempDir};
use crate::vm::{self, VmPlace, VmShape};

/// The VM configurations, ready to run (or why they are absent).
pub struct Vms {
    /// Why the VM rows are absent (then no VM configuration is left in the run's list).
    pub absent: Option<String>,
    /// `hpmmap-vmm` on this host: the VM cells run interleaved with the native ones.
    pub host_vm: Option<HostVm>,
    /// The nested lab: the VM cells run after the native ones, in one L1 boot.
    pub lab_runner: Option<LabRunner>,
    /// The guest of the lab's runs.
    pub shape: VmShape,
    // Dropped in this order, after the runs: the images, then the 1 GiB pages.
    _images_dir: Option<TempDir>,
    _reservation: Option<Reservation>,
}

/// Finds the place of the VM configurations in `configs` and prepares it; those that
/// cannot run leave `configs`. Only an interruption is an error: anything else makes the
/// VM rows absent, with the reason.
pub fn prepare(
    opts: &Options,
    platform: &Platform,
    bin: &Path,
    rank_cpus: &[usize],
    configs: &mut Vec<Config>,
) -> Result<Vms> {
    let want_vm: Vec<Config> = configs.iter().copied().filter(|c| c.is_vm()).collect();
    let mut vms = Vms {
        absent: None,
        host_vm: None,
        lab_runner: None,
        shape: VmShape::default(),
        _images_dir: None,
        _reservation: None,
    };
    if want_vm.is_empty() {
        vms.absent = Some(match platform.kvm.vm_rows_absent_because() {
            Some(w) => format!("not requested (--configs vm-thp,vm-hpmmap); besides, {w}"),
            None => "not requested (--configs vm-thp,vm-hpmmap)".into(),
        });
    } else {
        let lab_tool = vm::find_tool("hpmmap-lab");
        let lab_ok = match &lab_tool {
            Some(_) => lab_prerequisites(),
            None => Err("hpmmap-lab not found (cargo build --release -p hpmmap-image, or set HPMMAP_LAB_BIN)".into()),
        };
        let place = vm::choose_place(&platform.kvm, opts.force_lab, lab_ok);
        let prepared = match place {
            VmPlace::Absent(_) => Ok(()),
            _ => vms.set_up(&place, opts, bin, rank_cpus, &want_vm, lab_tool),
        };
        match (&place, prepared) {
            (VmPlace::Absent(why), _) => vms.absent = Some(why.clone()),
            (_, Err(e)) if e.downcast_ref::<Interrupted>().is_some() => return Err(e),
            (_, Err(e)) => vms.absent = Some(format!("{e:#}")),
            (VmPlace::Host, Ok(())) => eprintln!(
                "[bench] VM rows: hpmmap-vmm on this host's KVM, interleaved with the native runs"
            ),
            (VmPlace::Lab, Ok(())) => eprintln!(
                "[bench] VM rows: in the nested lab ({}), after the native runs",
                LAB_LABEL
            ),
        }
        if vms.absent.is_some() {
            configs.retain(|c| !c.is_vm());
        }
    }
    if let Some(why) = &vms.absent {
        eprintln!("[bench] VM rows absent: {why}");
    }
    Ok(vms)
}

impl Vms {
    /// The job images of `want_vm`, then the runner of `place` (this host: its 1 GiB pages
    /// reserved first).
    fn set_up(
        &mut self,
        place: &VmPlace,
        opts: &Options,
        bin: &Path,
        rank_cpus: &[usize],
        want_vm: &[Config],
        lab_tool: Option<PathBuf>,
    ) -> Result<()> {
        let vmm = vm::find_tool("hpmmap-vmm").ok_or_else(|| {
            anyhow!(
                "hpmmap-vmm not found (cargo build --release -p hpmmap-vmm, or set HPMMAP_VMM_BIN)"
            )
        })?;
        let image_tool = vm::find_tool("hpmmap-image")
            .ok_or_else(|| anyhow!("hpmmap-image not found (cargo build --release -p hpmmap-image, or set HPMMAP_IMAGE_BIN)"))?;
        let dir = TempDir::new("images")?;
        let images = vm::build_images(
            &image_tool,
            &vm::image_workload_binary(bin),
            want_vm,
            &dir.0,
        )?;
        if *place == VmPlace::Host {
            if let Some(off) = vm::find_tool("hpmmap-offline") {
                self._reservation = Some(Reservation::take(&off, host_vm_mem_gib(opts))?);
            }
            self.host_vm = Some(HostVm {
                vmm,
                images,
                shape: VmShape {
                    mem_gib: host_vm_mem_gib(opts),
                    vcpus: rank_cpus.len().max(1) as u32,
                    cpu_affinity: (!rank_cpus.is_empty()).then(|| {
                        rank_cpus
                            .iter()
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    }),
                },
                scratch: dir.0.clone(),
            });
        } else {
            self.lab_runner = Some(LabRunner {
                lab: lab_tool.expect("checked"),
                bins: vmm.parent().map(Path::to_path_buf).unwrap_or_default(),
                images,
                stress_ng: std::env::var_os("PATH").and_then(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("stress-ng"))
                        .find(|p| p.is_file())
                }),
                scratch: dir.0.clone(),
            });
        }
        self._images_dir = Some(dir);
        Ok(())
    }
}
