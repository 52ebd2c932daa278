//! virtio-vsock with a Firecracker-style hybrid backend (issue 16.4): the guest (CID
//! [`GUEST_CID`]) talks stream sockets to the host, and the host side is Unix sockets.
//! `--vsock PATH`: host clients connect to PATH, write `CONNECT <port>\n` and get
//! `OK <host_port>\n` once the guest's listener accepted (the socket is closed if it
//! refused); the guest's connections to host port P reach the Unix listener `PATH_P`.
//!
//! Modules: [`packet`] (header and checks), [`connection`] (one stream's state and credit),
//! [`muxer`] (all connections), [`unix`] (the host sockets), [`device`] (the virtio
//! device), [`worker`] (the event thread that moves host-to-guest data without a kick).

pub mod connection;
pub mod device;
pub mod muxer;
pub mod packet;
pub mod unix;
pub mod worker;

#[cfg(test)]
mod tests;

use crate::devices::virtio::pci::VirtioPci;
use std::sync::{Arc, Mutex};

/// The guest's CID: one VM per VMM, so the first one a guest can have.
pub const GUEST_CID: u64 = 3;

/// The device on the bus and what its event thread needs.
pub struct Vsock {
    pub transport: Arc<Mutex<VirtioPci>>,
    pub muxer: Arc<Mutex<muxer::Muxer>>,
}
