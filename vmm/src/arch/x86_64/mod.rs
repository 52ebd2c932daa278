//! x86-64 specifics: boot structures, CPU state, CPUID and the MP table.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod regs;
