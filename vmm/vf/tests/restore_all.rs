//! The VMM's signal path: restore_all() undoes every live claim in the process.
//! Own test binary, because restore_all() is process-wide. Recorded tree + SIMULATED
//! kernel reaction to writes (src/sim.rs).

mod common;

use common::{diff, Fixture};
use hpmmap_vf::{claim_vf, restore_all, VfRequest};

#[test]
fn restore_all_rebinds_every_claim_and_later_drops_do_nothing() {
    let fx = Fixture::new("connectx6");
    let before = fx.snapshot();
    let sysfs = fx.sysfs();
    let a = claim_vf(
        &sysfs,
        &VfRequest {
            spec: "0000:3b:00.1".into(),
            create: None,
        },
    )
    .unwrap();
    let b = claim_vf(
        &sysfs,
        &VfRequest {
            spec: "ib0".into(),
            create: None,
        },
    )
    .unwrap();
    assert_eq!(b.vf().to_string(), "0000:3b:00.3");
    assert_eq!(fx.driver("0000:3b:00.1").as_deref(), Some("vfio-pci"));
    assert_eq!(fx.driver("0000:3b:00.3").as_deref(), Some("vfio-pci"));
    // Both are InfiniBand VFs: GUIDs and policy set, to be put back too.
    let pf = "bus/pci/devices/0000:3b:00.0/sriov";
    assert_eq!(fx.attr(&format!("{pf}/0/policy")), "Follow");
    assert_eq!(fx.attr(&format!("{pf}/2/port")), "02:00:02:03:00:a1:b2:c0");

    let errors = restore_all();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(fx.driver("0000:3b:00.1").as_deref(), Some("mlx5_core"));
    assert_eq!(fx.driver("0000:3b:00.3"), None);
    let d = diff(&before, &fx.snapshot());
    assert!(d.is_empty(), "{d:#?}");

    // The guards' own release after the signal path must not undo anything twice.
    a.release().unwrap();
    drop(b);
    assert!(diff(&before, &fx.snapshot()).is_empty());
    assert!(restore_all().is_empty());
}
