//! The paravirtual hpmmap device's register protocol (vmm/src/devices/pv.rs) as a guest
//! drives it: any sequence of 1-8 byte reads and writes at any page offset. Checked: no
//! panic; ZERO reaches the host only for whole host pages inside one pool range; RESULT
//! never asks for more than MAX_RESULT_BYTES; EXIT carries the value written.
#![no_main]
use std::cell::RefCell;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use hpmmap_vmm::devices::pv::{reg, PvDevice, PvEvent, PvHost, MAX_RESULT_BYTES};
use hpmmap_vmm::memory::layout::{GpaRange, GuestLayout};

#[derive(Arbitrary, Debug)]
enum Op {
    Read { off: u16, len: u8 },
    Write { off: u16, len: u8, value: u64 },
    /// The protocol's own registers, so commands are reached often.
    Arg { addr: u64, len: u64 },
    Command(u32),
    Version(u32),
    Exit(u32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    ram_gib: u8,
    huge_1g: bool,
    zero_fails: bool,
    guest_bytes: Vec<u8>,
    ops: Vec<Op>,
}

struct Host {
    ranges: Vec<GpaRange>,
    page: u64,
    zero_fails: bool,
    guest: Vec<u8>,
    zeroed: RefCell<u64>,
}

impl PvHost for Host {
    fn zero(&self, gpa: u64, len: u64) -> std::io::Result<()> {
        assert!(len > 0 && gpa % self.page == 0 && len % self.page == 0, "{gpa:#x}+{len:#x}");
        assert!(
            self.ranges.iter().any(|r| r.contains(gpa, len)),
            "zero outside the pool: {gpa:#x}+{len:#x}"
        );
        *self.zeroed.borrow_mut() += 1;
        if self.zero_fails {
            Err(std::io::Error::from_raw_os_error(libc_eio()))
        } else {
            Ok(())
        }
    }
    fn read_guest(&self, gpa: u64, len: u64) -> Option<Vec<u8>> {
        assert!(len <= MAX_RESULT_BYTES, "result of {len} bytes");
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.guest.get(start..end).map(<[u8]>::to_vec)
    }
}

fn libc_eio() -> i32 {
    5
}

fuzz_target!(|input: Input| {
    let ram = (u64::from(input.ram_gib % 64) + 1) << 30;
    let Ok(layout) = GuestLayout::new(ram, None) else {
        return;
    };
    let page_shift = if input.huge_1g { 30 } else { 21 };
    let host = Host {
        ranges: layout.pool_ranges().to_vec(),
        page: 1 << page_shift,
        zero_fails: input.zero_fails,
        guest: input.guest_bytes,
        zeroed: RefCell::new(0),
    };
    let mut dev = PvDevice::new(layout.pool_ranges().to_vec(), page_shift);
    for op in input.ops.into_iter().take(256) {
        match op {
            Op::Read { off, len } => {
                let mut d = vec![0u8; usize::from(len % 9)];
                dev.read(u64::from(off % 0x2000), &mut d);
            }
            Op::Write { off, len, value } => {
                let n = usize::from(len % 9);
                let _ = dev.write(u64::from(off % 0x2000), &value.to_le_bytes()[..n], &host);
            }
            Op::Arg { addr, len } => {
                assert_eq!(dev.write(reg::ARG_ADDR, &addr.to_le_bytes(), &host), None);
                assert_eq!(dev.write(reg::ARG_LEN, &len.to_le_bytes(), &host), None);
            }
            Op::Command(c) => {
                let _ = dev.write(reg::COMMAND, &(c % 4).to_le_bytes(), &host);
            }
            Op::Version(v) => {
                let _ = dev.write(reg::GUEST_VERSION, &(v % 3).to_le_bytes(), &host);
            }
            Op::Exit(v) => match dev.write(reg::EXIT, &v.to_le_bytes(), &host) {
                Some(PvEvent::Exit(code)) => assert_eq!(u32::from(code), v),
                Some(other) => panic!("EXIT gave {other:?}"),
                None => assert!(v > 255),
            },
        }
        let mut st = [0u8; 4];
        dev.read(reg::STATUS, &mut st);
        assert!(u32::from_le_bytes(st) <= 5);
    }
});
