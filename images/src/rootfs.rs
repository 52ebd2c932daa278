//! Building blocks of a guest initramfs: busybox-static from Debian with its applet links,
//! kernel modules with their modules.dep and load order, host binaries with the shared
//! libraries they need.

use crate::cpio::Archive;
use crate::debs::{Deb, DebCache, DebError};
use crate::init::MODULE_LIST;
use crate::job::{runtime_files, JobError};
use crate::kernel::Kernel;
use crate::kmods::{modules_dep, ModError, Module, ModuleTree};
use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RootfsError {
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error(transparent)]
    Mod(#[from] ModError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("busybox from {0}: {1}")]
    Busybox(PathBuf, String),
}

pub struct Busybox {
    pub deb: Deb,
    pub binary: PathBuf,
    /// Applet paths as `busybox --list-full` gives them (bin/sh, sbin/insmod, ...).
    pub applets: Vec<String>,
}

pub fn busybox(cache: &DebCache) -> Result<Busybox, RootfsError> {
    let deb = cache.get("busybox-static", None)?;
    let tree = cache.unpack("busybox", &[&deb], |_, _| Ok(()))?;
    let binary = tree.join("bin/busybox");
    let out = Command::new(&binary)
        .arg("--list-full")
        .output()
        .map_err(|e| RootfsError::Busybox(deb.path.clone(), e.to_string()))?;
    if !out.status.success() {
        return Err(RootfsError::Busybox(
            deb.path.clone(),
            "`busybox --list-full` failed".into(),
        ));
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect();
    applets.sort();
    Ok(Busybox {
        deb,
        binary,
        applets,
    })
}

fn read(p: &Path) -> Result<Vec<u8>, RootfsError> {
    std::fs::read(p).map_err(|e| RootfsError::Io(p.to_path_buf(), e))
}

/// The skeleton every guest gets: busybox and its links, the directories init mounts
/// on, and /dev/console (the kernel opens it for init's stdio before devtmpfs exists).
pub fn base(bb: &Busybox) -> Result<Archive, RootfsError> {
    let mut a = Archive::new();
    for d in ["dev", "proc", "sys", "tmp", "run", "root", "etc", "mnt"] {
        a.dir(d);
    }
    a.char_dev("dev/console", 0o600, 5, 1);
    a.char_dev("dev/null", 0o666, 1, 3);
    a.file("bin/busybox", 0o755, read(&bb.binary)?);
    for app in &bb.applets {
        a.symlink(app, "/bin/busybox");
    }
    a.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
    );
    a.file("etc/group", 0o644, b"root:x:0:\n".to_vec());
    Ok(a)
}

/// Adds `wanted` kernel modules and their dependencies; returns them in load order.
pub fn add_modules(
    a: &mut Archive,
    kernel: &Kernel,
    wanted: &[&str],
) -> Result<Vec<Module>, RootfsError> {
    add_modules_in(a, kernel, wanted, "")
}

/// `add_modules` with the module tree and list under `prefix` (e.g. ".hpmmap").
pub fn add_modules_in(
    a: &mut Archive,
    kernel: &Kernel,
    wanted: &[&str],
    prefix: &str,
) -> Result<Vec<Module>, RootfsError> {
    let tree = ModuleTree::open(&kernel.modules_dir())?;
    let mods = tree.closure(wanted)?;
    let pre = if prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", prefix.trim_matches('/'))
    };
    let base = format!("{pre}lib/modules/{}", kernel.abi);
    for m in &mods {
        a.file(
            &format!("{base}/{}", m.rel),
            0o644,
            read(&tree.root().join(&m.rel))?,
        );
    }
    a.file(
        &format!("{base}/modules.dep"),
        0o644,
        modules_dep(&mods).into_bytes(),
    );
    let list: String = mods.iter().map(|m| format!("{}\n", m.rel)).collect();
    a.file(&format!("{pre}{MODULE_LIST}"), 0o644, list.into_bytes());
    Ok(mods)
}

/// Copies a host executable to `guest` with whatever it needs to run (loader, libraries).
pub fn add_program(a: &mut Archive, guest: &str, host: &Path) -> Result<(), RootfsError> {
    for f in runtime_files(host)? {
        if !a.contains(&f.guest) {
            a.file(&f.guest, 0o755, read(&f.host)?);
        }
    }
    a.file(guest, 0o755, read(host)?);
    Ok(())
}
