//! The connection state machine and its credit, driven as the guest and host clients drive
//! them: real Unix sockets, packets as a guest driver sends them (no KVM).

use super::connection::{State, BUF_ALLOC};
use super::muxer::{Muxer, MAX_PENDING};
use super::packet::*;
use super::unix::{Listener, SocketFile};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

const CID: u64 = 3;

struct Rig {
    m: Muxer,
    dir: PathBuf,
    path: PathBuf,
    _file: SocketFile,
}

impl Rig {
    fn new(name: &str) -> Rig {
        let dir = std::env::temp_dir().join(format!("hpmmap-vsock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let (l, file) = Listener::bind(&path).unwrap();
        let m = Muxer::new(CID, l, EventFd::new(libc::EFD_NONBLOCK).unwrap());
        Rig {
            m,
            dir,
            path,
            _file: file,
        }
    }

    fn pump(&mut self) {
        self.m.pump(Instant::now());
    }

    /// Everything owed to the guest, as rx buffers of `room` payload bytes take it.
    fn rx(&mut self, room: usize) -> Vec<(Header, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some(p) = self.m.next_rx(room) {
            v.push(p);
        }
        v
    }

    fn guest(&mut self, h: Header, payload: &[u8]) {
        let p = payload.to_vec();
        self.m.guest_packet(h, p.len() as u64, |b| {
            b.copy_from_slice(&p[..b.len()]);
            true
        });
    }

    /// A host client that connected and asked for the guest's `port`; the guest's
    /// REQUEST is returned.
    fn client(&mut self, port: u32) -> (UnixStream, Header) {
        let mut c = UnixStream::connect(&self.path).unwrap();
        c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        self.pump();
        let rx = self.rx(4096);
        assert_eq!(rx.len(), 1, "{rx:?}");
        let req = rx[0].0;
        assert_eq!(req.op, Op::Request as u16);
        assert_eq!(
            (req.src_cid, req.dst_cid, req.dst_port),
            (HOST_CID, CID, port)
        );
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (c, req)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A guest packet on the connection the host's `req` opened.
fn reply(req: &Header, op: Op, len: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: req.dst_port,
        dst_port: req.src_port,
        len,
        type_: TYPE_STREAM,
        op: op as u16,
        flags: 0,
        buf_alloc,
        fwd_cnt,
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn host_connect_is_answered_ok_and_carries_bytes_both_ways() {
    let mut r = Rig::new("both-ways");
    let (mut c, req) = r.client(1234);
    assert!(
        req.src_port >= 1 << 30,
        "host ports of CONNECTs: {}",
        req.src_port
    );
    r.guest(reply(&req, Op::Response, 0, 64 * 1024, 0), &[]);
    r.pump();
    let mut ok = [0u8; 64];
    let n = c.read(&mut ok).unwrap();
    assert_eq!(
        std::str::from_utf8(&ok[..n]).unwrap(),
        format!("OK {}\n", req.src_port)
    );
    // Host to guest: read within the guest's credit, cut to its rx buffers.
    let data = pattern(10_000);
    c.write_all(&data).unwrap();
    r.m.ready(2, false);
    r.pump();
    let rx = r.rx(4096);
    let got: Vec<u8> = rx.iter().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(got, data);
    assert!(rx.iter().all(|(h, p)| h.op == Op::Rw as u16
        && h.len as usize == p.len()
        && p.len() <= 4096
        && h.buf_alloc == BUF_ALLOC));
    // Guest to host.
    let back = pattern(3000);
    r.guest(reply(&req, Op::Rw, 3000, 64 * 1024, 10_000), &back);
    r.pump();
    let mut b = vec![0u8; 3000];
    c.read_exact(&mut b).unwrap();
    assert_eq!(b, back);
    assert_eq!(r.m.state(req.src_port, 1234), Some(State::Established));
}

#[test]
fn a_refused_connect_closes_the_client_and_a_silent_guest_times_out() {
    let mut r = Rig::new("refused");
    let (mut c, req) = r.client(4321);
    r.guest(reply(&req, Op::Rst, 0, 0, 0), &[]);
    r.pump();
    let mut b = [0u8; 8];
    assert_eq!(c.read(&mut b).unwrap(), 0, "closed, no OK line");
    assert!(r.rx(4096).is_empty(), "a RST is not answered");
    assert_eq!(r.m.connections(), 0);
    // A guest that never answers: the client is closed at the deadline, the guest RST.
    let (mut c, req) = r.client(99);
    r.m.pump(Instant::now() + super::muxer::CONNECT_TIMEOUT);
    assert_eq!(c.read(&mut b).unwrap(), 0);
    let rx = r.rx(4096);
    assert_eq!(rx.len(), 1);
    assert_eq!(
        (rx[0].0.op, rx[0].0.src_port),
        (Op::Rst as u16, req.src_port)
    );
    // A client that sends garbage is dropped.
    let mut g = UnixStream::connect(&r.path).unwrap();
    g.write_all(b"HELLO\n").unwrap();
    r.pump();
    g.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Closed with its line unread: a reset rather than an EOF.
    match g.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("not closed: {other:?}"),
    }
    assert!(r.rx(4096).is_empty());
}

#[test]
fn host_to_guest_waits_for_credit_and_drops_nothing() {
    let mut r = Rig::new("credit-in");
    let (mut c, req) = r.client(7);
    r.guest(reply(&req, Op::Response, 0, 1000, 0), &[]);
    r.pump();
    let mut ok = [0u8; 32];
    let _ = c.read(&mut ok).unwrap();
    let data = pattern(5000);
    c.write_all(&data).unwrap();
    let mut got = Vec::new();
    let mut fwd = 0u32;
    for _ in 0..20 {
        r.m.ready(2, false);
        r.pump();
        let rx = r.rx(4096);
        let n: usize = rx.iter().map(|(_, p)| p.len()).sum();
        assert!(n <= 1000, "at most the guest's credit: {n}");
        got.extend(rx.into_iter().flat_map(|(_, p)| p));
        if got.len() == data.len() {
            break;
        }
        // Nothing more until the guest consumed and says so.
        r.pump();
        assert!(r.rx(4096).is_empty(), "no credit left");
        fwd += n as u32;
        r.guest(reply(&req, Op::CreditUpdate, 0, 1000, fwd), &[]);
    }
    assert_eq!(got, data);
}

#[test]
fn guest_past_its_credit_is_reset_and_a_slow_host_reader_stalls_the_guest() {
    let mut r = Rig::new("credit-out");
    let (c, req) = r.client(8);
    r.guest(reply(&req, Op::Response, 0, 4096, 0), &[]);
    r.pump();
    let _ = r.rx(4096);
    // The client never reads: the device holds BUF_ALLOC and the socket's own buffer,
    // and tells the guest no more credit than that.
    let chunk = vec![0x5au8; MAX_PAYLOAD as usize];
    let mut sent = 0u64;
    for _ in 0..64 {
        r.guest(reply(&req, Op::Rw, MAX_PAYLOAD, 4096, 0), &chunk);
        r.pump();
        if r.m.connection(req.src_port, 8).is_none() {
            break;
        }
        sent += u64::from(MAX_PAYLOAD);
    }
    // A guest honouring credit stops at fwd_cnt + BUF_ALLOC; this one went on and lost
    // the connection, having put at most its credit's worth into the VMM.
    assert!(r.m.connection(req.src_port, 8).is_none(), "reset");
    let rx = r.rx(4096);
    assert!(rx.iter().any(|(h, _)| h.op == Op::Rst as u16), "{rx:?}");
    assert!(sent >= u64::from(BUF_ALLOC), "{sent}");
    drop(c);
}

#[test]
fn guest_connects_to_a_host_listener_or_is_refused() {
    let mut r = Rig::new("guest-connect");
    let side = UnixListener::bind(super::unix::port_path(&r.path, 5000)).unwrap();
    let req = Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 777,
        dst_port: 5000,
        len: 0,
        type_: TYPE_STREAM,
        op: Op::Request as u16,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    };
    r.guest(req, &[]);
    r.pump();
    let rx = r.rx(4096);
    assert_eq!(rx.len(), 1);
    assert_eq!(
        (rx[0].0.op, rx[0].0.src_port, rx[0].0.dst_port),
        (Op::Response as u16, 5000, 777)
    );
    let (mut s, _) = side.accept().unwrap();
    r.guest(
        Header {
            op: Op::Rw as u16,
            len: 5,
            ..req
        },
        b"hello",
    );
    r.pump();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    // Nobody on PATH_5001.
    r.guest(
        Header {
            dst_port: 5001,
            ..req
        },
        &[],
    );
    r.pump();
    let rx = r.rx(4096);
    assert_eq!((rx[0].0.op, rx[0].0.src_port), (Op::Rst as u16, 5001));
}

#[test]
fn half_close_both_ways_then_the_stream_ends() {
    let mut r = Rig::new("half-close");
    let (mut c, req) = r.client(9);
    r.guest(reply(&req, Op::Response, 0, 65536, 0), &[]);
    r.pump();
    let mut ok = [0u8; 32];
    let _ = c.read(&mut ok).unwrap();
    c.write_all(b"abc").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rx = Vec::new();
    for _ in 0..2 {
        r.m.ready(2, false);
        r.pump();
        rx.extend(r.rx(4096));
    }
    let ops: Vec<u16> = rx.iter().map(|(h, _)| h.op).collect();
    assert_eq!(ops, [Op::Rw as u16, Op::Shutdown as u16], "{rx:?}");
    assert_eq!(rx[1].0.flags, SHUTDOWN_SEND);
    // The guest answers, then closes its side: the client reads it all, then EOF.
    r.guest(reply(&req, Op::Rw, 3, 65536, 3), b"xyz");
    let mut sh = reply(&req, Op::Shutdown, 0, 65536, 3);
    sh.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    r.guest(sh, &[]);
    r.pump();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"xyz");
    let rx = r.rx(4096);
    assert_eq!(rx.len(), 1);
    assert_eq!(rx[0].0.op, Op::Rst as u16, "the final RST");
    assert_eq!(r.m.connections(), 0);
}

#[test]
fn a_client_that_goes_away_is_both_shutdowns_to_the_guest() {
    let mut r = Rig::new("hangup");
    let (mut c, req) = r.client(52);
    r.guest(reply(&req, Op::Response, 0, 65536, 0), &[]);
    r.pump();
    let mut ok = [0u8; 32];
    let _ = c.read(&mut ok).unwrap();
    drop(c);
    // What epoll reports for a peer that closed: hung up.
    r.m.ready(2, true);
    r.pump();
    let rx = r.rx(4096);
    assert_eq!(rx.len(), 1, "{rx:?}");
    assert_eq!(rx[0].0.op, Op::Shutdown as u16);
    assert_eq!(rx[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    // The guest resets (as Linux does once both are shut down): the connection goes.
    r.guest(reply(&req, Op::Rst, 0, 65536, 0), &[]);
    r.pump();
    assert_eq!(r.m.connections(), 0);
    assert!(r.rx(4096).is_empty());
}

#[test]
fn malformed_packets_get_rst_or_nothing_and_never_unbounded_state() {
    let mut r = Rig::new("malformed");
    let base = Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 1,
        dst_port: 2,
        len: 0,
        type_: TYPE_STREAM,
        op: Op::Rw as u16,
        flags: 0,
        buf_alloc: 0,
        fwd_cnt: 0,
    };
    // RW on no connection, unknown op, bad type, length past the chain: a RST each.
    r.guest(base, &[]);
    r.guest(Header { op: 42, ..base }, &[]);
    r.guest(Header { type_: 2, ..base }, &[]);
    r.m.guest_packet(Header { len: 100, ..base }, 10, |_| unreachable!());
    let rx = r.rx(4096);
    assert_eq!(rx.len(), 4);
    assert!(rx
        .iter()
        .all(|(h, _)| h.op == Op::Rst as u16 && h.dst_port == 1));
    // A forged source CID and a RST on nothing: no answer.
    r.guest(Header { src_cid: 9, ..base }, &[]);
    r.guest(
        Header {
            op: Op::Rst as u16,
            ..base
        },
        &[],
    );
    assert!(r.rx(4096).is_empty());
    // A guest that floods and never reads its rx queue: the answers are capped.
    for _ in 0..(MAX_PENDING + 500) {
        r.guest(base, &[]);
    }
    assert_eq!(r.rx(4096).len(), MAX_PENDING);
    // Connection requests past the limit are refused, not queued.
    for p in 0..(super::muxer::MAX_CONNECTIONS as u32 + 10) {
        r.guest(
            Header {
                op: Op::Request as u16,
                src_port: 10_000 + p,
                ..base
            },
            &[],
        );
    }
    let refused = r.rx(4096).len();
    assert_eq!(refused, 10);
    r.pump();
    assert_eq!(r.m.connections(), 0, "no PATH_2 listener");
}

/// The device behind the PCI transport, driven through BAR accesses as Linux's
/// virtio_vsock does: three queues, a packet on tx, a buffer on rx.
mod transport {
    use super::*;
    use crate::devices::virtio::pci::{VirtioPci, DEVICE, NOTIFY, NOTIFY_MULTIPLIER};
    use crate::devices::virtio::vsock::device::{VsockDevice, RX, TX};
    use hpmmap_pci::testing::RecordingKvm;
    use hpmmap_pci::PciDevice;
    use std::sync::{Arc, Mutex};
    use virtio_bindings::virtio_config::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const QSIZE: u16 = 16;
    /// Queue q's rings at RINGS + q * 0x3000 (desc, avail, used one page apart).
    const RINGS: u64 = 0x1_0000;
    const BUF: u64 = 0x8_0000;

    struct Drv {
        t: VirtioPci,
        mem: GuestMemoryMmap,
        avail: [u16; 3],
        rig: Rig,
        muxer: Arc<Mutex<Muxer>>,
    }

    impl Drv {
        fn new(name: &str) -> Drv {
            let rig = Rig::new(name);
            let (l, _f) = Listener::bind(&rig.dir.join("t.sock")).unwrap();
            let muxer = Arc::new(Mutex::new(Muxer::new(
                CID,
                l,
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            )));
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
            let kvm = Arc::new(RecordingKvm::default());
            let dev = VsockDevice::new(muxer.clone());
            let mut t = VirtioPci::new(Box::new(dev), mem.clone(), kvm);
            t.place_bar(0, 0xC000_0000);
            t.config_write(0x04, 2, 0x6);
            let mut d = Drv {
                t,
                mem,
                avail: [0; 3],
                rig,
                muxer,
            };
            d.init();
            d
        }
        fn w(&mut self, off: u64, len: usize, v: u64) {
            self.t.bar_write(0, off, &v.to_le_bytes()[..len]);
        }
        fn r(&mut self, off: u64, len: usize) -> u64 {
            let mut b = [0u8; 8];
            self.t.bar_read(0, off, &mut b[..len]);
            u64::from_le_bytes(b)
        }
        fn init(&mut self) {
            let ad = u64::from(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
            self.w(0x14, 1, 0);
            // Fresh rings, as a driver allocates after a reset.
            self.avail = [0; 3];
            self.mem
                .write_slice(&[0u8; 3 * 0x3000], GuestAddress(RINGS))
                .unwrap();
            self.w(0x14, 1, ad);
            self.w(0x08, 4, 1);
            self.w(0x0c, 4, 1); // VIRTIO_F_VERSION_1
            let fo = ad | u64::from(VIRTIO_CONFIG_S_FEATURES_OK);
            self.w(0x14, 1, fo);
            assert_eq!(self.r(0x12, 2), 3, "rx, tx, event");
            for q in 0..3u64 {
                let base = RINGS + q * 0x3000;
                self.w(0x16, 2, q);
                self.w(0x18, 2, u64::from(QSIZE));
                for (off, a) in [(0x20, base), (0x28, base + 0x1000), (0x30, base + 0x2000)] {
                    self.w(off, 4, a);
                    self.w(off + 4, 4, 0);
                }
                self.w(0x1c, 2, 1);
            }
            self.w(0x14, 1, fo | u64::from(VIRTIO_CONFIG_S_DRIVER_OK));
        }
        /// One descriptor at `addr` made available on queue q, then the kick.
        fn post(&mut self, q: usize, addr: u64, len: u32, writable: bool) {
            let base = RINGS + q as u64 * 0x3000;
            let head = self.avail[q] % QSIZE;
            let d = GuestAddress(base + u64::from(head) * 16);
            let flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            self.mem.write_obj(addr, d).unwrap();
            self.mem.write_obj(len, GuestAddress(d.0 + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(d.0 + 12)).unwrap();
            let slot = base + 0x1000 + 4 + 2 * u64::from(head);
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.avail[q] = self.avail[q].wrapping_add(1);
            self.mem
                .write_obj(self.avail[q], GuestAddress(base + 0x1000 + 2))
                .unwrap();
            self.w(
                NOTIFY + q as u64 * u64::from(NOTIFY_MULTIPLIER),
                2,
                q as u64,
            );
        }
        fn used(&self, q: usize) -> (u16, u32) {
            let base = RINGS + q as u64 * 0x3000 + 0x2000;
            let idx: u16 = self.mem.read_obj(GuestAddress(base + 2)).unwrap();
            let last = u64::from(idx.wrapping_sub(1) % QSIZE);
            let len: u32 = self
                .mem
                .read_obj(GuestAddress(base + 4 + 8 * last + 4))
                .unwrap();
            (idx, len)
        }
        fn needs_reset(&mut self) -> bool {
            self.r(0x14, 1) as u32 & VIRTIO_CONFIG_S_NEEDS_RESET != 0
        }
    }

    #[test]
    fn config_is_the_cid_and_packets_flow_through_the_queues() {
        let mut d = Drv::new("transport");
        assert_eq!(d.r(DEVICE, 8), CID);
        assert_eq!(d.r(DEVICE + 4, 4), 0);
        // An rx buffer waits while nothing is owed.
        d.post(RX, BUF + 0x1000, 4096, true);
        assert_eq!(d.used(RX).0, 0, "kept until there is something to receive");
        // A REQUEST to a host port nobody listens on.
        let req = Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 41,
            dst_port: 6000,
            type_: TYPE_STREAM,
            op: Op::Request as u16,
            buf_alloc: 65536,
            ..Default::default()
        };
        d.mem
            .write_slice(&req.to_bytes(), GuestAddress(BUF))
            .unwrap();
        d.post(TX, BUF, HDR_LEN as u32, false);
        assert_eq!(d.used(TX), (1, 0));
        d.muxer.lock().unwrap().pump(Instant::now());
        // What the event thread does after its round.
        d.t.notify(RX);
        let (idx, len) = d.used(RX);
        assert_eq!((idx, len), (1, HDR_LEN as u32));
        let mut hb = [0u8; HDR_LEN];
        d.mem
            .read_slice(&mut hb, GuestAddress(BUF + 0x1000))
            .unwrap();
        let h = Header::parse(&hb).unwrap();
        assert_eq!((h.op, h.src_port, h.dst_port), (Op::Rst as u16, 6000, 41));
        assert!(!d.needs_reset());
        let _ = &d.rig;
    }

    #[test]
    fn chains_too_short_for_a_header_need_a_reset() {
        let mut d = Drv::new("short");
        d.post(TX, BUF, 20, false);
        assert!(d.needs_reset(), "tx chain shorter than a header");
        d.init();
        assert!(!d.needs_reset());
        // A RST owed, and an rx buffer that cannot hold its header.
        let bad = Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 1,
            dst_port: 2,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            ..Default::default()
        };
        d.mem
            .write_slice(&bad.to_bytes(), GuestAddress(BUF))
            .unwrap();
        d.post(TX, BUF, HDR_LEN as u32, false);
        assert!(!d.needs_reset(), "a bad packet costs a RST, not the device");
        d.post(RX, BUF + 0x1000, 20, true);
        assert!(d.needs_reset(), "rx buffer shorter than a header");
    }
}
