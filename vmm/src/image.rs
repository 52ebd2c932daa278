//! The job image directory written by `hpmmap-image build` (docs/architecture.md, Interface 3).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: u32 = 1;

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub kernel: String,
    #[serde(default)]
    pub bzimage: Option<String>,
    #[serde(default)]
    pub initramfs: Option<String>,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default)]
    pub kernel_version: Option<String>,
    #[serde(default)]
    pub job: Option<String>,
    /// A read-only root filesystem image beside the kernel (issue 15 item 2): the VMM
    /// attaches it as a virtio-blk disk with serial `hpmmap-root`, so it costs no guest RAM.
    #[serde(default)]
    pub rootfs: Option<RootfsManifest>,
    /// What the initramfs occupies in guest RAM once unpacked, as the builder measured it.
    #[serde(default)]
    pub initramfs_bytes: Option<u64>,
}

/// `"rootfs": {"file": NAME, "format": "squashfs"|"erofs", "sha256": HEX, "bytes": N}`.
#[derive(Debug, Deserialize)]
pub struct RootfsManifest {
    pub file: String,
    pub format: String,
    #[serde(default)]
    pub sha256: Option<String>,
    pub bytes: u64,
}

/// The serial the image's root filesystem disk gets; the guest's init finds it by it.
pub const ROOTFS_SERIAL: &str = "hpmmap-root";

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("--image {0}: cannot read {MANIFEST}: {1}")]
    Unreadable(PathBuf, std::io::Error),
    #[error("--image {0}: {MANIFEST} is not a job image manifest: {1}")]
    Invalid(PathBuf, String),
    #[error("--image {0}: manifest format {1} is not supported (this VMM reads format {FORMAT})")]
    Format(PathBuf, u32),
    #[error("--image {0}: {1} '{2}' must be a file name inside the image directory")]
    BadName(PathBuf, &'static str, String),
    #[error("--image {0}: rootfs {1}: {2}")]
    Rootfs(PathBuf, String, String),
}

/// What the VMM boots from an image.
#[derive(Debug, Clone)]
pub struct ImageBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub job: Option<String>,
    /// The initramfs's size: what the image itself costs in guest RAM.
    pub initramfs_bytes: Option<u64>,
    pub rootfs: Option<Rootfs>,
}

/// The image's root filesystem disk, checked: a regular file (not a link) inside the
/// image directory, of the size the manifest records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    pub path: PathBuf,
    pub format: String,
    pub bytes: u64,
}

