//! Kernel modules out of Debian's image package: find a module by name, follow the
//! `depends=` of each `.modinfo` to a load order, and write the subset's modules.dep
//! (depmod's text format) so both `modprobe` and an in-order `insmod` work in the guest.

use crate::elf::Elf;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModError {
    #[error("kernel module {name}: not in {dir}")]
    Missing { name: String, dir: PathBuf },
    #[error("kernel module {path}: {detail}")]
    Bad { path: PathBuf, detail: String },
    #[error("module tree {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Module names treat `-` and `_` alike.
pub fn canonical(name: &str) -> String {
    name.trim_end_matches(".ko").replace('-', "_")
}

pub struct ModuleTree {
    root: PathBuf,
    /// canonical name -> path relative to root
    by_name: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    /// relative to lib/modules/<abi>/, e.g. kernel/arch/x86/kvm/kvm.ko
    pub rel: String,
    pub depends: Vec<String>,
}

fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            walk(&p, root, out)?;
        } else if let Some(f) = p.file_name().and_then(|f| f.to_str()) {
            if let Some(stem) = f.strip_suffix(".ko") {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(canonical(stem), rel);
            }
        }
    }
    Ok(())
}

impl ModuleTree {
    pub fn open(root: &Path) -> Result<Self, ModError> {
        let mut by_name = BTreeMap::new();
        walk(&root.join("kernel"), root, &mut by_name)
            .map_err(|e| ModError::Io(root.to_path_buf(), e))?;
        Ok(Self {
            root: root.to_path_buf(),
            by_name,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn module(&self, name: &str) -> Result<Module, ModError> {
        let c = canonical(name);
        let rel = self.by_name.get(&c).ok_or_else(|| ModError::Missing {
            name: name.to_string(),
            dir: self.root.clone(),
        })?;
        let path = self.root.join(rel);
        let data = std::fs::read(&path).map_err(|e| ModError::Io(path.clone(), e))?;
        let bad = |detail: String| ModError::Bad {
            path: path.clone(),
            detail,
        };
        let elf = Elf::parse(&data).map_err(|e| bad(e.to_string()))?;
        let info = elf
            .section(".modinfo")
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("no .modinfo section".into()))?;
        let depends = info
            .split(|&b| b == 0)
            .filter_map(|kv| kv.strip_prefix(b"depends="))
            .flat_map(|v| {
                String::from_utf8_lossy(v)
                    .split(',')
                    .map(canonical)
                    .collect::<Vec<_>>()
            })
            .filter(|d| !d.is_empty())
            .collect();
        Ok(Module {
            name: c,
            rel: rel.clone(),
            depends,
        })
    }

    /// `wanted` and everything they depend on, dependencies before their users.
    pub fn closure(&self, wanted: &[&str]) -> Result<Vec<Module>, ModError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for w in wanted {
            self.visit(w, &mut done, &mut BTreeSet::new(), &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        on_path: &mut BTreeSet<String>,
        order: &mut Vec<Module>,
    ) -> Result<(), ModError> {
        let c = canonical(name);
        if done.contains(&c) || !on_path.insert(c.clone()) {
            return Ok(());
        }
        let m = self.module(&c)?;
        for d in &m.depends {
            self.visit(d, done, on_path, order)?;
        }
        done.insert(c);
        order.push(m);
        Ok(())
    }
}

/// depmod's modules.dep for just these modules (each line: module: its transitive deps).
pub fn modules_dep(mods: &[Module]) -> String {
    let by_name: BTreeMap<&str, &Module> = mods.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut out = String::new();
    for m in mods {
        let mut deps = Vec::new();
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = m.depends.iter().map(|s| s.as_str()).collect();
        while let Some(d) = stack.pop() {
            if seen.insert(d) {
                if let Some(dm) = by_name.get(d) {
                    deps.push(dm.rel.clone());
                    stack.extend(dm.depends.iter().map(|s| s.as_str()));
                }
            }
        }
        out.push_str(&format!("{}:", m.rel));
        for d in deps {
            out.push(' ');
            out.push_str(&d);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(canonical("kvm-amd"), "kvm_amd");
        assert_eq!(canonical("vfio-pci.ko"), "vfio_pci");
    }

    #[test]
    fn dep_lines_list_transitive_deps() {
        let m = |n: &str, d: &[&str]| Module {
            name: n.into(),
            rel: format!("kernel/{n}.ko"),
            depends: d.iter().map(|s| s.to_string()).collect(),
        };
        let mods = vec![m("a", &[]), m("b", &["a"]), m("c", &["b"])];
        let dep = modules_dep(&mods);
        assert!(
            dep.contains("kernel/c.ko: kernel/b.ko kernel/a.ko\n"),
            "{dep}"
        );
        assert!(dep.starts_with("kernel/a.ko:\n"), "{dep}");
    }
}
