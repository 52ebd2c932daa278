//! The results: rows aggregated from the runs, as markdown and JSON (the plot is
//! [`crate::svg`]'s, the files [`crate::output`]'s).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Place};
use crate::lab::ProfileStop;
use crate::model::{Profile, RunRecord, WorkloadSize};
use crate::platform::Platform;
use crate::stats::Summary;
use crate::vm::VmShape;
use crate::workloads::Workload;

/// The clocks the native and lab tables' times are on (issue 17: every table says which).
pub const CLOCK_NATIVE: &str = "native rows: elapsed time (`Instant`, CLOCK_MONOTONIC) on this host, shared with other work: it moves with host load and is not reproducible";
pub const LAB_CLOCK: &str =
    "QEMU/TCG's emulated time of a nested guest, not speed (only faults and verification count)";

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
    /// Where the VM rows ran ([`Place::label`]), when they ran.
    #[serde(default)]
    pub vm_place: Option<String>,
    /// The nested-lab pass, when the VM rows ran there.
    #[serde(default)]
    pub lab: Option<LabInfo>,
    pub notes: Vec<String>,
    pub quick: bool,
}

/// The nested-lab pass: its own sizes, repetitions, competitors and L1.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabInfo {
    pub label: String,
    /// L1 as its script saw it (kernel, CPUs, 1 GiB pages, stress-ng).
    pub l1: String,
    pub reps: usize,
    pub ranks: usize,
    pub sizes: Vec<(String, WorkloadSize)>,
    pub shape: VmShape,
    pub competitors: Vec<String>,
    pub competitor_stops: Vec<ProfileStop>,
    pub elapsed_secs: f64,
    pub complete: bool,
    pub notes: Vec<String>,
}

/// One (workload, configuration, profile) cell over all its repetitions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub workload: Workload,
    pub config: Config,
    pub profile: Profile,
    /// Where it was measured; lab rows' times are emulated and not speed figures.
    #[serde(default)]
    pub place: Place,
    /// [`Place::label`], spelled out in the JSON so no reader misses it.
    #[serde(default)]
    pub measured_on: String,
    #[serde(default)]
    pub speed_comparable: bool,
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
    /// Mean runtime over the same workload and configuration's isolated mean runtime
    /// (none for lab rows: emulated times are no speed figure).
    pub slowdown: Option<f64>,
    /// VM rows under hpmmap: the most faults the hpmmap module counted inside its
    /// mappings in one run (sysfs `faults`).
    #[serde(default)]
    pub hpmmap_module_faults_max: Option<u64>,
    /// VM rows: the fewest 1 GiB pages KVM mapped for guest RAM in one run.
    #[serde(default)]
    pub kvm_pages_1g_min: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub header: Header,
    pub rows: Vec<Row>,
    pub runs: Vec<RunRecord>,
}

