//! COM1: a 16550 UART (vm-superio) whose output goes to stdout or a file and whose interrupt is
//! an irqfd. The output is watched for the Linux panic banner so that a panicking guest ends the
//! run with its own exit status instead of hanging in the panic loop.

use super::VmEvent;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

const PANIC_BANNER: &[u8] = b"Kernel panic - not syncing";

/// Raises the serial interrupt through KVM's irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The console sink, with a small window of recent bytes for the panic banner.
pub struct ConsoleWriter {
    out: Box<dyn Write + Send>,
    window: Vec<u8>,
    panic_seen: bool,
    panic_reported: bool,
    last_output: Option<std::time::Instant>,
}

impl ConsoleWriter {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        ConsoleWriter {
            out,
            window: Vec::with_capacity(2 * PANIC_BANNER.len()),
            panic_seen: false,
            panic_reported: false,
            last_output: None,
        }
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for b in buf {
            self.window.push(*b);
            if self.window.len() > PANIC_BANNER.len() {
                self.window.remove(0);
            }
            if self.window == PANIC_BANNER {
                self.panic_seen = true;
            }
        }
        self.last_output = Some(std::time::Instant::now());
        // A console that cannot be written (closed pipe, full disk) must not stop the guest.
        let _ = self.out.write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

pub struct SerialPort {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleWriter>,
}

impl SerialPort {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialPort {
            uart: Serial::new(IrqTrigger(irq), ConsoleWriter::new(out)),
        }
    }

    /// A port whose output is captured in memory (tests).
    pub fn capture() -> (Self, Arc<Mutex<Vec<u8>>>) {
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let fd = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        (SerialPort::new(fd, Box::new(Shared(buf.clone()))), buf)
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// A register write; returns a panic event the first time the banner goes by.
    pub fn write(&mut self, offset: u8, value: u8) -> Option<VmEvent> {
        // Errors here are the interrupt eventfd failing, which a guest cannot cause; the byte
        // has still been handled.
        let _ = self.uart.write(offset, value);
        let w = self.uart.writer_mut();
        if w.panic_seen && !w.panic_reported {
            w.panic_reported = true;
            return Some(VmEvent::GuestPanic("kernel panic on the console".into()));
        }
        None
    }

    /// Feeds console input to the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// How long ago the guest last printed (None: never).
    pub fn idle_for(&self) -> Option<std::time::Duration> {
        self.uart.writer().last_output.map(|t| t.elapsed())
    }

    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_panic_detection() {
        let (mut p, out) = SerialPort::capture();
        let mut events = vec![];
        for b in b"boot ok\nKernel panic - not syncing: VFS\nmore Kernel panic - not syncing" {
            if let Some(e) = p.write(0, *b) {
                events.push(e);
            }
        }
        assert_eq!(events.len(), 1, "reported once");
        assert!(String::from_utf8_lossy(&out.lock().unwrap()).starts_with("boot ok\nKernel panic"));
    }

    #[test]
    fn garbage_register_writes() {
        let (mut p, _) = SerialPort::capture();
        for off in 0..=255u8 {
            for v in [0u8, 0x80, 0xFF, 0x55] {
                let _ = p.write(off, v);
                let _ = p.read(off);
            }
        }
        assert!(p.enqueue_input(b"x") <= 1);
    }
}
