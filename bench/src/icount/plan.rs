//! What an instruction-count run measures: configurations (one guest boot each),
//! competitors, workload sizes, and the script the guest runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::machine::{COMPETITOR_CPUS, RANK_CPU};
use crate::memory::AllocMode;
use crate::model::WorkloadSize;
use crate::workloads::Workload;

/// The hpmmap pool: `memmap=1G$4G` on every configuration's command line (the same RAM
/// for the kernel everywhere); only `hpmmap` loads the module on it (bare-metal mode).
pub const POOL_BASE: u64 = 4 << 30;
pub const POOL_SIZE: u64 = 1 << 30;
/// Guest RAM: q35 puts 2 GiB below 4 GiB and the rest at 4 GiB, which is the pool.
pub const GUEST_MEM_MIB: u64 = 3072;
/// Where the workload binary is in the image (hpmmap-image's job directory).
pub const WORKLOAD_PATH: &str = "/job/bin/hpmmap-workload";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IcountConfig {
    /// Demand-paged 4 KiB pages, THP off in the whole guest.
    #[serde(rename = "4k")]
    Page4k,
    /// THP (`madvise`), the rank asks with MADV_HUGEPAGE.
    #[serde(rename = "thp")]
    Thp,
    /// The rank on hugetlbfs 2 MiB pages reserved at boot; THP `madvise` around it.
    #[serde(rename = "hugetlb")]
    Hugetlb,
    /// The rank under `hpmmap-run`, the module on the `memmap=` pool; THP `madvise` around it.
    #[serde(rename = "hpmmap")]
    Hpmmap,
}

impl IcountConfig {
    pub const ALL: [IcountConfig; 4] = [Self::Page4k, Self::Thp, Self::Hugetlb, Self::Hpmmap];

