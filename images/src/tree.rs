//! The job's root tree, held in memory as an `Archive`: base layers (a directory, an
//! OCI/Docker image, Debian packages), `--add`ed files on top, then written either into the
//! initramfs or onto disk for the read-only root image. Paths from those sources are
//! resolved inside the tree (a symlinked parent such as a merged-usr `bin -> usr/bin`
//! is followed there), so nothing written to disk can follow a link out of it.

use crate::cpio::{Archive, Node};
use crate::manifest::sha256_hex;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TreeError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{path}: {detail}")]
    Bad { path: String, detail: String },
}

const MAX_LINKS: usize = 40;

/// `path` with every symlinked parent directory replaced by its target within `a` (the
/// last component is left alone); `..` never climbs above the root.
pub fn resolve(a: &Archive, path: &str) -> Result<String, TreeError> {
    let comps = |s: &str| -> Vec<String> {
        s.split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(str::to_string)
            .collect()
    };
    let mut todo = comps(path);
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        if todo.is_empty() {
            done.push(c);
            break;
        }
        let mut cand = done.clone();
        cand.push(c);
        match a.get(&cand.join("/")) {
            Some(Node::Symlink { target }) => {
                hops += 1;
                if hops > MAX_LINKS {
                    return Err(TreeError::Bad {
                        path: path.into(),
                        detail: "too many levels of symbolic links".into(),
                    });
                }
                if target.starts_with('/') {
                    done.clear();
                }
                todo.extend(comps(target));
            }
            Some(Node::File { .. }) | Some(Node::CharDev { .. }) => {
                return Err(TreeError::Bad {
                    path: path.into(),
                    detail: format!("{} is not a directory", cand.join("/")),
                })
            }
            _ => done = cand,
        }
    }
    Ok(done.join("/"))
}

/// Inserts `node` at `path` resolved within the tree; a directory over a directory keeps
/// what is below it, anything else replaces the old entry and its subtree.
pub fn put(a: &mut Archive, path: &str, node: Node) -> Result<(), TreeError> {
    let p = resolve(a, path)?;
    if p.is_empty() {
        return Ok(());
    }
    let keep = matches!(
        (a.get(&p), &node),
        (Some(Node::Dir { .. }), Node::Dir { .. })
    );
    if !keep {
        a.remove_tree(&p);
    }
    a.insert(&p, node);
    Ok(())
}

/// Adds a host file or directory tree at `guest`: regular files, directories and
/// symlinks with their permission bits; owners become root; other kinds are refused.
pub fn add_host(a: &mut Archive, host: &Path, guest: &str) -> Result<(), TreeError> {
    let io = |e| TreeError::Io(host.to_path_buf(), e);
    let meta = std::fs::symlink_metadata(host).map_err(io)?;
    let mode = meta.permissions().mode() & 0o7777;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let t = std::fs::read_link(host).map_err(io)?;
        put(
            a,
            guest,
            Node::Symlink {
                target: t.to_string_lossy().into_owned(),
            },
        )
    } else if ft.is_file() {
        let data = std::fs::read(host).map_err(io)?;
        put(a, guest, Node::File { mode, data })
    } else if ft.is_dir() {
        put(a, guest, Node::Dir { mode })?;
        let mut names: Vec<_> = std::fs::read_dir(host)
            .map_err(io)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        names.sort();
        for n in names {
            let g = format!("{}/{}", guest.trim_end_matches('/'), n.to_string_lossy());
            add_host(a, &host.join(&n), &g)?;
        }
        Ok(())
    } else {
        Err(TreeError::Bad {
            path: host.display().to_string(),
            detail: format!("not a file, directory or symlink (mode {:o})", meta.mode()),
        })
    }
}

/// sha256 of every regular file, `symlink:TARGET` for every link, by guest path.
pub fn hashes(a: &Archive) -> BTreeMap<String, String> {
    a.entries()
        .filter_map(|(p, n)| match n {
            Node::File { data, .. } => Some((format!("/{p}"), sha256_hex(data))),
            Node::Symlink { target } => Some((format!("/{p}"), format!("symlink:{target}"))),
            _ => None,
        })
        .collect()
}

