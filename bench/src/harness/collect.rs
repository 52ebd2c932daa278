//! Collecting a run into [`Results`]: the header (platform, times, load, sizes,
//! competitors, the builds they completed, where the VM rows ran) and the rows.

use anyhow::Result;

use super::host::Host;
use super::options::{workload_binary, Options};
use crate::competitor;
use crate::model::RunRecord;
use crate::platform::Platform;
use crate::table::{self, Header, LabInfo, Results};

/// The run's start as the header shows it.
pub struct Start {
    pub platform: Platform,
    /// The `hpmmap-workload` of the native cells.
    pub bin: std::path::PathBuf,
    started_utc: String,
    load_start: String,
}

impl Start {
    /// Detects the platform (and says it) and finds the workload binary.
    pub fn now() -> Result<Start> {
        let platform = Platform::detect();
        eprintln!("[bench] platform: {}", platform.line());
        let bin = workload_binary()?;
        Ok(Start {
            platform,
            bin,
            started_utc: utc_now(),
            load_start: loadavg(),
        })
    }
}

/// What the run found out besides its records.
pub struct Findings {
    /// Configurations dropped and why, and other remarks for the header.
    pub notes: Vec<String>,
    pub vm_absent: Option<String>,
    pub lab: Option<LabInfo>,
}

/// The results of the run: its header, then the rows built from `records`.
pub fn results(
    opts: &Options,
    start: Start,
    host: Host,
    found: Findings,
    records: Vec<RunRecord>,
) -> Results {
    let Findings {
        mut notes,
        vm_absent,
        lab,
    } = found;
    let mut builds = Vec::new();
    for k in 0..host.max_builds {
        let (ok, failed) = competitor::builds_done(&host.logs.join(format!("build-{k}.log")));
        builds.push((format!("build {k}"), ok, failed));
        if failed > 0 {
            notes.push(format!(
                "build {k}: {failed} build(s) failed; see logs/build-{k}.log"
            ));
        }
    }
    Results::build(
        Header {
            platform: start.platform,
            started_utc: start.started_utc,
            finished_utc: utc_now(),
            command: opts.command_line.clone(),
            note: opts.note.clone(),
            load_start: start.load_start,
            load_end: loadavg(),
            ranks: opts.ranks,
            reps: opts.reps,
            sizes: opts
                .workloads
                .iter()
                .map(|w| (w.name().to_string(), opts.sizes[w].clone()))
                .collect(),
            competitors: host.competitors_desc,
            builds_completed: builds,
            vm_rows_absent: vm_absent,
            vm_place: records
                .iter()
                .find(|r| r.config.is_vm())
                .map(|r| r.place.label().to_string()),
            lab,
            notes,
            quick: opts.quick,
        },
        records,
    )
}

fn utc_now() -> String {
    table::format_utc(std::time::SystemTime::now())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
