//! Tenant isolation on the fabric: OpenSM partitions.conf from the claim records of
//! running jobs. Claims run against hand-built ConnectX-6 trees with the kernel's reaction
//! SIMULATED (src/sim.rs). The file is checked against the grammar of opensm(8) (OpenSM
//! 3.3.23, Debian's `opensm`), whose partition parser runs only inside an opensm that owns
//! an HCA port: `opensm -P FILE` without one stops at "Unable to open port" before it
//! reads the file, so a parser written from the documented grammar stands in for it.

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use common::Fixture;
use hpmmap_vf::partitions::{self, Member, Membership};
use hpmmap_vf::records;
use hpmmap_vf::{claim_vf_with, Guid, IbOptions, VfRequest};

fn req(spec: &str) -> VfRequest {
    VfRequest {
        spec: spec.into(),
        create: None,
    }
}

fn ib(pkey: &str, job: &str) -> IbOptions {
    IbOptions::parse(None, Some(pkey), Some(job)).unwrap()
}

fn conf(fx: &Fixture) -> PathBuf {
    fx.root.join("etc/opensm/partitions.conf")
}

#[test]
fn two_jobs_get_separate_partitions_and_cannot_reach_each_other() {
    let fx = Fixture::new("connectx6");
    let sysfs = fx.sysfs();
    let a = claim_vf_with(&sysfs, &req("ib0"), &ib("0x8123", "alpha")).unwrap();
    let b = claim_vf_with(&sysfs, &req("0000:3b:00.1"), &ib("0x8124", "beta")).unwrap();
    let a2 = claim_vf_with(&sysfs, &req("ib0"), &ib("0x0123", "alpha")).unwrap_err();
    assert!(a2.to_string().contains("no free VF"), "{a2}");
    let path = conf(&fx);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();

    let u = partitions::update(&sysfs, &path, &[records::dir(&sysfs)]).unwrap();
    assert!(u.problems.is_empty(), "{:?}", u.problems);
    assert_eq!(u.jobs.len(), 2);
    records::write_atomic(&path, &u.text).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    println!("{text}");
    let parts = partitions::parse(&text).unwrap();
    // The SM's own rule first, then one partition per job.
    assert_eq!(parts[0].name, "Default");
    assert_eq!(parts[0].pkey, Some(0x7fff));
    assert_eq!(
        parts[0].members,
        vec![
            (Member::All, Membership::Limited),
            (Member::SelfPort, Membership::Full)
        ]
    );
    let ga = a.guid().unwrap();
    let gb = b.guid().unwrap();
    let pa = parts.iter().find(|p| p.name == "hpmmap_alpha").unwrap();
    assert_eq!(pa.pkey, Some(0x123));
    assert!(pa.ipoib, "IPoIB needs the partition's broadcast group");
    assert_eq!(pa.members, vec![(Member::Guid(ga.0), Membership::Full)]);
    let pb = parts.iter().find(|p| p.name == "hpmmap_beta").unwrap();
    assert_eq!(pb.members, vec![(Member::Guid(gb.0), Membership::Full)]);
    assert!(partitions::shared_partition(&parts, ga, gb).is_none());
    // A port of job alpha on another node would reach alpha's VF, not beta's.
    let mut with_peer = text.replace(
        &format!("{ga}=full ;"),
        &format!("{ga}=full, 0x0200000300ffffff=full ;"),
    );
    let parts2 = partitions::parse(&with_peer).unwrap();
    assert_eq!(
        partitions::shared_partition(&parts2, ga, Guid(0x0200_0003_00ff_ffff))
            .unwrap()
            .name,
        "hpmmap_alpha"
    );
    assert!(partitions::shared_partition(&parts2, gb, Guid(0x0200_0003_00ff_ffff)).is_none());
    // Rewriting after a job ends keeps the admin's edits and drops the job.
    with_peer = format!("# admin note\n{text}");
    std::fs::write(&path, &with_peer).unwrap();
    drop(b);
    let u = partitions::update(&sysfs, &path, &[records::dir(&sysfs)]).unwrap();
    assert!(u.text.starts_with("# admin note\n"));
    assert_eq!(u.text.matches(partitions::BEGIN).count(), 1);
    assert!(u.text.contains("hpmmap_alpha=0x0123,ipoib"));
    assert!(!u.text.contains("hpmmap_beta"));
    drop(a);
}

#[test]
fn limited_membership_comes_from_the_pkey() {
    let fx = Fixture::new("connectx6");
    let sysfs = fx.sysfs();
    let a = claim_vf_with(&sysfs, &req("ib0"), &ib("0x0042", "svc")).unwrap();
    let u = partitions::update(&sysfs, &conf(&fx), &[records::dir(&sysfs)]).unwrap();
    let line = u
        .text
        .lines()
        .find(|l| l.starts_with("hpmmap_svc"))
        .unwrap();
    assert_eq!(
        line,
        format!("hpmmap_svc=0x0042,ipoib : {}=limited ;", a.guid().unwrap())
    );
}

