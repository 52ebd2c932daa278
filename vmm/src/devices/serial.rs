//! COM1: a 16550 UART (vm-superio) whose output goes to stdout or a file and whose interrupt is
//! an irqfd. The output is watched for the Linux panic banner so that a panicking guest ends the
//! run with its own exit status instead of hanging in the panic loop, and for the job init's
//! InfiniBand check lines, which go into the report (a bounded number of bounded lines: the
//! guest is untrusted).

use super::VmEvent;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

const PANIC_BANNER: &[u8] = b"Kernel panic - not syncing";
/// The job init's InfiniBand check (images' `ib_check`): its lines go into the report.
const IB_PREFIX: &[u8] = b"hpmmap-init: ib: ";
/// Console bytes a guest may make the host keep by default (`--serial-limit`).
pub const DEFAULT_OUTPUT_LIMIT: u64 = 64 << 20;
/// Longest console line looked at, and most IB lines kept.
const LINE_MAX: usize = 512;
const IB_LINES_MAX: usize = 16;

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
    /// The current line (its first LINE_MAX bytes).
    line: Vec<u8>,
    ib_lines: Vec<String>,
    /// Bytes passed on to `out`, and how many may be (0: no limit).
    written: u64,
    limit: u64,
}

impl ConsoleWriter {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        ConsoleWriter {
            out,
            window: Vec::with_capacity(2 * PANIC_BANNER.len()),
            panic_seen: false,
            panic_reported: false,
            last_output: None,
            line: Vec::new(),
            ib_lines: Vec::new(),
            written: 0,
            limit: DEFAULT_OUTPUT_LIMIT,
        }
    }

    /// Passes on at most `limit` bytes of guest output (0: all); watching goes on past it.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    fn end_of_line(&mut self) {
        if let Some(rest) = self.line.strip_prefix(IB_PREFIX) {
            if self.ib_lines.len() < IB_LINES_MAX {
                let text: String = String::from_utf8_lossy(rest)
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect();
                self.ib_lines.push(text);
            }
        }
        self.line.clear();
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
            match *b {
                b'\n' => self.end_of_line(),
                b'\r' => {}
                _ if self.line.len() < LINE_MAX => self.line.push(*b),
                _ => {}
            }
        }
        self.last_output = Some(std::time::Instant::now());
        let room = if self.limit == 0 {
            buf.len() as u64
        } else {
            self.limit.saturating_sub(self.written)
        };
        let pass = &buf[..buf.len().min(room as usize)];
        // A console that cannot be written (closed pipe, full disk) must not stop the guest.
        let _ = self.out.write_all(pass);
        self.written += pass.len() as u64;
        if pass.len() < buf.len() && self.written == self.limit {
            // Once: the untrusted guest cannot make the host keep more than this.
            self.written += 1;
            let _ = write!(
                self.out,
                "\n[hpmmap-vmm: the guest's console output reached --serial-limit ({} bytes); \
                 the rest is dropped]\n",
                self.limit
            );
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A console sink kept in memory (tests).
pub struct Shared(pub Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct SerialPort {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleWriter>,
}

impl SerialPort {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self::with_limit(irq, out, DEFAULT_OUTPUT_LIMIT)
    }

    /// A port that passes on at most `limit` bytes of guest output (0: no limit).
    pub fn with_limit(irq: EventFd, out: Box<dyn Write + Send>, limit: u64) -> Self {
        SerialPort {
            uart: Serial::new(IrqTrigger(irq), ConsoleWriter::new(out).with_limit(limit)),
        }
    }

    /// A port whose output is captured in memory (tests).
    pub fn capture() -> (Self, Arc<Mutex<Vec<u8>>>) {
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

    /// What the guest's InfiniBand check printed (`hpmmap-init: ib: ` lines, prefix cut).
    pub fn ib_lines(&self) -> Vec<String> {
        self.uart.writer().ib_lines.clone()
    }

    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_output_stops_at_the_limit_and_says_so_once() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut w = ConsoleWriter::new(Box::new(Shared(buf.clone()))).with_limit(100);
        for _ in 0..1000 {
            w.write_all(b"0123456789abcdef").unwrap();
        }
        w.write_all(b"Kernel panic - not syncing").unwrap();
        let out = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
        assert!(out.starts_with(&"0123456789abcdef".repeat(6)), "{out}");
        assert_eq!(out.matches("--serial-limit").count(), 1, "{out}");
        assert!(out.len() < 300, "{} bytes kept", out.len());
        assert!(w.panic_seen, "watching goes on past the limit");
        let mut unlimited = ConsoleWriter::new(Box::new(std::io::sink())).with_limit(0);
        unlimited.write_all(&[b'x'; 1 << 20]).unwrap();
        assert_eq!(unlimited.written, 1 << 20);
    }

    #[test]
    fn ib_check_lines_are_kept_bounded_and_clean() {
        let (mut port, _out) = SerialPort::capture();
        let mut feed = |t: &[u8]| {
            for b in t {
                port.write(0, *b);
            }
        };
        feed(b"hpmmap-init: platform: x\r\nhpmmap-init: ib: mlx5_0 port 1 state '4: ACTIVE'\r\n");
        feed(b"hpmmap-init: ib: bell\x07 and esc\x1b[2J\n");
        for _ in 0..40 {
            feed(b"hpmmap-init: ib: again\n");
        }
        let long = [b'x'; 5000];
        feed(b"hpmmap-init: ib: ");
        feed(&long);
        feed(b"\n");
        let lines = port.ib_lines();
        assert_eq!(lines[0], "mlx5_0 port 1 state '4: ACTIVE'");
        assert_eq!(lines[1], "bell and esc[2J");
        assert_eq!(lines.len(), IB_LINES_MAX);
        assert!(lines.iter().all(|l| l.len() <= LINE_MAX));
    }

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
