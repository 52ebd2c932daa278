//! The platform line every figure carries: CPU, cores, memory, kernel, KVM kind and
//! whether this host is itself virtualised.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Platform {
    pub cpu: String,
    pub cores: usize,
    pub mem_gib: f64,
    pub kernel: String,
    pub kvm: KvmKind,
    /// The CPU reports the `hypervisor` flag: this host is a virtual machine.
    pub host_is_vm: bool,
    pub thp_enabled: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmKind {
    /// No /dev/kvm.
    None,
    /// kvm_pvm: software nested virtualization; guest CPL0 is emulated and no stock Linux
    /// boots (DESIGN.md).
    Pvm,
    /// kvm_intel / kvm_amd: hardware virtualization.
    Hardware(String),
    Unknown,
}

impl KvmKind {
    pub fn describe(&self) -> String {
        match self {
            Self::None => "no /dev/kvm".into(),
            Self::Pvm => "kvm_pvm (software nested virtualization, guest CPL0 emulated)".into(),
            Self::Hardware(m) => format!("{m} (hardware virtualization)"),
            Self::Unknown => "/dev/kvm present, module unknown".into(),
        }
    }

    /// Why the VM configurations cannot run on this host's KVM, or `None` where it boots
    /// Linux (they may still run in the nested lab: `vm::choose_place`).
    pub fn vm_rows_absent_because(&self) -> Option<String> {
        match self {
            Self::None => Some("no /dev/kvm on this host".into()),
            Self::Pvm => Some(
                "this host's KVM is kvm_pvm (software nested virtualization): it cannot boot a \
                 Linux guest (the 6.1 kernel's early int3 self-test and lock cmpxchg16b / xrstor \
                 stop it with KVM_EXIT_INTERNAL_ERROR), so the VM rows (guest THP, hpmmap) cannot run on it"
                    .into(),
            ),
            Self::Hardware(_) => None,
            Self::Unknown => Some("the KVM module behind /dev/kvm is unknown".into()),
        }
    }
}

impl Platform {
    pub fn detect() -> Platform {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
        let module_dirs: Vec<String> = ["kvm_pvm", "kvm_intel", "kvm_amd"]
            .iter()
            .filter(|m| std::path::Path::new(&format!("/sys/module/{m}")).exists())
            .map(|m| m.to_string())
            .collect();
        Platform {
            cpu: parse_cpu_model(&cpuinfo),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_gib: parse_mem_total_kib(&meminfo) as f64 / (1 << 20) as f64,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            kvm: kvm_kind(
                std::path::Path::new("/dev/kvm").exists(),
                &modules,
                &module_dirs,
            ),
            host_is_vm: cpuinfo
                .lines()
                .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor")),
            thp_enabled: std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{}, {} cores, {:.1} GiB, Linux {}, THP {}; KVM: {}; {}",
            self.cpu,
            self.cores,
            self.mem_gib,
            self.kernel,
            self.thp_enabled,
            self.kvm.describe(),
            if self.host_is_vm {
                "host is itself a VM (hypervisor flag): native rows run in that VM, not on bare metal"
            } else {
                "bare metal"
            }
        )
    }
}

/// A short platform tag for a workload's own summary line.
pub fn short_line() -> String {
    let p = Platform::detect();
    format!(
        "[{}, {} cores{}]",
        p.cpu,
        p.cores,
        if p.host_is_vm {
            ", virtualised host"
        } else {
            ""
        }
    )
}

pub fn parse_cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into())
}

pub fn parse_mem_total_kib(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Which KVM this is, from /proc/modules and /sys/module (built-in modules only show there).
pub fn kvm_kind(dev_kvm: bool, proc_modules: &str, sys_modules: &[String]) -> KvmKind {
    if !dev_kvm {
        return KvmKind::None;
    }
    let loaded = |m: &str| {
        proc_modules
            .lines()
            .any(|l| l.split_whitespace().next() == Some(m))
            || sys_modules.iter().any(|s| s == m)
    };
    if loaded("kvm_pvm") {
        KvmKind::Pvm
    } else if loaded("kvm_intel") {
        KvmKind::Hardware("kvm_intel".into())
    } else if loaded("kvm_amd") {
        KvmKind::Hardware("kvm_amd".into())
    } else {
        KvmKind::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_recorded_proc_files() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu vme hypervisor\n";
        assert_eq!(parse_cpu_model(cpuinfo), "Intel(R) Xeon(R) Processor");
        assert_eq!(
            parse_mem_total_kib("MemTotal:       24594236 kB\nMemFree: 1 kB\n"),
            24594236
        );
        assert_eq!(kvm_kind(false, "", &[]), KvmKind::None);
        assert_eq!(kvm_kind(true, "", &["kvm_pvm".into()]), KvmKind::Pvm);
        assert_eq!(
            kvm_kind(
                true,
                "kvm_amd 200704 0 - Live 0x0\nkvm 1 1 kvm_amd, Live 0\n",
                &[]
            ),
            KvmKind::Hardware("kvm_amd".into())
        );
        assert!(KvmKind::Pvm
            .vm_rows_absent_because()
            .unwrap()
            .contains("cannot boot"));
    }

    #[test]
    fn this_host_line_names_cpu_cores_and_kvm() {
        let p = Platform::detect();
        let line = p.line();
        assert!(p.cores >= 1 && p.mem_gib > 0.0, "{line}");
        assert!(line.contains("KVM:"), "{line}");
    }
}
