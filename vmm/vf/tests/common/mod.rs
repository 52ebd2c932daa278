//! Test support: a private copy of a recorded sysfs tree, and snapshots to prove that
//! nothing was left changed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use hpmmap_vf::sim::{copy_tree, sim_sysfs};
use hpmmap_vf::Sysfs;

pub struct Fixture {
    pub root: PathBuf,
}

impl Fixture {
    /// A copy of `tests/fixtures/NAME` in a fresh temporary directory.
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        assert!(src.is_dir(), "fixture {} missing", src.display());
        let root = std::env::temp_dir().join(format!(
            "hpmmap-vf-{}-{}-{}",
            name,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        copy_tree(&src, &root).unwrap();
        // git keeps no empty directories; sysfs always has these.
        fs::create_dir_all(root.join("sys/class/iommu")).unwrap();
        // Where claims write their records (/run/hpmmap/vf on a host).
        fs::create_dir_all(root.join("run/hpmmap/vf")).unwrap();
        // The test process is a process of the tree's host: its claim records are live.
        fs::create_dir_all(root.join(format!("proc/{}", std::process::id()))).unwrap();
        Fixture { root }
    }

    pub fn sysfs(&self) -> Sysfs {
        sim_sysfs(&self.root)
    }

    pub fn sys(&self, rel: &str) -> PathBuf {
        self.root.join("sys").join(rel)
    }

    pub fn driver(&self, bdf: &str) -> Option<String> {
        fs::read_link(self.sys(&format!("bus/pci/devices/{bdf}/driver")))
            .ok()
            .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
    }

    pub fn attr(&self, rel: &str) -> String {
        fs::read_to_string(self.sys(rel))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Every path under the tree with its content (files) or target (links).
    pub fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut m = BTreeMap::new();
        walk(&self.root, &self.root, &mut m);
        m
    }
}

fn walk(root: &Path, dir: &Path, m: &mut BTreeMap<PathBuf, String>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let ty = e.file_type().unwrap();
        if ty.is_symlink() {
            m.insert(rel, format!("-> {}", fs::read_link(&p).unwrap().display()));
        } else if ty.is_dir() {
            m.insert(rel, "<dir>".into());
            walk(root, &p, m);
        } else {
            m.insert(rel, fs::read_to_string(&p).unwrap());
        }
    }
}

/// Differences between two snapshots, for a readable assertion message.
pub fn diff(a: &BTreeMap<PathBuf, String>, b: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("removed {}", k.display())),
            Some(w) if w != v => out.push(format!("changed {}: {v:?} -> {w:?}", k.display())),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.push(format!("added {}", k.display()));
        }
    }
    out
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}
