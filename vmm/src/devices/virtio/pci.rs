//! The virtio 1.x PCI transport ("modern", capability-based; virtio 1.2, 4.1): one 32-bit
//! memory BAR holds the common configuration, ISR, device configuration and notify
//! regions, and the MSI-X table and PBA.
//!
//! Interrupts are MSI-X only, injected with KVM_SIGNAL_MSI from the thread that completes
//! the request (the vCPU thread that kicked the queue). The config space says interrupt
//! pin 0: the bus has no INTx routing (no _PRT in the DSDT, no IOAPIC pin per slot), and
//! Linux's virtio_pci takes MSI-X whenever the capability is there. Without MSI-X enabled
//! only the ISR bits are set.
//!
//! The PCI header, BAR sizing and relocation, the command register and the MSI-X
//! registers are hpmmap-vf's config-space model (the VF's), over a config space built
//! here instead of one read from VFIO.

use super::chain::Chain;
use super::{Malformed, VirtioDevice};
use hpmmap_pci::config_space::{BarWindows, ConfigEvent, ConfigIo, VfConfig};
use hpmmap_pci::device::{BarEvent, BarInfo, BarKind, PciDevice};
use hpmmap_pci::msix::{MsixEvent, PCI_CAP_ID_MSIX};
use hpmmap_pci::IrqRouter;
use std::sync::{Arc, Mutex, MutexGuard};
use virtio_bindings::virtio_config::*;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub const VENDOR_ID: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device ID.
pub const DEVICE_ID_BASE: u16 = 0x1040;
pub const BAR_SIZE: u64 = 0x8000;
pub const COMMON: u64 = 0x0000;
pub const ISR: u64 = 0x1000;
pub const DEVICE: u64 = 0x2000;
pub const NOTIFY: u64 = 0x3000;
pub const MSIX_TABLE: u64 = 0x4000;
pub const MSIX_PBA: u64 = 0x5000;
/// Bytes between two queues' notify addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
const COMMON_LEN: u64 = 0x38;
const DEVICE_LEN: u64 = 0x1000;
const NO_VECTOR: u16 = 0xffff;
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;
const STATUS_NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;
const STATUS_FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const STATUS_DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const STATUS_DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;

// virtio_pci_cap cfg_type values (virtio 1.2, 4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const PCI_CAP_ID_VENDOR: u8 = 0x09;

/// The config space the transport presents: header, the four virtio capabilities and
/// MSI-X. Read-only: what the guest may change is kept by [`VfConfig`].
struct ConfigSpace(Vec<u8>);

impl ConfigIo for ConfigSpace {
    fn read(&self, offset: u16, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.0.get(usize::from(offset) + i).copied().unwrap_or(0);
        }
    }
    fn write(&self, _offset: u16, _buf: &[u8]) {}
}

