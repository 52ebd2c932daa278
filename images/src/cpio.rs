//! A deterministic initramfs: cpio "newc" with entries sorted by path, every mtime 0,
//! owner root, inode numbers by position, gzip without name or timestamp. The same
//! tree always gives the same bytes, which is what makes image builds reproducible.

use flate2::{Compression, GzBuilder};
use std::collections::BTreeMap;
use std::io::Write;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

fn clean(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every parent of `path` becomes a 0755 directory unless already present.
    fn parents(&mut self, path: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            self.entries
                .entry(acc.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
    }

    pub fn dir(&mut self, path: &str) {
        let p = clean(path);
        self.parents(&p);
        self.entries.insert(p, Node::Dir { mode: 0o755 });
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        let p = clean(path);
        self.parents(&p);
        self.entries.insert(p, Node::File { mode, data });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        let p = clean(path);
        self.parents(&p);
        self.entries.insert(
            p,
            Node::Symlink {
                target: target.to_string(),
            },
        );
    }

    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        let p = clean(path);
        self.parents(&p);
        self.entries.insert(p, Node::CharDev { mode, major, minor });
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(&clean(path))
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.entries.get(&clean(path))
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Places `node` at `path` as given (parents made directories where missing); callers
    /// that take paths from untrusted trees resolve them first (`tree::resolve`).
    pub fn insert(&mut self, path: &str, node: Node) {
        let p = clean(path);
        if p.is_empty() {
            return;
        }
        self.parents(&p);
        self.entries.insert(p, node);
    }

    /// Removes `path` and everything below it.
    pub fn remove_tree(&mut self, path: &str) {
        let p = clean(path);
        let below = format!("{p}/");
        self.entries
            .retain(|k, _| k != &p && !(p.is_empty() || k.starts_with(&below)));
    }

    /// Removes everything below directory `path`, keeping the directory.
    pub fn clear_dir(&mut self, path: &str) {
        let p = clean(path);
        let below = if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        };
        self.entries
            .retain(|k, _| !(k.starts_with(&below) && k.len() > below.len()) || k == &p);
    }

    /// Bytes of file data the archive holds.
    pub fn data_bytes(&self) -> u64 {
        self.entries
            .values()
            .map(|n| match n {
                Node::File { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum()
    }

    pub fn to_newc(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (path, node)) in self.entries.iter().enumerate() {
            let (mode, data, nlink, rdev): (u32, &[u8], u32, (u32, u32)) = match node {
                Node::Dir { mode } => (0o040000 | mode, &[], 2, (0, 0)),
                Node::File { mode, data } => (0o100000 | mode, data, 1, (0, 0)),
                Node::Symlink { target } => (0o120777, target.as_bytes(), 1, (0, 0)),
                Node::CharDev { mode, major, minor } => (0o020000 | mode, &[], 1, (*major, *minor)),
            };
            entry(&mut out, i as u32 + 1, mode, nlink, rdev, path, data);
        }
        entry(&mut out, 0, 0, 1, (0, 0), "TRAILER!!!", &[]);
        // Pad the archive to a 512-byte boundary as cpio(1) does.
        while !out.len().is_multiple_of(512) {
            out.push(0);
        }
        out
    }

    pub fn to_gzip(&self) -> Vec<u8> {
        let mut gz = GzBuilder::new()
            .mtime(0)
            .operating_system(3)
            .write(Vec::new(), Compression::new(6));
        gz.write_all(&self.to_newc()).expect("writing to memory");
        gz.finish().expect("writing to memory")
    }
}

fn entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        namesize as u32,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.file("bin/hello", 0o755, b"hello\n".to_vec());
        a.symlink("bin/sh", "busybox");
        a.char_dev("dev/console", 0o600, 5, 1);
        a.file("/etc/x/y.conf", 0o644, vec![]);
        a
    }

    #[test]
    fn parents_are_created_and_sorted_first() {
        let a = sample();
        let p: Vec<&str> = a.paths().collect();
        assert_eq!(
            p,
            [
                "bin",
                "bin/hello",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/x",
                "etc/x/y.conf"
            ]
        );
    }

    #[test]
    fn same_tree_same_bytes() {
        assert_eq!(sample().to_gzip(), sample().to_gzip());
        // gzip header: no name flag, mtime 0
        let gz = sample().to_gzip();
        assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
    }

    /// The real cpio(1) reads what we write: names, modes, symlink, contents.
    #[test]
    fn cpio_tool_lists_it() {
        if Command::new("cpio").arg("--version").output().is_err() {
            hpmmap_testkit::skip(
                hpmmap_testkit::Tier::Tools,
                "cpio_tool_lists_it",
                "cpio(1) is not installed",
            );
            return;
        }
        let dir = std::env::temp_dir().join(format!("hpmmap-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.cpio");
        std::fs::write(&f, sample().to_newc()).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -itv --quiet < {}", f.display()))
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{listing}");
        assert!(listing.contains("-rwxr-xr-x"), "{listing}");
        assert!(listing.contains("bin/sh -> busybox"), "{listing}");
        assert!(listing.contains("crw-------"), "{listing}");
        let x = dir.join("x");
        std::fs::create_dir_all(&x).unwrap();
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && cpio -id --quiet --no-absolute-filenames 'bin/hello' < {}",
                x.display(),
                f.display()
            ))
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(std::fs::read(x.join("bin/hello")).unwrap(), b"hello\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
