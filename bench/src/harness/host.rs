//! Preparing this host for the native cells: the CPUs split between the ranks and the
//! competitors, the log directory, the profiles' competitors (build trees configured,
//! stress-ng present), and the 2 MiB pool of the hugetlb rows.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::kernel_tree::{ensure_kernel_tree, missing_kernel_build_tools};
use super::options::Options;
use super::profiles::Profiles;
use crate::competitor::{self, BuildLoop};
use crate::config::Config;
use crate::hugepages::{HugePool, POOL_2M};
use crate::memory::HUGE_2M;
use crate::model::Profile;
use crate::platform::Platform;
use crate::signals::check_stop;
use crate::vm;

/// This host, ready for the native cells.
pub struct Host {
    /// The ranks' CPUs (empty: not pinned).
    pub rank_cpus: Vec<usize>,
    /// `<out>/logs`: the competitors' output.
    pub logs: PathBuf,
    /// Build loops of the busiest profile asked for (0 when no host cell runs).
    pub max_builds: usize,
    /// The competitors as the header describes them.
    pub competitors_desc: Vec<String>,
    pub profiles: Profiles,
}

/// CPUs, logs and competitors. Fails when a profile's competitor cannot run here.
pub fn prepare(opts: &Options, platform: &Platform) -> Result<Host> {
    // CPUs: ranks on the last cores, competitors on the others (the paper pins the HPC
    // ranks; with the builds kept off the ranks' cores, what differs between
    // configurations is memory management, not CPU time slicing).
    let cpus = crate::ranks::allowed_cpus();
    let (rank_cpus, comp_cpus) = if cpus.len() > opts.ranks {
        let split = cpus.len() - opts.ranks;
        (cpus[split..].to_vec(), cpus[..split].to_vec())
    } else {
        (Vec::new(), Vec::new())
    };
    let jobs = comp_cpus.len().max(1);

    let logs = opts.out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    for f in ["build-0.log", "build-1.log", "stress-ng.log"] {
        let _ = std::fs::remove_file(logs.join(f));
    }

    // Host competitors are only needed for cells that run on this host: not when every
    // configuration asked for is a VM one and the VMs go to the nested lab.
    let host_cells = opts.configs.iter().any(|c| !c.is_vm())
        || (!opts.force_lab && vm::host_can_boot_linux(platform));
    let max_builds = if host_cells {
        opts.profiles.iter().map(|p| p.builds()).max().unwrap_or(0)
    } else {
        0
    };
    let mut competitors_desc = Vec::new();
    let mut build_src = None;
    let mut build_objs = Vec::new();
    if max_builds > 0 {
        let src = match &opts.build_src {
            Some(s) => s.clone(),
            None => {
                let miss = missing_kernel_build_tools();
                if !miss.is_empty() {
                    bail!(
                        "the kernel build (profiles A/B) needs {}: apt-get install {}",
                        miss.join(", "),
                        miss.join(" ")
                    );
                }
                ensure_kernel_tree(&opts.cache)?
            }
        };
        let tag = src
            .file_name()
            .map_or("src".into(), |n| n.to_string_lossy().into_owned());
        for k in 0..max_builds {
            let obj = opts.cache.join("bench").join(format!("obj-{tag}-{k}"));
            let b = BuildLoop {
                src: src.clone(),
                obj: obj.clone(),
                jobs,
            };
            eprintln!(
                "[bench] preparing build {k} of {} in {}",
                src.display(),
                obj.display()
            );
            b.prepare()?;
            check_stop()?;
            build_objs.push(obj);
        }
        let what = if (BuildLoop {
            src: src.clone(),
            obj: PathBuf::new(),
            jobs,
        })
        .is_kernel_tree()
        {
            format!("Linux 6.1 `tinyconfig` vmlinux build (`make -j{jobs}`) of Debian's linux-source-6.1, rebuilt in a loop")
        } else {
            format!("`make -j{jobs}` of {}, rebuilt in a loop", src.display())
        };
        competitors_desc.push(format!("build: {what}"));
        build_src = Some(src);
    }
    if host_cells && opts.profiles.contains(&Profile::B) {
        if !competitor::have("stress-ng") {
            bail!("profile B needs stress-ng (apt-get install stress-ng)");
        }
        competitors_desc.push(format!(
            "stress-ng (profile B): `--vm 1 --vm-bytes {} --mmap 1 --mmap-bytes {}`",
            opts.stress_vm_bytes, opts.stress_mmap_bytes
        ));
    }
    if !comp_cpus.is_empty() {
        competitors_desc.push(format!(
            "ranks pinned to CPU(s) {:?}; competitors confined to CPU(s) {:?}",
            rank_cpus, comp_cpus
        ));
    }
    let profiles = Profiles {
        build_src,
        build_objs,
        jobs,
        cpus: comp_cpus.clone(),
        logs: logs.clone(),
        stress_vm: opts.stress_vm_bytes.clone(),
        stress_mmap: opts.stress_mmap_bytes.clone(),
    };

    Ok(Host {
        rank_cpus,
        logs,
        max_builds,
        competitors_desc,
        profiles,
    })
}

/// The 2 MiB pool the hugetlb rows need, grown now and restored when the guard drops.
/// When the kernel cannot supply it, the hugetlb configuration leaves `configs` and the
/// reason goes to `notes`.
pub fn reserve_hugetlb(
    opts: &Options,
    configs: &mut Vec<Config>,
    notes: &mut Vec<String>,
) -> Option<HugePool> {
    if configs.contains(&Config::Hugetlb) {
        // Every array is rounded up to 2 MiB; no workload has more than 8 arrays.
        let per_rank = opts
            .workloads
            .iter()
            .map(|w| opts.sizes[w].mem_per_rank as usize / HUGE_2M + 8)
            .max()
            .unwrap_or(0);
        let needed = (per_rank * opts.ranks) as u64 + 4;
        match HugePool::reserve(Path::new(POOL_2M), needed) {
            Ok(p) => {
                eprintln!("[bench] hugetlb pool: {needed} free 2 MiB pages (was {} in the pool; restored at the end)", p.original());
                Some(p)
            }
            Err(e) => {
                configs.retain(|c| *c != Config::Hugetlb);
                notes.push(format!("hugetlb rows absent: {e}"));
                eprintln!("[bench] hugetlb rows absent: {e}");
                None
            }
        }
    } else {
        None
    }
}
