//! PCI addresses as sysfs names them (`DDDD:BB:DD.F`).

use std::fmt;
use std::str::FromStr;

/// A PCI function address: domain, bus, device (slot), function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddr {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciAddr {
    /// The 16-bit routing ID (bus, device, function) that SR-IOV offsets are counted in.
    pub fn routing_id(&self) -> u16 {
        (u16::from(self.bus) << 8) | (u16::from(self.device) << 3) | u16::from(self.function)
    }

    pub fn from_routing_id(domain: u32, rid: u16) -> Self {
        PciAddr {
            domain,
            bus: (rid >> 8) as u8,
            device: ((rid >> 3) & 0x1f) as u8,
            function: (rid & 7) as u8,
        }
    }
}

impl fmt::Display for PciAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// Why a string is not a PCI address; the caller decides whether that is an error
/// (a VF address) or a hint to treat the string as a device name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a PCI address (expected [DDDD:]BB:DD.F in hex)")]
pub struct ParsePciAddrError(pub String);

impl FromStr for PciAddr {
    type Err = ParsePciAddrError;

    /// Accepts `DDDD:BB:DD.F` and the short `BB:DD.F` (domain 0), as lspci prints them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePciAddrError(s.to_string());
        let (head, func) = s.rsplit_once('.').ok_or_else(err)?;
        let parts: Vec<&str> = head.split(':').collect();
        let (dom, bus, dev) = match parts.as_slice() {
            [d, b, v] => (*d, *b, *v),
            [b, v] => ("0", *b, *v),
            _ => return Err(err()),
        };
        let hex_ok = |p: &str, max: usize| {
            !p.is_empty() && p.len() <= max && p.chars().all(|c| c.is_ascii_hexdigit())
        };
        if !hex_ok(dom, 4) || !hex_ok(bus, 2) || !hex_ok(dev, 2) || !hex_ok(func, 1) {
            return Err(err());
        }
        let domain = u32::from_str_radix(dom, 16).map_err(|_| err())?;
        let bus = u8::from_str_radix(bus, 16).map_err(|_| err())?;
        let device = u8::from_str_radix(dev, 16).map_err(|_| err())?;
        let function = u8::from_str_radix(func, 16).map_err(|_| err())?;
        if device > 0x1f || function > 7 {
            return Err(err());
        }
        Ok(PciAddr {
            domain,
            bus,
            device,
            function,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms() {
        let a: PciAddr = "0000:3b:00.1".parse().unwrap();
        assert_eq!(
            a,
            PciAddr {
                domain: 0,
                bus: 0x3b,
                device: 0,
                function: 1
            }
        );
        let b: PciAddr = "3b:00.1".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "0000:3b:00.1");
    }

    #[test]
    fn rejects_names_and_out_of_range_fields() {
        for bad in [
            "ib0",
            "mlx5_0",
            "3b:00",
            "0000:3b:20.0",
            "0000:3b:00.8",
            "x:3b:00.0",
            "",
        ] {
            assert!(bad.parse::<PciAddr>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn routing_id_round_trips() {
        let a: PciAddr = "0000:3b:01.3".parse().unwrap();
        assert_eq!(a.routing_id(), 0x3b0b);
        assert_eq!(PciAddr::from_routing_id(0, 0x3b0b), a);
    }
}
