//! Guest NUMA nodes (`--numa`): which vCPUs and how much RAM each guest node has, and the host
//! node its RAM is bound to. Guest node i's RAM is the i-th piece of guest RAM in host-mapping
//! order (its own memfd, bound before first touch); `layout` turns that into guest-physical
//! ranges for the SRAT and splits the pool at node boundaries, so that every pool range the
//! PV device announces lies on one guest node.

use super::hugepages::{pool_counters, PageSize};
use crate::units::{format_cpu_list, format_size, parse_cpu_list, parse_size, GIB};
use std::path::Path;
use thiserror::Error;

/// Local distance in a SLIT; remote distance where the host says nothing.
pub const LOCAL_DISTANCE: u8 = 10;
pub const REMOTE_DISTANCE: u8 = 20;

/// One `--numa node=N,cpus=LIST,mem=SIZE[,host-node=H]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: u32,
    pub cpus: Vec<u32>,
    pub mem: u64,
    pub host_node: Option<u32>,
}

/// What one `--numa` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumaArg {
    /// One guest node per host node that has free 1 GiB pages (`hpmmap-offline reserve
    /// --spread` puts them there).
    Auto,
    Node(NodeSpec),
}

/// What the command line asked for, checked against --vcpus and --mem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumaRequest {
    Auto,
    Nodes(Vec<NodeSpec>),
}

impl NumaRequest {
    /// From every `--numa` given (none: `None`), validated where no host is needed.
    pub fn from_args(args: &[NumaArg], vcpus: u32, mem: u64) -> Result<Option<Self>, NumaError> {
        if args.is_empty() {
            return Ok(None);
        }
        if args.contains(&NumaArg::Auto) {
            if args.len() > 1 {
                return Err(NumaError::AutoAndNodes);
            }
            return Ok(Some(NumaRequest::Auto));
        }
        let specs: Vec<NodeSpec> = args
            .iter()
            .filter_map(|a| match a {
                NumaArg::Node(n) => Some(n.clone()),
                NumaArg::Auto => None,
            })
            .collect();
        Ok(Some(NumaRequest::Nodes(validate(&specs, vcpus, mem)?)))
    }

    /// The guest's nodes on this host: `auto` resolved, host nodes and their free pages
    /// checked, the SLIT read.
    pub fn resolve(
        &self,
        sys: &Path,
        vcpus: u32,
        mem: u64,
        page: PageSize,
    ) -> Result<GuestNuma, NumaError> {
        let nodes = match self {
            NumaRequest::Auto => auto(sys, vcpus, mem, page)?,
            NumaRequest::Nodes(n) => n.clone(),
        };
        check_host(sys, &nodes, page)?;
        let distances = distances(sys, &nodes);
        Ok(GuestNuma { nodes, distances })
    }
}

/// The guest's nodes, in id order (0..n), and the SLIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNuma {
    pub nodes: Vec<NodeSpec>,
    pub distances: Vec<Vec<u8>>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NumaError {
    #[error("--numa: 'auto' cannot be combined with node=... specifications")]
    AutoAndNodes,
    #[error("--numa node={0}: given twice")]
    DuplicateNode(u32),
    #[error("--numa: guest nodes must be numbered 0 to {0} without gaps (node {1} is missing)")]
    NodeGap(u32, u32),
    #[error("--numa node={node}: vCPU {cpu} is also in node {other}")]
    CpuTwice { node: u32, cpu: u32, other: u32 },
    #[error("--numa node={node}: vCPU {cpu} does not exist (--vcpus {vcpus})")]
    CpuOutOfRange { node: u32, cpu: u32, vcpus: u32 },
    #[error("--numa: vCPUs {0} are in no node (every vCPU of --vcpus needs one)")]
    CpusMissing(String),
    #[error("--numa node={0}: mem={1} is not a whole number of GiB (guest nodes are 1 GiB pages)")]
    NotGiB(u32, String),
    #[error("--numa: the nodes' mem= add up to {sum}, not --mem {mem}")]
    SizesDontAddUp { sum: String, mem: String },
    #[error("--numa: use --numa host-node=... instead of --numa-node")]
    WithNumaNode,
    #[error("--numa: not with --mem-backend devdax (one device is one host node)")]
    WithDevDax,
    #[error("--numa node={node}: host-node={host}: no such host NUMA node (online: {online})")]
    NoHostNode {
        node: u32,
        host: u32,
        online: String,
    },
    #[error(
        "--numa node={node}: host node {host} has {free} free {page} pages, the node needs {need}"
    )]
    TooFewPages {
        node: u32,
        host: u32,
        free: u64,
        need: u64,
        page: &'static str,
    },
    #[error("--numa auto: no host node has free 1G pages (reserve them: hpmmap-offline reserve --spread --size {0})")]
    AutoNoPages(String),
    #[error("--numa auto: --mem {mem} cannot give each of the {nodes} host nodes with free pages a whole GiB")]
    AutoTooSmall { mem: String, nodes: usize },
    #[error("--numa auto: --vcpus {vcpus} is fewer than the {nodes} host nodes with free pages")]
    AutoTooFewCpus { vcpus: u32, nodes: usize },
}

