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
    #[error("an array of {len} elements of {size} bytes is larger than the address space")]
    TooLarge { len: usize, size: usize },
}

/// One anonymous mapping, unmapped on drop.
pub struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned exclusively by this value (nothing else holds its address)
// and unmapped only by its drop, so moving it to another thread moves sole ownership.
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
                // SAFETY: a fresh anonymous mapping at a kernel-chosen address (no
                // MAP_FIXED): it cannot overlap memory in use; checked below.
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
                // SAFETY: as above, a fresh anonymous mapping that overlaps nothing.
                let p = unsafe { libc::mmap(std::ptr::null_mut(), raw_len, prot, base, -1, 0) };
                if p == libc::MAP_FAILED {
                    return Err(map_err(raw_len, ""));
                }
                let start = p as usize;
                let aligned = start.next_multiple_of(HUGE_2M);
                let head = aligned - start;
                let tail = raw_len - head - len;
                // SAFETY: [p, aligned) and [aligned + len, p + raw_len) are the parts of the
                // mapping just made that lie outside the aligned array; nothing refers to
                // them, and `head` and `aligned + len` are page multiples (p and len are).
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
                // SAFETY: exactly the range `region` owns; MADV_HUGEPAGE changes only how
                // it is backed, not its contents.
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
                // SAFETY: a fresh anonymous mapping that overlaps nothing (no MAP_FIXED).
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
        // SAFETY: exactly the mapping this value owns; borrows of it (`Buf`'s slices) end
        // before the drop.
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
        let size = std::mem::size_of::<T>();
        let bytes = len
            .checked_mul(size)
            .ok_or(MemError::TooLarge { len, size })?;
        let region = Region::new(bytes, mode)?;
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
        // SAFETY: the region holds `len * size_of::<T>()` bytes, page aligned (enough for
        // any Zeroable T), readable and initialised (anonymous memory starts zeroed and
        // all-zero is a valid T); the slice borrows `self`, which owns the region.
        unsafe { std::slice::from_raw_parts(self.region.as_ptr().cast(), self.len) }
    }
}

impl<T: Zeroable> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` makes this the only borrow of the region.
        unsafe { std::slice::from_raw_parts_mut(self.region.as_ptr().cast(), self.len) }
    }
}

/// Page faults this process has taken so far: (minor, major).
pub fn faults_now() -> (u64, u64) {
    // SAFETY: rusage is plain integers and timevals, for which all-zero is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live, writable rusage for the kernel to fill.
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
        // SAFETY: exactly the range `plain` owns; the advice changes only its backing.
        unsafe { libc::madvise(plain.as_ptr().cast(), plain.len(), libc::MADV_NOHUGEPAGE) };
        let before = faults_now().0;
        for i in 0..pages {
            // SAFETY: i * 4096 < pages * 4096 = the region's length: in bounds, writable.
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
            // SAFETY: in bounds and writable as above (`pop` has the same length).
            unsafe { pop.as_ptr().add(i * PAGE_4K).write_volatile(1) };
        }
        let pop_faults = faults_now().0 - before;
        assert!(
            pop_faults < 16,
            "{pop_faults} faults touching prefaulted memory"
        );
    }

    #[test]
    fn an_array_larger_than_the_address_space_is_an_error_not_a_short_mapping() {
        let err = Buf::<u64>::new(usize::MAX / 4, AllocMode::Plain).err();
        assert!(
            matches!(err, Some(MemError::TooLarge { size: 8, .. })),
            "{err:?}"
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
