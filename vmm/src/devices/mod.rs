//! Port I/O and MMIO dispatch to the emulated devices. Every access a guest can make ends here
//! and is answered: unknown ports and addresses read as all-ones and ignore writes.

pub mod i8042;
pub mod pv;
pub mod serial;
pub mod virtio;

use crate::memory::layout::{PV_MMIO_BASE, PV_MMIO_SIZE};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Why the VM stops (or should), as reported by a device or a vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The job wrote its exit status to the PV device.
    JobExit(u8),
    /// i8042 reset or a KVM shutdown/reset system event: the guest powered itself off.
    GuestShutdown(String),
    /// The console showed a kernel panic, or KVM reported a guest crash.
    GuestPanic(String),
    /// KVM_EXIT_SHUTDOWN: the vCPU triple-faulted.
    TripleFault(String),
    /// KVM could not run the guest (internal error, failed entry, unexpected exit).
    InternalError(String),
    /// A host-side failure of the VMM itself.
    VmmFailure(String),
    /// SIGINT, SIGTERM or SIGHUP asked the VMM to stop (e.g. a cancelled batch job).
    Signal(i32),
}

/// Where devices report events.
pub trait EventSink: Send + Sync {
    fn event(&self, e: VmEvent);
}

pub const COM1_BASE: u16 = 0x3F8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_DATA: u16 = 0x60;
pub const I8042_COMMAND: u16 = 0x64;

/// Counters of guest accesses nothing answers (reported, never fatal).
#[derive(Debug, Default)]
pub struct Unhandled {
    pub pio: AtomicU64,
    pub mmio: AtomicU64,
}

pub struct Bus<S: EventSink, H: pv::PvHost> {
    pub serial: std::sync::Arc<Mutex<serial::SerialPort>>,
    pub i8042: Mutex<i8042::I8042>,
    pub pv: Mutex<pv::PvDevice>,
    pub pv_host: H,
    pub sink: S,
    pub unhandled: Unhandled,
    /// The job's result line (PV RESULT command), the last one written.
    pub result: Mutex<Option<String>>,
    /// The guest PCI bus (conf1 ports, ECAM, trapped BAR pages), present with `--vf`. It is
    /// asked first: its ranges do not overlap the devices above.
    pub pci: Option<std::sync::Arc<hpmmap_pci::PciRoot>>,
}

