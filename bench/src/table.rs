//! The results: rows aggregated from the runs, written as markdown, JSON and SVG.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::harness::{Profile, RunRecord, WorkloadSize};
use crate::memory::AllocMode;
use crate::platform::Platform;
use crate::stats::Summary;
use crate::workloads::Workload;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Header {
    pub platform: Platform,
    pub started_utc: String,
    pub finished_utc: String,
    pub command: String,
    pub note: Option<String>,
    pub load_start: String,
    pub load_end: String,
    pub ranks: usize,
    pub reps: usize,
    pub sizes: Vec<(String, WorkloadSize)>,
    pub competitors: Vec<String>,
    /// (competitor, builds completed, builds failed) over the whole run.
    pub builds_completed: Vec<(String, u64, u64)>,
    pub vm_rows_absent: Option<String>,
    pub notes: Vec<String>,
    pub quick: bool,
}

/// One (workload, configuration, profile) cell over all its repetitions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub workload: Workload,
    pub config: AllocMode,
    pub profile: Profile,
    pub runs: usize,
    pub runs_failed: usize,
    pub all_valid: bool,
    /// Measured-phase runtime of each run (sum of its iteration times), seconds.
    pub runtime: Option<Summary>,
    /// Every iteration of every run, seconds.
    pub iteration: Option<Summary>,
    /// The workload's own figure (s/iter, GB/s, GUP/s, ns) over the runs.
    pub figure: Option<Summary>,
    pub figure_unit: String,
    /// Page faults (minor + major) in the measured phase, mean per run and max.
    pub faults_mean: f64,
    pub faults_max: u64,
    /// Faults while allocating and initialising, mean per run.
    pub setup_faults_mean: f64,
    /// Mean runtime over the same workload and configuration's isolated mean runtime.
    pub slowdown: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub header: Header,
    pub rows: Vec<Row>,
    pub runs: Vec<RunRecord>,
}

impl Results {
    pub fn build(header: Header, runs: Vec<RunRecord>) -> Results {
        let mut groups: BTreeMap<(usize, usize, Profile), Vec<&RunRecord>> = BTreeMap::new();
        let widx = |w: Workload| Workload::ALL.iter().position(|x| *x == w).unwrap_or(0);
        let cidx = |c: AllocMode| AllocMode::ALL.iter().position(|x| *x == c).unwrap_or(0);
        for r in &runs {
            groups
                .entry((widx(r.workload), cidx(r.config), r.profile))
                .or_default()
                .push(r);
        }
        let mut rows: Vec<Row> = groups
            .into_iter()
            .map(|((w, c, profile), rs)| {
                let ok: Vec<_> = rs.iter().filter_map(|r| r.report.as_ref()).collect();
                let runtime: Vec<f64> = ok.iter().map(|r| r.total_secs()).collect();
                let iters: Vec<f64> = ok
                    .iter()
                    .flat_map(|r| r.iter_secs.iter().copied())
                    .collect();
                let figures: Vec<f64> = ok.iter().map(|r| r.figure).collect();
                let faults: Vec<u64> = ok.iter().map(|r| r.minflt + r.majflt).collect();
                let setup: Vec<u64> = ok.iter().map(|r| r.setup_minflt + r.setup_majflt).collect();
                let mean_u = |v: &[u64]| {
                    if v.is_empty() {
                        0.0
                    } else {
                        v.iter().sum::<u64>() as f64 / v.len() as f64
                    }
                };
                Row {
                    workload: Workload::ALL[w],
                    config: AllocMode::ALL[c],
                    profile,
                    runs: rs.len(),
                    runs_failed: rs.len() - ok.len(),
                    all_valid: !ok.is_empty() && ok.len() == rs.len() && ok.iter().all(|r| r.valid),
                    runtime: Summary::of(&runtime),
                    iteration: Summary::of(&iters),
                    figure: Summary::of(&figures),
                    figure_unit: ok.first().map(|r| r.unit.clone()).unwrap_or_default(),
                    faults_mean: mean_u(&faults),
                    faults_max: faults.iter().copied().max().unwrap_or(0),
                    setup_faults_mean: mean_u(&setup),
                    slowdown: None,
                }
            })
            .collect();
        let iso: BTreeMap<(Workload, AllocMode), f64> = rows
            .iter()
            .filter(|r| r.profile == Profile::Iso)
            .filter_map(|r| r.runtime.map(|s| ((r.workload, r.config), s.mean)))
            .collect();
        for r in &mut rows {
            if let (Some(rt), Some(base)) = (r.runtime, iso.get(&(r.workload, r.config))) {
                r.slowdown = Some(rt.mean / base);
            }
        }
        Results { header, rows, runs }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("serialisable")
    }

