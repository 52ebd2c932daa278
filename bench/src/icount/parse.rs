//! The guest's console (`HPMMAP-ICOUNT-*` lines around each workload's own output) and the
//! plugin's log (`HPMMAP-ICOUNT kind=...` per marker) into runs.
//!
//! The plugin prints a line each time the rank executes a marker: kind 1 when its measured
//! phase begins, 2 after each iteration, 3 when it ends, with the running totals of the
//! rank's own instructions and of the kernel instructions on the rank's CPU. Runs happen
//! one after another, so the n-th begin..end sequence in the log is the n-th run that
//! reached its measured phase on the console.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::IcountError;
use super::plan::{Competitor, IcountConfig};
use crate::report::WorkloadReport;
use crate::workloads::{Workload, MARK_BEGIN, MARK_END, MARK_ITER, MARK_START};

/// One marker as the plugin printed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub kind: u8,
    pub cpu: u64,
    pub kern: u64,
    pub rank: u64,
}

impl Mark {
    pub fn total(&self) -> u64 {
        self.kern + self.rank
    }
}

pub fn parse_marks(log: &str) -> Result<Vec<Mark>, IcountError> {
    let mut v = Vec::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("HPMMAP-ICOUNT ") else {
            continue;
        };
        let mut m = Mark {
            kind: 0,
            cpu: 0,
            kern: 0,
            rank: 0,
        };
        for (k, val) in rest.split_whitespace().filter_map(|w| w.split_once('=')) {
            let bad = || IcountError::Parse(format!("plugin log: bad {k}= in {line:?}"));
            match k {
                "kind" => m.kind = val.parse().map_err(|_| bad())?,
                "cpu" => {
                    m.cpu =
                        u64::from_str_radix(val.trim_start_matches("0x"), 16).map_err(|_| bad())?
                }
                "kern" => m.kern = val.parse().map_err(|_| bad())?,
                "rank" => m.rank = val.parse().map_err(|_| bad())?,
                _ => {}
            }
        }
        v.push(m);
    }
    Ok(v)
}

/// The counted figures of one measured phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Counted {
    /// Instructions on the rank's CPU during the measured phase (its code + the kernel).
    pub insns: u64,
    /// Of which guest-kernel instructions.
    pub kern_insns: u64,
    /// Per iteration (rank code + kernel on its CPU).
    pub iter_insns: Vec<u64>,
    /// The rank's setup before the measured phase (allocation, first touch, initialisation),
    /// counted the same way; `None` in logs from before the start marker existed.
    #[serde(default)]
    pub setup_insns: Option<u64>,
    #[serde(default)]
    pub setup_kern_insns: Option<u64>,
}

/// Splits the marks into measured phases (begin, iterations, end).
pub fn phases(marks: &[Mark]) -> Result<Vec<Counted>, IcountError> {
    let mut out = Vec::new();
    let mut cur: Vec<Mark> = Vec::new();
    let mut start: Option<Mark> = None;
    for m in marks {
        match m.kind {
            MARK_START => start = Some(*m),
            MARK_BEGIN => cur = vec![*m],
            MARK_ITER | MARK_END if !cur.is_empty() => {
                if m.cpu != cur[0].cpu {
                    return Err(IcountError::Parse(format!(
                        "the rank moved from CPU {:#x} to {:#x} inside a measured phase (it is pinned)",
                        cur[0].cpu, m.cpu
                    )));
                }
                if m.kind == MARK_ITER {
                    cur.push(*m);
                } else {
                    let b = cur[0];
                    let iter_insns = cur
                        .windows(2)
                        .map(|w| w[1].total() - w[0].total())
                        .collect();
                    let s = start.take().filter(|s| s.cpu == b.cpu);
                    out.push(Counted {
                        insns: m.total() - b.total(),
                        kern_insns: m.kern - b.kern,
                        iter_insns,
                        setup_insns: s.map(|s| b.total() - s.total()),
                        setup_kern_insns: s.map(|s| b.kern - s.kern),
                    });
                    cur.clear();
                }
            }
            _ => {
                return Err(IcountError::Parse(format!(
                    "plugin log: marker kind {} outside a measured phase",
                    m.kind
                )))
            }
        }
    }
    Ok(out)
}

/// One run as the guest printed it, with its counted figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IcountRun {
    pub config: IcountConfig,
    pub workload: Workload,
    pub competitor: Competitor,
    pub rep: usize,
    pub rc: Option<i32>,
    pub report: Option<WorkloadReport>,
    pub counted: Option<Counted>,
    /// /proc/vmstat differences over the run (whole guest).
    pub vmstat: BTreeMap<String, i64>,
    pub error: Option<String>,
}

/// What the guest said about itself (`HPMMAP-ICOUNT-GUEST`).
pub type GuestInfo = Vec<(String, String)>;

