//! Memory blocks (the memory-hotplug sysfs, /sys/devices/system/memory/memoryN): listing,
//! state changes, and the 1 GiB-aligned groups whose offline + re-online cycle hands the
//! buddy allocator a whole free GiB.

use crate::error::Result;
use crate::host::{suffix_number, Host};
use crate::size::GIB;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Block {
    /// N in memoryN.
    pub id: u64,
    pub node: Option<u32>,
    /// "online", "offline", or what the kernel says ("going-offline").
    pub state: String,
    /// For an online block: its zone (or "none" when it spans zones and cannot go offline);
    /// for an offline block: the zones it could be onlined to.
    pub valid_zones: Vec<String>,
    pub removable: bool,
}

impl Block {
    pub fn online(&self) -> bool {
        self.state == "online"
    }
    /// Zone of an online block.
    pub fn zone(&self) -> Option<&str> {
        if self.online() {
            self.valid_zones.first().map(|s| s.as_str())
        } else {
            None
        }
    }
}

pub fn memory_dir(host: &Host) -> PathBuf {
    host.sys("devices/system/memory")
}

pub fn block_dir(host: &Host, id: u64) -> PathBuf {
    memory_dir(host).join(format!("memory{id}"))
}

/// Block size in bytes (`block_size_bytes` is hex without 0x); None without hotplug sysfs.
pub fn block_size(host: &Host) -> Option<u64> {
    let s = host.read(&memory_dir(host).join("block_size_bytes")).ok()?;
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

pub fn read_block(host: &Host, id: u64) -> Result<Block> {
    let dir = block_dir(host, id);
    let state = host.read(&dir.join("state"))?;
    let valid_zones = host
        .read(&dir.join("valid_zones"))
        .map(|z| z.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let removable = host
        .read(&dir.join("removable"))
        .map(|r| r.trim() == "1")
        .unwrap_or(true);
    let node = host
        .list(&dir)
        .iter()
        .find_map(|n| suffix_number(n, "node"))
        .map(|n| n as u32);
    Ok(Block {
        id,
        node,
        state,
        valid_zones,
        removable,
    })
}

pub fn list_blocks(host: &Host) -> Vec<Block> {
    let mut ids: Vec<u64> = host
        .list(&memory_dir(host))
        .iter()
        .filter_map(|n| suffix_number(n, "memory"))
        .collect();
    ids.sort_unstable();
    ids.into_iter()
        .filter_map(|id| read_block(host, id).ok())
        .collect()
}

pub fn state_path(host: &Host, id: u64) -> PathBuf {
    block_dir(host, id).join("state")
}

pub fn set_state(host: &Host, id: u64, state: &str) -> Result<()> {
    host.write(&state_path(host, id), state)
}

/// Takes a block offline, giving up after the host's offline limit (the kernel then puts the
/// block back online by itself).
pub fn offline(host: &Host, id: u64) -> Result<()> {
    host.write_bounded(&state_path(host, id), "offline")
}

/// What to write to bring a block back online into `zone` (its zone before a cycle).
/// 1 GiB hugetlb pages cannot come from ZONE_MOVABLE, so a kernel zone is what a cycle wants.
pub fn online_command(zone: Option<&str>) -> &'static str {
    match zone {
        Some("Movable") => "online_movable",
        Some(_) => "online_kernel",
        None => "online",
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlockSummary {
    pub block_size_bytes: u64,
    pub online: u64,
    pub offline: u64,
    pub other: u64,
    /// Online blocks per zone ("none" = spans zones, cannot go offline).
    pub online_by_zone: BTreeMap<String, u64>,
}

pub fn summarize(blocks: &[Block], block_size: u64, node: Option<u32>) -> BlockSummary {
    let mut s = BlockSummary {
        block_size_bytes: block_size,
        ..Default::default()
    };
    for b in blocks.iter().filter(|b| node.is_none() || b.node == node) {
        match b.state.as_str() {
            "online" => {
                s.online += 1;
                *s.online_by_zone
                    .entry(b.zone().unwrap_or("?").to_string())
                    .or_default() += 1;
            }
            "offline" => s.offline += 1,
            _ => s.other += 1,
        }
    }
    s
}

/// A run of blocks covering one 1 GiB-aligned physical range (one block when blocks are
/// 1 GiB or larger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub first_gib: u64,
    pub blocks: Vec<u64>,
}

/// Why a block group cannot be cycled, or None when it can.
fn group_obstacle(group: &[&Block], per_group: u64) -> Option<String> {
    if (group.len() as u64) < per_group {
        return Some(format!(
            "has {} of its {per_group} blocks (hole in physical memory)",
            group.len()
        ));
    }
    for b in group {
        if !b.online() {
            return Some(format!("memory{} is {}", b.id, b.state));
        }
        if !b.removable {
            return Some(format!("memory{} is not removable", b.id));
        }
        if b.zone() == Some("none") {
            return Some(format!("memory{} spans zones (valid_zones none)", b.id));
        }
    }
    None
}

/// Candidate groups on `node`, highest physical address first (kernel allocations cluster
/// low, so high groups are the likeliest to go offline), plus the groups passed over and why.
pub fn candidate_groups(
    blocks: &[Block],
    node: u32,
    block_size: u64,
) -> (Vec<Group>, Vec<(u64, String)>) {
    let per_group = (GIB / block_size).max(1);
    let mut by_gib: BTreeMap<u64, Vec<&Block>> = BTreeMap::new();
    for b in blocks.iter().filter(|b| b.node == Some(node)) {
        by_gib.entry(b.id * block_size / GIB).or_default().push(b);
    }
    let mut good = Vec::new();
    let mut skipped = Vec::new();
    for (gib, group) in by_gib.into_iter().rev() {
        match group_obstacle(&group, per_group) {
            None => good.push(Group {
                first_gib: gib,
                blocks: group.iter().map(|b| b.id).collect(),
            }),
            Some(why) => skipped.push((gib, why)),
        }
    }
    (good, skipped)
}
