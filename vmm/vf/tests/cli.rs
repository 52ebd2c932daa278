//! The `hpmmap-vf` binary: exit statuses and one-line errors. Reads recorded trees
//! (--root) and this host's sysfs; never binds anything.

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

#[test]
fn bad_infiniband_input_exits_2_with_one_line_and_changes_nothing() {
    let cx6 = fixture("connectx6");
    let igb = fixture("igb-lab-recorded");
    for (args, needle) in [
        (
            vec!["resolve", "--vf", "ib0", "--root", &cx6, "--pkey", "0x0000"],
            "--pkey '0x0000': 0x0000 / 0x8000 is the invalid P_Key",
        ),
        (
            vec!["resolve", "--vf", "ib0", "--root", &cx6, "--pkey", "0x7fff"],
            "default partition",
        ),
        (
            vec!["resolve", "--vf", "ib0", "--root", &cx6, "--pkey", "0xffff"],
            "default partition",
        ),
        (
            vec![
                "resolve", "--vf", "ib0", "--root", &cx6, "--pkey", "0x18123",
            ],
            "out of range",
        ),
        (
            vec!["resolve", "--vf", "ib0", "--root", &cx6, "--pkey", "8123"],
            "write P_Keys in hex",
        ),
        (
            vec![
                "selftest",
                "--vf",
                "ib0",
                "--root",
                &cx6,
                "--vf-guid",
                "0x2c903000001",
            ],
            "not a 64-bit GUID",
        ),
        (
            vec![
                "selftest",
                "--vf",
                "ib0",
                "--root",
                &cx6,
                "--vf-guid",
                "00:02:c9:03:00:00:01",
            ],
            "not a 64-bit GUID",
        ),
        (
            vec![
                "selftest",
                "--vf",
                "ib0",
                "--root",
                &cx6,
                "--vf-guid",
                "0x0000000000000000",
            ],
            "0 means 'no GUID'",
        ),
        (
            vec!["resolve", "--vf", "ib0", "--root", &cx6, "--job", "a b"],
            "--job 'a b'",
        ),
        (
            vec![
                "resolve", "--vf", "eth0", "--root", &igb, "--pkey", "0x8123",
            ],
            "--pkey needs an InfiniBand VF, but PF 0000:01:00.0 is not an InfiniBand port",
        ),
    ] {
        let o = hpmmap_vf(&args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert_eq!(e.lines().count(), 1, "{args:?}: {e}");
        assert!(
            e.starts_with("hpmmap-vf: ") && e.contains(needle),
            "{args:?}: {e}"
        );
        assert!(
            o.stdout.is_empty(),
            "{args:?}: nothing done before the check"
        );
    }
}

#[test]
fn partitions_and_recover_on_a_crashed_host() {
    // A private copy: recover writes (through the simulated kernel), partitions writes
    // the copy's etc/opensm/partitions.conf.
    let root = std::env::temp_dir().join(format!("hpmmap-vf-cli-crashed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    hpmmap_vf::sim::copy_tree(std::path::Path::new(&fixture("connectx6-crashed")), &root).unwrap();
    let r = root.to_str().unwrap();
    let conf = root.join("etc/opensm/partitions.conf");
    let c = conf.to_str().unwrap();

    let o = hpmmap_vf(&["partitions", "--root", r, "--list"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "the only job is gone");
    assert!(
        stderr(&o).contains("job 'crashed1' (pid 9999) is gone"),
        "{}",
        stderr(&o)
    );

    let o = hpmmap_vf(&["partitions", "--root", r, "--out", c, "--signal-opensm"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.contains("0 job partition(s) written"), "{out}");
    assert!(
        out.contains("opensm pid 777: SIGHUP not sent (--root)"),
        "{out}"
    );
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(!text.contains("hpmmap_crashed1"), "{text}");
    assert!(
        text.contains("storage=0x0042"),
        "the admin's lines stay: {text}"
    );

    let o = hpmmap_vf(&["recover", "--root", r]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        out.contains("VF 0000:3b:00.3: job 'crashed1' (pid 9999) is gone; put back on no driver"),
        "{out}"
    );
    let node = std::fs::read_to_string(root.join("sys/bus/pci/devices/0000:3b:00.0/sriov/2/node"))
        .unwrap();
    assert_eq!(node, "00:00:00:00:00:00:00:00\n");
    let o = hpmmap_vf(&["recover", "--root", r]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("no claim records"));

    // An open default partition: nothing written, exit 1.
    std::fs::write(&conf, "Default=0x7fff : ALL=full ;\n").unwrap();
    let rec = root.join("run/hpmmap/vf/0000:3b:00.1.claim");
    std::fs::write(&rec, "hpmmap-vf-claim 1\npid=777\nstart=\nhost=node01\njob=j1\npf=0000:3b:00.0\nvf=0000:3b:00.1\noriginal_driver=mlx5_core\noriginal_override=\nvf_index=0\nguid=0x0200000300a1b2c0\npkey=0x8123\norig_node=00:00:00:00:00:00:00:00\norig_port=00:00:00:00:00:00:00:00\norig_policy=Down\nib_done=3\n").unwrap();
    let o = hpmmap_vf(&["partitions", "--root", r, "--out", c]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("makes every channel adapter a full member"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "Default=0x7fff : ALL=full ;\n"
    );
    let o = hpmmap_vf(&["partitions", "--root", r, "--list"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "j1 0x0123 0x0200000300a1b2c0 full # VF 0000:3b:00.1 on node01 (pid 777)\n"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
