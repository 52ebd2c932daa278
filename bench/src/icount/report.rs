//! Summaries of the instruction-count runs, the markdown table and the plot (plotters).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::error::IcountError;
use super::machine::{CLOCK_COUNTS, CLOCK_LABEL, CLOCK_MISSES, RANK_CPU};
use super::parse::IcountRun;
use super::plan::{Competitor, IcountConfig, Plan};
use crate::stats::{quantile_sorted, Summary};
use crate::workloads::Workload;

/// hpmmap's targets (issue 17 / the paper): slowdown under profile B and per-iteration CoV.
pub const TARGET_SLOWDOWN: f64 = 0.03;
pub const TARGET_COV: f64 = 0.01;
/// Isolated runs must agree, and a CPU-only competitor must not move the figure, within
/// this.
pub const DETERMINISM: f64 = 0.005;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BootRecord {
    pub config: IcountConfig,
    pub wall_secs: f64,
    pub guest: Vec<(String, String)>,
    /// The script ran to its end.
    pub done: bool,
    pub error: Option<String>,
}

/// A repeated boot of one configuration's isolated runs, the second one while the host's
/// CPUs are loaded: the figures must not move.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostLoadCheck {
    pub config: IcountConfig,
    pub workload: Workload,
    pub quiet_insns: Vec<u64>,
    pub loaded_insns: Vec<u64>,
    pub host_load: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IcountResults {
    pub clock: String,
    pub counts: String,
    pub misses: String,
    pub host: String,
    pub qemu: String,
    pub guest_kernel: String,
    pub vcpus: usize,
    pub guest_mem_mib: u64,
    pub plan: Plan,
    pub quick: bool,
    pub boots: Vec<BootRecord>,
    pub runs: Vec<IcountRun>,
    pub host_load: Option<HostLoadCheck>,
    pub wall_secs: f64,
    pub command: String,
}

/// One (configuration, workload, competitor) cell over its repetitions.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub runs: usize,
    pub failed: usize,
    /// Rank CPU (instructions, = ns) per run.
    pub insns: Summary,
    /// The rank's setup (allocation, first touch, initialisation) per run, and setup +
    /// measured phase (the paper's runtime includes allocation); absent in old logs.
    pub setup: Option<Summary>,
    pub whole: Option<Summary>,
    pub iter: Summary,
    pub kern_share: f64,
    pub setup_kern_share: Option<f64>,
    pub faults: f64,
    pub elapsed_secs: f64,
    pub vm: BTreeMap<String, f64>,
    /// FWQ: quantum excess over the run's fastest quantum, in instructions.
    pub detours: Vec<f64>,
}