/// Parses one `--numa` value (clap value parser): `auto` or `node=N,cpus=LIST,mem=SIZE[,
/// host-node=H]`; CPU lists take ranges joined by `:` or `;`, since `,` separates the keys
/// (`cpus=0-3:8-11`).
pub fn parse_arg(s: &str) -> Result<NumaArg, String> {
    if s.trim() == "auto" {
        return Ok(NumaArg::Auto);
    }
    let (mut id, mut cpus, mut mem, mut host) = (None, None, None, None);
    for kv in s.split(',') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("'{kv}' is not KEY=VALUE (node=, cpus=, mem=, host-node=)"))?;
        match k.trim() {
            "node" => {
                id = Some(
                    v.parse::<u32>()
                        .map_err(|_| format!("node={v}: not a number"))?,
                )
            }
            "cpus" => {
                let list = parse_cpu_list(&v.replace([':', ';'], ","))
                    .map_err(|_| format!("cpus={v}: not a CPU list (e.g. 0-7 or 0-3:8-11)"))?;
                cpus = Some(list.into_iter().map(|c| c as u32).collect::<Vec<_>>());
            }
            "mem" => mem = Some(parse_size(v).map_err(|e| format!("mem={v}: {e}"))?),
            "host-node" => {
                host = Some(
                    v.parse::<u32>()
                        .map_err(|_| format!("host-node={v}: not a number"))?,
                )
            }
            other => {
                return Err(format!(
                    "unknown key '{other}' (node=, cpus=, mem=, host-node=)"
                ))
            }
        }
    }
    let missing = |k: &str| format!("'{s}': {k}= is missing");
    Ok(NumaArg::Node(NodeSpec {
        id: id.ok_or_else(|| missing("node"))?,
        cpus: cpus.ok_or_else(|| missing("cpus"))?,
        mem: mem.ok_or_else(|| missing("mem"))?,
        host_node: host,
    }))
}

