//! What a passed-through device needs from KVM, as two small traits so that the device
//! logic is tested with recording fakes ([`crate::testing`]) and runs on KVM through
//! [`KvmMemorySlots`] and [`KvmIrqRouting`].

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::msix::MsiMessage;
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_msi, kvm_userspace_memory_region, KvmIrqRouting as RoutingTable,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::error::PciError;

/// Guest-physical memory served straight from host memory (a BAR's mmap).
pub trait MemorySlots: Send + Sync {
    /// Makes [gpa, gpa + size) read and write host memory at `hva`; returns the slot.
    ///
    /// # Safety
    /// [hva, hva + size) must stay mapped until [`MemorySlots::unmap`] of the slot returns.
    unsafe fn map(&self, gpa: u64, size: u64, hva: u64) -> Result<u32, PciError>;
    fn unmap(&self, slot: u32) -> Result<(), PciError>;
}

/// MSI delivery: GSI routes to MSI messages, and eventfds that trigger a GSI.
pub trait IrqRouter: Send + Sync {
    /// Reserves `count` consecutive GSIs for MSI routes; returns the first.
    fn allocate_gsis(&self, count: u32) -> Result<u32, PciError>;
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), PciError>;
    fn remove_route(&self, gsi: u32) -> Result<(), PciError>;
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), PciError>;
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), PciError>;
    /// Delivers one message now (a vector that was pending while masked).
    fn signal_msi(&self, msg: MsiMessage) -> Result<(), PciError>;
}

fn kvm_err(op: impl Into<String>) -> impl FnOnce(kvm_ioctls::Error) -> PciError {
    let op = op.into();
    move |e| PciError::Kvm {
        op,
        source: io::Error::from_raw_os_error(e.errno()),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// KVM user memory slots from `first_slot` up (the VMM's own RAM slots lie below it).
pub struct KvmMemorySlots {
    vm: Arc<VmFd>,
    first_slot: u32,
    used: Mutex<BTreeSet<u32>>,
}

impl KvmMemorySlots {
    pub fn new(vm: Arc<VmFd>, first_slot: u32) -> Self {
        KvmMemorySlots {
            vm,
            first_slot,
            used: Mutex::new(BTreeSet::new()),
        }
    }
}

impl MemorySlots for KvmMemorySlots {
    unsafe fn map(&self, gpa: u64, size: u64, hva: u64) -> Result<u32, PciError> {
        let mut used = lock(&self.used);
        let slot = (self.first_slot..)
            .find(|s| !used.contains(s))
            .expect("u32 slots exhausted");
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: hva,
        };
        // SAFETY: the caller keeps [hva, hva + size) mapped while the slot exists.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(kvm_err(format!(
            "KVM_SET_USER_MEMORY_REGION slot {slot} GPA {gpa:#x}+{size:#x}"
        )))?;
        used.insert(slot);
        Ok(slot)
    }

    fn unmap(&self, slot: u32) -> Result<(), PciError> {
        let mut used = lock(&self.used);
        if !used.contains(&slot) {
            return Ok(());
        }
        let region = kvm_userspace_memory_region {
            slot,
            ..Default::default()
        };
        // SAFETY: size 0 deletes the slot; no host memory is referenced.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(kvm_err(format!(
            "KVM_SET_USER_MEMORY_REGION delete slot {slot}"
        )))?;
        used.remove(&slot);
        Ok(())
    }
}

/// The first GSI above the in-kernel PIC and IOAPIC pins.
pub const FIRST_MSI_GSI: u32 = 24;
/// KVM_MAX_IRQ_ROUTES on x86.
pub const MAX_GSI: u32 = 4096;

#[derive(Default)]
struct RouteState {
    next_gsi: u32,
    msi: BTreeMap<u32, MsiMessage>,
}

