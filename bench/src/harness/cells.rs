//! Running the host's plan: each profile's competitors started (and given their warm-up),
//! every cell of it run as a native process or as `hpmmap-vmm` on this host's KVM, the
//! competitors stopped. A failed cell is a record with its error; only a stop or a
//! competitor that died ends the pass.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use super::host::Host;
use super::options::Options;
use super::plan::Step;
use crate::child::run_child;
use crate::competitor::Competitor;
use crate::config::Place;
use crate::model::{Cell, Interrupted, Profile, RunRecord, VmRunInfo, WorkloadSize};
use crate::report::WorkloadReport;
use crate::runner::HostVm;
use crate::signals::{check_stop, sleep_checked};
use crate::vm;

/// What the cells run with.
pub struct CellRunner<'a> {
    pub opts: &'a Options,
    pub host: &'a Host,
    /// `hpmmap-vmm` on this host, when the VM cells run here.
    pub host_vm: Option<&'a HostVm>,
    /// The `hpmmap-workload` binary of the native cells.
    pub bin: &'a Path,
}

/// Cells done and to do, for the progress lines.
struct Progress {
    started: Instant,
    done: usize,
    total: usize,
}

impl CellRunner<'_> {
    /// Every step of the host's plan, in order.
    pub fn run(&self, plan: &[Step]) -> Result<Vec<RunRecord>> {
        let total_runs: usize = plan.iter().map(|(_, _, c)| c.len()).sum();
        let mut records = Vec::with_capacity(total_runs);
        let mut progress = Progress {
            started: Instant::now(),
            done: 0,
            total: total_runs,
        };
        for (rep, profile, order) in plan {
            check_stop()?;
            let mut running = self.start_profile(*rep, *profile)?;
            for cell in order {
                check_stop()?;
                self.check_competitors(&running)?;
                records.push(self.run_cell(*rep, *profile, *cell, &mut progress)?);
            }
            for c in running.iter_mut() {
                c.stop()?;
            }
        }
        Ok(records)
    }

    /// The profile's competitors, running past their warm-up.
    fn start_profile(&self, rep: usize, profile: Profile) -> Result<Vec<Competitor>> {
        let opts = self.opts;
        let running = self.host.profiles.start(profile)?;
        if !running.is_empty() {
            eprintln!(
                "[bench] rep {}/{} profile {}: started {} (warm-up {:.0} s)",
                rep + 1,
                opts.reps,
                profile.name(),
                running
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                opts.warmup.as_secs_f64()
            );
            sleep_checked(opts.warmup)?;
        }
        Ok(running)
    }

    /// A competitor that exited on its own would leave the cell under less load than its
    /// profile says: the run stops.
    fn check_competitors(&self, running: &[Competitor]) -> Result<()> {
        for c in running {
            if !c.is_running() {
                bail!(
                    "competitor {} exited on its own (see {})",
                    c.name(),
                    self.host.logs.display()
                );
            }
        }
        Ok(())
    }

    /// One cell: its record, whether it succeeded or not; an error only for a stop.
    fn run_cell(
        &self,
        rep: usize,
        profile: Profile,
        cell: Cell,
        progress: &mut Progress,
    ) -> Result<RunRecord> {
        let opts = self.opts;
        let size = &opts.sizes[&cell.workload];
        let t0 = Instant::now();
        let (res, place): (Result<(WorkloadReport, Option<VmRunInfo>)>, Place) =
            match (self.host_vm, cell.config.is_vm()) {
                (Some(h), true) => (
                    h.run(cell, size, opts.ranks, opts.run_timeout)
                        .map(|(r, i)| (r, Some(i))),
                    Place::HostVm,
                ),
                _ => (
                    run_workload(
                        self.bin,
                        cell,
                        size,
                        opts.ranks,
                        &self.host.rank_cpus,
                        opts.run_timeout,
                    )
                    .map(|r| (r, None)),
                    Place::Native,
                ),
            };
        let wall = t0.elapsed().as_secs_f64();
        progress.done += 1;
        let (done, total_runs) = (progress.done, progress.total);
        let elapsed = progress.started.elapsed().as_secs_f64();
        let eta = elapsed / done as f64 * (total_runs - done) as f64;
        let rec = match res {
            Ok((r, vm_info)) => {
                eprintln!(
                    "[bench] [{done}/{total_runs}, eta {:.0} min] rep {} {:>3} {:>6}/{:<8} {:.3} s measured, {} = {:.4} {}, faults {}{}",
                    eta / 60.0,
                    rep + 1,
                    profile.name(),
                    cell.workload.name(),
                    cell.config.name(),
                    r.total_secs(),
                    r.figure_name,
                    r.figure,
                    r.unit,
                    r.minflt + r.majflt,
                    if r.valid { "" } else { "  VERIFICATION FAILED" }
                );
                RunRecord {
                    rep,
                    profile,
                    workload: cell.workload,
                    config: cell.config,
                    place,
                    wall_secs: wall,
                    error: None,
                    report: Some(r),
                    vm: vm_info,
                }
            }
            Err(e) => {
                if e.downcast_ref::<Interrupted>().is_some() {
                    return Err(e);
                }
                eprintln!(
                    "[bench] [{done}/{total_runs}] rep {} {} {}/{} FAILED: {e:#}",
                    rep + 1,
                    profile.name(),
                    cell.workload.name(),
                    cell.config.name()
                );
                RunRecord {
                    rep,
                    profile,
                    workload: cell.workload,
                    config: cell.config,
                    place,
                    wall_secs: wall,
                    error: Some(format!("{e:#}")),
                    report: None,
                    vm: None,
                }
            }
        };
        Ok(rec)
    }
}

/// Runs one native workload process.
fn run_workload(
    bin: &Path,
    cell: Cell,
    size: &WorkloadSize,
    ranks: usize,
    cpus: &[usize],
    timeout: Duration,
) -> Result<WorkloadReport> {
    let mut cmd = Command::new(bin);
    cmd.args(vm::workload_args(cell, size, ranks, cpus));
    let (status, out, err) = run_child(cmd, timeout)?;
    if !status.success() {
        let last = err.lines().last().unwrap_or("").to_string();
        bail!("exited with {status}: {last}");
    }
    WorkloadReport::parse(&out).map_err(|e| anyhow!("unreadable output: {e}"))
}
