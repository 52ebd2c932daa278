//! virtio 1.x devices on the guest's PCI bus (issues 15 and 16.4): the PCI transport
//! ([`pci`]) apart from each device ([`block`], [`vsock`]).
//!
//! The guest is untrusted. Everything it hands a device (queue sizes and addresses,
//! descriptors, lengths) is checked against guest RAM before use ([`chain`]); a malformed
//! queue puts the device in DEVICE_NEEDS_RESET and it does nothing more until the driver
//! resets it. Nothing a guest writes stops the VMM or reaches outside guest RAM.
//!
//! Devices run on the vCPU thread that takes the notify write: the vCPU that kicked a
//! queue waits for its requests, which is what a job's synchronous reads of its root
//! filesystem and one tar stream of its output need. virtio-vsock also has an event thread
//! of its own ([`vsock::worker`]): host-to-guest data arrives without a kick.

pub mod attach;
pub mod block;
pub mod chain;
pub mod output;
pub mod pci;
pub mod plan;
pub mod vsock;

use thiserror::Error;
use vm_memory::GuestMemoryMmap;

/// virtio device IDs (virtio 1.2, section 5).
pub const DEVICE_ID_BLOCK: u16 = 2;
pub const DEVICE_ID_VSOCK: u16 = 19;

/// A chain or queue the device cannot use: the device must be reset before it runs again.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("queue {queue}: {source}")]
    Queue {
        queue: usize,
        #[source]
        source: chain::ChainError,
    },
    #[error("queue {queue}: available ring: {what}")]
    Ring { queue: usize, what: String },
}

/// What a device behind the transport implements.
pub trait VirtioDevice: Send {
    /// For messages: e.g. "virtio-blk hpmmap-root".
    fn name(&self) -> String;
    fn device_id(&self) -> u16;
    /// Feature bits the device offers (VIRTIO_F_VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    /// Maximum size of each queue (powers of two).
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// The longest descriptor the device takes; longer ones make the chain malformed.
    fn segment_max(&self) -> u32;
    /// Reads the device-specific configuration (bytes past its end read as zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Whether the device takes a chain of `queue` now; a chain stays available
    /// otherwise (a receive queue's buffers wait for something to receive).
    fn ready_for(&self, _queue: usize) -> bool {
        true
    }
    /// Serves one available chain of queue `queue`; returns the bytes written into the
    /// chain's device-writable buffers (the used length).
    fn process(
        &mut self,
        queue: usize,
        chain: chain::Chain,
        mem: &GuestMemoryMmap,
    ) -> Result<u32, chain::ChainError>;
    /// The driver reset the device.
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests;
