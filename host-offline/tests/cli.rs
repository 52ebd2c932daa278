//! The binary against recorded trees: exit codes, one-line errors naming the flag, and the
//! host tree unchanged on bad input. (In these trees attributes are plain files: a write
//! reads back as written. Kernel behaviour is covered in recorded_trees.rs.)

mod common;

use common::trees::{self, Tree};
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_hpmmap-offline");

fn run(t: &Tree, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--sysfs-root")
        .arg(t.sys())
        .arg("--proc-root")
        .arg(t.proc())
        .arg("--state-file")
        .arg(t.state())
        .args(args)
        .env_remove("HPMMAP_OFFLINE_STATE")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn expect_input_error(t: &Tree, args: &[&str], want: &str) {
    let before = t.snapshot();
    let state_before = std::fs::read(t.state()).ok();
    let o = run(t, args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(want),
        "{args:?}: stderr {err:?} lacks {want:?}"
    );
    assert_eq!(t.snapshot(), before, "{args:?} changed the tree");
    assert_eq!(
        std::fs::read(t.state()).ok(),
        state_before,
        "{args:?} touched the state"
    );
    if state_before.is_none() {
        assert!(!t.path("run").exists(), "{args:?} left a state directory");
    }
}

#[test]
fn bad_input_exits_2_with_the_host_unchanged() {
    let t = trees::one_node("cli-bad");
    let one_line = run(&t, &["reserve", "--size", "1536M"]);
    assert_eq!(
        stderr(&one_line).lines().count(),
        1,
        "{}",
        stderr(&one_line)
    );
    expect_input_error(
        &t,
        &["reserve", "--size", "1536M"],
        "--size 1536M: not a whole number of GiB",
    );
    expect_input_error(&t, &["reserve", "--size", "lots"], "--size \"lots\"");
    expect_input_error(
        &t,
        &["reserve", "--size", "2G", "--keep", "100M"],
        "--keep 100M",
    );
    expect_input_error(
        &t,
        &["reserve", "--size", "2G", "--node", "7"],
        "--node 7: no such NUMA node",
    );
    expect_input_error(
        &t,
        &["reserve", "--size", "64G"],
        "node 0 has 20 GiB of memory",
    );
    expect_input_error(
        &t,
        &["reserve", "--size", "19G", "--keep", "2G"],
        "cannot fit",
    );
    expect_input_error(
        &t,
        &["reserve", "--size", "2G", "--offline-timeout", "0"],
        "--offline-timeout",
    );
    expect_input_error(&t, &["release", "--size", "2G"], "holds nothing");
    expect_input_error(&t, &["release"], "--size");
    expect_input_error(
        &t,
        &["reserve", "--size", "2G", "--node", "0", "--spread"],
        "cannot be used with",
    );
    expect_input_error(
        &t,
        &["reserve", "--size", "2G", "--devdax"],
        "no dax device on this host can serve it (none found)",
    );

    let two = trees::two_nodes("cli-two");
    expect_input_error(
        &two,
        &["reserve", "--size", "2G"],
        "pass --node N or --spread",
    );

    let no1g = trees::no_1g("cli-no1g");
    expect_input_error(
        &no1g,
        &["reserve", "--size", "1G"],
        "no 1 GiB huge page support",
    );

    let v = trees::one_node("cli-ver");
    v.write(
        "run/hpmmap/offline.json",
        r#"{"format":"hpmmap-offline-state","version":99}"#,
    );
    expect_input_error(&v, &["reserve", "--size", "1G"], "version 99");
    expect_input_error(&v, &["release", "--all"], "version 99");
    expect_input_error(&v, &["status"], "version 99");
}

#[test]
fn status_json_describes_the_recorded_host() {
    let t = trees::one_node("cli-status");
    let o = run(&t, &["status", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format"], "hpmmap-offline-status");
    assert_eq!(v["supported_1g"], true);
    assert_eq!(v["page_size_bytes"], 1u64 << 30);
    let n0 = &v["nodes"][0];
    assert_eq!(n0["node"], 0);
    assert_eq!(n0["mem_total_bytes"], 20u64 << 30);
    assert_eq!(n0["blocks"]["block_size_bytes"], 128u64 << 20);
    assert_eq!(n0["blocks"]["online"], 192);
    assert_eq!(n0["blocks"]["online_by_zone"]["DMA32"], 23);
    assert_eq!(n0["pages_1g"]["nr"], 0);
    assert!(v["state"].is_null());
    let text = run(&t, &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("memory blocks (128 MiB each): 192 online"),
        "{text}"
    );
}

#[test]
fn binary_reserve_and_release_write_the_state_file_and_remove_it() {
    let t = trees::one_node("cli-e2e");
    let o = run(
        &t,
        &["reserve", "--size", "2G", "--node", "0", "--json", "-q"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "--quiet printed {}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["complete"], true);
    assert_eq!(r["nodes"][0]["added"], 2);
    assert_eq!(t.nr(0), 2);
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.state()).unwrap()).unwrap();
    assert_eq!(st["format"], "hpmmap-offline-state");
    assert_eq!(st["version"], 2);
    assert_eq!(st["nodes"]["0"]["reserved"], 2);
    assert_eq!(st["sysfs_root"], t.sys().to_string_lossy().as_ref());
    // No kernel behind this tree: free_hugepages did not follow the write, so to release
    // the pages look in use, and release keeps them (exit 3, state kept).
    let o = run(&t, &["release", "--all"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("only 0 free"));
    assert_eq!(t.nr(0), 2);
    assert!(t.state().exists());
    // What the kernel would show after the grow: both new pages free.
    t.write(
        "sys/devices/system/node/node0/hugepages/hugepages-1048576kB/free_hugepages",
        "2\n",
    );
    let o = run(&t, &["release", "--all"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("holds nothing now"));
    assert_eq!(t.nr(0), 0);
    assert!(!t.state().exists());
}

/// The README's first command on a host set up as the README recommends (issue 19):
/// `hugepagesz=1G hugepages=18` at boot, then `reserve --size 18G`. Exit 0, the pool left
/// alone (a plain-file tree shows any write), and `release --all` leaves it as it was.
#[test]
fn reserve_on_a_host_with_boot_time_pages_adopts_them_and_exits_0() {
    let t = trees::one_node("cli-boot18");
    trees::set_meminfo(&t, 0, 21 << 20, 2 << 20);
    for f in ["nr_hugepages", "free_hugepages"] {
        t.write(
            &format!("sys/devices/system/node/node0/hugepages/hugepages-1048576kB/{f}"),
            "18\n",
        );
        t.write(
            &format!("sys/kernel/mm/hugepages/hugepages-1048576kB/{f}"),
            "18\n",
        );
    }
    let before = t.snapshot();
    let o = run(&t, &["reserve", "--size", "18G"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(
        out.contains("node 0: 18 of 18 GiB reserved (18 free page(s) already in the pool adopted, 0 added by this run)"),
        "{out}"
    );
    assert!(!out.contains("passed over"), "{out}");
    assert_eq!(t.snapshot(), before, "reserve wrote to sysfs");
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.state()).unwrap()).unwrap();
    assert_eq!(
        (&st["nodes"]["0"]["adopted"], &st["nodes"]["0"]["reserved"]),
        (&serde_json::json!(18), &serde_json::json!(0))
    );
    let status = String::from_utf8_lossy(&run(&t, &["status"]).stdout).into_owned();
    assert!(
        status.contains(
            "reserved by hpmmap-offline 18 (18 adopted from the pool already there, 0 added)"
        ),
        "{status}"
    );
    let o = run(&t, &["release", "--all"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(
        out.contains("released 18 of 18 GiB (18 adopted page(s) left in the pool, as before)"),
        "{out}"
    );
    assert!(out.contains("holds nothing now"), "{out}");
    assert!(!t.state().exists());
    assert_eq!(t.snapshot(), before, "release changed the host");
}

#[test]
fn not_root_is_refused_on_the_live_sysfs() {
    let dir = common::Scratch::new("cli-notroot");
    let state = dir.path().join("run/offline.json");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        if !Path::new("/usr/bin/setpriv").exists() {
            hpmmap_testkit::skip(
                hpmmap_testkit::Tier::Tools,
                "reserve as non-root",
                "running as root and setpriv (util-linux) is missing to drop privileges",
            );
            return;
        }
        let mut c = Command::new("/usr/bin/setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let o = cmd
        .args(["reserve", "--size", "1G", "--state-file"])
        .arg(&state)
        .output()
        .unwrap();
    let err = stderr(&o);
    if err.contains("no 1 GiB huge page support") {
        hpmmap_testkit::skip(
            hpmmap_testkit::Tier::Hugetlb,
            "reserve as non-root",
            "this kernel has no 1 GiB pages, so the root check is never reached",
        );
        return;
    }
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("needs root"), "{err}");
    assert!(!state.parent().unwrap().exists(), "state directory created");
    for args in [
        &["release", "--all"][..],
        &["reserve", "--size", "1G", "--devdax"][..],
    ] {
        let mut c = if root {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
            c
        } else {
            Command::new(BIN)
        };
        let o = c
            .args(args)
            .arg("--state-file")
            .arg(&state)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("needs root"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}
