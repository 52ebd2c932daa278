//! Who runs a cell: a native process, `hpmmap-vmm` on this host ([`HostVm`], one cell at a
//! time, interleaved with the native cells under the same competitors), or the nested lab
//! ([`LabRunner`], every VM cell of the plan in one L1 boot).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::child::run_child;
use crate::config::{Config, Place};
use crate::lab::{self, LabOutput, LabPlan, LabRunOutput};
use crate::model::{Cell, Interrupted, RunRecord, VmRunInfo, VmmFacts, WorkloadSize};
use crate::report::WorkloadReport;
use crate::vm::{self, VmShape};

/// A directory removed when dropped (the job images are 70+ MiB each).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        let d = std::env::temp_dir().join(format!("hpmmap-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).with_context(|| d.display().to_string())?;
        Ok(TempDir(d))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether the nested lab can run here: the lab's own answer
/// (`hpmmap_image::qemu::nested_lab_unavailable`: QEMU 8.0+ with igb, a guest kernel).
pub fn lab_prerequisites() -> Result<(), String> {
    match hpmmap_image::qemu::nested_lab_unavailable() {
        None => Ok(()),
        Some(why) => Err(why),
    }
}

/// `hpmmap-offline` arguments that reserve / give back the guest's 1 GiB pages.
pub fn offline_args(reserve: bool, mem_gib: u32) -> Vec<String> {
    vec![
        "-q".into(),
        if reserve { "reserve" } else { "release" }.into(),
        "--size".into(),
        format!("{mem_gib}G"),
    ]
}

/// 1 GiB pages reserved with `hpmmap-offline` for the run, given back when dropped.
pub struct Reservation {
    tool: PathBuf,
    mem_gib: u32,
}

