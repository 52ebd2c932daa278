//! The VM configurations' runner pieces: the job images, the `hpmmap-vmm` command line, and
//! reading a guest's serial console back into a [`WorkloadReport`].
//!
//! One job image per VM configuration (`hpmmap-image build --job <hpmmap-workload>`, with
//! `--no-hpmmap` for `vm-thp`), both running `hpmmap-workload` without arguments. Each run
//! passes the workload's arguments on the guest kernel's command line
//! (`hpmmap-vmm --cmdline` appends to the image's) as `hpmmap_workload_args=w1,w2,...`:
//! the kernel hands unknown `name=value` words to init's environment, init passes it on,
//! and `hpmmap-workload` reads it when started without arguments. So the two images serve
//! every workload and size.
//!
//! Where the runs happen is [`VmPlace`]: directly on this host ([`HostVm`], a KVM that boots
//! Linux) or inside one nested-lab boot ([`crate::lab`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::model::{Cell, WorkloadSize};
use crate::platform::{KvmKind, Platform};
use crate::report::{ParseError, WorkloadReport};

/// The kernel command-line word that carries the workload's arguments.
pub const ARGS_PARAM: &str = "hpmmap_workload_args";

/// Guest shape of every VM run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmShape {
    /// Guest RAM in GiB: the first GiB is the guest kernel's, the rest hpmmap's pool
    /// (`vm-thp` gets the same RAM, so the two differ only in who manages it).
    pub mem_gib: u32,
    pub vcpus: u32,
    /// `--cpu-affinity` for the vCPU threads, when the harness pins them.
    pub cpu_affinity: Option<String>,
}

impl Default for VmShape {
    fn default() -> Self {
        Self {
            mem_gib: 2,
            vcpus: 2,
            cpu_affinity: None,
        }
    }
}

/// The workload's arguments for one run (the same for a native process and a guest).
pub fn workload_args(cell: Cell, size: &WorkloadSize, ranks: usize, cpus: &[usize]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        cell.workload.name().into(),
        "--ranks".into(),
        ranks.to_string(),
        "--mem-per-rank".into(),
        size.mem_per_rank.to_string(),
        "--iters".into(),
        size.iters.to_string(),
        "--mode".into(),
        cell.config.workload_mode().name().into(),
        "--tol".into(),
        "0".into(),
    ];
    if !cpus.is_empty() {
        let list: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
        v.push("--cpus".into());
        v.push(list.join(","));
    }
    v
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VmError {
    #[error("workload argument {0:?} cannot travel on a kernel command line (no spaces, commas, quotes)")]
    BadArg(String),
    #[error("the guest's serial output has no workload result: {0}")]
    Report(#[from] ParseError),
    #[error(
        "the guest ran the job {got} but {config} needs it {want} (see the guest's init line)"
    )]
    WrongRunner {
        config: &'static str,
        got: String,
        want: &'static str,
    },
    #[error(
        "the guest's init never said how it ran the job (no `job runs` line on the serial console)"
    )]
    NoInitLine,
}

/// `hpmmap_workload_args=a,b,c`. The `--cpus` list of a native run is not passed (the
/// guest has its own CPUs); a word that would break the command line is an error.
pub fn cmdline_word(args: &[String]) -> Result<String, VmError> {
    let mut words = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        if a == "--cpus" {
            skip = true;
            continue;
        }
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || ",\"'".contains(c)) {
            return Err(VmError::BadArg(a.clone()));
        }
        words.push(a.as_str());
    }
    Ok(format!("{ARGS_PARAM}={}", words.join(",")))
}

/// `hpmmap-vmm` arguments for one run of `config`'s `image`. `vm-thp` gets `--pool 0`: no
/// RAM is set aside for hpmmap, so its guest kernel manages all of it (with the default
/// pool it would see only the first GiB).
pub fn vmm_args(
    config: Config,
    image: &Path,
    shape: &VmShape,
    args: &[String],
    serial: &Path,
    report: &Path,
) -> Result<Vec<String>, VmError> {
    let mut v = vec![
        "--mem".to_string(),
        format!("{}G", shape.mem_gib),
        "--vcpus".into(),
        shape.vcpus.to_string(),
        "--image".into(),
        image.display().to_string(),
        "--cmdline".into(),
        cmdline_word(args)?,
        "--serial".into(),
        serial.display().to_string(),
        "--report".into(),
        report.display().to_string(),
    ];
    if config == Config::VmThp {
        v.push("--pool".into());
        v.push("0".into());
    }
    if let Some(a) = &shape.cpu_affinity {
        v.push("--cpu-affinity".into());
        v.push(a.clone());
    }
    Ok(v)
}