impl Results {
    pub fn build(header: Header, runs: Vec<RunRecord>) -> Results {
        let mut groups: BTreeMap<(Place, usize, usize, Profile), Vec<&RunRecord>> = BTreeMap::new();
        let widx = |w: Workload| Workload::ALL.iter().position(|x| *x == w).unwrap_or(0);
        let cidx = |c: Config| Config::ALL.iter().position(|x| *x == c).unwrap_or(0);
        for r in &runs {
            // Native and host-VM rows share tables; lab rows are kept apart.
            let group = if r.place == Place::Lab {
                Place::Lab
            } else {
                Place::Native
            };
            groups
                .entry((group, widx(r.workload), cidx(r.config), r.profile))
                .or_default()
                .push(r);
        }
        let mut rows: Vec<Row> = groups
            .into_iter()
            .map(|((_, w, c, profile), rs)| {
                let place = rs[0].place;
                let counter = |r: &&RunRecord, k: &str| -> Option<u64> {
                    r.vm.as_ref()?
                        .hpmmap_counters
                        .iter()
                        .find(|(key, _)| key == k)?
                        .1
                        .parse()
                        .ok()
                };
                let module_faults = rs.iter().filter_map(|r| counter(r, "faults")).max();
                let pages_1g = rs.iter().filter_map(|r| r.vm.as_ref()?.vmm.pages_1g).min();
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
                    config: Config::ALL[c],
                    profile,
                    place,
                    measured_on: place.label().to_string(),
                    speed_comparable: place.speed_comparable(),
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
                    hpmmap_module_faults_max: module_faults,
                    kvm_pages_1g_min: pages_1g,
                }
            })
            .collect();
        let iso: BTreeMap<(Workload, Config), f64> = rows
            .iter()
            .filter(|r| r.profile == Profile::Iso && r.speed_comparable)
            .filter_map(|r| r.runtime.map(|s| ((r.workload, r.config), s.mean)))
            .collect();
        for r in rows.iter_mut().filter(|r| r.speed_comparable) {
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
        s += &format!("**Clock:** {CLOCK_NATIVE}; VM rows in the nested lab: {LAB_CLOCK}. The deterministic figures are on the instruction-count clock: `bench/results/icount/results.md` (`hpmmap-bench icount`).\n\n");
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
        let on_host = self.runs.iter().any(|r| r.place != Place::Lab);
        if on_host {
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
                s += &format!(
                    "- {name}: {ok} build(s) completed during the run ({failed} failed)\n"
                );
            }
        } else {
            s += "No run on this host in this run: only VM configurations, all in the nested lab (its own sizes, repetitions and competitors below).\n";
        }
        s += "\nConfigurations (native, on this host): `thp` = madvise(MADV_HUGEPAGE); `hugetlb` = MAP_HUGETLB 2 MiB; `populate` = MAP_POPULATE on 4 KiB pages; `plain` = demand-paged 4 KiB.\n";
        s += &format!(
            "VM configurations: `vm-thp` = {}; `vm-hpmmap` = {}.\n\n",
            Config::VmThp.describe(),
            Config::VmHpmmap.describe()
        );
        if let Some(v) = &h.vm_place {
            s += &format!("**VM rows measured on:** {v}.\n\n");
        }
        if let Some(v) = &h.vm_rows_absent {
            s += &format!("**VM rows absent:** {v}.\n\n");
        }
        for n in &h.notes {
            s += &format!("**Note:** {n}\n\n");
        }
        if on_host {
            s += "Runtime = measured phase of one run (sum of its iteration times); iteration statistics over every iteration of every run; faults = minor + major page faults of all ranks in the measured phase (getrusage), mean per run (max); slowdown = mean runtime / the same configuration's isolated mean runtime.\n\n";
        }
        let mut last_w = None;
        for r in self.rows.iter().filter(|r| r.place != Place::Lab) {
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
        if self.rows.iter().any(|r| r.place == Place::Lab) {
            s += &self.lab_markdown(h.lab.as_ref());
        }
        let failures: Vec<&RunRecord> = self.runs.iter().filter(|r| r.error.is_some()).collect();
        if !failures.is_empty() {
            s += "\n## Failed runs\n\n";
            for f in failures {
                s += &format!(
                    "- rep {} {} {}/{}{}: {}\n",
                    f.rep + 1,
                    f.profile.name(),
                    f.workload.name(),
                    f.config.name(),
                    if f.place == Place::Lab {
                        " (nested lab)"
                    } else {
                        ""
                    },
                    f.error.as_deref().unwrap_or("")
                );
            }
        }
        s += "\nPlot: `results.svg`. Raw per-iteration times of every run: `results.json`.\n";
        s
    }
}

