//! The read-only root image: a job tree too large to sit in guest RAM as an initramfs goes
//! into a squashfs file, which the VMM attaches as a read-only virtio-blk disk (serial
//! `hpmmap-root`) and the init mounts under a tmpfs overlay.
//!
//! Why squashfs rather than erofs: Debian's mksquashfs (4.5) builds reproducibly by default
//! (`-mkfs-time`, `-all-time`, `-all-root` pin what is left), compresses with zstd on every
//! core, and bookworm's 6.1 kernel has SQUASHFS_ZSTD; bookworm's mkfs.erofs (1.5) has only
//! lz4 and a single thread, so the image would be larger and slower to build on 2 cores.

use crate::cpio::Archive;
use crate::tree::{self, TreeError};
use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

pub const FILE_NAME: &str = "rootfs.squashfs";
pub const FORMAT: &str = "squashfs";
/// The virtio-blk serial the init looks for.
pub const SERIAL: &str = "hpmmap-root";
/// The kernel modules the init needs to find and mount it.
pub const MODULES: [&str; 5] = [
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "squashfs",
    "overlay",
];

#[derive(Debug, Error)]
pub enum DiskError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("mksquashfs is not installed (Debian package squashfs-tools; scripts/setup-host.sh installs it)")]
    NoTool,
    #[error("mksquashfs failed: {0}")]
    Failed(String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Writes `a` as a squashfs image at `out`, using `scratch` (new) for the tree.
pub fn build(a: &Archive, scratch: &Path, out: &Path) -> Result<(), DiskError> {
    tree::write_dir(a, scratch)?;
    let r = Command::new("mksquashfs")
        .arg(scratch)
        .arg(out)
        .args([
            "-noappend",
            "-reproducible",
            "-all-root",
            "-no-xattrs",
            "-mkfs-time",
            "0",
            "-all-time",
            "0",
            "-comp",
            "zstd",
            // Level 3, not mksquashfs's 15: 417 MiB of Open MPI + LAMMPS took 91 s at 15
            // on 2 cores; the image is read once per job.
            "-Xcompression-level",
            "3",
            "-quiet",
            "-no-progress",
        ])
        .output();
    let _ = std::fs::remove_dir_all(scratch);
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DiskError::NoTool),
        Err(e) => Err(DiskError::Io(out.to_path_buf(), e)),
        Ok(o) if !o.status.success() => Err(DiskError::Failed(
            String::from_utf8_lossy(&o.stderr).trim().to_string(),
        )),
        Ok(_) => Ok(()),
    }
}
