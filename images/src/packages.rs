//! `--packages LIST`: Debian packages with their dependency closure, as apt resolves it
//! against an empty dpkg status (so nothing of this host counts as installed), downloaded
//! into the shared cache (`<cache>/debs/`, where `apt-get download` also puts its files) and
//! unpacked once per closure into `<cache>/unpacked/`. Maintainer scripts do not run in the
//! image; the two things they do that a job needs are redone here: the alternatives links
//! (`update-alternatives --install` in postinst: `/usr/bin/mpirun`, `libblas.so.3`) and the
//! removal of docs, man pages and locales (`TRIM`).

use crate::debs::{Deb, DebCache, DebError};
use crate::progress;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PackageError {
    #[error(
        "--packages: package {package:?} does not exist in the apt sources searched ({suites})"
    )]
    Unknown { package: String, suites: String },
    #[error("--packages {0:?}: not a package name")]
    BadName(String),
    #[error("--packages: apt cannot install {packages}: {detail}")]
    Apt { packages: String, detail: String },
    #[error(
        "--packages: {package} {version} is not in the cache {cache} after apt-get ran: {detail}"
    )]
    Missing {
        package: String,
        version: String,
        cache: PathBuf,
        detail: String,
    },
    #[error(transparent)]
    Deb(#[from] DebError),
}

impl PackageError {
    /// A download or unpack failure of a package that exists is not bad input.
    pub fn is_input(&self) -> bool {
        !matches!(self, PackageError::Deb(DebError::Io { .. }))
    }
}

/// What the image leaves out of every package: documentation, manuals and translations.
pub const TRIM: [&str; 8] = [
    "usr/share/doc",
    "usr/share/doc-base",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/i18n",
];

/// The unpacked closure: its tree and every package's version.
#[derive(Debug, Clone)]
pub struct PackageTree {
    pub root: PathBuf,
    pub versions: BTreeMap<String, String>,
}

/// Splits `a,b c` into package names and checks each looks like one (Debian policy 5.6.1),
/// optionally pinned with `=VERSION`.
pub fn parse_list(lists: &[String]) -> Result<Vec<String>, PackageError> {
    let mut out: Vec<String> = Vec::new();
    for w in lists
        .iter()
        .flat_map(|l| l.split([',', ' ']))
        .filter(|w| !w.is_empty())
    {
        let name = w.split('=').next().unwrap_or("");
        let ok = name.len() >= 2
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+-.".contains(&c));
        if !ok {
            return Err(PackageError::BadName(w.to_string()));
        }
        if !out.iter().any(|o| o == w) {
            out.push(w.to_string());
        }
    }
    Ok(out)
}

/// The suites apt searches, as `apt-cache policy` lists them (`bookworm/main`, ...).
pub fn apt_suites() -> String {
    let text = Command::new("apt-cache")
        .arg("policy")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut suites: Vec<String> = text
        .lines()
        .filter(|l| l.trim_end().ends_with("Packages"))
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    suites.sort();
    suites.dedup();
    if suites.is_empty() {
        "none: apt has no package lists; run apt-get update".into()
    } else {
        suites.join(", ")
    }
}

