//! x86-64 specifics: boot structures, CPU state, CPUID, the MP table and ACPI.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod regs;
