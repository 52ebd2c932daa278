//! A VF passed through to the guest: this crate's VFIO objects and guest config-space
//! model, wired to KVM. BAR pages go into KVM memory slots (no exits), the MSI-X table
//! and PBA pages trap and are emulated, MSI-X vectors are VFIO eventfds attached as KVM
//! irqfds on GSIs routed to the guest's messages.
//!
//! Masked vectors: the irqfd is detached (KVM_IRQFD deassign clears the eventfd count);
//! what the device signals meanwhile stays counted in the eventfd, shows in the PBA, and
//! is delivered when the vector is unmasked because KVM injects at once when an irqfd is
//! attached to an eventfd that is already signalled.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::config_space::{ConfigEvent, VfConfig};
use crate::msix::{MsixCap, MsixEvent};
use crate::vfio::{BarMapping, GuestRamRegion, VfioHost, VfioPassthrough};
use hpmmap_vf::VfClaim;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{BarEvent, BarInfo, PciDevice};
use crate::error::PciError;
use crate::hooks::{IrqRouter, MemorySlots};

const PAGE: u64 = 4096;
/// Command register: I/O and memory space enable.
const CMD_DECODE: u16 = 0b11;

#[derive(Default)]
struct BarState {
    /// The BAR's mmapped pieces, made once at open and kept until teardown.
    maps: Vec<BarMapping>,
    /// KVM slots currently backed by `maps`.
    slots: Vec<u32>,
}

struct MsixWiring {
    gsi_base: u32,
    fds: Vec<EventFd>,
    attached: Vec<bool>,
}

/// What the VMM hands a passed-through device to reach KVM.
#[derive(Clone)]
pub struct KvmHooks {
    pub slots: Arc<dyn MemorySlots>,
    pub router: Arc<dyn IrqRouter>,
}

pub struct VfioPciDevice {
    name: String,
    cfg: VfConfig,
    bar_infos: Vec<BarInfo>,
    bars: Vec<BarState>,
    msix: Option<MsixWiring>,
    hooks: KvmHooks,
    vfio: Option<VfioPassthrough>,
    claim: Option<VfClaim>,
    /// Warnings the guest's programming caused (bounded).
    warnings: crate::log::GuestWarnings,
}

impl VfioPciDevice {
    /// Opens VFIO for a VF claimed with `hpmmap_vf::claim_vf` and DMA-maps `ram`
    /// (IOVA = GPA). The device owns the claim: its drop (or a failed open) rebinds the
    /// VF's original driver.
    pub fn from_claim(
        claim: VfClaim,
        host: Arc<dyn VfioHost>,
        ram: &[GuestRamRegion],
        hooks: KvmHooks,
    ) -> Result<Self, PciError> {
        let mut d = Self::open(
            host,
            claim.iommu_group(),
            &claim.vf().to_string(),
            ram,
            hooks,
        )?;
        d.claim = Some(claim);
        Ok(d)
    }

