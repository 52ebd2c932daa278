//! `status`: what the host's 1 GiB pools hold, what hpmmap-offline reserved, which
//! hpmmap-vmm processes map the pages, memory block states and dax devices.

use crate::blocks::{self, BlockSummary};
use crate::devdax::{self, DaxDevice};
use crate::error::Result;
use crate::holders::{self, Holder};
use crate::host::Host;
use crate::hugetlb::{self, GlobalCounters, PoolCounters};
use crate::size::{human, GIB};
use crate::state::{self, State};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HeldBy {
    pub pid: u32,
    pub pages: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: u32,
    pub mem_total_bytes: u64,
    pub mem_free_bytes: u64,
    pub pages_1g: Option<PoolCounters>,
    /// Pages of the pool that hpmmap-offline holds: added by it plus adopted.
    pub reserved_by_hpmmap: u64,
    /// Of those, free pages that were in the pool already (boot-time) and were adopted.
    pub adopted_by_hpmmap: u64,
    /// hpmmap-vmm processes mapping 1 GiB pages on this node.
    pub held_by: Vec<HeldBy>,
    pub blocks: BlockSummary,
}

/// A dax device and the processes mapping it (a VMM whose guest RAM it is).
#[derive(Debug, Clone, Serialize)]
pub struct DaxStatus {
    #[serde(flatten)]
    pub device: DaxDevice,
    pub mapped_by: Vec<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub format: &'static str,
    pub version: u32,
    pub page_size_bytes: u64,
    pub supported_1g: bool,
    pub global_1g: Option<GlobalCounters>,
    pub nodes: Vec<NodeStatus>,
    pub vm_holders: Vec<Holder>,
    pub dax_devices: Vec<DaxStatus>,
    /// Each job's share (`reserve --job ID`), and what no job holds.
    pub jobs: Vec<JobStatus>,
    pub unassigned: u64,
    pub state_file: String,
    pub state: Option<State>,
}

/// One job's pages and devices, and whether its processes run.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub job: String,
    pub pages: u64,
    pub per_node: std::collections::BTreeMap<u32, u64>,
    pub devdax: Vec<String>,
    /// Running hpmmap-vmm processes with `--job` this job.
    pub vmm_pids: Vec<u32>,
    /// A reserve for the job: its pid, and whether it still runs.
    pub reserving: Option<(u32, bool)>,
}

pub fn gather(host: &Host, state_path: &Path) -> Result<Status> {
    let supported = hugetlb::supported(host);
    let st = state::load(state_path)?;
    let holders = holders::vm_holders(host);
    let all_blocks = blocks::list_blocks(host);
    let bs = blocks::block_size(host).unwrap_or(0);
    let mut nodes = Vec::new();
    for node in hugetlb::nodes(host) {
        let mem = hugetlb::node_mem(host, node).unwrap_or_default();
        let pages_1g = if supported {
            hugetlb::node_pool(host, node).ok()
        } else {
            None
        };
        nodes.push(NodeStatus {
            node,
            mem_total_bytes: mem.total_bytes,
            mem_free_bytes: mem.free_bytes,
            pages_1g,
            reserved_by_hpmmap: st.as_ref().map(|s| s.held(node)).unwrap_or(0),
            adopted_by_hpmmap: st.as_ref().map(|s| s.adopted(node)).unwrap_or(0),
            held_by: holders
                .iter()
                .filter(|h| h.on_node(node) > 0)
                .map(|h| HeldBy {
                    pid: h.pid,
                    pages: h.on_node(node),
                })
                .collect(),
            blocks: blocks::summarize(&all_blocks, bs, Some(node)),
        });
    }
    let vmms = crate::jobs::vmm_processes(host);
    let jobs = st
        .as_ref()
        .map(|st| {
            st.jobs
                .iter()
                .map(|(name, j)| JobStatus {
                    job: name.clone(),
                    pages: j.total(),
                    per_node: j.nodes.clone(),
                    devdax: j.devdax.clone(),
                    vmm_pids: vmms
                        .iter()
                        .filter(|(_, jj)| jj.as_deref() == Some(name.as_str()))
                        .map(|(p, _)| *p)
                        .collect(),
                    reserving: j
                        .reserving
                        .as_ref()
                        .map(|o| (o.pid, crate::jobs::alive(host, o.pid, o.start))),
                })
                .collect()
        })
        .unwrap_or_default();
    let unassigned = st
        .as_ref()
        .map(|st| st.nodes.keys().map(|&n| st.unassigned(n)).sum())
        .unwrap_or(0);
    Ok(Status {
        jobs,
        unassigned,
        format: "hpmmap-offline-status",
        version: 1,
        page_size_bytes: GIB,
        supported_1g: supported,
        global_1g: if supported {
            hugetlb::global_pool(host).ok()
        } else {
            None
        },
        nodes,
        vm_holders: holders,
        dax_devices: devdax::list(host)
            .into_iter()
            .map(|d| DaxStatus {
                mapped_by: devdax::users(host, &d.name),
                device: d,
            })
            .collect(),
        state_file: state_path.display().to_string(),
        state: st,
    })
}

