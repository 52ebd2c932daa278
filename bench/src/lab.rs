//! The VM configurations in the nested lab: one `hpmmap-lab run` boot (QEMU/TCG L1 with a
//! real KVM with nested paging and 1 GiB hugetlb pages) runs every VM cell of the plan as
//! an L2 guest under `hpmmap-vmm`, with the profiles' competing load started inside L1.
//!
//! L1 has no compiler, so the paper's kernel build cannot compete there: profiles A and B
//! use stress-ng (carried into L1 with its shared libraries) — A: one `--mmap` worker
//! (map, touch, unmap: fault churn and a CPU hog, in place of one build), B: A plus a
//! `--vm` worker (as native B adds stress-ng to the builds). (A `--fork` worker as well made
//! every L2 run 3-5x slower and L1 oopsed once in its KVM; not worth the lab's time.)
//!
//! Everything timed here is emulated: the rows are labelled [`crate::config::LAB_LABEL`]
//! and only their counters (measured-phase page faults, verification) are figures.
//!
//! Output protocol (L1's command output, one run after another):
//!
//! ```text
//! HPMMAP-BENCH-L1 kernel=6.1.0-56-amd64 cpus=2 hugepages_1g=2 stress_ng=1
//! HPMMAP-BENCH-PROFILE profile=A start
//! HPMMAP-BENCH-RUN-BEGIN rep=0 profile=A workload=faults config=vm-thp
//! HPMMAP-BENCH-SERIAL-BEGIN
//! ...the guest's serial console...
//! HPMMAP-BENCH-SERIAL-END
//! HPMMAP-BENCH-REPORT-BEGIN
//! ...hpmmap-vmm's JSON report...
//! HPMMAP-BENCH-REPORT-END
//! HPMMAP-BENCH-RUN-END rc=0 secs=14
//! ```
//!
//! A run whose guest never reached its init — it triple-faulted (hpmmap-vmm exit 72) or hung
//! in its boot until the run's time limit (124 from an outer timeout, or the VMM's orderly stop
//! on SIGTERM: 143; seen as RCU stalls with a timer that never fires on an L2 vCPU) — is
//! booted once more, after `L1-VMM-RETRY attempt 1 status N` (tests/lab/retry.sh, the lab's
//! one retry policy, embedded in the script): the intermittent nested-boot failures under TCG
//! that every lab scenario retries. The job had not started, so nothing of it
//! is lost or counted twice. The rest of the protocol:
//!
//! ```text
//! HPMMAP-BENCH-PROFILE profile=A stop alive=1
//! HPMMAP-BENCH-LAB-DONE
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::model::{Cell, Profile, WorkloadSize};
use crate::vm::{self, VmShape};
use crate::workloads::Workload;

/// Where the images, the script and stress-ng are placed in L1.
pub const L1_DIR: &str = "/bench";

/// One L2 run of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabCell {
    pub rep: usize,
    pub profile: Profile,
    pub workload: Workload,
    pub config: Config,
}

#[derive(Clone, Debug)]
pub struct LabPlan {
    /// In order; a profile's runs are consecutive (its competitors run around them).
    pub cells: Vec<LabCell>,
    pub sizes: std::collections::BTreeMap<Workload, WorkloadSize>,
    pub ranks: usize,
    pub shape: VmShape,
    pub warmup_secs: u32,
    /// Per-L2-run limit inside L1 (the retry policy's watchdog, VMM_LIMIT).
    pub run_timeout_secs: u32,
    pub l1_cpus: u32,
}

/// stress-ng arguments for a profile inside L1 (none for `iso`).
pub fn stress_args(p: Profile) -> Option<&'static str> {
    match p {
        Profile::Iso => None,
        Profile::A => Some("--mmap 1 --mmap-bytes 128m"),
        Profile::B => Some("--mmap 1 --mmap-bytes 128m --vm 1 --vm-bytes 384m"),
    }
}

pub fn image_path(c: Config) -> String {
    format!("{L1_DIR}/{}", c.name())
}

/// The lab's retry policy for nested guests, `vmm_retrying` (tests/lab/retry.sh).
const RETRY_SH: &str = include_str!("../../tests/lab/retry.sh");

