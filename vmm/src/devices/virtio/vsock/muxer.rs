//! All of the device's connections: guest packets dispatched to them (on the vCPU thread
//! that kicked the tx queue: memory copies only, no socket calls), socket work (accepting,
//! the CONNECT handshake, connecting to `PATH_<port>`, reading and writing) on the event
//! thread, and the packets owed to the guest, handed out one rx buffer at a time.
//!
//! Everything is bounded: at most [`MAX_CONNECTIONS`] connections and clients in their
//! handshake, at most [`MAX_PENDING`] RSTs and guest connection requests waiting (past
//! that, more are dropped: a guest that floods refused packets and never reads loses only
//! answers it ignores).

use super::connection::{Connection, Verdict};
use super::packet::{self, Checked, Header, Op, HDR_LEN};
use super::unix::{self, Command, Listener};
use crate::devices::virtio::chain::{Chain, ChainError};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub const MAX_CONNECTIONS: usize = 256;
pub const MAX_PENDING: usize = 1024;
/// How long the guest has to answer a host client's CONNECT (software KVM and nested
/// emulation are slow), and a client to send its command.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Host ports of host-initiated connections start here (as Firecracker's do), clear of the
/// ports host listeners are named by.
const LOCAL_PORT_BASE: u32 = 1 << 30;
/// epoll tokens: the listener, the wake eventfd, then sockets.
pub const TOKEN_LISTENER: u64 = 0;
pub const TOKEN_WAKE: u64 = 1;

struct Client {
    stream: UnixStream,
    deadline: Instant,
}

pub struct Muxer {
    guest_cid: u64,
    listener: Listener,
    wake: EventFd,
    conns: BTreeMap<u64, Connection>,
    ports: HashMap<(u32, u32), u64>,
    clients: BTreeMap<u64, Client>,
    rsts: VecDeque<Header>,
    guest_requests: VecDeque<Header>,
    next_token: u64,
    next_local: u32,
    /// Connection served last (round robin over the rx queue).
    cursor: u64,
    /// The rx queue ran out of buffers with packets still owed: sockets are not read until
    /// the guest gives buffers back.
    pub rx_starved: bool,
}

/// What one socket wants from epoll: its fd and (read, write); None: not watched (hung up).
pub struct Interest {
    pub token: u64,
    pub fd: RawFd,
    pub want: Option<(bool, bool)>,
}

impl Muxer {
    pub fn new(guest_cid: u64, listener: Listener, wake: EventFd) -> Self {
        Muxer {
            guest_cid,
            listener,
            wake,
            conns: BTreeMap::new(),
            ports: HashMap::new(),
            clients: BTreeMap::new(),
            rsts: VecDeque::new(),
            guest_requests: VecDeque::new(),
            next_token: 2,
            next_local: LOCAL_PORT_BASE,
            cursor: 0,
            rx_starved: false,
        }
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.listener.as_raw_fd()
    }

    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Tells the event thread to look again (a vCPU changed something it acts on).
    pub fn wake(&self) {
        let _ = self.wake.write(1);
    }

