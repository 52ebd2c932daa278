//! Two claims started at the same moment on the same PF (two VMMs of two jobs) get two
//! different VFs: the claim lock (a flock on RUN/vf) is held from choosing the VF until its
//! record is on disk, and a VF with a record is busy for the other. Before the lock both
//! could choose the same free VF, and the loser's rollback unbound the winner's VF.
//! Simulated sysfs (src/sim.rs) over the hand-built connectx6 tree; the claims run in two
//! threads, each with its own flock (open file description), as two processes would.

mod common;

use common::{diff, Fixture};
use hpmmap_vf::{claim_vf_with, IbOptions, VfRequest};
use std::sync::{Arc, Barrier};

#[test]
fn two_claims_at_once_on_one_pf_get_two_vfs_and_give_both_back() {
    let fx = Fixture::new("connectx6");
    let before = fx.snapshot();
    for round in 0..25 {
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = ["alpha", "beta"]
            .into_iter()
            .map(|job| {
                let sysfs = fx.sysfs();
                let b = barrier.clone();
                std::thread::spawn(move || {
                    let opts = IbOptions {
                        job: Some(job.to_string()),
                        ..Default::default()
                    };
                    b.wait();
                    claim_vf_with(
                        &sysfs,
                        &VfRequest {
                            spec: "ib0".into(),
                            create: None,
                        },
                        &opts,
                    )
                })
            })
            .collect();
        let claims: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: {e}"))
            })
            .collect();
        assert_ne!(
            claims[0].vf(),
            claims[1].vf(),
            "round {round}: one VF for two claims"
        );
        for c in &claims {
            assert_eq!(fx.driver(&c.vf().to_string()).as_deref(), Some("vfio-pci"));
        }
        // Releasing one leaves the other's VF on vfio-pci.
        let mut it = claims.into_iter();
        let (a, b) = (it.next().unwrap(), it.next().unwrap());
        let bvf = b.vf().to_string();
        a.release().unwrap();
        assert_eq!(
            fx.driver(&bvf).as_deref(),
            Some("vfio-pci"),
            "round {round}"
        );
        b.release().unwrap();
        let d = diff(&before, &fx.snapshot());
        assert!(d.is_empty(), "round {round}: tree changed: {d:#?}");
    }
}

/// `--vf-create` VFs of a killed VMM: the `.sriov` record written before `sriov_numvfs`
/// lets `recover` disable them once the VF is back on the host driver.
#[test]
fn vfs_a_killed_claim_created_are_disabled_by_recover() {
    use hpmmap_vf::records::{self, Recovered, SriovRecovered};
    let fx = Fixture::new("connectx6-novfs");
    let before = fx.snapshot();
    let sysfs = fx.sysfs();
    let claim = claim_vf_with(
        &sysfs,
        &VfRequest {
            spec: "ib0".into(),
            create: Some(2),
        },
        &IbOptions::default(),
    )
    .unwrap();
    let vf = claim.vf().to_string();
    assert_eq!(fx.attr("bus/pci/devices/0000:3b:00.0/sriov_numvfs"), "2");
    assert!(fx.root.join("run/hpmmap/vf/0000:3b:00.0.sriov").exists());
    // kill -9: no Drop, no restore_all.
    std::mem::forget(claim);
    assert!(matches!(
        records::recover_sriov(&sysfs).as_slice(),
        [SriovRecovered::Live(_)]
    ));
    let me = fx.root.join(format!("proc/{}", std::process::id()));
    std::fs::remove_dir(&me).unwrap();
    let out = records::recover(&sysfs);
    assert!(
        matches!(out.as_slice(), [Recovered::Restored(_)]),
        "{out:?}"
    );
    let out = records::recover_sriov(&sysfs);
    assert!(
        matches!(out.as_slice(), [SriovRecovered::Disabled(r)] if r.enabled == 2),
        "{out:?}"
    );
    std::fs::create_dir(&me).unwrap();
    assert_eq!(fx.attr("bus/pci/devices/0000:3b:00.0/sriov_numvfs"), "0");
    assert!(!fx.sys(&format!("bus/pci/devices/{vf}")).exists());
    let d = diff(&before, &fx.snapshot());
    assert!(d.is_empty(), "recover did not put everything back: {d:#?}");
    assert!(records::recover_sriov(&sysfs).is_empty());
}

/// A normal release removes the `.sriov` record with the VFs.
#[test]
fn vf_create_release_removes_its_record() {
    let fx = Fixture::new("connectx6-novfs");
    let before = fx.snapshot();
    let claim = claim_vf_with(
        &fx.sysfs(),
        &VfRequest {
            spec: "ib0".into(),
            create: Some(2),
        },
        &IbOptions::default(),
    )
    .unwrap();
    claim.release().unwrap();
    let d = diff(&before, &fx.snapshot());
    assert!(d.is_empty(), "{d:#?}");
}