fn rootfs(dir: &Path, m: &RootfsManifest) -> Result<Rootfs, ImageError> {
    let path = member(dir, "rootfs", &m.file)?;
    let bad = |why: String| ImageError::Rootfs(dir.to_path_buf(), m.file.clone(), why);
    if !matches!(m.format.as_str(), "squashfs" | "erofs") {
        return Err(bad(format!(
            "format '{}' is not squashfs or erofs",
            m.format
        )));
    }
    let meta = std::fs::symlink_metadata(&path).map_err(|e| bad(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() != m.bytes {
        return Err(bad(format!(
            "{} bytes, the manifest says {}",
            meta.len(),
            m.bytes
        )));
    }
    Ok(Rootfs {
        path,
        format: m.format.clone(),
        bytes: m.bytes,
    })
}

fn member(dir: &Path, field: &'static str, name: &str) -> Result<PathBuf, ImageError> {
    let p = Path::new(name);
    if name.is_empty() || p.components().count() != 1 || name == ".." || name == "." {
        return Err(ImageError::BadName(
            dir.to_path_buf(),
            field,
            name.to_string(),
        ));
    }
    Ok(dir.join(p))
}

pub fn read(dir: &Path) -> Result<ImageBoot, ImageError> {
    let text = std::fs::read_to_string(dir.join(MANIFEST))
        .map_err(|e| ImageError::Unreadable(dir.to_path_buf(), e))?;
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| ImageError::Invalid(dir.to_path_buf(), e.to_string()))?;
    if m.format != FORMAT {
        return Err(ImageError::Format(dir.to_path_buf(), m.format));
    }
    let initrd = m
        .initramfs
        .as_deref()
        .map(|n| member(dir, "initramfs", n))
        .transpose()?;
    Ok(ImageBoot {
        kernel: member(dir, "kernel", &m.kernel)?,
        // The builder's unpacked size when it recorded one, else the file's.
        initramfs_bytes: m.initramfs_bytes.filter(|&b| b > 0).or_else(|| {
            initrd
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
        }),
        initrd,
        cmdline: m.cmdline,
        job: m.job,
        rootfs: m.rootfs.as_ref().map(|r| rootfs(dir, r)).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(name: &str, manifest: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hpmmap-image-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(MANIFEST), manifest).unwrap();
        d
    }

    #[test]
    fn reads_a_manifest() {
        let d = dir_with(
            "ok",
            r#"{ "format": 1, "kernel": "vmlinux", "bzimage": "bzImage",
                "initramfs": "initramfs.cpio.gz", "cmdline": "console=ttyS0 quiet",
                "kernel_version": "6.1.0-28-amd64", "job": "cg", "hpmmap": true,
                "packages": {"linux-image-6.1.0-28-amd64": "6.1.119-1"}, "files": {} }"#,
        );
        let b = read(&d).unwrap();
        assert_eq!(b.kernel, d.join("vmlinux"));
        assert_eq!(b.initrd, Some(d.join("initramfs.cpio.gz")));
        assert_eq!(b.cmdline, "console=ttyS0 quiet");
        assert_eq!(b.job.as_deref(), Some("cg"));
        assert_eq!(
            b.initramfs_bytes, None,
            "no initramfs file, no recorded size"
        );
        std::fs::write(d.join("initramfs.cpio.gz"), [0u8; 100]).unwrap();
        assert_eq!(read(&d).unwrap().initramfs_bytes, Some(100));
        let with_size = std::fs::read_to_string(d.join(MANIFEST))
            .unwrap()
            .replace(r#""job": "cg""#, r#""job": "cg", "initramfs_bytes": 5000"#);
        std::fs::write(d.join(MANIFEST), with_size).unwrap();
        assert_eq!(read(&d).unwrap().initramfs_bytes, Some(5000));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn refuses_bad_manifests() {
        let d = dir_with("fmt", r#"{ "format": 2, "kernel": "vmlinux" }"#);
        assert!(matches!(read(&d), Err(ImageError::Format(_, 2))));
        let d2 = dir_with("escape", r#"{ "format": 1, "kernel": "../../etc/passwd" }"#);
        assert!(matches!(read(&d2), Err(ImageError::BadName(..))));
        let d3 = dir_with("junk", "not json");
        assert!(read(&d3).unwrap_err().to_string().starts_with("--image "));
        assert!(matches!(
            read(Path::new("/nonexistent-image")),
            Err(ImageError::Unreadable(..))
        ));
        for d in [d, d2, d3] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn rootfs_is_a_checked_file_inside_the_image() {
        let m = |file: &str, format: &str, bytes: u64| {
            format!(
                r#"{{ "format": 1, "kernel": "vmlinux", "rootfs": {{ "file": "{file}",
                     "format": "{format}", "sha256": "00", "bytes": {bytes} }} }}"#
            )
        };
        let d = dir_with("rootfs", &m("root.squashfs", "squashfs", 4096));
        std::fs::write(d.join("root.squashfs"), vec![0u8; 4096]).unwrap();
        let r = read(&d).unwrap().rootfs.unwrap();
        assert_eq!(r.path, d.join("root.squashfs"));
        assert_eq!((r.format.as_str(), r.bytes), ("squashfs", 4096));
        std::os::unix::fs::symlink("/etc/hostname", d.join("link")).unwrap();
        for (manifest, why) in [
            (m("../root.squashfs", "squashfs", 4096), "file name inside"),
            (m("root.squashfs", "ext4", 4096), "not squashfs or erofs"),
            (m("root.squashfs", "erofs", 512), "the manifest says 512"),
            (m("missing", "erofs", 512), "rootfs missing"),
            (m("link", "erofs", 512), "not a regular file"),
        ] {
            std::fs::write(d.join(MANIFEST), manifest).unwrap();
            let e = read(&d).unwrap_err().to_string();
            assert!(e.contains(why) && e.starts_with("--image "), "{e}");
        }
        std::fs::remove_dir_all(d).unwrap();
    }
}
