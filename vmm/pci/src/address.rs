//! Decoding config-space addresses: the conf1 address register and ECAM offsets.

/// A config-space register of one function on bus 0..255.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigAddress {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
    /// Byte offset inside the function's config space (0..4096).
    pub offset: u16,
}

const CONF1_ENABLE: u32 = 1 << 31;

/// The function and register a conf1 data-port access at `port` (0xCFC..=0xCFF) reaches
/// when the address register holds `address`; None while the enable bit is clear (the
/// access goes nowhere). Bits 30:24 are reserved and ignored, bits 1:0 of the register
/// number come from the data port.
pub fn decode_conf1(address: u32, port: u16) -> Option<ConfigAddress> {
    if address & CONF1_ENABLE == 0 {
        return None;
    }
    Some(ConfigAddress {
        bus: (address >> 16) as u8,
        device: ((address >> 11) & 0x1f) as u8,
        function: ((address >> 8) & 0x7) as u8,
        offset: (address & 0xfc) as u16 | (port & 3),
    })
}

/// The register an access at byte `offset` into the ECAM window reaches.
pub fn decode_ecam(offset: u64) -> ConfigAddress {
    ConfigAddress {
        bus: ((offset >> 20) & 0xff) as u8,
        device: ((offset >> 15) & 0x1f) as u8,
        function: ((offset >> 12) & 0x7) as u8,
        offset: (offset & 0xfff) as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf1_fields_and_data_port_byte_lanes() {
        // bus 0, device 3, function 0, register 0x10, enabled.
        let a = 0x8000_0000 | (3 << 11) | 0x10;
        assert_eq!(
            decode_conf1(a, 0xCFC),
            Some(ConfigAddress {
                bus: 0,
                device: 3,
                function: 0,
                offset: 0x10
            })
        );
        assert_eq!(decode_conf1(a, 0xCFE).unwrap().offset, 0x12);
        assert_eq!(decode_conf1(a, 0xCFF).unwrap().offset, 0x13);
        // The low two address bits are not part of the register number.
        assert_eq!(decode_conf1(a | 3, 0xCFD).unwrap().offset, 0x11);
        let b = 0x8000_0000 | (0xab << 16) | (31 << 11) | (7 << 8) | 0xfc;
        let d = decode_conf1(b, 0xCFC).unwrap();
        assert_eq!((d.bus, d.device, d.function, d.offset), (0xab, 31, 7, 0xfc));
        assert_eq!(decode_conf1(a & !0x8000_0000, 0xCFC), None);
        // Reserved bits do not change the target.
        assert_eq!(decode_conf1(a | 0x7f00_0000, 0xCFC), decode_conf1(a, 0xCFC));
    }

    #[test]
    fn ecam_fields() {
        let d = decode_ecam((2 << 20) | (5 << 15) | (1 << 12) | 0x104);
        assert_eq!(
            d,
            ConfigAddress {
                bus: 2,
                device: 5,
                function: 1,
                offset: 0x104
            }
        );
        assert_eq!(decode_ecam(0xfff).offset, 0xfff);
    }
}
