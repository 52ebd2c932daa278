//! Reading back which page size the kernel really used for a mapping (/proc/self/smaps), and
//! on which host nodes its pages lie (/proc/self/numa_maps).

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

/// One mapping's line of numa_maps: its page size and pages per host node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NumaMapsEntry {
    pub page_size: u64,
    pub pages_by_node: std::collections::BTreeMap<u32, u64>,
}

/// The numa_maps line of the mapping that starts at `addr`.
pub fn numa_maps_entry(numa_maps: &str, addr: u64) -> Option<NumaMapsEntry> {
    let line = numa_maps.lines().find(|l| {
        l.split_whitespace()
            .next()
            .and_then(|a| u64::from_str_radix(a, 16).ok())
            == Some(addr)
    })?;
    let mut e = NumaMapsEntry {
        page_size: 4096,
        pages_by_node: Default::default(),
    };
    for tok in line.split_whitespace() {
        let Some((k, v)) = tok.split_once('=') else {
            continue;
        };
        if let Some(kb) = k.strip_prefix("kernelpagesize_kB") {
            if kb.is_empty() {
                e.page_size = v.parse::<u64>().ok()? * 1024;
            }
        } else if let Some(n) = k.strip_prefix('N') {
            if let (Ok(n), Ok(p)) = (n.parse::<u32>(), v.parse::<u64>()) {
                e.pages_by_node.insert(n, p);
            }
        }
    }
    Some(e)
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
    fn numa_maps_pages_per_node() {
        let text = "\
7f0000000000 bind:0 file=/memfd:hpmmap-guest-ram\\040(deleted) huge dirty=9 N0=9 kernelpagesize_kB=1048576
7f0240000000 bind:1 file=/memfd:hpmmap-guest-ram\\040(deleted) huge dirty=9 N1=8 N0=1 kernelpagesize_kB=1048576
7f0480000000 default anon=1 dirty=1 N0=1 kernelpagesize_kB=4
";
        let a = numa_maps_entry(text, 0x7f02_4000_0000).unwrap();
        assert_eq!(a.page_size, 1 << 30);
        assert_eq!(a.pages_by_node, [(0, 1), (1, 8)].into_iter().collect());
        assert_eq!(
            numa_maps_entry(text, 0x7f00_0000_0000)
                .unwrap()
                .pages_by_node[&0],
            9
        );
        assert_eq!(
            numa_maps_entry(text, 0x7f04_8000_0000).unwrap().page_size,
            4096
        );
        assert_eq!(numa_maps_entry(text, 0x1000), None);
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
