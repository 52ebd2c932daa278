//! The paravirtual hpmmap device (docs/architecture.md, Interface 2): a versioned register
//! window in one MMIO page, defined once in guest-kmod/module/hpmmap_pv.h (a unit test holds
//! these constants to it). Everything a guest writes here is checked; bad accesses set STATUS
//! and never reach the host beyond the two commands' bounded work.

use crate::memory::layout::GpaRange;

pub const MAGIC: u32 = 0x4D4D_5048;
pub const VERSION: u32 = 1;

pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const GUEST_VERSION: u64 = 0x008;
    pub const STATUS: u64 = 0x00C;
    pub const NR_RANGES: u64 = 0x010;
    pub const PAGE_SHIFT: u64 = 0x014;
    pub const POOL_BYTES: u64 = 0x018;
    pub const ARG_ADDR: u64 = 0x020;
    pub const ARG_LEN: u64 = 0x028;
    pub const COMMAND: u64 = 0x030;
    pub const EXIT: u64 = 0x034;
    pub const RANGES: u64 = 0x100;
    /// Range i is at RANGES + RANGE_STRIDE * i: base, then size, 8 bytes each.
    pub const RANGE_STRIDE: u64 = 16;
}

pub mod status {
    pub const OK: u32 = 0;
    pub const EVERSION: u32 = 1;
    pub const ERANGE: u32 = 2;
    pub const EINVAL_CMD: u32 = 3;
    pub const EINVAL_ACCESS: u32 = 4;
    pub const EIO: u32 = 5;
}

pub mod command {
    pub const ZERO: u32 = 1;
    pub const RESULT: u32 = 2;
}

/// Longest result line the RESULT command accepts.
pub const MAX_RESULT_BYTES: u64 = 64 * 1024;

/// What the device needs from the VMM: zeroing pool memory and reading guest RAM.
pub trait PvHost {
    /// Hands `[gpa, gpa+len)` back zeroed (punch and re-fault). Called only for ranges inside
    /// one pool range and aligned to the host page size.
    fn zero(&self, gpa: u64, len: u64) -> std::io::Result<()>;
    /// Copies guest RAM, `None` when the range is not all RAM.
    fn read_guest(&self, gpa: u64, len: u64) -> Option<Vec<u8>>;
}

/// What a write asks of the VMM beyond the register file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PvEvent {
    Exit(u8),
    Result(String),
}

#[derive(Debug)]
pub struct PvDevice {
    ranges: Vec<GpaRange>,
    page_shift: u32,
    version_ok: bool,
    status: u32,
    arg_addr: u64,
    arg_len: u64,
}

