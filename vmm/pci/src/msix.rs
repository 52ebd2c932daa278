//! MSI-X: the capability as the device describes it, and the vector table and PBA as the
//! guest sees them, kept by the VMM (the device's own table stays host-owned, programmed
//! by vfio-pci). A pure state machine: guest accesses in, KVM routing changes out.

use std::ops::Range;

pub const PCI_CAP_ID_MSIX: u8 = 0x11;
const PCI_STATUS: usize = 0x06;
const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
const PCI_CAPABILITY_LIST: usize = 0x34;

pub const MSIX_ENTRY_SIZE: u64 = 16;
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_MASKED: u32 = 1;

/// Offsets of the standard capabilities, in list order, as (id, offset). Stops on a
/// loop or an offset inside the header, as a device's list may be garbage.
pub fn capabilities(config: &[u8]) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    if config.len() < 0x40 {
        return out;
    }
    let status = u16::from_le_bytes([config[PCI_STATUS], config[PCI_STATUS + 1]]);
    if status & PCI_STATUS_CAP_LIST == 0 {
        return out;
    }
    let mut off = config[PCI_CAPABILITY_LIST] & !3;
    // 48 capabilities fill the 192 bytes after the header: more means a loop.
    while off >= 0x40 && out.len() < 48 && usize::from(off) + 1 < config.len().min(256) {
        out.push((config[usize::from(off)], off));
        off = config[usize::from(off) + 1] & !3;
    }
    out
}

/// The MSI-X capability: where the table and PBA live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCap {
    /// Offset of the capability in config space.
    pub cap_offset: u8,
    /// Number of vectors (Table Size + 1).
    pub table_size: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

impl MsixCap {
    pub fn parse(config: &[u8]) -> Option<MsixCap> {
        let (_, off) = capabilities(config)
            .into_iter()
            .find(|(id, _)| *id == PCI_CAP_ID_MSIX)?;
        let o = usize::from(off);
        if o + 12 > config.len() {
            return None;
        }
        let ctrl = u16::from_le_bytes([config[o + 2], config[o + 3]]);
        let table = u32::from_le_bytes(config[o + 4..o + 8].try_into().ok()?);
        let pba = u32::from_le_bytes(config[o + 8..o + 12].try_into().ok()?);
        Some(MsixCap {
            cap_offset: off,
            table_size: (ctrl & 0x7ff) + 1,
            table_bar: (table & 7) as u8,
            table_offset: table & !7,
            pba_bar: (pba & 7) as u8,
            pba_offset: pba & !7,
        })
    }

    /// Byte range of the vector table inside its BAR.
    pub fn table_range(&self) -> Range<u64> {
        let start = u64::from(self.table_offset);
        start..start + u64::from(self.table_size) * MSIX_ENTRY_SIZE
    }

    /// Byte range of the PBA inside its BAR (one bit per vector, in whole qwords).
    pub fn pba_range(&self) -> Range<u64> {
        let start = u64::from(self.pba_offset);
        start..start + u64::from(self.table_size).div_ceil(64) * 8
    }
}

/// The parts of a BAR the VMM may map straight into the guest: all of it except the
/// pages holding the MSI-X table and PBA, which must trap so the VMM can emulate them.
pub fn mappable_ranges(
    bar: u8,
    bar_size: u64,
    msix: Option<&MsixCap>,
    page_size: u64,
) -> Vec<Range<u64>> {
    let mut holes: Vec<Range<u64>> = Vec::new();
    if let Some(c) = msix {
        for (b, r) in [(c.table_bar, c.table_range()), (c.pba_bar, c.pba_range())] {
            if b == bar && r.start < bar_size {
                let s = r.start / page_size * page_size;
                let e = r.end.div_ceil(page_size) * page_size;
                holes.push(s..e.min(bar_size.div_ceil(page_size) * page_size));
            }
        }
    }
    holes.sort_by_key(|h| h.start);
    let mut out = Vec::new();
    let mut pos = 0;
    for h in holes {
        if h.start > pos {
            out.push(pos..h.start);
        }
        pos = pos.max(h.end);
    }
    if pos < bar_size {
        out.push(pos..bar_size);
    }
    out
}

