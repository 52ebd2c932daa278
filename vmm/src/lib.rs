//! hpmmap-vmm: a KVM VMM that backs guest RAM with 1 GiB host pages, lays it out so every GiB
//! of guest-physical RAM is one host page, and announces an hpmmap pool to the guest through a
//! paravirtual device (docs/architecture.md, Interfaces 1-3).

pub mod arch;
pub mod config;
pub mod console;
pub mod devices;
pub mod exit;
pub mod image;
pub mod jail;
pub mod kvm_stats;
pub mod loader;
pub mod memory;
pub mod platform;
pub mod report;
pub mod selftest;
pub mod units;
pub mod vcpu;
pub mod vm;
