//! Guest RAM: one memfd (hugetlb by default) per guest NUMA node, or a device-dax device,
//! mapped back to back at an address aligned to the page size (one contiguous host range, so
//! host offsets are the same whatever the nodes), each node's piece NUMA-bound before it is
//! touched, prefaulted in parallel by the CPUs of its node (`workers`), locked.

pub mod devdax;
pub mod hugepages;
pub mod layout;
pub mod numa;
pub mod reservation;
pub mod smaps;
pub mod workers;

use devdax::{DaxDevice, DevDaxError};
use hugepages::{pool_counters, reserve_advice, PageSize};
use layout::GuestLayout;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::units::{format_size, GIB};

const MADV_POPULATE_WRITE: i32 = 23;
const MPOL_BIND: i32 = 2;
/// Each thread of a PV ZERO clears at least this much.
const ZERO_SLICE: usize = 256 << 20;

/// Threads a PV ZERO may use: the CPUs available, found once while guest RAM is created.
/// ZERO runs on a vCPU thread whose seccomp filter allows no file access, and finding the
/// CPUs reads cgroup files.
fn zero_threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}
/// A prefault that is over within this time shows no progress: it would only be noise.
const PROGRESS_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("--mem {mem}: needs {needed} free {size} huge pages{node}, but only {available} are free; {advice}")]
    TooFewHugePages {
        mem: String,
        size: &'static str,
        needed: u64,
        available: u64,
        node: String,
        advice: String,
    },
    #[error("--hugepages {0}: this kernel has no {0} huge page pool (/sys/kernel/mm/hugepages/{1} is missing)")]
    NoHugePagePool(&'static str, String),
    #[error("--numa-node {0}: no such NUMA node (online: {1})")]
    NoSuchNode(u32, String),
    #[error("--mem {0}: not a multiple of the {1} page size")]
    NotPageMultiple(String, &'static str),
    #[error("--mem {0}: more than this host's {1} of memory")]
    MoreThanHost(String, String),
    #[error("guest RAM: {0}: {1}")]
    Sys(&'static str, io::Error),
    /// `--job` against hpmmap-offline's per-job reservations (`reservation::check`).
    #[error("{0}")]
    Reservation(String),
    #[error(transparent)]
    DevDax(#[from] DevDaxError),
    #[error("guest RAM: mlock of {0} failed ({1}); raise the locked-memory limit (ulimit -l) or run as root")]
    Mlock(String, io::Error),
}

impl MemoryError {
    /// Whether the user can fix this on the command line or the host (exit status 2).
    pub fn is_input(&self) -> bool {
        !matches!(self, MemoryError::Sys(..))
    }
}

/// Where guest RAM comes from (`--mem-backend`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RamBackend {
    /// A memfd of `--hugepages` pages from the host's hugetlb pool.
    #[default]
    Memfd,
    /// A device-dax character device; its alignment is the page size.
    DevDax(PathBuf),
}

impl std::fmt::Display for RamBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RamBackend::Memfd => f.write_str("memfd"),
            RamBackend::DevDax(p) => write!(f, "devdax:{}", p.display()),
        }
    }
}

impl std::str::FromStr for RamBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "memfd" => Ok(RamBackend::Memfd),
            Some(("devdax", p)) if !p.is_empty() => Ok(RamBackend::DevDax(PathBuf::from(p))),
            _ => Err(format!("'{s}' is not memfd or devdax:/dev/daxX.Y")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RamOptions {
    pub bytes: u64,
    pub backend: RamBackend,
    pub page_size: PageSize,
    pub numa_node: Option<u32>,
    /// Prefault workers; 0 = one per CPU of the memory's node that the VMM may use.
    pub workers: usize,
    /// Print prefault progress on stderr (when it takes more than a second).
    pub progress: bool,
    /// Guest NUMA nodes (`--numa`): one memfd each, in this order, bound to its host node.
    /// Empty: one memfd of `bytes` bound to `numa_node`.
    pub parts: Vec<RamPart>,
}

/// One guest node's RAM: its size and the host node it is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamPart {
    pub bytes: u64,
    pub host_node: Option<u32>,
}

