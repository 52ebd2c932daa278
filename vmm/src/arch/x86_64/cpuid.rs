//! CPUID for each vCPU: what KVM supports, with the topology of `--vcpus` (one package, one
//! thread per core, APIC ID = vCPU index) and the hypervisor bit set.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xB;
const LEAF_TOPOLOGY_V2: u32 = 0x1F;

const EDX_HTT: u32 = 1 << 28;
const ECX_HYPERVISOR: u32 = 1 << 31;
/// KVM emulates x2APIC whatever the host has; past 254 vCPUs the guest needs it.
const ECX_X2APIC: u32 = 1 << 21;

const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `n` cores, as CPUID's x2APIC shift fields count them.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Rewrites KVM's supported CPUID for vCPU `index` of `count`.
pub fn filter(supported: &[kvm_cpuid_entry2], index: u32, count: u32) -> Vec<kvm_cpuid_entry2> {
    let mut out: Vec<kvm_cpuid_entry2> = supported.to_vec();
    let apic_id = index;
    for e in out.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // The initial APIC ID here has 8 bits; leaf 0xB carries all 32.
                e.ebx = (e.ebx & 0x0000_FFFF) | ((apic_id & 0xFF) << 24) | (count.min(255) << 16);
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
                e.ecx |= ECX_HYPERVISOR | ECX_X2APIC;
            }
            LEAF_CACHE => {
                let cache_level = (e.eax >> 5) & 0x7;
                // Threads sharing this cache: a private L1/L2 per core, the last level shared.
                let sharing = if cache_level >= 3 { count - 1 } else { 0 };
                e.eax =
                    (e.eax & 0x3FFF) | ((count.min(64) - 1) << 26) | ((sharing.min(0xFFF)) << 14);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = id_bits(count);
                        e.ebx = count;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 0,
            eax,
            ebx,
            ecx,
            edx,
            padding: [0; 3],
        }
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    fn sample() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, 0x1F, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            entry(1, 0, 0x806F8, 0xFF_FF_08_00, 0x7FFA_3223, 0x0F8B_FBFF),
            entry(4, 0, 0x1C00_4121, 0, 0, 0),
            entry(4, 3, 0x1C00_4163, 0, 0, 0),
            entry(0xB, 0, 1, 2, 0x100, 7),
            entry(0xB, 1, 4, 16, 0x201, 7),
            entry(0xB, 2, 0, 0, 2, 7),
            entry(0x8000_0001, 0, 0, 0, 0x121, 0x2C10_0800),
        ]
    }

    #[test]
    fn leaf1_carries_apic_id_and_count() {
        let v = filter(&sample(), 3, 16);
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xFF, 16);
        assert_eq!(l1.ebx & 0xFFFF, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.edx & EDX_HTT, 0);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & ECX_X2APIC, 0);
        let big = filter(&sample(), 300, 384);
        assert_eq!(find(&big, 1, 0).ebx >> 24, 300 & 0xFF);
        assert_eq!(find(&big, 0xB, 1).edx, 300, "x2APIC ID in full");
        assert_eq!(l1.eax, 0x806F8, "signature untouched");
        let one = filter(&sample(), 0, 1);
        assert_eq!(find(&one, 1, 0).edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_describes_one_package() {
        let v = filter(&sample(), 5, 6);
        let smt = find(&v, 0xB, 0);
        let core = find(&v, 0xB, 1);
        let end = find(&v, 0xB, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 5));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (3, 6, 2, 5));
        assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
    }

    #[test]
    fn cache_leaf_counts_cores() {
        let v = filter(&sample(), 0, 4);
        let l1d = find(&v, 4, 0);
        let l3 = find(&v, 4, 3);
        assert_eq!(l1d.eax >> 26, 3);
        assert_eq!((l1d.eax >> 14) & 0xFFF, 0);
        assert_eq!((l3.eax >> 14) & 0xFFF, 3);
        assert_eq!(l3.eax & 0x3FFF, 0x4163 & 0x3FFF);
    }

    #[test]
    fn id_bit_widths() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(16), 4);
        assert_eq!(id_bits(17), 5);
    }

    #[test]
    fn other_leaves_untouched() {
        let s = sample();
        let v = filter(&s, 1, 2);
        assert_eq!(find(&v, 0, 0).ebx, s[0].ebx);
        assert_eq!(find(&v, 0x8000_0001, 0).edx, s[7].edx);
        assert_eq!(v.len(), s.len());
    }
}