impl LabPlan {
    /// The script L1 runs (sh, busybox).
    pub fn script(&self) -> Result<String, vm::VmError> {
        let mut s = String::from(
            "#!/bin/sh\n# hpmmap-bench: the VM cells in the nested lab (generated)\n\
             hp=$(cat /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages 2>/dev/null)\n\
             sn=0; command -v stress-ng >/dev/null && sn=1\n\
             echo \"HPMMAP-BENCH-L1 kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) hugepages_1g=${hp:-0} stress_ng=$sn\"\n\
             comp=\n",
        );
        s += "start_profile() {\n    echo \"HPMMAP-BENCH-PROFILE profile=$1 start\"\n    if [ -n \"$2\" ]; then\n        stress-ng $2 --timeout 0 --quiet > /tmp/stress-$1.log 2>&1 &\n        comp=$!\n        sleep $3\n    fi\n}\n";
        s += "stop_profile() {\n    if [ -n \"$comp\" ]; then\n        alive=0; kill -0 $comp 2>/dev/null && alive=1\n        kill $comp 2>/dev/null; sleep 1; kill -9 $comp 2>/dev/null; wait $comp 2>/dev/null\n        echo \"HPMMAP-BENCH-PROFILE profile=$1 stop alive=$alive\"\n        comp=\n    else\n        echo \"HPMMAP-BENCH-PROFILE profile=$1 stop\"\n    fi\n}\n";
        // hpmmap-vmm pinned to one L1 CPU: two L1 vCPUs in guest mode at once is what breaks
        // QEMU/TCG's nested SVM (vmm/README.md, Known issue). The L2's vCPUs share that CPU;
        // the cells measure faults here, not speed.
        // The lab's one retry policy (tests/lab/retry.sh, shared with every lab scenario): a
        // boot that failed before the guest's init announced the job runs once more.
        s += RETRY_SH;
        s += &format!(
            "run_one() {{\n    echo \"HPMMAP-BENCH-RUN-BEGIN rep=$1 profile=$2 workload=$3 config=$4\"\n    rm -f /tmp/report.json\n    t0=$(date +%s)\n    VMM_LOG=/tmp/vmm.err VMM_SERIAL=/tmp/serial.log VMM_LIMIT={t} VMM_BOOTS=2 VMM_QUIET=1\n    vmm_retrying $5\n    rc=$?\n    echo HPMMAP-BENCH-SERIAL-BEGIN; cat /tmp/serial.log 2>/dev/null; echo; echo HPMMAP-BENCH-SERIAL-END\n    echo HPMMAP-BENCH-REPORT-BEGIN; cat /tmp/report.json 2>/dev/null; echo; echo HPMMAP-BENCH-REPORT-END\n    if [ $rc != 0 ]; then echo HPMMAP-BENCH-VMM-STDERR-BEGIN; tail -n 15 /tmp/vmm.err; echo HPMMAP-BENCH-VMM-STDERR-END; fi\n    echo \"HPMMAP-BENCH-RUN-END rc=$rc secs=$(( $(date +%s) - t0 ))\"\n}}\n",
            t = self.run_timeout_secs
        );
        let mut current: Option<Profile> = None;
        for c in &self.cells {
            if current != Some(c.profile) {
                if let Some(p) = current {
                    s += &format!("stop_profile {}\n", p.name());
                }
                s += &format!(
                    "start_profile {} '{}' {}\n",
                    c.profile.name(),
                    stress_args(c.profile).unwrap_or(""),
                    self.warmup_secs
                );
                current = Some(c.profile);
            }
            let args = vm::workload_args(
                Cell {
                    workload: c.workload,
                    config: c.config,
                },
                &self.sizes[&c.workload],
                self.ranks,
                &[],
            );
            let vmm = vm::vmm_args(
                c.config,
                Path::new(&image_path(c.config)),
                &self.shape,
                &args,
                Path::new("/tmp/serial.log"),
                Path::new("/tmp/report.json"),
            )?;
            // Every word is plain (vmm_args refuses spaces and quotes in the workload's).
            s += &format!(
                "run_one {} {} {} {} '{}'\n",
                c.rep,
                c.profile.name(),
                c.workload.name(),
                c.config.name(),
                vmm.join(" ")
            );
        }
        if let Some(p) = current {
            s += &format!("stop_profile {}\n", p.name());
        }
        s += "echo HPMMAP-BENCH-LAB-DONE\n";
        Ok(s)
    }