/// `Inst NAME (VERSION ...)` lines of `apt-get install -s`, sorted by name.
pub fn parse_simulation(text: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?.to_string();
            let ver = w.next()?.strip_prefix('(')?.to_string();
            Some((name, ver))
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// apt options that make it resolve for an empty system and keep its files in `cache`.
fn apt_options(cache: &DebCache) -> Result<Vec<String>, PackageError> {
    let dir = cache.root().join("apt");
    std::fs::create_dir_all(&dir).map_err(|source| DebError::Io {
        path: dir.clone(),
        source,
    })?;
    let status = dir.join("status-empty");
    if !status.exists() {
        std::fs::write(&status, b"").map_err(|source| DebError::Io {
            path: status.clone(),
            source,
        })?;
    }
    Ok(vec![
        "-o".into(),
        format!("Dir::State::status={}", status.display()),
        "-o".into(),
        "APT::Install-Recommends=false".into(),
        "-o".into(),
        "Debug::NoLocking=1".into(),
    ])
}

/// The closure of `packages`: (name, version) of every package apt would install on an
/// empty system.
pub fn resolve(
    cache: &DebCache,
    packages: &[String],
) -> Result<Vec<(String, String)>, PackageError> {
    let out = Command::new("apt-get")
        .args(["install", "-s", "-q"])
        .args(apt_options(cache)?)
        .args(packages)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| PackageError::Apt {
            packages: packages.join(","),
            detail: format!("cannot run apt-get: {e}"),
        })?;
    let err = String::from_utf8_lossy(&out.stderr);
    for l in err.lines() {
        let p = l.strip_prefix("E: Unable to locate package ").or_else(|| {
            l.strip_prefix("E: Package '")
                .and_then(|r| r.split('\'').next())
        });
        if let Some(p) = p {
            return Err(PackageError::Unknown {
                package: p.trim().to_string(),
                suites: apt_suites(),
            });
        }
    }
    if !out.status.success() {
        let detail = err
            .lines()
            .filter(|l| l.starts_with("E:") || l.contains("Depends:"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(PackageError::Apt {
            packages: packages.join(","),
            detail: if detail.is_empty() {
                err.trim().to_string()
            } else {
                detail
            },
        });
    }
    Ok(parse_simulation(&String::from_utf8_lossy(&out.stdout)))
}

/// Every package of the closure from the cache, downloading (once) what it lacks.
pub fn fetch(
    cache: &DebCache,
    wanted: &[String],
    closure: &[(String, String)],
) -> Result<Vec<Deb>, PackageError> {
    let find = |name: &str, version: &str| {
        cache
            .cached(name)
            .into_iter()
            .find(|d| d.version == version)
    };
    let missing: Vec<&(String, String)> = closure
        .iter()
        .filter(|(n, v)| find(n, v).is_none())
        .collect();
    let mut detail = String::new();
    if !missing.is_empty() {
        let debs = cache.debs_dir();
        std::fs::create_dir_all(debs.join("partial")).map_err(|source| DebError::Io {
            path: debs.clone(),
            source,
        })?;
        progress::step(format!(
            "downloading {} of {} packages into {}",
            missing.len(),
            closure.len(),
            debs.display()
        ));
        let out = Command::new("apt-get")
            .args(["install", "-y", "-q", "--download-only"])
            .args(apt_options(cache)?)
            .arg("-o")
            .arg(format!("Dir::Cache::archives={}/", debs.display()))
            // The cache is root's or the user's, never _apt's.
            .args(["-o", "APT::Sandbox::User=root"])
            .args(wanted)
            .env("LC_ALL", "C")
            .output()
            .map_err(|e| PackageError::Apt {
                packages: wanted.join(","),
                detail: format!("cannot run apt-get: {e}"),
            })?;
        detail = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.starts_with("E:"))
            .collect::<Vec<_>>()
            .join("; ");
    }
    closure
        .iter()
        .map(|(n, v)| {
            find(n, v).ok_or_else(|| PackageError::Missing {
                package: n.clone(),
                version: v.clone(),
                cache: cache.debs_dir(),
                detail: if detail.is_empty() {
                    "no error from apt".into()
                } else {
                    detail.clone()
                },
            })
        })
        .collect()
}

/// Resolves, fetches and unpacks `packages` into one cached tree.
pub fn install(cache: &DebCache, lists: &[String]) -> Result<PackageTree, PackageError> {
    let wanted = parse_list(lists)?;
    progress::step(format!("resolving {}", wanted.join(",")));
    let closure = resolve(cache, &wanted)?;
    let debs = fetch(cache, &wanted, &closure)?;
    progress::step(format!(
        "{} packages in the closure of {}",
        debs.len(),
        wanted.join(",")
    ));
    let refs: Vec<&Deb> = debs.iter().collect();
    let root = cache.unpack("packages", &refs, |tree, _| {
        let mut alts = Vec::new();
        for d in &debs {
            alts.extend(postinst_alternatives(d)?);
        }
        // The highest priority claims a link first, as update-alternatives --auto would.
        alts.sort_by_key(|a| std::cmp::Reverse(a.priority));
        for a in &alts {
            link_alternative(tree, a)?;
        }
        for t in TRIM {
            let p = tree.join(t);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|source| DebError::Io { path: p, source })?;
            }
        }
        Ok(())
    })?;
    Ok(PackageTree {
        root,
        versions: closure.into_iter().collect(),
    })
}

