//! Running hpmmap-vmm in the images/ nested lab (`hpmmap-lab run`): finding the lab tools
//! built next to hpmmap-vmm, building a job image, skipping with the reason where the lab
//! cannot run here. Figures from the lab are emulation figures (QEMU/TCG), never hardware.

use super::{run_cmd, vmm_bin, TempDir, Tier};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// L1 for a 2 GiB, 2-vCPU L2 on 1 GiB pages: 6 GiB, 2 vCPUs (one L1 vCPU was seen to stall
/// an L2), 2 reserved 1 GiB pages, killed after 800 s.
pub const L2_ON_1G_PAGES: [&str; 8] = [
    "--mem",
    "6G",
    "--cpus",
    "2",
    "--hugepages",
    "2",
    "--timeout",
    "800",
];

/// A binary of the workspace built next to hpmmap-vmm.
pub fn sibling(name: &str) -> PathBuf {
    Path::new(vmm_bin()).parent().unwrap().join(name)
}

pub struct LabTools {
    pub image: PathBuf,
    pub lab: PathBuf,
}

/// The lab tools, or `None` after a lab-tier skip saying why the lab cannot run here.
pub fn lab_tools_or_skip(test: &str) -> Option<LabTools> {
    let (image, lab) = (sibling("hpmmap-image"), sibling("hpmmap-lab"));
    if !image.is_file() || !lab.is_file() {
        hpmmap_testkit::skip(
            Tier::Lab,
            test,
            "hpmmap-image / hpmmap-lab are not built next to hpmmap-vmm (cargo build -p hpmmap-image)",
        );
        return None;
    }
    // The lab's own answer (QEMU with igb, a guest kernel), as every lab test asks it.
    match Command::new(&lab).arg("check").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stdout).trim().to_string();
            hpmmap_testkit::skip(Tier::Lab, test, why);
            return None;
        }
        Err(e) => {
            hpmmap_testkit::skip(Tier::Lab, test, format!("{}: {e}", lab.display()));
            return None;
        }
    }
    hpmmap_testkit::ran(Tier::Lab, test);
    Some(LabTools { image, lab })
}

impl LabTools {
    /// Builds the default job image into `dir/img`; `None` after printing why when no image
    /// can be built here (exit 2: no kernel package).
    pub fn build_image(&self, test: &str, dir: &TempDir) -> Option<PathBuf> {
        let img = dir.path("img");
        let b = run_cmd(
            Command::new(&self.image)
                .args(["build", "--quiet", "--out"])
                .arg(&img),
            Duration::from_secs(900),
        );
        if b.code == Some(2) {
            let why = format!("no job image can be built here: {}", b.stderr.trim());
            hpmmap_testkit::skip(Tier::Lab, test, why);
            return None;
        }
        assert_eq!(b.code, Some(0), "hpmmap-image build: {}", b.stderr);
        Some(img)
    }

    /// `nice hpmmap-lab run LAB_ARGS --add IMG:/img --bins <hpmmap-vmm's dir> -- CMD`.
    pub fn lab_command(&self, lab_args: &[&str], img: &Path, cmd: &str) -> Command {
        let mut c = Command::new("nice");
        c.arg(&self.lab)
            .arg("run")
            .args(lab_args)
            .arg("--add")
            .arg(format!("{}:/img", img.display()))
            .arg("--bins")
            .arg(sibling(""))
            .args(["--", cmd]);
        c
    }
}

/// A lab run: the command's status in L1 comes back as hpmmap-lab's exit status.
pub struct LabRun {
    pub code: Option<i32>,
    /// stdout and stderr of hpmmap-lab together.
    pub out: String,
}

/// Prepares what a lab test needs: the tools and the default job image in a fresh temporary
/// directory (kept alive by the returned `TempDir`). `None` after printing why it cannot run.
pub fn lab_with_image(test: &str) -> Option<(LabTools, TempDir, PathBuf)> {
    let tools = lab_tools_or_skip(test)?;
    let dir = TempDir::new(test);
    let img = tools.build_image(test, &dir)?;
    Some((tools, dir, img))
}

impl LabTools {
    /// Runs `cmd` in L1 with the image at /img (15 min at most). Always `Some`; a lab that
    /// refuses the test's input fails the test.
    pub fn run(&self, test: &str, lab_args: &[&str], img: &Path, cmd: &str) -> Option<LabRun> {
        let r = run_cmd(
            &mut self.lab_command(lab_args, img, cmd),
            Duration::from_secs(900),
        );
        // hpmmap-lab exits 2 only for input errors (LabError::is_input): the test's own
        // arguments or command, never this machine; what the machine lacks is checked (and
        // skipped with its reason) before.
        assert_ne!(
            r.code,
            Some(2),
            "{test}: hpmmap-lab refused the test's input: {}",
            r.stderr.trim()
        );
        Some(LabRun {
            code: r.code,
            out: format!("{}{}", r.stdout, r.stderr),
        })
    }
}

/// A shell function for L1 scripts: `vmm_retrying ARGS...` runs `hpmmap-vmm ARGS` pinned to
/// L1's last CPU with a 150 s limit and boots again (3 boots at most) after the nested-SVM
/// failure signatures; failed boots print `L1-VMM-RETRY` and their output prefixed
/// `attemptN: `. One definition for every lab scenario: tests/lab/retry.sh explains it.
pub const VMM_RETRYING: &str = include_str!("../../../tests/lab/retry.sh");

/// The lab output without the lines of failed boots that `vmm_retrying` printed (prefixed
/// `attemptN: `), so markers are counted for the boots that count.
pub fn last_attempts(out: &str) -> String {
    out.lines()
        .filter(|l| !(l.starts_with("attempt") && l.contains(": ")))
        .collect::<Vec<_>>()
        .join("\n")
}

impl LabTools {
    /// `run` with `--boots 5` (hpmmap-lab's most): hpmmap-lab boots L1 again when L1 itself
    /// failed. Debian 6.1 under QEMU/TCG's nested SVM oopses, or stops for good, now and then
    /// while its KVM runs an L2, which nothing in L1 user space can cause; a clean-clone CI
    /// run on 2026-11-27 saw three such boots in a row.
    pub fn run_retrying(
        &self,
        test: &str,
        lab_args: &[&str],
        img: &Path,
        cmd: &str,
    ) -> Option<LabRun> {
        let mut args = lab_args.to_vec();
        args.extend(["--boots", "5"]);
        self.run(test, &args, img, cmd)
    }
}

/// The JSON between `begin` and `end` marker lines of the lab output.
pub fn json_between(out: &str, begin: &str, end: &str) -> serde_json::Value {
    let json = out
        .split(begin)
        .nth(1)
        .and_then(|s| s.split(end).next())
        .unwrap_or_else(|| panic!("no {begin} .. {end} in the lab output:\n{out}"));
    serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"))
}