#[test]
fn an_open_default_partition_or_a_vf_already_in_a_partition_is_not_written() {
    let fx = Fixture::new("connectx6-crashed");
    let sysfs = fx.sysfs();
    let path = conf(&fx);
    let orig = std::fs::read_to_string(&path).unwrap();
    // virtfn0's derived GUID is in the admin's 'storage' partition.
    let claim = claim_vf_with(&sysfs, &req("0000:3b:00.1"), &ib("0x8200", "gamma")).unwrap();
    let u = partitions::update(&sysfs, &path, &[records::dir(&sysfs)]).unwrap();
    assert_eq!(u.problems.len(), 1, "{:?}", u.problems);
    assert!(
        u.problems[0].starts_with(&format!(
            "line 3: port GUID {} of job 'gamma'",
            claim.guid().unwrap()
        )),
        "{:?}",
        u.problems
    );
    assert!(u.problems[0].ends_with("is already in partition 'storage'"));
    // The crashed job's process is gone: left out, with what to do.
    assert!(
        u.notes
            .iter()
            .any(|n| n.contains("job 'crashed1' (pid 9999) is gone")),
        "{:?}",
        u.notes
    );
    // An admin rule that makes every CA a full member of Default joins all tenants.
    std::fs::write(&path, "Default=0x7fff,ipoib : ALL=full ;\n").unwrap();
    let u = partitions::update(&sysfs, &path, &[records::dir(&sysfs)]).unwrap();
    assert!(
        u.problems
            .iter()
            .any(|p| p.contains("makes every channel adapter a full member")),
        "{:?}",
        u.problems
    );
    std::fs::write(&path, &orig).unwrap();
}

#[test]
fn the_admins_own_pkey_is_not_given_to_a_job() {
    let fx = Fixture::new("connectx6-crashed");
    let sysfs = fx.sysfs();
    let _c = claim_vf_with(&sysfs, &req("ib0"), &ib("0x8042", "delta")).unwrap();
    let u = partitions::update(&sysfs, &conf(&fx), &[records::dir(&sysfs)]).unwrap();
    assert!(
        u.problems
            .iter()
            .any(|p| p
                .contains("P_Key 0x0042 of job 'delta' is also the admin's partition 'storage'")),
        "{:?}",
        u.problems
    );
}

#[test]
fn a_broken_existing_file_is_reported_with_its_line() {
    let fx = Fixture::new("connectx6");
    let path = conf(&fx);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        "Default=0x7fff : ALL, SELF=full ;\nbroken=0x12 ALL ;\n",
    )
    .unwrap();
    let e = partitions::update(&fx.sysfs(), &path, &[]).unwrap_err();
    assert!(
        e.to_string().ends_with(
            "etc/opensm/partitions.conf:2: no ':' between the partition definition and its members"
        ),
        "{e}"
    );
}

#[test]
fn opensm_is_found_in_proc_and_sighup_reaches_it() {
    // In the recorded tree: pid 777.
    let fx = Fixture::new("connectx6-crashed");
    assert_eq!(partitions::find_opensm(&fx.sysfs()), vec![777]);
    // For real: a process whose comm is "opensm" (a copy of sleep, so that the signal's
    // default action ends it), found through this host's /proc and sent SIGHUP.
    let dir = std::env::temp_dir().join(format!("hpmmap-vf-opensm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("opensm");
    std::fs::copy("/bin/sleep", &bin).unwrap();
    let mut cmd = Command::new(&bin);
    cmd.arg("30");
    // A test run under nohup hands SIGHUP down ignored; the stand-in must take the default
    // action, as the real opensm's handler would act on it.
    // SAFETY: signal() is async-signal-safe and touches only the child's dispositions.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let host = hpmmap_vf::Sysfs::host();
    let mut found = false;
    for _ in 0..100 {
        if partitions::find_opensm(&host).contains(&pid) {
            found = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if !found {
        let _ = child.kill();
    }
    assert!(found, "pid {pid} not found as opensm in /proc");
    partitions::signal_opensm(pid).unwrap();
    let st = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGHUP), "{st:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The examples of opensm(8)'s PARTITION CONFIGURATION section, read from the man page of
/// the installed OpenSM (Debian's `opensm` package), parse: the parser accepts the file
/// format as OpenSM documents it, not only what this crate writes. Skips with a reason
/// where OpenSM is not installed.
#[test]
fn opensm_man_page_examples_parse() {
    let man = "/usr/share/man/man8/opensm.8.gz";
    if !std::path::Path::new(man).exists() {
        hpmmap_testkit::skip(
            hpmmap_testkit::Tier::Tools,
            "opensm_man_page_examples_parse",
            format!("{man} missing (apt-get install opensm to run this check)"),
        );
        return;
    }
    let out = Command::new("zcat").arg(man).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("\nExamples:\n")
        .expect("PARTITION CONFIGURATION has Examples");
    let rest = &text[start + "\nExamples:\n".len()..];
    let end = rest.find("\n.SH ").unwrap();
    // The examples, then "Note:" and the rule equivalent to OpenSM before partitions.
    let block: String = rest[..end]
        .lines()
        .filter(|l| l.starts_with(' ') || l.starts_with('\t') || l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let parts = partitions::parse(&block).unwrap_or_else(|e| panic!("{e:?} in:\n{block}"));
    println!("{} partition definitions from {man}", parts.len());
    assert!(parts.len() >= 10, "{parts:#?}");
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert!(
        names.contains(&"Default") && names.contains(&"ShareIO"),
        "{names:?}"
    );
    assert!(
        parts.iter().any(|p| p.mgids.len() >= 5),
        "the multicast example"
    );
}
