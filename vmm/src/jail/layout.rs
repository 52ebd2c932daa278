//! Where a job's jail and cgroup live: with `--job ID` they are the ones `hpmmap-offline
//! recover` cleans for dead jobs (docs/architecture.md, Interface 5), so a jailed VMM killed
//! together with its keeper leaves nothing that recover does not find.

use std::path::{Path, PathBuf};

/// Parent of the jobs' jail directories.
pub const JAIL_ROOT: &str = "/run/hpmmap/jail";
/// The cgroup v2 mount point, and the parent of the jobs' cgroups below it.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup/hpmmap";

/// `--jail [DIR]` and `--cgroup PATH` against `--job ID`: the jail directory and the cgroup
/// (None: no cgroup). With a job both are fixed (`JAIL_ROOT/ID`, `CGROUP_ROOT/ID` where
/// `cgroup_v2` says the host mounts cgroup v2 at [`CGROUP_MOUNT`]) and another path given is
/// refused; without a job DIR is needed. `job` is validated already (`[A-Za-z0-9_.-]`).
pub fn resolve(
    job: Option<&str>,
    dir: Option<&Path>,
    cgroup: Option<&Path>,
    cgroup_v2: bool,
) -> Result<(PathBuf, Option<PathBuf>), String> {
    let Some(job) = job else {
        let dir = dir.ok_or(
            "--jail needs a directory, or --job ID for the job's own (/run/hpmmap/jail/ID)",
        )?;
        return Ok((dir.to_path_buf(), cgroup.map(Path::to_path_buf)));
    };
    let jail = Path::new(JAIL_ROOT).join(job);
    if let Some(d) = dir.filter(|d| *d != jail) {
        return Err(format!(
            "--jail {}: with --job {job} the jail is {} (where `hpmmap-offline recover` looks \
             after a crash); give --jail without a directory",
            d.display(),
            jail.display()
        ));
    }
    let cg = Path::new(CGROUP_ROOT).join(job);
    match cgroup {
        Some(c) if c != cg => Err(format!(
            "--cgroup {}: with --job {job} the cgroup is {} (where `hpmmap-offline recover` \
             looks after a crash); leave --cgroup out",
            c.display(),
            cg.display()
        )),
        Some(_) if !cgroup_v2 => Err(format!(
            "--cgroup {}: {CGROUP_MOUNT} is not a cgroup v2 mount",
            cg.display()
        )),
        _ => Ok((jail, cgroup_v2.then_some(cg))),
    }
}

/// Whether the host mounts cgroup v2 at [`CGROUP_MOUNT`].
pub fn host_cgroup_v2() -> bool {
    Path::new(CGROUP_MOUNT).join("cgroup.controllers").is_file()
}

/// The parents a job's jail and cgroup need, made when missing: `JAIL_ROOT` (root's, 0755)
/// and `CGROUP_ROOT`, with the cpuset and memory controllers passed down to the jobs'
/// cgroups where the host's root cgroup offers them. Paths of other layouts are left alone.
pub fn make_parents(jail: &Path, cgroup: Option<&Path>) -> std::io::Result<()> {
    if jail.parent() == Some(Path::new(JAIL_ROOT)) {
        std::fs::create_dir_all(JAIL_ROOT)?;
    }
    let root = Path::new(CGROUP_ROOT);
    if cgroup.and_then(Path::parent) == Some(root) && !root.is_dir() {
        match std::fs::create_dir(root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let offered = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let want: Vec<String> = offered
            .split_whitespace()
            .filter(|c| matches!(*c, "cpuset" | "memory"))
            .map(|c| format!("+{c}"))
            .collect();
        if !want.is_empty() {
            std::fs::write(root.join("cgroup.subtree_control"), want.join(" "))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_gets_the_layout_recover_cleans() {
        let j = Some("job-7.a");
        assert_eq!(
            resolve(j, None, None, true).unwrap(),
            (
                PathBuf::from("/run/hpmmap/jail/job-7.a"),
                Some(PathBuf::from("/sys/fs/cgroup/hpmmap/job-7.a"))
            )
        );
        // No cgroup v2 at /sys/fs/cgroup: no cgroup, the jail all the same.
        assert_eq!(
            resolve(j, None, None, false).unwrap(),
            (PathBuf::from("/run/hpmmap/jail/job-7.a"), None)
        );
        // The same paths spelled out are accepted.
        let same = resolve(
            j,
            Some(Path::new("/run/hpmmap/jail/job-7.a")),
            Some(Path::new("/sys/fs/cgroup/hpmmap/job-7.a")),
            true,
        )
        .unwrap();
        assert_eq!(same.0, PathBuf::from("/run/hpmmap/jail/job-7.a"));
        let e = resolve(j, Some(Path::new("/tmp/j")), None, true).unwrap_err();
        assert!(
            e.starts_with("--jail /tmp/j: with --job job-7.a the jail is /run/hpmmap/jail/job-7.a"),
            "{e}"
        );
        let e = resolve(j, None, Some(Path::new("/sys/fs/cgroup/x")), true).unwrap_err();
        assert!(
            e.contains("with --job job-7.a the cgroup is /sys/fs/cgroup/hpmmap/job-7.a"),
            "{e}"
        );
        let e = resolve(
            j,
            None,
            Some(Path::new("/sys/fs/cgroup/hpmmap/job-7.a")),
            false,
        )
        .unwrap_err();
        assert!(e.contains("is not a cgroup v2 mount"), "{e}");
    }

    #[test]
    fn without_a_job_the_directory_is_needed() {
        let e = resolve(None, None, None, true).unwrap_err();
        assert!(
            e.starts_with("--jail needs a directory, or --job ID"),
            "{e}"
        );
        assert_eq!(
            resolve(
                None,
                Some(Path::new("/srv/j")),
                Some(Path::new("/sys/fs/cgroup/t")),
                true
            )
            .unwrap(),
            (
                PathBuf::from("/srv/j"),
                Some(PathBuf::from("/sys/fs/cgroup/t"))
            )
        );
    }
}
