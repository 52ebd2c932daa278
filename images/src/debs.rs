//! Debian packages: which version apt offers, the shared download cache
//! (`${HPMMAP_CACHE:-$HOME/.cache/hpmmap}/debs/`, files named as `apt-get download` names
//! them), and unpacked trees cached beside it so a second build needs no network and no
//! re-extraction.

use crate::progress;
use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DebError {
    #[error("package {package}: apt does not know it and the cache {cache} has no copy (is the name right? has `apt-get update` run?)")]
    Unavailable { package: String, cache: PathBuf },
    #[error("package {package} {version}: apt-get download failed and the cache {cache} has no copy: {detail}")]
    Download {
        package: String,
        version: String,
        cache: PathBuf,
        detail: String,
    },
    #[error("unpacking {deb}: {detail}")]
    Unpack { deb: PathBuf, detail: String },
    #[error("package cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deb {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
}

impl Deb {
    /// One file of the package's data, e.g. `./usr/share/lammps/examples/melt/in.melt` (the
    /// path as `dpkg-deb --fsys-tarfile` lists it).
    pub fn read_member(&self, member: &str) -> Result<Vec<u8>, DebError> {
        let unpack = |detail: String| DebError::Unpack {
            deb: self.path.clone(),
            detail,
        };
        let o = Command::new("sh")
            .arg("-c")
            .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -xO \"$2\"")
            .arg("sh")
            .arg(&self.path)
            .arg(member)
            .output()
            .map_err(|e| unpack(format!("dpkg-deb | tar: {e}")))?;
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            return Err(unpack(format!("{member}: {}", err.trim())));
        }
        Ok(o.stdout)
    }

    fn file_stem(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct DebCache {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DebError + '_ {
    move |source| DebError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `apt-get download` writes an epoch's colon as `%3a`.
fn file_version(v: &str) -> String {
    v.replace(':', "%3a")
}

/// (name, version) from `name_version_arch.deb`.
fn parse_deb_name(file: &str) -> Option<(String, String)> {
    let stem = file.strip_suffix(".deb")?;
    let mut parts = stem.splitn(3, '_');
    let name = parts.next()?;
    let version = parts.next()?;
    parts.next()?;
    Some((name.to_string(), version.replace("%3a", ":")))
}

/// The version apt would install, or None when apt does not know the package.
pub fn apt_candidate(package: &str) -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v != "(none)")
}

/// The packages `package` depends on, as apt-cache lists them.
pub fn apt_depends(package: &str) -> Vec<String> {
    let Ok(out) = Command::new("apt-cache")
        .args(["depends", package])
        .output()
    else {
        return vec![];
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|d| d.trim().trim_matches(|c| c == '<' || c == '>').to_string())
        .collect()
}

