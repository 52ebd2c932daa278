//! The size and CPU-list parsers of the command lines (hpmmap-vmm's --mem/--cpus/--numa
//! and hpmmap-offline's sizes, node and CPU lists): no panic, and what parses formats back
//! to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;

use hpmmap_offline::host::{parse_list, suffix_number};
use hpmmap_offline::size::{parse_bytes, parse_gib};
use hpmmap_vmm::units::{format_cpu_list, format_size, parse_cpu_list, parse_size};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = parse_size(s) {
        assert_eq!(parse_size(&format_size(n)).ok(), Some(n), "size {s:?}");
    }
    if let Ok(cpus) = parse_cpu_list(s) {
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
    if let Some(l) = parse_list(s) {
        assert!(l.iter().all(|&n| n < hpmmap_offline::host::LIST_LIMIT), "list {s:?}");
        // Formatting is linear; a list repeating 0-65535 hundreds of times would only
        // measure the allocator.
        if l.len() <= hpmmap_offline::host::LIST_LIMIT as usize {
            let _ = hpmmap_offline::hugetlb::join_nodes(&l);
        }
    }
    let _ = suffix_number(s, "node");
    let _ = suffix_number(s, "memory");
});
