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
