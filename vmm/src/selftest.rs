//! `hpmmap-vmm selftest --vf NAME [--mem SIZE]`: hpmmap-vf's read-only check of every VF
//! passthrough prerequisite on this host (IOMMU, group viability, vfio-pci, memlock, huge
//! pages), printed with what to fix.

use crate::config::SelftestArgs;
use hpmmap_vf::selftest::{self, IbSelftest, Limits, SelftestOptions};

/// Runs the checks and prints the report; returns the exit status (0 passed, 1 not, 2 bad
/// input).
pub fn run(args: &SelftestArgs) -> i32 {
    let sysfs = hpmmap_vf::Sysfs::host();
    println!(
        "hpmmap-vmm selftest --vf {} (guest RAM {} MiB; reads sysfs, changes nothing)",
        args.vf,
        args.mem >> 20
    );
    let ib = match hpmmap_vf::IbOptions::parse(args.vf_guid.as_deref(), args.pkey.as_deref(), None)
    {
        Ok(ib) => ib,
        Err(e) => {
            eprintln!("hpmmap-vmm selftest: {e}");
            return 2;
        }
    };
    let report = selftest::run_with(
        &sysfs,
        &SelftestOptions {
            vf: Some(args.vf.clone()),
            guest_ram: args.mem,
            limits: Limits::current(),
        },
        &IbSelftest {
            ib,
            partitions: args.partitions.clone(),
        },
    );
    print!("{report}");
    if report.passed() {
        0
    } else {
        1
    }
}
