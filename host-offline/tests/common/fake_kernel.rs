//! SIMULATION of the kernel's reaction to sysfs writes, for recorded trees.
//!
//! In a recorded tree an attribute is a plain file: writing `3` to nr_hugepages just stores
//! `3`. The real kernel instead allocates pages (or fails to), moves free memory, refuses to
//! offline a busy block, and so on. `FakeKernel` sits behind `host::SysWriter` and applies
//! those effects to the tree after each write, following the kernel's documented behaviour
//! (mm/hugetlb.c set_max_huge_pages, drivers/base/memory.c state_store, drivers/dax/bus.c).
//! It is a model, not the kernel: the figures it produces are the test's premises.
//!
//! The model per node: `free_ranges` is how many free, aligned 1 GiB ranges the buddy
//! allocator has (how many pool grows succeed); compaction adds `compact_gain`; cycling every
//! block of a 1 GiB group offline and back into a kernel zone adds one range. Blocks in
//! `busy` refuse to go offline with EBUSY; blocks in `no_kernel_zone` refuse online_kernel;
//! blocks in `hang` never go offline (a pinned page: the kernel retries until the caller's
//! time limit). Where pages land: the n-th page a pool grow allocates goes into the GiB range
//! `place_pages[n]` (when listed); offlining a block of a range that holds a free pool page
//! dissolves it, as offline_pages does, and `/proc/kpageflags` (when `page_flags` is on)
//! shows KPF_HUGE across a range that holds one.

use hpmmap_offline::host::SysWriter;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const GIB_KB: u64 = 1 << 20;
const HP: &str = "hugepages/hugepages-1048576kB";

#[derive(Default)]
pub struct Model {
    pub free_ranges: BTreeMap<u32, u64>,
    pub compact_gain: BTreeMap<u32, u64>,
    pub busy: BTreeSet<u64>,
    pub no_kernel_zone: BTreeSet<u64>,
    pub hang: BTreeSet<u64>,
    /// GiB ranges for the pages pool grows allocate, in order.
    pub place_pages: VecDeque<u64>,
    /// GiB ranges holding a free 1 GiB pool page, with its node.
    pub pool_pages_at: BTreeMap<u64, u32>,
    /// Keep proc/kpageflags in step with `pool_pages_at` (off: the file does not exist).
    pub page_flags: bool,
    /// A signal that arrives while write number n runs: the flag is set to SIGTERM and a
    /// block offline in progress returns EINTR.
    pub signal_at: Option<(usize, &'static AtomicI32)>,
    /// Blocks offlined since the start, with their zone before.
    offlined: BTreeMap<u64, String>,
    /// Blocks that went offline and came back into a kernel zone.
    cycled: BTreeSet<u64>,
    credited: BTreeSet<u64>,
    /// Every write: (path relative to the tree, value).
    pub writes: Vec<(String, String)>,
    /// Panic right after applying write number n (1-based): a crash mid-operation.
    pub crash_at: Option<usize>,
    /// Panic right after applying the first write whose path ends with this suffix.
    pub crash_suffix: Option<String>,
    /// Fail write number n with this errno, without applying it.
    pub fail_at: Option<(usize, i32)>,
    /// Fail every write whose path ends with this suffix.
    pub fail_suffix: Option<(String, i32)>,
    /// Requests the real kernel would have honoured by taking pages from under a user.
    pub violations: Vec<String>,
    pub compactions: u64,
}

#[derive(Clone)]
pub struct FakeKernel {
    root: PathBuf,
    pub model: Arc<Mutex<Model>>,
}

impl FakeKernel {
    pub fn new(root: &Path) -> Self {
        FakeKernel {
            root: fs::canonicalize(root).unwrap(),
            model: Arc::new(Mutex::new(Model::default())),
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Model) -> R) -> R {
        f(&mut self.model.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn writer(&self) -> Box<dyn SysWriter> {
        Box::new(self.clone())
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root.join(rel))
            .unwrap_or_default()
            .trim_end()
            .to_string()
    }

    fn read_u64(&self, rel: &str) -> u64 {
        self.read(rel).trim().parse().unwrap_or(0)
    }

    fn put(&self, rel: &str, v: impl std::fmt::Display) {
        fs::write(self.root.join(rel), format!("{v}\n")).unwrap();
    }

    fn add_u64(&self, rel: &str, delta: i64) {
        let v = self.read_u64(rel) as i64 + delta;
        assert!(v >= 0, "{rel} would go negative");
        self.put(rel, v);
    }

    fn meminfo_free_kb(&self, node: u32) -> u64 {
        let rel = format!("sys/devices/system/node/node{node}/meminfo");
        self.read(&rel)
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some("MemFree:"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn add_memfree_kb(&self, node: u32, delta: i64) {
        let rel = format!("sys/devices/system/node/node{node}/meminfo");
        let text = self.read(&rel);
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                if l.split_whitespace().nth(2) == Some("MemFree:") {
                    // keep the kernel's column layout: only the number changes
                    let v = self.meminfo_free_kb(node) as i64 + delta;
                    let head = &l[..l.find("MemFree:").unwrap() + "MemFree:".len()];
                    let width = l.len() - head.len() - " kB".len();
                    format!("{head}{v:>width$} kB")
                } else {
                    l.to_string()
                }
            })
            .collect();
        fs::write(self.root.join(&rel), out.join("\n") + "\n").unwrap();
    }

    fn block_node(&self, id: u64) -> u32 {
        let dir = self
            .root
            .join(format!("sys/devices/system/memory/memory{id}"));
        for e in fs::read_dir(dir).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(x) = n.strip_prefix("node").and_then(|x| x.parse().ok()) {
                return x;
            }
        }
        panic!("memory{id} has no node link")
    }

