//! What kind of KVM this host has, so every figure can name its platform and so a user learns
//! at start when a Linux guest cannot boot here.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// Software nested virtualization (kvm_pvm): guest CPL0 emulated, no stock Linux boots.
    HostKvmPvm,
    /// Hardware-style KVM inside QEMU/TCG: the nested lab.
    NestedLabTcg,
    /// kvm_intel / kvm_amd on a machine that is not itself emulated.
    Hardware,
    Unknown,
}

impl Platform {
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/"))
    }

    pub fn detect_in(root: &Path) -> Self {
        let module = |m: &str| root.join("sys/module").join(m).exists();
        if module("kvm_pvm") {
            return Platform::HostKvmPvm;
        }
        if module("kvm_intel") || module("kvm_amd") {
            let vendor = std::fs::read_to_string(root.join("sys/class/dmi/id/sys_vendor"))
                .unwrap_or_default();
            let product = std::fs::read_to_string(root.join("sys/class/dmi/id/product_name"))
                .unwrap_or_default();
            if vendor.contains("QEMU")
                || product.contains("QEMU")
                || product.contains("Standard PC")
            {
                return Platform::NestedLabTcg;
            }
            return Platform::Hardware;
        }
        Platform::Unknown
    }

    pub fn describe(self) -> &'static str {
        match self {
            Platform::HostKvmPvm => {
                "host kvm_pvm (software nested virtualization; guest CPL0 emulated)"
            }
            Platform::NestedLabTcg => {
                "nested lab (KVM with NPT inside QEMU/TCG; emulation timings)"
            }
            Platform::Hardware => "real hardware KVM",
            Platform::Unknown => "unknown KVM",
        }
    }

    /// The warning printed at start where a Linux kernel cannot boot.
    pub fn boot_warning(self) -> Option<&'static str> {
        match self {
            Platform::HostKvmPvm => Some(
                "this host's /dev/kvm is kvm_pvm (software nested virtualization): guest kernel \
                 mode is emulated and instructions such as int3 and xrstor are not, so a stock \
                 Linux kernel cannot boot here (small 64-bit payloads run). To boot a job image, \
                 use the nested lab: hpmmap-lab run -- hpmmap-vmm ...",
            ),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_from_a_recorded_tree() {
        let root = std::env::temp_dir().join(format!("hpmmap-platform-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sys/module/kvm")).unwrap();
        assert_eq!(Platform::detect_in(&root), Platform::Unknown);
        std::fs::create_dir_all(root.join("sys/module/kvm_amd")).unwrap();
        assert_eq!(Platform::detect_in(&root), Platform::Hardware);
        std::fs::create_dir_all(root.join("sys/class/dmi/id")).unwrap();
        std::fs::write(root.join("sys/class/dmi/id/sys_vendor"), "QEMU\n").unwrap();
        assert_eq!(Platform::detect_in(&root), Platform::NestedLabTcg);
        std::fs::create_dir_all(root.join("sys/module/kvm_pvm")).unwrap();
        assert_eq!(Platform::detect_in(&root), Platform::HostKvmPvm);
        assert!(Platform::HostKvmPvm
            .boot_warning()
            .unwrap()
            .contains("hpmmap-lab"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
