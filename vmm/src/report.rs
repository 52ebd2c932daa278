//! The run report: printed on stderr at exit, and written as JSON with `--report`.

use crate::kvm_stats::KvmPages;
use crate::memory::hugepages::PageSize;
use crate::memory::layout::GpaRange;
use crate::memory::PrefaultStats;
use crate::units::format_size;
use serde::Serialize;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where this ran, in words (every figure names its platform).
    pub platform: String,
    pub kernel: String,
    pub kernel_format: crate::loader::KernelFormat,
    pub entry: crate::arch::x86_64::regs::EntryMode,
    pub job: Option<String>,
    pub vcpus: u32,
    pub guest_ram_bytes: u64,
    pub pool_bytes: u64,
    pub pool_ranges: Vec<GpaRange>,
    pub hugepages_requested: PageSize,
    /// `memfd` (hugetlb pages) or `devdax:/dev/daxX.Y`.
    pub memory_backend: String,
    /// KernelPageSize of the whole guest RAM mapping from /proc/self/smaps; null if it mixed
    /// page sizes.
    pub host_page_size_bytes: Option<u64>,
    /// KVM's binary statistics (KVM_GET_STATS_FD) at exit; null where KVM has none.
    pub kvm_pages: Option<KvmPages>,
    pub prefault: PrefaultStats,
    /// From the VMM's start (main) to the boot vCPU's first KVM_RUN.
    pub start_to_first_instruction_ms: Option<f64>,
    /// Where the start-up time went, phase by phase (ms).
    pub startup_phases_ms: std::collections::BTreeMap<&'static str, f64>,
    pub run_seconds: f64,
    /// job-exit, guest-shutdown, guest-panic, triple-fault, kvm-internal-error, vmm-failure.
    pub exit_reason: String,
    pub exit_detail: String,
    /// The status the guest wrote to the PV EXIT register, if it did.
    pub job_exit_status: Option<u8>,
    /// This process's exit status.
    pub exit_code: i32,
    /// The job's result line (PV RESULT command), if any.
    pub result: Option<String>,
    /// Guest accesses to ports and MMIO addresses no device answers (read as all-ones).
    pub unhandled_pio: u64,
    pub unhandled_mmio: u64,
    /// What a system call outside the VMM's filters did (`--seccomp`).
    pub seccomp: crate::jail::seccomp::SeccompLevel,
    /// `--jail`: the job's root directory, uid and gid the VMM ran as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jail: Option<JailReport>,
    /// The VF passed through with `--vf`, and what an InfiniBand VF was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vf: Option<VfReport>,
    /// The guest's InfiniBand check: its `hpmmap-init: ib: ` console lines (at most 16).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub guest_ib: Vec<String>,
    /// `--numa`: each guest node, where its RAM really lies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub numa_nodes: Vec<NodeReport>,
    /// virtio-blk disks: `--disk`, the image's rootfs, `--output`'s.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<crate::devices::virtio::attach::DiskReport>,
    /// `--output`: what came back from the guest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<crate::devices::virtio::output::OutputReport>,
    /// `--image`: what the image itself costs in guest RAM (the initramfs) and what it keeps
    /// on a disk instead (the rootfs, no guest RAM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageReport>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ImageReport {
    pub initramfs_bytes: Option<u64>,
    pub rootfs_bytes: Option<u64>,
}

/// One guest NUMA node in the report.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node: u32,
    /// The host node its RAM is bound to (`host-node=`), if any.
    pub host_node: Option<u32>,
    pub ram_bytes: u64,
    /// Guest-physical ranges (the SRAT's), pool included.
    pub gpa_ranges: Vec<GpaRange>,
    /// Its vCPUs, as a CPU list, and the host CPUs they were pinned to (null: unpinned).
    pub vcpus: String,
    pub vcpu_pins: Vec<Option<usize>>,
    /// 1 GiB host pages behind its RAM (/proc/self/numa_maps at exit).
    pub pages_1g: u64,
    /// Host pages behind its RAM per host node, as numa_maps counts them.
    pub host_pages_by_node: std::collections::BTreeMap<u32, u64>,
}

