//! The plan: which cells run on this host, in what order, and which VM configurations go
//! to the nested lab.

use crate::config::Config;
use crate::model::{Cell, Profile};
use crate::workloads::Workload;

/// One profile of one repetition: its cells, in the order they run.
pub type Step = (usize, Profile, Vec<Cell>);

/// What runs: the host's cells by repetition and profile, and the lab's configurations.
pub struct Plan {
    pub host: Vec<Step>,
    /// VM configurations whose cells run after the host's, in one nested-lab boot.
    pub lab_configs: Vec<Config>,
}

/// Every workload with every configuration.
pub fn cells(workloads: &[Workload], configs: &[Config]) -> Vec<Cell> {
    workloads
        .iter()
        .flat_map(|&w| {
            configs.iter().map(move |&c| Cell {
                workload: w,
                config: c,
            })
        })
        .collect()
}

/// The order of a run: for every repetition, every profile, every cell. Profiles and cells
/// are rotated by the repetition number, so slow drift of the machine (other tenants,
/// temperature, the page cache) spreads over all configurations instead of piling up on
/// whichever comes last.
pub fn schedule(reps: usize, profiles: &[Profile], cells: &[Cell]) -> Vec<Step> {
    let mut out = Vec::new();
    for rep in 0..reps {
        for i in 0..profiles.len() {
            let profile = profiles[(i + rep) % profiles.len()];
            let order = (0..cells.len())
                .map(|j| cells[(j + rep) % cells.len()])
                .collect();
            out.push((rep, profile, order));
        }
    }
    out
}

/// The plan of `configs` (what survived the host's and the VMs' preparation): with a lab,
/// the VM configurations leave the host's plan for it.
pub fn plan(
    workloads: &[Workload],
    reps: usize,
    profiles: &[Profile],
    mut configs: Vec<Config>,
    lab: bool,
) -> Plan {
    // In the lab the VM cells run after the native ones, in one L1 boot.
    let lab_configs: Vec<Config> = if lab {
        let v = configs.iter().copied().filter(|c| c.is_vm()).collect();
        configs.retain(|c| !c.is_vm());
        v
    } else {
        Vec::new()
    };
    let cells = cells(workloads, &configs);
    // No native cell (only VM cells, all in the lab): no host profile to run.
    let host = if cells.is_empty() {
        Vec::new()
    } else {
        schedule(reps, profiles, &cells)
    };
    Plan { host, lab_configs }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_interleaves_and_covers_every_cell_once_per_rep_and_profile() {
        let cells: Vec<Cell> = [Config::Thp, Config::Hugetlb, Config::Populate]
            .into_iter()
            .map(|c| Cell {
                workload: Workload::Cg,
                config: c,
            })
            .collect();
        let plan = schedule(3, &Profile::ALL, &cells);
        assert_eq!(plan.len(), 9);
        for rep in 0..3 {
            let profs: Vec<Profile> = plan.iter().filter(|p| p.0 == rep).map(|p| p.1).collect();
            let mut sorted = profs.clone();
            sorted.sort();
            assert_eq!(sorted, Profile::ALL.to_vec());
            for (_, _, order) in plan.iter().filter(|p| p.0 == rep) {
                assert_eq!(order.len(), 3);
                for c in &cells {
                    assert!(order.contains(c));
                }
            }
        }
        // Each configuration comes first in a different repetition.
        let firsts: Vec<Config> = (0..3).map(|r| plan[r * 3].2[0].config).collect();
        assert_eq!(firsts, vec![Config::Thp, Config::Hugetlb, Config::Populate]);
        assert_ne!(plan[0].1, plan[3].1);
    }

    #[test]
    fn the_lab_takes_the_vm_configurations_and_leaves_the_host_the_rest() {
        let configs = vec![Config::Thp, Config::VmThp, Config::VmHpmmap];
        let p = plan(&[Workload::Cg], 1, &[Profile::Iso], configs.clone(), true);
        assert_eq!(p.lab_configs, vec![Config::VmThp, Config::VmHpmmap]);
        assert_eq!(p.host.len(), 1);
        assert_eq!(p.host[0].2.len(), 1);
        assert_eq!(p.host[0].2[0].config, Config::Thp);
        // Without a lab the VM cells run on this host, interleaved with the native ones.
        let p = plan(&[Workload::Cg], 1, &[Profile::Iso], configs, false);
        assert!(p.lab_configs.is_empty());
        assert_eq!(p.host[0].2.len(), 3);
        // Only lab cells: no host profile runs at all.
        let p = plan(&[Workload::Cg], 2, &Profile::ALL, vec![Config::VmThp], true);
        assert!(p.host.is_empty());
    }
}