    pub fn to_markdown(&self) -> String {
        let h = &self.header;
        let mut s = String::new();
        s += "# hpmmap isolation benchmark\n\n";
        s += &format!("**Platform:** {}\n\n", h.platform.line());
        if let Some(n) = &h.note {
            s += &format!("**Note:** {n}\n\n");
        }
        s += &format!(
            "Run {} → {} UTC{}; load average {} at start, {} at end. Command: `{}`.\n\n",
            h.started_utc,
            h.finished_utc,
            if h.quick { " (--quick)" } else { "" },
            h.load_start,
            h.load_end,
            h.command
        );
        s += &format!("{} rank(s) per run, {} repetition(s), configurations and profiles interleaved across repetitions. Sizes per rank (weak scaling): ", h.ranks, h.reps);
        s += &h
            .sizes
            .iter()
            .map(|(w, z)| format!("{w} {} MiB × {} iterations", z.mem_per_rank >> 20, z.iters))
            .collect::<Vec<_>>()
            .join(", ");
        s += ".\n\nProfiles: `iso` nothing else running; `A` one build; `B` two builds + stress-ng.\n";
        for c in &h.competitors {
            s += &format!("- {c}\n");
        }
        for (name, ok, failed) in &h.builds_completed {
            s += &format!("- {name}: {ok} build(s) completed during the run ({failed} failed)\n");
        }
        s += "\nConfigurations (native, on this host): `thp` = madvise(MADV_HUGEPAGE); `hugetlb` = MAP_HUGETLB 2 MiB; `populate` = MAP_POPULATE on 4 KiB pages; `plain` = demand-paged 4 KiB.\n\n";
        if let Some(v) = &h.vm_rows_absent {
            s += &format!("**VM rows absent:** {v}.\n\n");
        }
        for n in &h.notes {
            s += &format!("**Note:** {n}\n\n");
        }
        s += "Runtime = measured phase of one run (sum of its iteration times); iteration statistics over every iteration of every run; faults = minor + major page faults of all ranks in the measured phase (getrusage), mean per run (max); slowdown = mean runtime / the same configuration's isolated mean runtime.\n\n";
        let mut last_w = None;
        for r in &self.rows {
            if last_w != Some(r.workload) {
                last_w = Some(r.workload);
                s += &format!("\n## {}\n\n", r.workload.name());
                s += "| config | profile | runs | runtime mean ± sd (s) | runtime CoV | iter median (ms) | iter mean (ms) | iter sd (ms) | iter CoV | iter p99 (ms) | figure | faults/run (max) | slowdown |\n";
                s += "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
            }
            let ms = |x: f64| format!("{:.3}", x * 1e3);
            let dash = || "–".to_string();
            let (rt, rcov) = r.runtime.map_or((dash(), dash()), |x| {
                (
                    format!("{:.3} ± {:.3}", x.mean, x.stdev),
                    format!("{:.2} %", x.cov * 100.0),
                )
            });
            let it = r.iteration;
            let fig = r
                .figure
                .map_or(dash(), |f| format!("{} {}", fmt_sig(f.mean), r.figure_unit));
            s += &format!(
                "| {} | {} | {}{}{} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} ({}) | {} |\n",
                r.config.name(),
                r.profile.name(),
                r.runs - r.runs_failed,
                if r.runs_failed > 0 {
                    format!(" ({} failed)", r.runs_failed)
                } else {
                    String::new()
                },
                if r.all_valid || r.runs == r.runs_failed {
                    ""
                } else {
                    " ⚠ unverified"
                },
                rt,
                rcov,
                it.map_or(dash(), |x| ms(x.median)),
                it.map_or(dash(), |x| ms(x.mean)),
                it.map_or(dash(), |x| ms(x.stdev)),
                it.map_or(dash(), |x| format!("{:.2} %", x.cov * 100.0)),
                it.map_or(dash(), |x| ms(x.p99)),
                fig,
                r.faults_mean,
                r.faults_max,
                r.slowdown.map_or(dash(), |x| format!("{x:.3}")),
            );
        }
        let failures: Vec<&RunRecord> = self.runs.iter().filter(|r| r.error.is_some()).collect();
        if !failures.is_empty() {
            s += "\n## Failed runs\n\n";
            for f in failures {
                s += &format!(
                    "- rep {} {} {}/{}: {}\n",
                    f.rep + 1,
                    f.profile.name(),
                    f.workload.name(),
                    f.config.name(),
                    f.error.as_deref().unwrap_or("")
                );
            }
        }
        s += "\nPlot: `results.svg`. Raw per-iteration times of every run: `results.json`.\n";
        s
    }
}

/// Three significant digits, plain notation for the usual magnitudes.
pub fn fmt_sig(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 0.001 {
        format!("{x:.4}")
    } else {
        format!("{x:.3e}")
    }
}

/// Writes `path` through a temporary file and a rename: never half-written.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// results.md, results.json and results.svg in `dir`.
pub fn write_all(dir: &Path, r: &Results) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join("results.json"), &r.to_json())?;
    write_atomic(&dir.join("results.svg"), &crate::svg::plot(r))?;
    write_atomic(&dir.join("results.md"), &r.to_markdown())?;
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn format_utc(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
