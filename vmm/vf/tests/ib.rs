//! InfiniBand VFs: GUIDs and link policy set by the claim and put back, against
//! hand-built ConnectX-5/6 trees (tests/fixtures/*/README) with the kernel's (and
//! MLNX_OFED mlx5_core's) reaction to sysfs writes SIMULATED (src/sim.rs). No HCA here.

mod common;

use common::{diff, Fixture};
use hpmmap_vf::records::{self, Recovered};
use hpmmap_vf::{claim_vf, claim_vf_with, Guid, IbOptions, Pkey, VfError, VfRequest};

const PF: &str = "bus/pci/devices/0000:3b:00.0";

fn req(spec: &str) -> VfRequest {
    VfRequest {
        spec: spec.into(),
        create: None,
    }
}

fn ib(guid: Option<&str>, pkey: Option<&str>, job: Option<&str>) -> IbOptions {
    IbOptions::parse(guid, pkey, job).unwrap()
}

fn vf_attrs(fx: &Fixture, n: u32) -> [String; 3] {
    ["node", "port", "policy"].map(|a| fx.attr(&format!("{PF}/sriov/{n}/{a}")))
}

#[test]
fn connectx6_vf_gets_derived_guids_and_follow_then_everything_back() {
    let fx = Fixture::new("connectx6");
    let before = fx.snapshot();
    let claim = claim_vf(&fx.sysfs(), &req("ib0")).unwrap();
    assert_eq!(claim.vf().to_string(), "0000:3b:00.3");
    // PF node GUID b859:9f03:00a1:b2c0, virtfn2: 0x02, index 2, the PF's low 40 bits.
    assert_eq!(claim.guid(), Some(Guid(0x0200_0203_00a1_b2c0)));
    assert_eq!(
        vf_attrs(&fx, 2),
        [
            "02:00:02:03:00:a1:b2:c0".to_string(),
            "02:00:02:03:00:a1:b2:c0".to_string(),
            "Follow".to_string()
        ]
    );
    // The other VFs are untouched.
    assert_eq!(vf_attrs(&fx, 0)[2], "Down");
    // The record on disk holds the originals for a crash.
    let rec_path = fx.root.join("run/hpmmap/vf/0000:3b:00.3.claim");
    let text = std::fs::read_to_string(&rec_path).unwrap();
    let rec = records::ClaimRecord::parse(&rec_path, &text).unwrap();
    let setup = rec.ib.as_ref().unwrap();
    assert_eq!(
        (
            setup.orig_node.as_str(),
            setup.orig_policy.as_str(),
            rec.ib_done
        ),
        ("00:00:00:00:00:00:00:00", "Down", 3)
    );
    assert_eq!(rec.job, format!("pid{}", std::process::id()));
    assert_eq!(rec.host, "node01");
    claim.release().unwrap();
    let d = diff(&before, &fx.snapshot());
    assert!(d.is_empty(), "not put back: {d:#?}");
}

#[test]
fn connectx5_vf_by_address_gets_the_given_guid_and_drop_restores() {
    let fx = Fixture::new("connectx5");
    let before = fx.snapshot();
    {
        let opts = ib(
            Some("00:02:c9:03:00:aa:bb:01"),
            Some("0x8123"),
            Some("job-7"),
        );
        let claim = claim_vf_with(&fx.sysfs(), &req("0000:3b:00.1"), &opts).unwrap();
        assert_eq!(claim.vf_index(), None, "named by address");
        assert_eq!(claim.original_driver(), Some("mlx5_core"));
        assert_eq!(claim.pkey(), Some(Pkey::parse("0x8123").unwrap()));
        assert_eq!(claim.job(), "job-7");
        // virtfn0: the index comes from the PF's virtfn links.
        assert_eq!(
            vf_attrs(&fx, 0),
            [
                "00:02:c9:03:00:aa:bb:01".to_string(),
                "00:02:c9:03:00:aa:bb:01".to_string(),
                "Follow".to_string()
            ]
        );
    }
    let d = diff(&before, &fx.snapshot());
    assert!(d.is_empty(), "drop did not restore: {d:#?}");
}

#[test]
fn connectx5_derives_from_its_own_pf_guid() {
    let fx = Fixture::new("connectx5");
    let claim = claim_vf(&fx.sysfs(), &req("mlx5_0")).unwrap();
    assert_eq!(claim.guid(), Some(Guid(0x0200_0203_006c_4f10)));
    assert_eq!(vf_attrs(&fx, 2)[1], "02:00:02:03:00:6c:4f:10");
}