/// Checks explicit nodes against --vcpus and --mem: numbered 0..n, every vCPU in exactly one
/// node, whole GiB each, adding up to --mem. Returns them in id order.
pub fn validate(specs: &[NodeSpec], vcpus: u32, mem: u64) -> Result<Vec<NodeSpec>, NumaError> {
    let mut nodes = specs.to_vec();
    nodes.sort_by_key(|n| n.id);
    for w in nodes.windows(2) {
        if w[0].id == w[1].id {
            return Err(NumaError::DuplicateNode(w[0].id));
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if n.id != i as u32 {
            return Err(NumaError::NodeGap(nodes.last().unwrap().id, i as u32));
        }
    }
    let mut owner: Vec<Option<u32>> = vec![None; vcpus as usize];
    for n in &nodes {
        for &c in &n.cpus {
            let slot = owner.get_mut(c as usize).ok_or(NumaError::CpuOutOfRange {
                node: n.id,
                cpu: c,
                vcpus,
            })?;
            if let Some(other) = *slot {
                return Err(NumaError::CpuTwice {
                    node: n.id,
                    cpu: c,
                    other,
                });
            }
            *slot = Some(n.id);
        }
        if n.mem == 0 || !n.mem.is_multiple_of(GIB) {
            return Err(NumaError::NotGiB(n.id, format_size(n.mem)));
        }
    }
    let missing: Vec<usize> = (0..vcpus as usize)
        .filter(|c| owner[*c].is_none())
        .collect();
    if !missing.is_empty() {
        return Err(NumaError::CpusMissing(format_cpu_list(&missing)));
    }
    let sum: u64 = nodes.iter().map(|n| n.mem).sum();
    if sum != mem {
        return Err(NumaError::SizesDontAddUp {
            sum: format_size(sum),
            mem: format_size(mem),
        });
    }
    Ok(nodes)
}

/// Host nodes online, from sysfs (`node/online`, e.g. "0-1").
fn online_nodes(sys: &Path) -> Vec<u32> {
    std::fs::read_to_string(sys.join("devices/system/node/online"))
        .ok()
        .and_then(|t| parse_cpu_list(t.trim()).ok())
        .map(|v| v.into_iter().map(|n| n as u32).collect())
        .unwrap_or_else(|| vec![0])
}

/// `--numa auto`: one guest node per host node with free pages of `page`, RAM split in whole
/// GiB as evenly as it goes (the first nodes take the odd GiBs), vCPUs in contiguous blocks.
pub fn auto(sys: &Path, vcpus: u32, mem: u64, page: PageSize) -> Result<Vec<NodeSpec>, NumaError> {
    // 4 KiB pages have no pool to look at: every online node takes part.
    let hosts: Vec<u32> = online_nodes(sys)
        .into_iter()
        .filter(|&h| {
            page == PageSize::Small || pool_counters(sys, page, Some(h)).is_some_and(|c| c.free > 0)
        })
        .collect();
    if hosts.is_empty() {
        return Err(NumaError::AutoNoPages(format_size(mem)));
    }
    let n = hosts.len() as u64;
    let gibs = mem / GIB;
    if gibs < n || !mem.is_multiple_of(GIB) {
        return Err(NumaError::AutoTooSmall {
            mem: format_size(mem),
            nodes: hosts.len(),
        });
    }
    if (vcpus as u64) < n {
        return Err(NumaError::AutoTooFewCpus {
            vcpus,
            nodes: hosts.len(),
        });
    }
    let mut next_cpu = 0u32;
    Ok(hosts
        .iter()
        .enumerate()
        .map(|(i, &h)| {
            let i = i as u64;
            let gib = gibs / n + u64::from(i < gibs % n);
            let cpus = vcpus as u64 / n + u64::from(i < vcpus as u64 % n);
            let first = next_cpu;
            next_cpu += cpus as u32;
            NodeSpec {
                id: i as u32,
                cpus: (first..next_cpu).collect(),
                mem: gib * GIB,
                host_node: Some(h),
            }
        })
        .collect())
}

/// Every node's host node exists and has enough free pages for it (nodes sharing a host node
/// count together).
pub fn check_host(sys: &Path, nodes: &[NodeSpec], page: PageSize) -> Result<(), NumaError> {
    let online = online_nodes(sys);
    for n in nodes {
        let Some(h) = n.host_node else { continue };
        if !online.contains(&h) {
            return Err(NumaError::NoHostNode {
                node: n.id,
                host: h,
                online: format_cpu_list(&online.iter().map(|&x| x as usize).collect::<Vec<_>>()),
            });
        }
        if page == PageSize::Small {
            continue;
        }
        let need: u64 = nodes
            .iter()
            .filter(|m| m.host_node == Some(h))
            .map(|m| m.mem / page.bytes())
            .sum();
        let free = pool_counters(sys, page, Some(h))
            .map(|c| c.free)
            .unwrap_or(0);
        if free < need {
            return Err(NumaError::TooFewPages {
                node: n.id,
                host: h,
                free,
                need,
                page: page.name(),
            });
        }
    }
    Ok(())
}

/// The SLIT: the host's distances between the nodes' host nodes (sysfs `nodeN/distance`),
/// 10 on the diagonal, 20 where a node has no host node or the host does not say.
pub fn distances(sys: &Path, nodes: &[NodeSpec]) -> Vec<Vec<u8>> {
    let row = |h: u32| -> Vec<u8> {
        std::fs::read_to_string(sys.join(format!("devices/system/node/node{h}/distance")))
            .ok()
            .map(|t| {
                t.split_whitespace()
                    .filter_map(|x| x.parse::<u8>().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    nodes
        .iter()
        .map(|a| {
            let r = a.host_node.map(row).unwrap_or_default();
            nodes
                .iter()
                .map(|b| {
                    if a.id == b.id {
                        return LOCAL_DISTANCE;
                    }
                    match (a.host_node, b.host_node) {
                        (Some(ha), Some(hb)) if ha == hb => LOCAL_DISTANCE,
                        (Some(_), Some(hb)) => r
                            .get(hb as usize)
                            .copied()
                            .filter(|d| *d > LOCAL_DISTANCE)
                            .unwrap_or(REMOTE_DISTANCE),
                        _ => REMOTE_DISTANCE,
                    }
                })
                .collect()
        })
        .collect()
}

/// The host CPU for each vCPU: the CPUs of its node's host node that this process may use,
/// taken in turn. `None` for a vCPU whose node has no host node or no such usable CPU (it
/// stays wherever the process runs: a VMM confined by taskset keeps its confinement).
pub fn vcpu_pins(
    sys: &Path,
    nodes: &[NodeSpec],
    vcpus: u32,
    allowed: &[usize],
) -> Vec<Option<usize>> {
    let mut pins = vec![None; vcpus as usize];
    for n in nodes {
        let Some(h) = n.host_node else { continue };
        let cpus: Vec<usize> = super::workers::node_cpus(sys, h)
            .into_iter()
            .filter(|c| allowed.contains(c))
            .collect();
        if cpus.is_empty() {
            continue;
        }
        for (k, &v) in n.cpus.iter().enumerate() {
            if let Some(p) = pins.get_mut(v as usize) {
                *p = Some(cpus[k % cpus.len()]);
            }
        }
    }
    pins
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32, cpus: std::ops::Range<u32>, gib: u64, host: Option<u32>) -> NodeSpec {
        NodeSpec {
            id,
            cpus: cpus.collect(),
            mem: gib * GIB,
            host_node: host,
        }
    }

    /// A sysfs tree with `free[i]` free 1G pages and `cpus[i]` on host node i.
    fn fake_sys(free: &[u64], cpus: &[&str], dist: &[&str]) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        let root = d.path();
        let online = if free.len() == 1 {
            "0".to_string()
        } else {
            format!("0-{}", free.len() - 1)
        };
        std::fs::create_dir_all(root.join("devices/system/node")).unwrap();
        std::fs::write(root.join("devices/system/node/online"), online).unwrap();
        std::fs::create_dir_all(root.join("kernel/mm/hugepages/hugepages-1048576kB")).unwrap();
        for (i, f) in free.iter().enumerate() {
            let n = root.join(format!("devices/system/node/node{i}"));
            let h = n.join("hugepages/hugepages-1048576kB");
            std::fs::create_dir_all(&h).unwrap();
            std::fs::write(h.join("nr_hugepages"), f.to_string()).unwrap();
            std::fs::write(h.join("free_hugepages"), f.to_string()).unwrap();
            std::fs::write(n.join("cpulist"), cpus[i]).unwrap();
            std::fs::write(n.join("distance"), dist[i]).unwrap();
        }
        d
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let p = std::env::temp_dir().join(format!(
                    "hpmmap-numa-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn parses_node_specs_and_auto() {
        assert_eq!(parse_arg("auto"), Ok(NumaArg::Auto));
        assert_eq!(
            parse_arg("node=1,cpus=8-15,mem=9G,host-node=1"),
            Ok(NumaArg::Node(node(1, 8..16, 9, Some(1))))
        );
        let NumaArg::Node(n) = parse_arg("node=0,cpus=0-1:4,mem=2G").unwrap() else {
            panic!()
        };
        assert_eq!((n.cpus, n.host_node), (vec![0, 1, 4], None));
        for bad in [
            "node=0,cpus=0-1",
            "node=x,cpus=0,mem=1G",
            "node=0,cpus=a,mem=1G",
            "node=0,cpus=0,mem=1Q",
            "node=0,cpus=0,mem=1G,color=red",
            "node",
        ] {
            assert!(parse_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_each_problem() {
        let two = [node(1, 8..16, 9, Some(1)), node(0, 0..8, 9, Some(0))];
        let v = validate(&two, 16, 18 * GIB).unwrap();
        assert_eq!((v[0].id, v[1].id), (0, 1), "sorted by id");
        assert_eq!(
            validate(
                &[node(0, 0..8, 9, None), node(1, 7..16, 9, None)],
                16,
                18 * GIB
            ),
            Err(NumaError::CpuTwice {
                node: 1,
                cpu: 7,
                other: 0
            })
        );
        let e = validate(
            &[node(0, 0..6, 9, None), node(1, 8..16, 9, None)],
            16,
            18 * GIB,
        )
        .unwrap_err();
        assert_eq!(e, NumaError::CpusMissing("6-7".into()));
        assert!(e.to_string().contains("vCPUs 6-7 are in no node"));
        assert!(matches!(
            validate(&[node(0, 0..17, 18, None)], 16, 18 * GIB),
            Err(NumaError::CpuOutOfRange { cpu: 16, .. })
        ));
        assert!(matches!(
            validate(
                &[node(0, 0..8, 9, None), node(1, 8..16, 8, None)],
                16,
                18 * GIB
            ),
            Err(NumaError::SizesDontAddUp { .. })
        ));
        let mut half = node(0, 0..1, 1, None);
        half.mem = GIB + GIB / 2;
        assert_eq!(
            validate(&[half], 1, GIB + GIB / 2),
            Err(NumaError::NotGiB(0, "1536M".into()))
        );
        assert_eq!(
            validate(
                &[node(0, 0..1, 1, None), node(2, 1..2, 1, None)],
                2,
                2 * GIB
            ),
            Err(NumaError::NodeGap(2, 1))
        );
        assert_eq!(
            validate(
                &[node(0, 0..1, 1, None), node(0, 1..2, 1, None)],
                2,
                2 * GIB
            ),
            Err(NumaError::DuplicateNode(0))
        );
    }

    #[test]
    fn auto_spreads_over_host_nodes_with_free_pages() {
        let sys = fake_sys(
            &[3, 2, 0],
            &["0-1", "2-3", "4"],
            &["10 21 31", "21 10 21", "31 21 10"],
        );
        let n = auto(sys.path(), 5, 5 * GIB, PageSize::Huge1G).unwrap();
        assert_eq!(n.len(), 2, "node 2 has no free pages");
        assert_eq!((n[0].mem, n[1].mem), (3 * GIB, 2 * GIB));
        assert_eq!(
            (n[0].cpus.clone(), n[1].cpus.clone()),
            (vec![0, 1, 2], vec![3, 4])
        );
        assert_eq!((n[0].host_node, n[1].host_node), (Some(0), Some(1)));
        check_host(sys.path(), &n, PageSize::Huge1G).unwrap();
        assert_eq!(distances(sys.path(), &n), vec![vec![10, 21], vec![21, 10]]);
        let pins = vcpu_pins(sys.path(), &n, 5, &[0, 1, 2, 3]);
        assert_eq!(pins, vec![Some(0), Some(1), Some(0), Some(2), Some(3)]);
        // Confined to CPU 3: node 0's vCPUs stay unpinned.
        let pins = vcpu_pins(sys.path(), &n, 5, &[3]);
        assert_eq!(pins, vec![None, None, None, Some(3), Some(3)]);
        assert!(matches!(
            auto(sys.path(), 1, 5 * GIB, PageSize::Huge1G),
            Err(NumaError::AutoTooFewCpus { .. })
        ));
        assert!(matches!(
            auto(sys.path(), 4, GIB, PageSize::Huge1G),
            Err(NumaError::AutoTooSmall { .. })
        ));
        // 4 KiB pages: every online node, free 1G pages or not.
        let all = auto(sys.path(), 3, 3 * GIB, PageSize::Small).unwrap();
        assert_eq!(all.len(), 3);
        let none = fake_sys(&[0], &["0"], &["10"]);
        assert!(matches!(
            auto(none.path(), 4, GIB, PageSize::Huge1G),
            Err(NumaError::AutoNoPages(_))
        ));
    }

    #[test]
    fn host_checks() {
        let sys = fake_sys(&[3, 2], &["0", "1"], &["10 21", "21 10"]);
        let e = check_host(
            sys.path(),
            &[node(0, 0..1, 2, Some(0)), node(1, 1..2, 3, Some(1))],
            PageSize::Huge1G,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--numa node=1: host node 1 has 2 free 1G pages, the node needs 3"
        );
        assert!(matches!(
            check_host(sys.path(), &[node(0, 0..1, 1, Some(7))], PageSize::Huge1G),
            Err(NumaError::NoHostNode { host: 7, .. })
        ));
        // Two guest nodes on one host node count together.
        assert!(check_host(
            sys.path(),
            &[node(0, 0..1, 2, Some(0)), node(1, 1..2, 2, Some(0))],
            PageSize::Huge1G
        )
        .is_err());
        // No host node: remote distance 20.
        assert_eq!(
            distances(
                sys.path(),
                &[node(0, 0..1, 1, None), node(1, 1..2, 1, None)]
            ),
            vec![vec![10, 20], vec![20, 10]]
        );
    }
}