/// What a guest MSI-X vector asks the platform to do: the message KVM's GSI routing
/// entry (KVM_IRQ_ROUTING_MSI) gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// What the VMM must do after a guest access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixEvent {
    /// MSI-X was enabled (true) or disabled: set up / tear down the device's vectors
    /// (VFIO_DEVICE_SET_IRQS with one eventfd per vector).
    Enable(bool),
    /// The vector now delivers this message: set its GSI route and attach its irqfd.
    Route { vector: u16, msg: MsiMessage },
    /// The vector no longer delivers (masked, or MSI-X off): detach its irqfd and,
    /// while it stays so, report device signals with [`MsixState::signal`].
    Unroute { vector: u16 },
    /// A signal arrived while the vector was masked and it is now unmasked: inject
    /// this message once (KVM_SIGNAL_MSI).
    Inject { vector: u16, msg: MsiMessage },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl Default for Entry {
    // Vectors come out of reset masked (PCI spec, MSI-X table entry vector control).
    fn default() -> Self {
        Entry {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            ctrl: ENTRY_MASKED,
        }
    }
}

/// The guest's view of the MSI-X table, PBA and the Enable / Function Mask bits.
#[derive(Clone, Debug)]
pub struct MsixState {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_mask: bool,
}

impl MsixState {
    pub fn new(table_size: u16) -> Self {
        let n = usize::from(table_size.clamp(1, 2048));
        MsixState {
            entries: vec![Entry::default(); n],
            pending: vec![false; n],
            enabled: false,
            function_mask: false,
        }
    }

