//! VF resolution and vfio-pci binding against hand-built sysfs trees
//! (tests/fixtures/*/README) with the SIMULATED kernel reaction to sysfs writes
//! (src/sim.rs). No SR-IOV device, IOMMU or vfio-pci exists on the build host.

mod common;

use common::{diff, Fixture};
use hpmmap_vf::{claim_vf, VfError, VfRequest};

fn req(spec: &str) -> VfRequest {
    VfRequest {
        spec: spec.into(),
        create: None,
    }
}

/// Claims, checks the VF is on vfio-pci, releases, and checks the tree is exactly as before.
fn claim_and_release(fx: &Fixture, spec: &str, expect_vf: &str, expect_orig: Option<&str>) {
    let before = fx.snapshot();
    let sysfs = fx.sysfs();
    let claim = claim_vf(&sysfs, &req(spec)).unwrap_or_else(|e| panic!("{spec}: {e}"));
    assert_eq!(claim.vf().to_string(), expect_vf, "{spec}");
    assert_eq!(claim.pf().to_string(), "0000:3b:00.0");
    assert_eq!(claim.original_driver(), expect_orig);
    assert_eq!(fx.driver(expect_vf).as_deref(), Some("vfio-pci"));
    assert_eq!(
        fx.attr(&format!("bus/pci/devices/{expect_vf}/driver_override")),
        "vfio-pci"
    );
    assert!(fx
        .sys(&format!("bus/pci/drivers/vfio-pci/{expect_vf}"))
        .exists());
    claim.release().unwrap();
    let d = diff(&before, &fx.snapshot());
    assert!(d.is_empty(), "{spec}: tree changed after release: {d:#?}");
}

#[test]
fn ib_netdev_resolves_to_the_unbound_vf() {
    let fx = Fixture::new("connectx6");
    claim_and_release(&fx, "ib0", "0000:3b:00.3", None);
}

#[test]
fn ib_device_name_resolves_to_the_unbound_vf() {
    let fx = Fixture::new("connectx6");
    claim_and_release(&fx, "mlx5_0", "0000:3b:00.3", None);
}

#[test]
fn pf_address_short_and_long_resolve_to_the_unbound_vf() {
    let fx = Fixture::new("connectx6");
    claim_and_release(&fx, "0000:3b:00.0", "0000:3b:00.3", None);
    claim_and_release(&fx, "3b:00.0", "0000:3b:00.3", None);
}

#[test]
fn a_vfs_own_netdev_means_its_pf() {
    // ib1 is the netdev of VF 0000:3b:00.1; the name still means "a VF of this adapter".
    let fx = Fixture::new("connectx6");
    claim_and_release(&fx, "ib1", "0000:3b:00.3", None);
}

#[test]
fn idle_vf_on_mlx5_core_is_taken_and_given_back() {
    let fx = Fixture::new("connectx6");
    claim_and_release(&fx, "0000:3b:00.1", "0000:3b:00.1", Some("mlx5_core"));
    assert_eq!(fx.driver("0000:3b:00.1").as_deref(), Some("mlx5_core"));
}

#[test]
fn pf_with_only_idle_driver_vfs_gives_virtfn0_back_to_mlx5_core_on_drop() {
    let fx = Fixture::new("connectx6-idle-driver");
    let before = fx.snapshot();
    {
        let claim = claim_vf(&fx.sysfs(), &req("ib0")).unwrap();
        assert_eq!(claim.vf().to_string(), "0000:3b:00.1");
        assert_eq!(claim.vf_index(), Some(0));
        assert_eq!(claim.iommu_group(), 30);
        assert!(claim.group_path().ends_with("dev/vfio/30"));
        assert_eq!(fx.driver("0000:3b:00.1").as_deref(), Some("vfio-pci"));
        assert!(!fx.sys("bus/pci/drivers/mlx5_core/0000:3b:00.1").exists());
    }
    let d = diff(&before, &fx.snapshot());
    assert!(d.is_empty(), "drop did not restore: {d:#?}");
}

fn assert_untouched(fx: &Fixture, before: &std::collections::BTreeMap<std::path::PathBuf, String>) {
    let d = diff(before, &fx.snapshot());
    assert!(d.is_empty(), "tree changed by a failed claim: {d:#?}");
}

fn claim_err(fixture: &str, spec: &str, create: Option<u32>) -> (VfError, String) {
    let fx = Fixture::new(fixture);
    let before = fx.snapshot();
    let e = claim_vf(
        &fx.sysfs(),
        &VfRequest {
            spec: spec.into(),
            create,
        },
    )
    .expect_err(spec);
    assert_untouched(&fx, &before);
    let msg = e
        .to_string()
        .replace(&fx.root.display().to_string(), "ROOT");
    assert!(!msg.contains('\n'), "error is one line: {msg}");
    (e, msg)
}