/// Reads one boot's console and plugin log.
pub fn parse_boot(
    config: IcountConfig,
    console: &str,
    plugin_log: &str,
) -> Result<(GuestInfo, Vec<IcountRun>, bool), IcountError> {
    let mut info = Vec::new();
    let mut runs: Vec<IcountRun> = Vec::new();
    let mut body = String::new();
    let mut open = false;
    let mut done = false;
    for line in console.lines() {
        let l = line.trim_end();
        if let Some(rest) = l.strip_prefix("HPMMAP-ICOUNT-GUEST ") {
            info = rest
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        } else if let Some(rest) = l.strip_prefix("HPMMAP-ICOUNT-RUN-BEGIN ") {
            let kv: BTreeMap<&str, &str> = rest
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .collect();
            let bad = || IcountError::Parse(format!("bad run line {l:?}"));
            runs.push(IcountRun {
                config,
                workload: kv
                    .get("workload")
                    .and_then(|w| Workload::from_name(w))
                    .ok_or_else(bad)?,
                competitor: kv
                    .get("competitor")
                    .and_then(|c| Competitor::from_name(c))
                    .ok_or_else(bad)?,
                rep: kv.get("rep").and_then(|r| r.parse().ok()).ok_or_else(bad)?,
                rc: None,
                report: None,
                counted: None,
                vmstat: BTreeMap::new(),
                error: None,
            });
            body.clear();
            open = true;
        } else if let Some(rest) = l.strip_prefix("HPMMAP-ICOUNT-VMSTAT") {
            if let Some(r) = runs.last_mut() {
                r.vmstat = rest
                    .split_whitespace()
                    .filter_map(|w| w.split_once('='))
                    .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                    .collect();
            }
        } else if let Some(rest) = l.strip_prefix("HPMMAP-ICOUNT-RUN-END ") {
            if let Some(r) = runs.last_mut() {
                r.rc = rest
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("rc="))
                    .and_then(|v| v.parse().ok());
                match WorkloadReport::parse(&body) {
                    Ok(rep) => r.report = Some(rep),
                    Err(e) => {
                        r.error = Some(format!(
                            "{e}; output: {}",
                            hpmmap_image::qemu::tail(&body, 5)
                        ))
                    }
                }
            }
            open = false;
        } else if l == "HPMMAP-ICOUNT-PLAN-DONE" {
            done = true;
        } else if open {
            body.push_str(l);
            body.push('\n');
        }
    }
    // A run reached its measured phase (and so executed the markers) exactly when it
    // printed iterations.
    let counted = phases(&parse_marks(plugin_log)?)?;
    let mut it = counted.into_iter();
    for r in runs.iter_mut() {
        let Some(rep) = &r.report else { continue };
        if rep.iter_secs.is_empty() {
            continue;
        }
        match it.next() {
            Some(c) if c.iter_insns.len() == rep.iter_secs.len() => r.counted = Some(c),
            Some(c) => {
                return Err(IcountError::Parse(format!(
                    "run {} {} {}: {} counted iterations against {} printed",
                    config.name(),
                    r.workload.name(),
                    r.competitor.name(),
                    c.iter_insns.len(),
                    rep.iter_secs.len()
                )))
            }
            None => {
                return Err(IcountError::Parse(format!(
                    "run {} {} {}: no counted phase in the plugin log",
                    config.name(),
                    r.workload.name(),
                    r.competitor.name()
                )))
            }
        }
    }
    Ok((info, runs, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "HPMMAP-ICOUNT kind=4 cpu=0xff1 kern=10 rank=400\n\
        HPMMAP-ICOUNT kind=1 cpu=0xff1 kern=100 rank=1000\n\
        HPMMAP-ICOUNT kind=2 cpu=0xff1 kern=150 rank=2000\n\
        HPMMAP-ICOUNT kind=2 cpu=0xff1 kern=170 rank=3000\n\
        HPMMAP-ICOUNT kind=3 cpu=0xff1 kern=171 rank=3010\n\
        HPMMAP-ICOUNT-END gs_base=1\n";

    #[test]
    fn marks_become_phases() {
        let p = phases(&parse_marks(LOG).unwrap()).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].iter_insns, vec![1050, 1020]);
        assert_eq!(p[0].insns, 71 + 2010);
        assert_eq!(p[0].kern_insns, 71);
        assert_eq!(
            (p[0].setup_insns, p[0].setup_kern_insns),
            (Some(690), Some(90))
        );
        let moved = LOG.replace("kind=3 cpu=0xff1", "kind=3 cpu=0xff2");
        assert!(phases(&parse_marks(&moved).unwrap()).is_err());
    }

    #[test]
    fn console_runs_get_their_phase() {
        let console = "junk\nHPMMAP-ICOUNT-GUEST config=thp cpus=4\n\
            HPMMAP-ICOUNT-RUN-BEGIN idx=0 workload=gups competitor=B rep=0\n\
            HPMMAP-ITER workload=gups i=0 secs=1e-3\nHPMMAP-ITER workload=gups i=1 secs=1e-3\n\
            HPMMAP-RESULT v=1 workload=gups mode=thp ranks=1 mem_per_rank=1048576 iters=2 figure=gups value=1 unit=GUP/s valid=1 minflt=0 majflt=0 setup_minflt=3 setup_majflt=0 total_secs=2e-3\n\
            HPMMAP-ICOUNT-VMSTAT pgfault=12 compact_stall=0 \n\
            HPMMAP-ICOUNT-RUN-END idx=0 rc=0\nHPMMAP-ICOUNT-PLAN-DONE\n";
        let (info, runs, done) = parse_boot(IcountConfig::Thp, console, LOG).unwrap();
        assert!(done);
        assert_eq!(info[1], ("cpus".into(), "4".into()));
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].competitor, Competitor::B);
        assert_eq!(runs[0].vmstat["pgfault"], 12);
        assert_eq!(runs[0].counted.as_ref().unwrap().iter_insns.len(), 2);
    }
}
