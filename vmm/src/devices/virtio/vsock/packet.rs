//! The virtio-vsock packet header (virtio 1.2, 5.10.6) and the checks a guest's packet must
//! pass before the device acts on it. Pure: no guest memory, no sockets (the fuzz target
//! drives [`check`] directly).

use thiserror::Error;

/// Bytes of `struct virtio_vsock_hdr` (packed, little-endian).
pub const HDR_LEN: usize = 44;
/// The host's CID (VMADDR_CID_HOST).
pub const HOST_CID: u64 = 2;
/// The only socket type this device carries.
pub const TYPE_STREAM: u16 = 1;
/// The longest payload the device accepts in one packet, as Linux's
/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE.
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// SHUTDOWN flags: the sender will receive no more, and will send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    pub fn from_u16(v: u16) -> Option<Op> {
        Some(match v {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"))
}

impl Header {
    /// The header at the start of `b`, or None when `b` is shorter than a header.
    pub fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HDR_LEN {
            return None;
        }
        Some(Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        })
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// A host-to-guest packet on the connection (host `local`, guest `peer`).
    pub fn to_guest(guest_cid: u64, local: u32, peer: u32, op: Op) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: local,
            dst_port: peer,
            type_: TYPE_STREAM,
            op: op as u16,
            ..Default::default()
        }
    }
}

/// Why a guest packet is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Reject {
    /// Not from this guest's CID: dropped without a reply (it cannot be answered).
    #[error("source CID {0} is not the guest's")]
    Source(u64),
    #[error("destination CID {0} is not the host's")]
    Destination(u64),
    #[error("socket type {0} (only stream is supported)")]
    Type(u16),
    #[error("unknown operation {0}")]
    Op(u16),
    #[error("payload length {len} above what the chain holds ({have}) or the {max}-byte limit")]
    Length { len: u32, have: u64, max: u32 },
}

impl Reject {
    /// Whether the guest is told with a RST (never in reply to a RST, nor to a forged
    /// source).
    pub fn answer(&self, h: &Header) -> bool {
        !matches!(self, Reject::Source(_)) && h.op != Op::Rst as u16
    }
}

/// A guest packet the device may act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub hdr: Header,
    pub op: Op,
}

/// Checks a guest packet whose chain holds `have` readable bytes after the header.
pub fn check(hdr: Header, have: u64, guest_cid: u64) -> Result<Checked, Reject> {
    if hdr.src_cid != guest_cid {
        return Err(Reject::Source(hdr.src_cid));
    }
    if hdr.dst_cid != HOST_CID {
        return Err(Reject::Destination(hdr.dst_cid));
    }
    if hdr.type_ != TYPE_STREAM {
        return Err(Reject::Type(hdr.type_));
    }
    let op = Op::from_u16(hdr.op).ok_or(Reject::Op(hdr.op))?;
    // Only RW carries a payload; a length on any other op is ignored by Linux too, but it
    // must still fit what the guest handed over.
    if hdr.len > MAX_PAYLOAD || u64::from(hdr.len) > have {
        return Err(Reject::Length {
            len: hdr.len,
            have,
            max: MAX_PAYLOAD,
        });
    }
    Ok(Checked { hdr, op })
}

/// The RST answering a refused or unknown packet: ports swapped, nothing else.
pub fn rst_for(hdr: &Header, guest_cid: u64) -> Header {
    Header::to_guest(guest_cid, hdr.dst_port, hdr.src_port, Op::Rst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn header_round_trips_little_endian() {
        let h = rw(12);
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(Header::parse(&b), Some(h));
        assert_eq!(Header::parse(&b[..HDR_LEN - 1]), None);
    }

    #[test]
    fn checks_refuse_what_the_device_cannot_act_on() {
        assert_eq!(check(rw(12), 12, 3).unwrap().op, Op::Rw);
        let e = check(rw(13), 12, 3).unwrap_err();
        assert!(matches!(e, Reject::Length { len: 13, .. }), "{e}");
        assert!(e.answer(&rw(13)));
        let e = check(rw(MAX_PAYLOAD + 1), u64::MAX, 3).unwrap_err();
        assert!(matches!(e, Reject::Length { .. }));
        let forged = Header {
            src_cid: 4,
            ..rw(0)
        };
        let e = check(forged, 0, 3).unwrap_err();
        assert_eq!(e, Reject::Source(4));
        assert!(!e.answer(&forged), "a forged source gets no reply");
        let e = check(
            Header {
                dst_cid: 7,
                ..rw(0)
            },
            0,
            3,
        )
        .unwrap_err();
        assert_eq!(e, Reject::Destination(7));
        let e = check(Header { type_: 2, ..rw(0) }, 0, 3).unwrap_err();
        assert_eq!(e, Reject::Type(2));
        let unknown = Header { op: 99, ..rw(0) };
        assert_eq!(check(unknown, 0, 3).unwrap_err(), Reject::Op(99));
        let bad_rst = Header {
            op: Op::Rst as u16,
            type_: 9,
            ..rw(0)
        };
        assert!(!check(bad_rst, 0, 3).unwrap_err().answer(&bad_rst));
        let r = rst_for(&rw(0), 3);
        assert_eq!((r.src_port, r.dst_port, r.op), (52, 1000, Op::Rst as u16));
        assert_eq!((r.src_cid, r.dst_cid), (HOST_CID, 3));
    }
}
