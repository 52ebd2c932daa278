//! The device's event thread: host-to-guest data has no kick to ride on, so one thread
//! waits (epoll) on the listener, every connection's socket and a wake eventfd that vCPU
//! threads write after guest packets; it does the socket work, fills the rx queue and
//! signals MSI-X. It takes the transport's lock only to fill the rx queue (never the PCI
//! bus lock), and the muxer's lock after the transport's, as vCPU threads do.

use super::device::{lock, RX};
use super::muxer::{Muxer, TOKEN_LISTENER, TOKEN_WAKE};
use crate::devices::virtio::pci::VirtioPci;
use crate::jail::seccomp::{self, SeccompLevel, ThreadKind};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Keeps the event thread off guest memory once dropped: the run drops it before guest
/// RAM is unmapped (the transport's view of RAM does not own the mapping). Taking the
/// transport's lock waits out a round that is filling the rx queue.
pub struct Stop {
    transport: Arc<Mutex<VirtioPci>>,
    flag: Arc<AtomicBool>,
}

impl Drop for Stop {
    fn drop(&mut self) {
        let _t = self.transport.lock().unwrap_or_else(|p| p.into_inner());
        self.flag.store(true, Ordering::Release);
    }
}

/// Starts the thread; it runs until [`Stop`] is dropped or the process ends (it holds the
/// listener, whose file the run removes at teardown). `failed` hears a seccomp or epoll
/// failure.
pub fn spawn(
    transport: Arc<Mutex<VirtioPci>>,
    muxer: Arc<Mutex<Muxer>>,
    level: SeccompLevel,
    failed: impl Fn(String) + Send + 'static,
) -> std::io::Result<Stop> {
    let flag = Arc::new(AtomicBool::new(false));
    let stop = Stop {
        transport: transport.clone(),
        flag: flag.clone(),
    };
    std::thread::Builder::new()
        .name("vsock".into())
        .spawn(move || {
            // Made before the filter, which has no epoll_create1.
            let epoll = match Epoll::new() {
                Ok(e) => e,
                Err(e) => return failed(format!("virtio-vsock event thread: epoll: {e}")),
            };
            if let Err(e) = seccomp::install(ThreadKind::Vsock, level) {
                failed(e.to_string());
                return;
            }
            if let Err(e) = run(&epoll, &transport, &muxer, &flag) {
                failed(format!("virtio-vsock event thread: {e}"));
            }
        })?;
    Ok(stop)
}

fn events(read: bool, write: bool) -> EventSet {
    let mut e = EventSet::empty();
    if read {
        e |= EventSet::IN;
    }
    if write {
        e |= EventSet::OUT;
    }
    e
}

fn run(
    epoll: &Epoll,
    transport: &Mutex<VirtioPci>,
    muxer: &Mutex<Muxer>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    {
        let m = lock(muxer);
        for (fd, token) in [(m.listener_fd(), TOKEN_LISTENER), (m.wake_fd(), TOKEN_WAKE)] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
    }
    let mut armed: HashMap<u64, (RawFd, EventSet)> = HashMap::new();
    let mut evs = vec![EpollEvent::default(); 64];
    loop {
        let timeout = {
            let m = lock(muxer);
            match m.next_deadline() {
                _ if m.more_to_read() => 0,
                Some(d) => {
                    let ms = d.saturating_duration_since(Instant::now()).as_millis();
                    ms.min(60_000) as i32 + 1
                }
                None => -1,
            }
        };
        let n = match epoll.wait(timeout, &mut evs) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        {
            let mut m = lock(muxer);
            for ev in &evs[..n] {
                let set = ev.event_set();
                match ev.data() {
                    TOKEN_WAKE => m.drain_wake(),
                    TOKEN_LISTENER => {}
                    t => m.ready(t, set.intersects(EventSet::HANG_UP | EventSet::ERROR)),
                }
            }
            m.pump(Instant::now());
        }
        let wants = {
            let mut t = transport.lock().unwrap_or_else(|p| p.into_inner());
            if stop.load(Ordering::Acquire) {
                return Ok(());
            }
            t.notify(RX);
            let mut m = lock(muxer);
            m.rx_starved = m.has_rx();
            m.interests()
        };
        let mut seen = HashMap::with_capacity(wants.len());
        for w in wants {
            let now = w.want.map(|(r, wr)| events(r, wr));
            let before = armed.get(&w.token).copied();
            match (before, now) {
                (None, Some(e)) => {
                    epoll.ctl(ControlOperation::Add, w.fd, EpollEvent::new(e, w.token))?
                }
                (Some((_, b)), Some(e)) if b != e => {
                    epoll.ctl(ControlOperation::Modify, w.fd, EpollEvent::new(e, w.token))?
                }
                (Some(_), None) => {
                    let _ = epoll.ctl(ControlOperation::Delete, w.fd, EpollEvent::default());
                }
                _ => {}
            }
            if let Some(e) = now {
                seen.insert(w.token, (w.fd, e));
            }
        }
        // Sockets that closed left epoll with their descriptors.
        armed = seen;
    }
}
