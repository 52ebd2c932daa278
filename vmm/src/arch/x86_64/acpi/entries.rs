//! Table entries the acpi_tables crate does not have (ACPI 6.5): MADT local x2APIC, local
//! x2APIC NMI, local APIC NMI and interrupt source override entries, and SRAT processor
//! affinity entries for local APIC and x2APIC IDs. Little-endian fields throughout.

use acpi_tables::{Aml, AmlSink};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{Immutable, IntoBytes};

macro_rules! raw_aml {
    ($t:ty) => {
        impl Aml for $t {
            fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
                sink.vec(self.as_bytes());
            }
        }
    };
}

/// MADT type 9 (ACPI 6.5, 5.2.12.12): a processor whose APIC ID does not fit 8 bits.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
pub struct LocalX2Apic {
    kind: u8,
    length: u8,
    _reserved: U16,
    x2apic_id: U32,
    flags: U32,
    uid: U32,
}

impl LocalX2Apic {
    pub fn enabled(x2apic_id: u32, uid: u32) -> Self {
        LocalX2Apic {
            kind: 9,
            length: 16,
            _reserved: 0.into(),
            x2apic_id: x2apic_id.into(),
            flags: 1.into(),
            uid: uid.into(),
        }
    }
}
raw_aml!(LocalX2Apic);

/// MADT type 2 (5.2.12.5): ISA IRQ `source` arrives on `gsi` with these polarity/trigger bits.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
pub struct InterruptSourceOverride {
    kind: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: U32,
    flags: U16,
}

/// MPS INTI flags: active high, edge triggered.
pub const INTI_EDGE_HIGH: u16 = 0b0101;

impl InterruptSourceOverride {
    pub fn isa(source: u8, gsi: u32, flags: u16) -> Self {
        InterruptSourceOverride {
            kind: 2,
            length: 10,
            bus: 0,
            source,
            gsi: gsi.into(),
            flags: flags.into(),
        }
    }
}
raw_aml!(InterruptSourceOverride);

/// MADT type 4 (5.2.12.7): NMI on LINT`lint` of the processors with this UID (0xFF: all).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
pub struct LocalApicNmi {
    kind: u8,
    length: u8,
    uid: u8,
    flags: U16,
    lint: u8,
}

impl LocalApicNmi {
    pub fn all(lint: u8) -> Self {
        LocalApicNmi {
            kind: 4,
            length: 6,
            uid: 0xFF,
            flags: 0.into(),
            lint,
        }
    }
}
raw_aml!(LocalApicNmi);

/// MADT type 10 (5.2.12.13): the x2APIC form of `LocalApicNmi` (UID 0xFFFFFFFF: all).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
pub struct LocalX2ApicNmi {
    kind: u8,
    length: u8,
    flags: U16,
    uid: U32,
    lint: u8,
    _reserved: [u8; 3],
}

impl LocalX2ApicNmi {
    pub fn all(lint: u8) -> Self {
        LocalX2ApicNmi {
            kind: 10,
            length: 12,
            flags: 0.into(),
            uid: u32::MAX.into(),
            lint,
            _reserved: [0; 3],
        }
    }
}
raw_aml!(LocalX2ApicNmi);

/// SRAT type 0 (5.2.16.1): the proximity domain of a processor with an 8-bit APIC ID.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
pub struct ApicAffinity {
    kind: u8,
    length: u8,
    domain_lo: u8,
    apic_id: u8,
    flags: U32,
    sapic_eid: u8,
    domain_hi: [u8; 3],
    clock_domain: U32,
}

impl ApicAffinity {
    pub fn enabled(apic_id: u8, domain: u32) -> Self {
        let d = domain.to_le_bytes();
        ApicAffinity {
            kind: 0,
            length: 16,
            domain_lo: d[0],
            apic_id,
            flags: 1.into(),
            sapic_eid: 0,
            domain_hi: [d[1], d[2], d[3]],
            clock_domain: 0.into(),
        }
    }
}
raw_aml!(ApicAffinity);

/// SRAT type 2 (5.2.16.3): the proximity domain of a processor by its x2APIC ID.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
pub struct X2ApicAffinity {
    kind: u8,
    length: u8,
    _reserved: U16,
    domain: U32,
    x2apic_id: U32,
    flags: U32,
    clock_domain: U32,
    _reserved2: U32,
}

impl X2ApicAffinity {
    pub fn enabled(x2apic_id: u32, domain: u32) -> Self {
        X2ApicAffinity {
            kind: 2,
            length: 24,
            _reserved: 0.into(),
            domain: domain.into(),
            x2apic_id: x2apic_id.into(),
            flags: 1.into(),
            clock_domain: 0.into(),
            _reserved2: 0.into(),
        }
    }
}
raw_aml!(X2ApicAffinity);

/// The bytes of any entry, for tables put together from raw pieces.
pub fn bytes_of(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_the_spec_and_the_length_byte() {
        let cases: [(&dyn Aml, usize); 7] = [
            (&LocalX2Apic::enabled(300, 300), 16),
            (&InterruptSourceOverride::isa(4, 4, INTI_EDGE_HIGH), 10),
            (&LocalApicNmi::all(1), 6),
            (&LocalX2ApicNmi::all(1), 12),
            (&ApicAffinity::enabled(3, 1), 16),
            (&X2ApicAffinity::enabled(300, 1), 24),
            (&LocalX2Apic::enabled(0, 0), 16),
        ];
        for (e, len) in cases {
            let b = bytes_of(e);
            assert_eq!(b.len(), len);
            assert_eq!(b[1] as usize, len, "length byte");
        }
    }

    #[test]
    fn field_offsets() {
        let x = bytes_of(&LocalX2Apic::enabled(0x1234_5678, 0x9ABC));
        assert_eq!(x[0], 9);
        assert_eq!(&x[4..8], &0x1234_5678u32.to_le_bytes());
        assert_eq!(&x[8..12], &1u32.to_le_bytes());
        assert_eq!(&x[12..16], &0x9ABCu32.to_le_bytes());
        let a = bytes_of(&ApicAffinity::enabled(7, 0x0102_0304));
        assert_eq!((a[0], a[2], a[3]), (0, 0x04, 7));
        assert_eq!(&a[4..8], &1u32.to_le_bytes());
        assert_eq!(&a[9..12], &[0x03, 0x02, 0x01]);
        let x2 = bytes_of(&X2ApicAffinity::enabled(400, 1));
        assert_eq!(x2[0], 2);
        assert_eq!(&x2[4..8], &1u32.to_le_bytes());
        assert_eq!(&x2[8..12], &400u32.to_le_bytes());
        assert_eq!(&x2[12..16], &1u32.to_le_bytes());
        let iso = bytes_of(&InterruptSourceOverride::isa(0, 2, INTI_EDGE_HIGH));
        assert_eq!((iso[0], iso[2], iso[3]), (2, 0, 0));
        assert_eq!(&iso[4..8], &2u32.to_le_bytes());
        assert_eq!(&iso[8..10], &5u16.to_le_bytes());
        let nmi = bytes_of(&LocalX2ApicNmi::all(1));
        assert_eq!(&nmi[4..8], &u32::MAX.to_le_bytes());
        assert_eq!(nmi[8], 1);
    }
}
