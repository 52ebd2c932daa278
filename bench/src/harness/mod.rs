//! `hpmmap-bench run`: every configuration × profile × workload, interleaved over the
//! repetitions, with the competing workloads started and stopped around each profile.
//!
//! [`run`] is its steps, each a module: prepare the host ([`host`]: CPUs, competitors, the
//! 2 MiB pool) and the VM configurations ([`vms`]), [`plan`] the cells, run the host's
//! cells ([`cells`]) and then the nested lab's ([`lab_pass`]), [`collect`] the results,
//! write them ([`crate::output`]). The steps share only [`options`] and what the one before
//! hands on; none of them imports this module.

mod cells;
mod collect;
mod host;
mod kernel_tree;
mod lab_pass;
mod options;
mod plan;
mod profiles;
mod vms;

use anyhow::Result;

pub use kernel_tree::{ensure_kernel_tree, missing_kernel_build_tools};
pub use options::{
    cache_dir, default_lab_sizes, default_sizes, host_vm_mem_gib, vm_mem_gib, workload_binary,
    Options,
};
pub use plan::schedule;

use crate::competitor;
use crate::output;
use crate::signals::install_signal_handlers;
use crate::table::Results;

/// Runs the whole plan and writes the table and plot into `opts.out`.
pub fn run(opts: &Options) -> Result<Results> {
    install_signal_handlers();
    competitor::become_subreaper();
    let start = collect::Start::now()?;
    let host = host::prepare(opts, &start.platform)?;
    let mut configs = opts.configs.clone();
    let mut notes = Vec::new();
    let _pool = host::reserve_hugetlb(opts, &mut configs, &mut notes);
    let vms = vms::prepare(
        opts,
        &start.platform,
        &start.bin,
        &host.rank_cpus,
        &mut configs,
    )?;
    let plan = plan::plan(
        &opts.workloads,
        opts.reps,
        &opts.profiles,
        configs,
        vms.lab_runner.is_some(),
    );
    let mut records = cells::CellRunner {
        opts,
        host: &host,
        host_vm: vms.host_vm.as_ref(),
        bin: &start.bin,
    }
    .run(&plan.host)?;
    let lab = match &vms.lab_runner {
        Some(l) => Some(lab_pass::run_lab(
            opts,
            l,
            &plan.lab_configs,
            &vms.shape,
            &host.logs,
            &mut records,
        )?),
        None => None,
    };
    let found = collect::Findings {
        notes,
        vm_absent: vms.absent.clone(),
        lab,
    };
    let results = collect::results(opts, start, host, found, records);
    output::write_all(&opts.out, &results)?;
    Ok(results)
}
