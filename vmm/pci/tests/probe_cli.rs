//! The `hpmmap-vf-probe` binary's bad input: exit status 2, one line, nothing claimed
//! (every check comes before a sysfs write; a real probe needs the nested lab).

use std::process::{Command, Output};

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hpmmap-vf-probe"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bad_input_exits_2_with_one_line_and_does_nothing() {
    // `silent`: refused before the first step is announced.
    for (args, needle, silent) in [
        (
            vec!["--vf", "../x"],
            "not a device name or PCI address",
            false,
        ),
        (
            vec!["--vf", "ib0", "--pkey", "0x7fff"],
            "default partition",
            true,
        ),
        (
            vec!["--vf", "ib0", "--vf-guid", "0x12"],
            "not a 64-bit GUID",
            true,
        ),
        (vec!["--vf", "ib0", "--mem", "5x"], "not a size", true),
    ] {
        let o = probe(&args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(
            e.starts_with("hpmmap-vf-probe: ") || e.starts_with("error: "),
            "{args:?}: {e}"
        );
        if e.starts_with("hpmmap-vf-probe: ") {
            assert_eq!(e.lines().count(), 1, "{args:?}: {e}");
        }
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(
            !silent || o.stdout.is_empty(),
            "{args:?}: nothing done before the check"
        );
    }
}