#[test]
fn vfio_user_vf_is_in_use_with_pid_and_path() {
    let (e, msg) = claim_err("connectx6", "0000:3b:00.2", None);
    assert!(matches!(e, VfError::VfInUse { .. }), "{e:?}");
    assert!(e.is_input_error());
    assert_eq!(msg, "VF 0000:3b:00.2 is in use: bound to vfio-pci and /dev/vfio/31 is held open by pid 4243 (qemu-system-x86) (ROOT/proc/4243)");
}

#[test]
fn vf_with_interface_up_is_in_use() {
    let (e, msg) = claim_err("connectx6", "0000:3b:00.4", None);
    assert!(matches!(e, VfError::VfInUse { .. }), "{e:?}");
    assert!(
        msg.contains("bound to mlx5_core and interface ib4 is up (flags 0x1003)"),
        "{msg}"
    );
    assert!(
        msg.contains("ROOT/sys/bus/pci/devices/0000:3b:00.4/net/ib4/flags"),
        "{msg}"
    );
}

#[test]
fn unknown_name_lists_where_it_looked() {
    let (e, msg) = claim_err("connectx6", "ib9", None);
    assert!(matches!(e, VfError::NoSuchDevice { .. }));
    assert_eq!(msg, "--vf 'ib9': no such device (looked in ROOT/sys/class/infiniband/ib9, ROOT/sys/class/net/ib9)");
}

#[test]
fn unknown_pci_address_is_no_such_device() {
    let (e, msg) = claim_err("connectx6", "0000:99:00.0", None);
    assert!(matches!(e, VfError::NoSuchDevice { .. }));
    assert!(
        msg.contains("ROOT/sys/bus/pci/devices/0000:99:00.0"),
        "{msg}"
    );
}

#[test]
fn names_that_walk_out_of_sysfs_are_refused() {
    for bad in ["../../etc", "", "a/b"] {
        let (e, _) = claim_err("connectx6", bad, None);
        assert!(matches!(e, VfError::BadSpec { .. }), "{bad}: {e:?}");
    }
}

#[test]
fn interface_without_a_pci_device_is_not_pci() {
    let (e, msg) = claim_err("connectx6", "lo", None);
    assert!(matches!(e, VfError::NotPci { .. }));
    assert_eq!(
        msg,
        "--vf 'lo': ROOT/sys/class/net/lo/device is not a PCI function"
    );
}

#[test]
fn nic_without_sriov_names_the_missing_attribute() {
    let (e, msg) = claim_err("connectx6", "eno1", None);
    assert!(matches!(e, VfError::NoSriov { .. }));
    assert_eq!(msg, "PF 0000:00:1f.6 has no SR-IOV capability (ROOT/sys/bus/pci/devices/0000:00:1f.6/sriov_totalvfs is missing)");
}

#[test]
fn pf_with_sriov_off_in_firmware() {
    let (e, msg) = claim_err("connectx6-no-sriov", "mlx5_0", None);
    assert!(matches!(e, VfError::NoSriov { .. }));
    assert!(
        msg.contains("ROOT/sys/bus/pci/devices/0000:3b:00.0/sriov_totalvfs is missing"),
        "{msg}"
    );
}

