//! virtio-vsock's guest side (vmm/src/devices/virtio/vsock): any sequence of guest packets
//! (header fields biased towards this guest's CID, the host's, the stream type and the
//! seven ops; any length against any bytes the chain holds), rx buffers of any size, host
//! clients sending commands, and the event thread's socket work. Checked: no panic; an rx
//! packet never carries more than its buffer's room nor more than 64 KiB, and says so in
//! its length; the device never holds more than its connection limit; what is owed to a
//! guest that never reads stays bounded.
#![no_main]
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use hpmmap_vmm::devices::virtio::vsock::muxer::{Muxer, MAX_CONNECTIONS, MAX_PENDING};
use hpmmap_vmm::devices::virtio::vsock::packet::{Header, HOST_CID, MAX_PAYLOAD, TYPE_STREAM};
use hpmmap_vmm::devices::virtio::vsock::unix::Listener;
use vmm_sys_util::eventfd::EventFd;

const CID: u64 = 3;

#[derive(Arbitrary, Debug)]
enum Cid {
    Guest,
    Host,
    Other(u64),
}

#[derive(Arbitrary, Debug)]
enum Step {
    Packet {
        src: Cid,
        dst: Cid,
        src_port: u8,
        dst_port: u8,
        len: u32,
        have: u32,
        stream: bool,
        op: u8,
        flags: u8,
        buf_alloc: u32,
        fwd_cnt: u32,
    },
    Rx {
        room: u32,
    },
    Client {
        line: Vec<u8>,
        data: Vec<u8>,
    },
    /// The event thread's round; `hup`: epoll said the sockets hung up.
    Pump {
        hup: bool,
    },
}

fn cid(c: &Cid) -> u64 {
    match c {
        Cid::Guest => CID,
        Cid::Host => HOST_CID,
        Cid::Other(v) => *v,
    }
}

static N: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|steps: Vec<Step>| {
    let dir = hpmmap_fuzz::scratch("vsock");
    let path = dir.join(format!("v{}.sock", N.fetch_add(1, Ordering::Relaxed)));
    let (l, _file) = Listener::bind(&path).expect("bind");
    let mut m = Muxer::new(CID, l, EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
    let mut clients = Vec::new();
    let mut owed = 0usize;
    for s in steps.iter().take(512) {
        match s {
            Step::Packet {
                src,
                dst,
                src_port,
                dst_port,
                len,
                have,
                stream,
                op,
                flags,
                buf_alloc,
                fwd_cnt,
            } => {
                let h = Header {
                    src_cid: cid(src),
                    dst_cid: cid(dst),
                    // Few ports, so packets meet the connections they name.
                    src_port: u32::from(*src_port % 8),
                    dst_port: u32::from(*dst_port % 8) + (1 << 30) * u32::from(*dst_port >= 128),
                    len: *len % (2 * MAX_PAYLOAD),
                    type_: if *stream { TYPE_STREAM } else { 2 },
                    op: u16::from(*op % 9),
                    flags: u32::from(*flags % 4),
                    buf_alloc: *buf_alloc,
                    fwd_cnt: *fwd_cnt,
                };
                let have = u64::from(*have % (2 * MAX_PAYLOAD));
                m.guest_packet(h, have, |b| {
                    assert!(b.len() as u64 <= have, "read past the chain");
                    b.fill(0x5a);
                    true
                });
                owed += 1;
            }
            Step::Rx { room } => {
                let room = (*room % (2 * MAX_PAYLOAD)) as usize;
                if let Some((h, p)) = m.next_rx(room) {
                    assert!(p.len() <= room && p.len() <= MAX_PAYLOAD as usize);
                    assert_eq!(h.len as usize, p.len());
                    assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, CID));
                }
            }
            Step::Client { line, data } => {
                if clients.len() < 16 {
                    if let Ok(mut c) = UnixStream::connect(&path) {
                        let _ = c.set_nonblocking(true);
                        let _ = c.write(line);
                        let _ = c.write(data);
                        clients.push(c);
                    }
                }
            }
            Step::Pump { hup } => {
                for i in 0..600 {
                    m.ready(i, *hup);
                }
                m.pump(Instant::now());
            }
        }
        assert!(m.connections() <= MAX_CONNECTIONS);
    }
    // A guest that never reads: what is owed stays bounded.
    let mut n = 0;
    while m.next_rx(4096).is_some() {
        n += 1;
        assert!(
            n <= MAX_PENDING + 64 * MAX_CONNECTIONS,
            "unbounded rx after {owed} packets"
        );
    }
});