fn claim_fails_untouched(fixture: &str, spec: &str, opts: &IbOptions) -> (VfError, String) {
    let fx = Fixture::new(fixture);
    let before = fx.snapshot();
    let e = claim_vf_with(&fx.sysfs(), &req(spec), opts).expect_err(spec);
    let d = diff(&before, &fx.snapshot());
    assert!(
        d.is_empty(),
        "{fixture}: host changed by a failed claim: {d:#?}"
    );
    let msg = e
        .to_string()
        .replace(&fx.root.display().to_string(), "ROOT");
    assert!(!msg.contains('\n'), "one line: {msg}");
    (e, msg)
}

#[test]
fn driver_refusing_the_port_guid_rolls_back_node_guid_policy_binding_and_record() {
    let (e, msg) = claim_fails_untouched("connectx6-guid-refused", "ib0", &IbOptions::default());
    assert!(matches!(e, VfError::GuidRefused { .. }), "{e:?}");
    assert!(!e.is_input_error());
    assert!(
        msg.starts_with("the driver refused '02:00:02:03:00:a1:b2:c0' for ROOT/sys/bus/pci/devices/0000:3b:00.0/sriov/2/port: "),
        "{msg}"
    );
}

#[test]
fn driver_without_guid_attributes_is_refused_before_any_change() {
    let (e, msg) = claim_fails_untouched("connectx6-no-guid-attrs", "ib0", &IbOptions::default());
    assert!(matches!(e, VfError::GuidUnsupported { .. }), "{e:?}");
    assert!(
        msg.contains("(ROOT/sys/bus/pci/devices/0000:3b:00.0/sriov/2/node is missing)"),
        "{msg}"
    );
}

#[test]
fn pkey_or_guid_for_an_ethernet_vf_is_an_input_error_before_any_change() {
    for opts in [
        ib(None, Some("0x8123"), None),
        ib(Some("0x0002c90300000001"), None, None),
    ] {
        let (e, msg) = claim_fails_untouched("igb-lab-recorded", "eth0", &opts);
        assert!(matches!(e, VfError::NotInfiniband { .. }), "{e:?}");
        assert!(e.is_input_error());
        assert!(
            msg.contains(
                "is not an InfiniBand port (ROOT/sys/bus/pci/devices/0000:01:00.0/infiniband)"
            ),
            "{msg}"
        );
    }
}

#[test]
fn ethernet_vf_without_ib_flags_is_claimed_without_guids() {
    let fx = Fixture::new("igb-lab-recorded");
    let before = fx.snapshot();
    let claim = claim_vf(&fx.sysfs(), &req("eth0")).unwrap();
    assert_eq!(claim.guid(), None);
    claim.release().unwrap();
    assert!(diff(&before, &fx.snapshot()).is_empty());
}

#[test]
fn a_pkey_held_by_another_job_is_refused_and_one_job_may_take_two_vfs() {
    let fx = Fixture::new("connectx6");
    let sysfs = fx.sysfs();
    let a = claim_vf_with(&sysfs, &req("ib0"), &ib(None, Some("0x8123"), Some("a"))).unwrap();
    let before = fx.snapshot();
    // Same key, limited membership, another job: it would join job a's partition.
    let e = claim_vf_with(
        &sysfs,
        &req("0000:3b:00.1"),
        &ib(None, Some("0x0123"), Some("b")),
    )
    .unwrap_err();
    assert!(matches!(e, VfError::PkeyInUse { .. }), "{e:?}");
    assert!(e.is_input_error());
    assert!(e.to_string().contains("already held by job 'a'"), "{e}");
    assert!(diff(&before, &fx.snapshot()).is_empty());
    // Job a's second VF shares its key.
    let a2 = claim_vf_with(
        &sysfs,
        &req("0000:3b:00.1"),
        &ib(None, Some("0x8123"), Some("a")),
    )
    .unwrap();
    assert_ne!(a2.guid(), a.guid());
    drop(a2);
    drop(a);
}