#[test]
fn every_vf_busy_lists_each_reason() {
    let (e, msg) = claim_err("connectx6-busy", "ib0", None);
    let VfError::NoFreeVf { busy, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(busy.len(), 4, "{msg}");
    assert!(msg.starts_with("no free VF on PF 0000:3b:00.0: 0000:3b:00.1: bound to vfio-pci and /dev/vfio/30 is held open by pid 4242"), "{msg}");
    assert!(
        msg.contains("0000:3b:00.2: bound to mlx5_core and interface ib2 is up"),
        "{msg}"
    );
}

#[test]
fn shared_group_with_pf_on_mlx5_core_is_not_viable() {
    let (e, msg) = claim_err("connectx6-nonviable", "ib0", None);
    assert!(
        matches!(e, VfError::GroupNotViable { group: 29, .. }),
        "{e:?}"
    );
    assert!(msg.contains("0000:3b:00.0 is bound to mlx5_core (ROOT/sys/kernel/iommu_groups/29/devices/0000:3b:00.0/driver)"), "{msg}");
}

#[test]
fn no_iommu_means_no_group() {
    let (e, msg) = claim_err("connectx6-no-iommu", "ib0", None);
    assert!(matches!(e, VfError::NoIommuGroup { .. }), "{e:?}");
    assert_eq!(msg, "0000:3b:00.3 has no IOMMU group (ROOT/sys/bus/pci/devices/0000:3b:00.3/iommu_group is missing): the IOMMU is off; boot with intel_iommu=on or amd_iommu=on");
}

#[test]
fn vfio_pci_not_loaded() {
    let (e, msg) = claim_err("connectx6-no-vfio", "ib0", None);
    assert!(matches!(e, VfError::VfioPciMissing { .. }), "{e:?}");
    assert_eq!(msg, "vfio-pci driver is not loaded (ROOT/sys/bus/pci/drivers/vfio-pci is missing): run 'modprobe vfio-pci'");
}

#[test]
fn pf_without_vfs_needs_vf_create() {
    let (e, msg) = claim_err("connectx6-novfs", "ib0", None);
    assert!(matches!(e, VfError::NoVfsEnabled { .. }), "{e:?}");
    assert!(
        msg.contains("ROOT/sys/bus/pci/devices/0000:3b:00.0/sriov_numvfs = 0"),
        "{msg}"
    );
}

#[test]
fn vf_create_above_totalvfs_is_refused_before_writing() {
    let (e, msg) = claim_err("connectx6-novfs", "ib0", Some(9));
    assert!(
        matches!(
            e,
            VfError::TooManyVfs {
                requested: 9,
                total: 8,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(msg.contains("sriov_totalvfs"), "{msg}");
}

#[test]
fn vf_create_enables_binds_and_disables_again() {
    let fx = Fixture::new("connectx6-novfs");
    let before = fx.snapshot();
    let claim = claim_vf(
        &fx.sysfs(),
        &VfRequest {
            spec: "ib0".into(),
            create: Some(2),
        },
    )
    .unwrap();
    assert_eq!(fx.attr("bus/pci/devices/0000:3b:00.0/sriov_numvfs"), "2");
    // Autoprobe put both new VFs on mlx5_core; the claim took virtfn0 from it.
    assert_eq!(claim.vf().to_string(), "0000:3b:00.1");
    assert_eq!(claim.original_driver(), Some("mlx5_core"));
    assert_eq!(fx.driver("0000:3b:00.1").as_deref(), Some("vfio-pci"));
    assert_eq!(fx.driver("0000:3b:00.2").as_deref(), Some("mlx5_core"));
    assert!(claim.iommu_group() > 29);
    claim.release().unwrap();
    assert_eq!(fx.attr("bus/pci/devices/0000:3b:00.0/sriov_numvfs"), "0");
    let d = diff(&before, &fx.snapshot());
    assert!(d.is_empty(), "VFs not removed: {d:#?}");
}

#[test]
fn vf_create_is_ignored_when_vfs_exist() {
    let fx = Fixture::new("connectx6");
    let claim = claim_vf(
        &fx.sysfs(),
        &VfRequest {
            spec: "ib0".into(),
            create: Some(2),
        },
    )
    .unwrap();
    assert_eq!(fx.attr("bus/pci/devices/0000:3b:00.0/sriov_numvfs"), "4");
    assert_eq!(claim.vf().to_string(), "0000:3b:00.3");
    claim.release().unwrap();
    assert_eq!(fx.attr("bus/pci/devices/0000:3b:00.0/sriov_numvfs"), "4");
}

#[test]
fn vfio_probe_failure_rolls_back_to_the_original_driver() {
    let fx = Fixture::new("connectx6");
    std::fs::write(fx.root.join("sim/probe-fails"), "vfio-pci\n").unwrap();
    let before = fx.snapshot();
    let e = claim_vf(&fx.sysfs(), &req("0000:3b:00.1")).unwrap_err();
    assert!(matches!(e, VfError::BindFailed { .. }), "{e:?}");
    assert!(
        e.to_string().contains("vfio-pci did not take the device"),
        "{e}"
    );
    assert_eq!(fx.driver("0000:3b:00.1").as_deref(), Some("mlx5_core"));
    let d = diff(&before, &fx.snapshot());
    assert!(d.is_empty(), "not rolled back: {d:#?}");
}

#[test]
fn vf_create_then_failed_bind_also_disables_the_vfs() {
    let fx = Fixture::new("connectx6-novfs");
    std::fs::write(fx.root.join("sim/probe-fails"), "vfio-pci\n").unwrap();
    let before = fx.snapshot();
    let e = claim_vf(
        &fx.sysfs(),
        &VfRequest {
            spec: "mlx5_0".into(),
            create: Some(4),
        },
    )
    .unwrap_err();
    assert!(matches!(e, VfError::BindFailed { .. }), "{e:?}");
    let d = diff(&before, &fx.snapshot());
    assert!(d.is_empty(), "not rolled back: {d:#?}");
}

#[test]
fn vfs_stay_enabled_when_another_vfio_user_holds_one() {
    let fx = Fixture::new("connectx6-novfs");
    let sysfs = fx.sysfs();
    let mine = claim_vf(
        &sysfs,
        &VfRequest {
            spec: "ib0".into(),
            create: Some(2),
        },
    )
    .unwrap();
    // Someone else takes the other VF meanwhile.
    let theirs = claim_vf(&sysfs, &req("0000:3b:00.2")).unwrap();
    mine.release().unwrap();
    assert_eq!(fx.attr("bus/pci/devices/0000:3b:00.0/sriov_numvfs"), "2");
    assert_eq!(fx.driver("0000:3b:00.2").as_deref(), Some("vfio-pci"));
    theirs.release().unwrap();
    assert_eq!(fx.driver("0000:3b:00.2").as_deref(), Some("mlx5_core"));
}
