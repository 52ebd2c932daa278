//! One descriptor chain, checked before a device touches it: every descriptor lies in
//! guest RAM, is not empty and not larger than a device segment, the chain ends (no loop,
//! no index past the table, no unreadable descriptor), and the device-writable buffers
//! follow the readable ones (virtio 1.2, 2.7.4.2).

use std::ops::Deref;
use thiserror::Error;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("chain at head {head} does not end: a loop, a next index past the table, or an unreadable descriptor")]
    Unterminated { head: u16 },
    #[error("chain at head {head}: descriptor of length 0 at {addr:#x}")]
    Empty { head: u16, addr: u64 },
    #[error("chain at head {head}: descriptor of {len} bytes, above the {max}-byte segment limit")]
    Oversized { head: u16, len: u32, max: u32 },
    #[error("chain at head {head}: [{addr:#x}, +{len:#x}) is not guest RAM")]
    OutsideRam { head: u16, addr: u64, len: u32 },
    #[error("chain at head {head}: a device-readable descriptor after a device-writable one")]
    Order { head: u16 },
    #[error("chain at head {head}: {what}")]
    Request { head: u16, what: &'static str },
}

/// Guest buffers (address, length) that all lie in guest RAM, read or written as one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segments(Vec<(GuestAddress, u32)>);

impl Segments {
    pub fn len(&self) -> u64 {
        self.0.iter().map(|s| u64::from(s.1)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pieces of [offset, offset + len) as (guest address, length).
    fn pieces(&self, mut offset: u64, mut len: u64) -> Vec<(GuestAddress, usize)> {
        let mut out = Vec::new();
        for &(addr, slen) in &self.0 {
            let slen = u64::from(slen);
            if len == 0 {
                break;
            }
            if offset >= slen {
                offset -= slen;
                continue;
            }
            let n = (slen - offset).min(len);
            out.push((GuestAddress(addr.0 + offset), n as usize));
            offset = 0;
            len -= n;
        }
        out
    }

    /// Copies guest bytes from `offset` into `buf`; false if the segments end first or RAM
    /// refuses (the ranges were checked, so only a shrunken RAM could).
    pub fn read_at(&self, mem: &GuestMemoryMmap, offset: u64, buf: &mut [u8]) -> bool {
        let mut done = 0;
        for (a, n) in self.pieces(offset, buf.len() as u64) {
            if mem.read_slice(&mut buf[done..done + n], a).is_err() {
                return false;
            }
            done += n;
        }
        done == buf.len()
    }

    pub fn write_at(&self, mem: &GuestMemoryMmap, offset: u64, buf: &[u8]) -> bool {
        let mut done = 0;
        for (a, n) in self.pieces(offset, buf.len() as u64) {
            if mem.write_slice(&buf[done..done + n], a).is_err() {
                return false;
            }
            done += n;
        }
        done == buf.len()
    }
}

/// A checked chain: its head (for the used ring) and its two halves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub readable: Segments,
    pub writable: Segments,
}

impl Chain {
    /// Walks `chain`, checking each descriptor; `max_segment` bounds one descriptor's length.
    pub fn check<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
        max_segment: u32,
    ) -> Result<Chain, ChainError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let head = chain.head_index();
        let mut out = Chain {
            head,
            readable: Segments::default(),
            writable: Segments::default(),
        };
        // The crate's iterator stops quietly (returns None) on a loop (its TTL is the queue
        // size), an index past the table or an unreadable descriptor: a chain whose last
        // descriptor still says NEXT did not end.
        let mut ended = false;
        for d in chain {
            let (addr, len) = (d.addr(), d.len());
            if len == 0 {
                return Err(ChainError::Empty { head, addr: addr.0 });
            }
            if len > max_segment {
                return Err(ChainError::Oversized {
                    head,
                    len,
                    max: max_segment,
                });
            }
            let perm = if d.is_write_only() {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if !mem.check_range(addr, len as usize, perm) {
                return Err(ChainError::OutsideRam {
                    head,
                    addr: addr.0,
                    len,
                });
            }
            if d.is_write_only() {
                out.writable.0.push((addr, len));
            } else if out.writable.is_empty() {
                out.readable.0.push((addr, len));
            } else {
                return Err(ChainError::Order { head });
            }
            ended = !d.has_next();
        }
        if !ended {
            return Err(ChainError::Unterminated { head });
        }
        Ok(out)
    }
}