impl RamOptions {
    fn parts(&self) -> Vec<RamPart> {
        if self.parts.is_empty() {
            vec![RamPart {
                bytes: self.bytes,
                host_node: self.numa_node,
            }]
        } else {
            self.parts.clone()
        }
    }
}

/// One file behind guest RAM, at `offset` of the mapping.
struct Backing {
    offset: u64,
    len: u64,
    fd: OwnedFd,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PrefaultStats {
    pub seconds: f64,
    pub gib_per_s: f64,
    pub workers: usize,
    /// Why that many workers (`workers::plan`), for the report.
    pub workers_reason: String,
}

pub struct GuestRam {
    base: *mut u8,
    len: u64,
    /// In offset order, covering [0, len) without gaps.
    backing: Vec<Backing>,
    page_size: PageSize,
    /// The device-dax device behind the mapping, if not a memfd.
    dax: Option<DaxDevice>,
}

// SAFETY: the mapping lives as long as GuestRam; concurrent access goes through KVM or through
// vm-memory's volatile accessors, as for any guest memory.
unsafe impl Send for GuestRam {}
// SAFETY: as for Send: the raw base pointer is only read, the mapping never moves, and writes
// to guest memory from several threads are the guest's own (volatile) concern.
unsafe impl Sync for GuestRam {}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// Online NUMA nodes as sysfs lists them, e.g. "0" or "0-1".
pub fn online_nodes() -> String {
    std::fs::read_to_string("/sys/devices/system/node/online")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "0".into())
}

pub fn node_exists(node: u32) -> bool {
    Path::new(&format!("/sys/devices/system/node/node{node}")).exists()
}

fn host_mem_total() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Checks everything about the request that can be checked without allocating anything.
pub fn check_request(opts: &RamOptions) -> Result<(), MemoryError> {
    checked_request(opts).map(|_| ())
}

/// `check_request`, handing back the device-dax device of a devdax request.
fn checked_request(opts: &RamOptions) -> Result<Option<DaxDevice>, MemoryError> {
    for n in opts.parts().iter().filter_map(|p| p.host_node) {
        if !node_exists(n) {
            return Err(MemoryError::NoSuchNode(n, online_nodes()));
        }
    }
    // Device memory is neither in MemTotal nor in a hugetlb pool: the device is the limit.
    if let RamBackend::DevDax(path) = &opts.backend {
        let dev = DaxDevice::inspect(Path::new("/sys"), path)?;
        dev.check(opts.bytes, opts.page_size, opts.numa_node)?;
        return Ok(Some(dev));
    }
    let page = opts.page_size;
    if !opts.bytes.is_multiple_of(page.bytes()) {
        return Err(MemoryError::NotPageMultiple(
            format_size(opts.bytes),
            page.name(),
        ));
    }
    if let Some(total) = host_mem_total() {
        if opts.bytes > total {
            return Err(MemoryError::MoreThanHost(
                format_size(opts.bytes),
                format_size(total),
            ));
        }
    }
    if page != PageSize::Small && opts.parts.len() > 1 {
        // Per node (numa::check_host has named the guest node already); here the total.
        let needed = opts.bytes / page.bytes();
        let global = pool_counters(Path::new("/sys"), page, None).ok_or_else(|| {
            MemoryError::NoHugePagePool(page.name(), page.sysfs_dir().unwrap_or_default())
        })?;
        if global.available() < needed {
            return Err(too_few(opts, needed, global.available(), global.total));
        }
    } else if page != PageSize::Small {
        let needed = opts.bytes / page.bytes();
        let global = pool_counters(Path::new("/sys"), page, None).ok_or_else(|| {
            MemoryError::NoHugePagePool(page.name(), page.sysfs_dir().unwrap_or_default())
        })?;
        let available = match opts.numa_node {
            Some(n) => pool_counters(Path::new("/sys"), page, Some(n))
                .map(|c| c.available().min(global.available()))
                .unwrap_or(0),
            None => global.available(),
        };
        if available < needed {
            let have = match opts.numa_node {
                Some(n) => pool_counters(Path::new("/sys"), page, Some(n)).map(|c| c.total),
                None => Some(global.total),
            }
            .unwrap_or(0);
            return Err(too_few(opts, needed, available, have));
        }
    }
    Ok(None)
}

