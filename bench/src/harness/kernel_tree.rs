//! The competing kernel build's source tree and the tools it needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::competitor;

/// The source tree the builds compile: Debian's linux-source-6.1 (the paper's competing
/// workload is a kernel build), extracted once under `<cache>/bench/`, its .deb downloaded
/// with `apt-get download` into `<cache>/debs/` when not there yet.
pub fn ensure_kernel_tree(cache: &Path) -> Result<PathBuf> {
    let bench = cache.join("bench");
    let tree = bench.join("linux-source-6.1");
    let marker = bench.join(".linux-source-6.1.extracted");
    if marker.exists() && tree.join("Makefile").exists() {
        return Ok(tree);
    }
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).with_context(|| debs.display().to_string())?;
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(&debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("linux-source-6.1_"))
            })
    };
    let deb = match find() {
        Some(d) => d,
        None => {
            eprintln!(
                "[bench] downloading linux-source-6.1 into {}",
                debs.display()
            );
            let st = Command::new("apt-get")
                .args(["download", "linux-source-6.1"])
                .current_dir(&debs)
                .status()
                .context("running apt-get download")?;
            if !st.success() {
                bail!("apt-get download linux-source-6.1 failed ({st})");
            }
            find().ok_or_else(|| anyhow!("apt-get download left no linux-source-6.1 .deb"))?
        }
    };
    eprintln!(
        "[bench] extracting {} (once; about a minute)",
        deb.display()
    );
    let tmp = bench.join(".extract");
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tmp)?;
    let st = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&tmp)
        .status()?;
    if !st.success() {
        bail!("dpkg -x {} failed ({st})", deb.display());
    }
    let tarball = tmp.join("usr/src/linux-source-6.1.tar.xz");
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&bench)
        .status()?;
    let _ = std::fs::remove_dir_all(&tmp);
    if !st.success() || !tree.join("Makefile").exists() {
        bail!(
            "extracting {} did not give {}",
            tarball.display(),
            tree.display()
        );
    }
    std::fs::write(&marker, "")?;
    Ok(tree)
}

/// Tools a kernel build needs that build-essential does not bring.
pub fn missing_kernel_build_tools() -> Vec<&'static str> {
    let mut miss: Vec<&str> = ["make", "gcc", "flex", "bison", "bc"]
        .into_iter()
        .filter(|t| !competitor::have(t))
        .collect();
    if !Path::new("/usr/include/libelf.h").exists() {
        miss.push("libelf-dev");
    }
    miss
}
