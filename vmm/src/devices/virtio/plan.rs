//! Which disks a run attaches, checked before anything on the host changes: `--disk`
//! flags, the image's root filesystem (serial `hpmmap-root`, read-only) and `--output`'s
//! disk (serial `hpmmap-out`). Serials are unique: the guest finds disks by them.

use super::block::DiskSpec;
use super::output;
use std::path::{Path, PathBuf};

/// `--output DIR [--output-size SIZE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub dir: PathBuf,
    pub bytes: u64,
}

/// Every disk spec in bus order (image root first, then --disk in order; the output disk is
/// added when the VM is built), each checked.
pub fn disks(
    flags: &[String],
    rootfs: Option<&Path>,
    output: Option<&OutputSpec>,
) -> Result<Vec<DiskSpec>, String> {
    let mut out = Vec::new();
    if let Some(p) = rootfs {
        out.push(DiskSpec {
            path: p.to_path_buf(),
            ro: true,
            serial: crate::image::ROOTFS_SERIAL.into(),
        });
    }
    for f in flags {
        out.push(DiskSpec::parse(f).map_err(|e| e.to_string())?);
    }
    let mut serials: Vec<&str> = Vec::new();
    if output.is_some() {
        serials.push(output::SERIAL);
    }
    for d in &out {
        d.check().map_err(|e| e.to_string())?;
        if serials.contains(&d.serial.as_str()) {
            let by = match d.serial.as_str() {
                crate::image::ROOTFS_SERIAL if rootfs.is_some() => " (the image's rootfs has it)",
                output::SERIAL if output.is_some() => " (--output's disk has it)",
                _ => "",
            };
            return Err(format!(
                "--disk {}: serial '{}' is used twice{by}",
                d.path.display(),
                d.serial
            ));
        }
        serials.push(&d.serial);
    }
    if let Some(o) = output {
        output::check(&o.dir, o.bytes).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_unique_and_files_checked() {
        let f = std::env::temp_dir().join(format!("hpmmap-plan-{}.img", std::process::id()));
        std::fs::write(&f, vec![0u8; 4096]).unwrap();
        let p = f.display().to_string();
        let d = disks(&[format!("{p},serial=a"), format!("{p},ro")], None, None).unwrap();
        assert_eq!(d.len(), 2);
        let e = disks(
            &[format!("{p},serial=a"), format!("{p},serial=a")],
            None,
            None,
        );
        assert!(e.unwrap_err().contains("serial 'a' is used twice"));
        let e = disks(&[format!("{p},serial=hpmmap-root")], Some(&f), None).unwrap_err();
        assert!(e.contains("the image's rootfs has it"), "{e}");
        let out = OutputSpec {
            dir: std::env::temp_dir().join("hpmmap-plan-out-never-made"),
            bytes: 1 << 20,
        };
        let e = disks(&[format!("{p},serial=hpmmap-out")], None, Some(&out)).unwrap_err();
        assert!(e.contains("--output's disk has it"), "{e}");
        let d = disks(&[], Some(&f), Some(&out)).unwrap();
        assert_eq!((d[0].serial.as_str(), d[0].ro), ("hpmmap-root", true));
        assert!(!out.dir.exists(), "checks create nothing");
        assert!(disks(&["/nonexistent.img".into()], None, None).is_err());
        std::fs::remove_file(f).unwrap();
    }
}