    /// L1 memory: the guest's GiBs as boot-time 1 GiB pages plus 3 GiB for L1 itself, its
    /// initramfs (the images) and the competitors.
    pub fn l1_mem_gib(&self) -> u32 {
        self.shape.mem_gib + 3
    }

    /// A generous limit for the whole boot: L1's start, then each run's own limit.
    pub fn lab_timeout_secs(&self) -> u64 {
        let profiles = self
            .cells
            .windows(2)
            .filter(|w| w[0].profile != w[1].profile)
            .count()
            + 1;
        180 + self.cells.len() as u64 * u64::from(self.run_timeout_secs)
            + profiles as u64 * (u64::from(self.warmup_secs) + 5)
    }
}

/// `hpmmap-lab run` arguments: L1 shape, the workspace binaries' directory (hpmmap-vmm), the
/// work directory (its `output.log` grows while L1 runs: the harness shows progress from
/// it), the images, stress-ng and the script added, then the command.
pub fn lab_args(
    plan: &LabPlan,
    bins: &Path,
    work: &Path,
    images: &[(Config, PathBuf)],
    stress_ng: Option<&Path>,
    script: &Path,
) -> Vec<String> {
    let mut v = vec![
        "run".to_string(),
        "--mem".into(),
        format!("{}G", plan.l1_mem_gib()),
        "--cpus".into(),
        plan.l1_cpus.to_string(),
        "--hugepages".into(),
        plan.shape.mem_gib.to_string(),
        "--timeout".into(),
        plan.lab_timeout_secs().to_string(),
        "--bins".into(),
        bins.display().to_string(),
        "--work".into(),
        work.display().to_string(),
    ];
    for (c, dir) in images {
        v.push("--add".into());
        v.push(format!("{}:{}", dir.display(), image_path(*c)));
    }
    if let Some(s) = stress_ng {
        v.push("--add".into());
        v.push(format!("{}:/usr/bin/stress-ng", s.display()));
    }
    v.push("--add".into());
    v.push(format!("{}:{L1_DIR}/plan.sh", script.display()));
    v.push("--".into());
    v.push(format!("sh {L1_DIR}/plan.sh"));
    v
}

/// One L2 run as L1 printed it.
#[derive(Clone, Debug, PartialEq)]
pub struct LabRunOutput {
    pub rep: usize,
    pub profile: Profile,
    pub workload: Workload,
    pub config: Config,
    /// `hpmmap-vmm`'s exit status in L1 (124: busybox `timeout` stopped it).
    pub rc: Option<i32>,
    pub l1_secs: Option<f64>,
    pub serial: String,
    pub report: Option<serde_json::Value>,
    pub vmm_stderr: String,
    /// Boots retried after a triple fault before the guest's init ran.
    pub retries: u32,
}

/// A profile's competitor as L1 saw it when the profile ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileStop {
    pub profile: Profile,
    /// stress-ng still ran at the end (it did not die early).
    pub alive: bool,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct LabOutput {
    /// `HPMMAP-BENCH-L1`'s words.
    pub l1: Vec<(String, String)>,
    pub runs: Vec<LabRunOutput>,
    pub profile_stops: Vec<ProfileStop>,
    /// `HPMMAP-BENCH-LAB-DONE` came: the script ran to its end.
    pub done: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LabParseError {
    #[error("line {0}: {1}")]
    Bad(usize, String),
}

fn kv(line: &str) -> Vec<(&str, &str)> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

fn field<'a>(kv: &[(&str, &'a str)], k: &str) -> Option<&'a str> {
    kv.iter().find(|(key, _)| *key == k).map(|(_, v)| *v)
}

