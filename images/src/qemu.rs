//! Running QEMU with a deadline: the console goes to a log file, a run that outlives its
//! timeout is killed and reported with the end of its console, and a job image can be
//! booted under QEMU/TCG `-machine microvm` (no KVM needed) to read its exit status.

use crate::manifest::Manifest;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum QemuError {
    #[error("qemu-system-x86_64 is not installed (scripts/setup-host.sh installs it)")]
    Missing,
    #[error("cannot start {0}: {1}")]
    Spawn(PathBuf, std::io::Error),
    #[error("QEMU did not finish within {secs} s and was killed; console log {log}:\n{tail}")]
    Timeout {
        secs: u64,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "the guest stopped: its heartbeat ({alive}) has not moved for {secs} s, so QEMU was \
         killed; console log {log}:\n{tail}"
    )]
    Stalled {
        secs: u64,
        alive: PathBuf,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "QEMU itself crashed twice (signal {signal}), the emulator and not the guest: \
         {stderr}; first console {first}, second console {log}:\n{tail}"
    )]
    CrashedTwice {
        signal: i32,
        stderr: String,
        first: PathBuf,
        log: PathBuf,
        tail: String,
    },
    #[error("QEMU failed (exit {code:?}): {stderr}; console log {log}:\n{tail}")]
    Failed {
        code: Option<i32>,
        stderr: String,
        log: PathBuf,
        tail: String,
    },
    #[error("the guest ended without a `{marker}` line; console log {log}:\n{tail}")]
    NoStatus {
        marker: &'static str,
        log: PathBuf,
        tail: String,
    },
    #[error("image {0}: {1}")]
    Image(PathBuf, String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

pub fn qemu_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HPMMAP_QEMU").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
}

/// Whether this QEMU has a device (e.g. "igb", which needs QEMU 8.0 or newer).
pub fn has_device(qemu: &Path, device: &str) -> bool {
    Command::new(qemu)
        .args(["-device", "help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("\"{device}\"")))
        .unwrap_or(false)
}

/// Why the nested lab (`hpmmap-lab`: QEMU/TCG with igb, Debian's kernel) cannot run on this
/// host, if it cannot. The one answer every lab test and the benchmark's lab rows ask for.
pub fn nested_lab_unavailable() -> Option<String> {
    let Some(q) = qemu_binary() else {
        return Some("qemu-system-x86_64 is not installed (scripts/setup-host.sh)".into());
    };
    if !has_device(&q, "igb") {
        return Some("this QEMU has no igb device (QEMU 8.0 or newer needed)".into());
    }
    let cache = crate::debs::DebCache::from_env();
    match crate::kernel::default_abi(&cache) {
        Ok(abi) if cache.knows(&format!("linux-image-{abi}")) => None,
        Ok(abi) => Some(format!(
            "linux-image-{abi} is neither in apt nor in the package cache"
        )),
        Err(e) => Some(format!("no guest kernel: {e}")),
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

pub struct Finished {
    pub console: String,
    pub elapsed: Duration,
}

/// Signals that mean the emulator process itself broke (an assertion, a wild pointer),
/// as opposed to an exit status QEMU chose.
const CRASH_SIGNALS: [i32; 5] = [
    libc::SIGABRT,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
];

/// Runs QEMU with `args` (which must route the console to `console_log`), under `nice`,
/// killing it at `timeout`.
///
/// A boot is started once more when QEMU itself crashes. QEMU/TCG 10.0 with several vCPU
/// threads now and then aborts on its own assertion (`iotlb_to_section` in
/// system/physmem.c: a vCPU uses a TLB entry from a memory map another thread just
/// replaced), even in the firmware before the guest printed anything. Every boot here
/// starts from its image, so a second boot runs the same thing; the first console and
/// stderr are kept beside the log (`*.crash-1.*`) and a line says so. A second crash is an
/// error naming both.
pub fn run(
    args: &[OsString],
    timeout: Duration,
    console_log: &Path,
) -> Result<Finished, QemuError> {
    run_watched(args, timeout, console_log, None)
}

/// A guest's heartbeat: a file the guest appends to every few seconds (a serial port of its
/// own). Once it has grown, a pause longer than `stall` means the guest stopped.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub file: PathBuf,
    pub stall: Duration,
}

/// `run`, and with a heartbeat, QEMU is killed as soon as the guest stops beating
/// (`QemuError::Stalled`) instead of at `timeout`: a guest whose every vCPU sleeps with no
/// timer left to wake it shows no other sign.
pub fn run_watched(
    args: &[OsString],
    timeout: Duration,
    console_log: &Path,
    heartbeat: Option<&Heartbeat>,
) -> Result<Finished, QemuError> {
    let (signal, stderr) = match run_once(args, timeout, console_log, heartbeat)? {
        Attempt::Done(f) => return Ok(f),
        Attempt::Crashed { signal, stderr } => (signal, stderr),
    };
    let first = console_log.with_extension("crash-1.log");
    let _ = std::fs::rename(console_log, &first);
    let _ = std::fs::rename(
        console_log.with_extension("stderr"),
        console_log.with_extension("crash-1.stderr"),
    );
    crate::progress::step(format!(
        "QEMU itself crashed (signal {signal}: {}); that is the emulator, not the guest: \
         booting once more (first console kept in {})",
        stderr.lines().last().unwrap_or("no message"),
        first.display()
    ));
    match run_once(args, timeout, console_log, heartbeat)? {
        Attempt::Done(f) => Ok(f),
        Attempt::Crashed { signal, stderr } => Err(QemuError::CrashedTwice {
            signal,
            stderr: tail(stderr.trim(), 5),
            first,
            log: console_log.to_path_buf(),
            tail: tail(&read_console(console_log), 40),
        }),
    }
}

/// A console log as text: a guest may write any bytes, and serial lines end in CR LF.
fn read_console(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).replace('\r', "")
}