    fn block_size(&self) -> u64 {
        u64::from_str_radix(&self.read("sys/devices/system/memory/block_size_bytes"), 16).unwrap()
    }

    fn apply(&self, m: &mut Model, rel: &str, value: &str) -> io::Result<()> {
        let v = value.trim();
        let parts: Vec<&str> = rel.split('/').collect();
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        // sys/devices/system/node/nodeN/hugepages/hugepages-1048576kB/nr_hugepages
        if rel.ends_with(&format!("{HP}/nr_hugepages")) && parts.len() == 8 {
            let node: u32 = parts[4].trim_start_matches("node").parse().unwrap();
            let target: u64 = v.parse().map_err(|_| einval())?;
            return self.resize(m, node, target);
        }
        if parts.len() == 6 && parts[5] == "compact" && parts[3] == "node" {
            let node: u32 = parts[4].trim_start_matches("node").parse().unwrap();
            m.compactions += 1;
            let gain = m.compact_gain.remove(&node).unwrap_or(0);
            *m.free_ranges.entry(node).or_default() += gain;
            return Ok(());
        }
        if rel == "proc/sys/vm/compact_memory" {
            m.compactions += 1;
            for (n, g) in std::mem::take(&mut m.compact_gain) {
                *m.free_ranges.entry(n).or_default() += g;
            }
            return Ok(());
        }
        if parts.len() == 6 && parts[3] == "memory" && parts[5] == "state" {
            let id: u64 = parts[4].trim_start_matches("memory").parse().unwrap();
            return self.block_state(m, id, v);
        }
        if rel.starts_with("sys/bus/dax/drivers/") {
            let attr = parts[parts.len() - 1];
            // new_id attaches for id-matched drivers (kmem); device_dax matches everything
            if attr == "bind" || attr == "unbind" || (attr == "new_id" && parts[4] != "device_dax")
            {
                return self.dax_bind(m, parts[4], v, attr != "unbind");
            }
        }
        if let Some(dev) = parts
            .iter()
            .rev()
            .nth(1)
            .filter(|d| d.starts_with("dax") && d.contains('.'))
        {
            let dir = self.root.join(rel).parent().unwrap().to_path_buf();
            return self.dax_attr(dev, &dir, parts[parts.len() - 1], v);
        }
        fs::write(self.root.join(rel), value)
    }

