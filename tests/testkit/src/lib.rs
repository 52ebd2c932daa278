//! Test tiers for every crate of the workspace.
//!
//! Tests that need something beyond a compiler (KVM, root, 1 GiB pages, QEMU, the nested lab,
//! an optional tool) call [`ran`] when they really run and [`skip`] when they cannot. Both
//! append a line to the ledger named by `HPMMAP_TIER_LOG` (scripts/test.sh sets it and prints
//! a table from it at the end), so a green run says what it proved. `HPMMAP_REQUIRE=lab,kvm`
//! (or `all`) turns a skip of a listed tier into a test failure: CI sets it for every tier its
//! machine provides, so a missing prerequisite can never pass as green.

use std::fmt::Display;
use std::io::Write;

/// What a test needs beyond the compiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// A usable /dev/kvm on the build host.
    Kvm,
    /// Root on the build host (sysfs writes, namespaces, hugetlbfs mounts).
    Root,
    /// 1 GiB (or 2 MiB) hugetlb pages the host can give.
    Hugetlb,
    /// QEMU/TCG booting a guest directly.
    Qemu,
    /// The nested lab: QEMU/TCG L1 with SVM+NPT, a real KVM inside.
    Lab,
    /// An optional tool or package (opensm's man page, cpio, setpriv, a static libc).
    Tools,
}

impl Tier {
    pub const ALL: [Tier; 6] = [
        Tier::Kvm,
        Tier::Root,
        Tier::Hugetlb,
        Tier::Qemu,
        Tier::Lab,
        Tier::Tools,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Kvm => "kvm",
            Tier::Root => "root",
            Tier::Hugetlb => "hugetlb",
            Tier::Qemu => "qemu",
            Tier::Lab => "lab",
            Tier::Tools => "tools",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name() == s)
    }
}

/// The tiers listed in `HPMMAP_REQUIRE` (comma separated; `all` means every tier).
/// Unknown names panic: a typo must not silently require nothing.
pub fn required_tiers(spec: &str) -> Vec<Tier> {
    let mut out = Vec::new();
    for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if word == "all" {
            return Tier::ALL.to_vec();
        }
        match Tier::parse(word) {
            Some(t) => out.push(t),
            None => panic!(
                "HPMMAP_REQUIRE: unknown tier '{word}' (tiers: kvm, root, hugetlb, qemu, lab, tools, all)"
            ),
        }
    }
    out
}

pub fn is_required(tier: Tier) -> bool {
    std::env::var("HPMMAP_REQUIRE").is_ok_and(|s| required_tiers(&s).contains(&tier))
}

/// Longest reason the ledger keeps (the test's own output keeps all of it).
const MAX_REASON: usize = 240;

/// One ledger line: `ran|skip <tier> <test>[ <reason>]`, newlines flattened so that one event
/// stays one line even when several test threads append at once.
fn ledger_line(event: &str, tier: Tier, test: &str, reason: &str) -> String {
    let flat = |s: &str| s.replace(['\n', '\r'], " ");
    let test = flat(test).replace(' ', "_");
    // The table shows one line per reason: a tool's whole output is cut at a char boundary.
    let mut reason = flat(reason);
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str(" ...");
    }
    if reason.is_empty() {
        format!("{event} {} {test}\n", tier.name())
    } else {
        format!("{event} {} {test} {reason}\n", tier.name())
    }
}

fn record(line: &str) {
    let Ok(path) = std::env::var("HPMMAP_TIER_LOG") else {
        return;
    };
    // O_APPEND with one write per line keeps concurrent test threads' lines whole.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path);
    match f {
        Ok(mut f) => {
            let _ = f.write_all(line.as_bytes());
        }
        Err(e) => eprintln!("hpmmap-testkit: cannot append to HPMMAP_TIER_LOG={path}: {e}"),
    }
}

/// `test` runs in `tier`: counted in the run's table.
pub fn ran(tier: Tier, test: &str) {
    record(&ledger_line("ran", tier, test, ""));
}

/// `test` cannot run in `tier` here, because of `reason`: prints `SKIP[tier]: test: reason`,
/// records it, and panics (fails the test) when the tier is required.
pub fn skip(tier: Tier, test: &str, reason: impl Display) {
    let reason = reason.to_string();
    println!("SKIP[{}]: {test}: {reason}", tier.name());
    record(&ledger_line("skip", tier, test, &reason));
    if is_required(tier) {
        panic!(
            "{test}: the {} tier is required here (HPMMAP_REQUIRE) but cannot run: {reason}",
            tier.name()
        );
    }
}

/// `test` (or part of it) does not apply to this platform (a check only kvm_pvm can make, a
/// host with fewer NUMA nodes than the case needs): printed and counted as `n/a`, never a
/// failure, since no machine lacks anything.
pub fn not_applicable(tier: Tier, test: &str, reason: impl Display) {
    let reason = reason.to_string();
    println!("N/A[{}]: {test}: {reason}", tier.name());
    record(&ledger_line("n/a", tier, test, &reason));
}

/// `Ok` from `ready` records a run and returns true; `Err(reason)` is a [`skip`].
pub fn enter(tier: Tier, test: &str, ready: Result<(), String>) -> bool {
    match ready {
        Ok(()) => {
            ran(tier, test);
            true
        }
        Err(reason) => {
            skip(tier, test, reason);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_lists_parse_and_all_means_every_tier() {
        assert_eq!(required_tiers("lab, kvm"), vec![Tier::Lab, Tier::Kvm]);
        assert_eq!(required_tiers("all"), Tier::ALL.to_vec());
        assert!(required_tiers("").is_empty());
    }

    #[test]
    #[should_panic(expected = "unknown tier 'labs'")]
    fn a_misspelt_tier_is_an_error_not_nothing() {
        required_tiers("kvm,labs");
    }

    #[test]
    fn ledger_lines_stay_one_line() {
        assert_eq!(
            ledger_line("skip", Tier::Qemu, "boot test", "no\nqemu"),
            "skip qemu boot_test no qemu\n"
        );
        assert_eq!(ledger_line("ran", Tier::Lab, "x", ""), "ran lab x\n");
        let long = ledger_line("n/a", Tier::Hugetlb, "t", &"é".repeat(400));
        assert!(long.ends_with(" ...\n") && long.len() < 300, "{long}");
    }
}
