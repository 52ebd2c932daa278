//! The virtio-vsock device (virtio 1.2, 5.10) behind the PCI transport: rx, tx and event
//! queues, configuration = the guest's CID. tx chains are guest packets for the muxer;
//! rx chains are filled with what the muxer owes the guest; the event queue is never used
//! (no transport reset events: the device is not migrated).

use super::muxer::Muxer;
use super::packet::{HDR_LEN, MAX_PAYLOAD};
use crate::devices::virtio::chain::{Chain, ChainError};
use crate::devices::virtio::VirtioDevice;
use std::sync::{Arc, Mutex, MutexGuard};
use vm_memory::GuestMemoryMmap;

pub const RX: usize = 0;
pub const TX: usize = 1;
pub const EVENT: usize = 2;
const QUEUE_SIZE: u16 = 256;
/// Linux puts a whole packet (header and up to 64 KiB) in one descriptor on its tx side.
pub const SEGMENT_MAX: u32 = MAX_PAYLOAD + HDR_LEN as u32 + 4096;

pub struct VsockDevice {
    muxer: Arc<Mutex<Muxer>>,
    cid: u64,
}

impl VsockDevice {
    pub fn new(muxer: Arc<Mutex<Muxer>>) -> Self {
        let cid = lock(&muxer).guest_cid();
        VsockDevice { muxer, cid }
    }

    fn muxer(&self) -> MutexGuard<'_, Muxer> {
        lock(&self.muxer)
    }
}

/// A thread that panicked with the lock held left the muxer in a state it can still be
/// reset from; the guest must not be able to stop the VMM through it.
pub fn lock(m: &Mutex<Muxer>) -> MutexGuard<'_, Muxer> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl VirtioDevice for VsockDevice {
    fn name(&self) -> String {
        format!("virtio-vsock cid {}", self.cid)
    }

    fn device_id(&self) -> u16 {
        crate::devices::virtio::DEVICE_ID_VSOCK
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn segment_max(&self) -> u32 {
        SEGMENT_MAX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| cfg.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }

    fn ready_for(&self, queue: usize) -> bool {
        match queue {
            RX => self.muxer().has_rx(),
            TX => true,
            _ => false,
        }
    }

    fn process(
        &mut self,
        queue: usize,
        chain: Chain,
        mem: &GuestMemoryMmap,
    ) -> Result<u32, ChainError> {
        match queue {
            TX => self.muxer().guest_tx(&chain, mem).map(|()| 0),
            RX => {
                let room = chain.writable.len();
                if room < HDR_LEN as u64 {
                    return Err(ChainError::Request {
                        head: chain.head,
                        what: "rx buffer shorter than a vsock packet header",
                    });
                }
                let room = (room - HDR_LEN as u64).min(u64::from(MAX_PAYLOAD)) as usize;
                let mut m = self.muxer();
                let Some((h, payload)) = m.next_rx(room) else {
                    return Ok(0);
                };
                if m.rx_starved {
                    m.rx_starved = false;
                    m.wake();
                }
                drop(m);
                let ok = chain.writable.write_at(mem, 0, &h.to_bytes())
                    && chain.writable.write_at(mem, HDR_LEN as u64, &payload);
                if !ok {
                    return Err(ChainError::Request {
                        head: chain.head,
                        what: "rx buffer not writable",
                    });
                }
                Ok((HDR_LEN + payload.len()) as u32)
            }
            // The event queue's buffers stay with the device (ready_for says no).
            _ => Ok(0),
        }
    }

    fn reset(&mut self) {
        self.muxer().reset_all();
    }
}