    fn resize(&self, m: &mut Model, node: u32, target: u64) -> io::Result<()> {
        let base = format!("sys/devices/system/node/node{node}/{HP}");
        let g = format!("sys/kernel/mm/{HP}");
        let nr = self.read_u64(&format!("{base}/nr_hugepages"));
        let free = self.read_u64(&format!("{base}/free_hugepages"));
        if target > nr {
            let mem_pages = self.meminfo_free_kb(node) / GIB_KB;
            let ranges = m.free_ranges.entry(node).or_default();
            let n = (target - nr).min(*ranges).min(mem_pages);
            *ranges -= n;
            for _ in 0..n {
                if let Some(gib) = m.place_pages.pop_front() {
                    m.pool_pages_at.insert(gib, node);
                    self.set_page_flags(m, gib, true);
                }
            }
            self.add_u64(&format!("{base}/nr_hugepages"), n as i64);
            self.add_u64(&format!("{base}/free_hugepages"), n as i64);
            self.add_u64(&format!("{g}/nr_hugepages"), n as i64);
            self.add_u64(&format!("{g}/free_hugepages"), n as i64);
            self.add_memfree_kb(node, -((n * GIB_KB) as i64));
        } else if target < nr {
            let want = nr - target;
            if want > free {
                // The kernel would turn in-use pages into surplus and free them when their
                // users unmap: memory pulled from under a running user. Recorded as a
                // violation; the tests assert there are none.
                m.violations.push(format!(
                    "node {node}: shrink {nr} -> {target} with only {free} free"
                ));
            }
            let k = want.min(free);
            *m.free_ranges.entry(node).or_default() += k;
            self.add_u64(&format!("{base}/nr_hugepages"), -(k as i64));
            self.add_u64(&format!("{base}/free_hugepages"), -(k as i64));
            self.add_u64(&format!("{g}/nr_hugepages"), -(k as i64));
            self.add_u64(&format!("{g}/free_hugepages"), -(k as i64));
            self.add_memfree_kb(node, (k * GIB_KB) as i64);
        }
        Ok(())
    }

    /// offline_pages dissolving a free 1 GiB pool page in the range going offline: the
    /// pool shrinks by one and the memory is the buddy allocator's again.
    fn dissolve(&self, m: &mut Model, node: u32, gib: u64) {
        let base = format!("sys/devices/system/node/node{node}/{HP}");
        let g = format!("sys/kernel/mm/{HP}");
        for f in [
            format!("{base}/nr_hugepages"),
            format!("{base}/free_hugepages"),
            format!("{g}/nr_hugepages"),
            format!("{g}/free_hugepages"),
        ] {
            self.add_u64(&f, -1);
        }
        self.add_memfree_kb(node, GIB_KB as i64);
        self.set_page_flags(m, gib, false);
    }

    /// KPF_HUGE on one frame in every 2 MiB of the GiB range (4 KiB frames), or cleared.
    fn set_page_flags(&self, m: &Model, gib: u64, huge: bool) {
        if !m.page_flags {
            return;
        }
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("proc/kpageflags"))
            .unwrap();
        let word = if huge { 1u64 << 17 } else { 0 };
        for k in 0..512u64 {
            let pfn = (gib << 18) + k * 512;
            f.write_all_at(&word.to_ne_bytes(), pfn * 8).unwrap();
        }
    }

