//! manifest.json of a job image (docs/architecture.md, Interface 3). Maps are sorted and
//! nothing time-dependent is recorded, so equal inputs give equal manifests.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

pub const FORMAT: u32 = 1;
pub const FILE_NAME: &str = "manifest.json";
pub const KERNEL: &str = "vmlinux";
pub const BZIMAGE: &str = "bzImage";
pub const INITRAMFS: &str = "initramfs.cpio.gz";

/// The files an image directory holds; anything else makes `--out` "other content".
pub const IMAGE_FILES: [&str; 5] = [
    KERNEL,
    BZIMAGE,
    INITRAMFS,
    FILE_NAME,
    crate::rootdisk::FILE_NAME,
];

/// The read-only root image beside the initramfs (attached as virtio-blk, serial
/// `hpmmap-root`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootImage {
    pub file: String,
    pub format: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    pub kernel: String,
    pub bzimage: String,
    pub initramfs: String,
    pub cmdline: String,
    pub kernel_version: String,
    /// The job as given (`--job`), or the built-in workload's command.
    pub job: String,
    /// Whether the job runs through hpmmap-run with the hpmmap module.
    pub hpmmap: bool,
    pub ranks: u32,
    pub packages: BTreeMap<String, String>,
    pub files: BTreeMap<String, String>,
    /// Kernel modules loaded at boot, in load order.
    #[serde(default)]
    pub modules: Vec<String>,
    /// What the build decided and why (e.g. a part of hpmmap missing from the workspace).
    #[serde(default)]
    pub notes: Vec<String>,
    /// The job's root tree on a read-only disk, when it is not in the initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootImage>,
    /// Bytes the initramfs occupies in guest RAM once unpacked (its files' data).
    #[serde(default)]
    pub initramfs_bytes: u64,
    /// Every file of the job's root tree: sha256, or `symlink:TARGET`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tree_files: BTreeMap<String, String>,
    /// The job's environment and working directory (job-tree images).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// How the ranks start: `copies` or the MPI launcher's path in the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher: Option<String>,
    /// The user the job runs as (job-tree images); root otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The task agent's path in the image (vmm/task): booted with `hpmmap.serve=1` and
    /// `hpmmap-vmm --vsock`, the VM runs the host's tasks (Slurm steps) instead of its job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Manifest {
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest serialises");
        s.push('\n');
        s
    }

    pub fn read(dir: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(dir.join(FILE_NAME))?;
        serde_json::from_str(&text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Names of files whose sha256 differs from the manifest (or that are missing).
    pub fn verify(&self, dir: &Path) -> Vec<String> {
        let root = self
            .rootfs
            .as_ref()
            .map(|r| (r.file.clone(), r.sha256.clone()));
        self.files
            .iter()
            .map(|(n, h)| (n.clone(), h.clone()))
            .chain(root)
            .collect::<BTreeMap<_, _>>()
            .iter()
            .filter(|(name, hash)| {
                std::fs::read(dir.join(name))
                    .map(|d| sha256_hex(&d) != **hash)
                    .unwrap_or(true)
            })
            .map(|(n, _)| n.clone())
            .collect()
    }
}
