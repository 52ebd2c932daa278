//! The host's huge page pools as sysfs shows them, and the page size the guest asks for.

use crate::units::{GIB, KIB, MIB};
use std::path::{Path, PathBuf};

/// Host page size backing guest RAM (`--hugepages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PageSize {
    #[serde(rename = "1G")]
    Huge1G,
    #[serde(rename = "2M")]
    Huge2M,
    #[serde(rename = "none")]
    Small,
}

impl PageSize {
    pub fn bytes(self) -> u64 {
        match self {
            PageSize::Huge1G => GIB,
            PageSize::Huge2M => 2 * MIB,
            PageSize::Small => 4 * KIB,
        }
    }

    pub fn shift(self) -> u32 {
        self.bytes().trailing_zeros()
    }

    pub fn name(self) -> &'static str {
        match self {
            PageSize::Huge1G => "1G",
            PageSize::Huge2M => "2M",
            PageSize::Small => "none",
        }
    }

    /// The sysfs directory name of this huge page size.
    pub fn sysfs_dir(self) -> Option<String> {
        match self {
            PageSize::Small => None,
            p => Some(format!("hugepages-{}kB", p.bytes() / KIB)),
        }
    }
}

impl std::str::FromStr for PageSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "1g" | "1gb" | "1gib" => Ok(PageSize::Huge1G),
            "2m" | "2mb" | "2mib" => Ok(PageSize::Huge2M),
            "none" | "4k" => Ok(PageSize::Small),
            _ => Err(format!("'{s}' is not one of 1G, 2M, none")),
        }
    }
}

/// Counters of one huge page pool (global, or one NUMA node's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCounters {
    pub total: u64,
    pub free: u64,
    /// Reserved by existing mappings but not yet faulted: not available to a new mapping.
    pub reserved: u64,
}

impl PoolCounters {
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Reads a pool's counters under `sysfs_root` (normally `/sys`). Per-node pools have no
/// `resv_hugepages`; the global reservation count is used for them, which errs on the side of
/// reporting fewer pages available.
pub fn pool_counters(sysfs_root: &Path, size: PageSize, node: Option<u32>) -> Option<PoolCounters> {
    let dir_name = size.sysfs_dir()?;
    let global = sysfs_root.join("kernel/mm/hugepages").join(&dir_name);
    let dir: PathBuf = match node {
        None => global.clone(),
        Some(n) => sysfs_root
            .join(format!("devices/system/node/node{n}/hugepages"))
            .join(&dir_name),
    };
    Some(PoolCounters {
        total: read_u64(&dir.join("nr_hugepages"))?,
        free: read_u64(&dir.join("free_hugepages"))?,
        reserved: read_u64(&global.join("resv_hugepages")).unwrap_or(0),
    })
}

/// The advice printed when too few pages are free.
pub fn reserve_advice(size: PageSize, pages: u64, node: Option<u32>) -> String {
    let dir = size.sysfs_dir().unwrap_or_default();
    let gib = (pages * size.bytes()).div_ceil(GIB);
    match node {
        None => format!(
            "reserve them with `hpmmap-offline reserve --size {gib}G` or `echo {pages} > /sys/kernel/mm/hugepages/{dir}/nr_hugepages` (as root; more than currently reserved)"
        ),
        Some(n) => format!(
            "reserve them with `hpmmap-offline reserve --size {gib}G --node {n}` or `echo {pages} > /sys/devices/system/node/node{n}/hugepages/{dir}/nr_hugepages` (as root; more than currently reserved)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sysfs() -> tempdir::TempDir {
        let t = tempdir::TempDir::new();
        let g = t.path().join("kernel/mm/hugepages/hugepages-1048576kB");
        std::fs::create_dir_all(&g).unwrap();
        std::fs::write(g.join("nr_hugepages"), "4\n").unwrap();
        std::fs::write(g.join("free_hugepages"), "3\n").unwrap();
        std::fs::write(g.join("resv_hugepages"), "1\n").unwrap();
        let n = t
            .path()
            .join("devices/system/node/node1/hugepages/hugepages-1048576kB");
        std::fs::create_dir_all(&n).unwrap();
        std::fs::write(n.join("nr_hugepages"), "2\n").unwrap();
        std::fs::write(n.join("free_hugepages"), "2\n").unwrap();
        t
    }

    /// A tiny self-cleaning temporary directory (no extra crate for one test helper).
    mod tempdir {
        pub struct TempDir(std::path::PathBuf);
        impl TempDir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "hpmmap-vmm-test-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                TempDir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for TempDir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn counters_from_a_recorded_tree() {
        let t = fake_sysfs();
        let g = pool_counters(t.path(), PageSize::Huge1G, None).unwrap();
        assert_eq!(
            g,
            PoolCounters {
                total: 4,
                free: 3,
                reserved: 1
            }
        );
        assert_eq!(g.available(), 2);
        let n = pool_counters(t.path(), PageSize::Huge1G, Some(1)).unwrap();
        assert_eq!((n.total, n.free, n.available()), (2, 2, 1));
        assert!(pool_counters(t.path(), PageSize::Huge2M, None).is_none());
        assert!(pool_counters(t.path(), PageSize::Huge1G, Some(0)).is_none());
        assert!(pool_counters(t.path(), PageSize::Small, None).is_none());
    }

    #[test]
    fn page_size_names() {
        assert_eq!("1G".parse::<PageSize>().unwrap(), PageSize::Huge1G);
        assert_eq!("2m".parse::<PageSize>().unwrap(), PageSize::Huge2M);
        assert_eq!("none".parse::<PageSize>().unwrap(), PageSize::Small);
        assert!("3G".parse::<PageSize>().is_err());
        assert_eq!(PageSize::Huge1G.shift(), 30);
        assert_eq!(PageSize::Huge2M.shift(), 21);
        assert_eq!(PageSize::Small.shift(), 12);
        assert_eq!(PageSize::Huge2M.sysfs_dir().unwrap(), "hugepages-2048kB");
    }

    #[test]
    fn advice_names_both_ways() {
        let a = reserve_advice(PageSize::Huge1G, 18, None);
        assert!(a.contains("hpmmap-offline reserve --size 18G"));
        assert!(a.contains("hugepages-1048576kB/nr_hugepages"));
        assert!(reserve_advice(PageSize::Huge1G, 2, Some(1)).contains("node1"));
    }
}