impl DebCache {
    pub fn from_env() -> Self {
        let root = match std::env::var_os("HPMMAP_CACHE") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
                PathBuf::from(home).join(".cache/hpmmap")
            }
        };
        Self { root }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn debs_dir(&self) -> PathBuf {
        self.root.join("debs")
    }

    /// Cached copies of `package`, newest file name last.
    pub fn cached(&self, package: &str) -> Vec<Deb> {
        let mut found: Vec<Deb> = std::fs::read_dir(self.debs_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let file = e.file_name().to_string_lossy().into_owned();
                let (name, version) = parse_deb_name(&file)?;
                (name == package).then(|| Deb {
                    name,
                    version,
                    path: e.path(),
                })
            })
            .collect();
        found.sort_by(|a, b| a.path.cmp(&b.path));
        found
    }

    /// Whether apt or the cache can supply `package`.
    pub fn knows(&self, package: &str) -> bool {
        apt_candidate(package).is_some() || !self.cached(package).is_empty()
    }

    /// The package at `version` (default: apt's candidate), from the cache or downloaded
    /// into it. Without apt metadata the newest cached copy is used.
    pub fn get(&self, package: &str, version: Option<&str>) -> Result<Deb, DebError> {
        let want = version
            .map(str::to_string)
            .or_else(|| apt_candidate(package));
        let cached = self.cached(package);
        let Some(want) = want else {
            return cached.into_iter().last().ok_or(DebError::Unavailable {
                package: package.to_string(),
                cache: self.debs_dir(),
            });
        };
        if let Some(d) = cached.into_iter().find(|d| d.version == want) {
            return Ok(d);
        }
        self.download(package, &want)
    }

    fn download(&self, package: &str, version: &str) -> Result<Deb, DebError> {
        let dir = self.debs_dir();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        // Download into a private directory, then rename: a killed download never
        // leaves a truncated .deb that later builds would trust.
        let tmp = dir.join(format!(".download-{}-{package}", crate::progress::unique()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        progress::step(format!(
            "downloading {package} {version} into {}",
            dir.display()
        ));
        let out = Command::new("apt-get")
            .args(["download", "-q", &format!("{package}={version}")])
            .current_dir(&tmp)
            .output();
        let fail = |detail: String| DebError::Download {
            package: package.to_string(),
            version: version.to_string(),
            cache: dir.clone(),
            detail,
        };
        let result = match out {
            Err(e) => Err(fail(format!("cannot run apt-get: {e}"))),
            Ok(o) if !o.status.success() => {
                let err = String::from_utf8_lossy(&o.stderr);
                let last = err
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("no message")
                    .trim()
                    .to_string();
                Err(fail(last))
            }
            Ok(_) => {
                let name = format!("{package}_{}_", file_version(version));
                let got = std::fs::read_dir(&tmp)
                    .map_err(io(&tmp))?
                    .flatten()
                    .find(|e| e.file_name().to_string_lossy().starts_with(&name));
                match got {
                    None => Err(fail("apt-get reported success but wrote no .deb".into())),
                    Some(e) => {
                        let dest = dir.join(e.file_name());
                        std::fs::rename(e.path(), &dest).map_err(io(&dest))?;
                        Ok(Deb {
                            name: package.to_string(),
                            version: version.to_string(),
                            path: dest,
                        })
                    }
                }
            }
        };
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    /// `dpkg -x` of `debs` into one tree under `<cache>/unpacked/`, done once per set of
    /// package files; `fixup(tree, final_path)` runs on the fresh tree before it is published.
    pub fn unpack(
        &self,
        label: &str,
        debs: &[&Deb],
        fixup: impl FnOnce(&Path, &Path) -> Result<(), DebError>,
    ) -> Result<PathBuf, DebError> {
        let key = debs
            .iter()
            .map(|d| d.file_stem())
            .collect::<Vec<_>>()
            .join("+");
        let base = self.root.join("unpacked");
        let dest = base.join(format!("{label}-{}", short_hash(&key)));
        if dest.join(".complete").exists() {
            return Ok(dest);
        }
        std::fs::create_dir_all(&base).map_err(io(&base))?;
        let tmp = base.join(format!(".{label}.tmp-{}", crate::progress::unique()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let r = (|| {
            for d in debs {
                progress::step(format!("unpacking {}", d.path.display()));
                let o = Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(&d.path)
                    .arg(&tmp)
                    .output()
                    .map_err(|e| DebError::Unpack {
                        deb: d.path.clone(),
                        detail: format!("cannot run dpkg-deb: {e}"),
                    })?;
                if !o.status.success() {
                    return Err(DebError::Unpack {
                        deb: d.path.clone(),
                        detail: String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    });
                }
            }
            fixup(&tmp, &dest)?;
            std::fs::write(tmp.join(".complete"), key.as_bytes()).map_err(io(&tmp))
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if std::fs::rename(&tmp, &dest).is_err() {
            // Another build published the same tree first; use theirs.
            let _ = std::fs::remove_dir_all(&tmp);
            if !dest.join(".complete").exists() {
                return Err(DebError::Unpack {
                    deb: debs[0].path.clone(),
                    detail: format!("cannot publish {}", dest.display()),
                });
            }
        }
        Ok(dest)
    }
}

pub fn short_hash(s: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(s.as_bytes());
    h[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real .deb made with dpkg-deb: a member comes back byte for byte; a missing one is
    /// an Unpack error naming it.
    #[test]
    fn read_member_reads_one_file_of_a_real_deb() {
        let dir = std::env::temp_dir().join(format!("hpmmap-deb-member-{}", std::process::id()));
        let root = dir.join("pkg");
        std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(root.join("usr/share/x")).unwrap();
        std::fs::write(
            root.join("DEBIAN/control"),
            "Package: x\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n",
        )
        .unwrap();
        std::fs::write(root.join("usr/share/x/in.melt"), b"units lj\n").unwrap();
        let path = dir.join("x_1_all.deb");
        let st = Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(&root)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let deb = Deb {
            name: "x".into(),
            version: "1".into(),
            path,
        };
        assert_eq!(
            deb.read_member("./usr/share/x/in.melt").unwrap(),
            b"units lj\n"
        );
        let e = deb
            .read_member("./usr/share/x/nope")
            .unwrap_err()
            .to_string();
        assert!(e.contains("./usr/share/x/nope"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn deb_file_names() {
        assert_eq!(
            parse_deb_name("busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"),
            Some(("busybox-static".into(), "1:1.35.0-4+deb12u1+b1".into()))
        );
        assert_eq!(parse_deb_name("foo.deb"), None);
        assert_eq!(file_version("1:2.0"), "1%3a2.0");
    }

    #[test]
    fn empty_cache_without_apt_answer_names_package_and_cache() {
        let dir = std::env::temp_dir().join(format!("hpmmap-debs-{}", std::process::id()));
        let c = DebCache::at(&dir);
        let e = c
            .get("hpmmap-no-such-package-xyz", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hpmmap-no-such-package-xyz"), "{e}");
        assert!(e.contains(&dir.join("debs").display().to_string()), "{e}");
        assert!(!dir.exists(), "nothing written for a failed lookup");
    }
}