    /// Opens a device already bound to vfio-pci: `name` is its PCI address, `group` its
    /// IOMMU group.
    pub fn open(
        host: Arc<dyn VfioHost>,
        group: u32,
        name: &str,
        ram: &[GuestRamRegion],
        hooks: KvmHooks,
    ) -> Result<Self, PciError> {
        // Opening the device fd resets the function where it can (vfio-pci core).
        let vfio = VfioPassthrough::open(&*host, group, name, ram)?;
        let bytes = vfio.device.read_config_space()?;
        let bar_infos = vfio.device.bars(&bytes);
        let mut cfg = VfConfig::new(bytes, &bar_infos);
        // The guest finds decode off, as after reset: its enabling it is what maps the
        // BARs (vfio-pci may report a VF's memory decode on, and VfConfig maps on changes).
        let cmd = cfg.read(&vfio.device, 0x04, 2);
        if cmd & u32::from(CMD_DECODE) != 0 {
            cfg.write(&vfio.device, 0x04, 2, cmd & !u32::from(CMD_DECODE));
        }
        let mut d = VfioPciDevice {
            name: name.to_string(),
            cfg,
            bar_infos,
            bars: (0..6).map(|_| BarState::default()).collect(),
            msix: None,
            hooks,
            vfio: Some(vfio),
            claim: None,
            warnings: Default::default(),
        };
        // From here `d`'s Drop undoes what is done on error.
        let cap = d.cfg.msix_cap().copied();
        for b in d.bar_infos.clone() {
            let maps = d.vfio().device.map_bar(b.index, cap.as_ref())?;
            d.bars[usize::from(b.index)].maps = maps;
        }
        if let Some(cap) = cap {
            let n = u32::from(cap.table_size).min(d.vfio().device.msix_vectors());
            if n > 0 {
                let gsi_base = d.hooks.router.allocate_gsis(n)?;
                let fds = (0..n)
                    .map(|_| {
                        EventFd::new(libc::EFD_NONBLOCK).map_err(|source| PciError::Host {
                            what: "eventfd for an MSI-X vector".into(),
                            source,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                d.msix = Some(MsixWiring {
                    gsi_base,
                    attached: vec![false; fds.len()],
                    fds,
                });
            }
        }
        Ok(d)
    }

    fn vfio(&self) -> &VfioPassthrough {
        self.vfio.as_ref().expect("VFIO is open until teardown")
    }

    /// GSI of MSI-X vector `v`, for diagnostics and tests.
    pub fn vector_gsi(&self, v: u16) -> Option<u32> {
        let m = self.msix.as_ref()?;
        (usize::from(v) < m.fds.len()).then(|| m.gsi_base + u32::from(v))
    }

    /// The eventfd VFIO signals for vector `v`.
    pub fn vector_eventfd(&self, v: u16) -> Option<&EventFd> {
        self.msix.as_ref()?.fds.get(usize::from(v))
    }

    /// The KVM slots currently serving BAR `bar`.
    pub fn bar_slots(&self, bar: u8) -> &[u32] {
        self.bars.get(usize::from(bar)).map_or(&[], |b| &b.slots)
    }

    fn map_slots(&mut self, bar: u8, addr: u64) {
        let st = &mut self.bars[usize::from(bar)];
        for m in &st.maps {
            let gpa = addr + m.bar_offset;
            if !gpa.is_multiple_of(PAGE) || !m.len.is_multiple_of(PAGE) {
                continue; // stays trapped: served through the region fd
            }
            // SAFETY: `m` stays mapped until teardown, which removes the slot first.
            match unsafe { self.hooks.slots.map(gpa, m.len, m.ptr as u64) } {
                Ok(s) => st.slots.push(s),
                Err(e) => {
                    self.warnings
                        .warn(&self.name, format_args!("BAR{bar}: {e} (left trapped)"));
                }
            }
        }
    }

    fn unmap_slots(&mut self, bar: u8) {
        for s in std::mem::take(&mut self.bars[usize::from(bar)].slots) {
            if let Err(e) = self.hooks.slots.unmap(s) {
                self.warnings
                    .warn(&self.name, format_args!("BAR{bar}: {e}"));
            }
        }
    }

    fn msix_event(&mut self, ev: MsixEvent) {
        let Some(w) = self.msix.as_mut() else {
            return;
        };
        let router = &self.hooks.router;
        let base = w.gsi_base;
        let gsi = |v: u16| base + u32::from(v);
        let r = match ev {
            MsixEvent::Enable(true) => {
                let fds: Vec<&EventFd> = w.fds.iter().collect();
                self.vfio
                    .as_ref()
                    .map_or(Ok(()), |v| v.device.enable_msix(&fds))
                    .map_err(PciError::from)
            }
            MsixEvent::Enable(false) => {
                // Unroute events for the vectors follow; VFIO stops signalling now.
                self.vfio
                    .as_ref()
                    .map_or(Ok(()), |v| v.device.disable_msix())
                    .map_err(PciError::from)
            }
            MsixEvent::Route { vector, msg } if usize::from(vector) < w.fds.len() => {
                let v = usize::from(vector);
                router.set_msi_route(gsi(vector), msg).and_then(|()| {
                    if !w.attached[v] {
                        router.register_irqfd(&w.fds[v], gsi(vector))?;
                        w.attached[v] = true;
                    }
                    Ok(())
                })
            }
            MsixEvent::Unroute { vector } if usize::from(vector) < w.fds.len() => {
                let v = usize::from(vector);
                let r = if w.attached[v] {
                    w.attached[v] = false;
                    router.unregister_irqfd(&w.fds[v], gsi(vector))
                } else {
                    Ok(())
                };
                r.and(router.remove_route(gsi(vector)))
            }
            MsixEvent::Inject { msg, .. } => router.signal_msi(msg),
            // Vectors beyond what VFIO offers have no host interrupt behind them.
            MsixEvent::Route { .. } | MsixEvent::Unroute { .. } => Ok(()),
        };
        if let Err(e) = r {
            self.warnings
                .warn(&self.name, format_args!("MSI-X {ev:?}: {e}"));
        }
    }

    /// PBA bits for vectors whose irqfd is detached and whose eventfd has counted a
    /// signal (poll, which leaves the count for KVM to deliver on unmask).
    fn pending_bits(&self, offset: u64, len: usize) -> u64 {
        let Some(w) = self.msix.as_ref() else {
            return 0;
        };
        let mut v = 0u64;
        for bit in 0..(8 * len.min(8) as u64) {
            let vec = (offset * 8 + bit) as usize;
            if vec < w.fds.len() && !w.attached[vec] && readable(&w.fds[vec]) {
                v |= 1 << bit;
            }
        }
        v
    }

    fn region_read(&self, bar: u8, offset: u64, buf: &mut [u8]) {
        let ok = self
            .vfio
            .as_ref()
            .is_some_and(|v| v.device.region_read(u32::from(bar), offset, buf).is_ok());
        if !ok {
            buf.fill(0xff);
        }
    }

    fn region_write(&self, bar: u8, offset: u64, buf: &[u8]) {
        if let Some(v) = &self.vfio {
            let _ = v.device.region_write(u32::from(bar), offset, buf);
        }
    }

    fn msix_window(&self, bar: u8, offset: u64) -> Option<(bool, u64)> {
        let cap: &MsixCap = self.cfg.msix_cap()?;
        if bar == cap.table_bar && cap.table_range().contains(&offset) {
            return Some((true, offset - cap.table_range().start));
        }
        if bar == cap.pba_bar && cap.pba_range().contains(&offset) {
            return Some((false, offset - cap.pba_range().start));
        }
        None
    }

    /// Undoes everything in the order the kernel needs: irqfds and routes, MSI-X,
    /// memory slots, BAR mmaps, VFIO (device, DMA mappings, group, container), then the
    /// driver binding.
    fn teardown(&mut self) {
        if self.warnings.suppressed() > 0 {
            eprintln!(
                "hpmmap-pci: {}: {} more warning(s) caused by the guest were not printed",
                self.name,
                self.warnings.suppressed()
            );
        }
        if let Some(w) = self.msix.as_mut() {
            for (v, fd) in w.fds.iter().enumerate() {
                let gsi = w.gsi_base + v as u32;
                if std::mem::take(&mut w.attached[v]) {
                    if let Err(e) = self.hooks.router.unregister_irqfd(fd, gsi) {
                        eprintln!("hpmmap-pci: {}: {e}", self.name);
                    }
                }
                if let Err(e) = self.hooks.router.remove_route(gsi) {
                    eprintln!("hpmmap-pci: {}: {e}", self.name);
                }
            }
        }
        if let Some(v) = &self.vfio {
            if let Err(e) = v.device.disable_msix() {
                eprintln!("hpmmap-pci: {e}");
            }
        }
        for bar in 0..6u8 {
            self.unmap_slots(bar);
        }
        for b in &mut self.bars {
            b.maps.clear();
        }
        drop(self.vfio.take());
        self.msix = None;
        if let Some(c) = self.claim.take() {
            if let Err(e) = c.release() {
                eprintln!("hpmmap-pci: {e}");
            }
        }
    }
}

fn readable(fd: &EventFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) == 1 && p.revents & libc::POLLIN != 0 }
}

fn put(data: &mut [u8], v: u64) {
    let b = v.to_le_bytes();
    let n = data.len().min(8);
    data[..n].copy_from_slice(&b[..n]);
}

fn get(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl PciDevice for VfioPciDevice {
    fn name(&self) -> String {
        format!("vfio {}", self.name)
    }

    fn bar_requests(&self) -> Vec<BarInfo> {
        self.bar_infos.clone()
    }

    fn set_windows(&mut self, w: &crate::layout::PciWindows) {
        let windows = crate::config_space::BarWindows {
            mmio32: w.mmio32.clone(),
            mmio64: Some(w.mmio64.clone()),
        };
        // Not on the bus yet, so no traps to update; decode is off after open anyway.
        for e in self.cfg.set_windows(windows) {
            match e {
                ConfigEvent::BarMap { bar, addr, .. } => self.map_slots(bar, addr),
                ConfigEvent::BarUnmap { bar, .. } => self.unmap_slots(bar),
                ConfigEvent::Msix(_) => {}
            }
        }
    }

    fn place_bar(&mut self, bar: u8, addr: u64) {
        self.cfg.set_bar_address(bar, addr);
    }

    fn config_read(&mut self, offset: u16, len: usize) -> u32 {
        match &self.vfio {
            Some(v) => self.cfg.read(&v.device, offset, len),
            None => u32::MAX,
        }
    }

    fn config_write(&mut self, offset: u16, len: usize, value: u32) -> Vec<BarEvent> {
        let Some(v) = &self.vfio else {
            return Vec::new();
        };
        let events = self.cfg.write(&v.device, offset, len, value);
        let mut out = Vec::new();
        for e in events {
            match e {
                ConfigEvent::BarMap { bar, addr, size } => {
                    self.map_slots(bar, addr);
                    out.push(BarEvent::Mapped { bar, addr, size });
                }
                ConfigEvent::BarUnmap { bar, addr, size } => {
                    self.unmap_slots(bar);
                    out.push(BarEvent::Unmapped { bar, addr, size });
                }
                ConfigEvent::Msix(m) => self.msix_event(m),
            }
        }
        out
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        match self.msix_window(bar, offset) {
            Some((true, off)) => {
                let v = self
                    .cfg
                    .msix()
                    .map_or(u64::MAX, |m| m.table_read(off, data.len()));
                put(data, v);
            }
            Some((false, off)) => {
                let v = self.cfg.msix().map_or(0, |m| m.pba_read(off, data.len()))
                    | self.pending_bits(off, data.len());
                put(data, v);
            }
            None => self.region_read(bar, offset, data),
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        match self.msix_window(bar, offset) {
            Some((true, off)) => {
                let ev = self
                    .cfg
                    .msix_mut()
                    .map(|m| m.table_write(off, data.len(), get(data)))
                    .unwrap_or_default();
                for e in ev {
                    self.msix_event(e);
                }
            }
            Some((false, _)) => {} // the PBA is read-only
            None => self.region_write(bar, offset, data),
        }
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        self.teardown();
    }
}