pub fn render_text(s: &Status) -> String {
    let mut o = String::new();
    if !s.supported_1g {
        let _ = writeln!(o, "1 GiB huge pages: not supported by this kernel/CPU");
    }
    for n in &s.nodes {
        let _ = writeln!(
            o,
            "node {}: memory {}, free {}",
            n.node,
            human(n.mem_total_bytes),
            human(n.mem_free_bytes)
        );
        if let Some(p) = n.pages_1g {
            let _ = writeln!(
                o,
                "  1 GiB pages: pool {}, free {}, surplus {}; reserved by hpmmap-offline {}{}",
                p.nr,
                p.free,
                p.surplus,
                n.reserved_by_hpmmap,
                if n.adopted_by_hpmmap > 0 {
                    format!(
                        " ({} adopted from the pool already there, {} added)",
                        n.adopted_by_hpmmap,
                        n.reserved_by_hpmmap - n.adopted_by_hpmmap
                    )
                } else {
                    String::new()
                }
            );
        }
        if n.held_by.is_empty() {
            let _ = writeln!(o, "  held by hpmmap-vmm: none");
        } else {
            let list: Vec<String> = n
                .held_by
                .iter()
                .map(|h| format!("pid {} ({} GiB)", h.pid, h.pages))
                .collect();
            let _ = writeln!(o, "  held by hpmmap-vmm: {}", list.join(", "));
        }
        let zones: Vec<String> = n
            .blocks
            .online_by_zone
            .iter()
            .map(|(z, c)| format!("{z} {c}"))
            .collect();
        let _ = writeln!(
            o,
            "  memory blocks ({} each): {} online ({}), {} offline{}",
            human(n.blocks.block_size_bytes),
            n.blocks.online,
            zones.join(", "),
            n.blocks.offline,
            if n.blocks.other > 0 {
                format!(", {} changing", n.blocks.other)
            } else {
                String::new()
            }
        );
    }
    if let Some(g) = s.global_1g {
        let _ = writeln!(
            o,
            "all nodes, 1 GiB pages: pool {}, free {}, reserved by mappings {}, surplus {}",
            g.nr, g.free, g.resv, g.surplus
        );
    }
    for ds in &s.dax_devices {
        let d = &ds.device;
        let users = if ds.mapped_by.is_empty() {
            String::new()
        } else {
            format!(
                ", mapped by pid {}",
                ds.mapped_by
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = writeln!(
            o,
            "dax {}: size {}, align {}, node {}, driver {}{users}",
            d.name,
            human(d.size),
            d.align.map(human).unwrap_or_else(|| "?".into()),
            d.node.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
            d.driver.as_deref().unwrap_or("none")
        );
    }
    for j in &s.jobs {
        let nodes: Vec<String> = j
            .per_node
            .iter()
            .map(|(n, p)| format!("node {n}: {p}"))
            .collect();
        let _ = writeln!(
            o,
            "job {}: {} GiB{}{}; {}{}",
            j.job,
            j.pages,
            if nodes.is_empty() {
                String::new()
            } else {
                format!(" ({})", nodes.join(", "))
            },
            if j.devdax.is_empty() {
                String::new()
            } else {
                format!(", dax {}", j.devdax.join(", "))
            },
            if j.vmm_pids.is_empty() {
                "no hpmmap-vmm running".to_string()
            } else {
                format!(
                    "hpmmap-vmm pid {}",
                    j.vmm_pids
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            match j.reserving {
                Some((pid, true)) => format!("; reserve running (pid {pid})"),
                Some((pid, false)) => {
                    format!("; its reserve (pid {pid}) was killed: `recover` gives back")
                }
                None => String::new(),
            }
        );
    }
    if !s.jobs.is_empty() {
        let _ = writeln!(o, "no job: {} GiB", s.unassigned);
    }
    match &s.state {
        None => {
            let _ = writeln!(o, "hpmmap-offline holds nothing ({} absent)", s.state_file);
        }
        Some(st) => {
            let _ = writeln!(
                o,
                "state {} (version {}): {} GiB reserved{}{}{}",
                s.state_file,
                st.version,
                st.total_held(),
                if st.pending.is_some() {
                    "; an interrupted resize to settle"
                } else {
                    ""
                },
                if st.blocks.is_empty() {
                    String::new()
                } else {
                    format!("; {} block(s) to restore", st.blocks.len())
                },
                if st.devdax.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; dax {}",
                        st.devdax
                            .iter()
                            .map(|d| d.device.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
        }
    }
    o
}