/// Writes the tree under `dir` (which must be new), in path order so every parent exists
/// first; device nodes are left out (the guest's devtmpfs provides them).
pub fn write_dir(a: &Archive, dir: &Path) -> Result<(), TreeError> {
    std::fs::create_dir(dir).map_err(|e| TreeError::Io(dir.to_path_buf(), e))?;
    let mut dirs = Vec::new();
    for (p, n) in a.entries() {
        let f = dir.join(p);
        let io = |e| TreeError::Io(f.clone(), e);
        match n {
            Node::Dir { mode } => {
                std::fs::create_dir(&f).map_err(io)?;
                dirs.push((f.clone(), *mode));
            }
            Node::File { mode, data } => {
                std::fs::write(&f, data).map_err(io)?;
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode)).map_err(io)?;
            }
            Node::Symlink { target } => std::os::unix::fs::symlink(target, &f).map_err(io)?,
            Node::CharDev { .. } => {}
        }
    }
    // Directory modes last: a read-only directory would refuse its own children.
    for (d, mode) in dirs {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))
            .map_err(|e| TreeError::Io(d.clone(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(a: &mut Archive, p: &str, t: &str) {
        a.insert(
            p,
            Node::Symlink {
                target: t.to_string(),
            },
        );
    }

    #[test]
    fn parents_resolve_inside_the_tree() {
        let mut a = Archive::new();
        a.dir("usr/bin");
        link(&mut a, "bin", "usr/bin");
        link(&mut a, "lib", "/usr/lib");
        link(&mut a, "escape", "../../../../etc");
        link(&mut a, "usr/lib64", "../lib");
        assert_eq!(resolve(&a, "/bin/sh").unwrap(), "usr/bin/sh");
        assert_eq!(resolve(&a, "lib/x/y.so").unwrap(), "usr/lib/x/y.so");
        assert_eq!(resolve(&a, "escape/passwd").unwrap(), "etc/passwd");
        // ../lib from usr is the root's lib, itself a link to /usr/lib.
        assert_eq!(resolve(&a, "usr/lib64/ld.so").unwrap(), "usr/lib/ld.so");
        assert_eq!(resolve(&a, "bin").unwrap(), "bin", "last component kept");
        link(&mut a, "loop", "loop");
        assert!(resolve(&a, "loop/x").is_err());
        a.file("f", 0o644, vec![]);
        assert!(resolve(&a, "f/x").is_err());
    }

    #[test]
    fn put_replaces_and_merges() {
        let mut a = Archive::new();
        put(
            &mut a,
            "d/x",
            Node::File {
                mode: 0o644,
                data: b"1".to_vec(),
            },
        )
        .unwrap();
        put(&mut a, "d", Node::Dir { mode: 0o700 }).unwrap();
        assert!(a.contains("d/x"), "dir over dir keeps children");
        put(
            &mut a,
            "d",
            Node::File {
                mode: 0o644,
                data: vec![],
            },
        )
        .unwrap();
        assert!(!a.contains("d/x"), "a file replaces the subtree");
    }

    #[test]
    fn host_tree_round_trips_through_disk() {
        let base = std::env::temp_dir().join(format!("hpmmap-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let src = base.join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/data"), b"hello").unwrap();
        std::fs::set_permissions(src.join("sub/data"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::os::unix::fs::symlink("sub/data", src.join("ln")).unwrap();
        let mut a = Archive::new();
        add_host(&mut a, &src, "/job/in").unwrap();
        let h = hashes(&a);
        assert_eq!(h["/job/in/sub/data"], sha256_hex(b"hello"));
        assert_eq!(h["/job/in/ln"], "symlink:sub/data");
        let out = base.join("out");
        write_dir(&a, &out).unwrap();
        let m = std::fs::metadata(out.join("job/in/sub/data")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        assert_eq!(std::fs::read(out.join("job/in/ln")).unwrap(), b"hello");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