fn too_few(opts: &RamOptions, needed: u64, available: u64, reserved_now: u64) -> MemoryError {
    MemoryError::TooFewHugePages {
        mem: format_size(opts.bytes),
        size: opts.page_size.name(),
        needed,
        available,
        node: opts
            .numa_node
            .map(|n| format!(" on NUMA node {n}"))
            .unwrap_or_default(),
        advice: reserve_advice(
            opts.page_size,
            reserved_now + (needed - available),
            opts.numa_node,
        ),
    }
}

impl GuestRam {
    pub fn create(opts: &RamOptions) -> Result<(GuestRam, PrefaultStats), MemoryError> {
        zero_threads();
        if let Some(dev) = checked_request(opts)? {
            return Self::create_devdax(opts, dev);
        }
        let page = opts.page_size;
        let flags = libc::MFD_CLOEXEC
            | match page {
                PageSize::Huge1G => libc::MFD_HUGETLB | libc::MFD_HUGE_1GB,
                PageSize::Huge2M => libc::MFD_HUGETLB | libc::MFD_HUGE_2MB,
                PageSize::Small => 0,
            };
        let parts = opts.parts();
        let mut files = Vec::new();
        for part in &parts {
            // SAFETY: plain syscall with a NUL-terminated name.
            let raw = unsafe { libc::memfd_create(c"hpmmap-guest-ram".as_ptr(), flags) };
            if raw < 0 {
                return Err(MemoryError::Sys("memfd_create", errno()));
            }
            // SAFETY: raw is a fresh descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: fd is valid.
            if unsafe { libc::ftruncate(fd.as_raw_fd(), part.bytes as i64) } < 0 {
                return Err(MemoryError::Sys("ftruncate", errno()));
            }
            files.push((fd, part.bytes));
        }
        let base = map_aligned(&files, page.bytes().max(2 << 20)).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOMEM) && page != PageSize::Small {
                // The hugetlb reservation at mmap failed: someone took the pages meanwhile.
                let avail = pool_counters(Path::new("/sys"), page, None)
                    .map(|c| c.available())
                    .unwrap_or(0);
                too_few(opts, opts.bytes / page.bytes(), avail, 0)
            } else {
                MemoryError::Sys("mmap", e)
            }
        })?;
        let mut offset = 0;
        let mut backing = Vec::new();
        for (fd, len) in files {
            backing.push(Backing { offset, len, fd });
            offset += len;
        }
        let ram = GuestRam {
            base,
            len: opts.bytes,
            backing,
            page_size: page,
            dax: None,
        };
        for (b, part) in ram.backing.iter().zip(&parts) {
            if let Some(node) = part.host_node {
                ram.bind_to_node(b.offset, b.len, node)?;
            }
        }
        ram.prefault_and_lock(opts)
    }

    /// Maps the first `opts.bytes` of a device-dax device. Its memory already sits on its
    /// node (checked against --numa-node), so there is nothing to bind.
    fn create_devdax(
        opts: &RamOptions,
        dev: DaxDevice,
    ) -> Result<(GuestRam, PrefaultStats), MemoryError> {
        // Exclusive while this VMM runs: a second VMM on the device exits 2 naming us.
        let file = dev.open_exclusive()?;
        let fd = OwnedFd::from(file);
        let files = [(fd, opts.bytes)];
        // device-dax refuses mappings not aligned to its alignment (EINVAL).
        let base = map_aligned(&files, dev.align.max(2 << 20))
            .map_err(|e| MemoryError::Sys("mmap of the device-dax device", e))?;
        let [(fd, _)] = files;
        let ram = GuestRam {
            base,
            len: opts.bytes,
            backing: vec![Backing {
                offset: 0,
                len: opts.bytes,
                fd,
            }],
            page_size: dev.page_size(),
            dax: Some(dev),
        };
        ram.prefault_and_lock(opts)
    }

    fn prefault_and_lock(
        self,
        opts: &RamOptions,
    ) -> Result<(GuestRam, PrefaultStats), MemoryError> {
        let stats = self.prefault(opts)?;
        // SAFETY: the range is our mapping.
        if unsafe { libc::mlock(self.base as *const libc::c_void, self.len as usize) } < 0 {
            return Err(MemoryError::Mlock(format_size(self.len), errno()));
        }
        Ok((self, stats))
    }

    /// Where the memory comes from, for the report: `memfd` or `devdax:/dev/daxX.Y`.
    pub fn backend(&self) -> RamBackend {
        match &self.dax {
            Some(d) => RamBackend::DevDax(d.path.clone()),
            None => RamBackend::Memfd,
        }
    }

    fn bind_to_node(&self, offset: u64, len: u64, node: u32) -> Result<(), MemoryError> {
        let mut mask = vec![0u64; (node as usize / 64) + 1];
        mask[node as usize / 64] |= 1 << (node % 64);
        // SAFETY: the range is inside our mapping, mask outlives the call, maxnode counts its
        // bits.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                self.base as usize + offset as usize,
                len as usize,
                MPOL_BIND,
                mask.as_ptr(),
                mask.len() * 64,
                0u32,
            )
        };
        if rc < 0 {
            return Err(MemoryError::Sys("mbind", errno()));
        }
        Ok(())
    }

    /// Faults every page in, in parallel: workers (`workers::plan`: the CPUs of the node the
    /// memory is bound to that the VMM may use) take chunks off a shared counter, so they
    /// finish together whatever the page size.
    /// Also usable again after `punch_hole`, which is how the benchmark repeats it.
    pub fn prefault(&self, opts: &RamOptions) -> Result<PrefaultStats, MemoryError> {
        let chunk = self.page_size.bytes().max(32 << 20).min(self.len);
        let chunks = self.len.div_ceil(chunk);
        let node_cpus = opts
            .numa_node
            .map(|n| (n, workers::node_cpus(Path::new("/sys"), n)));
        let plan = workers::plan(
            opts.workers,
            &crate::vcpu::allowed_cpus(),
            node_cpus.as_ref().map(|(n, c)| (*n, c.as_slice())),
            chunks,
        );
        let workers = plan.workers;
        let next = AtomicU64::new(0);
        let done = AtomicU64::new(0);
        let failed = AtomicUsize::new(0);
        let error: std::sync::Mutex<Option<io::Error>> = std::sync::Mutex::new(None);
        let show = opts.progress;
        let base = self.base as usize;
        // Device memory keeps whatever the previous job left there; hugetlb pages come
        // zeroed from the kernel. No job may see another's data.
        let clear = self.dax.is_some();
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    // Best effort: a worker left unpinned still prefaults correctly.
                    let _ = workers::restrict_current_thread(&plan.cpus);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= chunks || failed.load(Ordering::Relaxed) != 0 {
                            break;
                        }
                        let off = i * chunk;
                        let len = chunk.min(self.len - off);
                        if let Err(e) = populate(base + off as usize, len as usize) {
                            failed.store(1, Ordering::Relaxed);
                            *error.lock().unwrap() = Some(e);
                            break;
                        }
                        if clear {
                            // SAFETY: inside our mapping, just faulted in.
                            unsafe {
                                std::ptr::write_bytes(
                                    (base + off as usize) as *mut u8,
                                    0,
                                    len as usize,
                                )
                            };
                        }
                        done.fetch_add(len, Ordering::Relaxed);
                    }
                });
            }
            if show {
                s.spawn(|| {
                    use std::io::IsTerminal;
                    let total = self.len;
                    let tty = std::io::stderr().is_terminal();
                    let mut last_decile = u64::MAX;
                    while start.elapsed() < PROGRESS_AFTER {
                        if done.load(Ordering::Relaxed) >= total
                            || failed.load(Ordering::Relaxed) != 0
                        {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    eprintln!(
                        "hpmmap-vmm: prefaulting {} of guest RAM with {workers} worker(s): {}",
                        crate::units::format_size(total),
                        plan.reason
                    );
                    loop {
                        let d = done.load(Ordering::Relaxed);
                        let finished = d >= total || failed.load(Ordering::Relaxed) != 0;
                        let pct = d * 100 / total;
                        let line = format!(
                            "hpmmap-vmm: prefaulting guest RAM: {:.1} / {:.1} GiB ({pct}%)",
                            d as f64 / GIB as f64,
                            total as f64 / GIB as f64
                        );
                        // A terminal gets one updating line; a log gets a line per 10%.
                        if tty {
                            eprint!("\r{line}");
                            if finished {
                                eprintln!();
                            }
                        } else if pct / 10 != last_decile || finished {
                            last_decile = pct / 10;
                            eprintln!("{line}");
                        }
                        if finished {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(250));
                    }
                });
            }
        });
        if let Some(e) = error.into_inner().unwrap() {
            let hugetlb_short = matches!(e.raw_os_error(), Some(libc::ENOMEM) | Some(libc::EFAULT));
            if hugetlb_short && self.page_size != PageSize::Small && self.dax.is_none() {
                let avail = pool_counters(Path::new("/sys"), self.page_size, opts.numa_node)
                    .map(|c| c.free)
                    .unwrap_or(0);
                return Err(too_few(opts, self.len / self.page_size.bytes(), avail, 0));
            }
            return Err(MemoryError::Sys("prefault (MADV_POPULATE_WRITE)", e));
        }
        let seconds = start.elapsed().as_secs_f64();
        Ok(PrefaultStats {
            seconds,
            gib_per_s: self.len as f64 / GIB as f64 / seconds.max(1e-9),
            workers,
            workers_reason: plan.reason,
        })
    }

    pub fn host_address(&self) -> u64 {
        self.base as u64
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn page_size(&self) -> PageSize {
        self.page_size
    }

    /// The kernel page size really behind the whole mapping, from /proc/self/smaps; `None`
    /// when the mapping mixes page sizes.
    pub fn kernel_page_size(&self) -> io::Result<Option<u64>> {
        let s = std::fs::read_to_string("/proc/self/smaps")?;
        Ok(smaps::uniform_page_size(&s, self.base as u64, self.len))
    }

    /// Clears `[offset, offset+len)` of guest RAM in place (PV ZERO), at native speed. The
    /// range lies in one node's backing, as pool ranges do.
    pub fn zero(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_range(offset, len)?;
        if self.dax.is_none()
            && !self
                .backing
                .iter()
                .any(|b| offset >= b.offset && offset + len <= b.offset + b.len)
        {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // In place, never by punching a hole: the pages may be DMA-mapped for a VF (the
        // IOMMU would keep the old page) or pinned, and a punched hugetlb page goes back to
        // the host's global pool, where another job's prefault or `hpmmap-offline release`
        // can take it before the refault: the guest's memory must stay its own for the VM's
        // whole life. Large ranges are cleared by several threads; glibc's memset switches
        // to non-temporal stores for sizes this large, so the caches are spared.
        let base = self.base as usize + offset as usize;
        let len = len as usize;
        let threads = zero_threads().min(len.div_ceil(ZERO_SLICE)).max(1);
        let slice = len.div_ceil(threads);
        std::thread::scope(|s| {
            for t in 0..threads {
                let start = t * slice;
                let n = slice.min(len.saturating_sub(start));
                if n == 0 {
                    continue;
                }
                s.spawn(move || {
                    // SAFETY: [base+start, +n) lies inside our mapping (range checked
                    // above) and the slices of the threads do not overlap.
                    unsafe { std::ptr::write_bytes((base + start) as *mut u8, 0, n) };
                });
            }
        });
        Ok(())
    }

    /// Gives `[offset, offset+len)` back to the host; the next touch faults in zeroed pages.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.dax.is_some() {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        self.check_range(offset, len)?;
        // A range never spans two nodes' files: pool ranges are split at node boundaries.
        let b = self
            .backing
            .iter()
            .find(|b| offset >= b.offset && offset + len <= b.offset + b.len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: fd is ours; the range is inside the file.
        let rc = unsafe {
            libc::fallocate(
                b.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (offset - b.offset) as i64,
                len as i64,
            )
        };
        if rc < 0 {
            return Err(errno());
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        Ok(())
    }

    /// Each backing file's pages as /proc/self/numa_maps has them: page size and pages per
    /// host node (`None` where the line is missing).
    pub fn part_pages(&self) -> Vec<Option<smaps::NumaMapsEntry>> {
        let text = std::fs::read_to_string("/proc/self/numa_maps").unwrap_or_default();
        self.backing
            .iter()
            .map(|b| smaps::numa_maps_entry(&text, self.base as u64 + b.offset))
            .collect()
    }

    /// The start of the host mapping, for benchmarks that write it directly.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base
    }

    /// vm-memory's view of the mapping, laid out as `layout` says (not owning the mapping).
    pub fn guest_memory(&self, layout: &GuestLayout) -> Result<GuestMemoryMmap, MemoryError> {
        let mut regions = Vec::new();
        for r in layout.ram_regions() {
            // SAFETY: the region lies inside our live mapping, which outlives the VM.
            let region = unsafe {
                MmapRegion::build_raw(
                    self.base.add(r.host_offset as usize),
                    r.size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                )
            }
            .map_err(|e| {
                MemoryError::Sys("guest memory region", io::Error::other(e.to_string()))
            })?;
            let gr = GuestRegionMmap::new(region, GuestAddress(r.gpa)).ok_or_else(|| {
                MemoryError::Sys("guest memory region", io::Error::other("address overflow"))
            })?;
            regions.push(gr);
        }
        GuestMemoryMmap::from_regions(regions)
            .map_err(|e| MemoryError::Sys("guest memory", io::Error::other(e.to_string())))
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping we created; nothing uses it after this.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len as usize);
        }
    }
}