pub fn rows(res: &IcountResults) -> BTreeMap<(IcountConfig, Workload, Competitor), Row> {
    let mut groups: BTreeMap<(IcountConfig, Workload, Competitor), Vec<&IcountRun>> =
        BTreeMap::new();
    for r in &res.runs {
        groups
            .entry((r.config, r.workload, r.competitor))
            .or_default()
            .push(r);
    }
    let mut out = BTreeMap::new();
    for (k, runs) in groups {
        let ok: Vec<&IcountRun> = runs
            .iter()
            .copied()
            .filter(|r| {
                r.rc == Some(0) && r.counted.is_some() && r.report.as_ref().is_some_and(|p| p.valid)
            })
            .collect();
        let totals: Vec<f64> = ok
            .iter()
            .map(|r| r.counted.as_ref().unwrap().insns as f64)
            .collect();
        let Some(insns) = Summary::of(&totals) else {
            continue;
        };
        let setups: Option<Vec<f64>> = ok
            .iter()
            .map(|r| r.counted.as_ref().unwrap().setup_insns.map(|x| x as f64))
            .collect();
        let setup = setups.as_deref().and_then(Summary::of);
        let whole = setups.as_ref().and_then(|v| {
            Summary::of(
                &v.iter()
                    .zip(&totals)
                    .map(|(a, b)| a + b)
                    .collect::<Vec<f64>>(),
            )
        });
        let iters: Vec<f64> = ok
            .iter()
            .flat_map(|r| {
                r.counted
                    .as_ref()
                    .unwrap()
                    .iter_insns
                    .iter()
                    .map(|&x| x as f64)
            })
            .collect();
        let kern: f64 = ok
            .iter()
            .map(|r| r.counted.as_ref().unwrap().kern_insns as f64)
            .sum();
        let n = ok.len() as f64;
        let mut vm: BTreeMap<String, f64> = BTreeMap::new();
        for r in &ok {
            for (key, v) in &r.vmstat {
                *vm.entry(key.clone()).or_default() += *v as f64 / n;
            }
        }
        let mut detours = Vec::new();
        if k.1 == Workload::Fwq {
            for r in &ok {
                let q = &r.counted.as_ref().unwrap().iter_insns;
                let min = q.iter().copied().min().unwrap_or(0);
                detours.extend(q.iter().map(|&x| (x - min) as f64));
            }
        }
        out.insert(
            k,
            Row {
                runs: ok.len(),
                failed: runs.len() - ok.len(),
                insns,
                setup,
                whole,
                iter: Summary::of(&iters).unwrap_or(insns),
                kern_share: kern / totals.iter().sum::<f64>(),
                setup_kern_share: ok
                    .iter()
                    .map(|r| {
                        r.counted
                            .as_ref()
                            .unwrap()
                            .setup_kern_insns
                            .map(|x| x as f64)
                    })
                    .sum::<Option<f64>>()
                    .zip(setups.as_ref().map(|v| v.iter().sum::<f64>()))
                    .map(|(k, t)| k / t),
                faults: ok
                    .iter()
                    .map(|r| r.report.as_ref().unwrap().minflt as f64)
                    .sum::<f64>()
                    / n,
                elapsed_secs: ok
                    .iter()
                    .map(|r| r.report.as_ref().unwrap().total_secs())
                    .sum::<f64>()
                    / n,
                vm,
                detours,
            },
        );
    }
    out
}

type Rows = BTreeMap<(IcountConfig, Workload, Competitor), Row>;

/// Slowdown of the measured phase against the same configuration's isolated runs.
fn slowdown(rows: &Rows, c: IcountConfig, w: Workload, comp: Competitor) -> Option<f64> {
    let iso = rows.get(&(c, w, Competitor::Iso))?.insns.mean;
    Some(rows.get(&(c, w, comp))?.insns.mean / iso - 1.0)
}

/// The same for setup + measured phase.
fn whole_slowdown(rows: &Rows, c: IcountConfig, w: Workload, comp: Competitor) -> Option<f64> {
    let iso = rows.get(&(c, w, Competitor::Iso))?.whole?.mean;
    Some(rows.get(&(c, w, comp))?.whole?.mean / iso - 1.0)
}

