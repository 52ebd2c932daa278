//! Reading back which page size the kernel really used for a mapping (/proc/self/smaps).

/// `KernelPageSize` (bytes) of every smaps entry overlapping `[start, start+len)`, with the
/// address range of each entry.
pub fn kernel_page_sizes(smaps: &str, start: u64, len: u64) -> Vec<(u64, u64, u64)> {
    let end = start + len;
    let mut out = Vec::new();
    let mut current: Option<(u64, u64)> = None;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    current = Some((a, b));
                    continue;
                }
            }
        }
        if let Some(rest) = line.strip_prefix("KernelPageSize:") {
            if let Some((a, b)) = current {
                if a < end && b > start {
                    let kb: u64 = rest
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse()
                        .unwrap_or(0);
                    out.push((a, b, kb * 1024));
                }
            }
        }
    }
    out
}

/// The page size the kernel used for the whole range, or `None` when the range is not covered
/// or mixes page sizes.
pub fn uniform_page_size(smaps: &str, start: u64, len: u64) -> Option<u64> {
    let entries = kernel_page_sizes(smaps, start, len);
    let first = entries.first()?.2;
    let covered: u64 = entries
        .iter()
        .map(|(a, b, _)| (*b).min(start + len) - (*a).max(start))
        .sum();
    (covered == len && entries.iter().all(|e| e.2 == first)).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
7f0000000000-7f0080000000 rw-s 00000000 00:0f 1234 /memfd:hpmmap-guest-ram (deleted)
Size:            2097152 kB
KernelPageSize:  1048576 kB
MMUPageSize:     1048576 kB
Locked:          2097152 kB
7f0080000000-7f0080001000 rw-p 00000000 00:00 0
Size:                  4 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
";

    #[test]
    fn finds_the_page_size_of_a_mapping() {
        let s = kernel_page_sizes(SAMPLE, 0x7f00_0000_0000, 0x8000_0000);
        assert_eq!(s, vec![(0x7f00_0000_0000, 0x7f00_8000_0000, 1 << 30)]);
        assert_eq!(
            uniform_page_size(SAMPLE, 0x7f00_0000_0000, 0x8000_0000),
            Some(1 << 30)
        );
    }

    #[test]
    fn mixed_or_uncovered_ranges_are_not_uniform() {
        assert_eq!(
            uniform_page_size(SAMPLE, 0x7f00_0000_0000, 0x8000_1000),
            None
        );
        assert_eq!(uniform_page_size(SAMPLE, 0x1000, 0x1000), None);
    }
}
