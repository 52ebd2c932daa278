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
}

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
}

/// What the VMM boots from an image.
#[derive(Debug, Clone)]
pub struct ImageBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub job: Option<String>,
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
    Ok(ImageBoot {
        kernel: member(dir, "kernel", &m.kernel)?,
        initrd: m
            .initramfs
            .as_deref()
            .map(|n| member(dir, "initramfs", n))
            .transpose()?,
        cmdline: m.cmdline,
        job: m.job,
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
}