    fn block_state(&self, m: &mut Model, id: u64, cmd: &str) -> io::Result<()> {
        let dir = format!("sys/devices/system/memory/memory{id}");
        let state = self.read(&format!("{dir}/state"));
        let zone = self.read(&format!("{dir}/valid_zones"));
        let node = self.block_node(id);
        let block_kb = (self.block_size() >> 10) as i64;
        let err = |e| Err(io::Error::from_raw_os_error(e));
        match cmd {
            "offline" => {
                if state != "online" {
                    return err(libc::EINVAL);
                }
                if m.busy.contains(&id) || zone == "none" {
                    return err(libc::EBUSY);
                }
                m.offlined.insert(id, zone.clone());
                m.cycled.remove(&id);
                let gib = id * self.block_size() / (1 << 30);
                if let Some(n) = m.pool_pages_at.remove(&gib) {
                    self.dissolve(m, n, gib);
                }
                self.put(&format!("{dir}/state"), "offline");
                self.put(&format!("{dir}/online"), "0");
                let choices = if zone == "Movable" {
                    "Movable Normal".to_string()
                } else {
                    format!("{zone} Movable")
                };
                self.put(&format!("{dir}/valid_zones"), choices);
                self.add_memfree_kb(node, -block_kb);
                Ok(())
            }
            "online" | "online_kernel" | "online_movable" => {
                if state != "offline" {
                    return err(libc::EINVAL);
                }
                if cmd == "online_kernel" && m.no_kernel_zone.contains(&id) {
                    return err(libc::EINVAL);
                }
                let before = m
                    .offlined
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| "Normal".into());
                let new_zone = match cmd {
                    "online_movable" => "Movable".to_string(),
                    "online_kernel" if before == "Movable" => "Normal".to_string(),
                    _ => before,
                };
                self.put(&format!("{dir}/state"), "online");
                self.put(&format!("{dir}/online"), "1");
                self.put(&format!("{dir}/valid_zones"), &new_zone);
                self.add_memfree_kb(node, block_kb);
                if m.offlined.contains_key(&id) && new_zone != "Movable" {
                    m.cycled.insert(id);
                }
                // A whole GiB group cycled into a kernel zone is one more free GiB range.
                let per = ((1u64 << 30) / self.block_size()).max(1);
                let group = id / per;
                let all = (group * per..group * per + per).all(|b| m.cycled.contains(&b));
                if all && m.credited.insert(group) {
                    *m.free_ranges.entry(node).or_default() += 1;
                }
                Ok(())
            }
            _ => err(libc::EINVAL),
        }
    }

    fn dax_dir(&self, dev: &str) -> PathBuf {
        fs::canonicalize(self.root.join("sys/bus/dax/devices").join(dev)).unwrap()
    }

    fn dax_bind(&self, m: &mut Model, driver: &str, dev: &str, bind: bool) -> io::Result<()> {
        let link = self.root.join("sys/bus/dax/devices").join(dev);
        if !link.exists() {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        }
        let dir = self.dax_dir(dev);
        let drv_link = dir.join("driver");
        let bound = fs::read_link(&drv_link).ok();
        if bind {
            if bound.is_some() {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            if self.read_u64(&self.rel(&dir.join("size"))) == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENXIO));
            }
            if driver == "kmem" {
                self.kmem_add(&dir);
            }
            std::os::unix::fs::symlink(
                relative(&dir, &self.root.join("sys/bus/dax/drivers").join(driver)),
                drv_link,
            )
        } else {
            match bound {
                Some(t) if t.file_name().map(|n| n == driver).unwrap_or(false) => {
                    if driver == "kmem" {
                        self.kmem_remove(m, &dir);
                    }
                    fs::remove_file(drv_link)
                }
                _ => Err(io::Error::from_raw_os_error(libc::ENODEV)),
            }
        }
    }

    fn kmem_range(&self, dir: &Path) -> std::ops::Range<u64> {
        let res = self.read(&self.rel(&dir.join("resource")));
        let start = u64::from_str_radix(res.trim_start_matches("0x"), 16).unwrap();
        let size = self.read_u64(&self.rel(&dir.join("size")));
        let bs = self.block_size();
        start / bs..(start + size) / bs
    }

    fn stash(&self) -> PathBuf {
        self.root.join(".fake-kernel-stash")
    }

    /// kmem unbind: the kernel removes the device's memory. With every block offline the
    /// blocks disappear from sysfs; with one still online, remove_memory fails and the
    /// memory stays, unusable, until reboot (a leak the tests must never cause).
    fn kmem_remove(&self, m: &mut Model, dir: &Path) {
        let mem = self.root.join("sys/devices/system/memory");
        let range = self.kmem_range(dir);
        if range
            .clone()
            .any(|b| self.read(&format!("sys/devices/system/memory/memory{b}/state")) == "online")
        {
            m.violations
                .push(format!("kmem unbound with online blocks in {range:?}"));
            return;
        }
        fs::create_dir_all(self.stash()).unwrap();
        for b in range {
            let name = format!("memory{b}");
            let node = self.block_node(b);
            fs::rename(mem.join(&name), self.stash().join(&name)).unwrap();
            let _ = fs::remove_file(
                self.root
                    .join(format!("sys/devices/system/node/node{node}/{name}")),
            );
        }
    }

    /// kmem bind: the memory comes back as offline blocks (auto_online_blocks = offline, as
    /// recorded in the lab).
    fn kmem_add(&self, dir: &Path) {
        let mem = self.root.join("sys/devices/system/memory");
        for b in self.kmem_range(dir) {
            let name = format!("memory{b}");
            if !self.stash().join(&name).exists() {
                continue;
            }
            fs::rename(self.stash().join(&name), mem.join(&name)).unwrap();
            let node = self.block_node(b);
            std::os::unix::fs::symlink(
                format!("../../memory/{name}"),
                self.root
                    .join(format!("sys/devices/system/node/node{node}/{name}")),
            )
            .unwrap();
            let d = format!("sys/devices/system/memory/{name}");
            self.put(&format!("{d}/state"), "offline");
            self.put(&format!("{d}/online"), "0");
            self.put(&format!("{d}/valid_zones"), "Normal Movable");
        }
    }

    fn dax_attr(&self, _dev: &str, dir: &Path, attr: &str, v: &str) -> io::Result<()> {
        let region = dir.parent().unwrap().join("dax_region");
        let dynamic = region.join("available_size").exists();
        let bound = dir.join("driver").exists();
        let rel = |p: &Path| self.rel(p);
        let errno = |e| Err(io::Error::from_raw_os_error(e));
        let n: u64 = match v.parse() {
            Ok(n) => n,
            Err(_) => return errno(libc::EINVAL),
        };
        if !dynamic {
            return errno(libc::EACCES); // 0444 on static regions
        }
        if bound {
            return errno(libc::EBUSY);
        }
        let size = self.read_u64(&rel(&dir.join("size")));
        let align = self.read_u64(&rel(&dir.join("align")));
        match attr {
            "align" => {
                if ![4096, 2 << 20, 1 << 30].contains(&n) || !size.is_multiple_of(n) {
                    return errno(libc::EINVAL);
                }
                self.put(&rel(&dir.join("align")), n);
            }
            "size" => {
                if !n.is_multiple_of(align.max(2 << 20)) {
                    return errno(libc::EINVAL);
                }
                let avail_rel = rel(&region.join("available_size"));
                let avail = self.read_u64(&avail_rel);
                if n > size && n - size > avail {
                    return errno(libc::ENOSPC);
                }
                self.put(&avail_rel, avail + size - n);
                self.put(&rel(&dir.join("size")), n);
            }
            _ => return errno(libc::EINVAL),
        }
        Ok(())
    }
}