impl PvDevice {
    pub fn new(ranges: Vec<GpaRange>, page_shift: u32) -> Self {
        assert!(ranges.len() <= crate::memory::layout::MAX_POOL_RANGES);
        PvDevice {
            ranges,
            page_shift,
            version_ok: true,
            status: status::OK,
            arg_addr: 0,
            arg_len: 0,
        }
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn pool_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.size).sum()
    }

    /// The 8 bytes of readable register space at an 8-aligned offset (write-only registers
    /// read as zero, unknown offsets as all-ones).
    fn read_qword(&self, off: u64) -> u64 {
        let pair = |lo: u32, hi: u32| lo as u64 | (hi as u64) << 32;
        match off {
            reg::MAGIC => pair(MAGIC, VERSION),
            reg::GUEST_VERSION => pair(0, self.status),
            reg::NR_RANGES => pair(self.ranges.len() as u32, self.page_shift),
            reg::POOL_BYTES => self.pool_bytes(),
            reg::ARG_ADDR | reg::ARG_LEN | reg::COMMAND => 0,
            o if o >= reg::RANGES => {
                let i = ((o - reg::RANGES) / reg::RANGE_STRIDE) as usize;
                match self.ranges.get(i) {
                    Some(r) if (o - reg::RANGES).is_multiple_of(reg::RANGE_STRIDE) => r.base,
                    Some(r) => r.size,
                    None => u64::MAX,
                }
            }
            _ => u64::MAX,
        }
    }

    fn access_ok(off: u64, len: usize) -> bool {
        (len == 4 || len == 8) && off.is_multiple_of(len as u64) && off + len as u64 <= 0x1000
    }

    /// An MMIO read of `data.len()` bytes at page offset `off`.
    pub fn read(&mut self, off: u64, data: &mut [u8]) {
        if !Self::access_ok(off, data.len()) {
            data.fill(0xFF);
            self.status = status::EINVAL_ACCESS;
            return;
        }
        let q = self.read_qword(off & !7);
        let bytes = q.to_le_bytes();
        let start = (off & 7) as usize;
        data.copy_from_slice(&bytes[start..start + data.len()]);
    }

    /// An MMIO write at page offset `off`; returns what the VMM must do, if anything.
    pub fn write(&mut self, off: u64, data: &[u8], host: &dyn PvHost) -> Option<PvEvent> {
        if !Self::access_ok(off, data.len()) {
            self.status = status::EINVAL_ACCESS;
            return None;
        }
        let value = {
            let mut b = [0u8; 8];
            b[..data.len()].copy_from_slice(data);
            u64::from_le_bytes(b)
        };
        let set_half = |reg: &mut u64, hi: bool| {
            if hi {
                *reg = (*reg & 0xFFFF_FFFF) | (value << 32);
            } else if data.len() == 4 {
                *reg = (*reg & !0xFFFF_FFFF) | value;
            } else {
                *reg = value;
            }
        };
        match (off, data.len()) {
            (reg::GUEST_VERSION, 4) => {
                if value as u32 == VERSION {
                    self.version_ok = true;
                    self.status = status::OK;
                } else {
                    self.version_ok = false;
                    self.status = status::EVERSION;
                }
                None
            }
            (reg::ARG_ADDR, _) => {
                set_half(&mut self.arg_addr, false);
                None
            }
            (o, 4) if o == reg::ARG_ADDR + 4 => {
                set_half(&mut self.arg_addr, true);
                None
            }
            (reg::ARG_LEN, _) => {
                set_half(&mut self.arg_len, false);
                None
            }
            (o, 4) if o == reg::ARG_LEN + 4 => {
                set_half(&mut self.arg_len, true);
                None
            }
            (reg::COMMAND, 4) => self.command(value as u32, host),
            (reg::EXIT, 4) => {
                if value <= 255 {
                    self.status = status::OK;
                    Some(PvEvent::Exit(value as u8))
                } else {
                    self.status = status::EINVAL_CMD;
                    None
                }
            }
            _ => {
                self.status = status::EINVAL_ACCESS;
                None
            }
        }
    }

    fn command(&mut self, cmd: u32, host: &dyn PvHost) -> Option<PvEvent> {
        if !self.version_ok {
            self.status = status::EVERSION;
            return None;
        }
        let (addr, len) = (self.arg_addr, self.arg_len);
        match cmd {
            command::ZERO => {
                let page = 1u64 << self.page_shift;
                let inside = self.ranges.iter().any(|r| r.contains(addr, len));
                if len == 0 || !inside || addr % page != 0 || len % page != 0 {
                    self.status = status::ERANGE;
                } else {
                    self.status = match host.zero(addr, len) {
                        Ok(()) => status::OK,
                        Err(_) => status::EIO,
                    };
                }
                None
            }
            command::RESULT => {
                if len > MAX_RESULT_BYTES {
                    self.status = status::ERANGE;
                    return None;
                }
                match host.read_guest(addr, len) {
                    None => {
                        self.status = status::ERANGE;
                        None
                    }
                    Some(bytes) => match String::from_utf8(bytes) {
                        Ok(s) => {
                            self.status = status::OK;
                            Some(PvEvent::Result(s))
                        }
                        Err(_) => {
                            self.status = status::EINVAL_CMD;
                            None
                        }
                    },
                }
            }
            _ => {
                self.status = status::EINVAL_CMD;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::GIB;
    use std::cell::RefCell;

    /// Every `#define NAME VALUE` of the C header that defines this device for the guest.
    fn c_header() -> std::collections::BTreeMap<String, u64> {
        let text = include_str!("../../../guest-kmod/module/hpmmap_pv.h");
        text.lines()
            .filter_map(|l| {
                let mut w = l.strip_prefix("#define ")?.split_whitespace();
                let (name, value) = (w.next()?, w.next()?.trim_end_matches('u'));
                let v = match value.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok()?,
                    None => value.parse().ok()?,
                };
                Some((name.to_string(), v))
            })
            .collect()
    }

    #[test]
    fn registers_commands_and_statuses_match_the_c_header() {
        let h = c_header();
        let want: [(&str, u64); 25] = [
            ("PV_MAGIC_VAL", MAGIC.into()),
            ("PV_VERSION_VAL", VERSION.into()),
            ("PV_MAGIC", reg::MAGIC),
            ("PV_VERSION", reg::VERSION),
            ("PV_GUEST_VERSION", reg::GUEST_VERSION),
            ("PV_STATUS", reg::STATUS),
            ("PV_NR_RANGES", reg::NR_RANGES),
            ("PV_PAGE_SHIFT", reg::PAGE_SHIFT),
            ("PV_POOL_BYTES", reg::POOL_BYTES),
            ("PV_ARG_ADDR", reg::ARG_ADDR),
            ("PV_ARG_LEN", reg::ARG_LEN),
            ("PV_COMMAND", reg::COMMAND),
            ("PV_EXIT", reg::EXIT),
            ("PV_RANGE", reg::RANGES),
            ("PV_RANGE_STRIDE", reg::RANGE_STRIDE),
            (
                "PV_MAX_RANGES",
                crate::memory::layout::MAX_POOL_RANGES as u64,
            ),
            ("PV_CMD_ZERO", command::ZERO.into()),
            ("PV_CMD_RESULT", command::RESULT.into()),
            ("PV_MAX_RESULT_BYTES", MAX_RESULT_BYTES),
            ("PV_OK", status::OK.into()),
            ("PV_EVERSION", status::EVERSION.into()),
            ("PV_ERANGE", status::ERANGE.into()),
            ("PV_EINVAL_CMD", status::EINVAL_CMD.into()),
            ("PV_EINVAL_ACCESS", status::EINVAL_ACCESS.into()),
            ("PV_EIO", status::EIO.into()),
        ];
        for (name, value) in want {
            assert_eq!(h.get(name), Some(&value), "{name} in hpmmap_pv.h");
        }
        // Nothing in the header that this device does not implement.
        let known: std::collections::BTreeSet<&str> = want.iter().map(|(n, _)| *n).collect();
        let extra: Vec<_> = h.keys().filter(|k| !known.contains(k.as_str())).collect();
        assert!(extra.is_empty(), "defines no test checks: {extra:?}");
    }

    #[derive(Default)]
    struct FakeHost {
        zeroed: RefCell<Vec<(u64, u64)>>,
        fail_zero: bool,
        ram: Vec<u8>,
    }

    impl PvHost for FakeHost {
        fn zero(&self, gpa: u64, len: u64) -> std::io::Result<()> {
            if self.fail_zero {
                return Err(std::io::Error::other("no pages"));
            }
            self.zeroed.borrow_mut().push((gpa, len));
            Ok(())
        }
        fn read_guest(&self, gpa: u64, len: u64) -> Option<Vec<u8>> {
            let end = gpa.checked_add(len)?;
            (end <= self.ram.len() as u64).then(|| self.ram[gpa as usize..end as usize].to_vec())
        }
    }

    fn dev() -> PvDevice {
        PvDevice::new(
            vec![
                GpaRange {
                    base: GIB,
                    size: 2 * GIB,
                },
                GpaRange {
                    base: 4 * GIB,
                    size: 3 * GIB,
                },
            ],
            30,
        )
    }

    fn r32(d: &mut PvDevice, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn r64(d: &mut PvDevice, off: u64) -> u64 {
        let mut b = [0u8; 8];
        d.read(off, &mut b);
        u64::from_le_bytes(b)
    }

    fn w32(d: &mut PvDevice, off: u64, v: u32, h: &FakeHost) -> Option<PvEvent> {
        d.write(off, &v.to_le_bytes(), h)
    }

    fn w64(d: &mut PvDevice, off: u64, v: u64, h: &FakeHost) -> Option<PvEvent> {
        d.write(off, &v.to_le_bytes(), h)
    }

    #[test]
    fn identification_and_ranges() {
        let mut d = dev();
        assert_eq!(r32(&mut d, reg::MAGIC), 0x4D4D5048);
        assert_eq!(&r32(&mut d, reg::MAGIC).to_le_bytes(), b"HPMM");
        assert_eq!(r32(&mut d, reg::VERSION), 1);
        assert_eq!(r32(&mut d, reg::STATUS), 0);
        assert_eq!(r32(&mut d, reg::NR_RANGES), 2);
        assert_eq!(r32(&mut d, reg::PAGE_SHIFT), 30);
        assert_eq!(r64(&mut d, reg::POOL_BYTES), 5 * GIB);
        assert_eq!(r64(&mut d, reg::RANGES), GIB);
        assert_eq!(r64(&mut d, reg::RANGES + 8), 2 * GIB);
        assert_eq!(r64(&mut d, reg::RANGES + 16), 4 * GIB);
        assert_eq!(r64(&mut d, reg::RANGES + 24), 3 * GIB);
        // Beyond NR_RANGES: all-ones.
        assert_eq!(r64(&mut d, reg::RANGES + 32), u64::MAX);
        // 4-byte halves of a 64-bit register.
        assert_eq!(r32(&mut d, reg::RANGES + 8 + 4), 0);
        assert_eq!(r32(&mut d, reg::RANGES + 8), 2 * GIB as u32);
    }

    #[test]
    fn misaligned_or_odd_sized_accesses() {
        let h = FakeHost::default();
        let mut d = dev();
        let mut b = [0u8; 2];
        d.read(0, &mut b);
        assert_eq!(b, [0xFF, 0xFF]);
        assert_eq!(r32(&mut d, reg::STATUS), status::EINVAL_ACCESS);
        let mut b = [0u8; 4];
        d.read(2, &mut b);
        assert_eq!(b, [0xFF; 4]);
        let mut b = [0u8; 8];
        d.read(4, &mut b);
        assert_eq!(b, [0xFF; 8]);
        d.read(0xFFC, &mut [0u8; 8]);
        // A write to a read-only register is refused.
        assert_eq!(w32(&mut d, reg::MAGIC, 1, &h), None);
        assert_eq!(r32(&mut d, reg::STATUS), status::EINVAL_ACCESS);
        assert_eq!(r32(&mut d, reg::MAGIC), MAGIC);
        // An 8-byte write over COMMAND+EXIT does nothing.
        assert_eq!(w64(&mut d, reg::COMMAND, 0x0000_0001_0000_0001, &h), None);
        assert_eq!(r32(&mut d, reg::STATUS), status::EINVAL_ACCESS);
        assert!(h.zeroed.borrow().is_empty());
    }

    #[test]
    fn exit_status() {
        let h = FakeHost::default();
        let mut d = dev();
        assert_eq!(w32(&mut d, reg::EXIT, 0, &h), Some(PvEvent::Exit(0)));
        assert_eq!(w32(&mut d, reg::EXIT, 255, &h), Some(PvEvent::Exit(255)));
        assert_eq!(w32(&mut d, reg::EXIT, 256, &h), None);
        assert_eq!(r32(&mut d, reg::STATUS), status::EINVAL_CMD);
    }

    #[test]
    fn version_negotiation() {
        let h = FakeHost::default();
        let mut d = dev();
        w32(&mut d, reg::GUEST_VERSION, 7, &h);
        assert_eq!(r32(&mut d, reg::STATUS), status::EVERSION);
        w64(&mut d, reg::ARG_ADDR, GIB, &h);
        w64(&mut d, reg::ARG_LEN, GIB, &h);
        w32(&mut d, reg::COMMAND, command::ZERO, &h);
        assert_eq!(r32(&mut d, reg::STATUS), status::EVERSION);
        assert!(h.zeroed.borrow().is_empty());
        w32(&mut d, reg::GUEST_VERSION, 1, &h);
        assert_eq!(r32(&mut d, reg::STATUS), status::OK);
        w32(&mut d, reg::COMMAND, command::ZERO, &h);
        assert_eq!(r32(&mut d, reg::STATUS), status::OK);
        assert_eq!(*h.zeroed.borrow(), vec![(GIB, GIB)]);
    }

    #[test]
    fn zero_checks_ranges_and_alignment() {
        let h = FakeHost::default();
        let mut d = dev();
        let zero = |d: &mut PvDevice, a: u64, l: u64| {
            w64(d, reg::ARG_ADDR, a, &h);
            w64(d, reg::ARG_LEN, l, &h);
            w32(d, reg::COMMAND, command::ZERO, &h);
            r32(d, reg::STATUS)
        };
        assert_eq!(zero(&mut d, 2 * GIB, GIB), status::OK);
        assert_eq!(zero(&mut d, 4 * GIB, 3 * GIB), status::OK);
        // Spans two ranges (the hole in between).
        assert_eq!(zero(&mut d, 2 * GIB, 3 * GIB), status::ERANGE);
        // Outside the pool, unaligned, empty, overflowing.
        assert_eq!(zero(&mut d, 0, GIB), status::ERANGE);
        assert_eq!(zero(&mut d, GIB + 4096, GIB), status::ERANGE);
        assert_eq!(zero(&mut d, GIB, 4096), status::ERANGE);
        assert_eq!(zero(&mut d, GIB, 0), status::ERANGE);
        assert_eq!(zero(&mut d, u64::MAX - GIB + 1, GIB), status::ERANGE);
        assert_eq!(zero(&mut d, 4 * GIB, u64::MAX), status::ERANGE);
        assert_eq!(*h.zeroed.borrow(), vec![(2 * GIB, GIB), (4 * GIB, 3 * GIB)]);
        let failing = FakeHost {
            fail_zero: true,
            ..Default::default()
        };
        w64(&mut d, reg::ARG_ADDR, GIB, &failing);
        w64(&mut d, reg::ARG_LEN, GIB, &failing);
        w32(&mut d, reg::COMMAND, command::ZERO, &failing);
        assert_eq!(r32(&mut d, reg::STATUS), status::EIO);
    }

    #[test]
    fn args_in_32_bit_halves() {
        let h = FakeHost::default();
        let mut d = dev();
        w32(&mut d, reg::ARG_ADDR, 0, &h);
        w32(&mut d, reg::ARG_ADDR + 4, 1, &h);
        w32(&mut d, reg::ARG_LEN, GIB as u32, &h);
        w32(&mut d, reg::ARG_LEN + 4, 0, &h);
        w32(&mut d, reg::COMMAND, command::ZERO, &h);
        assert_eq!(r32(&mut d, reg::STATUS), status::OK);
        assert_eq!(*h.zeroed.borrow(), vec![(4 * GIB, GIB)]);
    }

    #[test]
    fn result_line() {
        let mut ram = vec![0u8; 8192];
        ram[100..114].copy_from_slice(b"GFLOPS 12.5 ok");
        ram[200] = 0xFF;
        let h = FakeHost {
            ram,
            ..Default::default()
        };
        let mut d = dev();
        w64(&mut d, reg::ARG_ADDR, 100, &h);
        w64(&mut d, reg::ARG_LEN, 14, &h);
        assert_eq!(
            w32(&mut d, reg::COMMAND, command::RESULT, &h),
            Some(PvEvent::Result("GFLOPS 12.5 ok".into()))
        );
        w64(&mut d, reg::ARG_ADDR, 200, &h);
        w64(&mut d, reg::ARG_LEN, 1, &h);
        assert_eq!(w32(&mut d, reg::COMMAND, command::RESULT, &h), None);
        assert_eq!(r32(&mut d, reg::STATUS), status::EINVAL_CMD);
        w64(&mut d, reg::ARG_LEN, MAX_RESULT_BYTES + 1, &h);
        assert_eq!(w32(&mut d, reg::COMMAND, command::RESULT, &h), None);
        assert_eq!(r32(&mut d, reg::STATUS), status::ERANGE);
        w64(&mut d, reg::ARG_ADDR, 8000, &h);
        w64(&mut d, reg::ARG_LEN, 1000, &h);
        assert_eq!(w32(&mut d, reg::COMMAND, command::RESULT, &h), None);
        assert_eq!(r32(&mut d, reg::STATUS), status::ERANGE);
        w32(&mut d, reg::COMMAND, 99, &h);
        assert_eq!(r32(&mut d, reg::STATUS), status::EINVAL_CMD);
    }

    /// A deterministic fuzzer over offsets, sizes and values: the device must never panic,
    /// never zero outside the pool, and every status it reports must be a defined one.
    #[test]
    fn fuzz_register_protocol() {
        let h = FakeHost {
            ram: vec![b'x'; 4096],
            ..Default::default()
        };
        let mut d = dev();
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let interesting = [0u64, 1, 4096, GIB, 2 * GIB, 4 * GIB, u64::MAX, 1 << 63];
        for _ in 0..200_000 {
            let r = next();
            let off = if r % 3 == 0 {
                (r >> 8) % 0x1000
            } else {
                ((r >> 8) % 0x40) & !3
            };
            let len = [1usize, 2, 3, 4, 8, 16][((r >> 20) % 6) as usize];
            let mut buf = vec![0u8; len];
            if r & 1 == 0 {
                d.read(off, &mut buf);
            } else {
                let v = if r & 2 == 0 {
                    interesting[((r >> 32) % 8) as usize]
                } else {
                    next()
                };
                let bytes = v.to_le_bytes();
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = bytes[i % 8];
                }
                let _ = d.write(off, &buf, &h);
            }
            assert!(d.status() <= status::EIO);
        }
        for (a, l) in h.zeroed.borrow().iter() {
            assert!(d.ranges.iter().any(|r| r.contains(*a, *l)));
            assert_eq!(a % GIB, 0);
            assert_eq!(l % GIB, 0);
        }
    }
}
