//! What the ranks of one run share: a `MAP_SHARED` anonymous region set up before the
//! ranks fork, holding a process-shared barrier, reduction slots, halo planes, every
//! rank's per-iteration times and its outcome. The ranks are processes, so everything
//! they exchange lives here, the way MPI ranks on one node exchange through shared memory.

use std::sync::atomic::{AtomicU32, Ordering};

/// Latency histogram resolution: 8 sub-buckets per power of two (about 12 %).
pub const HIST_BUCKETS: usize = 320;
/// Per-rank workload-specific numbers (residuals, error counts, bandwidths...).
pub const METRICS: usize = 8;
const MSG_LEN: usize = 240;

#[repr(C)]
struct BarrierWord {
    count: AtomicU32,
    generation: AtomicU32,
    parties: u32,
    _pad: [u32; 13],
}

/// A rank's outcome, written by the rank, read by the parent after the rank exits.
#[repr(C)]
pub struct RankOut {
    /// 0 until the rank finished; 1 ok; 2 failed (see `msg`).
    pub status: u32,
    pub msg_len: u32,
    pub msg: [u8; MSG_LEN],
    pub minflt: u64,
    pub majflt: u64,
    pub setup_minflt: u64,
    pub setup_majflt: u64,
    pub metrics: [f64; METRICS],
    pub hist: [u64; HIST_BUCKETS],
}

/// Offsets of the shared region's parts (all 64-byte aligned).
struct Layout {
    reduce: usize,
    halo: usize,
    times: usize,
    outs: usize,
    total: usize,
}

impl Layout {
    fn new(ranks: usize, halo_len: usize, iters: usize) -> Layout {
        let up = |x: usize| x.next_multiple_of(64);
        let reduce = 64;
        let halo = up(reduce + 2 * ranks * 8);
        let times = up(halo + ranks * 2 * halo_len * 8);
        let outs = up(times + ranks * iters * 8);
        let total = up(outs + ranks * std::mem::size_of::<RankOut>());
        Layout {
            reduce,
            halo,
            times,
            outs,
            total,
        }
    }
}

/// The shared region of one run.
pub struct Comm {
    base: *mut u8,
    layout: Layout,
    pub ranks: usize,
    pub halo_len: usize,
    pub iters: usize,
}

impl Comm {
    /// `halo_len`: f64s per halo plane (two planes per rank); `iters`: per-rank time slots.
    pub fn new(ranks: usize, halo_len: usize, iters: usize) -> std::io::Result<Comm> {
        assert!(ranks >= 1);
        let layout = Layout::new(ranks, halo_len, iters);
        // SAFETY: a fresh anonymous mapping at an address the kernel chooses (null hint, no
        // MAP_FIXED), so no existing memory is touched; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.total,
                libc::PROT_READ | libc::PROT_WRITE,
                // Prefaulted, so the ranks' first writes here are not counted as
                // faults of their measured phase.
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let comm = Comm {
            base: p.cast(),
            layout,
            ranks,
            halo_len,
            iters,
        };
        // SAFETY: the barrier word is at offset 0 of the mapping just made, which is page
        // aligned, writable and at least 64 bytes long (`Layout`); no rank exists yet, so
        // nothing else accesses it.
        unsafe { (*comm.barrier_word()).parties = ranks as u32 };
        Ok(comm)
    }