enum Attempt {
    Done(Finished),
    Crashed { signal: i32, stderr: String },
}

fn run_once(
    args: &[OsString],
    timeout: Duration,
    console_log: &Path,
    heartbeat: Option<&Heartbeat>,
) -> Result<Attempt, QemuError> {
    let qemu = qemu_binary().ok_or(QemuError::Missing)?;
    let err_log = console_log.with_extension("stderr");
    let err_file =
        std::fs::File::create(&err_log).map_err(|e| QemuError::Io(err_log.clone(), e))?;
    let start = Instant::now();
    let mut child = Command::new("nice")
        .arg("-n")
        .arg("5")
        .arg(&qemu)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .map_err(|e| QemuError::Spawn(qemu.clone(), e))?;
    let (mut beat_len, mut last_beat) = (0u64, Instant::now());
    let status = loop {
        if let Some(s) = child
            .try_wait()
            .map_err(|e| QemuError::Io(qemu.clone(), e))?
        {
            break s;
        }
        if let Some(h) = heartbeat {
            let len = std::fs::metadata(&h.file).map(|m| m.len()).unwrap_or(0);
            if len != beat_len {
                (beat_len, last_beat) = (len, Instant::now());
            } else if len > 0 && last_beat.elapsed() > h.stall {
                let _ = child.kill();
                let _ = child.wait();
                return Err(QemuError::Stalled {
                    secs: last_beat.elapsed().as_secs(),
                    alive: h.file.clone(),
                    log: console_log.to_path_buf(),
                    tail: tail(&read_console(console_log), 40),
                });
            }
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(QemuError::Timeout {
                secs: timeout.as_secs(),
                log: console_log.to_path_buf(),
                tail: tail(&read_console(console_log), 40),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let console = read_console(console_log);
    if !status.success() {
        let stderr = std::fs::read_to_string(&err_log).unwrap_or_default();
        if let Some(signal) = status.signal().filter(|s| CRASH_SIGNALS.contains(s)) {
            return Ok(Attempt::Crashed { signal, stderr });
        }
        return Err(QemuError::Failed {
            code: status.code(),
            stderr: tail(stderr.trim(), 5),
            log: console_log.to_path_buf(),
            tail: tail(&console, 40),
        });
    }
    Ok(Attempt::Done(Finished {
        console,
        elapsed: start.elapsed(),
    }))
}

pub const JOB_EXIT: &str = "HPMMAP-JOB-EXIT";

/// The status in the last `HPMMAP-JOB-EXIT <status>` line.
pub fn job_status(console: &str) -> Option<i32> {
    console
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(JOB_EXIT))
        .and_then(|s| s.trim().parse().ok())
}

pub struct JobRun {
    pub status: i32,
    pub console: String,
    pub elapsed: Duration,
}

/// Boots a job image's `vmlinux` (PVH entry) and initramfs under QEMU/TCG `-machine
/// microvm` with `mem_mib` of RAM and returns the job's status from the console.
pub fn boot_microvm(
    image: &Path,
    extra_cmdline: &str,
    mem_mib: u32,
    timeout: Duration,
    work: &Path,
) -> Result<JobRun, QemuError> {
    boot_microvm_disks(image, extra_cmdline, mem_mib, timeout, work, &[])
}

/// A virtio-blk disk for `boot_microvm_disks` (on PCI, as the VMM puts it).
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub serial: String,
    pub read_only: bool,
}

/// `boot_microvm` with virtio-blk disks attached, as `hpmmap-vmm` attaches the image's
/// `rootfs` (serial `hpmmap-root`, read-only) and the `--output` disk (`hpmmap-out`); with
/// disks the machine is q35 rather than microvm (see below).
pub fn boot_microvm_disks(
    image: &Path,
    extra_cmdline: &str,
    mem_mib: u32,
    timeout: Duration,
    work: &Path,
    disks: &[Disk],
) -> Result<JobRun, QemuError> {
    let m =
        Manifest::read(image).map_err(|e| QemuError::Image(image.to_path_buf(), e.to_string()))?;
    std::fs::create_dir_all(work).map_err(|e| QemuError::Io(work.to_path_buf(), e))?;
    let log = work.join("console.log");
    let cmdline = format!("{} {extra_cmdline}", m.cmdline);
    let mut args: Vec<OsString> = [
        // icount: guest time follows executed instructions, so the kernel's TSC
        // calibration against the PIT succeeds however loaded the host is (without it,
        // microvm's kernel hangs with "Marking TSC unstable" under load: no HPET there).
        // acpi=off: QEMU 10's microvm places a PVH initrd up to the end of RAM, over its
        // ACPI tables, and the kernel then hangs in ACPI init for some initrd sizes.
        "-accel",
        "tcg",
        "-icount",
        "shift=auto",
        "-cpu",
        "max",
        "-smp",
        "1",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    // Debian's kernel has no VIRTIO_MMIO_CMDLINE_DEVICES, so microvm's virtio-mmio disks
    // are invisible to it without ACPI: with disks the machine is q35 and they sit on PCI,
    // as the VMM puts them.
    args.push("-machine".into());
    args.push(
        if disks.is_empty() {
            "microvm,acpi=off"
        } else {
            "q35"
        }
        .into(),
    );
    if !disks.is_empty() {
        args.extend(["-nic".into(), "none".into()]);
    }
    args.push("-m".into());
    args.push(format!("{mem_mib}M").into());
    args.push("-serial".into());
    args.push(format!("file:{}", log.display()).into());
    args.push("-kernel".into());
    args.push(image.join(&m.kernel).into());
    args.push("-initrd".into());
    args.push(image.join(&m.initramfs).into());
    args.push("-append".into());
    args.push(cmdline.trim().into());
    for (i, d) in disks.iter().enumerate() {
        let mut drive = OsString::from(format!("if=none,id=d{i},format=raw,file="));
        drive.push(&d.path);
        if d.read_only {
            drive.push(",readonly=on");
        }
        args.extend([
            "-drive".into(),
            drive,
            "-device".into(),
            format!("virtio-blk-pci,drive=d{i},serial={}", d.serial).into(),
        ]);
    }
    let f = run(&args, timeout, &log)?;
    let status = job_status(&f.console).ok_or_else(|| QemuError::NoStatus {
        marker: JOB_EXIT,
        log: log.clone(),
        tail: tail(&f.console, 40),
    })?;
    Ok(JobRun {
        status,
        console: f.console,
        elapsed: f.elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(job_status("x\nHPMMAP-JOB-EXIT 3\n[ 1.0] reboot\n"), Some(3));
        assert_eq!(job_status("HPMMAP-JOB-EXIT 0\r\n"), Some(0));
        assert_eq!(job_status("no marker"), None);
    }
}
