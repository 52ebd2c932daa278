//! NUMA nodes and their 1 GiB hugetlb pools: discovery, counters, resizing, compaction.

use crate::error::{Error, Result};
use crate::host::{parse_list, suffix_number, Host};
use serde::Serialize;
use std::path::PathBuf;

pub const HUGE_1G: &str = "hugepages-1048576kB";

/// Fails with an input error when the kernel offers no 1 GiB pages at all.
pub fn check_support(host: &Host) -> Result<()> {
    let global = host.sys("kernel/mm/hugepages").join(HUGE_1G);
    if !global.join("nr_hugepages").exists() {
        return Err(Error::input(format!(
            "no 1 GiB huge page support: {} is missing (needs a CPU with pdpe1gb and a kernel \
             with CONFIG_HUGETLB_PAGE)",
            global.display()
        )));
    }
    Ok(())
}

pub fn supported(host: &Host) -> bool {
    check_support(host).is_ok()
}

fn node_dir(host: &Host, node: u32) -> PathBuf {
    host.sys("devices/system/node").join(format!("node{node}"))
}

/// All nodes the kernel lists, ascending.
pub fn nodes(host: &Host) -> Vec<u32> {
    let mut v: Vec<u32> = host
        .list(&host.sys("devices/system/node"))
        .iter()
        .filter_map(|n| suffix_number(n, "node"))
        .map(|n| n as u32)
        .collect();
    v.sort_unstable();
    v
}

/// Nodes that have memory (CPU-only nodes cannot hold a pool).
pub fn memory_nodes(host: &Host) -> Vec<u32> {
    let all = nodes(host);
    if let Ok(text) = host.read(&host.sys("devices/system/node/has_memory")) {
        if let Some(list) = parse_list(&text) {
            return all.into_iter().filter(|n| list.contains(n)).collect();
        }
    }
    all.into_iter()
        .filter(|&n| {
            node_mem(host, n)
                .map(|m| m.total_bytes > 0)
                .unwrap_or(false)
        })
        .collect()
}

pub fn check_node(host: &Host, node: u32) -> Result<()> {
    let all = nodes(host);
    if !all.contains(&node) {
        return Err(Error::input(format!(
            "--node {node}: no such NUMA node (this host has {})",
            join_nodes(&all)
        )));
    }
    if !memory_nodes(host).contains(&node) {
        return Err(Error::input(format!(
            "--node {node}: node has no memory (memory nodes: {})",
            join_nodes(&memory_nodes(host))
        )));
    }
    if !node_dir(host, node)
        .join("hugepages")
        .join(HUGE_1G)
        .join("nr_hugepages")
        .exists()
    {
        return Err(Error::input(format!(
            "--node {node}: node has no 1 GiB hugetlb pool in sysfs"
        )));
    }
    Ok(())
}

pub fn join_nodes(nodes: &[u32]) -> String {
    if nodes.is_empty() {
        return "none".into();
    }
    nodes
        .iter()
        .map(|n| format!("node {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PoolCounters {
    pub nr: u64,
    pub free: u64,
    pub surplus: u64,
}

fn pool_file(host: &Host, node: u32, name: &str) -> PathBuf {
    node_dir(host, node)
        .join("hugepages")
        .join(HUGE_1G)
        .join(name)
}

pub fn nr_path(host: &Host, node: u32) -> PathBuf {
    pool_file(host, node, "nr_hugepages")
}

pub fn node_pool(host: &Host, node: u32) -> Result<PoolCounters> {
    Ok(PoolCounters {
        nr: host.read_u64(&pool_file(host, node, "nr_hugepages"))?,
        free: host.read_u64(&pool_file(host, node, "free_hugepages"))?,
        surplus: host.read_u64(&pool_file(host, node, "surplus_hugepages"))?,
    })
}

/// Sets the node's persistent pool size; returns the size the kernel actually reached
/// (a grow stops short when no free 1 GiB range is left).
pub fn set_node_nr(host: &Host, node: u32, nr: u64) -> Result<u64> {
    let p = nr_path(host, node);
    host.write(&p, &nr.to_string())?;
    host.read_u64(&p)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GlobalCounters {
    pub nr: u64,
    pub free: u64,
    pub resv: u64,
    pub surplus: u64,
}

pub fn global_pool(host: &Host) -> Result<GlobalCounters> {
    let d = host.sys("kernel/mm/hugepages").join(HUGE_1G);
    Ok(GlobalCounters {
        nr: host.read_u64(&d.join("nr_hugepages"))?,
        free: host.read_u64(&d.join("free_hugepages"))?,
        resv: host.read_u64(&d.join("resv_hugepages"))?,
        surplus: host.read_u64(&d.join("surplus_hugepages"))?,
    })
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NodeMem {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// MemTotal / MemFree from `nodeN/meminfo` (lines like `Node 0 MemFree:  3986124 kB`).
pub fn node_mem(host: &Host, node: u32) -> Result<NodeMem> {
    let path = node_dir(host, node).join("meminfo");
    let text = host.read(&path)?;
    let field = |name: &str| -> Result<u64> {
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (_, _, key, val) = (it.next(), it.next(), it.next(), it.next());
            if key == Some(name) {
                if let Some(kb) = val.and_then(|v| v.parse::<u64>().ok()) {
                    return Ok(kb * 1024);
                }
            }
        }
        Err(Error::Parse {
            path: path.clone(),
            content: text.lines().next().unwrap_or("").to_string(),
            why: format!("no {name} line"),
        })
    };
    Ok(NodeMem {
        total_bytes: field("MemTotal:")?,
        free_bytes: field("MemFree:")?,
    })
}

/// Asks the kernel to compact one node (falls back to all nodes when the per-node trigger
/// is missing, as on kernels built without NUMA sysfs compaction).
pub fn compact(host: &Host, node: u32) -> Result<&'static str> {
    let per_node = node_dir(host, node).join("compact");
    if per_node.exists() {
        host.write(&per_node, "1")?;
        return Ok("node");
    }
    let global = host.proc("sys/vm/compact_memory");
    if global.exists() {
        host.write(&global, "1")?;
        return Ok("all nodes");
    }
    Err(Error::Write {
        path: per_node,
        value: "1".into(),
        source: std::io::Error::from_raw_os_error(libc::ENOENT),
    })
}
