//! The `hpmmap-vf` binary: exit statuses and one-line errors. Reads recorded trees
//! (--root) and this host's sysfs; never binds anything (probe fails before any write).

use std::process::{Command, Output};

fn hpmmap_vf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hpmmap-vf"))
        .args(args)
        .output()
        .unwrap()
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn selftest_exit_status_follows_the_report() {
    for (fx, expect_fail) in [
        ("connectx6", false),
        ("connectx6-no-iommu", true),
        ("connectx6-nonviable", true),
    ] {
        let o = hpmmap_vf(&[
            "selftest",
            "--root",
            &fixture(fx),
            "--vf",
            "ib0",
            "--mem",
            "2G",
        ]);
        let out = String::from_utf8_lossy(&o.stdout);
        let failed = out.contains("[FAIL]");
        // RLIMIT_MEMLOCK depends on who runs the tests; everything else on the tree.
        let only_memlock = out
            .lines()
            .filter(|l| l.starts_with("[FAIL]"))
            .all(|l| l.contains("RLIMIT_MEMLOCK"));
        assert_eq!(
            o.status.code(),
            Some(if failed { 1 } else { 0 }),
            "{fx}: {out}"
        );
        if !expect_fail {
            assert!(!failed || only_memlock, "{fx}: {out}");
        } else {
            assert!(failed && !only_memlock, "{fx}: {out}");
        }
    }
}

#[test]
fn bad_input_exits_2_with_one_line() {
    for args in [
        vec![
            "resolve",
            "--vf",
            "nosuch0",
            "--root",
            &fixture("connectx6"),
        ],
        vec!["resolve", "--vf", "eno1", "--root", &fixture("connectx6")],
        vec!["resolve", "--vf", "0000:3b:00.0", "--root", "/nonexistent"],
        vec!["probe", "--vf", "../x"],
        vec!["selftest", "--mem", "5x"],
    ] {
        let o = hpmmap_vf(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.starts_with("hpmmap-vf: ") || e.starts_with("error: "),
            "{args:?}: {e}"
        );
        if e.starts_with("hpmmap-vf: ") {
            assert_eq!(e.lines().count(), 1, "{args:?}: {e}");
        }
    }
    let e = stderr(&hpmmap_vf(&[
        "resolve",
        "--vf",
        "eno1",
        "--root",
        &fixture("connectx6"),
    ]));
    assert!(e.contains("0000:00:1f.6/sriov_totalvfs is missing"), "{e}");
}

#[test]
fn resolve_shows_every_vf_and_the_choice() {
    let o = hpmmap_vf(&["resolve", "--vf", "mlx5_0", "--root", &fixture("connectx6")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("virtfn1 0000:3b:00.2: Busy"), "{out}");
    assert!(out.contains("\nwould take virtfn2 0000:3b:00.3\n"), "{out}");
    assert!(
        out.trim_end().ends_with("InfiniBand (mlx5_0): would set node/port GUID 0x0200020300a1b2c0 (now 00:00:00:00:00:00:00:00 / 00:00:00:00:00:00:00:00) and policy Follow (now Down)"),
        "{out}"
    );
}

#[test]
fn record_refuses_an_existing_output_and_cleans_up_after_errors() {
    let out = std::env::temp_dir().join(format!("hpmmap-vf-cli-rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = hpmmap_vf(&[
        "record",
        "--root",
        &fixture("connectx6"),
        "--vf",
        "ib0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.join("sys/bus/pci/devices/0000:3b:00.3").exists());
    let o = hpmmap_vf(&[
        "record",
        "--root",
        &fixture("connectx6"),
        "--vf",
        "ib0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    std::fs::remove_dir_all(&out).unwrap();
    let o = hpmmap_vf(&[
        "record",
        "--root",
        &fixture("connectx6"),
        "--vf",
        "a/b",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!out.exists(), "half-written recording left behind");
}