/// The per-node part of the report for `--numa`.
pub fn numa_nodes(
    numa: &crate::memory::numa::GuestNuma,
    layout: &crate::memory::layout::GuestLayout,
    ram: &crate::memory::GuestRam,
    pins: &[Option<usize>],
) -> Vec<NodeReport> {
    let pages = ram.part_pages();
    numa.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let got = pages.get(i).cloned().flatten();
            NodeReport {
                node: n.id,
                host_node: n.host_node,
                ram_bytes: n.mem,
                gpa_ranges: layout
                    .node_ranges()
                    .into_iter()
                    .filter(|(k, _)| *k == n.id)
                    .map(|(_, r)| r)
                    .collect(),
                vcpus: crate::units::format_cpu_list(
                    &n.cpus.iter().map(|c| *c as usize).collect::<Vec<_>>(),
                ),
                vcpu_pins: n
                    .cpus
                    .iter()
                    .map(|c| pins.get(*c as usize).copied().flatten())
                    .collect(),
                pages_1g: got
                    .as_ref()
                    .filter(|e| e.page_size == 1 << 30)
                    .map(|e| e.pages_by_node.values().sum())
                    .unwrap_or(0),
                host_pages_by_node: got.map(|e| e.pages_by_node).unwrap_or_default(),
            }
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct JailReport {
    pub dir: String,
    pub uid: u32,
    pub gid: u32,
    pub cgroup: Option<String>,
}

impl JailReport {
    pub fn of(j: &crate::jail::JailOptions) -> Self {
        JailReport {
            dir: j.dir.display().to_string(),
            uid: j.uid,
            gid: j.gid,
            cgroup: j.cgroup.as_ref().map(|c| c.display().to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VfReport {
    /// The VF's and its PF's PCI addresses on the host.
    pub vf: String,
    pub pf: String,
    /// Node and port GUID set for an InfiniBand VF (restored at exit).
    pub guid: Option<String>,
    /// The job's partition key, for an InfiniBand VF given `--pkey`.
    pub pkey: Option<String>,
    /// The job's name in the claim record and partitions.conf.
    pub job: String,
}

impl VfReport {
    pub fn of(claim: &hpmmap_vf::VfClaim) -> Self {
        VfReport {
            vf: claim.vf().to_string(),
            pf: claim.pf().to_string(),
            guid: claim.guid().map(|g| g.to_string()),
            pkey: claim.pkey().map(|p| p.to_string()),
            job: claim.job().to_string(),
        }
    }
}

impl Report {
    pub fn summary(&self) -> String {
        let page = self
            .host_page_size_bytes
            .map(format_size)
            .unwrap_or_else(|| "mixed".into());
        let kvm = self
            .kvm_pages
            .map(|k| {
                format!(
                    "pages_4k={} pages_2m={} pages_1g={}",
                    k.pages_4k, k.pages_2m, k.pages_1g
                )
            })
            .unwrap_or_else(|| "unavailable".into());
        let first = self
            .start_to_first_instruction_ms
            .map(|m| format!("{m:.1} ms"))
            .unwrap_or_else(|| "never".into());
        let mut s = format!(
            "hpmmap-vmm report ({platform})\n  guest RAM {ram} on {page} host pages (asked {asked}, {backend}), pool {pool} in {n} range(s), {vcpus} vCPU(s)\n  prefault {pt:.3} s ({rate:.2} GiB/s, {w} workers: {why}); start to first guest instruction {first}\n  KVM {kvm}\n  exit: {reason} ({detail}), status {code}",
            platform = self.platform,
            ram = format_size(self.guest_ram_bytes),
            asked = self.hugepages_requested.name(),
            backend = self.memory_backend,
            pool = format_size(self.pool_bytes),
            n = self.pool_ranges.len(),
            vcpus = self.vcpus,
            pt = self.prefault.seconds,
            rate = self.prefault.gib_per_s,
            w = self.prefault.workers,
            why = self.prefault.workers_reason,
            reason = self.exit_reason,
            detail = self.exit_detail.lines().next().unwrap_or(""),
            code = self.exit_code,
        );
        if let Some(v) = &self.vf {
            s.push_str(&format!("\n  vf: {} (PF {}), job {}", v.vf, v.pf, v.job));
            if let Some(g) = &v.guid {
                s.push_str(&format!(", GUID {g}"));
            }
            if let Some(p) = &v.pkey {
                s.push_str(&format!(", P_Key {p}"));
            }
        }
        for n in &self.numa_nodes {
            let on: Vec<String> = n
                .host_pages_by_node
                .iter()
                .map(|(h, p)| format!("N{h}={p}"))
                .collect();
            s.push_str(&format!(
                "\n  guest node {}: {} RAM, vCPUs {}, host node {}, pages_1g={} ({})",
                n.node,
                format_size(n.ram_bytes),
                n.vcpus,
                n.host_node
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "unbound".into()),
                n.pages_1g,
                on.join(" ")
            ));
        }
        for l in &self.guest_ib {
            s.push_str(&format!("\n  guest ib: {l}"));
        }
        for d in &self.disks {
            s.push_str(&format!(
                "\n  disk {}: {} ({}, {})",
                d.serial,
                d.path,
                format_size(d.bytes),
                if d.ro { "read-only" } else { "read-write" }
            ));
        }
        if let Some(o) = &self.output {
            s.push_str(&format!(
                "\n  output: {} file(s), {} bytes into {}, {} entr(ies) skipped{}",
                o.files,
                o.bytes,
                o.dir,
                o.skipped,
                o.error
                    .as_ref()
                    .map(|e| format!(" (stopped: {e})"))
                    .unwrap_or_default()
            ));
        }
        if let Some(r) = &self.result {
            s.push_str(&format!("\n  result: {r}"));
        }
        s
    }

    /// Writes the JSON next to `path` and renames it into place, so a reader never sees half a
    /// report.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            serde_json::to_writer_pretty(&mut f, self).map_err(std::io::Error::other)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}