fn pct(x: f64) -> String {
    format!("{:+.2} %", x * 100.0)
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The markdown table.
pub fn markdown(res: &IcountResults) -> String {
    let rows = rows(res);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# hpmmap isolation benchmark on the instruction-count clock\n\n\
         **Clock / platform: {CLOCK_LABEL}.** One QEMU/TCG guest per configuration (no \
         nesting): {} vCPUs, {} MiB, guest kernel {}; QEMU: {}; host: {}.\n\n\
         - What it {CLOCK_COUNTS}. The rank's figure is counted by a TCG plugin \
         (`bench/icount/hpmmap-icount.c`) between markers the workload executes at each \
         iteration boundary: the rank's code plus the kernel on its vCPU (vCPU {}), not \
         elapsed time (the vCPUs share one clock round robin, so elapsed time grows by \
         whatever the other vCPUs execute).\n- It {CLOCK_MISSES}.\n\
         - Competitors run as guest processes on their own vCPUs: A = stress-ng `--mmap 1 \
         --mmap-bytes {}m` on vCPU 1; B = A + stress-ng `--vm 1 --vm-bytes {}m` on vCPU 2 \
         (a kernel build, the paper's competitor, needs a compiler the image does not \
         carry); controls `cpu-other` / `cpu-own` = stress-ng `--cpu 1` (no memory \
         management) on vCPU 1 / on the rank's vCPU.\n\
         - One rank; sizes per rank: {}; {} repetition(s), isolated {} at least {} times; \
         competitors start {} s (guest time) before the runs.\n\
         - Command: `{}`; {:.0} s of wall time on this host.\n",
        res.vcpus,
        res.guest_mem_mib,
        res.guest_kernel,
        res.qemu,
        res.host,
        RANK_CPU,
        res.plan.competitor_sizes.mmap_mib,
        res.plan.competitor_sizes.vm_mib,
        res.plan
            .sizes
            .iter()
            .map(|(w, z)| format!("{} {} MiB × {}", w.name(), z.mem_per_rank >> 20, z.iters))
            .collect::<Vec<_>>()
            .join(", "),
        res.plan.reps,
        res.plan.workloads.first().map(|w| w.name()).unwrap_or("-"),
        res.plan.iso_reps,
        res.plan.warmup_secs,
        res.command,
        res.wall_secs,
    );
    let _ = writeln!(
        s,
        "Configurations (one boot each; THP mode for the whole guest):\n"
    );
    for b in &res.boots {
        let _ = writeln!(
            s,
            "- `{}`: {}; guest said: {}; {:.0} s wall{}{}",
            b.config.name(),
            b.config.describe(),
            b.guest
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            b.wall_secs,
            if b.done {
                ""
            } else {
                "; **the script did not finish**"
            },
            b.error
                .as_ref()
                .map(|e| format!("; error: {}", e.lines().next().unwrap_or("")))
                .unwrap_or_default()
        );
    }
    // Targets.
    let _ = writeln!(
        s,
        "\n## Targets (profile B, same run)\n\nhpmmap: slowdown ≤ {:.0} % and per-iteration CoV < {:.0} %; THP and 4 KiB beside it.\n",
        TARGET_SLOWDOWN * 100.0,
        TARGET_COV * 100.0
    );
    let _ = writeln!(
        s,
        "`measured`: the measured phase; `run`: the rank's setup (allocation, first touch, initialisation) plus the measured phase, the paper's runtime. The verdict needs both slowdowns within the target and the iteration CoV below it.\n\n\
         | workload | hpmmap measured | hpmmap run | hpmmap CoV | target | THP measured | THP run | THP CoV | hugetlb run | 4k measured | 4k run | 4k CoV |\n|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    let three = |c: IcountConfig, w: Workload| -> (String, String, String) {
        let f = |x: Option<f64>| x.map(pct).unwrap_or("-".into());
        (
            f(slowdown(&rows, c, w, Competitor::B)),
            f(whole_slowdown(&rows, c, w, Competitor::B)),
            rows.get(&(c, w, Competitor::B))
                .map(|r| format!("{:.2} %", r.iter.cov * 100.0))
                .unwrap_or("-".into()),
        )
    };
    for &w in res.plan.workloads.iter().filter(|w| **w != Workload::Fwq) {
        let h = IcountConfig::Hpmmap;
        let verdict = match (
            slowdown(&rows, h, w, Competitor::B),
            whole_slowdown(&rows, h, w, Competitor::B),
            rows.get(&(h, w, Competitor::B)),
        ) {
            (Some(sd), wh, Some(r)) => pass(
                sd <= TARGET_SLOWDOWN
                    && wh.is_none_or(|x| x <= TARGET_SLOWDOWN)
                    && r.iter.cov < TARGET_COV,
            ),
            _ => "not run",
        };
        let (hm, hw, hc) = three(h, w);
        let (tm, tw, tc) = three(IcountConfig::Thp, w);
        let (_, gw, _) = three(IcountConfig::Hugetlb, w);
        let (km, kw, kc) = three(IcountConfig::Page4k, w);
        let _ = writeln!(
            s,
            "| {} | {hm} | {hw} | {hc} | {verdict} | {tm} | {tw} | {tc} | {gw} | {km} | {kw} | {kc} |",
            w.name()
        );
    }
    // Determinism and controls.
    let _ = writeln!(
        s,
        "\n## Determinism and controls\n\nIsolated repetitions must agree within {:.1} %; a competitor that only burns CPU, on another vCPU or on the rank's own, must move the figure by less than {:.1} %.\n",
        DETERMINISM * 100.0,
        DETERMINISM * 100.0
    );
    let _ = writeln!(
        s,
        "| config | workload | isolated runs | spread (max-min)/mean | cpu-other Δ | cpu-own Δ | elapsed-time Δ cpu-other (shared clock, for contrast) | verdict |\n|---|---|---:|---:|---:|---:|---:|---|"
    );
    for &c in &res.plan.configs {
        for &w in &res.plan.workloads {
            let Some(iso) = rows.get(&(c, w, Competitor::Iso)) else {
                continue;
            };
            let spread = (iso.insns.max - iso.insns.min) / iso.insns.mean;
            let other = slowdown(&rows, c, w, Competitor::CpuOther);
            let own = slowdown(&rows, c, w, Competitor::CpuOwn);
            let el = rows
                .get(&(c, w, Competitor::CpuOther))
                .map(|r| r.elapsed_secs / iso.elapsed_secs - 1.0);
            let ok = spread <= DETERMINISM
                && other.is_none_or(|x| x.abs() < DETERMINISM)
                && own.is_none_or(|x| x.abs() < DETERMINISM);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.3} % | {} | {} | {} | {} |",
                c.name(),
                w.name(),
                iso.runs,
                spread * 100.0,
                other.map(pct).unwrap_or("-".into()),
                own.map(pct).unwrap_or("-".into()),
                el.map(pct).unwrap_or("-".into()),
                pass(ok)
            );
        }
    }
    if let Some(h) = &res.host_load {
        let q: Vec<f64> = h.quiet_insns.iter().map(|&x| x as f64).collect();
        let l: Vec<f64> = h.loaded_insns.iter().map(|&x| x as f64).collect();
        let worst = q
            .iter()
            .zip(&l)
            .map(|(a, b)| (b / a - 1.0).abs())
            .fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "\nHost load: the `{}` boot's isolated `{}` runs again while {}: largest change {:.4} % ({}).\n",
            h.config.name(),
            h.workload.name(),
            h.host_load,
            worst * 100.0,
            pass(worst < DETERMINISM)
        );
    }
    // The experiment.
    let _ = writeln!(
        s,
        "\n## The experiment: rank CPU on the instruction-count clock\n\n\
         `rank ms`: instructions on the rank's CPU during the measured phase (rank code + kernel), \
         in ms at 1 ns per instruction, mean over runs; `slowdown`: against the same \
         configuration's isolated mean; `setup ms`: the same for the rank's setup before it \
         (allocation, first touch, initialisation); `run slowdown`: setup + measured phase; `iter CoV` / `iter p99/med`: over all iterations' \
         counts; `kernel` / `setup kernel`: the kernel's share of the rank's CPU in the measured phase / in setup; `faults`: the rank's \
         measured-phase page faults per run; `compact` / `thp alloc`: the whole guest's \
         compaction stalls and THP faults during a run (/proc/vmstat); `elapsed`: the \
         workload's own elapsed time on the shared clock (not comparable: other vCPUs' \
         instructions are in it).\n"
    );
    for &w in res.plan.workloads.iter().filter(|w| **w != Workload::Fwq) {
        let _ = writeln!(
            s,
            "### {}\n\n| config | competitor | runs | rank ms | slowdown | setup ms | run slowdown | iter CoV | iter p99/med | kernel | setup kernel | faults | compact | thp alloc | elapsed s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            w.name()
        );
        for &c in &res.plan.configs {
            for &comp in &res.plan.competitors {
                let Some(r) = rows.get(&(c, w, comp)) else {
                    let _ = writeln!(
                        s,
                        "| {} | {} | 0 | - | - | - | - | - | - | - | - | - | - | - | - |",
                        c.name(),
                        comp.name()
                    );
                    continue;
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {}{} | {:.3} | {} | {} | {} | {:.3} % | {:.4} | {:.3} % | {} | {:.0} | {:.0} | {:.0} | {:.4} |",
                    c.name(),
                    comp.name(),
                    r.runs,
                    if r.failed > 0 { format!(" ({} failed)", r.failed) } else { String::new() },
                    r.insns.mean / 1e6,
                    slowdown(&rows, c, w, comp).map(pct).unwrap_or("-".into()),
                    r.setup.map(|x| format!("{:.3}", x.mean / 1e6)).unwrap_or("-".into()),
                    whole_slowdown(&rows, c, w, comp).map(pct).unwrap_or("-".into()),
                    r.iter.cov * 100.0,
                    r.iter.p99 / r.iter.median,
                    r.kern_share * 100.0,
                    r.setup_kern_share.map(|x| format!("{:.1} %", x * 100.0)).unwrap_or("-".into()),
                    r.faults,
                    r.vm.get("compact_stall").copied().unwrap_or(0.0),
                    r.vm.get("thp_fault_alloc").copied().unwrap_or(0.0),
                    r.elapsed_secs
                );
            }
        }
        s.push('\n');
    }
    if res.plan.workloads.contains(&Workload::Fwq) {
        let q = res
            .plan
            .sizes
            .get(&Workload::Fwq)
            .map(|z| z.iters)
            .unwrap_or(0);
        let _ = writeln!(
            s,
            "## OS noise: fixed work quantum (FWQ)\n\n{q} quanta of {} loop trips each; a quantum's detour is its instruction count on the rank's CPU above the run's fastest quantum (µs at 1 ns per instruction).\n\n| config | competitor | quanta | quantum µs (min) | median detour µs | p99 detour µs | max detour µs | noise |\n|---|---|---:|---:|---:|---:|---:|---:|",
            crate::workloads::fwq::QUANTUM_LOOPS
        );
        for &c in &res.plan.configs {
            for &comp in &res.plan.competitors {
                let Some(r) = rows.get(&(c, Workload::Fwq, comp)) else {
                    continue;
                };
                let mut d = r.detours.clone();
                d.sort_by(f64::total_cmp);
                if d.is_empty() {
                    continue;
                }
                let noise = d.iter().sum::<f64>() / (r.iter.mean * d.len() as f64);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.3} % |",
                    c.name(),
                    comp.name(),
                    d.len(),
                    r.iter.min / 1e3,
                    quantile_sorted(&d, 0.5) / 1e3,
                    quantile_sorted(&d, 0.99) / 1e3,
                    d[d.len() - 1] / 1e3,
                    noise * 100.0
                );
            }
        }
    }
    s
}

