//! The output directory: built complete in a sibling temporary directory and renamed into
//! place, so a failed or interrupted build never leaves a half-written image. An existing
//! `--out` may be empty or a previous image; anything else is refused.

use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum OutError {
    #[error("--out {path}: {detail}")]
    Refused { path: PathBuf, detail: String },
    #[error("--out {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Refuses `out` when it is not a directory, or holds files an image does not have.
pub fn check(out: &Path, allowed: &[&str]) -> Result<(), OutError> {
    let refused = |detail: String| OutError::Refused {
        path: out.to_path_buf(),
        detail,
    };
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(OutError::Io(out.to_path_buf(), e)),
        Ok(m) if !m.is_dir() => Err(refused("exists and is not a directory".into())),
        Ok(_) => {
            let mut other: Vec<String> = std::fs::read_dir(out)
                .map_err(|e| OutError::Io(out.to_path_buf(), e))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !allowed.contains(&n.as_str()))
                .collect();
            other.sort();
            if other.is_empty() {
                Ok(())
            } else {
                Err(refused(format!(
                    "the directory has other content ({}); refusing to replace it (give an empty or new directory)",
                    other.join(", ")
                )))
            }
        }
    }
}

pub struct Staging {
    out: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

fn sibling(out: &Path, tag: &str) -> Result<PathBuf, OutError> {
    let name = out
        .file_name()
        .ok_or_else(|| OutError::Refused {
            path: out.to_path_buf(),
            detail: "names no directory".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{name}.{tag}-{}", crate::progress::unique())))
}

impl Staging {
    pub fn new(out: &Path) -> Result<Self, OutError> {
        let tmp = sibling(out, "tmp")?;
        if let Some(parent) = tmp.parent() {
            std::fs::create_dir_all(parent).map_err(|e| OutError::Io(out.to_path_buf(), e))?;
        }
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(|e| OutError::Io(tmp.clone(), e))?;
        Ok(Self {
            out: out.to_path_buf(),
            tmp,
            committed: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    pub fn commit(mut self, allowed: &[&str]) -> Result<(), OutError> {
        check(&self.out, allowed)?;
        let io = |e| OutError::Io(self.out.clone(), e);
        if self.out.exists() {
            let old = sibling(&self.out, "old")?;
            std::fs::rename(&self.out, &old).map_err(io)?;
            if let Err(e) = std::fs::rename(&self.tmp, &self.out) {
                let _ = std::fs::rename(&old, &self.out);
                return Err(io(e));
            }
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.tmp, &self.out).map_err(io)?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hpmmap-outdir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn refuses_other_content_and_files() {
        let d = tmpdir("other");
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        let e = check(&d, &["a"]).unwrap_err().to_string();
        assert!(e.contains("other content (notes.txt)"), "{e}");
        let e = check(&d.join("notes.txt"), &["a"]).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        assert!(check(&d.join("new"), &["a"]).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn staging_commits_or_leaves_nothing() {
        let d = tmpdir("stage");
        let out = d.join("img");
        {
            let s = Staging::new(&out).unwrap();
            std::fs::write(s.dir().join("a"), "1").unwrap();
            // dropped without commit
        }
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        let s = Staging::new(&out).unwrap();
        std::fs::write(s.dir().join("a"), "1").unwrap();
        s.commit(&["a"]).unwrap();
        let s = Staging::new(&out).unwrap();
        std::fs::write(s.dir().join("a"), "2").unwrap();
        s.commit(&["a"]).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("a")).unwrap(), "2");
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "no temporaries left"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
