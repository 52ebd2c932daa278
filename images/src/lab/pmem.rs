//! L1's legacy pmem ranges (`--pmem SIZE --pmem-ranges N`): SIZE of L1's RAM kept from its
//! kernel at boot with `memmap=` in N equal ranges from 4 GiB up, each followed by 1 GiB of
//! RAM. The gap matters: the kernel merges adjacent `memmap=` ranges into one e820 entry, so
//! touching ranges would give one nvdimm region (one dax device) instead of N.

use super::PMEM_BASE;

/// RAM left between two ranges.
pub const PMEM_GAP: u64 = 1 << 30;
/// More ranges than any test needs, few enough that a typo is caught.
pub const MAX_PMEM_RANGES: u32 = 8;

/// Why `pmem` bytes do not split into `n` ranges; None when they do (or there is no pmem).
pub fn split_problem(pmem: u64, n: u32) -> Option<String> {
    if n == 0 || n > MAX_PMEM_RANGES {
        return Some(format!("must be between 1 and {MAX_PMEM_RANGES}"));
    }
    if pmem == 0 {
        return (n > 1).then(|| "needs --pmem".into());
    }
    if !pmem.is_multiple_of(u64::from(n) << 30) {
        return Some(format!(
            "--pmem {}M does not split into {n} ranges of whole GiB",
            pmem >> 20
        ));
    }
    None
}

/// (start, size) of each range in bytes; empty without pmem. Assumes `split_problem` is None.
pub fn ranges(pmem: u64, n: u32) -> Vec<(u64, u64)> {
    if pmem == 0 || n == 0 {
        return vec![];
    }
    let size = pmem / u64::from(n);
    (0..u64::from(n))
        .map(|i| (PMEM_BASE + i * (size + PMEM_GAP), size))
        .collect()
}

/// The first byte above the last range (L1's RAM must reach it); PMEM_BASE without pmem.
pub fn end(pmem: u64, n: u32) -> u64 {
    ranges(pmem, n)
        .last()
        .map_or(PMEM_BASE, |&(start, size)| start + size)
}

/// The kernel command line words that set the ranges aside, each ` memmap=SIZE!START`.
pub fn memmap_args(pmem: u64, n: u32) -> String {
    ranges(pmem, n)
        .iter()
        .map(|&(start, size)| format!(" memmap={}G!{}G", size >> 30, start >> 30))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_separated_by_a_gib_of_ram() {
        assert_eq!(memmap_args(0, 1), "");
        assert_eq!(memmap_args(3 << 30, 1), " memmap=3G!4G");
        assert_eq!(memmap_args(4 << 30, 2), " memmap=2G!4G memmap=2G!7G");
        assert_eq!(
            memmap_args(3 << 30, 3),
            " memmap=1G!4G memmap=1G!6G memmap=1G!8G"
        );
        assert_eq!(end(4 << 30, 2), 9 << 30);
        assert_eq!(end(3 << 30, 1), 7 << 30);
        assert_eq!(end(0, 1), PMEM_BASE);
    }

    #[test]
    fn sizes_that_do_not_split_are_named() {
        assert_eq!(split_problem(4 << 30, 2), None);
        assert_eq!(split_problem(0, 1), None);
        assert_eq!(split_problem(0, 2).unwrap(), "needs --pmem");
        assert!(split_problem(1 << 30, 0)
            .unwrap()
            .contains("between 1 and 8"));
        assert!(split_problem(9 << 30, 9)
            .unwrap()
            .contains("between 1 and 8"));
        assert_eq!(
            split_problem(3 << 30, 2).unwrap(),
            "--pmem 3072M does not split into 2 ranges of whole GiB"
        );
        assert!(split_problem((1 << 30) + (1 << 29), 1).is_some());
    }

    #[test]
    fn lab_config_checks_the_ranges_and_where_they_end() {
        use crate::lab::LabConfig;
        let cfg = |mem_gib: u64, pages: u32, pmem_gib: u64, n: u32| LabConfig {
            mem: mem_gib << 30,
            hugepages_1g: pages,
            pmem: pmem_gib << 30,
            pmem_ranges: n,
            ..LabConfig::default()
        };
        assert!(cfg(11, 4, 4, 2).validate().is_ok());
        assert!(cfg(7, 0, 4, 2).validate().is_ok());
        let e = cfg(6, 0, 4, 2).validate().unwrap_err();
        assert!(e.is_input());
        assert_eq!(
            e.to_string(),
            "--mem 6144M: --pmem 4G in 2 range(s) starts at 4 GiB and needs L1 RAM up to 9 GiB (--mem 7G or more)"
        );
        let e = cfg(8, 0, 3, 2).validate().unwrap_err();
        assert!(e.is_input());
        assert_eq!(
            e.to_string(),
            "--pmem-ranges 2: --pmem 3072M does not split into 2 ranges of whole GiB"
        );
        assert!(cfg(8, 0, 0, 2).validate().is_err());
        assert!(cfg(8, 0, 2, 0).validate().is_err());
    }
}