#[test]
fn a_guid_already_given_to_another_vf_is_refused() {
    let fx = Fixture::new("connectx6");
    let sysfs = fx.sysfs();
    let g = "0x0002c90300000042";
    let a = claim_vf_with(&sysfs, &req("ib0"), &ib(Some(g), Some("0x8001"), Some("a"))).unwrap();
    let before = fx.snapshot();
    let e = claim_vf_with(
        &sysfs,
        &req("0000:3b:00.1"),
        &ib(Some(g), Some("0x8002"), Some("b")),
    )
    .unwrap_err();
    assert!(matches!(e, VfError::GuidInUse { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with(
            "port GUID 0x0002c90300000042 of VF 0000:3b:00.1 is already in job 'a''s partition"
        ),
        "{e}"
    );
    assert!(diff(&before, &fx.snapshot()).is_empty());
    drop(a);
}

#[test]
fn a_vf_left_by_a_crashed_job_is_busy_until_recovered() {
    let fx = Fixture::new("connectx6-crashed");
    let sysfs = fx.sysfs();
    let e = claim_vf(&sysfs, &req("0000:3b:00.3")).unwrap_err();
    assert!(matches!(e, VfError::VfInUse { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("left by job 'crashed1' whose process 9999 is gone: run 'hpmmap-vf recover'"),
        "{e}"
    );
    // A PF name takes another VF instead.
    let other = claim_vf(&sysfs, &req("ib0")).unwrap();
    assert_eq!(other.vf().to_string(), "0000:3b:00.1");
    drop(other);
}

#[test]
fn recover_after_a_crash_restores_the_recorded_originals() {
    // The fixture's job died with virtfn2 on vfio-pci, GUIDs set, policy Follow.
    let fx = Fixture::new("connectx6-crashed");
    let clean = Fixture::new("connectx6");
    let sysfs = fx.sysfs();
    assert_eq!(vf_attrs(&fx, 2)[2], "Follow");
    assert_eq!(fx.driver("0000:3b:00.3").as_deref(), Some("vfio-pci"));
    let out = records::recover(&sysfs);
    assert!(
        matches!(out.as_slice(), [Recovered::Restored(r)] if r.job == "crashed1"),
        "{out:?}"
    );
    assert_eq!(vf_attrs(&fx, 2), vf_attrs(&clean, 2));
    assert_eq!(
        fx.driver("0000:3b:00.3"),
        None,
        "it was unbound before the job"
    );
    assert_eq!(
        fx.attr("bus/pci/devices/0000:3b:00.3/driver_override"),
        "(null)"
    );
    assert!(!fx.root.join("run/hpmmap/vf/0000:3b:00.3.claim").exists());
    assert!(records::recover(&sysfs).is_empty(), "nothing left to do");
    // And the VF is free again.
    claim_vf(&sysfs, &req("0000:3b:00.3")).unwrap();
}

#[test]
fn recover_leaves_live_claims_and_restores_one_whose_process_died() {
    let fx = Fixture::new("connectx6");
    let before = fx.snapshot();
    let sysfs = fx.sysfs();
    let claim = claim_vf_with(
        &sysfs,
        &req("0000:3b:00.1"),
        &ib(None, Some("0x8005"), Some("j")),
    )
    .unwrap();
    // The VMM is killed: no Drop, no restore_all.
    std::mem::forget(claim);
    let live = records::recover(&sysfs);
    assert!(matches!(live.as_slice(), [Recovered::Live(_)]), "{live:?}");
    assert_eq!(fx.driver("0000:3b:00.1").as_deref(), Some("vfio-pci"));
    // The process is gone (as seen in the tree's /proc).
    let me = fx.root.join(format!("proc/{}", std::process::id()));
    std::fs::remove_dir(&me).unwrap();
    let out = records::recover(&sysfs);
    assert!(
        matches!(out.as_slice(), [Recovered::Restored(_)]),
        "{out:?}"
    );
    std::fs::create_dir(&me).unwrap();
    let d = diff(&before, &fx.snapshot());
    assert!(d.is_empty(), "recover did not put everything back: {d:#?}");
}

#[test]
fn recover_keeps_a_record_it_could_not_fully_apply() {
    let fx = Fixture::new("connectx6-crashed");
    // The firmware now refuses node GUID writes: the GUID cannot be put back.
    std::fs::write(fx.root.join("sim/refuse-writes"), "0000:3b:00.0 node\n").unwrap();
    let out = records::recover(&fx.sysfs());
    assert!(
        matches!(
            out.as_slice(),
            [Recovered::Failed(_, VfError::GuidRefused { .. })]
        ),
        "{out:?}"
    );
    assert!(fx.root.join("run/hpmmap/vf/0000:3b:00.3.claim").exists());
    // Everything else was still tried: the VF is back off vfio-pci.
    assert_eq!(fx.driver("0000:3b:00.3"), None);
}
