//! The configurations a run compares: the native memory modes on this host and the two VM
//! configurations (a guest booted by `hpmmap-vmm` from a job image, its workload on the
//! guest's THP or under hpmmap), and where a measurement was taken.

use serde::{Deserialize, Serialize};

use crate::memory::AllocMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Config {
    #[serde(rename = "thp")]
    Thp,
    #[serde(rename = "hugetlb")]
    Hugetlb,
    #[serde(rename = "populate")]
    Populate,
    #[serde(rename = "plain")]
    Plain,
    /// `hpmmap-vmm` booting a `--no-hpmmap` job image: the workload on the guest's THP.
    #[serde(rename = "vm-thp")]
    VmThp,
    /// `hpmmap-vmm` booting a job image that runs the workload under `hpmmap-run`.
    #[serde(rename = "vm-hpmmap")]
    VmHpmmap,
}

impl Config {
    pub const ALL: [Config; 6] = [
        Self::Thp,
        Self::Hugetlb,
        Self::Populate,
        Self::Plain,
        Self::VmThp,
        Self::VmHpmmap,
    ];
    pub const VM: [Config; 2] = [Self::VmThp, Self::VmHpmmap];

    pub fn name(self) -> &'static str {
        match self {
            Self::Thp => "thp",
            Self::Hugetlb => "hugetlb",
            Self::Populate => "populate",
            Self::Plain => "plain",
            Self::VmThp => "vm-thp",
            Self::VmHpmmap => "vm-hpmmap",
        }
    }

    pub fn from_name(s: &str) -> Option<Config> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    pub fn native(m: AllocMode) -> Config {
        match m {
            AllocMode::Thp => Self::Thp,
            AllocMode::Hugetlb => Self::Hugetlb,
            AllocMode::Populate => Self::Populate,
            AllocMode::Plain => Self::Plain,
        }
    }

    pub fn is_vm(self) -> bool {
        matches!(self, Self::VmThp | Self::VmHpmmap)
    }

    /// The `--mode` the workload itself runs with. In both VMs it asks for THP
    /// (`MADV_HUGEPAGE`): in `vm-thp` the guest kernel serves that with demand-faulted huge
    /// pages; in `vm-hpmmap` hpmmap serves the mapping eagerly from its pool instead, so the
    /// two VM rows differ only in who manages the guest's memory.
    pub fn workload_mode(self) -> AllocMode {
        match self {
            Self::Thp | Self::VmThp | Self::VmHpmmap => AllocMode::Thp,
            Self::Hugetlb => AllocMode::Hugetlb,
            Self::Populate => AllocMode::Populate,
            Self::Plain => AllocMode::Plain,
        }
    }

    /// What the guest's init must say it ran the job with (`job runs hpmmap|direct`): a
    /// vm-hpmmap run whose module failed to load ran without hpmmap and must not count.
    pub fn guest_runs(self) -> Option<&'static str> {
        match self {
            Self::VmThp => Some("direct"),
            Self::VmHpmmap => Some("hpmmap"),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Thp => "madvise(MADV_HUGEPAGE)",
            Self::Hugetlb => "MAP_HUGETLB 2 MiB",
            Self::Populate => "MAP_POPULATE on 4 KiB pages",
            Self::Plain => "demand-paged 4 KiB",
            Self::VmThp => "hpmmap-vmm guest on 1 GiB host pages, no hpmmap pool (`--pool 0`: the guest kernel manages all its RAM), the workload on the guest kernel's THP (MADV_HUGEPAGE, demand faulted)",
            Self::VmHpmmap => "hpmmap-vmm guest on 1 GiB host pages, the workload under hpmmap-run (memory served eagerly from the PV pool)",
        }
    }
}

/// Where a run was measured. Only `Native` and `HostVm` times are speed figures; `Lab`
/// times come from an emulated machine and only its counters (page faults, verification)
/// mean anything.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// A process on this host.
    #[default]
    Native,
    /// `hpmmap-vmm` on this host's KVM (hardware virtualization).
    HostVm,
    /// `hpmmap-vmm` as L2 inside the nested lab (QEMU/TCG L1 with a real KVM).
    Lab,
}

pub const LAB_LABEL: &str = "nested lab, QEMU/TCG emulated: behaviour only (faults), not speed";

impl Place {
    pub fn label(self) -> &'static str {
        match self {
            Self::Native => "native, this host",
            Self::HostVm => "VM on this host's KVM (hardware virtualization)",
            Self::Lab => LAB_LABEL,
        }
    }

    /// Whether its times may be compared as speed.
    pub fn speed_comparable(self) -> bool {
        self != Self::Lab
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_serde_matches_the_cli_names() {
        for c in Config::ALL {
            assert_eq!(Config::from_name(c.name()), Some(c));
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.name())
            );
        }
        for m in AllocMode::ALL {
            assert_eq!(Config::native(m).name(), m.name());
            assert_eq!(Config::native(m).workload_mode(), m);
        }
        assert!(Config::VmHpmmap.is_vm() && !Config::Thp.is_vm());
        assert_eq!(Config::from_name("vm"), None);
        assert!(!Place::Lab.speed_comparable());
        assert!(Place::Lab.label().contains("not speed"));
    }
}