/// Reads L1's output. A run cut short (the lab's timeout) is kept with what it printed and
/// no status; the caller records it as failed.
pub fn parse_output(text: &str) -> Result<LabOutput, LabParseError> {
    #[derive(PartialEq)]
    enum Sect {
        None,
        Serial,
        Report,
        Stderr,
    }
    let text = text.replace('\r', "");
    let mut out = LabOutput::default();
    let mut cur: Option<LabRunOutput> = None;
    let mut sect = Sect::None;
    let mut report = String::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let bad = |what: String| LabParseError::Bad(n, what);
        match line.trim_end() {
            "HPMMAP-BENCH-SERIAL-BEGIN" => sect = Sect::Serial,
            "HPMMAP-BENCH-REPORT-BEGIN" => {
                sect = Sect::Report;
                report.clear();
            }
            "HPMMAP-BENCH-VMM-STDERR-BEGIN" => sect = Sect::Stderr,
            "HPMMAP-BENCH-SERIAL-END" | "HPMMAP-BENCH-VMM-STDERR-END" => sect = Sect::None,
            "HPMMAP-BENCH-REPORT-END" => {
                sect = Sect::None;
                if let Some(r) = cur.as_mut() {
                    // An empty or cut report (the VMM died before writing it) is no report.
                    r.report = serde_json::from_str(report.trim()).ok();
                }
            }
            "HPMMAP-BENCH-LAB-DONE" if sect == Sect::None => {
                out.runs.extend(cur.take());
                out.done = true;
            }
            l if sect == Sect::None && l.starts_with("HPMMAP-BENCH-L1 ") => {
                out.l1 = kv(l)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            }
            l if sect == Sect::None && l.starts_with("HPMMAP-BENCH-PROFILE ") => {
                let f = kv(l);
                if l.ends_with(" start") {
                    continue;
                }
                let p = field(&f, "profile")
                    .and_then(Profile::from_name)
                    .ok_or_else(|| bad(format!("no valid profile= in {l:?}")))?;
                // Profiles without a competitor (iso) say only "stop".
                if let Some(a) = field(&f, "alive") {
                    out.profile_stops.push(ProfileStop {
                        profile: p,
                        alive: a == "1",
                    });
                }
            }
            l if sect == Sect::None && l.starts_with("HPMMAP-BENCH-RUN-BEGIN ") => {
                out.runs.extend(cur.take());
                let f = kv(l);
                let get = |k: &str| field(&f, k).ok_or_else(|| bad(format!("no {k}= in {l:?}")));
                cur = Some(LabRunOutput {
                    rep: get("rep")?
                        .parse()
                        .map_err(|_| bad(format!("bad rep= in {l:?}")))?,
                    profile: Profile::from_name(get("profile")?)
                        .ok_or_else(|| bad(format!("bad profile= in {l:?}")))?,
                    workload: Workload::from_name(get("workload")?)
                        .ok_or_else(|| bad(format!("bad workload= in {l:?}")))?,
                    config: Config::from_name(get("config")?)
                        .ok_or_else(|| bad(format!("bad config= in {l:?}")))?,
                    rc: None,
                    l1_secs: None,
                    serial: String::new(),
                    report: None,
                    vmm_stderr: String::new(),
                    retries: 0,
                });
            }
            l if sect == Sect::None && l.starts_with("L1-VMM-RETRY ") => {
                if let Some(r) = cur.as_mut() {
                    r.retries += 1;
                    // What the failed boot printed is not this run's output.
                    r.serial.clear();
                    r.vmm_stderr.clear();
                    r.report = None;
                }
            }
            l if sect == Sect::None && l.starts_with("HPMMAP-BENCH-RUN-END ") => {
                let f = kv(l);
                let r = cur
                    .as_mut()
                    .ok_or_else(|| bad("RUN-END without RUN-BEGIN".into()))?;
                r.rc = field(&f, "rc").and_then(|v| v.parse().ok());
                r.l1_secs = field(&f, "secs").and_then(|v| v.parse().ok());
                out.runs.extend(cur.take());
            }
            l => {
                if let Some(r) = cur.as_mut() {
                    let buf = match sect {
                        Sect::Serial => &mut r.serial,
                        Sect::Stderr => &mut r.vmm_stderr,
                        Sect::Report => &mut report,
                        Sect::None => continue,
                    };
                    buf.push_str(l);
                    buf.push('\n');
                }
            }
        }
    }
    out.runs.extend(cur.take());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> LabPlan {
        let mut sizes = std::collections::BTreeMap::new();
        sizes.insert(
            Workload::Faults,
            WorkloadSize {
                mem_per_rank: 16 << 20,
                iters: 3,
            },
        );
        let cell = |rep, profile, config| LabCell {
            rep,
            profile,
            workload: Workload::Faults,
            config,
        };
        LabPlan {
            cells: vec![
                cell(0, Profile::Iso, Config::VmThp),
                cell(0, Profile::Iso, Config::VmHpmmap),
                cell(0, Profile::B, Config::VmHpmmap),
                cell(0, Profile::B, Config::VmThp),
            ],
            sizes,
            ranks: 1,
            shape: VmShape::default(),
            warmup_secs: 2,
            run_timeout_secs: 300,
            l1_cpus: 2,
        }
    }

    #[test]
    fn script_starts_each_profile_once_and_runs_every_cell() {
        let s = plan().script().unwrap();
        assert_eq!(s.matches("\nstart_profile ").count(), 2, "{s}");
        assert_eq!(s.matches("\nstop_profile ").count(), 2, "{s}");
        assert!(s.contains("start_profile iso '' 2\n"), "{s}");
        assert!(s.contains(&format!(
            "start_profile B '{}' 2\n",
            stress_args(Profile::B).unwrap()
        )));
        assert_eq!(s.matches("\nrun_one ").count(), 4);
        assert!(s.contains("run_one 0 iso faults vm-thp '--mem 2G --vcpus 2 --image /bench/vm-thp --cmdline hpmmap_workload_args=faults,--ranks,1,--mem-per-rank,16777216,--iters,3,--mode,thp,--tol,0 --serial /tmp/serial.log --report /tmp/report.json --pool 0'\n"), "{s}");
        assert!(s.contains("run_one 0 B faults vm-hpmmap '--mem 2G --vcpus 2 --image /bench/vm-hpmmap --cmdline hpmmap_workload_args=faults,--ranks,1,--mem-per-rank,16777216,--iters,3,--mode,thp,--tol,0 --serial /tmp/serial.log --report /tmp/report.json'\n"), "{s}");
        assert!(s.trim_end().ends_with("HPMMAP-BENCH-LAB-DONE"));
    }

    #[test]
    fn a_retried_boot_counts_and_keeps_only_the_second_boot() {
        let text = "HPMMAP-BENCH-RUN-BEGIN rep=1 profile=A workload=gups config=vm-thp\n\
            L1-VMM-RETRY attempt 1 status 143\n\
            attempt1: [    5.1] rcu: INFO: rcu_sched detected stalls\n\
            HPMMAP-BENCH-SERIAL-BEGIN\nsecond boot\nHPMMAP-BENCH-SERIAL-END\n\
            HPMMAP-BENCH-REPORT-BEGIN\n{\"exit_code\": 0}\nHPMMAP-BENCH-REPORT-END\n\
            HPMMAP-BENCH-RUN-END rc=0 secs=30\nHPMMAP-BENCH-LAB-DONE\n";
        let o = parse_output(text).unwrap();
        assert!(o.done);
        assert_eq!(o.runs.len(), 1);
        let r = &o.runs[0];
        assert_eq!(
            (r.rep, r.profile, r.retries, r.rc),
            (1, Profile::A, 1, Some(0))
        );
        assert_eq!(r.serial, "second boot\n");
        assert_eq!(r.report.as_ref().unwrap()["exit_code"], 0);
        let script = plan().script().unwrap();
        assert!(script.contains("vmm_retrying() {"), "{script}");
        assert!(script.contains("VMM_BOOTS=2"), "{script}");
    }

    #[test]
    fn a_cut_output_keeps_the_cut_run_without_status() {
        let text = "HPMMAP-BENCH-L1 kernel=k cpus=2 hugepages_1g=2 stress_ng=1\n\
            HPMMAP-BENCH-PROFILE profile=iso start\n\
            HPMMAP-BENCH-RUN-BEGIN rep=0 profile=iso workload=faults config=vm-thp\n\
            HPMMAP-BENCH-SERIAL-BEGIN\nboot\n";
        let o = parse_output(text).unwrap();
        assert!(!o.done);
        assert_eq!(o.runs.len(), 1);
        assert_eq!(o.runs[0].rc, None);
        assert_eq!(o.runs[0].serial, "boot\n");
        assert_eq!(o.l1[2], ("hugepages_1g".into(), "2".into()));
        assert!(matches!(
            parse_output(
                "HPMMAP-BENCH-RUN-BEGIN rep=x profile=iso workload=faults config=vm-thp\n"
            ),
            Err(LabParseError::Bad(1, _))
        ));
    }
}