/// MADV_POPULATE_WRITE (Linux 5.14); older kernels get one write per 4 KiB instead.
fn populate(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: the range is inside a shared read-write mapping we own.
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, MADV_POPULATE_WRITE) };
    if rc == 0 {
        return Ok(());
    }
    let e = errno();
    if e.raw_os_error() != Some(libc::EINVAL) {
        return Err(e);
    }
    for off in (0..len).step_by(4096) {
        // SAFETY: inside the mapping; a volatile read-write keeps the contents.
        unsafe {
            let p = (addr + off) as *mut u8;
            p.write_volatile(p.read_volatile());
        }
    }
    Ok(())
}

/// Maps `files` (descriptor, bytes) back to back at an address aligned to `align`: reserve a
/// larger PROT_NONE area, map the files over its aligned middle, give back the slack.
fn map_aligned(files: &[(OwnedFd, u64)], align: u64) -> io::Result<*mut u8> {
    let len: u64 = files.iter().map(|(_, l)| l).sum();
    let span = (len + align) as usize;
    // SAFETY: anonymous reservation, no access.
    let reserve = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if reserve == libc::MAP_FAILED {
        return Err(errno());
    }
    let start = reserve as usize;
    let aligned = (start + align as usize - 1) & !(align as usize - 1);
    let mut at = aligned;
    for (fd, flen) in files {
        // SAFETY: MAP_FIXED inside our own reservation.
        let mapped = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                *flen as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            let e = errno();
            // SAFETY: our reservation (and the files mapped over it so far).
            unsafe { libc::munmap(reserve, span) };
            return Err(e);
        }
        at += *flen as usize;
    }
    // SAFETY: the slack on both sides is still our PROT_NONE reservation.
    unsafe {
        if aligned > start {
            libc::munmap(reserve, aligned - start);
        }
        let end = aligned + len as usize;
        if start + span > end {
            libc::munmap(end as *mut libc::c_void, start + span - end);
        }
    }
    Ok(aligned as *mut u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::MIB;
    use vm_memory::Bytes;

    /// The host frame behind a virtual address of this process (None without root, which
    /// sees frame numbers in pagemap as 0).
    fn pfn_of(addr: usize) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open("/proc/self/pagemap").ok()?;
        let mut word = [0u8; 8];
        f.read_exact_at(&mut word, (addr / 4096 * 8) as u64).ok()?;
        let e = u64::from_ne_bytes(word);
        let pfn = e & ((1 << 55) - 1);
        (e >> 63 == 1 && pfn != 0).then_some(pfn)
    }

    #[test]
    fn small_page_ram_is_aligned_prefaulted_and_zeroable() {
        let opts = RamOptions {
            bytes: 64 * MIB,
            page_size: PageSize::Small,
            backend: RamBackend::Memfd,
            numa_node: None,
            workers: 2,
            progress: false,
            parts: vec![],
        };
        let (ram, stats) = GuestRam::create(&opts).unwrap();
        assert_eq!(ram.host_address() % (2 << 20), 0);
        assert!(stats.seconds > 0.0 && stats.workers == 2);
        assert_eq!(ram.kernel_page_size().unwrap(), Some(4096));
        let layout = GuestLayout::new(64 * MIB, None).unwrap();
        let gm = ram.guest_memory(&layout).unwrap();
        gm.write_obj(0xABCDu64, GuestAddress(0x10_0000)).unwrap();
        gm.write_obj(0x1234u64, GuestAddress(0x20_0000)).unwrap();
        let frame = || pfn_of(ram.host_address() as usize + 0x10_0000);
        let before = frame();
        ram.zero(0x10_0000, 0x10_0000).unwrap();
        assert_eq!(gm.read_obj::<u64>(GuestAddress(0x10_0000)).unwrap(), 0);
        // Cleared in place: the same host page (a VF's DMA mapping stays valid).
        assert_eq!(frame(), before);
        assert_eq!(gm.read_obj::<u64>(GuestAddress(0x20_0000)).unwrap(), 0x1234);
        assert!(ram.zero(60 * MIB, 8 * MIB).is_err());
    }

    #[test]
    fn one_file_per_node_mapped_back_to_back() {
        let part = |mib: u64| RamPart {
            bytes: mib * MIB,
            host_node: None,
        };
        let opts = RamOptions {
            bytes: 96 * MIB,
            page_size: PageSize::Small,
            backend: RamBackend::Memfd,
            numa_node: None,
            workers: 2,
            progress: false,
            parts: vec![part(64), part(32)],
        };
        let (ram, _) = GuestRam::create(&opts).unwrap();
        assert_eq!(ram.backing.len(), 2);
        assert_eq!(
            (ram.backing[1].offset, ram.backing[1].len),
            (64 * MIB, 32 * MIB)
        );
        let layout = GuestLayout::with_nodes(96 * MIB, None, &[64 * MIB, 32 * MIB]).unwrap();
        let gm = ram.guest_memory(&layout).unwrap();
        // One contiguous range: writes across the seam land in both files.
        gm.write_obj(0x1111u64, GuestAddress(64 * MIB - 8)).unwrap();
        gm.write_obj(0x2222u64, GuestAddress(64 * MIB)).unwrap();
        gm.write_obj(0x3333u64, GuestAddress(80 * MIB)).unwrap();
        // Zeroing in the second file punches that file at its own offset.
        ram.zero(80 * MIB, MIB).unwrap();
        assert_eq!(gm.read_obj::<u64>(GuestAddress(80 * MIB)).unwrap(), 0);
        assert_eq!(gm.read_obj::<u64>(GuestAddress(64 * MIB)).unwrap(), 0x2222);
        assert_eq!(
            gm.read_obj::<u64>(GuestAddress(64 * MIB - 8)).unwrap(),
            0x1111
        );
        // A range across two files is refused, not half done.
        assert!(ram.zero(63 * MIB, 2 * MIB).is_err());
    }

    #[test]
    fn requests_checked_before_allocation() {
        let mut opts = RamOptions {
            bytes: 64 * MIB + 4096,
            page_size: PageSize::Huge2M,
            backend: RamBackend::Memfd,
            numa_node: None,
            workers: 1,
            progress: false,
            parts: vec![],
        };
        assert!(matches!(
            check_request(&opts),
            Err(MemoryError::NotPageMultiple(..))
        ));
        opts.page_size = PageSize::Small;
        opts.numa_node = Some(999);
        assert!(matches!(
            check_request(&opts),
            Err(MemoryError::NoSuchNode(999, _))
        ));
        opts.numa_node = None;
        opts.bytes = 1 << 50;
        assert!(matches!(
            check_request(&opts),
            Err(MemoryError::MoreThanHost(..))
        ));
    }
}
