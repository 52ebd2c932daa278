//! The nested-lab pass: every VM cell of the plan in one `hpmmap-lab` boot (more only
//! after an L1 crash), after the host's cells; its records, raw output and header section.

use std::path::Path;

use anyhow::Result;

use super::options::Options;
use super::plan::{cells, schedule};
use crate::config::{Config, LAB_LABEL};
use crate::lab::{self, LabCell, LabPlan};
use crate::model::{Profile, RunRecord};
use crate::output::write_atomic;
use crate::runner::LabRunner;
use crate::table::LabInfo;
use crate::vm::VmShape;

/// The VM cells in one nested-lab boot; their records join `records`.
pub fn run_lab(
    opts: &Options,
    l: &LabRunner,
    configs: &[Config],
    shape: &VmShape,
    logs: &Path,
    records: &mut Vec<RunRecord>,
) -> Result<LabInfo> {
    let cells = cells(&opts.workloads, configs);
    let plan = LabPlan {
        cells: schedule(opts.lab_reps, &opts.profiles, &cells)
            .into_iter()
            .flat_map(|(rep, profile, order)| {
                order.into_iter().map(move |c| LabCell {
                    rep,
                    profile,
                    workload: c.workload,
                    config: c.config,
                })
            })
            .collect(),
        sizes: opts.lab_sizes.clone(),
        // L2 has two vCPUs: one rank, the guest kernel beside it.
        ranks: 1,
        shape: shape.clone(),
        warmup_secs: opts.warmup.as_secs_f64().ceil().max(1.0) as u32,
        // Runs take 10-40 s here; a limit well above that, but not so far that a hung L2
        // boot (retried once) costs much.
        run_timeout_secs: 180,
        l1_cpus: 2,
    };
    eprintln!(
        "[bench] nested lab: {} L2 runs in one L1 boot (QEMU/TCG; roughly 15-30 s each); hpmmap-lab {}",
        plan.cells.len(),
        l.args(&plan).join(" ")
    );
    let res = l.run(&plan)?;
    write_atomic(&logs.join("lab-output.txt"), &res.raw)?;
    for r in &res.records {
        match (&r.report, &r.error) {
            (Some(w), _) => eprintln!(
                "[bench] lab rep {} {:>3} {:>6}/{:<9} verified={} measured-phase faults {} (setup {}){}",
                r.rep + 1,
                r.profile.name(),
                r.workload.name(),
                r.config.name(),
                w.valid,
                w.minflt + w.majflt,
                w.setup_minflt + w.setup_majflt,
                r.vm
                    .as_ref()
                    .and_then(|v| v.hpmmap_counters.iter().find(|(k, _)| k == "faults"))
                    .map_or(String::new(), |(_, v)| format!(", hpmmap module faults {v}"))
            ),
            (None, e) => eprintln!(
                "[bench] lab rep {} {} {}/{} FAILED: {}",
                r.rep + 1,
                r.profile.name(),
                r.workload.name(),
                r.config.name(),
                e.as_deref().unwrap_or("")
            ),
        }
    }
    records.extend(res.records);
    let l1 = res
        .output
        .l1
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut notes = vec![
        "the paper's competing kernel build cannot run in L1 (no compiler there): profiles A and B are stress-ng inside L1".to_string(),
        "L2 guests' RAM is boot-reserved 1 GiB hugetlb pages of L1, prefaulted and locked by hpmmap-vmm, so L1's memory pressure does not reach it; the difference between the rows is the guest's own memory management".to_string(),
    ];
    notes.extend(res.boot_notes.iter().cloned());
    let retried = res.output.runs.iter().filter(|r| r.retries > 0).count();
    if retried > 0 {
        notes.push(format!(
            "{retried} L2 boot(s) failed before the guest's init ran (a triple fault, hpmmap-vmm exit 72, or a boot hung until the run's limit; the intermittent nested-boot failures under TCG) and were booted once more; the job had not started"
        ));
    }
    if !res.output.done {
        notes.push(format!(
            "the lab stopped before the end of its plan (hpmmap-lab status {:?})",
            res.status
        ));
    }
    Ok(LabInfo {
        label: LAB_LABEL.to_string(),
        l1,
        reps: opts.lab_reps,
        ranks: plan.ranks,
        sizes: opts
            .workloads
            .iter()
            .map(|w| (w.name().to_string(), opts.lab_sizes[w].clone()))
            .collect(),
        shape: shape.clone(),
        competitors: [Profile::A, Profile::B]
            .into_iter()
            .filter(|p| opts.profiles.contains(p))
            .map(|p| {
                format!(
                    "profile {}: `stress-ng {}` in L1",
                    p.name(),
                    lab::stress_args(p).unwrap_or("")
                )
            })
            .collect(),
        competitor_stops: res.output.profile_stops.clone(),
        elapsed_secs: res.elapsed.as_secs_f64(),
        complete: res.output.done,
        notes,
    })
}
