//! Warnings a guest can cause (BAR placements the host cannot map, MSI-X programming KVM
//! refuses) go to the host's log a bounded number of times per device: the guest is
//! untrusted and must not be able to grow the host's logs without bound.

/// Lines printed per device before the rest are only counted.
pub const GUEST_WARNINGS_MAX: u32 = 8;

#[derive(Debug, Default)]
pub struct GuestWarnings {
    seen: u32,
}

impl GuestWarnings {
    /// Prints `msg` (prefixed `hpmmap-pci: `) while under the limit; returns whether it did.
    pub fn warn(&mut self, device: &str, msg: impl std::fmt::Display) -> bool {
        self.seen = self.seen.saturating_add(1);
        match self.seen {
            n if n <= GUEST_WARNINGS_MAX => {
                eprintln!("hpmmap-pci: {device}: {msg}");
                true
            }
            n if n == GUEST_WARNINGS_MAX + 1 => {
                eprintln!(
                    "hpmmap-pci: {device}: more warnings caused by the guest; the rest are \
                     counted, not printed"
                );
                false
            }
            _ => false,
        }
    }

    /// How many were counted and not printed.
    pub fn suppressed(&self) -> u32 {
        self.seen.saturating_sub(GUEST_WARNINGS_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_cannot_grow_the_log_without_bound() {
        let mut w = GuestWarnings::default();
        let printed = (0..100_000).filter(|i| w.warn("vf", i)).count();
        assert_eq!(printed as u32, GUEST_WARNINGS_MAX);
        assert_eq!(w.suppressed(), 100_000 - GUEST_WARNINGS_MAX);
    }
}