impl SysWriter for FakeKernel {
    fn write_within(&self, path: &Path, value: &str, limit: Duration) -> io::Result<()> {
        let rel = self.rel(path);
        let block = rel
            .strip_prefix("sys/devices/system/memory/memory")
            .and_then(|r| r.strip_suffix("/state"))
            .and_then(|id| id.parse::<u64>().ok());
        if value.trim() == "offline" {
            let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
            if block.is_some_and(|b| m.hang.contains(&b)) {
                m.writes.push((rel, value.to_string()));
                return Err(hpmmap_offline::deadline::timed_out(limit));
            }
        }
        self.write(path, value)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        let rel = self.rel(path);
        let (result, crash) = {
            let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
            m.writes.push((rel.clone(), value.to_string()));
            let n = m.writes.len();
            let mut injected = None;
            if let Some((at, flag)) = m.signal_at {
                if at == n {
                    flag.store(libc::SIGTERM, Ordering::SeqCst);
                    // offline_pages checks for a pending signal and backs off
                    if value.trim() == "offline" {
                        injected = Some(libc::EINTR);
                    }
                }
            }
            let injected = injected.or(match (&m.fail_at, &m.fail_suffix) {
                (Some((at, e)), _) if *at == n => Some(*e),
                (_, Some((suffix, e))) if rel.ends_with(suffix.as_str()) => Some(*e),
                _ => None,
            });
            let result = match injected {
                Some(e) => Err(io::Error::from_raw_os_error(e)),
                None => {
                    if !path.exists() {
                        Err(io::Error::from_raw_os_error(libc::ENOENT))
                    } else {
                        self.apply(&mut m, &rel, value)
                    }
                }
            };
            let crash = m.crash_at == Some(n)
                || m.crash_suffix
                    .as_ref()
                    .is_some_and(|s| rel.ends_with(s.as_str()));
            (result, crash)
        };
        if crash {
            panic!("simulated crash after write {rel} = {value}");
        }
        result
    }
}

/// `to` as seen from directory `from` (sysfs links are relative).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let f: Vec<_> = from.components().collect();
    let t: Vec<_> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}
