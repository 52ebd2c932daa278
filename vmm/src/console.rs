//! Console input: stdin feeds the serial port's receive FIFO through an event-manager loop.

use crate::devices::serial::SerialPort;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use vmm_sys_util::epoll::EventSet;

struct StdinToSerial {
    serial: Arc<Mutex<SerialPort>>,
    registered: Arc<AtomicBool>,
}

impl MutEventSubscriber for StdinToSerial {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let stdin = std::io::stdin();
        let n = if events.event_set().contains(EventSet::IN) {
            stdin.lock().read(&mut buf).unwrap_or(0)
        } else {
            0
        };
        if n == 0 {
            // EOF or hang-up: stop watching, the guest keeps running.
            let _ = ops.remove(Events::new(&stdin.as_raw_fd(), EventSet::IN));
            self.registered.store(false, Ordering::Release);
            return;
        }
        // Bytes beyond the FIFO's room are dropped, as on a real UART.
        self.serial.lock().unwrap().enqueue_input(&buf[..n]);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let fd = std::io::stdin().as_raw_fd();
        // /dev/null and regular files cannot be polled: then there is no console input.
        if ops.add(Events::new(&fd, EventSet::IN)).is_ok() {
            self.registered.store(true, Ordering::Release);
        }
    }
}

/// Runs the input loop on its own thread until `stop`. Returns `None` when there is no input
/// to watch.
pub fn spawn_input(
    serial: Arc<Mutex<SerialPort>>,
    stop: Arc<AtomicBool>,
    seccomp: crate::jail::seccomp::SeccompLevel,
) -> Option<std::thread::JoinHandle<()>> {
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().ok()?;
    let registered = Arc::new(AtomicBool::new(false));
    em.add_subscriber(Arc::new(Mutex::new(StdinToSerial {
        serial,
        registered: registered.clone(),
    })));
    if !registered.load(Ordering::Acquire) {
        return None;
    }
    std::thread::Builder::new()
        .name("console-input".into())
        .spawn(move || {
            // Without its filter the thread stops: the guest keeps running without input.
            if crate::jail::seccomp::install(crate::jail::seccomp::ThreadKind::Console, seccomp)
                .is_err()
            {
                return;
            }
            while !stop.load(Ordering::Acquire) && registered.load(Ordering::Acquire) {
                if em.run_with_timeout(100).is_err() {
                    break;
                }
            }
        })
        .ok()
}