/// One `update-alternatives --install LINK NAME PATH PRIO [--slave LINK NAME PATH]...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    pub priority: i64,
    /// (link, path) for the master and each slave.
    pub links: Vec<(String, String)>,
}

/// The alternatives a maintainer script installs (continued lines joined; shell
/// variables are not expanded, so links that use them are skipped).
pub fn parse_alternatives(script: &str) -> Vec<Alternative> {
    let joined = script.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let Some(i) = w.iter().position(|x| *x == "--install") else {
            continue;
        };
        if !w[..i].iter().any(|x| x.ends_with("update-alternatives")) || w.len() < i + 5 {
            continue;
        }
        let Ok(priority) = w[i + 4].parse::<i64>() else {
            continue;
        };
        let mut links = vec![(w[i + 1].to_string(), w[i + 3].to_string())];
        let mut j = i + 5;
        while j + 3 < w.len() && w[j] == "--slave" {
            links.push((w[j + 1].to_string(), w[j + 3].to_string()));
            j += 4;
        }
        if links
            .iter()
            .all(|(l, p)| !l.contains('$') && !p.contains('$'))
        {
            out.push(Alternative { priority, links });
        }
    }
    out
}

fn postinst_alternatives(deb: &Deb) -> Result<Vec<Alternative>, DebError> {
    let o = Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb.path)
        .arg("postinst")
        .output()
        .map_err(|e| DebError::Unpack {
            deb: deb.path.clone(),
            detail: format!("cannot run dpkg-deb: {e}"),
        })?;
    if !o.status.success() {
        return Ok(vec![]); // no postinst
    }
    Ok(parse_alternatives(&String::from_utf8_lossy(&o.stdout)))
}

fn link_alternative(tree: &Path, alt: &Alternative) -> Result<(), DebError> {
    {
        for (link, path) in &alt.links {
            let l = tree.join(link.trim_start_matches('/'));
            let target = tree.join(path.trim_start_matches('/'));
            // Only links to something the image has, and never over a real file or a
            // link that a higher priority already made.
            if std::fs::symlink_metadata(&target).is_err() || std::fs::symlink_metadata(&l).is_ok()
            {
                continue;
            }
            if let Some(parent) = l.parent() {
                std::fs::create_dir_all(parent).map_err(|source| DebError::Io {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            std::os::unix::fs::symlink(path, &l).map_err(|source| DebError::Io {
                path: l.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_and_names_checked() {
        let l = parse_list(&["openmpi-bin,lammps".into(), "hpcc lammps".into()]).unwrap();
        assert_eq!(l, ["openmpi-bin", "lammps", "hpcc"]);
        assert!(parse_list(&["libstdc++6=12.2.0-14".into()]).is_ok());
        assert!(matches!(
            parse_list(&["Bad_Name".into()]),
            Err(PackageError::BadName(_))
        ));
        assert!(matches!(
            parse_list(&["-o".into()]),
            Err(PackageError::BadName(_))
        ));
    }

    #[test]
    fn simulation_lines() {
        let t = "Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []\nConf libc6 (2.36)\nInst busybox (1:1.35.0-4 Debian:12 [amd64])\n";
        assert_eq!(
            parse_simulation(t),
            [
                ("busybox".to_string(), "1:1.35.0-4".to_string()),
                ("libc6".to_string(), "2.36-9+deb12u14".to_string())
            ]
        );
    }

    #[test]
    fn alternatives_from_postinst() {
        let s = "#!/bin/sh\nset -e\nupdate-alternatives \\\n\t--install /usr/bin/mpirun mpirun /usr/bin/mpirun.openmpi 50 \\\n\t--slave /usr/bin/mpiexec mpiexec /usr/bin/mpiexec.openmpi\nupdate-alternatives --install /usr/lib/$ARCH/libblas.so.3 x /usr/lib/$ARCH/blas/libblas.so.3 10\n";
        assert_eq!(
            parse_alternatives(s),
            [Alternative {
                priority: 50,
                links: vec![
                    ("/usr/bin/mpirun".into(), "/usr/bin/mpirun.openmpi".into()),
                    ("/usr/bin/mpiexec".into(), "/usr/bin/mpiexec.openmpi".into())
                ]
            }]
        );
    }
}