/// `hpmmap-image build` arguments for a VM configuration's image.
pub fn image_build_args(config: Config, out: &Path, workload_bin: &Path) -> Vec<String> {
    let mut v = vec![
        "build".to_string(),
        "--quiet".into(),
        "--out".into(),
        out.display().to_string(),
        "--job".into(),
        workload_bin.display().to_string(),
    ];
    if config == Config::VmThp {
        v.push("--no-hpmmap".into());
    }
    v
}

/// What a guest's serial console told about one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuestRun {
    pub report: WorkloadReport,
    /// `direct` or `hpmmap`, from the image init's platform line.
    pub job_runs: String,
    /// `HPMMAP-JOB-EXIT`.
    pub job_exit: Option<i32>,
    /// The hpmmap module's sysfs counters after the job (`faults`, `fallbacks`, ...), when
    /// the module was loaded.
    pub hpmmap_counters: Vec<(String, String)>,
}

impl GuestRun {
    pub fn counter(&self, k: &str) -> Option<&str> {
        self.hpmmap_counters
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a guest's serial console. Kernel messages share the console with the job, so a
/// tagged line is taken from where its tag starts, and carriage returns are dropped.
pub fn parse_serial(text: &str, config: Config) -> Result<GuestRun, VmError> {
    let text = text.replace('\r', "");
    let mut tagged = String::new();
    let mut job_runs = None;
    let mut job_exit = None;
    let mut counters = Vec::new();
    for line in text.lines() {
        if let Some(i) = line.find("HPMMAP-") {
            let t = &line[i..];
            if let Some(rest) = t.strip_prefix("HPMMAP-JOB-EXIT ") {
                job_exit = rest.trim().parse().ok();
            } else {
                tagged.push_str(t);
                tagged.push('\n');
            }
        }
        if let Some(i) = line.find("; job runs ") {
            job_runs = Some(line[i + "; job runs ".len()..].trim().to_string());
        }
        if let Some(i) = line.find("hpmmap counters:") {
            counters = line[i + "hpmmap counters:".len()..]
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        }
    }
    let job_runs = job_runs.ok_or(VmError::NoInitLine)?;
    if let Some(want) = config.guest_runs() {
        if job_runs != want {
            return Err(VmError::WrongRunner {
                config: config.name(),
                got: job_runs,
                want,
            });
        }
    }
    let report = WorkloadReport::parse(&tagged)?;
    Ok(GuestRun {
        report,
        job_runs,
        job_exit,
        hpmmap_counters: counters,
    })
}

/// Where the VM configurations run, or why they cannot.
#[derive(Clone, Debug, PartialEq)]
pub enum VmPlace {
    /// This host's KVM boots Linux: `hpmmap-vmm` runs here, interleaved with native runs.
    Host,
    /// One nested-lab boot (QEMU/TCG L1 with a real KVM) runs them all, after native runs.
    Lab,
    Absent(String),
}

/// Picks the place: `force_lab` wants the lab; otherwise a hardware KVM runs them here and
/// kvm_pvm (which boots no Linux) sends them to the lab when `hpmmap-lab` is at hand.
pub fn choose_place(kvm: &KvmKind, force_lab: bool, lab_available: Result<(), String>) -> VmPlace {
    let lab = |why_not_host: Option<String>| match &lab_available {
        Ok(()) => VmPlace::Lab,
        Err(e) => VmPlace::Absent(match why_not_host {
            Some(w) => format!("{w}; and the nested lab is not available: {e}"),
            None => format!("--lab: the nested lab is not available: {e}"),
        }),
    };
    if force_lab {
        return lab(None);
    }
    match kvm {
        KvmKind::Hardware(_) => VmPlace::Host,
        other => lab(Some(
            other
                .vm_rows_absent_because()
                .unwrap_or_else(|| other.describe()),
        )),
    }
}

/// A program of the workspace: `$HPMMAP_<NAME>_BIN`, beside this binary, or on PATH.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let var = format!(
        "HPMMAP_{}_BIN",
        name.trim_start_matches("hpmmap-").to_uppercase()
    )
    .replace('-', "_");
    if let Some(p) = std::env::var_os(&var) {
        return Some(p.into());
    }
    if let Some(p) = std::env::current_exe()
        .ok()
        .map(|me| me.with_file_name(name))
        .filter(|p| p.is_file())
    {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The `hpmmap-workload` that goes into the job images: `$HPMMAP_VM_WORKLOAD_BIN`, the
/// static build (the guest binaries' `hpmmap-guest-static` dir beside this binary's target
/// dir, where the image builder's built-in workload is built too, or plain
/// `x86_64-unknown-linux-gnu/release`), else the harness's own workload binary (the image
/// builder copies its shared libraries).
pub fn image_workload_binary(fallback: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("HPMMAP_VM_WORKLOAD_BIN") {
        return p.into();
    }
    let static_build = std::env::current_exe().ok().and_then(|me| {
        let target = me.parent()?.parent()?;
        ["hpmmap-guest-static/", ""]
            .iter()
            .map(|d| {
                target.join(format!(
                    "{d}x86_64-unknown-linux-gnu/release/hpmmap-workload"
                ))
            })
            .find(|p| p.is_file())
    });
    static_build.unwrap_or_else(|| fallback.to_path_buf())
}

/// Builds the job image of each VM configuration under `dir`.
pub fn build_images(
    image_tool: &Path,
    workload_bin: &Path,
    configs: &[Config],
    dir: &Path,
) -> anyhow::Result<Vec<(Config, PathBuf)>> {
    use anyhow::{bail, Context};
    let mut out = Vec::new();
    for &c in configs.iter().filter(|c| c.is_vm()) {
        let d = dir.join(c.name());
        eprintln!(
            "[bench] building the {} job image in {}",
            c.name(),
            d.display()
        );
        let st = Command::new(image_tool)
            .args(image_build_args(c, &d, workload_bin))
            .stdout(std::process::Stdio::null())
            .status()
            .with_context(|| format!("running {}", image_tool.display()))?;
        if !st.success() {
            bail!(
                "{} build for {} failed ({st})",
                image_tool.display(),
                c.name()
            );
        }
        out.push((c, d));
    }
    Ok(out)
}

/// Whether this host's KVM could run the VM rows at all (used in the header).
pub fn host_can_boot_linux(p: &Platform) -> bool {
    matches!(p.kvm, KvmKind::Hardware(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::Workload;

    #[test]
    fn cmdline_word_drops_cpus_and_refuses_breaking_words() {
        let cell = Cell {
            workload: Workload::Faults,
            config: Config::VmHpmmap,
        };
        let size = WorkloadSize {
            mem_per_rank: 16 << 20,
            iters: 4,
        };
        let args = workload_args(cell, &size, 1, &[1]);
        assert_eq!(
            cmdline_word(&args).unwrap(),
            "hpmmap_workload_args=faults,--ranks,1,--mem-per-rank,16777216,--iters,4,--mode,thp,--tol,0"
        );
        assert!(matches!(
            cmdline_word(&["a b".to_string()]),
            Err(VmError::BadArg(_))
        ));
        assert!(matches!(
            cmdline_word(&["a,b".to_string()]),
            Err(VmError::BadArg(_))
        ));
    }

    #[test]
    fn place_follows_the_kvm_and_the_lab() {
        let hw = KvmKind::Hardware("kvm_amd".into());
        assert_eq!(choose_place(&hw, false, Err("x".into())), VmPlace::Host);
        assert_eq!(choose_place(&hw, true, Ok(())), VmPlace::Lab);
        assert_eq!(choose_place(&KvmKind::Pvm, false, Ok(())), VmPlace::Lab);
        match choose_place(&KvmKind::Pvm, false, Err("no qemu".into())) {
            VmPlace::Absent(w) => assert!(w.contains("kvm_pvm") && w.contains("no qemu"), "{w}"),
            p => panic!("{p:?}"),
        }
        match choose_place(&KvmKind::None, true, Err("no qemu".into())) {
            VmPlace::Absent(w) => assert!(w.starts_with("--lab"), "{w}"),
            p => panic!("{p:?}"),
        }
    }
}
