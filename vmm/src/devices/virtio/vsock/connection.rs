//! One vsock stream between a host Unix socket and a guest port: what each side may still
//! send, the credit each side grants the other (buf_alloc / fwd_cnt, virtio 1.2 5.10.6.3),
//! and the control packets owed to the guest.
//!
//! Memory is bounded per connection: guest bytes wait in `to_host` only up to the
//! [`BUF_ALLOC`] the device advertised (a guest that sends past its credit is reset), and
//! host bytes are read from the socket only as far as the guest's credit allows, one
//! packet's worth at a time (`staged`). A slow reader on either side stalls its writer;
//! nothing is dropped.

use super::packet::{Checked, Header, Op, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// Bytes of guest data the device holds per connection (its buf_alloc).
pub const BUF_ALLOC: u32 = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A host client asked for the guest's port: REQUEST owed or sent, RESPONSE awaited.
    Connecting {
        deadline: Instant,
    },
    Established,
}

/// What the muxer does with the connection after a guest packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// The guest broke the protocol on this connection: RST it and close the socket.
    Reset,
}

pub struct Connection {
    pub stream: UnixStream,
    /// The host-side port and the guest's.
    pub local: u32,
    pub peer: u32,
    pub state: State,
    /// Written to the host client before any guest byte (the `OK <port>` line).
    greeting: Vec<u8>,
    to_host: VecDeque<u8>,
    /// Guest bytes written to the socket (modulo 2^32), and what the guest last heard.
    fwd_cnt: u32,
    reported_fwd: u32,
    /// Host bytes read for the guest and not yet put in an rx buffer.
    staged: Vec<u8>,
    staged_at: usize,
    /// Host bytes handed to the guest (staged included), and the guest's credit.
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The socket may have bytes (epoll said so; a read that would block clears it).
    pub readable: bool,
    /// The socket hung up: no more readiness from epoll, reads return what is left.
    pub hup: bool,
    host_eof: bool,
    host_write_shut: bool,
    guest_no_send: bool,
    guest_no_recv: bool,
    want_request: bool,
    want_response: bool,
    want_credit: bool,
    want_shutdown: u32,
    /// The guest reset the connection: the socket gets what is buffered, the guest nothing.
    pub closing: bool,
}

impl Connection {
    fn new(stream: UnixStream, local: u32, peer: u32, state: State) -> Self {
        Connection {
            stream,
            local,
            peer,
            state,
            greeting: Vec::new(),
            to_host: VecDeque::new(),
            fwd_cnt: 0,
            reported_fwd: 0,
            staged: Vec::new(),
            staged_at: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            readable: false,
            hup: false,
            host_eof: false,
            host_write_shut: false,
            guest_no_send: false,
            guest_no_recv: false,
            want_request: false,
            want_response: false,
            want_credit: false,
            want_shutdown: 0,
            closing: false,
        }
    }

    /// A host client's CONNECT: the guest is asked with a REQUEST.
    pub fn host_initiated(stream: UnixStream, local: u32, peer: u32, deadline: Instant) -> Self {
        let mut c = Self::new(stream, local, peer, State::Connecting { deadline });
        c.want_request = true;
        c
    }

    /// The guest's REQUEST, accepted by a host listener: answered with a RESPONSE.
    pub fn guest_initiated(stream: UnixStream, req: &Header) -> Self {
        let mut c = Self::new(stream, req.dst_port, req.src_port, State::Established);
        c.update_peer(req);
        c.want_response = true;
        c.readable = true;
        c
    }

    /// Every guest packet carries its side of the credit.
    pub fn update_peer(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// Bytes the guest can still take. A guest claiming more consumed than it was sent
    /// is believed no further than its buffer size.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc
            .saturating_sub(in_flight)
            .min(self.peer_buf_alloc)
    }

    /// Guest bytes the device can still hold.
    pub fn free(&self) -> u32 {
        BUF_ALLOC - self.to_host.len() as u32
    }

    /// A checked guest packet for this connection (RST and REQUEST are the muxer's).
    /// `payload` fills a buffer of the packet's length from the chain.
    pub fn guest_packet(
        &mut self,
        c: &Checked,
        payload: impl FnOnce(&mut [u8]) -> bool,
    ) -> Verdict {
        self.update_peer(&c.hdr);
        match c.op {
            Op::Rw => {
                if self.state != State::Established || self.guest_no_send {
                    return Verdict::Reset;
                }
                if c.hdr.len > self.free() {
                    return Verdict::Reset;
                }
                let mut buf = vec![0u8; c.hdr.len as usize];
                if !payload(&mut buf) {
                    return Verdict::Reset;
                }
                self.to_host.extend(buf);
            }
            Op::Response => {
                if !matches!(self.state, State::Connecting { .. }) {
                    return Verdict::Reset;
                }
                self.state = State::Established;
                self.greeting = format!("OK {}\n", self.local).into_bytes();
                self.readable = true;
            }
            Op::Shutdown => {
                if c.hdr.flags & SHUTDOWN_RCV != 0 {
                    self.guest_no_recv = true;
                    self.staged.clear();
                    self.staged_at = 0;
                }
                if c.hdr.flags & SHUTDOWN_SEND != 0 {
                    self.guest_no_send = true;
                }
            }
            Op::CreditUpdate => {}
            Op::CreditRequest => self.want_credit = true,
            Op::Request | Op::Rst => return Verdict::Reset,
        }
        Verdict::Keep
    }