const COLORS: [RGBColor; 5] = [
    RGBColor(90, 90, 90),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
];

/// Rank CPU under each competitor, relative to the same configuration's isolated runs,
/// one panel per workload (like the paper's Fig. 8), and FWQ's p99 detour.
pub fn plot(res: &IcountResults, out: &Path) -> Result<(), IcountError> {
    let rows = rows(res);
    let workloads: Vec<Workload> = res.plan.workloads.clone();
    let w = 420 * workloads.len().max(1) as u32;
    let root = SVGBackend::new(out, (w, 470)).into_drawing_area();
    let err = |e: String| IcountError::Io(out.to_path_buf(), std::io::Error::other(e));
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (title, body) = root.split_vertically(80);
    title
        .draw(&Text::new(
            "hpmmap isolation benchmark, QEMU/TCG instruction-count clock (deterministic; counts kernel work on the rank's CPU, not TLB/cache/bandwidth)",
            (10, 12),
            ("sans-serif", 15),
        ))
        .map_err(|e| err(e.to_string()))?;
    title
        .draw(&Text::new(
            format!(
                "rank CPU (own code + kernel on its vCPU): slowdown against the same configuration isolated; line: hpmmap's 3 % target; bars per competitor: {}; FWQ: p99 detour (µs); guest {}",
                res.plan.competitors.iter().map(|c| c.name()).collect::<Vec<_>>().join(", "),
                res.guest_kernel
            ),
            (10, 36),
            ("sans-serif", 12),
        ))
        .map_err(|e| err(e.to_string()))?;
    for (i, c) in res.plan.competitors.iter().enumerate() {
        let x = 10 + 110 * i as i32;
        title
            .draw(&Rectangle::new(
                [(x, 58), (x + 14, 70)],
                COLORS[i % COLORS.len()].filled(),
            ))
            .map_err(|e| err(e.to_string()))?;
        title
            .draw(&Text::new(c.name(), (x + 18, 58), ("sans-serif", 12)))
            .map_err(|e| err(e.to_string()))?;
    }
    let panels = body.split_evenly((1, workloads.len().max(1)));
    let configs = &res.plan.configs;
    let comps = &res.plan.competitors;
    for (panel, &wl) in panels.iter().zip(&workloads) {
        let value = |c: IcountConfig, comp: Competitor| -> Option<f64> {
            if wl == Workload::Fwq {
                let r = rows.get(&(c, wl, comp))?;
                let mut d = r.detours.clone();
                d.sort_by(f64::total_cmp);
                (!d.is_empty()).then(|| quantile_sorted(&d, 0.99) / 1e3)
            } else {
                slowdown(&rows, c, wl, comp).map(|x| x * 100.0)
            }
        };
        let vals: Vec<f64> = configs
            .iter()
            .flat_map(|&c| comps.iter().filter_map(move |&k| value(c, k)))
            .collect();
        let floor = if wl == Workload::Fwq {
            1.0
        } else {
            TARGET_SLOWDOWN * 100.0 + 0.5
        };
        let top = vals.iter().copied().fold(floor, f64::max) * 1.1;
        let bottom = vals.iter().copied().fold(0.0f64, f64::min) * 1.1;
        let n = comps.len() as f64;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                if wl == Workload::Fwq {
                    "fwq: p99 detour (µs)".to_string()
                } else {
                    format!("{}: slowdown vs isolated (%)", wl.name())
                },
                ("sans-serif", 14),
            )
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..configs.len() as f64, bottom..top)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(configs.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = (x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < configs.len() {
                    configs[i as usize].name().to_string()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (ci, &c) in configs.iter().enumerate() {
            for (ki, &k) in comps.iter().enumerate() {
                let Some(v) = value(c, k) else { continue };
                let x0 = ci as f64 + 0.1 + 0.8 * ki as f64 / n;
                let x1 = x0 + 0.8 / n * 0.9;
                let color = COLORS[ki % COLORS.len()];
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0, 0.0f64.min(v)), (x1, v.max(0.0))],
                        color.filled(),
                    )))
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        if wl != Workload::Fwq {
            chart
                .draw_series(LineSeries::new(
                    [
                        (0.0, 1.0 + TARGET_SLOWDOWN),
                        (configs.len() as f64, 1.0 + TARGET_SLOWDOWN),
                    ],
                    BLACK.stroke_width(1),
                ))
                .map_err(|e| err(e.to_string()))?;
        }
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Writes results.json, results.md and results.svg into `dir`.
pub fn write(res: &IcountResults, dir: &Path) -> Result<(), IcountError> {
    std::fs::create_dir_all(dir).map_err(|e| IcountError::Io(dir.to_path_buf(), e))?;
    let j = dir.join("results.json");
    std::fs::write(&j, serde_json::to_string_pretty(res).expect("serializable"))
        .map_err(|e| IcountError::Io(j, e))?;
    render(dir)
}

/// results.md and results.svg again from `dir`/results.json.
pub fn render(dir: &Path) -> Result<(), IcountError> {
    let j = dir.join("results.json");
    let text = std::fs::read_to_string(&j).map_err(|e| IcountError::Io(j.clone(), e))?;
    let res: IcountResults = serde_json::from_str(&text)
        .map_err(|e| IcountError::Parse(format!("{}: {e}", j.display())))?;
    let md = dir.join("results.md");
    std::fs::write(&md, markdown(&res)).map_err(|e| IcountError::Io(md, e))?;
    plot(&res, &dir.join("results.svg"))
}
