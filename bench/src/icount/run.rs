//! Runs an instruction-count plan: one boot per configuration, then the host-load check.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::error::IcountError;
use super::guest::{self, Parts};
use super::machine::{CLOCK_COUNTS, CLOCK_LABEL, CLOCK_MISSES, VCPUS};
use super::parse::{parse_boot, IcountRun};
use super::plan::{Competitor, IcountConfig, Plan, GUEST_MEM_MIB};
use super::report::{BootRecord, HostLoadCheck, IcountResults};

#[derive(Clone, Debug)]
pub struct Options {
    pub plan: Plan,
    pub quick: bool,
    /// Work directory (parts, consoles, plugin logs).
    pub work: PathBuf,
    /// Boot one configuration's isolated runs twice more, the second time with every
    /// host CPU busy, and compare.
    pub host_load_check: bool,
    pub boot_timeout: Duration,
    pub command: String,
}

fn step(s: impl std::fmt::Display) {
    hpmmap_image::progress::step(format!("icount: {s}"));
}

/// One boot of `config` with `plan`: its record and runs.
pub fn boot_config(
    parts: &Parts,
    plan: &Plan,
    config: IcountConfig,
    opts: &Options,
) -> (BootRecord, Vec<IcountRun>) {
    step(format!(
        "booting `{}` ({} runs)",
        config.name(),
        plan.cells().len()
    ));
    let outcome = guest::boot(parts, plan, config, &opts.work, opts.boot_timeout).and_then(|b| {
        let (info, runs, done) = parse_boot(config, &b.console, &b.plugin_log)?;
        Ok((b.wall_secs, info, runs, done))
    });
    match outcome {
        Ok((wall, info, runs, done)) => {
            step(format!(
                "`{}`: {} runs, {} counted, {wall:.0} s",
                config.name(),
                runs.len(),
                runs.iter().filter(|r| r.counted.is_some()).count()
            ));
            (
                BootRecord {
                    config,
                    wall_secs: wall,
                    guest: info,
                    done,
                    error: None,
                },
                runs,
            )
        }
        Err(e) => {
            step(format!("`{}` failed: {e}", config.name()));
            (
                BootRecord {
                    config,
                    wall_secs: 0.0,
                    guest: vec![],
                    done: false,
                    error: Some(e.to_string()),
                },
                vec![],
            )
        }
    }
}

/// Busy loops on every host CPU at the lowest priority, until dropped.
struct HostLoad(Vec<Child>);

impl HostLoad {
    fn start() -> HostLoad {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        HostLoad(
            (0..n)
                .filter_map(|_| {
                    Command::new("nice")
                        .args(["-n", "19", "sh", "-c", "while :; do :; done"])
                        .stdin(Stdio::null())
                        .spawn()
                        .ok()
                })
                .collect(),
        )
    }
}

impl Drop for HostLoad {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn iso_insns(runs: &[IcountRun]) -> Vec<u64> {
    runs.iter()
        .filter_map(|r| r.counted.as_ref().map(|c| c.insns))
        .collect()
}

/// Boots `config` with only isolated runs of `plan`'s first workload twice, the second
/// time with the host's CPUs loaded.
pub fn host_load_check(
    parts: &Parts,
    plan: &Plan,
    config: IcountConfig,
    opts: &Options,
) -> Result<HostLoadCheck, IcountError> {
    let w = *plan
        .workloads
        .first()
        .ok_or_else(|| IcountError::Parse("no workload".into()))?;
    // One isolated run of the first workload per boot: the check is whether the same boot
    // gives the same count, and it costs two boots of `--quick`'s 15 minutes.
    let small = Plan {
        workloads: vec![w],
        competitors: vec![Competitor::Iso],
        reps: 1,
        iso_reps: 1,
        ..plan.clone()
    };
    let (b, quiet) = boot_config(parts, &small, config, opts);
    if let Some(e) = b.error {
        return Err(IcountError::Qemu(e));
    }
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    step(format!("again with {n} busy loops on the host (nice 19)"));
    let (b, loaded) = {
        let _load = HostLoad::start();
        boot_config(parts, &small, config, opts)
    };
    if let Some(e) = b.error {
        return Err(IcountError::Qemu(e));
    }
    Ok(HostLoadCheck {
        config,
        workload: w,
        quiet_insns: iso_insns(&quiet),
        loaded_insns: iso_insns(&loaded),
        host_load: format!("{n} shell busy loops (nice 19) ran on the host's {n} CPUs"),
    })
}

pub fn qemu_version() -> String {
    hpmmap_image::qemu::qemu_binary()
        .and_then(|q| Command::new(q).arg("--version").output().ok())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

pub fn run(opts: &Options) -> Result<IcountResults, IcountError> {
    let t0 = Instant::now();
    let parts = guest::prepare(&opts.work)?;
    let mut boots = Vec::new();
    let mut runs = Vec::new();
    for &c in &opts.plan.configs {
        let (b, r) = boot_config(&parts, &opts.plan, c, opts);
        boots.push(b);
        runs.extend(r);
    }
    let host_load = if opts.host_load_check {
        let c = if opts.plan.configs.contains(&IcountConfig::Thp) {
            IcountConfig::Thp
        } else {
            opts.plan.configs[0]
        };
        match host_load_check(&parts, &opts.plan, c, opts) {
            Ok(h) => Some(h),
            Err(e) => {
                step(format!("host-load check failed: {e}"));
                None
            }
        }
    } else {
        None
    };
    Ok(IcountResults {
        clock: CLOCK_LABEL.into(),
        counts: CLOCK_COUNTS.into(),
        misses: CLOCK_MISSES.into(),
        host: crate::platform::short_line(),
        qemu: qemu_version(),
        guest_kernel: parts.kernel_version.clone(),
        vcpus: VCPUS,
        guest_mem_mib: GUEST_MEM_MIB,
        plan: opts.plan.clone(),
        quick: opts.quick,
        boots,
        runs,
        host_load,
        wall_secs: t0.elapsed().as_secs_f64(),
        command: opts.command.clone(),
    })
}
