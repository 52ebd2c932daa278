//! The job's own root tree (`--rootfs`, `--packages`, `--add`, `--env`, `--workdir`):
//! what the job sees as `/`, with the guest's tools under `/.hpmmap/` so they never
//! collide with the image's own `/bin` or `/lib` (which may be links in a merged-usr base).

use crate::cpio::{Archive, Node};
use crate::debs::DebCache;
use crate::job::{runtime_files, sh_quote, split, JobError};
use crate::oci::{self, OciError};
use crate::packages::{self, PackageError};
use crate::rootfs::Busybox;
use crate::tree::{self, TreeError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The task agent's file name (in `/{SYS}/bin`, or `/bin` of an initramfs-only image).
pub const AGENT_NAME: &str = "hpmmap-agent";
/// The job's environment for the task agent (`NAME=VALUE` lines).
pub const ENV_FILE: &str = "/job/env";
/// The guest's own tools inside a job tree.
pub const SYS: &str = ".hpmmap";
/// The unprivileged user jobs run as (Open MPI refuses root), and its ids.
pub const JOB_USER: &str = "hpmmap";
pub const JOB_UID: u32 = 4242;
/// Where the job writes results that come back to the host (`HPMMAP_OUTPUT`).
pub const OUTPUT_DIR: &str = "/out";
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

#[derive(Debug, Error)]
pub enum SpecError {
    #[error("--add {0:?}: expected HOST:GUEST with an absolute guest path")]
    AddSyntax(String),
    #[error("--add {0:?}: the host path {1} does not exist")]
    AddMissing(String, PathBuf),
    #[error("--add {0:?}: guest path {1:?} is reserved for the guest's own tools")]
    AddReserved(String, String),
    #[error("--env {0:?}: expected KEY=VALUE with KEY a shell variable name")]
    Env(String),
    #[error("--workdir {0:?}: must be an absolute path")]
    Workdir(String),
    #[error("--rootfs {0}: does not exist")]
    RootfsMissing(PathBuf),
    #[error("--job: program {0:?} is neither in the image ({1}) nor on this host")]
    NotInImage(String, String),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Packages(#[from] PackageError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Job(#[from] JobError),
}

impl SpecError {
    pub fn is_input(&self) -> bool {
        match self {
            SpecError::Packages(p) => p.is_input(),
            SpecError::Tree(TreeError::Io(..)) => false,
            _ => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    pub host: PathBuf,
    pub guest: String,
}

pub fn parse_add(spec: &str) -> Result<Add, SpecError> {
    let (h, g) = spec
        .rsplit_once(':')
        .ok_or_else(|| SpecError::AddSyntax(spec.into()))?;
    if h.is_empty() || !g.starts_with('/') || g.split('/').any(|c| c == "..") {
        return Err(SpecError::AddSyntax(spec.into()));
    }
    let first = g.trim_start_matches('/').split('/').next().unwrap_or("");
    if first == SYS || g.trim_end_matches('/') == "/init" {
        return Err(SpecError::AddReserved(spec.into(), g.into()));
    }
    let host = PathBuf::from(h);
    if std::fs::symlink_metadata(&host).is_err() {
        return Err(SpecError::AddMissing(spec.into(), host));
    }
    Ok(Add {
        host,
        guest: g.into(),
    })
}

pub fn parse_env(spec: &str) -> Result<(String, String), SpecError> {
    let (k, v) = spec
        .split_once('=')
        .ok_or_else(|| SpecError::Env(spec.into()))?;
    let ok = !k.is_empty()
        && !k.as_bytes()[0].is_ascii_digit()
        && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    if !ok {
        return Err(SpecError::Env(spec.into()));
    }
    Ok((k.into(), v.into()))
}

#[derive(Debug, Clone, Default)]
pub struct TreeSpec {
    pub rootfs: Option<PathBuf>,
    pub packages: Vec<String>,
    pub adds: Vec<Add>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
}

impl TreeSpec {
    pub fn wanted(&self) -> bool {
        self.rootfs.is_some() || !self.packages.is_empty() || !self.adds.is_empty()
    }

    /// Checks that need no download: syntax was checked while parsing; paths exist.
    pub fn check(&self) -> Result<(), SpecError> {
        if let Some(r) = &self.rootfs {
            if std::fs::metadata(r).is_err() {
                return Err(SpecError::RootfsMissing(r.clone()));
            }
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                return Err(SpecError::Workdir(w.clone()));
            }
        }
        packages::parse_list(&self.packages)?;
        Ok(())
    }
}

pub struct JobTree {
    pub archive: Archive,
    /// Every package of `--packages`' closure with its version.
    pub packages: BTreeMap<String, String>,
    /// The environment the job gets (base image's, then `--env`), in order.
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub notes: Vec<String>,
}

/// Base layers, packages and `--add`s, in that order (later ones win).
pub fn assemble(spec: &TreeSpec, cache: &DebCache) -> Result<JobTree, SpecError> {
    let mut a = Archive::new();
    let mut notes = Vec::new();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut workdir = None;
    if let Some(r) = &spec.rootfs {
        match oci::open(r)? {
            Some(img) => {
                crate::progress::step(format!("applying {}", img.description));
                for (i, l) in img.layers.iter().enumerate() {
                    oci::apply_layer(&mut a, l, i)?;
                }
                for e in &img.env {
                    if let Ok(kv) = parse_env(e) {
                        env.push(kv);
                    }
                }
                workdir = img.workdir.clone();
                notes.push(format!("base: {}", img.description));
            }
            None => {
                crate::progress::step(format!("copying the root tree {}", r.display()));
                tree::add_host(&mut a, r, "/")?;
                notes.push(format!("base: root directory {}", r.display()));
            }
        }
    }
    let mut versions = BTreeMap::new();
    if !spec.packages.is_empty() {
        let p = packages::install(cache, &spec.packages)?;
        crate::progress::step(format!("adding {} packages to the tree", p.versions.len()));
        tree::add_host(&mut a, &p.root, "/")?;
        // The cache's completion marker is no part of the image.
        a.remove_tree(".complete");
        versions = p.versions;
        notes.push(format!(
            "packages: the closure of {} ({} packages; docs, man pages and locales left out)",
            packages::parse_list(&spec.packages)?.join(","),
            versions.len()
        ));
    }
    for add in &spec.adds {
        tree::add_host(&mut a, &add.host, &add.guest)?;
    }
    for (k, v) in &spec.env {
        env.retain(|(k2, _)| k2 != k);
        env.push((k.clone(), v.clone()));
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    let workdir = spec
        .workdir
        .clone()
        .or(workdir)
        .unwrap_or_else(|| OUTPUT_DIR.into());
    Ok(JobTree {
        archive: a,
        packages: versions,
        env,
        workdir,
        notes,
    })
}

impl JobTree {
    pub fn path_var(&self) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or(DEFAULT_PATH)
    }

    /// Whether `path` names a file (after links) in the tree.
    pub fn has_file(&self, path: &str) -> bool {
        let mut p = path.to_string();
        for _ in 0..40 {
            let Ok(r) = tree::resolve(&self.archive, &p) else {
                return false;
            };
            match self.archive.get(&r) {
                Some(Node::File { .. }) => return true,
                Some(Node::Symlink { target }) => {
                    p = if target.starts_with('/') {
                        target.clone()
                    } else {
                        let dir = r.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                        format!("{dir}/{target}")
                    }
                }
                _ => return false,
            }
        }
        false
    }

    pub fn has_dir(&self, path: &str) -> bool {
        tree::resolve(&self.archive, &format!("{}/x", path.trim_end_matches('/')))
            .ok()
            .and_then(|r| {
                let d = r.strip_suffix("/x").unwrap_or("").to_string();
                d.is_empty()
                    .then_some(true)
                    .or(Some(matches!(self.archive.get(&d), Some(Node::Dir { .. }))))
            })
            .unwrap_or(false)
    }

    /// CMD as the image's PATH finds it (or as an absolute path in the image).
    pub fn find(&self, cmd: &str) -> Option<String> {
        if cmd.contains('/') {
            return (cmd.starts_with('/') && self.has_file(cmd)).then(|| cmd.to_string());
        }
        self.path_var()
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| format!("{}/{cmd}", d.trim_end_matches('/')))
            .find(|p| self.has_file(p))
    }

    /// The job's argv in the image: CMD from the image, else the host's program copied to
    /// /job/bin with the libraries the image lacks. Absolute arguments that name nothing
    /// in the image get a note (a path the job reads that was not `--add`ed).
    pub fn job_argv(&mut self, job: &str, host: Option<&Path>) -> Result<Vec<String>, SpecError> {
        let words = split(job)?;
        let prog = match self.find(&words[0]) {
            Some(p) => p,
            None => {
                let host = host.ok_or_else(|| {
                    SpecError::NotInImage(words[0].clone(), format!("PATH={}", self.path_var()))
                })?;
                let name = host.file_name().unwrap_or_default().to_string_lossy();
                let guest = format!("/job/bin/{name}");
                for f in runtime_files(host)? {
                    if !self.has_file(&f.guest) {
                        let data =
                            std::fs::read(&f.host).map_err(|e| TreeError::Io(f.host.clone(), e))?;
                        tree::put(
                            &mut self.archive,
                            &f.guest,
                            Node::File { mode: 0o755, data },
                        )?;
                    }
                }
                let data = std::fs::read(host).map_err(|e| TreeError::Io(host.into(), e))?;
                tree::put(&mut self.archive, &guest, Node::File { mode: 0o755, data })?;
                self.notes.push(format!(
                    "{} is not in the image: copied from this host",
                    words[0]
                ));
                guest
            }
        };
        for w in &words[1..] {
            let p = w.split_once('=').map(|(_, v)| v).unwrap_or(w);
            if p.starts_with('/')
                && !p.starts_with(OUTPUT_DIR)
                && !p.starts_with("/tmp")
                && !p.starts_with("/dev")
                && !self.has_file(p)
                && !self.has_dir(p)
            {
                let n = format!(
                    "argument {w:?} names nothing in the image (add it with --add HOST:{p})"
                );
                crate::progress::step(format!("warning: {n}"));
                self.notes.push(n);
            }
        }
        Ok(std::iter::once(prog)
            .chain(words[1..].iter().cloned())
            .collect())
    }

    /// The guest's tools and the job environment's fixed parts: busybox under /.hpmmap/bin,
    /// hpmmap-run, the job user, mount points, /etc/hosts, /job/run.
    pub fn add_system(
        &mut self,
        bb: &Busybox,
        hpmmap_run: Option<&Path>,
        agent: Option<&Path>,
        runner: String,
    ) -> Result<(), SpecError> {
        let missing: Vec<&str> = ["proc", "sys", "dev", "tmp", "run", "out", "home"]
            .into_iter()
            .filter(|d| !self.has_dir(d))
            .collect();
        let a = &mut self.archive;
        for d in missing {
            tree::put(a, d, Node::Dir { mode: 0o755 })?;
        }
        let read = |p: &Path| std::fs::read(p).map_err(|e| TreeError::Io(p.to_path_buf(), e));
        a.insert(
            &format!("{SYS}/bin/busybox"),
            Node::File {
                mode: 0o755,
                data: read(&bb.binary)?,
            },
        );
        for app in &bb.applets {
            let name = app.rsplit('/').next().unwrap_or(app);
            a.insert(
                &format!("{SYS}/bin/{name}"),
                Node::Symlink {
                    target: "busybox".into(),
                },
            );
        }
        for (name, bin) in [("hpmmap-run", hpmmap_run), (AGENT_NAME, agent)] {
            if let Some(b) = bin {
                a.insert(
                    &format!("{SYS}/bin/{name}"),
                    Node::File {
                        mode: 0o755,
                        data: read(b)?,
                    },
                );
            }
        }
        tree::put(a, "tmp", Node::Dir { mode: 0o1777 })?;
        append_line(
            a,
            "etc/passwd",
            &format!("{JOB_USER}:x:{JOB_UID}:{JOB_UID}:hpmmap job:/home/{JOB_USER}:/{SYS}/bin/sh"),
            "root:x:0:0:root:/root:/.hpmmap/bin/sh",
        )?;
        append_line(
            a,
            "etc/group",
            &format!("{JOB_USER}:x:{JOB_UID}:"),
            "root:x:0:",
        )?;
        append_line(a, "etc/hosts", "127.0.0.1 localhost job", "")?;
        tree::put(
            a,
            "etc/hostname",
            Node::File {
                mode: 0o644,
                data: b"job\n".to_vec(),
            },
        )?;
        tree::put(
            a,
            "job/run",
            Node::File {
                mode: 0o755,
                data: runner.into_bytes(),
            },
        )?;
        let env = self.env_file();
        tree::put(
            &mut self.archive,
            ENV_FILE.trim_start_matches('/'),
            Node::File {
                mode: 0o644,
                data: env.into_bytes(),
            },
        )?;
        Ok(())
    }

    /// The job's environment as `NAME=VALUE` lines, as the runner exports it: what the task
    /// agent gives every task (its `--env-file`).
    pub fn env_file(&self) -> String {
        // A value with a newline (possible in an OCI config) cannot be one line: the
        // runner's export still gives it to the image's own job, the agent's tasks go without.
        self.env
            .iter()
            .filter(|(_, v)| !v.contains(['\n', '\0']))
            .map(|(k, v)| {
                if k == "PATH" {
                    format!("{k}={v}:/{SYS}/bin\n")
                } else {
                    format!("{k}={v}\n")
                }
            })
            .collect()
    }

    /// `export K=V` lines for the runner.
    pub fn exports(&self) -> String {
        self.env
            .iter()
            .map(|(k, v)| {
                let v = if k == "PATH" {
                    format!("{v}:/{SYS}/bin")
                } else {
                    v.clone()
                };
                format!("export {k}={}\n", sh_quote(&v))
            })
            .collect()
    }
}

/// Appends `line` to a text file of the tree (creating it with `first` above it).
fn append_line(a: &mut Archive, path: &str, line: &str, first: &str) -> Result<(), TreeError> {
    let p = tree::resolve(a, path)?;
    let mut text = match a.get(&p) {
        Some(Node::File { data, .. }) => String::from_utf8_lossy(data).into_owned(),
        _ if first.is_empty() => String::new(),
        _ => format!("{first}\n"),
    };
    let key = line.split(':').next().unwrap_or(line);
    if text
        .lines()
        .any(|l| l == line || (key.len() < line.len() && l.starts_with(&format!("{key}:"))))
    {
        return Ok(());
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    tree::put(
        a,
        &p,
        Node::File {
            mode: 0o644,
            data: text.into_bytes(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let a = parse_add("/etc/hostname:/job/in/host").unwrap();
        assert_eq!(a.guest, "/job/in/host");
        assert!(matches!(
            parse_add("/etc/hostname"),
            Err(SpecError::AddSyntax(_))
        ));
        assert!(matches!(
            parse_add("/etc/hostname:rel"),
            Err(SpecError::AddSyntax(_))
        ));
        assert!(matches!(
            parse_add("/etc/hostname:/.hpmmap/x"),
            Err(SpecError::AddReserved(..))
        ));
        let e = parse_add("/nonexistent-hpmmap:/x").unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent-hpmmap") && e.contains("does not exist"),
            "{e}"
        );
        assert_eq!(parse_env("A_1=x=y").unwrap(), ("A_1".into(), "x=y".into()));
        assert!(
            parse_env("1A=x").is_err() && parse_env("A").is_err() && parse_env("A-B=1").is_err()
        );
    }

    #[test]
    fn programs_found_through_links_and_path() {
        let mut a = Archive::new();
        a.dir("usr/bin");
        a.insert(
            "bin",
            Node::Symlink {
                target: "usr/bin".into(),
            },
        );
        a.file("usr/bin/lmp", 0o755, vec![1]);
        a.insert(
            "usr/bin/mpirun",
            Node::Symlink {
                target: "/etc/alternatives/mpirun".into(),
            },
        );
        a.insert(
            "etc/alternatives/mpirun",
            Node::Symlink {
                target: "/usr/bin/orterun".into(),
            },
        );
        a.file("usr/bin/orterun", 0o755, vec![2]);
        let mut t = JobTree {
            archive: a,
            packages: BTreeMap::new(),
            env: vec![("PATH".into(), "/bin".into())],
            workdir: "/".into(),
            notes: vec![],
        };
        assert_eq!(t.find("lmp").as_deref(), Some("/bin/lmp"));
        assert_eq!(t.find("mpirun").as_deref(), Some("/bin/mpirun"));
        assert_eq!(t.find("nope"), None);
        assert!(t.has_dir("/bin") && t.has_dir("usr") && !t.has_dir("/usr/bin/lmp"));
        let argv = t
            .job_argv("lmp -in /job/in.melt -log /out/log", None)
            .unwrap();
        assert_eq!(
            argv,
            ["/bin/lmp", "-in", "/job/in.melt", "-log", "/out/log"]
        );
        assert!(
            t.notes.iter().any(|n| n.contains("/job/in.melt")),
            "{:?}",
            t.notes
        );
        assert!(!t.notes.iter().any(|n| n.contains("/out/log")));
        assert!(matches!(
            t.job_argv("nope", None),
            Err(SpecError::NotInImage(..))
        ));
    }
}
