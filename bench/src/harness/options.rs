//! What a run is asked to do ([`Options`]), the default sizes, and where the harness finds
//! its workload binary and its cache.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::model::{Profile, WorkloadSize};
use crate::workloads::Workload;

#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub reps: usize,
    pub out: PathBuf,
    pub workloads: Vec<Workload>,
    pub configs: Vec<Config>,
    pub profiles: Vec<Profile>,
    pub ranks: usize,
    pub sizes: BTreeMap<Workload, WorkloadSize>,
    pub warmup: Duration,
    pub build_src: Option<PathBuf>,
    pub cache: PathBuf,
    pub stress_vm_bytes: String,
    pub stress_mmap_bytes: String,
    pub note: Option<String>,
    pub command_line: String,
    pub run_timeout: Duration,
    /// Run the VM configurations in the nested lab even where this host's KVM boots Linux.
    pub force_lab: bool,
    /// Repetitions and sizes of the lab's VM runs (emulated: far smaller than native).
    pub lab_reps: usize,
    pub lab_sizes: BTreeMap<Workload, WorkloadSize>,
}

/// Default sizes: `--quick` small enough for < 10 minutes on 2 shared cores.
pub fn default_sizes(quick: bool) -> BTreeMap<Workload, WorkloadSize> {
    let mb = |m: u64| m << 20;
    let mut s = BTreeMap::new();
    let (cg, stream, gups, faults) = if quick {
        ((mb(128), 40), (mb(192), 10), (mb(64), 8), (mb(64), 8))
    } else {
        ((mb(256), 50), (mb(256), 20), (mb(128), 16), (mb(64), 16))
    };
    for (w, (m, i)) in [
        (Workload::Cg, cg),
        (Workload::Stream, stream),
        (Workload::Gups, gups),
        (Workload::Faults, faults),
    ] {
        s.insert(
            w,
            WorkloadSize {
                mem_per_rank: m,
                iters: i,
            },
        );
    }
    s
}

/// Lab sizes: small enough for QEMU/TCG (about 50-100x slower than native) and an L2
/// guest of 2 GiB; `--quick` fits one L1 boot of about 10 minutes for all four workloads.
pub fn default_lab_sizes(quick: bool) -> BTreeMap<Workload, WorkloadSize> {
    let mb = |m: u64| m << 20;
    let (cg, stream, gups, faults) = if quick {
        ((mb(16), 40), (mb(16), 3), (mb(8), 2), (mb(16), 4))
    } else {
        ((mb(32), 50), (mb(32), 5), (mb(16), 4), (mb(32), 8))
    };
    [
        (Workload::Cg, cg),
        (Workload::Stream, stream),
        (Workload::Gups, gups),
        (Workload::Faults, faults),
    ]
    .into_iter()
    .map(|(w, (m, i))| {
        (
            w,
            WorkloadSize {
                mem_per_rank: m,
                iters: i,
            },
        )
    })
    .collect()
}

/// Guest RAM of a VM run on this host: the guest kernel's GiB plus a pool that holds
/// every rank's largest workload with room for its page tables and shared region (hpmmap
/// serves only whole blocks; a pool too small would fall back to Linux, counted but not
/// what the row is about).
pub fn host_vm_mem_gib(opts: &Options) -> u32 {
    let largest = opts
        .workloads
        .iter()
        .map(|w| opts.sizes[w].mem_per_rank)
        .max()
        .unwrap_or(0);
    vm_mem_gib(largest, opts.ranks)
}

/// 1 GiB for the guest kernel plus whole GiBs holding `ranks` × `mem_per_rank` and a
/// quarter more.
pub fn vm_mem_gib(mem_per_rank: u64, ranks: usize) -> u32 {
    let pool = (mem_per_rank * ranks as u64 * 5 / 4)
        .div_ceil(1 << 30)
        .max(1);
    1 + pool as u32
}

/// The workload binary: `HPMMAP_WORKLOAD_BIN`, else `hpmmap-workload` beside this binary.
pub fn workload_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HPMMAP_WORKLOAD_BIN") {
        return Ok(p.into());
    }
    let me = std::env::current_exe().context("locating the running binary")?;
    let p = me.with_file_name("hpmmap-workload");
    if !p.is_file() {
        bail!(
            "{} not found (build it with cargo build -p hpmmap-bench, or set HPMMAP_WORKLOAD_BIN)",
            p.display()
        );
    }
    Ok(p)
}

/// The cache directory shared by all layers.
pub fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("HPMMAP_CACHE") {
        return c.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/hpmmap")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_vm_pool_holds_every_rank() {
        assert_eq!(vm_mem_gib(64 << 20, 1), 2);
        assert_eq!(vm_mem_gib(256 << 20, 8), 4);
        assert_eq!(vm_mem_gib(1 << 30, 1), 3);
    }
}
