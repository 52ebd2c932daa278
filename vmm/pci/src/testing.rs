//! Recording fakes of [`MemorySlots`] and [`IrqRouter`] for tests (here and in the VMM):
//! they keep the state KVM would keep and log every call.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use crate::msix::MsiMessage;
use vmm_sys_util::eventfd::EventFd;

use crate::error::PciError;
use crate::hooks::{IrqRouter, MemorySlots, FIRST_MSI_GSI};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Map { slot: u32, gpa: u64, size: u64 },
    Unmap { slot: u32 },
    Route { gsi: u32, msg: MsiMessage },
    Unroute { gsi: u32 },
    Irqfd { gsi: u32, fd: i32 },
    UnIrqfd { gsi: u32, fd: i32 },
    SignalMsi(MsiMessage),
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    next_slot: u32,
    slots: BTreeMap<u32, (u64, u64, u64)>,
    next_gsi: u32,
    routes: BTreeMap<u32, MsiMessage>,
    irqfds: BTreeSet<(u32, i32)>,
}

/// One fake for both traits, so a test sees slot and interrupt calls in one order.
pub struct RecordingKvm {
    st: Mutex<State>,
}

impl Default for RecordingKvm {
    fn default() -> Self {
        RecordingKvm {
            st: Mutex::new(State {
                next_slot: 10,
                next_gsi: FIRST_MSI_GSI,
                ..Default::default()
            }),
        }
    }
}

impl RecordingKvm {
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn calls(&self) -> Vec<Call> {
        self.st().calls.clone()
    }
    pub fn clear_calls(&self) {
        self.st().calls.clear();
    }
    /// Live slots: slot -> (gpa, size, hva).
    pub fn slots(&self) -> BTreeMap<u32, (u64, u64, u64)> {
        self.st().slots.clone()
    }
    pub fn routes(&self) -> BTreeMap<u32, MsiMessage> {
        self.st().routes.clone()
    }
    /// Attached irqfds as (gsi, fd).
    pub fn irqfds(&self) -> BTreeSet<(u32, i32)> {
        self.st().irqfds.clone()
    }
}

fn busy(op: &str) -> PciError {
    PciError::Kvm {
        op: op.into(),
        source: std::io::Error::from_raw_os_error(libc::EEXIST),
    }
}

impl MemorySlots for RecordingKvm {
    unsafe fn map(&self, gpa: u64, size: u64, hva: u64) -> Result<u32, PciError> {
        let mut st = self.st();
        // KVM refuses overlapping slots (EEXIST).
        if st
            .slots
            .values()
            .any(|(g, s, _)| *g < gpa + size && gpa < g + s)
        {
            return Err(busy("KVM_SET_USER_MEMORY_REGION"));
        }
        let slot = st.next_slot;
        st.next_slot += 1;
        st.slots.insert(slot, (gpa, size, hva));
        st.calls.push(Call::Map { slot, gpa, size });
        Ok(slot)
    }
    fn unmap(&self, slot: u32) -> Result<(), PciError> {
        let mut st = self.st();
        st.slots.remove(&slot);
        st.calls.push(Call::Unmap { slot });
        Ok(())
    }
}

impl IrqRouter for RecordingKvm {
    fn allocate_gsis(&self, count: u32) -> Result<u32, PciError> {
        let mut st = self.st();
        let b = st.next_gsi;
        st.next_gsi += count;
        Ok(b)
    }
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), PciError> {
        let mut st = self.st();
        st.routes.insert(gsi, msg);
        st.calls.push(Call::Route { gsi, msg });
        Ok(())
    }
    fn remove_route(&self, gsi: u32) -> Result<(), PciError> {
        let mut st = self.st();
        st.routes.remove(&gsi);
        st.calls.push(Call::Unroute { gsi });
        Ok(())
    }
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), PciError> {
        let mut st = self.st();
        // KVM refuses the same eventfd twice (EBUSY).
        if !st.irqfds.insert((gsi, fd.as_raw_fd())) {
            return Err(busy("KVM_IRQFD"));
        }
        st.calls.push(Call::Irqfd {
            gsi,
            fd: fd.as_raw_fd(),
        });
        Ok(())
    }
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), PciError> {
        let mut st = self.st();
        st.irqfds.remove(&(gsi, fd.as_raw_fd()));
        st.calls.push(Call::UnIrqfd {
            gsi,
            fd: fd.as_raw_fd(),
        });
        Ok(())
    }
    fn signal_msi(&self, msg: MsiMessage) -> Result<(), PciError> {
        self.st().calls.push(Call::SignalMsi(msg));
        Ok(())
    }
}

/// The config space of an igbvf-like VF, as the tests, examples and the pci_bus fuzz target
/// feed the VFIO mock: 64-bit prefetchable BAR0 (16 KiB) and 64-bit BAR3 (16 KiB), MSI-X
/// (3 vectors, table at BAR3+0, PBA at BAR3+0x2000) then PCIe; multi-function bit set.
pub fn igbvf_config() -> Vec<u8> {
    let mut c = vec![0u8; 256];
    c[0..4].copy_from_slice(&0x10ca_8086u32.to_le_bytes());
    c[0x06] = 0x10; // capabilities list
    c[0x08..0x0c].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    c[0x0e] = 0x80;
    c[0x10] = 0x0c; // BAR0: 64-bit prefetchable memory
    c[0x1c] = 0x04; // BAR3: 64-bit memory
    c[0x34] = 0x70;
    c[0x70] = 0x11; // MSI-X
    c[0x71] = 0xa0;
    c[0x72] = 2; // 3 vectors
    c[0x74..0x78].copy_from_slice(&3u32.to_le_bytes());
    c[0x78..0x7c].copy_from_slice(&0x2003u32.to_le_bytes());
    c[0xa0] = 0x10; // PCIe
    c
}