    pub fn drain_wake(&self) {
        let _ = self.wake.read();
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn push_rst(&mut self, h: Header) {
        if self.rsts.len() < MAX_PENDING {
            self.rsts.push_back(h);
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Drops a connection; the guest hears a RST unless it reset it itself.
    fn reset(&mut self, token: u64) {
        if let Some(c) = self.conns.remove(&token) {
            self.ports.remove(&(c.local, c.peer));
            if !c.closing {
                let gc = self.guest_cid;
                self.push_rst(Header::to_guest(gc, c.local, c.peer, Op::Rst));
            }
        }
    }

    /// The driver reset the device: every connection and everything owed goes.
    pub fn reset_all(&mut self) {
        self.conns.clear();
        self.ports.clear();
        self.clients.clear();
        self.rsts.clear();
        self.guest_requests.clear();
        self.rx_starved = false;
    }

    /// One chain from the tx queue. Only a chain too short for a header is the device's
    /// failure (the queue itself is malformed); a bad packet costs its connection.
    pub fn guest_tx(&mut self, chain: &Chain, mem: &GuestMemoryMmap) -> Result<(), ChainError> {
        let mut hb = [0u8; HDR_LEN];
        if chain.readable.len() < HDR_LEN as u64 || !chain.readable.read_at(mem, 0, &mut hb) {
            return Err(ChainError::Request {
                head: chain.head,
                what: "tx chain shorter than a vsock packet header",
            });
        }
        let hdr = Header::parse(&hb).expect("a full header");
        let have = chain.readable.len() - HDR_LEN as u64;
        let read = |buf: &mut [u8]| chain.readable.read_at(mem, HDR_LEN as u64, buf);
        self.guest_packet(hdr, have, read);
        self.wake();
        Ok(())
    }

    /// A guest packet: `have` payload bytes available, `read` copies them.
    pub fn guest_packet(&mut self, hdr: Header, have: u64, read: impl FnOnce(&mut [u8]) -> bool) {
        let key = (hdr.dst_port, hdr.src_port);
        let checked = match packet::check(hdr, have, self.guest_cid) {
            Ok(c) => c,
            Err(why) => {
                if why.answer(&hdr) {
                    if let Some(t) = self.ports.get(&key).copied() {
                        self.reset(t);
                    } else {
                        self.push_rst(packet::rst_for(&hdr, self.guest_cid));
                    }
                }
                return;
            }
        };
        let token = self.ports.get(&key).copied();
        match (checked.op, token) {
            (Op::Request, Some(t)) => self.reset(t),
            (Op::Request, None) => {
                let busy = self.conns.len() + self.clients.len() + self.guest_requests.len()
                    >= MAX_CONNECTIONS;
                if busy {
                    self.push_rst(packet::rst_for(&hdr, self.guest_cid));
                } else {
                    self.guest_requests.push_back(hdr);
                }
            }
            (Op::Rst, Some(t)) => {
                // The guest is gone from this connection: the socket still gets what was
                // buffered, the port pair is free again.
                self.ports.remove(&key);
                if let Some(c) = self.conns.get_mut(&t) {
                    c.closing = true;
                }
            }
            (Op::Rst, None) => {}
            (_, None) => self.push_rst(packet::rst_for(&hdr, self.guest_cid)),
            (_, Some(t)) => self.on_connection(t, &checked, read),
        }
    }

    fn on_connection(&mut self, t: u64, c: &Checked, read: impl FnOnce(&mut [u8]) -> bool) {
        let Some(conn) = self.conns.get_mut(&t) else {
            return;
        };
        if conn.guest_packet(c, read) == Verdict::Reset {
            self.reset(t);
        }
    }

    /// Socket work on the event thread: new clients, handshakes, the guest's connection
    /// requests, every connection's reads and writes, expired deadlines, finished streams.
    pub fn pump(&mut self, now: Instant) {
        self.accept(now);
        self.handshakes(now);
        while let Some(req) = self.guest_requests.pop_front() {
            let key = (req.dst_port, req.src_port);
            if self.ports.contains_key(&key) {
                self.push_rst(packet::rst_for(&req, self.guest_cid));
                continue;
            }
            match unix::connect(&self.listener.port_path(req.dst_port)) {
                Ok(s) => {
                    let t = self.token();
                    self.conns.insert(t, Connection::guest_initiated(s, &req));
                    self.ports.insert(key, t);
                }
                Err(_) => self.push_rst(packet::rst_for(&req, self.guest_cid)),
            }
        }
        let tokens: Vec<u64> = self.conns.keys().copied().collect();
        for t in tokens {
            let c = self.conns.get_mut(&t).expect("listed");
            let io = c.flush().and_then(|()| c.fill());
            let expired = c.deadline().is_some_and(|d| now >= d);
            let closing = c.closing;
            let finished = c.done() || (closing && c.flushed());
            match (io, expired, finished) {
                (Err(_), ..) | (_, true, _) => self.reset(t),
                (_, _, true) if closing => {
                    self.conns.remove(&t);
                }
                (_, _, true) => self.reset(t),
                _ => {}
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        loop {
            match self.listener.listener.accept() {
                Ok((s, _)) => {
                    if self.conns.len() + self.clients.len() >= MAX_CONNECTIONS
                        || s.set_nonblocking(true).is_err()
                    {
                        continue; // closed at once: the client sees EOF
                    }
                    let t = self.token();
                    self.clients.insert(
                        t,
                        Client {
                            stream: s,
                            deadline: now + CONNECT_TIMEOUT,
                        },
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn handshakes(&mut self, now: Instant) {
        let tokens: Vec<u64> = self.clients.keys().copied().collect();
        for t in tokens {
            let cl = self.clients.get_mut(&t).expect("listed");
            let cmd = match unix::read_command(&mut cl.stream) {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Command::Incomplete,
                Err(_) => Command::Bad,
            };
            match cmd {
                Command::Incomplete if now < cl.deadline => {}
                Command::Incomplete | Command::Bad => {
                    self.clients.remove(&t);
                }
                Command::Connect { port, .. } => {
                    let cl = self.clients.remove(&t).expect("listed");
                    let local = self.free_local_port(port);
                    let c =
                        Connection::host_initiated(cl.stream, local, port, now + CONNECT_TIMEOUT);
                    self.conns.insert(t, c);
                    self.ports.insert((local, port), t);
                }
            }
        }
    }

    fn free_local_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_local;
            self.next_local = self.next_local.checked_add(1).unwrap_or(LOCAL_PORT_BASE);
            if !self.ports.contains_key(&(p, peer)) {
                return p;
            }
        }
    }

    /// Marks sockets epoll reported: `hup` sockets are read to their end and not watched.
    pub fn ready(&mut self, token: u64, hup: bool) {
        if let Some(c) = self.conns.get_mut(&token) {
            c.readable = true;
            c.hup |= hup;
        }
    }

    /// Something is owed to the guest.
    pub fn has_rx(&self) -> bool {
        !self.rsts.is_empty() || self.conns.values().any(|c| c.has_rx())
    }

    /// The next packet for the guest, its payload at most `room` bytes: RSTs first, then
    /// the connections in turn.
    pub fn next_rx(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        if let Some(h) = self.rsts.pop_front() {
            return Some((h, Vec::new()));
        }
        let order: Vec<u64> = self
            .conns
            .range(self.cursor + 1..)
            .chain(self.conns.range(..=self.cursor))
            .map(|(t, _)| *t)
            .collect();
        for t in order {
            let gc = self.guest_cid;
            let c = self.conns.get_mut(&t).expect("listed");
            if let Some(p) = c.next_packet(gc, room) {
                self.cursor = t;
                return Some(p);
            }
        }
        None
    }

    /// Another round is due at once (a hung-up socket with bytes left, the rx queue not
    /// starved).
    pub fn more_to_read(&self) -> bool {
        !self.rx_starved && self.conns.values().any(|c| c.more_to_read())
    }

    /// The earliest deadline (a CONNECT awaiting the guest, a client's command).
    pub fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(|c| c.deadline());
        let clients = self.clients.values().map(|c| c.deadline);
        conns.chain(clients).min()
    }

    /// Every socket's wish for the event thread's epoll.
    pub fn interests(&self) -> Vec<Interest> {
        let conns = self.conns.iter().map(|(t, c)| Interest {
            token: *t,
            fd: c.stream.as_raw_fd(),
            want: (!c.hup).then(|| c.interest(self.rx_starved)),
        });
        let clients = self.clients.iter().map(|(t, c)| Interest {
            token: *t,
            fd: c.stream.as_raw_fd(),
            want: Some((true, false)),
        });
        conns.chain(clients).collect()
    }

    #[cfg(test)]
    pub fn connection(&self, local: u32, peer: u32) -> Option<&Connection> {
        self.ports
            .get(&(local, peer))
            .and_then(|t| self.conns.get(t))
    }

    #[cfg(test)]
    pub fn state(&self, local: u32, peer: u32) -> Option<super::connection::State> {
        self.connection(local, peer).map(|c| c.state)
    }
}