    /// Writes what the guest sent to the socket, as far as it takes it without blocking.
    pub fn flush(&mut self) -> std::io::Result<()> {
        while !self.greeting.is_empty() {
            match self.stream.write(&self.greeting) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => drop(self.greeting.drain(..n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    drop(self.to_host.drain(..n));
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // The guest waits for credit only once it has used a good part of it.
        if !self.closing && self.fwd_cnt.wrapping_sub(self.reported_fwd) >= BUF_ALLOC / 4 {
            self.want_credit = true;
        }
        if self.guest_no_send && self.flushed() && !self.host_write_shut && !self.closing {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    pub fn flushed(&self) -> bool {
        self.greeting.is_empty() && self.to_host.is_empty()
    }

    fn may_read(&self) -> bool {
        self.state == State::Established
            && !self.closing
            && !self.host_eof
            && !self.guest_no_recv
            && self.staged_at >= self.staged.len()
            && self.peer_credit() > 0
    }

    /// A hung-up socket (out of epoll) that still has bytes the guest can take: only the
    /// event thread's next round reads them.
    pub fn more_to_read(&self) -> bool {
        self.hup && self.readable && self.may_read()
    }

    /// Reads one packet's worth of host bytes for the guest, within its credit.
    pub fn fill(&mut self) -> std::io::Result<()> {
        if !self.readable || !self.may_read() {
            return Ok(());
        }
        let n = self.peer_credit().min(MAX_PAYLOAD) as usize;
        self.staged.resize(n, 0);
        self.staged_at = 0;
        loop {
            match self.stream.read(&mut self.staged) {
                Ok(0) => {
                    self.staged.clear();
                    self.host_eof = true;
                    // A client that closed outright (hung up, not half-closed) reads
                    // nothing more either: the guest learns both at once.
                    self.want_shutdown |= SHUTDOWN_SEND;
                    if self.hup {
                        self.want_shutdown |= SHUTDOWN_RCV;
                    }
                    return Ok(());
                }
                Ok(got) => {
                    self.staged.truncate(got);
                    self.rx_cnt = self.rx_cnt.wrapping_add(got as u32);
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.staged.clear();
                    self.readable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.staged.clear();
                    return Err(e);
                }
            }
        }
    }

    /// Something is owed to the guest.
    pub fn has_rx(&self) -> bool {
        !self.closing
            && (self.want_request
                || self.want_response
                || self.want_credit
                || self.want_shutdown != 0
                || self.staged_at < self.staged.len())
    }

    /// The next packet for the guest, its payload at most `room` bytes.
    pub fn next_packet(&mut self, guest_cid: u64, room: usize) -> Option<(Header, Vec<u8>)> {
        if self.closing {
            return None;
        }
        let (op, payload, flags) = if self.want_request {
            self.want_request = false;
            (Op::Request, Vec::new(), 0)
        } else if self.want_response {
            self.want_response = false;
            (Op::Response, Vec::new(), 0)
        } else if self.staged_at < self.staged.len() && room > 0 {
            let end = self.staged.len().min(self.staged_at + room);
            let p = self.staged[self.staged_at..end].to_vec();
            self.staged_at = end;
            if self.staged_at >= self.staged.len() {
                self.staged.clear();
                self.staged_at = 0;
            }
            (Op::Rw, p, 0)
        } else if self.want_shutdown != 0 && self.staged_at >= self.staged.len() {
            let f = std::mem::take(&mut self.want_shutdown);
            (Op::Shutdown, Vec::new(), f)
        } else if self.want_credit {
            (Op::CreditUpdate, Vec::new(), 0)
        } else {
            return None;
        };
        let mut h = Header::to_guest(guest_cid, self.local, self.peer, op);
        h.len = payload.len() as u32;
        h.flags = flags;
        h.buf_alloc = BUF_ALLOC;
        h.fwd_cnt = self.fwd_cnt;
        self.reported_fwd = self.fwd_cnt;
        self.want_credit = false;
        Some((h, payload))
    }

    /// Both directions are over and everything was delivered: the muxer sends the final
    /// RST and closes the socket.
    pub fn done(&self) -> bool {
        let host_side_over = self.host_eof || self.guest_no_recv;
        host_side_over && self.guest_no_send && self.flushed() && !self.has_rx()
    }

    /// Whether the socket should be watched for reading and for writing.
    pub fn interest(&self, rx_starved: bool) -> (bool, bool) {
        let read = !rx_starved && !self.hup && self.may_read();
        let write = !self.hup && !self.flushed();
        (read, write)
    }

    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Connecting { deadline } => Some(deadline),
            State::Established => None,
        }
    }
}