    pub fn name(self) -> &'static str {
        match self {
            Self::Page4k => "4k",
            Self::Thp => "thp",
            Self::Hugetlb => "hugetlb",
            Self::Hpmmap => "hpmmap",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    pub fn mode(self) -> AllocMode {
        match self {
            Self::Page4k => AllocMode::Plain,
            Self::Thp | Self::Hpmmap => AllocMode::Thp,
            Self::Hugetlb => AllocMode::Hugetlb,
        }
    }

    /// `/sys/kernel/mm/transparent_hugepage/enabled` for the whole guest. `madvise`, not
    /// `always`: the competitors then fault 4 KiB pages all over memory, as commodity
    /// programs do, and a rank asking for huge pages meets fragmented memory (direct
    /// compaction, the paper's THP cost) instead of a guest where everyone gets 2 MiB pages.
    pub fn thp(self) -> &'static str {
        match self {
            Self::Page4k => "never",
            _ => "madvise",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Page4k => "demand-paged 4 KiB, THP never (whole guest)",
            Self::Thp => "THP madvise, rank madvise(MADV_HUGEPAGE)",
            Self::Hugetlb => "rank on hugetlbfs 2 MiB (MAP_HUGETLB, reserved at boot), THP madvise",
            Self::Hpmmap => "rank under hpmmap-run, module on a memmap= 1 GiB pool (bare-metal mode), THP madvise",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Competitor {
    #[serde(rename = "iso")]
    Iso,
    /// Profile A: one memory-churning process (stress-ng `--mmap`: map, touch, unmap) on
    /// vCPU 1.
    #[serde(rename = "A")]
    A,
    /// Profile B: A plus stress-ng `--vm` (allocate, dirty, free a large buffer) on vCPU 2.
    #[serde(rename = "B")]
    B,
    /// Control: a CPU hog without memory management (stress-ng `--cpu`) on vCPU 1.
    #[serde(rename = "cpu-other")]
    CpuOther,
    /// Control: the same hog on the rank's own vCPU.
    #[serde(rename = "cpu-own")]
    CpuOwn,
}

impl Competitor {
    pub const ALL: [Competitor; 5] = [Self::Iso, Self::A, Self::B, Self::CpuOther, Self::CpuOwn];

    pub fn name(self) -> &'static str {
        match self {
            Self::Iso => "iso",
            Self::A => "A",
            Self::B => "B",
            Self::CpuOther => "cpu-other",
            Self::CpuOwn => "cpu-own",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    pub fn is_control(self) -> bool {
        matches!(self, Self::CpuOther | Self::CpuOwn)
    }

    /// The guest commands that start it, each in the background (stress-ng pinned with
    /// busybox taskset; its workers inherit the CPU).
    pub fn commands(self, sizes: &CompetitorSizes) -> Vec<String> {
        let sn = |cpu: usize, args: String| {
            format!("taskset -c {cpu} stress-ng {args} --timeout 0 --quiet")
        };
        let a = sn(
            COMPETITOR_CPUS[0],
            format!("--mmap 1 --mmap-bytes {}m", sizes.mmap_mib),
        );
        match self {
            Self::Iso => vec![],
            Self::A => vec![a],
            Self::B => vec![
                a,
                sn(
                    COMPETITOR_CPUS[1],
                    format!("--vm 1 --vm-bytes {}m --vm-keep", sizes.vm_mib),
                ),
            ],
            Self::CpuOther => vec![sn(COMPETITOR_CPUS[0], "--cpu 1 --cpu-method int64".into())],
            Self::CpuOwn => vec![sn(RANK_CPU, "--cpu 1 --cpu-method int64".into())],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompetitorSizes {
    pub mmap_mib: u64,
    pub vm_mib: u64,
}

impl Default for CompetitorSizes {
    fn default() -> Self {
        CompetitorSizes {
            mmap_mib: 256,
            vm_mib: 768,
        }
    }
}

/// One run inside a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    pub workload: Workload,
    pub competitor: Competitor,
    pub rep: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub configs: Vec<IcountConfig>,
    pub workloads: Vec<Workload>,
    pub competitors: Vec<Competitor>,
    /// Repetitions of every cell.
    pub reps: usize,
    /// Extra isolated repetitions of the first workload (the determinism row): at least
    /// this many isolated runs of it in every configuration.
    pub iso_reps: usize,
    pub sizes: BTreeMap<Workload, WorkloadSize>,
    pub competitor_sizes: CompetitorSizes,
    /// Guest seconds (instruction-count clock) a competitor runs before the rank starts
    /// (stress-ng had faulted about 80 MiB of B's buffer after 0.3 s and 480 MiB after 2 s;
    /// it goes on filling during the runs: every competitor vCPU costs host time, and
    /// `--quick` must stay within 15 minutes on 2 cores).
    pub warmup_secs: f64,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        let size = |mib: u64, iters: usize| WorkloadSize {
            mem_per_rank: mib << 20,
            iters,
        };
        let mut sizes = BTreeMap::new();
        if quick {
            // cg needs about 40 iterations to verify (relative residual < 1e-6).
            sizes.insert(Workload::Cg, size(4, 40));
            sizes.insert(Workload::Stream, size(8, 4));
            sizes.insert(Workload::Gups, size(4, 4));
            sizes.insert(Workload::Faults, size(8, 4));
            sizes.insert(Workload::Fwq, size(1, 100));
        } else {
            sizes.insert(Workload::Cg, size(16, 50));
            sizes.insert(Workload::Stream, size(32, 8));
            sizes.insert(Workload::Gups, size(16, 8));
            sizes.insert(Workload::Faults, size(32, 8));
            sizes.insert(Workload::Fwq, size(1, 400));
        }
        Plan {
            configs: IcountConfig::ALL.to_vec(),
            workloads: Workload::ICOUNT.to_vec(),
            competitors: Competitor::ALL.to_vec(),
            reps: if quick { 1 } else { 2 },
            iso_reps: 5,
            sizes,
            competitor_sizes: CompetitorSizes::default(),
            warmup_secs: 0.5,
        }
    }

    /// A guest's runs, in order: competitors grouped, workloads inside them; the isolated
    /// runs of the first workload repeated up to `iso_reps`.
    pub fn cells(&self) -> Vec<Cell> {
        let mut v = Vec::new();
        for rep in 0..self.reps {
            for &competitor in &self.competitors {
                for &workload in &self.workloads {
                    v.push(Cell {
                        workload,
                        competitor,
                        rep,
                    });
                }
            }
        }
        if let (Some(&w), true) = (
            self.workloads.first(),
            self.competitors.contains(&Competitor::Iso),
        ) {
            for rep in self.reps..self.iso_reps.max(self.reps) {
                v.push(Cell {
                    workload: w,
                    competitor: Competitor::Iso,
                    rep,
                });
            }
        }
        v
    }

    /// 2 MiB pages the hugetlb configuration reserves at boot: the largest rank plus slack.
    pub fn hugetlb_pages(&self) -> u64 {
        let max = self
            .sizes
            .values()
            .map(|s| s.mem_per_rank)
            .max()
            .unwrap_or(0);
        // stream maps three arrays, cg several vectors: twice the size covers them.
        (2 * max).div_ceil(2 << 20) + 16
    }

    pub fn workload_command(&self, config: IcountConfig, w: Workload) -> String {
        let s = &self.sizes[&w];
        let launcher = if config == IcountConfig::Hpmmap {
            "hpmmap-run -- "
        } else {
            ""
        };
        format!(
            "{launcher}{WORKLOAD_PATH} {} --ranks 1 --mem-per-rank {} --iters {} --mode {} --tol 0 --cpus {RANK_CPU}",
            w.name(),
            s.mem_per_rank,
            s.iters,
            config.mode().name()
        )
    }

    /// The script the guest runs for one configuration (busybox sh, on vCPU 0).
    pub fn script(&self, config: IcountConfig) -> String {
        let mut s = String::from(
            "#!/bin/sh\n# hpmmap-bench icount: one configuration's runs (generated)\n\
             vm() { grep -E '^(pgfault|pgmajfault|thp_fault_alloc|thp_collapse_alloc|compact_stall|compact_success|pgsteal_direct|pgscan_direct|thp_split_page) ' /proc/vmstat; }\n",
        );
        s += &format!(
            "echo \"HPMMAP-ICOUNT-GUEST config={} kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) thp=$(sed 's/.*\\[\\(.*\\)\\].*/\\1/' /sys/kernel/mm/transparent_hugepage/enabled) hugepages=$(cat /proc/sys/vm/nr_hugepages) hpmmap=$([ -d /sys/kernel/hpmmap ] && echo 1 || echo 0)\"\n",
            config.name()
        );
        let mut current: Option<Competitor> = None;
        let stop = "for p in $comp; do kill $p 2>/dev/null; done; sleep 0.1; for p in $comp; do kill -9 $p 2>/dev/null; wait $p 2>/dev/null; done; comp=\n";
        for (idx, c) in self.cells().into_iter().enumerate() {
            if current != Some(c.competitor) {
                if current.is_some() {
                    s += stop;
                }
                s += "comp=\n";
                for cmd in c.competitor.commands(&self.competitor_sizes) {
                    s += &format!("{cmd} >/tmp/comp.log 2>&1 &\ncomp=\"$comp $!\"\n");
                }
                if c.competitor != Competitor::Iso {
                    s += &format!("sleep {}\n", self.warmup_secs);
                }
                current = Some(c.competitor);
            }
            s += &format!(
                "echo HPMMAP-ICOUNT-RUN-BEGIN idx={idx} workload={} competitor={} rep={}\n\
                 grep -E '^(MemFree|AnonHugePages|Shmem):' /proc/meminfo | tr -s ' ' | tr '\\n' ' '; echo; sed -n 's/^Node 0, zone *DMA32/buddyinfo DMA32:/p' /proc/buddyinfo\n\
                 vm > /tmp/vm0\n{} 2>/tmp/err\nrc=$?\nvm > /tmp/vm1\n\
                 echo \"HPMMAP-ICOUNT-VMSTAT $(paste -d' ' /tmp/vm0 /tmp/vm1 | awk '{{printf \"%s=%d \", $1, $4-$2}}')\"\n\
                 [ $rc = 0 ] || tail -n 5 /tmp/err\n\
                 echo HPMMAP-ICOUNT-RUN-END idx={idx} rc=$rc\n",
                c.workload.name(),
                c.competitor.name(),
                c.rep,
                self.workload_command(config, c.workload),
            );
        }
        if current.is_some() {
            s += stop;
        }
        s += "echo HPMMAP-ICOUNT-PLAN-DONE\n";
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_group_competitors_and_repeat_the_isolated_first_workload() {
        let p = Plan::new(true);
        let cells = p.cells();
        assert_eq!(cells.len(), 5 * 5 + 4);
        assert!(cells[25..]
            .iter()
            .all(|c| c.competitor == Competitor::Iso && c.workload == Workload::Cg));
        let script = p.script(IcountConfig::Hpmmap);
        assert_eq!(
            script.matches("HPMMAP-ICOUNT-RUN-BEGIN").count(),
            cells.len()
        );
        assert!(script.contains("hpmmap-run -- /job/bin/hpmmap-workload cg --ranks 1"));
        assert!(script.contains("taskset -c 3 stress-ng --cpu 1"));
        assert!(script.contains("taskset -c 2 stress-ng --vm 1 --vm-bytes 768m --vm-keep"));
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!p.script(IcountConfig::Thp).contains("hpmmap-run"));
    }

    #[test]
    fn names_round_trip() {
        for c in IcountConfig::ALL {
            assert_eq!(IcountConfig::from_name(c.name()), Some(c));
        }
        for c in Competitor::ALL {
            assert_eq!(Competitor::from_name(c.name()), Some(c));
        }
    }
}