impl Reservation {
    pub fn take(tool: &Path, mem_gib: u32) -> Result<Reservation> {
        let o = Command::new(tool)
            .args(offline_args(true, mem_gib))
            .output()
            .with_context(|| format!("running {}", tool.display()))?;
        if !o.status.success() {
            bail!(
                "{} reserve --size {mem_gib}G failed ({}): {}",
                tool.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(Reservation {
            tool: tool.to_path_buf(),
            mem_gib,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let st = Command::new(&self.tool)
            .args(offline_args(false, self.mem_gib))
            .status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!(
                "hpmmap-bench: giving back {} GiB of 1 GiB pages failed ({st:?}); run `{} release --size {}G`",
                self.mem_gib,
                self.tool.display(),
                self.mem_gib
            );
        }
    }
}

/// `hpmmap-vmm` on this host's KVM.
pub struct HostVm {
    pub vmm: PathBuf,
    pub images: Vec<(Config, PathBuf)>,
    pub shape: VmShape,
    pub scratch: PathBuf,
}

impl HostVm {
    pub fn image(&self, c: Config) -> Result<&Path> {
        self.images
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, p)| p.as_path())
            .ok_or_else(|| anyhow!("no job image for {}", c.name()))
    }

    /// Boots the configuration's image with the cell's workload and reads the result off
    /// the guest's serial console.
    pub fn run(
        &self,
        cell: Cell,
        size: &WorkloadSize,
        ranks: usize,
        timeout: Duration,
    ) -> Result<(WorkloadReport, VmRunInfo)> {
        let serial = self.scratch.join("serial.log");
        let report = self.scratch.join("report.json");
        let _ = std::fs::remove_file(&serial);
        let _ = std::fs::remove_file(&report);
        let args = vm::workload_args(cell, size, ranks, &[]);
        let mut cmd = Command::new(&self.vmm);
        cmd.args(vm::vmm_args(
            cell.config,
            self.image(cell.config)?,
            &self.shape,
            &args,
            &serial,
            &report,
        )?);
        let (status, _out, err) = run_child(cmd, timeout)?;
        let serial_text = std::fs::read_to_string(&serial).unwrap_or_default();
        let facts = std::fs::read_to_string(&report)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .map(|v| VmmFacts::from_json(&v))
            .unwrap_or_default();
        finish(cell.config, status.code(), &serial_text, facts, &err)
    }
}

/// A VM run's result from its VMM status, serial console and report.
fn finish(
    config: Config,
    rc: Option<i32>,
    serial: &str,
    vmm: VmmFacts,
    vmm_stderr: &str,
) -> Result<(WorkloadReport, VmRunInfo)> {
    if rc != Some(0) {
        let last = vmm_stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let what = match rc {
            Some(124) => "stopped at its time limit".to_string(),
            Some(c) => format!("hpmmap-vmm exited with {c}"),
            None => "no exit status (the lab ended first)".to_string(),
        };
        // The workload's own failure still prints its result: say whether it verified.
        let detail = match vm::parse_serial(serial, config) {
            Ok(g) if !g.report.valid => "; the workload did not verify".to_string(),
            Ok(_) => String::new(),
            Err(e) => format!("; {e}"),
        };
        bail!(
            "{what}{detail}{}",
            if last.is_empty() {
                String::new()
            } else {
                format!(" ({last})")
            }
        );
    }
    let g = vm::parse_serial(serial, config)?;
    let info = VmRunInfo {
        job_runs: g.job_runs.clone(),
        job_exit: g.job_exit,
        hpmmap_counters: g.hpmmap_counters.clone(),
        vmm,
    };
    Ok((g.report, info))
}

/// A record from one L2 run of the lab.
pub fn lab_record(r: &LabRunOutput) -> RunRecord {
    let facts = r
        .report
        .as_ref()
        .map(VmmFacts::from_json)
        .unwrap_or_default();
    let res = finish(r.config, r.rc, &r.serial, facts, &r.vmm_stderr);
    let (report, vm, error) = match res {
        Ok((rep, info)) => (Some(rep), Some(info), None),
        Err(e) => (None, None, Some(format!("{e:#}"))),
    };
    RunRecord {
        rep: r.rep,
        profile: r.profile,
        workload: r.workload,
        config: r.config,
        place: Place::Lab,
        wall_secs: r.l1_secs.unwrap_or(0.0),
        error,
        report,
        vm,
    }
}

/// The nested lab: `hpmmap-lab` and what it needs.
pub struct LabRunner {
    pub lab: PathBuf,
    /// Directory holding the `hpmmap-vmm` L1 carries.
    pub bins: PathBuf,
    pub images: Vec<(Config, PathBuf)>,
    pub stress_ng: Option<PathBuf>,
    pub scratch: PathBuf,
}

/// What the lab pass gave back.
pub struct LabResult {
    /// Every boot's runs (a run cut short by a crashed L1 and redone is not kept).
    pub output: LabOutput,
    pub records: Vec<RunRecord>,
    /// Every boot's raw output, one after the other.
    pub raw: String,
    pub elapsed: Duration,
    pub status: Option<i32>,
    /// What happened to an L1 that stopped before its plan's end.
    pub boot_notes: Vec<String>,
}

/// L1 boots one lab pass may take (the first, and one more after each crash).
pub const LAB_BOOTS: usize = 3;

/// The line of the lab's stderr (L1's console tail) that says why L1 stopped.
pub fn l1_failure_line(stderr: &str) -> Option<String> {
    let keys = ["Kernel panic", "BUG:", "did not finish", "hpmmap-lab:"];
    keys.iter().find_map(|k| {
        stderr
            .lines()
            .find(|l| l.contains(k))
            .map(|l| l.trim().to_string())
    })
}

/// Prints a line for each L2 run L1 finishes, read from the growing `output.log`, until
/// `done`.
fn show_progress(log: &Path, total: usize, done: &std::sync::atomic::AtomicBool) {
    let t0 = Instant::now();
    let mut shown = 0;
    let mut current = String::new();
    loop {
        let finished = done.load(std::sync::atomic::Ordering::SeqCst);
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let mut seen = 0;
        for l in text.lines() {
            let l = l.trim_end_matches('\r');
            if let Some(rest) = l.strip_prefix("HPMMAP-BENCH-RUN-BEGIN ") {
                current = rest.to_string();
            } else if let Some(rest) = l.strip_prefix("HPMMAP-BENCH-RUN-END ") {
                seen += 1;
                if seen > shown {
                    let el = t0.elapsed().as_secs_f64();
                    eprintln!(
                        "[bench] lab [{seen}/{total}, {:.0} min in, eta {:.0} min] {current}: {rest}",
                        el / 60.0,
                        el / seen as f64 * (total.saturating_sub(seen)) as f64 / 60.0
                    );
                    shown = seen;
                }
            }
        }
        if finished {
            return;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

impl LabRunner {
    pub fn args(&self, plan: &LabPlan) -> Vec<String> {
        lab::lab_args(
            plan,
            &self.bins,
            &self.scratch.join("lab-work"),
            &self.images,
            self.stress_ng.as_deref(),
            &self.scratch.join("plan.sh"),
        )
    }

    fn boot(&self, plan: &LabPlan) -> Result<(std::process::ExitStatus, String, String)> {
        std::fs::write(self.scratch.join("plan.sh"), plan.script()?)?;
        let mut cmd = Command::new(&self.lab);
        cmd.args(self.args(plan));
        let limit = Duration::from_secs(plan.lab_timeout_secs() + 120);
        let work = self.scratch.join("lab-work");
        let _ = std::fs::remove_dir_all(&work);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let progress = {
            let done = done.clone();
            let log = work.join("output.log");
            let total = plan.cells.len();
            std::thread::spawn(move || show_progress(&log, total, &done))
        };
        let r = run_child(cmd, limit);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = progress.join();
        // hpmmap-lab prints L1's output only when L1 ended normally; after a crash it is
        // still in the work directory's output.log, and the finished runs in it count.
        let log = std::fs::read(work.join("output.log"))
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default();
        let _ = std::fs::remove_dir_all(&work);
        match r {
            Ok((st, out, err)) => Ok((st, if out.trim().is_empty() { log } else { out }, err)),
            Err(e) if e.downcast_ref::<Interrupted>().is_some() => Err(e),
            Err(e) => Err(e.context("running hpmmap-lab")),
        }
    }

    /// The whole plan in one L1 boot. Nested virtualization under TCG now and then brings
    /// L1 down (kernel oopses in L1 while its KVM runs an L2 guest, more often under the
    /// profiles' load): then another boot runs what the last did not finish, up to
    /// [`LAB_BOOTS`] in all. Runs still missing after that are recorded as failed.
    pub fn run(&self, plan: &LabPlan) -> Result<LabResult> {
        let t0 = Instant::now();
        let mut output = LabOutput::default();
        let mut raw = String::new();
        let mut notes = Vec::new();
        let mut status = None;
        let mut remaining = plan.clone();
        for boot in 1..=LAB_BOOTS {
            let (st, out, err) = self.boot(&remaining)?;
            status = st.code();
            raw += &format!("=== hpmmap-bench: L1 boot {boot} ({st}) ===\n{out}");
            let o = lab::parse_output(&out)?;
            if output.l1.is_empty() {
                output.l1 = o.l1.clone();
            }
            output.profile_stops.extend(o.profile_stops.iter().cloned());
            output.done = o.done;
            let last = o.done || boot == LAB_BOOTS;
            let finished: Vec<LabRunOutput> = o
                .runs
                .iter()
                .filter(|r| last || r.rc.is_some())
                .cloned()
                .collect();
            if !o.done {
                let why = l1_failure_line(&err).unwrap_or_else(|| format!("hpmmap-lab {st}"));
                let tail: Vec<&str> = err.lines().rev().take(40).collect();
                eprintln!(
                    "[bench] lab: L1 boot {boot} stopped after {} of {} runs: {why}\n{}",
                    o.runs.iter().filter(|r| r.rc.is_some()).count(),
                    remaining.cells.len(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
                notes.push(format!(
                    "L1 boot {boot} stopped after {} of its {} runs ({why})",
                    o.runs.iter().filter(|r| r.rc.is_some()).count(),
                    remaining.cells.len()
                ));
            }
            output.runs.extend(finished);
            if last {
                break;
            }
            remaining.cells.retain(|c| {
                !output.runs.iter().any(|r| {
                    r.rep == c.rep
                        && r.profile == c.profile
                        && r.workload == c.workload
                        && r.config == c.config
                })
            });
            if remaining.cells.is_empty() {
                output.done = true;
                break;
            }
            notes.push(format!(
                "L1 boot {} ran the {} remaining run(s)",
                boot + 1,
                remaining.cells.len()
            ));
        }
        let mut records: Vec<RunRecord> = output.runs.iter().map(lab_record).collect();
        for c in &plan.cells {
            let seen = output.runs.iter().any(|r| {
                r.rep == c.rep
                    && r.profile == c.profile
                    && r.workload == c.workload
                    && r.config == c.config
            });
            if !seen {
                records.push(RunRecord {
                    rep: c.rep,
                    profile: c.profile,
                    workload: c.workload,
                    config: c.config,
                    place: Place::Lab,
                    wall_secs: 0.0,
                    error: Some(format!(
                        "not run: L1 stopped before it in each of {LAB_BOOTS} boots"
                    )),
                    report: None,
                    vm: None,
                });
            }
        }
        Ok(LabResult {
            output,
            records,
            raw,
            elapsed: t0.elapsed(),
            status,
            boot_notes: notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1_failure_line_finds_the_oops() {
        let tail = "[   18.78] BUG: TASK stack guard page was hit at 00000000f360c345\n[   18.79] Kernel panic - not syncing: corrupted stack end detected inside scheduler\n";
        assert_eq!(
            l1_failure_line(tail).unwrap(),
            "[   18.79] Kernel panic - not syncing: corrupted stack end detected inside scheduler"
        );
        assert_eq!(l1_failure_line("nothing\n"), None);
    }

    #[test]
    fn offline_reserves_and_gives_back_the_guest_size() {
        assert_eq!(offline_args(true, 2), ["-q", "reserve", "--size", "2G"]);
        assert_eq!(offline_args(false, 3), ["-q", "release", "--size", "3G"]);
    }
}
