//! The PMI relay: one local PMI descriptor's bytes carried both ways over the task channel.
//!
//! With `srun --mpi=pmi2`, slurmstepd hands each task the PMI wire protocol (MPICH's and
//! Intel MPI's PMI-1/PMI-2 text lines) on an inherited socket whose number is in `PMI_FD`.
//! A descriptor cannot cross into the VM, so each side holds its own end and this relay
//! copies bytes between them: on the host the descriptor slurmstepd gave `hpmmap-task`, in
//! the guest one end of a socketpair whose other end the task inherits as its `PMI_FD`.
//!
//! Each direction is bounded like stdin: a sender may have at most [`PMI_WINDOW`] bytes
//! sent and not acknowledged (PmiAck comes once the receiver wrote them to its end); the
//! receiver treats more as a protocol failure. A peer that stops reading its PMI end so
//! holds at most the window on the other side, and the sender stops reading its own end.

use crate::protocol::{self, Frame, Side, MAX_DATA, PMI_WINDOW};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The channel to the peer, shared by every thread that sends frames (whole frames under
/// the lock, so they never interleave).
pub type Writer = Arc<Mutex<UnixStream>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn send(w: &Writer, f: &Frame) -> bool {
    protocol::write_frame(&mut *lock(w), f).is_ok()
}

/// Bytes the peer will take now: the window less what it has not acknowledged. Closed, it
/// hands out nothing more, which ends a reader waiting for credit.
struct Credit {
    state: Mutex<(usize, bool)>,
    cv: Condvar,
}

impl Credit {
    fn add(&self, n: usize) {
        let mut s = lock(&self.state);
        s.0 = (s.0 + n).min(PMI_WINDOW);
        self.cv.notify_all();
    }

    /// Waits for some credit and takes up to `max` of it; None once closed.
    fn take(&self, max: usize) -> Option<usize> {
        let s = lock(&self.state);
        let mut s = self
            .cv
            .wait_while(s, |(n, closed)| *n == 0 && !*closed)
            .unwrap_or_else(|e| e.into_inner());
        if s.1 {
            return None;
        }
        let n = s.0.min(max);
        s.0 -= n;
        Some(n)
    }

    fn close(&self) {
        lock(&self.state).1 = true;
        self.cv.notify_all();
    }
}

/// One side's relay. Frames from the peer are handed to [`Relay::data`], [`Relay::eof`]
/// and [`Relay::ack`] by whoever reads the channel; two threads of its own read the local
/// end (PmiData, then PmiEof) and write the peer's bytes to it (PmiAck for each piece).
pub struct Relay {
    side: Side,
    local: Arc<File>,
    credit: Arc<Credit>,
    to_local: Mutex<Option<Sender<Vec<u8>>>>,
    inflight: Arc<AtomicUsize>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying `local` (a socket, or a pipe: then only the direction it allows
    /// carries bytes) for `side`, sending its frames through `w`.
    pub fn start(side: Side, local: OwnedFd, w: Writer) -> io::Result<Relay> {
        let local = Arc::new(File::from(local));
        let credit = Arc::new(Credit {
            state: Mutex::new((PMI_WINDOW, false)),
            cv: Condvar::new(),
        });
        let inflight = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let reader = thread::Builder::new().name("pmi-out".into()).spawn({
            let (local, credit, w) = (Arc::clone(&local), Arc::clone(&credit), Arc::clone(&w));
            move || read_local(side, &local, &credit, &w)
        })?;
        let writer = thread::Builder::new().name("pmi-in".into()).spawn({
            let (local, inflight) = (Arc::clone(&local), Arc::clone(&inflight));
            move || {
                let mut open = true;
                for d in rx {
                    if open && (&*local).write_all(&d).is_err() {
                        open = false;
                    }
                    inflight.fetch_sub(d.len(), Ordering::SeqCst);
                    if !send(&w, &Frame::PmiAck(side, d.len() as u32)) {
                        break;
                    }
                }
                // The peer's end of file (or the relay's end): whoever reads the other end of
                // the local socket (slurmstepd, or the task) sees end of file in turn.
                shutdown(&local, libc::SHUT_WR);
            }
        })?;
        Ok(Relay {
            side,
            local,
            credit,
            to_local: Mutex::new(Some(tx)),
            inflight,
            reader,
            writer,
        })
    }

    /// One of the peer's PMI frames; an error is a protocol failure (past the window, data
    /// after its end, or a frame that is not the peer's).
    pub fn receive(&self, f: Frame) -> Result<(), String> {
        match f {
            Frame::PmiData(s, d) if s != self.side => self.data(d),
            Frame::PmiEof(s) if s != self.side => {
                self.eof();
                Ok(())
            }
            Frame::PmiAck(s, n) if s != self.side => {
                self.ack(n);
                Ok(())
            }
            f => Err(format!(
                "unexpected {} frame from the {}",
                f.name(),
                peer(self.side)
            )),
        }
    }

    /// The peer's PMI bytes, to be written to the local end. An error is a protocol failure.
    fn data(&self, d: Vec<u8>) -> Result<(), String> {
        let now = self.inflight.fetch_add(d.len(), Ordering::SeqCst) + d.len();
        if now > PMI_WINDOW {
            return Err(format!(
                "the {} sent {now} PMI bytes, past the window of {PMI_WINDOW}",
                peer(self.side)
            ));
        }
        match &*lock(&self.to_local) {
            Some(t) => {
                let _ = t.send(d);
                Ok(())
            }
            None => Err(format!(
                "the {} sent PMI bytes after its end",
                peer(self.side)
            )),
        }
    }

    /// The peer's PMI end reached end of file: once what came before is written, the local
    /// end is shut down for writing, so whoever reads it sees end of file too.
    fn eof(&self) {
        lock(&self.to_local).take();
    }

    /// The peer wrote `n` of this side's bytes to its end.
    fn ack(&self, n: u32) {
        self.credit.add(n as usize);
    }

    /// Whether the local end reached end of file and PmiEof went out (or the relay ended):
    /// everything read from it has been sent.
    pub fn sent_all(&self) -> bool {
        self.reader.is_finished()
    }

    /// Ends the peer's direction after what already came (as its PmiEof would) and waits up
    /// to `d` for it to be written to the local end: a process about to exit calls it, so
    /// that PMI bytes the peer sent before its last word are not lost.
    pub fn flush(&self, d: Duration) {
        self.eof();
        let end = Instant::now() + d;
        while !self.writer.is_finished() && Instant::now() < end {
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Ends both directions now: the reader stops (no more PmiData), a blocked write fails.
    pub fn close(&self) {
        self.credit.close();
        lock(&self.to_local).take();
        shutdown(&self.local, libc::SHUT_RDWR);
    }
}

fn peer(side: Side) -> &'static str {
    match side {
        Side::Host => "agent",
        Side::Agent => "host",
    }
}

/// Shuts a socket down; on a pipe (ENOTSOCK) nothing happens, the relay's threads end with it.
fn shutdown(f: &File, how: libc::c_int) {
    // SAFETY: shutdown takes a descriptor we own (kept open by `f`) and a plain integer.
    unsafe { libc::shutdown(f.as_raw_fd(), how) };
}

fn read_local(side: Side, local: &File, credit: &Credit, w: &Writer) {
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        let Some(n) = credit.take(MAX_DATA) else {
            return;
        };
        match (&*local).read(&mut buf[..n]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => credit.add(n),
            Ok(0) | Err(_) => break,
            Ok(got) => {
                credit.add(n - got);
                if !send(w, &Frame::PmiData(side, buf[..got].to_vec())) {
                    return;
                }
            }
        }
    }
    send(w, &Frame::PmiEof(side));
}