    pub fn table_size(&self) -> u16 {
        self.entries.len() as u16
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The message a vector delivers now, if it delivers at all.
    pub fn deliverable(&self, vector: u16) -> Option<MsiMessage> {
        let e = self.entries.get(usize::from(vector))?;
        if !self.enabled || self.function_mask || e.ctrl & ENTRY_MASKED != 0 {
            return None;
        }
        Some(MsiMessage {
            address: (u64::from(e.addr_hi) << 32) | u64::from(e.addr_lo),
            data: e.data,
        })
    }

    /// Every vector that delivers now, for (re)building the whole GSI routing table.
    pub fn routes(&self) -> Vec<(u16, MsiMessage)> {
        (0..self.table_size())
            .filter_map(|v| self.deliverable(v).map(|m| (v, m)))
            .collect()
    }

    fn snapshot(&self) -> Vec<Option<MsiMessage>> {
        (0..self.table_size())
            .map(|v| self.deliverable(v))
            .collect()
    }

    /// Events for every vector whose delivery changed since `before`.
    fn changes(&mut self, before: &[Option<MsiMessage>]) -> Vec<MsixEvent> {
        let mut ev = Vec::new();
        for v in 0..self.table_size() {
            let now = self.deliverable(v);
            if now == before[usize::from(v)] {
                continue;
            }
            match now {
                Some(msg) => {
                    ev.push(MsixEvent::Route { vector: v, msg });
                    if std::mem::take(&mut self.pending[usize::from(v)]) {
                        ev.push(MsixEvent::Inject { vector: v, msg });
                    }
                }
                None => ev.push(MsixEvent::Unroute { vector: v }),
            }
        }
        ev
    }

    /// The guest wrote the Message Control word.
    pub fn write_control(&mut self, ctrl: u16) -> Vec<MsixEvent> {
        let before = self.snapshot();
        let was = self.enabled;
        self.enabled = ctrl & CTRL_ENABLE != 0;
        self.function_mask = ctrl & CTRL_FUNCTION_MASK != 0;
        let mut ev = Vec::new();
        if was != self.enabled {
            ev.push(MsixEvent::Enable(self.enabled));
        }
        ev.extend(self.changes(&before));
        ev
    }

    /// The control bits this state holds, merged into the device's read-only bits.
    pub fn control_bits(&self, device_ctrl: u16) -> u16 {
        let mut c = device_ctrl & !(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        if self.enabled {
            c |= CTRL_ENABLE;
        }
        if self.function_mask {
            c |= CTRL_FUNCTION_MASK;
        }
        c
    }

    /// A read of the table at `offset` (from the table's start) of 4 or 8 bytes.
    /// Other sizes or misaligned accesses read as all-ones, as on a real function.
    pub fn table_read(&self, offset: u64, len: usize) -> u64 {
        // checked_rem: a 0-byte access (outside KVM's 1-8 byte contract) must not panic.
        match (len, offset.checked_rem(len as u64)) {
            (4, Some(0)) => u64::from(self.dword(offset)),
            (8, Some(0)) => {
                u64::from(self.dword(offset)) | (u64::from(self.dword(offset + 4)) << 32)
            }
            _ => u64::MAX >> (64 - 8 * len.clamp(1, 8)),
        }
    }

    fn dword(&self, offset: u64) -> u32 {
        let Some(e) = self.entries.get((offset / MSIX_ENTRY_SIZE) as usize) else {
            return 0;
        };
        match (offset % MSIX_ENTRY_SIZE) / 4 {
            0 => e.addr_lo,
            1 => e.addr_hi,
            2 => e.data,
            _ => e.ctrl,
        }
    }

    /// A write of 4 or 8 bytes to the table; anything else is dropped.
    pub fn table_write(&mut self, offset: u64, len: usize, value: u64) -> Vec<MsixEvent> {
        let before = self.snapshot();
        match (len, offset.checked_rem(len as u64)) {
            (4, Some(0)) => self.set_dword(offset, value as u32),
            (8, Some(0)) => {
                self.set_dword(offset, value as u32);
                self.set_dword(offset + 4, (value >> 32) as u32);
            }
            _ => return Vec::new(),
        }
        // Covers a message changed under an unmasked vector too: it must reach KVM.
        self.changes(&before)
    }

    fn set_dword(&mut self, offset: u64, v: u32) {
        let Some(e) = self.entries.get_mut((offset / MSIX_ENTRY_SIZE) as usize) else {
            return;
        };
        match (offset % MSIX_ENTRY_SIZE) / 4 {
            0 => e.addr_lo = v & !3, // message address is dword aligned
            1 => e.addr_hi = v,
            2 => e.data = v,
            _ => e.ctrl = v & ENTRY_MASKED, // other bits reserved
        }
    }

    /// A read of the PBA at `offset` (4 or 8 bytes).
    pub fn pba_read(&self, offset: u64, len: usize) -> u64 {
        let mut v = 0u64;
        // At most 64 bits: a longer access would shift past the u64.
        for bit in 0..(8 * len.min(8) as u64) {
            let vec = offset * 8 + bit;
            if self.pending.get(vec as usize).copied().unwrap_or(false) {
                v |= 1 << bit;
            }
        }
        v
    }

    /// The device signalled `vector` (its eventfd fired while the irqfd was detached).
    /// Returns the message to inject if the vector delivers; otherwise it becomes pending.
    pub fn signal(&mut self, vector: u16) -> Option<MsiMessage> {
        match self.deliverable(vector) {
            Some(m) => Some(m),
            None => {
                if let Some(p) = self.pending.get_mut(usize::from(vector)) {
                    *p = true;
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Config space with a PM cap at 0x40 and an MSI-X cap at 0x70 (table in BAR0 at
    /// 0x2000, 64 vectors; PBA in BAR0 at 0x3000), as mlx5 VFs lay them out.
    pub(crate) fn config_with_msix() -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[0x06] = 0x10; // status: capability list
        c[0x34] = 0x40;
        c[0x40] = 0x01; // PM
        c[0x41] = 0x70;
        c[0x70] = PCI_CAP_ID_MSIX;
        c[0x71] = 0x00;
        c[0x72..0x74].copy_from_slice(&63u16.to_le_bytes());
        c[0x74..0x78].copy_from_slice(&0x2000u32.to_le_bytes());
        c[0x78..0x7c].copy_from_slice(&0x3000u32.to_le_bytes());
        c
    }

    #[test]
    fn parses_msix_cap() {
        let cap = MsixCap::parse(&config_with_msix()).unwrap();
        assert_eq!(
            cap,
            MsixCap {
                cap_offset: 0x70,
                table_size: 64,
                table_bar: 0,
                table_offset: 0x2000,
                pba_bar: 0,
                pba_offset: 0x3000
            }
        );
        assert_eq!(cap.table_range(), 0x2000..0x2400);
        assert_eq!(cap.pba_range(), 0x3000..0x3008);
    }

    #[test]
    fn no_cap_list_or_looping_list() {
        let mut c = config_with_msix();
        c[0x06] = 0;
        assert_eq!(MsixCap::parse(&c), None);
        let mut c = config_with_msix();
        c[0x41] = 0x40; // PM points at itself
        assert_eq!(capabilities(&c).len(), 48);
        assert_eq!(MsixCap::parse(&c), None);
    }

    #[test]
    fn mappable_ranges_skip_table_and_pba_pages() {
        let cap = MsixCap::parse(&config_with_msix()).unwrap();
        let r = mappable_ranges(0, 0x10_0000, Some(&cap), 0x1000);
        assert_eq!(r, vec![0..0x2000, 0x4000..0x10_0000]);
        // Other BARs map whole; 64 KiB pages swallow both into one hole.
        assert_eq!(
            mappable_ranges(2, 0x4000, Some(&cap), 0x1000),
            vec![0..0x4000]
        );
        assert_eq!(
            mappable_ranges(0, 0x10_0000, Some(&cap), 0x1_0000),
            vec![0x1_0000..0x10_0000]
        );
        assert_eq!(mappable_ranges(0, 0x4000, None, 0x1000), vec![0..0x4000]);
    }

    fn program(s: &mut MsixState, v: u16, addr: u64, data: u32) {
        let o = u64::from(v) * 16;
        s.table_write(o, 8, addr);
        s.table_write(o + 8, 4, u64::from(data));
    }

    #[test]
    fn vectors_route_only_when_enabled_and_unmasked() {
        let mut s = MsixState::new(4);
        program(&mut s, 1, 0xfee0_0000, 0x41);
        assert!(s.routes().is_empty(), "reset state is masked and disabled");
        assert_eq!(s.write_control(0x8000), vec![MsixEvent::Enable(true)]);
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        assert_eq!(
            s.table_write(16 + 12, 4, 0),
            vec![MsixEvent::Route { vector: 1, msg }]
        );
        assert_eq!(s.routes(), vec![(1, msg)]);
        // Function mask hides every vector; clearing it brings them back.
        assert_eq!(
            s.write_control(0xc000),
            vec![MsixEvent::Unroute { vector: 1 }]
        );
        assert_eq!(
            s.write_control(0x8000),
            vec![MsixEvent::Route { vector: 1, msg }]
        );
        assert_eq!(
            s.write_control(0),
            vec![MsixEvent::Enable(false), MsixEvent::Unroute { vector: 1 }]
        );
    }

    #[test]
    fn masked_signal_is_pending_then_injected_on_unmask() {
        let mut s = MsixState::new(64);
        s.write_control(0x8000);
        program(&mut s, 40, 0xfee0_1000, 0x22);
        assert_eq!(s.signal(40), None);
        assert_eq!(s.pba_read(0, 8), 1 << 40);
        assert_eq!(s.pba_read(4, 4), 1 << 8);
        let msg = MsiMessage {
            address: 0xfee0_1000,
            data: 0x22,
        };
        assert_eq!(
            s.table_write(40 * 16 + 12, 4, 0),
            vec![
                MsixEvent::Route { vector: 40, msg },
                MsixEvent::Inject { vector: 40, msg }
            ]
        );
        assert_eq!(s.pba_read(0, 8), 0);
        assert_eq!(s.signal(40), Some(msg));
    }

    #[test]
    fn retargeting_an_unmasked_vector_reroutes() {
        let mut s = MsixState::new(2);
        s.write_control(0x8000);
        program(&mut s, 0, 0xfee0_0000, 1);
        s.table_write(12, 4, 0);
        let ev = s.table_write(8, 4, 2);
        assert_eq!(
            ev,
            vec![MsixEvent::Route {
                vector: 0,
                msg: MsiMessage {
                    address: 0xfee0_0000,
                    data: 2
                }
            }]
        );
    }

    #[test]
    fn table_reads_and_bad_accesses() {
        let mut s = MsixState::new(2);
        program(&mut s, 1, 0x1_fee0_0003, 7);
        assert_eq!(
            s.table_read(16, 8),
            0x1_fee0_0000,
            "low address bits are not stored"
        );
        assert_eq!(s.table_read(24, 4), 7);
        assert_eq!(s.table_read(28, 4), 1, "still masked");
        assert_eq!(s.table_read(17, 4), 0xffff_ffff);
        assert_eq!(s.table_read(16, 2), 0xffff);
        assert!(s.table_write(18, 4, 0).is_empty());
        assert_eq!(s.table_read(16 * 9, 4), 0, "beyond the table");
        assert!(s.table_write(16 * 9, 4, 1).is_empty());
        assert_eq!(s.control_bits(0x07ff | 0x8000), 0x07ff);
    }

    /// The fuzz finding (fuzz/findings/README.md, 0-byte table access): accesses outside
    /// KVM's 1-8 bytes read as all-ones / nothing and are dropped, never panic.
    #[test]
    fn accesses_of_no_or_too_many_bytes_do_not_panic() {
        let mut s = MsixState::new(2);
        program(&mut s, 0, 0xfee0_0000, 3);
        assert_eq!(s.table_read(0, 0), 0xff);
        assert_eq!(s.table_read(8, 0), 0xff);
        assert!(s.table_write(8, 0, 0).is_empty());
        assert_eq!(s.table_read(8, 4), 3, "data kept");
        assert_eq!(s.table_read(0, 16), u64::MAX);
        assert!(s.table_write(0, 16, 0).is_empty());
        assert_eq!(s.pba_read(0, 0), 0);
        s.signal(1);
        assert_eq!(s.pba_read(0, 16), 0b10, "pending bit of vector 1");
    }
}
