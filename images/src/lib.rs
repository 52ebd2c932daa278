//! hpmmap-image: bootable job images from Debian's packages (docs/architecture.md,
//! Interface 3), and the nested KVM lab (QEMU/TCG L1 with SVM+NPT, VT-d and an igb
//! SR-IOV NIC) that runs the whole stack on a real KVM.

pub mod builder;
pub mod cpio;
pub mod debs;
pub mod elf;
pub mod init;
pub mod job;
pub mod jobtree;
pub mod kernel;
pub mod kmods;
pub mod lab;
pub mod manifest;
pub mod oci;
pub mod outdir;
pub mod packages;
pub mod progress;
pub mod qemu;
pub mod rootdisk;
pub mod rootfs;
pub mod tree;
pub mod workspace;
