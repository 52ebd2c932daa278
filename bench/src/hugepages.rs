//! The 2 MiB hugetlbfs pool the hugetlb configuration draws from: grown for the run,
//! put back to its original size when the run ends (drop), so nothing is left reserved.

use std::path::{Path, PathBuf};

pub const POOL_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

#[derive(Debug, thiserror::Error)]
pub enum HugeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("asked the kernel for {needed} free 2 MiB pages, it could provide {got} (memory fragmented?)")]
    NotEnough { needed: u64, got: u64 },
}

/// A grown pool; restores `nr_hugepages` on drop.
#[derive(Debug)]
pub struct HugePool {
    dir: PathBuf,
    original: u64,
    changed: bool,
}

fn read_u64(path: &Path) -> Result<u64, HugeError> {
    let s = std::fs::read_to_string(path).map_err(|source| HugeError::Io {
        path: path.into(),
        source,
    })?;
    Ok(s.trim().parse().unwrap_or(0))
}

fn write_u64(path: &Path, v: u64) -> Result<(), HugeError> {
    std::fs::write(path, format!("{v}\n")).map_err(|source| HugeError::Io {
        path: path.into(),
        source,
    })
}

impl HugePool {
    /// Makes sure `needed` pages are free in the pool under `dir` (normally [`POOL_2M`]).
    pub fn reserve(dir: &Path, needed: u64) -> Result<HugePool, HugeError> {
        let nr = dir.join("nr_hugepages");
        let original = read_u64(&nr)?;
        let free = read_u64(&dir.join("free_hugepages"))?;
        let mut pool = HugePool {
            dir: dir.into(),
            original,
            changed: false,
        };
        if free >= needed {
            return Ok(pool);
        }
        pool.changed = true;
        write_u64(&nr, original + (needed - free))?;
        let got = read_u64(&dir.join("free_hugepages"))?;
        if got < needed {
            return Err(HugeError::NotEnough { needed, got });
        }
        Ok(pool)
    }

    pub fn free_pages(&self) -> u64 {
        read_u64(&self.dir.join("free_hugepages")).unwrap_or(0)
    }

    pub fn original(&self) -> u64 {
        self.original
    }
}

impl Drop for HugePool {
    fn drop(&mut self) {
        if self.changed {
            let _ = write_u64(&self.dir.join("nr_hugepages"), self.original);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_the_real_pool_and_puts_it_back() {
        let dir = Path::new(POOL_2M);
        let writable = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("nr_hugepages"))
            .is_ok();
        if !writable {
            hpmmap_testkit::skip(
                hpmmap_testkit::Tier::Root,
                "hugepages pool round trip",
                format!("{POOL_2M}/nr_hugepages is not writable (not root?)"),
            );
            return;
        }
        let before = read_u64(&dir.join("nr_hugepages")).unwrap();
        let free = read_u64(&dir.join("free_hugepages")).unwrap();
        {
            let pool = HugePool::reserve(dir, free + 2).unwrap();
            assert!(pool.free_pages() >= free + 2);
        }
        assert_eq!(read_u64(&dir.join("nr_hugepages")).unwrap(), before);
    }
}