/// The VM's GSI routing table. KVM_SET_GSI_ROUTING replaces the whole table, including
/// the default PIC/IOAPIC routes KVM_CREATE_IRQCHIP installed (the serial port's irqfd
/// on GSI 4 depends on them), so every update rewrites those as the kernel's default
/// (virt/kvm/irqchip.c, arch/x86/kvm/irq_comm.c) plus all MSI routes. All GSI routing
/// of a VM must go through one of these.
pub struct KvmIrqRouting {
    vm: Arc<VmFd>,
    st: Mutex<RouteState>,
}

impl KvmIrqRouting {
    /// `vm` must have its in-kernel irqchip (KVM_CREATE_IRQCHIP) already.
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmIrqRouting {
            vm,
            st: Mutex::new(RouteState {
                next_gsi: FIRST_MSI_GSI,
                msi: BTreeMap::new(),
            }),
        }
    }

    /// The full table for the current MSI routes.
    pub fn table(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
        let mut v = Vec::new();
        let irqchip = |gsi: u32, chip: u32, pin: u32| {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip.irqchip = chip;
            e.u.irqchip.pin = pin;
            e
        };
        for gsi in 0..FIRST_MSI_GSI {
            if gsi < 16 {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                v.push(irqchip(gsi, chip, gsi % 8));
            }
            v.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for (&gsi, m) in msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.address as u32;
            e.u.msi.address_hi = (m.address >> 32) as u32;
            e.u.msi.data = m.data;
            v.push(e);
        }
        v
    }

    fn push(&self, msi: &BTreeMap<u32, MsiMessage>, op: &str) -> Result<(), PciError> {
        let table = RoutingTable::from_entries(&Self::table(msi)).map_err(|e| PciError::Host {
            what: format!("{op}: routing table"),
            source: io::Error::other(format!("{e:?}")),
        })?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(kvm_err(format!("KVM_SET_GSI_ROUTING ({op})")))
    }
}

impl IrqRouter for KvmIrqRouting {
    fn allocate_gsis(&self, count: u32) -> Result<u32, PciError> {
        let mut st = lock(&self.st);
        let base = st.next_gsi;
        match base.checked_add(count) {
            Some(end) if end <= MAX_GSI => {
                st.next_gsi = end;
                Ok(base)
            }
            _ => Err(PciError::GsiRange {
                op: "allocating MSI GSIs",
                gsi: base.saturating_add(count),
            }),
        }
    }

    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), PciError> {
        if !(FIRST_MSI_GSI..MAX_GSI).contains(&gsi) {
            return Err(PciError::GsiRange {
                op: "MSI route",
                gsi,
            });
        }
        let mut st = lock(&self.st);
        let old = st.msi.insert(gsi, msg);
        let r = self.push(&st.msi, &format!("route GSI {gsi}"));
        if r.is_err() {
            // Keep our table what KVM has.
            match old {
                Some(o) => st.msi.insert(gsi, o),
                None => st.msi.remove(&gsi),
            };
        }
        r
    }

    fn remove_route(&self, gsi: u32) -> Result<(), PciError> {
        let mut st = lock(&self.st);
        if st.msi.remove(&gsi).is_none() {
            return Ok(());
        }
        self.push(&st.msi, &format!("remove GSI {gsi}"))
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), PciError> {
        self.vm
            .register_irqfd(fd, gsi)
            .map_err(kvm_err(format!("KVM_IRQFD assign GSI {gsi}")))
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), PciError> {
        self.vm
            .unregister_irqfd(fd, gsi)
            .map_err(kvm_err(format!("KVM_IRQFD deassign GSI {gsi}")))
    }

    fn signal_msi(&self, msg: MsiMessage) -> Result<(), PciError> {
        let m = kvm_msi {
            address_lo: msg.address as u32,
            address_hi: (msg.address >> 32) as u32,
            data: msg.data,
            ..Default::default()
        };
        self.vm
            .signal_msi(m)
            .map(|_| ())
            .map_err(kvm_err("KVM_SIGNAL_MSI"))
    }
}