impl<S: EventSink, H: pv::PvHost> Bus<S, H> {
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        if self.pci.as_ref().is_some_and(|p| p.pio_read(port, data)) {
            return;
        }
        match port {
            p if (COM1_BASE..COM1_BASE + 8).contains(&p) && data.len() == 1 => {
                data[0] = self.serial.lock().unwrap().read((p - COM1_BASE) as u8);
            }
            I8042_DATA | I8042_COMMAND if data.len() == 1 => {
                data[0] = self.i8042.lock().unwrap().read(port);
            }
            _ => {
                self.unhandled.pio.fetch_add(1, Ordering::Relaxed);
                data.fill(0xFF);
            }
        }
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) {
        if self.pci.as_ref().is_some_and(|p| p.pio_write(port, data)) {
            return;
        }
        match port {
            p if (COM1_BASE..COM1_BASE + 8).contains(&p) && data.len() == 1 => {
                let ev = self
                    .serial
                    .lock()
                    .unwrap()
                    .write((p - COM1_BASE) as u8, data[0]);
                if let Some(ev) = ev {
                    self.sink.event(ev);
                }
            }
            I8042_DATA | I8042_COMMAND if data.len() == 1 => {
                if let Some(ev) = self.i8042.lock().unwrap().write(port, data[0]) {
                    self.sink.event(ev);
                }
            }
            _ => {
                self.unhandled.pio.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if self.pci.as_ref().is_some_and(|p| p.mmio_read(addr, data)) {
            return;
        }
        if (PV_MMIO_BASE..PV_MMIO_BASE + PV_MMIO_SIZE).contains(&addr) {
            self.pv.lock().unwrap().read(addr - PV_MMIO_BASE, data);
        } else {
            self.unhandled.mmio.fetch_add(1, Ordering::Relaxed);
            data.fill(0xFF);
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        if self.pci.as_ref().is_some_and(|p| p.mmio_write(addr, data)) {
            return;
        }
        if (PV_MMIO_BASE..PV_MMIO_BASE + PV_MMIO_SIZE).contains(&addr) {
            let ev = self
                .pv
                .lock()
                .unwrap()
                .write(addr - PV_MMIO_BASE, data, &self.pv_host);
            match ev {
                Some(pv::PvEvent::Exit(code)) => self.sink.event(VmEvent::JobExit(code)),
                Some(pv::PvEvent::Result(line)) => self.pv_result(line),
                None => {}
            }
        } else {
            self.unhandled.mmio.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn pv_result(&self, line: String) {
        // The text is the guest's: it reaches the host's terminal and logs without control
        // characters (no escape sequences, no fake lines).
        let line: String = line.chars().filter(|c| !c.is_control()).collect();
        *self.result.lock().unwrap() = Some(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::layout::GpaRange;

    #[derive(Default)]
    struct Sink(Mutex<Vec<VmEvent>>);
    impl EventSink for Sink {
        fn event(&self, e: VmEvent) {
            self.0.lock().unwrap().push(e);
        }
    }
    struct NoHost;
    impl pv::PvHost for NoHost {
        fn zero(&self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn read_guest(&self, _: u64, len: u64) -> Option<Vec<u8>> {
            Some(vec![b'r'; len as usize])
        }
    }

    fn bus() -> (Bus<Sink, NoHost>, std::sync::Arc<Mutex<Vec<u8>>>) {
        let (port, out) = serial::SerialPort::capture();
        (
            Bus {
                serial: std::sync::Arc::new(Mutex::new(port)),
                i8042: Mutex::new(i8042::I8042::default()),
                pv: Mutex::new(pv::PvDevice::new(
                    vec![GpaRange {
                        base: 1 << 30,
                        size: 1 << 30,
                    }],
                    30,
                )),
                pv_host: NoHost,
                sink: Sink::default(),
                unhandled: Unhandled::default(),
                result: Mutex::new(None),
                pci: None,
            },
            out,
        )
    }

    #[test]
    fn routes_serial_i8042_pv() {
        let (b, out) = bus();
        for c in b"hi\n" {
            b.pio_write(COM1_BASE, &[*c]);
        }
        assert_eq!(&*out.lock().unwrap(), b"hi\n");
        b.pio_write(I8042_COMMAND, &[0xFE]);
        b.mmio_write(PV_MMIO_BASE + pv::reg::EXIT, &7u32.to_le_bytes());
        let ev = b.sink.0.lock().unwrap().clone();
        assert!(matches!(ev[0], VmEvent::GuestShutdown(_)));
        assert_eq!(ev[1], VmEvent::JobExit(7));
        let mut m = [0u8; 4];
        b.mmio_read(PV_MMIO_BASE, &mut m);
        assert_eq!(&m, b"HPMM");
    }

    #[test]
    fn the_result_line_reaches_the_host_without_control_characters() {
        let (b, _) = bus();
        b.pv_result("ok\x1b[2J\r\nfake: line\x07 done\t!".into());
        assert_eq!(
            b.result.lock().unwrap().as_deref(),
            Some("ok[2Jfake: line done!")
        );
    }

    /// With a PCI bus the guest's conf1 probe (Linux's: 0x80000000 to 0xCF8, read back, read
    /// the host bridge's IDs) and ECAM reach it first; what it does not answer (0xCF9 reset
    /// control, the serial port, the PV page) still reaches the other devices.
    #[test]
    fn pci_bus_answers_first_and_only_for_its_ranges() {
        use hpmmap_pci::layout::{CONF1_ADDRESS_PORT, CONF1_DATA_PORT, ECAM_BASE};
        let (mut b, out) = bus();
        b.pci = Some(std::sync::Arc::new(hpmmap_pci::PciRoot::new(
            hpmmap_pci::PciWindows::for_ram_end(1 << 30),
        )));
        b.pio_write(CONF1_ADDRESS_PORT, &0x8000_0000u32.to_le_bytes());
        let mut d = [0u8; 4];
        b.pio_read(CONF1_ADDRESS_PORT, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
        b.pio_read(CONF1_DATA_PORT, &mut d);
        assert_eq!(
            u32::from_le_bytes(d),
            0x0008_1b36,
            "host bridge vendor:device"
        );
        b.mmio_read(ECAM_BASE, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36, "same through ECAM");
        // 00:05.0 is absent: all-ones, answered by the bus, not counted as unhandled.
        b.pio_write(CONF1_ADDRESS_PORT, &0x8000_2800u32.to_le_bytes());
        b.pio_read(CONF1_DATA_PORT, &mut d);
        assert_eq!(d, [0xFF; 4]);
        assert_eq!(b.unhandled.pio.load(Ordering::Relaxed), 0);
        assert_eq!(b.unhandled.mmio.load(Ordering::Relaxed), 0);
        let mut one = [0u8; 1];
        b.pio_read(0xCF9, &mut one);
        assert_eq!(
            b.unhandled.pio.load(Ordering::Relaxed),
            1,
            "0xCF9 is not the bus's"
        );
        b.pio_write(COM1_BASE, b"x");
        assert_eq!(&*out.lock().unwrap(), b"x");
        b.mmio_read(PV_MMIO_BASE, &mut d);
        assert_eq!(&d, b"HPMM");
        b.pci.as_ref().unwrap().shutdown();
    }

    /// Garbage everywhere: every port, sizes 1..8, MMIO across the hole. Nothing panics and
    /// unknown accesses read as all-ones.
    #[test]
    fn garbage_io_never_crashes() {
        let (b, _) = bus();
        let mut seed = 12345u64;
        for port in 0..=u16::MAX {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = [1usize, 2, 4][(seed >> 60) as usize % 3];
            let mut d = vec![0u8; len];
            b.pio_read(port, &mut d);
            if port != I8042_COMMAND {
                b.pio_write(port, &vec![(seed >> 32) as u8; len]);
            }
        }
        let mut d = [0u8; 4];
        b.mmio_read(0xD000_0000, &mut d);
        assert_eq!(d, [0xFF; 4]);
        for off in (0..0x1000u64).step_by(1) {
            for len in [1usize, 2, 4, 8] {
                let mut d = vec![0u8; len];
                b.mmio_read(PV_MMIO_BASE + off, &mut d);
                if off != pv::reg::EXIT && off != pv::reg::COMMAND {
                    b.mmio_write(PV_MMIO_BASE + off, &vec![0xA5; len]);
                }
            }
        }
        assert!(b.unhandled.pio.load(Ordering::Relaxed) > 60_000);
        assert!(b.unhandled.mmio.load(Ordering::Relaxed) >= 1);
    }
}