fn config_space(device_id: u16, vectors: u16) -> Vec<u8> {
    let mut c = vec![0u8; 256];
    let put16 = |c: &mut Vec<u8>, o: usize, v: u16| c[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |c: &mut Vec<u8>, o: usize, v: u32| c[o..o + 4].copy_from_slice(&v.to_le_bytes());
    put16(&mut c, 0x00, VENDOR_ID);
    put16(&mut c, 0x02, DEVICE_ID_BASE + device_id);
    put16(&mut c, 0x06, 1 << 4); // status: capability list
    c[0x08] = 1; // revision 1: a modern-only device
                 // Class: mass storage / other for block; the guest binds by vendor and device ID.
    c[0x0a] = 0x80;
    c[0x0b] = if device_id == super::DEVICE_ID_BLOCK {
        0x01
    } else {
        0xff
    };
    put16(&mut c, 0x2c, VENDOR_ID);
    put16(&mut c, 0x2e, 0x40 + device_id);
    put32(&mut c, 0x10, 0); // BAR0: 32-bit memory, not prefetchable
    c[0x34] = 0x40;
    let caps: [(u8, u64, u64, u8); 4] = [
        (CAP_COMMON, COMMON, COMMON_LEN, 16),
        (CAP_NOTIFY, NOTIFY, 0x1000, 20),
        (CAP_ISR, ISR, 4, 16),
        (CAP_DEVICE, DEVICE, DEVICE_LEN, 16),
    ];
    let mut at = 0x40usize;
    for (ty, off, len, cap_len) in caps {
        let next = at + usize::from(cap_len);
        c[at] = PCI_CAP_ID_VENDOR;
        c[at + 1] = next as u8;
        c[at + 2] = cap_len;
        c[at + 3] = ty;
        c[at + 4] = 0; // BAR0
        put32(&mut c, at + 8, off as u32);
        put32(&mut c, at + 12, len as u32);
        if ty == CAP_NOTIFY {
            put32(&mut c, at + 16, NOTIFY_MULTIPLIER);
        }
        at = next;
    }
    c[at] = PCI_CAP_ID_MSIX;
    c[at + 1] = 0;
    put16(&mut c, at + 2, vectors - 1);
    put32(&mut c, at + 4, MSIX_TABLE as u32); // BIR 0
    put32(&mut c, at + 8, MSIX_PBA as u32);
    c
}

/// One queue's registers as the driver programs them; they become a [`Queue`] when the
/// driver enables it.
#[derive(Clone, Copy, Debug, Default)]
struct QueueRegs {
    size: u16,
    vector: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

/// A virtio device on the guest's PCI bus.
pub struct VirtioPci {
    dev: Box<dyn VirtioDevice>,
    cfg: VfConfig,
    space: ConfigSpace,
    mem: GuestMemoryMmap,
    router: Arc<dyn IrqRouter>,
    vectors: u16,
    queues: Vec<Queue>,
    regs: Vec<QueueRegs>,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    config_vector: u16,
    queue_select: u16,
    status: u8,
    isr: u8,
    /// Why the device last needed a reset (kept across the reset, for diagnostics).
    failure: Option<Malformed>,
    warnings: hpmmap_pci::log::GuestWarnings,
}

fn le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

fn put(data: &mut [u8], v: u64) {
    let b = v.to_le_bytes();
    let n = data.len().min(8);
    data[..n].copy_from_slice(&b[..n]);
    data[n..].fill(0);
}

impl VirtioPci {
    /// `mem` is all guest RAM: the only memory the device reads or writes.
    pub fn new(
        dev: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        router: Arc<dyn IrqRouter>,
    ) -> Self {
        let sizes = dev.queue_max_sizes();
        // One vector for configuration changes, one per queue.
        let vectors = sizes.len() as u16 + 1;
        let bytes = config_space(dev.device_id(), vectors);
        let bars = [BarInfo {
            index: 0,
            kind: BarKind::Mem32,
            prefetchable: false,
            size: BAR_SIZE,
        }];
        let cfg = VfConfig::new(bytes.clone(), &bars);
        let queues = sizes
            .iter()
            .map(|&s| Queue::new(s).expect("device queue sizes are powers of two"))
            .collect();
        let mut t = VirtioPci {
            dev,
            cfg,
            space: ConfigSpace(bytes),
            mem,
            router,
            vectors,
            queues,
            regs: Vec::new(),
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            config_vector: NO_VECTOR,
            queue_select: 0,
            status: 0,
            isr: 0,
            failure: None,
            warnings: Default::default(),
        };
        t.reset();
        t
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.dev.as_ref()
    }

    pub fn status(&self) -> u8 {
        self.status
    }

    /// Why the device last stopped with DEVICE_NEEDS_RESET.
    pub fn failure(&self) -> Option<&Malformed> {
        self.failure.as_ref()
    }

    fn offered(&self) -> u64 {
        self.dev.features() | (1u64 << VIRTIO_F_VERSION_1)
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.regs = self
            .queues
            .iter()
            .map(|q| QueueRegs {
                size: q.max_size(),
                vector: NO_VECTOR,
                ..Default::default()
            })
            .collect();
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.config_vector = NO_VECTOR;
        self.queue_select = 0;
        self.status = 0;
        self.isr = 0;
        self.dev.reset();
    }

    fn signal(&mut self, vector: u16, isr: u8) {
        self.isr |= isr;
        if vector == NO_VECTOR {
            return;
        }
        let msg = self.cfg.msix_mut().and_then(|m| m.signal(vector));
        if let Some(msg) = msg {
            if let Err(e) = self.router.signal_msi(msg) {
                let name = self.dev.name();
                self.warnings
                    .warn(&name, format_args!("MSI-X vector {vector}: {e}"));
            }
        }
    }

    /// The device cannot go on: DEVICE_NEEDS_RESET and a configuration-change interrupt
    /// (virtio 1.2, 2.1.2); nothing more is processed until the driver resets it.
    fn fail(&mut self, why: Malformed) {
        let name = self.dev.name();
        self.warnings
            .warn(&name, format_args!("{why}; the device needs a reset"));
        self.status |= STATUS_NEEDS_RESET;
        self.failure = Some(why);
        self.signal(self.config_vector, ISR_CONFIG);
    }

    fn selected(&mut self) -> Option<(&mut QueueRegs, &mut Queue)> {
        let i = usize::from(self.queue_select);
        Some((self.regs.get_mut(i)?, self.queues.get_mut(i)?))
    }

    /// The driver enabled a queue: its size and addresses must be what a split virtqueue
    /// allows, and the rings must lie in guest RAM.
    fn enable_queue(&mut self) {
        let i = usize::from(self.queue_select);
        let mem = self.mem.clone();
        let Some((r, q)) = self.selected() else {
            return;
        };
        let r = *r;
        let ok = q.try_set_size(r.size).is_ok()
            && q.try_set_desc_table_address(GuestAddress(r.desc)).is_ok()
            && q.try_set_avail_ring_address(GuestAddress(r.avail)).is_ok()
            && q.try_set_used_ring_address(GuestAddress(r.used)).is_ok();
        q.set_ready(ok);
        if !ok || !q.is_valid(&mem) {
            q.set_ready(false);
            self.fail(Malformed::Ring {
                queue: i,
                what: format!(
                    "size {} or rings desc {:#x} avail {:#x} used {:#x} not a valid split \
                     virtqueue in guest RAM",
                    r.size, r.desc, r.avail, r.used
                ),
            });
        }
    }

    /// The driver kicked queue `i`: serve every available chain.
    pub fn notify(&mut self, i: usize) {
        if self.status & STATUS_DRIVER_OK == 0 || self.status & STATUS_NEEDS_RESET != 0 {
            return;
        }
        if !self.queues.get(i).is_some_and(|q| q.ready()) {
            return;
        }
        let mem = self.mem.clone();
        let mut used = false;
        while self.dev.ready_for(i) {
            let q = &mut self.queues[i];
            let chain = match q.iter(&mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    self.fail(Malformed::Ring {
                        queue: i,
                        what: e.to_string(),
                    });
                    return;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let r = Chain::check(chain, &mem, self.dev.segment_max())
                .and_then(|c| self.dev.process(i, c, &mem));
            let len = match r {
                Ok(len) => len,
                Err(source) => {
                    self.fail(Malformed::Queue { queue: i, source });
                    return;
                }
            };
            if let Err(e) = self.queues[i].add_used(&mem, head, len) {
                self.fail(Malformed::Ring {
                    queue: i,
                    what: format!("used ring: {e}"),
                });
                return;
            }
            used = true;
        }
        if used && self.queues[i].needs_notification(&mem).unwrap_or(true) {
            let v = self.regs[i].vector;
            self.signal(v, ISR_QUEUE);
        }
    }

    fn common_read(&mut self, off: u64, data: &mut [u8]) {
        let q = self.regs.get(usize::from(self.queue_select)).copied();
        let qf = |f: fn(&QueueRegs) -> u64| q.as_ref().map_or(0, f);
        let v: u64 = match (off, data.len()) {
            (0x00, 4) => u64::from(self.device_features_select),
            (0x04, 4) => match self.device_features_select {
                0 => self.offered() & 0xffff_ffff,
                1 => self.offered() >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(self.driver_features_select),
            (0x0c, 4) => match self.driver_features_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => u64::from(self.config_vector),
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => u64::from(self.status),
            (0x15, 1) => 0, // config_generation: the configuration never changes
            (0x16, 2) => u64::from(self.queue_select),
            (0x18, 2) => qf(|r| u64::from(r.size)),
            (0x1a, 2) => q.map_or(u64::from(NO_VECTOR), |r| u64::from(r.vector)),
            (0x1c, 2) => u64::from(
                self.queues
                    .get(usize::from(self.queue_select))
                    .is_some_and(|q| q.ready()),
            ),
            (0x1e, 2) => u64::from(self.queue_select), // queue_notify_off
            (0x20, 4) => qf(|r| r.desc & 0xffff_ffff),
            (0x24, 4) => qf(|r| r.desc >> 32),
            (0x28, 4) => qf(|r| r.avail & 0xffff_ffff),
            (0x2c, 4) => qf(|r| r.avail >> 32),
            (0x30, 4) => qf(|r| r.used & 0xffff_ffff),
            (0x34, 4) => qf(|r| r.used >> 32),
            _ => 0,
        };
        put(data, v);
    }

    fn common_write(&mut self, off: u64, data: &[u8]) {
        let v = le(data);
        let len = data.len();
        // Queue registers only while the queue is disabled (4.1.4.3.2).
        let queue_idle = !self
            .queues
            .get(usize::from(self.queue_select))
            .is_some_and(|q| q.ready());
        let set_half = |reg: &mut u64, hi: bool| {
            *reg = if hi {
                (*reg & 0xffff_ffff) | (v << 32)
            } else {
                (*reg & !0xffff_ffff) | (v & 0xffff_ffff)
            }
        };
        let vectors = self.vectors;
        let valid_vector = |v: u64| {
            if v < u64::from(vectors) {
                v as u16
            } else {
                NO_VECTOR
            }
        };
        match (off, len) {
            (0x00, 4) => self.device_features_select = v as u32,
            (0x08, 4) => self.driver_features_select = v as u32,
            // Driver features only between DRIVER and FEATURES_OK (3.1.1).
            (0x0c, 4)
                if self.status & STATUS_DRIVER != 0 && self.status & STATUS_FEATURES_OK == 0 =>
            {
                match self.driver_features_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            (0x10, 2) => self.config_vector = valid_vector(v),
            (0x14, 1) => self.write_status(v as u8),
            (0x16, 2) => self.queue_select = v as u16,
            (0x18, 2) if queue_idle => {
                if let Some((r, _)) = self.selected() {
                    r.size = v as u16;
                }
            }
            (0x1a, 2) => {
                if let Some((r, _)) = self.selected() {
                    r.vector = valid_vector(v);
                }
            }
            (0x1c, 2) if v == 1 && queue_idle => self.enable_queue(),
            (0x20..=0x34, 4) if queue_idle => {
                if let Some((r, _)) = self.selected() {
                    let hi = off % 8 == 4;
                    match off & !7 {
                        0x20 => set_half(&mut r.desc, hi),
                        0x28 => set_half(&mut r.avail, hi),
                        _ => set_half(&mut r.used, hi),
                    }
                }
            }
            _ => {}
        }
    }

    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v & !STATUS_NEEDS_RESET;
        if v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            // FEATURES_OK sticks only for a subset of what was offered, with VERSION_1.
            let f = self.driver_features;
            if f & !self.offered() != 0 || f & (1 << VIRTIO_F_VERSION_1) == 0 {
                v &= !STATUS_FEATURES_OK;
            }
        }
        // The driver only sets bits; NEEDS_RESET stays until a reset.
        self.status = (self.status & STATUS_NEEDS_RESET) | v;
    }

    fn msix_events(&mut self, events: Vec<MsixEvent>) {
        for e in events {
            if let MsixEvent::Inject { msg, vector } = e {
                if let Err(err) = self.router.signal_msi(msg) {
                    let name = self.dev.name();
                    self.warnings
                        .warn(&name, format_args!("MSI-X vector {vector}: {err}"));
                }
            }
        }
    }

    fn bar_events(&mut self, events: Vec<ConfigEvent>) -> Vec<BarEvent> {
        let mut out = Vec::new();
        let mut msix = Vec::new();
        for e in events {
            match e {
                ConfigEvent::BarMap { bar, addr, size } => {
                    out.push(BarEvent::Mapped { bar, addr, size })
                }
                ConfigEvent::BarUnmap { bar, addr, size } => {
                    out.push(BarEvent::Unmapped { bar, addr, size })
                }
                ConfigEvent::Msix(m) => msix.push(m),
            }
        }
        self.msix_events(msix);
        out
    }
}

impl PciDevice for VirtioPci {
    fn name(&self) -> String {
        self.dev.name()
    }

    fn bar_requests(&self) -> Vec<BarInfo> {
        vec![BarInfo {
            index: 0,
            kind: BarKind::Mem32,
            prefetchable: false,
            size: BAR_SIZE,
        }]
    }

    fn set_windows(&mut self, w: &hpmmap_pci::PciWindows) {
        let events = self.cfg.set_windows(BarWindows {
            mmio32: w.mmio32.clone(),
            mmio64: Some(w.mmio64.clone()),
        });
        // Nothing decodes yet (the command register starts at 0).
        let _ = self.bar_events(events);
    }

    fn place_bar(&mut self, bar: u8, addr: u64) {
        self.cfg.set_bar_address(bar, addr);
    }

    fn config_read(&mut self, offset: u16, len: usize) -> u32 {
        self.cfg.read(&self.space, offset, len)
    }

    fn config_write(&mut self, offset: u16, len: usize, value: u32) -> Vec<BarEvent> {
        let events = self.cfg.write(&self.space, offset, len, value);
        self.bar_events(events)
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar != 0 || data.is_empty() || data.len() > 8 {
            data.fill(0xff);
            return;
        }
        let len = data.len() as u64;
        match offset {
            o if (COMMON..COMMON + COMMON_LEN).contains(&o) => self.common_read(o - COMMON, data),
            o if o == ISR && len == 1 => {
                // Reading the ISR acknowledges it (4.1.4.5).
                data[0] = std::mem::take(&mut self.isr);
            }
            o if (DEVICE..DEVICE + DEVICE_LEN).contains(&o) => {
                self.dev.read_config(o - DEVICE, data)
            }
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => {
                let v = self
                    .cfg
                    .msix()
                    .map_or(u64::MAX, |m| m.table_read(o - MSIX_TABLE, data.len()));
                put(data, v);
            }
            o if (MSIX_PBA..MSIX_PBA + 8).contains(&o) => {
                let v = self
                    .cfg
                    .msix()
                    .map_or(0, |m| m.pba_read(o - MSIX_PBA, data.len()));
                put(data, v);
            }
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar != 0 || data.is_empty() || data.len() > 8 {
            return;
        }
        match offset {
            o if (COMMON..COMMON + COMMON_LEN).contains(&o) => self.common_write(o - COMMON, data),
            o if (NOTIFY..NOTIFY + 0x1000).contains(&o) => {
                let q = (o - NOTIFY) / u64::from(NOTIFY_MULTIPLIER);
                self.notify(q as usize);
            }
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => {
                let ev = self
                    .cfg
                    .msix_mut()
                    .map(|m| m.table_write(o - MSIX_TABLE, data.len(), le(data)))
                    .unwrap_or_default();
                self.msix_events(ev);
            }
            // Device configuration is read-only for block; ISR and PBA are read-only.
            _ => {}
        }
    }
}

/// A transport on the bus that another thread also drives (virtio-vsock's event thread
/// fills the rx queue): the bus reaches it through this lock, taken after the bus lock;
/// the other thread takes only this one.
pub struct SharedPci(pub Arc<Mutex<VirtioPci>>);

impl SharedPci {
    fn t(&self) -> MutexGuard<'_, VirtioPci> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PciDevice for SharedPci {
    fn name(&self) -> String {
        self.t().name()
    }
    fn bar_requests(&self) -> Vec<BarInfo> {
        self.t().bar_requests()
    }
    fn set_windows(&mut self, w: &hpmmap_pci::PciWindows) {
        self.t().set_windows(w)
    }
    fn place_bar(&mut self, bar: u8, addr: u64) {
        self.t().place_bar(bar, addr)
    }
    fn config_read(&mut self, offset: u16, len: usize) -> u32 {
        self.t().config_read(offset, len)
    }
    fn config_write(&mut self, offset: u16, len: usize, value: u32) -> Vec<BarEvent> {
        self.t().config_write(offset, len, value)
    }
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        self.t().bar_read(bar, offset, data)
    }
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        self.t().bar_write(bar, offset, data)
    }
}
