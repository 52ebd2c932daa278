//! Memory for the workloads' big arrays, backed the way the run's allocation mode says.
//!
//! Every array is its own anonymous mapping (as a large `malloc` would be), so the mode
//! applies to all the memory a rank computes on.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

/// Huge page size used by the THP and hugetlbfs modes.
pub const HUGE_2M: usize = 2 << 20;
const PAGE_4K: usize = 4096;

/// How a rank's arrays are mapped: the harness's native configurations.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AllocMode {
    /// Anonymous memory with `madvise(MADV_HUGEPAGE)`, 2 MiB aligned: Linux THP.
    Thp,
    /// `MAP_HUGETLB | MAP_HUGE_2MB` from the hugetlbfs pool, reserved at mmap time.
    Hugetlb,
    /// Anonymous 4 KiB memory prefaulted with `MAP_POPULATE`.
    Populate,
    /// Anonymous memory, demand paged, no advice.
    Plain,
}

impl AllocMode {
    pub const ALL: [AllocMode; 4] = [Self::Thp, Self::Hugetlb, Self::Populate, Self::Plain];

    pub fn name(self) -> &'static str {
        match self {
            Self::Thp => "thp",
            Self::Hugetlb => "hugetlb",
            Self::Populate => "populate",
            Self::Plain => "plain",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == s)
    }

    /// Bytes one array of `bytes` takes from its backing (hugetlb rounds to 2 MiB).
    pub fn footprint(self, bytes: usize) -> usize {
        match self {
            Self::Hugetlb => bytes.div_ceil(HUGE_2M) * HUGE_2M,
            _ => bytes.div_ceil(PAGE_4K) * PAGE_4K,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("mmap of {bytes} bytes ({mode}) failed: {err}{hint}")]
    Map {
        bytes: usize,
        mode: &'static str,
        err: std::io::Error,
        hint: &'static str,
    },
    #[error("madvise(MADV_HUGEPAGE) failed: {0} (is THP compiled in?)")]
    Advise(std::io::Error),
}

/// One anonymous mapping, unmapped on drop.
pub struct Region {
    ptr: *mut u8,
    len: usize,
}

// The mapping is owned exclusively by this value.
unsafe impl Send for Region {}

impl Region {
    pub fn new(bytes: usize, mode: AllocMode) -> Result<Region, MemError> {
        let bytes = bytes.max(1);
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let base = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let map_err = |len, hint| MemError::Map {
            bytes: len,
            mode: mode.name(),
            err: std::io::Error::last_os_error(),
            hint,
        };
        match mode {
            AllocMode::Hugetlb => {
                let len = mode.footprint(bytes);
                let flags = base | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
                let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
                if p == libc::MAP_FAILED {
                    return Err(map_err(
                        len,
                        " (not enough free 2 MiB pages in /proc/sys/vm/nr_hugepages?)",
                    ));
                }
                Ok(Region { ptr: p.cast(), len })
            }
            AllocMode::Thp => {
                // Over-map and trim so the array starts on a 2 MiB boundary: only whole,
                // aligned 2 MiB extents can be backed by a huge page.
                let len = bytes.div_ceil(HUGE_2M) * HUGE_2M;
                let raw_len = len + HUGE_2M;
                let p = unsafe { libc::mmap(std::ptr::null_mut(), raw_len, prot, base, -1, 0) };
                if p == libc::MAP_FAILED {
                    return Err(map_err(raw_len, ""));
                }
                let start = p as usize;
                let aligned = start.next_multiple_of(HUGE_2M);
                let head = aligned - start;
                let tail = raw_len - head - len;
                unsafe {
                    if head > 0 {
                        libc::munmap(p, head);
                    }
                    if tail > 0 {
                        libc::munmap((aligned + len) as *mut libc::c_void, tail);
                    }
                }
                let region = Region {
                    ptr: aligned as *mut u8,
                    len,
                };
                let rc = unsafe { libc::madvise(region.ptr.cast(), len, libc::MADV_HUGEPAGE) };
                if rc != 0 {
                    return Err(MemError::Advise(std::io::Error::last_os_error()));
                }
                Ok(region)
            }
            AllocMode::Populate | AllocMode::Plain => {
                let len = mode.footprint(bytes);
                let flags = if mode == AllocMode::Populate {
                    base | libc::MAP_POPULATE
                } else {
                    base
                };
                let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
                if p == libc::MAP_FAILED {
                    return Err(map_err(len, ""));
                }
                Ok(Region { ptr: p.cast(), len })
            }
        }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Element types whose all-zero bit pattern is a valid value (fresh anonymous memory).
pub trait Zeroable: Copy + 'static {}
impl Zeroable for f64 {}
impl Zeroable for u64 {}
impl Zeroable for u32 {}

/// A typed array in its own [`Region`].
pub struct Buf<T: Zeroable> {
    region: Region,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Zeroable> Buf<T> {
    pub fn new(len: usize, mode: AllocMode) -> Result<Self, MemError> {
        let region = Region::new(len * std::mem::size_of::<T>(), mode)?;
        Ok(Buf {
            region,
            len,
            _t: PhantomData,
        })
    }
}

impl<T: Zeroable> Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        unsafe { std::slice::from_raw_parts(self.region.as_ptr().cast(), self.len) }
    }
}

impl<T: Zeroable> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        unsafe { std::slice::from_raw_parts_mut(self.region.as_ptr().cast(), self.len) }
    }
}

/// Page faults this process has taken so far: (minor, major).
pub fn faults_now() -> (u64, u64) {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    (ru.ru_minflt as u64, ru.ru_majflt as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thp_region_is_2m_aligned_and_writable() {
        let mut b: Buf<u64> = Buf::new(3 << 18, AllocMode::Thp).unwrap();
        assert_eq!(b.region.as_ptr() as usize % HUGE_2M, 0);
        b[0] = 7;
        let n = b.len();
        b[n - 1] = 9;
        assert_eq!(b[0] + b[n - 1], 16);
    }

    #[test]
    fn plain_touch_takes_one_fault_per_page_and_populate_takes_them_at_map_time() {
        let pages = 512;
        let mut plain = Region::new(pages * PAGE_4K, AllocMode::Plain).unwrap();
        // Keep THP out of this count even where the host runs THP=always.
        unsafe { libc::madvise(plain.as_ptr().cast(), plain.len(), libc::MADV_NOHUGEPAGE) };
        let before = faults_now().0;
        for i in 0..pages {
            unsafe { plain.as_ptr().add(i * PAGE_4K).write_volatile(1) };
        }
        let plain_faults = faults_now().0 - before;
        assert!(
            plain_faults >= pages as u64,
            "{plain_faults} faults for {pages} pages"
        );
        let _ = &mut plain;

        let pop = Region::new(pages * PAGE_4K, AllocMode::Populate).unwrap();
        let before = faults_now().0;
        for i in 0..pages {
            unsafe { pop.as_ptr().add(i * PAGE_4K).write_volatile(1) };
        }
        let pop_faults = faults_now().0 - before;
        assert!(
            pop_faults < 16,
            "{pop_faults} faults touching prefaulted memory"
        );
    }

    #[test]
    fn footprint_rounds_to_the_backing_page() {
        assert_eq!(AllocMode::Hugetlb.footprint(1), HUGE_2M);
        assert_eq!(AllocMode::Plain.footprint(4097), 8192);
        assert_eq!(AllocMode::from_name("populate"), Some(AllocMode::Populate));
        assert_eq!(AllocMode::from_name("x"), None);
    }
}