impl Results {
    /// The lab's section: its own header, then per workload the behaviour (verification,
    /// faults, the hpmmap module's and KVM's counters) and the emulated times, no slowdown.
    fn lab_markdown(&self, lab: Option<&LabInfo>) -> String {
        let mut s = format!("\n## VM rows: {}\n\n", crate::config::LAB_LABEL);
        s += "**These rows ran in the nested lab** (`hpmmap-lab`: QEMU/TCG emulating L1, a real KVM with nested paging inside it, `hpmmap-vmm` booting each job image as an L2 guest). Every time in them is an emulated time, 50-100x slower than hardware and distorted by the emulation: **they are no speed figure**, are not compared with the native rows, and get no slowdown. What they show is behaviour: whether the workload verified, and the page faults its measured phase took.\n\n";
        if let Some(lab) = lab {
            s += &lab_setup(lab);
        }
        s += "\nFaults = minor + major page faults of the workload in its measured phase (getrusage inside L2), mean per run (max); setup = while allocating and initialising; hpmmap faults = the module's own count of faults inside hpmmap mappings (sysfs, max per run); pages_1g = KVM's 1 GiB mappings of guest RAM (fewest in a run; a GiB the guest never touched is not mapped).\n";
        let mut last_w = None;
        for r in self.rows.iter().filter(|r| r.place == Place::Lab) {
            if last_w != Some(r.workload) {
                last_w = Some(r.workload);
                s += &format!("\n### {} (nested lab, emulated)\n\n", r.workload.name());
                s += "| config | profile | runs | verified | measured-phase faults/run (max) | setup faults/run | hpmmap faults (max) | KVM pages_1g | emulated runtime mean ± sd (s) | emulated iter median / mean / sd / CoV / p99 (ms) | slowdown |\n";
                s += "|---|---|---|---|---|---|---|---|---|---|---|\n";
            }
            let ok = r.runs - r.runs_failed;
            let dash = "–".to_string();
            s += &format!(
                "| {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} | n/a (emulated) |\n",
                r.config.name(),
                r.profile.name(),
                ok,
                if r.runs_failed > 0 {
                    format!(" ({} failed)", r.runs_failed)
                } else {
                    String::new()
                },
                if ok == 0 {
                    "–"
                } else if r.all_valid {
                    "yes"
                } else {
                    "**no**"
                },
                if ok == 0 {
                    dash.clone()
                } else {
                    format!("{:.0} ({})", r.faults_mean, r.faults_max)
                },
                if ok == 0 {
                    dash.clone()
                } else {
                    format!("{:.0}", r.setup_faults_mean)
                },
                r.hpmmap_module_faults_max
                    .map_or(dash.clone(), |x| x.to_string()),
                r.kvm_pages_1g_min.map_or(dash.clone(), |x| x.to_string()),
                r.runtime
                    .map_or(dash.clone(), |x| format!("{:.3} ± {:.3}", x.mean, x.stdev)),
                r.iteration.map_or(dash, |x| format!(
                    "{:.1} / {:.1} / {:.1} / {:.1} % / {:.1}",
                    x.median * 1e3,
                    x.mean * 1e3,
                    x.stdev * 1e3,
                    x.cov * 100.0,
                    x.p99 * 1e3
                )),
            );
        }
        s += "\nRaw L1 output of the run (every guest's serial console and hpmmap-vmm report): `logs/lab-output.txt`.\n";
        s
    }
}

/// The lab pass's setup lines: L1, the L2 guest, sizes, competitors, notes.
fn lab_setup(lab: &LabInfo) -> String {
    let mut s = String::new();
    s += &format!(
            "L1: {}; L2 guest: {} GiB RAM on L1's 1 GiB pages, {} vCPUs; {} rank(s); {} repetition(s), profiles and configurations interleaved; one L1 boot for all runs, another only after an L1 crash ({:.0} s in all){}. Sizes per rank: {}.\n\n",
            lab.l1,
            lab.shape.mem_gib,
            lab.shape.vcpus,
            lab.ranks,
            lab.reps,
            lab.elapsed_secs,
            if lab.complete { "" } else { ", **stopped before the end of its plan**" },
            lab.sizes
                .iter()
                .map(|(w, z)| format!("{w} {} MiB × {} iterations", z.mem_per_rank >> 20, z.iters))
                .collect::<Vec<_>>()
                .join(", ")
        );
    s += "Profiles in L1: `iso` nothing else running in L1";
    for c in &lab.competitors {
        s += &format!("; {c}");
    }
    s += ".\n";
    for st in &lab.competitor_stops {
        if !st.alive {
            s += &format!(
                "- profile {}: stress-ng had exited before the profile ended\n",
                st.profile.name()
            );
        }
    }
    for n in &lab.notes {
        s += &format!("- {n}\n");
    }
    s
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
