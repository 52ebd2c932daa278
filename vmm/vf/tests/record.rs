//! `record` keeps what discovery needs: a recording of a tree resolves exactly as the
//! tree itself. Recorded from a hand-built tree here; from this host's real sysfs too.

mod common;

use common::Fixture;
use hpmmap_vf::discover::{list_vfs, locate, pick_free_vf, vf_state, VfSpec};
use hpmmap_vf::record::Recorder;
use hpmmap_vf::sim::sim_sysfs;
use hpmmap_vf::{claim_vf, VfError, VfRequest};

#[test]
fn recording_resolves_like_the_original() {
    let fx = Fixture::new("connectx6");
    let out = fx.root.with_extension("rec");
    let _ = std::fs::remove_dir_all(&out);
    let src = fx.sysfs();
    let mut rec = Recorder::new(&src, &out);
    rec.host().unwrap();
    rec.class_device("net", "ib0").unwrap();
    let copy = sim_sysfs(&out);
    let spec = VfSpec::parse("ib0").unwrap();
    assert_eq!(locate(&copy, &spec).unwrap(), locate(&src, &spec).unwrap());
    let pf = locate(&src, &spec).unwrap().pf();
    let vfs = list_vfs(&src, pf).unwrap();
    assert_eq!(list_vfs(&copy, pf).unwrap(), vfs);
    for (_, vf) in &vfs {
        let a = format!("{:?}", vf_state(&src, *vf).unwrap())
            .replace(&fx.root.display().to_string(), "R");
        let b =
            format!("{:?}", vf_state(&copy, *vf).unwrap()).replace(&out.display().to_string(), "R");
        assert_eq!(a, b, "{vf}");
    }
    assert_eq!(
        pick_free_vf(&copy, pf).unwrap().1,
        pick_free_vf(&src, pf).unwrap().1
    );
    // The recording is good enough to bind against, through the simulation.
    let claim = claim_vf(
        &copy,
        &VfRequest {
            spec: "mlx5_0".into(),
            create: None,
        },
    )
    .unwrap();
    assert_eq!(claim.vf().to_string(), "0000:3b:00.3");
    // The InfiniBand side too: the PF GUID the VF's is derived from, and the attributes.
    let attrs = out.join("sys/bus/pci/devices/0000:3b:00.0/sriov/2");
    assert_eq!(
        std::fs::read_to_string(attrs.join("port")).unwrap(),
        "02:00:02:03:00:a1:b2:c0\n"
    );
    assert_eq!(
        std::fs::read_to_string(attrs.join("policy")).unwrap(),
        "Follow\n"
    );
    claim.release().unwrap();
    assert_eq!(
        std::fs::read_to_string(attrs.join("policy")).unwrap(),
        "Down\n"
    );
    assert!(
        std::fs::read_to_string(out.join("proc/interrupts"))
            .unwrap()
            .contains("IR-PCI-MSI"),
        "interrupt chips kept for the remapping check"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn recorded_build_host_virtio_nic_has_no_sriov() {
    // tests/fixtures/host-virtio-recorded: `hpmmap-vf record --vf eth0` on the build host.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/host-virtio-recorded");
    let s = sim_sysfs(&root);
    let e = claim_vf(
        &s,
        &VfRequest {
            spec: "eth0".into(),
            create: None,
        },
    )
    .unwrap_err();
    assert!(matches!(e, VfError::NoSriov { .. }), "{e}");
    assert!(
        e.to_string().ends_with("/sriov_totalvfs is missing)"),
        "{e}"
    );
}
