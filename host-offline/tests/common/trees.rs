//! Trees for the tests. `host-1node` under tests/fixtures is recorded from a real host by
//! record-sysfs.sh (see its PROVENANCE.md). The variants below are derived from that
//! recording by editing copies: a second node, a pool counter, a dax bus. Where a variant
//! adds something the recording host did not have (node 1, dax devices, a VM in /proc), the
//! function says so; the layout follows the kernel's sysfs ABI.

use super::{fixtures, Scratch};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

pub struct Tree {
    pub dir: Scratch,
}

impl Tree {
    pub fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }
    pub fn proc(&self) -> PathBuf {
        self.dir.path().join("proc")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("run/hpmmap/offline.json")
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
            .trim_end()
            .to_string()
    }
    pub fn read_u64(&self, rel: &str) -> u64 {
        self.read(rel).trim().parse().unwrap()
    }
    pub fn write(&self, rel: &str, v: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, v).unwrap();
    }
    pub fn nr(&self, node: u32) -> u64 {
        self.read_u64(&format!(
            "sys/devices/system/node/node{node}/hugepages/hugepages-1048576kB/nr_hugepages"
        ))
    }
    pub fn free(&self, node: u32) -> u64 {
        self.read_u64(&format!(
            "sys/devices/system/node/node{node}/hugepages/hugepages-1048576kB/free_hugepages"
        ))
    }
    pub fn block_state(&self, id: u64) -> String {
        self.read(&format!("sys/devices/system/memory/memory{id}/state"))
    }
    pub fn block_zone(&self, id: u64) -> String {
        self.read(&format!("sys/devices/system/memory/memory{id}/valid_zones"))
    }
    /// Every file and link under sys/ and proc/ with its content: equal snapshots mean the
    /// "host" is as it was.
    pub fn snapshot(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out.retain(|(p, _)| p.starts_with("sys/") || p.starts_with("proc/"));
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            out.push((rel, format!("-> {}", fs::read_link(&p).unwrap().display())));
        } else if ft.is_dir() {
            walk(root, &p, out);
        } else {
            out.push((rel, fs::read_to_string(&p).unwrap_or_default()));
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        // git keeps no empty directories, so recorded empty ones (an empty dax bus) carry a
        // marker that is not part of the tree.
        if e.file_name() == ".gitkeep" {
            continue;
        }
        let ft = e.file_type().unwrap();
        let dst = to.join(e.file_name());
        if ft.is_symlink() {
            symlink(fs::read_link(e.path()).unwrap(), &dst).unwrap();
        } else if ft.is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// The recorded one-node host, pool counters as recorded (0 pages of 1 GiB).
pub fn one_node(tag: &str) -> Tree {
    let dir = Scratch::new(tag);
    copy_tree(&fixtures().join("host-1node"), dir.path());
    let t = Tree { dir };
    // The recording host's node meminfo changes as its memory is used; tests start from a
    // fixed free figure so that --keep arithmetic is deterministic: 20 GiB total, 18 GiB free.
    set_meminfo(&t, 0, 20 << 20, 18 << 20);
    t
}

pub fn set_meminfo(t: &Tree, node: u32, total_kb: u64, free_kb: u64) {
    let rel = format!("sys/devices/system/node/node{node}/meminfo");
    let text = t.read(&rel);
    let mut lines = Vec::new();
    for l in text.lines() {
        let key = l.split_whitespace().nth(2).unwrap_or("");
        lines.push(match key {
            "MemTotal:" => format!("Node {node} MemTotal:       {total_kb:>9} kB"),
            "MemFree:" => format!("Node {node} MemFree:        {free_kb:>9} kB"),
            _ => l.replace("Node 0 ", &format!("Node {node} ")),
        });
    }
    t.write(&rel, &(lines.join("\n") + "\n"));
}

/// A tree recorded in the device-dax lab (host-offline/lab/devdax-lab.sh): `lab-pmem-devdax`
/// (dax0.0 bound to device_dax, 1 GiB align) or `lab-pmem-kmem` (dax0.0 in system-ram
/// mode, its blocks memory40..55 online Movable). Recorded from a real 6.1 kernel in a
/// QEMU/TCG guest; see their PROVENANCE.md.
pub fn lab(name: &str, tag: &str) -> Tree {
    let dir = Scratch::new(tag);
    copy_tree(&fixtures().join(name), dir.path());
    Tree { dir }
}

/// Two nodes, derived from the recording: node1 is a copy of node0's attributes (the
/// recording host has one node), and memory blocks 100 and up move to node1.
pub fn two_nodes(tag: &str) -> Tree {
    let t = one_node(tag);
    let n0 = t.path("sys/devices/system/node/node0");
    let n1 = t.path("sys/devices/system/node/node1");
    fs::create_dir_all(n1.join("hugepages")).unwrap();
    copy_tree(&n0.join("hugepages"), &n1.join("hugepages"));
    for f in ["compact", "cpulist", "distance"] {
        if n0.join(f).exists() {
            fs::copy(n0.join(f), n1.join(f)).unwrap();
        }
    }
    fs::copy(n0.join("meminfo"), n1.join("meminfo")).unwrap();
    set_meminfo(&t, 0, 12 << 20, 11 << 20);
    set_meminfo(&t, 1, 12 << 20, 11 << 20);
    for f in ["online", "possible", "has_memory", "has_normal_memory"] {
        t.write(&format!("sys/devices/system/node/{f}"), "0-1\n");
    }
    for name in fs::read_dir(t.path("sys/devices/system/memory")).unwrap() {
        let name = name.unwrap().file_name().to_string_lossy().into_owned();
        let Some(id) = name
            .strip_prefix("memory")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if id < 100 {
            continue;
        }
        let bdir = t.path(&format!("sys/devices/system/memory/{name}"));
        fs::remove_file(bdir.join("node0")).unwrap();
        symlink("../../node/node1", bdir.join("node1")).unwrap();
        fs::remove_file(n0.join(&name)).unwrap();
        symlink(format!("../../memory/{name}"), n1.join(&name)).unwrap();
    }
    t
}

/// A tree whose kernel has no 1 GiB pages (hugepages-1048576kB removed everywhere), as on
/// a CPU without pdpe1gb.
pub fn no_1g(tag: &str) -> Tree {
    let t = one_node(tag);
    fs::remove_dir_all(t.path("sys/kernel/mm/hugepages/hugepages-1048576kB")).unwrap();
    fs::remove_dir_all(t.path("sys/devices/system/node/node0/hugepages/hugepages-1048576kB"))
        .unwrap();
    t
}

/// Adds a dax bus to a tree. NOT recorded: the recording host has an empty /sys/bus/dax.
/// Layout and attribute set follow drivers/dax/bus.c: a dynamic (hmem, memmap=) region with
/// its seed device dax0.0 of size 0, 16 GiB available on node `node`; and a static (pmem
/// namespace) region whose device dax1.0 has a fixed 2 MiB align.
pub fn add_dax(t: &Tree, node: u32) {
    let hmem = "sys/devices/platform/hmem.0";
    t.write(
        &format!("{hmem}/dax_region/available_size"),
        &format!("{}\n", 16u64 << 30),
    );
    t.write(
        &format!("{hmem}/dax_region/size"),
        &format!("{}\n", 16u64 << 30),
    );
    t.write(&format!("{hmem}/dax_region/align"), "2097152\n");
    t.write(&format!("{hmem}/dax_region/id"), "0\n");
    t.write(&format!("{hmem}/dax_region/seed"), "dax0.0\n");
    t.write(&format!("{hmem}/dax_region/create"), "dax0.0\n");
    t.write(&format!("{hmem}/dax_region/delete"), "");
    let d0 = format!("{hmem}/dax0.0");
    t.write(&format!("{d0}/size"), "0\n");
    t.write(&format!("{d0}/align"), "2097152\n");
    t.write(&format!("{d0}/target_node"), &format!("{node}\n"));
    t.write(&format!("{d0}/numa_node"), &format!("{node}\n"));
    t.write(&format!("{d0}/resource"), "0x640000000\n");
    t.write(&format!("{d0}/modalias"), "dax:t0*\n");
    let pmem = "sys/devices/platform/e820_pmem/ndbus0/region1/dax1.0";
    t.write(
        &format!("{pmem}/dax_region/size"),
        &format!("{}\n", 4u64 << 30),
    );
    t.write(&format!("{pmem}/dax_region/align"), "2097152\n");
    t.write(&format!("{pmem}/dax_region/id"), "1\n");
    let d1 = format!("{pmem}/dax1.0");
    t.write(&format!("{d1}/size"), &format!("{}\n", 4u64 << 30));
    t.write(&format!("{d1}/align"), "2097152\n");
    t.write(&format!("{d1}/target_node"), &format!("{node}\n"));
    t.write(&format!("{d1}/resource"), "0x1040000000\n");
    let bus = t.path("sys/bus/dax");
    for drv in ["device_dax", "kmem"] {
        for f in ["bind", "unbind", "new_id", "remove_id"] {
            t.write(&format!("sys/bus/dax/drivers/{drv}/{f}"), "");
        }
    }
    fs::create_dir_all(bus.join("devices")).unwrap();
    symlink(
        "../../../devices/platform/hmem.0/dax0.0",
        bus.join("devices/dax0.0"),
    )
    .unwrap();
    symlink(
        "../../../devices/platform/e820_pmem/ndbus0/region1/dax1.0/dax1.0",
        bus.join("devices/dax1.0"),
    )
    .unwrap();
    symlink(
        bus.join("drivers/device_dax"),
        t.path(&format!("{d1}/driver")),
    )
    .unwrap();
}

/// Puts a running "hpmmap-vmm" into the tree's /proc holding `pages` 1 GiB pages on `node`
/// (and takes them out of the node's free count, as the kernel would on fault). The smaps
/// and numa_maps text is cut down from the ones recorded from a real process mapping a
/// 1 GiB hugetlb memfd on the recording host (tests/fixtures/vm-holder-proc), scaled to
/// `pages`.
pub fn add_vm(t: &Tree, pid: u32, node: u32, pages: u64) {
    let p = format!("proc/{pid}");
    t.write(&format!("{p}/comm"), "hpmmap-vmm\n");
    let kb = pages * 1_048_576;
    t.write(
        &format!("{p}/smaps"),
        &format!(
            "7f4b40000000-{:x} rw-s 00000000 00:01 2050 /memfd:hpmmap-guest-ram (deleted)\n\
             Size:           {kb:>8} kB\nKernelPageSize:  1048576 kB\nMMUPageSize:     1048576 kB\n\
             Rss:                   0 kB\nShared_Hugetlb:  {kb:>8} kB\nPrivate_Hugetlb:       0 kB\n\
             7ffd1a000000-7ffd1a021000 rw-p 00000000 00:00 0 [stack]\nSize:                132 kB\n\
             KernelPageSize:        4 kB\nPrivate_Hugetlb:       0 kB\n",
            0x7f4b40000000u64 + (pages << 30)
        ),
    );
    t.write(
        &format!("{p}/numa_maps"),
        &format!(
            "7f4b40000000 default file=/memfd:hpmmap-guest-ram\\040(deleted) huge dirty={pages} N{node}={pages} kernelpagesize_kB=1048576\n"
        ),
    );
    let free = t.free(node);
    assert!(free >= pages, "tree has {free} free pages on node {node}");
    t.write(
        &format!("sys/devices/system/node/node{node}/hugepages/hugepages-1048576kB/free_hugepages"),
        &format!("{}\n", free - pages),
    );
    let g = "sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages";
    let gf = t.read_u64(g);
    t.write(g, &format!("{}\n", gf - pages));
}

pub fn remove_vm(t: &Tree, pid: u32, node: u32, pages: u64) {
    fs::remove_dir_all(t.path(&format!("proc/{pid}"))).unwrap();
    let rel =
        format!("sys/devices/system/node/node{node}/hugepages/hugepages-1048576kB/free_hugepages");
    let free = t.read_u64(&rel);
    t.write(&rel, &format!("{}\n", free + pages));
    let g = "sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages";
    let gf = t.read_u64(g);
    t.write(g, &format!("{}\n", gf + pages));
}

/// Puts the real process recorded in tests/fixtures/vm-holder-proc (one 1 GiB page mapped on
/// node 0) into the tree's /proc as `pid`.
pub fn add_recorded_vm(t: &Tree, pid: u32) {
    let src = fixtures().join("vm-holder-proc");
    for f in ["comm", "smaps", "numa_maps"] {
        t.write(
            &format!("proc/{pid}/{f}"),
            &fs::read_to_string(src.join(f)).unwrap(),
        );
    }
}

/// Asserts two snapshots are equal, naming only the entries that differ.
pub fn assert_same(before: &[(String, String)], after: &[(String, String)]) {
    use std::collections::BTreeMap;
    let a: BTreeMap<_, _> = before.iter().cloned().collect();
    let b: BTreeMap<_, _> = after.iter().cloned().collect();
    let mut diffs = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => diffs.push(format!("gone: {k}")),
            Some(w) if w != v => diffs.push(format!("changed: {k}: {v:?} -> {w:?}")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        diffs.push(format!("new: {k}"));
    }
    assert!(diffs.is_empty(), "host tree differs:\n{}", diffs.join("\n"));
}
