//! Initial vCPU state for the two entry modes, and the MSRs every vCPU starts with.

use super::gdt::{self, CODE32_SEL, CODE64_SEL, DATA_SEL};
use super::layout::{
    BOOT_STACK_TOP, GDT_ADDR, IDT_ADDR, PML4_ADDR, PVH_START_INFO_ADDR, ZERO_PAGE_ADDR,
};
use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_sregs};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, identity paging, RSI = zero page.
    Linux64,
    /// PVH: 32-bit protected mode without paging, EBX = start_info.
    Pvh,
}

pub fn regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut r = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            r.rsp = BOOT_STACK_TOP;
            r.rbp = BOOT_STACK_TOP;
            r.rsi = ZERO_PAGE_ADDR;
        }
        EntryMode::Pvh => {
            r.rbx = PVH_START_INFO_ADDR;
        }
    }
    r
}

pub fn sregs(mode: EntryMode, mut s: kvm_sregs) -> kvm_sregs {
    let table = gdt::gdt();
    let data = gdt::segment(table[(DATA_SEL / 8) as usize], DATA_SEL);
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    s.idt.base = IDT_ADDR;
    s.idt.limit = 0;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    // A usable TSS is required by VMX for protected mode; any flat busy TSS will do.
    s.tr = kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xFFFF,
        selector: 0,
        type_: 11,
        present: 1,
        s: 0,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            s.cs = gdt::segment(table[(CODE64_SEL / 8) as usize], CODE64_SEL);
            s.cr3 = PML4_ADDR;
            s.cr4 |= X86_CR4_PAE;
            s.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            s.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            s.cs = gdt::segment(table[(CODE32_SEL / 8) as usize], CODE32_SEL);
            s.cr0 = X86_CR0_PE | X86_CR0_ET;
            s.cr4 = 0;
            s.efer = 0;
        }
    }
    s
}

mod msr_index {
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_MISC_ENABLE: u32 = 0x1A0;
    pub const MTRR_DEF_TYPE: u32 = 0x2FF;
    pub const STAR: u32 = 0xC000_0081;
    pub const LSTAR: u32 = 0xC000_0082;
    pub const CSTAR: u32 = 0xC000_0083;
    pub const SYSCALL_MASK: u32 = 0xC000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xC000_0102;
}

/// Boot MSRs: syscall state cleared, fast strings on, MTRRs enabled with write-back default
/// (otherwise Linux maps all RAM uncached).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    use msr_index::*;
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(IA32_SYSENTER_CS, 0),
        e(IA32_SYSENTER_ESP, 0),
        e(IA32_SYSENTER_EIP, 0),
        e(STAR, 0),
        e(CSTAR, 0),
        e(KERNEL_GS_BASE, 0),
        e(SYSCALL_MASK, 0),
        e(LSTAR, 0),
        e(IA32_TSC, 0),
        e(IA32_MISC_ENABLE, 1),
        e(MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_entry() {
        let s = sregs(EntryMode::Linux64, kvm_sregs::default());
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cs.selector, CODE64_SEL);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_ADDR);
        let r = regs(EntryMode::Linux64, 0x100_0000);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100_0000, ZERO_PAGE_ADDR, 2));
    }

    #[test]
    fn pvh_entry() {
        let s = sregs(EntryMode::Pvh, kvm_sregs::default());
        assert_eq!((s.cs.l, s.cs.db), (0, 1));
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.efer, 0);
        let r = regs(EntryMode::Pvh, 0x100_0200);
        assert_eq!((r.rip, r.rbx), (0x100_0200, PVH_START_INFO_ADDR));
    }

    #[test]
    fn mtrr_default_is_write_back_enabled() {
        let m = boot_msrs();
        let def = m.iter().find(|e| e.index == 0x2FF).unwrap();
        assert_eq!(def.data & 0xFF, 6);
        assert_ne!(def.data & (1 << 11), 0);
    }
}
