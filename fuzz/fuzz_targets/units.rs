//! The size and CPU-list parsers of the command lines (hpmmap-vmm's --mem/--cpus/--numa
//! and hpmmap-offline's sizes, node and CPU lists): no panic, and what parses formats back
//! to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;

use hpmmap_offline::host::{parse_list, suffix_number};
use hpmmap_offline::size::{parse_bytes, parse_gib};
use hpmmap_vmm::units::{format_cpu_list, format_size, parse_cpu_list, parse_size};

/// Findings kept out of the bounded run (fuzz/findings/README.md): hpmmap-offline's
/// `parse_list` expands `0-4294967295` into 4 billion entries (out of memory), and
/// hpmmap-vmm's `parse_cpu_list` is quadratic (`0-65535` takes seconds). Inputs naming
/// more than this many entries go to neither until those are bounded.
const LIST_LIMIT: u64 = 4096;

fn list_within_limit(s: &str) -> bool {
    let mut total = 0u64;
    s.split(',').all(|p| match p.trim().split_once('-') {
        Some((a, b)) => match (a.trim().parse::<u64>(), b.trim().parse::<u64>()) {
            (Ok(a), Ok(b)) => {
                total = total.saturating_add(b.saturating_sub(a));
                total < LIST_LIMIT
            }
            _ => true,
        },
        None => true,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = parse_size(s) {
        assert_eq!(parse_size(&format_size(n)).ok(), Some(n), "size {s:?}");
    }
    let bounded = list_within_limit(s);
    if let Some(Ok(cpus)) = bounded.then(|| parse_cpu_list(s)) {
        assert!(!cpus.is_empty());
        let mut sorted = cpus.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), cpus.len(), "duplicates from {s:?}");
        let again = parse_cpu_list(&format_cpu_list(&cpus)).expect("formatted list parses");
        assert_eq!(again, sorted, "cpu list {s:?}");
    }
    let _ = parse_bytes("--size", s);
    let _ = parse_gib("--size", s);
    if bounded {
        if let Some(l) = parse_list(s) {
            let _ = hpmmap_offline::hugetlb::join_nodes(&l);
        }
    }
    let _ = suffix_number(s, "node");
    let _ = suffix_number(s, "memory");
});