    /// Maps every page of the region into the calling rank, writable. fork() does not
    /// copy the page tables of shared mappings, so without this a rank's first touches of
    /// each shared page would count as page faults of its measured phase.
    /// `MADV_POPULATE_WRITE` (Linux >= 5.14) maps without changing the contents; where it
    /// is missing, each page is written with its own value through a volatile access.
    pub fn prefault(&self) {
        // SAFETY: `base`/`total` is exactly the mapping this `Comm` owns (alive while
        // `self` is); MADV_POPULATE_WRITE only maps its pages and never changes contents.
        let rc = unsafe {
            libc::madvise(
                self.base.cast(),
                self.layout.total,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc != 0 {
            for off in (0..self.layout.total).step_by(4096) {
                // SAFETY: `off` < `total` and page aligned, so the 8 bytes at `base + off`
                // are inside the mapping and 8-byte aligned; every access to the region
                // is atomic or volatile, so an AtomicU64 view of them is valid.
                let w = unsafe { &*self.base.add(off).cast::<std::sync::atomic::AtomicU64>() };
                // A CAS that stores the value it found: a real write, no change.
                let v = w.load(Ordering::Relaxed);
                let _ = w.compare_exchange(v, v, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
    }

    /// Maps this process's executable code (every `r-xp` mapping) with
    /// `MADV_POPULATE_READ`: fork() does not copy page tables of file mappings either, and
    /// a rank's first run of each code page would otherwise be a fault in its measured
    /// phase. Best effort (Linux >= 5.14).
    pub fn prefault_text() {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        for line in maps.lines() {
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else {
                continue;
            };
            if perms != "r-xp" || line.ends_with("[vdso]") || line.ends_with("[vsyscall]") {
                continue;
            }
            let Some((a, b)) = range.split_once('-') else {
                continue;
            };
            let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            // SAFETY: the range is one of this process's own executable mappings as
            // /proc/self/maps lists it; MADV_POPULATE_READ only faults its pages in
            // (read-only, contents unchanged) and fails harmlessly if it went away.
            unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_POPULATE_READ) };
        }
    }

    fn barrier_word(&self) -> *mut BarrierWord {
        self.base.cast()
    }

    /// Waits until all ranks arrived. Spins briefly (ranks usually arrive together), then
    /// sleeps on a process-shared futex so a waiting rank gives its core to the others.
    pub fn barrier(&self) {
        // SAFETY: the barrier word is at offset 0 of the live mapping (aligned, in bounds);
        // all ranks access it only through its atomics, so a shared reference is valid.
        let w = unsafe { &*self.barrier_word() };
        let gen = w.generation.load(Ordering::Acquire);
        if w.count.fetch_add(1, Ordering::AcqRel) + 1 == w.parties {
            w.count.store(0, Ordering::Relaxed);
            w.generation.fetch_add(1, Ordering::Release);
            futex_wake(&w.generation);
            return;
        }
        for _ in 0..2000 {
            if w.generation.load(Ordering::Acquire) != gen {
                return;
            }
            std::hint::spin_loop();
        }
        while w.generation.load(Ordering::Acquire) == gen {
            futex_wait(&w.generation, gen);
        }
    }

    fn reduce_slots(&self) -> *mut f64 {
        // SAFETY: `Layout::new` puts the reduction slots inside the mapping (`reduce` <
        // `total`), so the offset pointer stays within the same allocation.
        unsafe { self.base.add(self.layout.reduce).cast() }
    }

    /// Sum of `v` over all ranks, identical bits on every rank (same order of addition).
    /// `phase` must advance by one per call on every rank; the slots are double buffered
    /// so one barrier per reduction suffices.
    pub fn allreduce(&self, rank: usize, phase: &mut usize, v: f64, op: Reduce) -> f64 {
        let set = (*phase % 2) * self.ranks;
        *phase += 1;
        let slots = self.reduce_slots();
        assert!(rank < self.ranks);
        // SAFETY: `set + rank` < 2 * ranks, the slot count `Layout` reserved (8-byte
        // aligned); each rank writes only its own slot of the current set.
        unsafe { slots.add(set + rank).write_volatile(v) };
        self.barrier();
        // SAFETY: slot `set` is in bounds as above; after the barrier no rank writes this
        // set until the next-but-one reduction, so the read sees the finished value.
        let mut acc = unsafe { slots.add(set).read_volatile() };
        for r in 1..self.ranks {
            // SAFETY: `set + r` < 2 * ranks, in bounds; written before the barrier above.
            let x = unsafe { slots.add(set + r).read_volatile() };
            acc = match op {
                Reduce::Sum => acc + x,
                Reduce::Max => acc.max(x),
            };
        }
        acc
    }

    /// Halo plane `which` (0: the rank's lowest plane, 1: its highest) of rank `rank`.
    /// A rank writes only its own planes and reads its neighbours' after a barrier.
    #[allow(clippy::mut_from_ref)]
    pub fn halo(&self, rank: usize, which: usize) -> &mut [f64] {
        assert!(rank < self.ranks && which < 2);
        let off = self.layout.halo + ((rank * 2 + which) * self.halo_len) * 8;
        // SAFETY: with rank < ranks and which < 2 (asserted), the `halo_len` f64s at `off`
        // lie inside the halo area `Layout` reserved, 8-byte aligned. No two live slices
        // alias: each call site copies in or out of one plane and drops the slice, a rank
        // writes only its own planes, and it reads a neighbour's only between barriers.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(off).cast(), self.halo_len) }
    }

    pub fn set_time(&self, rank: usize, iter: usize, secs: f64) {
        assert!(rank < self.ranks && iter < self.iters);
        let off = self.layout.times + (rank * self.iters + iter) * 8;
        // SAFETY: rank < ranks and iter < iters (asserted), so the slot is inside the times
        // area of the live mapping, 8-byte aligned; only this rank writes it.
        unsafe { self.base.add(off).cast::<f64>().write_volatile(secs) };
    }

    pub fn time(&self, rank: usize, iter: usize) -> f64 {
        assert!(rank < self.ranks && iter < self.iters);
        let off = self.layout.times + (rank * self.iters + iter) * 8;
        // SAFETY: in bounds and aligned as in `set_time`; the parent reads after the ranks
        // exited, so the slot is no longer written.
        unsafe { self.base.add(off).cast::<f64>().read_volatile() }
    }

    /// The slot a rank writes its outcome into (only that rank writes it).
    #[allow(clippy::mut_from_ref)]
    pub fn out(&self, rank: usize) -> &mut RankOut {
        assert!(rank < self.ranks);
        let off = self.layout.outs + rank * std::mem::size_of::<RankOut>();
        // SAFETY: rank < ranks (asserted), so the slot is inside the outs area `Layout`
        // reserved, 64-byte aligned (more than RankOut needs); the mapping starts zeroed and
        // all-zero is a valid RankOut. Only rank `rank` writes it, and the parent reads it
        // only after that rank exited, so the reference is never aliased by a writer.
        unsafe { &mut *self.base.add(off).cast::<RankOut>() }
    }
}

impl RankOut {
    pub fn set_error(&mut self, msg: &str) {
        let b = msg.as_bytes();
        let n = b.len().min(MSG_LEN);
        self.msg[..n].copy_from_slice(&b[..n]);
        self.msg_len = n as u32;
        self.status = 2;
    }

    pub fn error(&self) -> String {
        String::from_utf8_lossy(&self.msg[..self.msg_len as usize]).into_owned()
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping `new` made; references handed out by `halo` / `out`
        // borrow `self`, so none outlives this.
        unsafe { libc::munmap(self.base.cast(), self.layout.total) };
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Reduce {
    Sum,
    Max,
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // Not FUTEX_PRIVATE: the word is shared between processes.
    // SAFETY: `word` is a live, aligned u32 (borrowed for the call); FUTEX_WAIT only reads
    // it, and a null timeout is allowed (wait without limit).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE does not access memory through it.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

/// Histogram bucket of a latency in nanoseconds (log-linear, 8 steps per octave).
pub fn hist_bucket(ns: u64) -> usize {
    if ns < 8 {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros() as usize; // >= 3
    let sub = ((ns >> (e - 3)) & 7) as usize;
    (8 + (e - 3) * 8 + sub).min(HIST_BUCKETS - 1)
}

/// Lower bound in nanoseconds of a histogram bucket.
pub fn hist_bucket_floor(b: usize) -> u64 {
    if b < 8 {
        return b as u64;
    }
    let e = (b - 8) / 8 + 3;
    let sub = ((b - 8) % 8) as u64;
    (8 + sub) << (e - 3)
}

/// The value below which `q` (0..=1) of the histogram's samples lie, at bucket resolution.
pub fn hist_quantile(hist: &[u64], q: f64) -> u64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0;
    }
    let target = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (b, &c) in hist.iter().enumerate() {
        seen += c;
        if seen >= target {
            return hist_bucket_floor(b);
        }
    }
    hist_bucket_floor(hist.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_floors_bound_their_values() {
        let mut last = 0;
        for ns in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            100,
            1000,
            4095,
            4096,
            1 << 20,
            1 << 34,
        ] {
            let b = hist_bucket(ns);
            assert!(b >= last, "bucket of {ns}");
            last = b;
            let lo = hist_bucket_floor(b);
            assert!(lo <= ns, "floor {lo} > {ns}");
            assert!(ns < lo + lo / 8 + 1, "{ns} too far above floor {lo}");
        }
    }

    #[test]
    fn quantiles_of_a_known_histogram() {
        let mut h = [0u64; HIST_BUCKETS];
        h[hist_bucket(100)] = 90;
        h[hist_bucket(10_000)] = 9;
        h[hist_bucket(1_000_000)] = 1;
        assert_eq!(hist_quantile(&h, 0.5), hist_bucket_floor(hist_bucket(100)));
        assert_eq!(
            hist_quantile(&h, 0.95),
            hist_bucket_floor(hist_bucket(10_000))
        );
        assert_eq!(
            hist_quantile(&h, 1.0),
            hist_bucket_floor(hist_bucket(1_000_000))
        );
    }
}
