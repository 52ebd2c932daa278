//! selftest against hand-built sysfs trees (tests/fixtures/*/README) and, read-only,
//! against this host's real /sys.

mod common;

use common::Fixture;
use hpmmap_vf::selftest::{run, Limits, SelftestOptions, Status};
use hpmmap_vf::Sysfs;

const GIB: u64 = 1 << 30;
const ROOT_CAP: Limits = Limits {
    memlock: Some(8 << 20),
    cap_ipc_lock: true,
};
const USER_8M: Limits = Limits {
    memlock: Some(8 << 20),
    cap_ipc_lock: false,
};

fn opts(vf: &str, ram: u64, limits: Limits) -> SelftestOptions {
    SelftestOptions {
        vf: Some(vf.into()),
        guest_ram: ram,
        limits,
    }
}

fn status(r: &hpmmap_vf::selftest::SelftestReport, name: &str) -> Status {
    r.check(name)
        .unwrap_or_else(|| panic!("no check {name}: {r}"))
        .status
}

#[test]
fn good_host_passes_every_check() {
    let fx = Fixture::new("connectx6");
    let r = run(&fx.sysfs(), &opts("ib0", 8 * GIB, ROOT_CAP));
    assert!(r.passed(), "{r}");
    assert!(r.checks.iter().all(|c| c.status == Status::Ok), "{r}");
    assert_eq!(r.checks.len(), 12);
    assert!(
        r.check("interrupt remap")
            .unwrap()
            .found
            .starts_with("on: 4 of 4"),
        "{r}"
    );
    assert!(
        r.check("VF GUIDs")
            .unwrap()
            .found
            .contains("the claim sets GUID 0x0200020300a1b2c0 and Follow"),
        "{r}"
    );
    assert_eq!(r.check("PF interface").unwrap().found, "ib0 up");
    assert!(
        r.check("free VF")
            .unwrap()
            .found
            .starts_with("0000:3b:00.3 (virtfn2, unbound)"),
        "{r}"
    );
    assert_eq!(
        r.check("IOMMU group").unwrap().found,
        "group 32 viable: 0000:3b:00.3"
    );
    assert!(r
        .to_string()
        .ends_with("selftest passed: VF passthrough prerequisites are met\n"));
}

#[test]
fn memlock_too_low_without_cap_ipc_lock() {
    let fx = Fixture::new("connectx6");
    let r = run(&fx.sysfs(), &opts("ib0", 8 * GIB, USER_8M));
    assert!(!r.passed());
    let c = r.check("RLIMIT_MEMLOCK").unwrap();
    assert_eq!(c.status, Status::Fail);
    assert_eq!(c.found, "8 MiB < 8 GiB of guest RAM that VFIO pins");
    assert!(c.fix.as_ref().unwrap().contains("ulimit -l unlimited"));
    let unlimited = Limits {
        memlock: None,
        cap_ipc_lock: false,
    };
    assert_eq!(
        status(
            &run(&fx.sysfs(), &opts("ib0", 8 * GIB, unlimited)),
            "RLIMIT_MEMLOCK"
        ),
        Status::Ok
    );
}

#[test]
fn too_few_hugepages_names_the_sysfs_knob() {
    let fx = Fixture::new("connectx6");
    let r = run(&fx.sysfs(), &opts("ib0", 17 * GIB + 1, ROOT_CAP));
    let c = r.check("1 GiB hugepages").unwrap();
    assert_eq!(c.status, Status::Fail);
    assert!(c.found.starts_with("16 free, 18 needed"), "{}", c.found);
    assert!(c
        .fix
        .as_ref()
        .unwrap()
        .contains("hugepages-1048576kB/nr_hugepages"));
}

#[test]
fn no_iommu_host() {
    let fx = Fixture::new("connectx6-no-iommu");
    let r = run(&fx.sysfs(), &opts("ib0", GIB, ROOT_CAP));
    assert_eq!(status(&r, "IOMMU"), Status::Fail);
    assert_eq!(status(&r, "kernel cmdline"), Status::Warn);
    assert_eq!(
        status(&r, "interrupt remap"),
        Status::Fail,
        "no IOMMU, no remapping"
    );
    assert_eq!(status(&r, "IOMMU group"), Status::Fail);
    assert!(r
        .check("IOMMU group")
        .unwrap()
        .found
        .contains("iommu_group is missing"));
    assert!(
        r.to_string()
            .ends_with("selftest failed: 3 prerequisite(s) missing\n"),
        "{r}"
    );
}

#[test]
fn vfio_not_loaded() {
    let fx = Fixture::new("connectx6-no-vfio");
    let r = run(&fx.sysfs(), &opts("ib0", GIB, ROOT_CAP));
    assert_eq!(status(&r, "vfio-pci"), Status::Fail);
    assert_eq!(status(&r, "/dev/vfio/vfio"), Status::Fail);
    assert_eq!(
        status(&r, "free VF"),
        Status::Ok,
        "idle mlx5_core VFs are usable once vfio-pci is loaded"
    );
}

#[test]
fn vf_problems_each_name_their_cause() {
    for (fixture, spec, check, needle) in [
        (
            "connectx6-nonviable",
            "ib0",
            "IOMMU group",
            "0000:3b:00.0 is bound to mlx5_core",
        ),
        (
            "connectx6-busy",
            "mlx5_0",
            "free VF",
            "no free VF on PF 0000:3b:00.0",
        ),
        ("connectx6-novfs", "ib0", "free VF", "sriov_numvfs = 0"),
        (
            "connectx6-no-sriov",
            "ib0",
            "PF / SR-IOV",
            "sriov_totalvfs is missing",
        ),
        (
            "connectx6",
            "eno1",
            "PF / SR-IOV",
            "0000:00:1f.6 has no SR-IOV",
        ),
        ("connectx6", "nosuch0", "PF / SR-IOV", "no such device"),
    ] {
        let fx = Fixture::new(fixture);
        let r = run(&fx.sysfs(), &opts(spec, GIB, ROOT_CAP));
        let c = r
            .check(check)
            .unwrap_or_else(|| panic!("{fixture} {spec}: no {check}: {r}"));
        assert_eq!(c.status, Status::Fail, "{fixture} {spec}: {r}");
        assert!(c.found.contains(needle), "{fixture} {spec}: {}", c.found);
        assert!(c.fix.is_some());
        assert!(!r.passed());
    }
}

#[test]
fn pf_interface_down_is_a_warning() {
    let fx = Fixture::new("connectx6");
    std::fs::write(fx.sys("class/net/ib0/flags"), "0x1002\n").unwrap();
    let r = run(&fx.sysfs(), &opts("ib0", GIB, ROOT_CAP));
    let c = r.check("PF interface").unwrap();
    assert_eq!(c.status, Status::Warn);
    assert!(c.fix.as_ref().unwrap().starts_with("ip link set ib0 up"));
    assert!(r.passed(), "a warning does not fail the selftest");
}

#[test]
fn this_host_read_only() {
    // The real /sys of the machine running the tests: the report must agree with it.
    let sysfs = Sysfs::host();
    let r = run(
        &sysfs,
        &SelftestOptions {
            vf: None,
            guest_ram: GIB,
            limits: Limits::current(),
        },
    );
    println!("{r}");
    let iommus = std::fs::read_dir("/sys/class/iommu")
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(status(&r, "IOMMU") == Status::Ok, iommus > 0);
    assert_eq!(
        status(&r, "vfio-pci") == Status::Ok,
        std::path::Path::new("/sys/bus/pci/drivers/vfio-pci").is_dir()
    );
    assert_eq!(
        status(&r, "/dev/vfio/vfio") == Status::Ok,
        std::path::Path::new("/dev/vfio/vfio").exists()
    );
    if iommus == 0 {
        hpmmap_testkit::not_applicable(
            hpmmap_testkit::Tier::Root,
            "selftest on this host",
            "no IOMMU on this host; VF passthrough prerequisites cannot be met here",
        );
    }
}

use hpmmap_vf::selftest::{run_with, IbSelftest};
use hpmmap_vf::IbOptions;

fn ib_opts(pkey: Option<&str>, job: Option<&str>) -> IbSelftest {
    IbSelftest {
        ib: IbOptions::parse(None, pkey, job).unwrap(),
        partitions: None,
    }
}

#[test]
fn connectx5_on_amd_passes_with_remapping_from_proc_interrupts() {
    let fx = Fixture::new("connectx5");
    let r = run(&fx.sysfs(), &opts("ib0", 2 * GIB, ROOT_CAP));
    assert!(r.checks.iter().all(|c| c.status == Status::Ok), "{r}");
    assert_eq!(
        r.check("IOMMU").unwrap().found.split(' ').next(),
        Some("ivhd0")
    );
    assert!(r
        .check("VF GUIDs")
        .unwrap()
        .found
        .contains("sets GUID 0x02000203006c4f10"));
}

#[test]
fn interrupt_remapping_off_fails_and_says_what_to_fix() {
    let fx = Fixture::new("connectx6-no-ir");
    let r = run(&fx.sysfs(), &opts("ib0", GIB, ROOT_CAP));
    let c = r.check("interrupt remap").unwrap();
    assert_eq!(c.status, Status::Fail, "{r}");
    assert!(
        c.found.contains("allow_unsafe_interrupts = Y"),
        "{}",
        c.found
    );
    // Without the unsafe switch, the kernel command line and /proc/interrupts still tell.
    std::fs::write(
        fx.root
            .join("sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"),
        "N\n",
    )
    .unwrap();
    let c = run(&fx.sysfs(), &opts("ib0", GIB, ROOT_CAP))
        .check("interrupt remap")
        .unwrap()
        .clone();
    assert_eq!(
        c.found,
        "switched off on the kernel command line (intremap=off)"
    );
    std::fs::write(fx.root.join("proc/cmdline"), "intel_iommu=on\n").unwrap();
    let c = run(&fx.sysfs(), &opts("ib0", GIB, ROOT_CAP))
        .check("interrupt remap")
        .unwrap()
        .clone();
    assert_eq!(c.status, Status::Fail);
    assert!(
        c.found.starts_with("off: no IR- interrupt chips among 4"),
        "{}",
        c.found
    );
    assert!(c.fix.unwrap().contains("Enabled IRQ remapping"));
    // No /proc/interrupts at all: the capability register is all there is; a warning.
    std::fs::remove_file(fx.root.join("proc/interrupts")).unwrap();
    let c = run(&fx.sysfs(), &opts("ib0", GIB, ROOT_CAP))
        .check("interrupt remap")
        .unwrap()
        .clone();
    assert_eq!(c.status, Status::Warn);
    assert!(c.found.starts_with("cannot tell"), "{}", c.found);
}

#[test]
fn missing_guid_attributes_fail_with_the_driver_fix() {
    let fx = Fixture::new("connectx6-no-guid-attrs");
    let r = run(&fx.sysfs(), &opts("ib0", GIB, ROOT_CAP));
    let c = r.check("VF GUIDs").unwrap();
    assert_eq!(c.status, Status::Fail, "{r}");
    assert!(c.found.contains("sriov/2/node is missing"), "{}", c.found);
    assert!(c.fix.as_ref().unwrap().contains("MLNX_OFED"));
}

#[test]
fn pkey_for_an_ethernet_vf_fails() {
    let fx = Fixture::new("igb-lab-recorded");
    let r = run_with(
        &fx.sysfs(),
        &opts("eth0", GIB, ROOT_CAP),
        &ib_opts(Some("0x8123"), None),
    );
    assert_eq!(status(&r, "InfiniBand"), Status::Fail, "{r}");
}

#[test]
fn pkey_against_other_jobs_and_the_sm_partitions() {
    let fx = Fixture::new("connectx6-crashed");
    let sysfs = fx.sysfs();
    // virtfn0 (the VF a claim would take) is in the admin's 'storage' partition.
    let r = run_with(
        &sysfs,
        &opts("ib0", GIB, ROOT_CAP),
        &ib_opts(Some("0x8300"), Some("j")),
    );
    let c = r.check("SM partitions").unwrap();
    assert_eq!(c.status, Status::Fail, "{r}");
    assert!(
        c.found.contains("is already in partition 'storage'"),
        "{}",
        c.found
    );
    assert_eq!(status(&r, "subnet manager"), Status::Ok);
    assert_eq!(status(&r, "P_Key"), Status::Ok);

    // On a clean host: a job holds 0x8123; another job asking for it fails; once
    // partitions.conf has the job's VF, its own check passes.
    let fx = Fixture::new("connectx6");
    let sysfs = fx.sysfs();
    let claim = hpmmap_vf::claim_vf_with(
        &sysfs,
        &hpmmap_vf::VfRequest {
            spec: "0000:3b:00.3".into(),
            create: None,
        },
        &IbOptions::parse(None, Some("0x8123"), Some("owner")).unwrap(),
    )
    .unwrap();
    let r = run_with(
        &sysfs,
        &opts("ib0", GIB, ROOT_CAP),
        &ib_opts(Some("0x0123"), Some("other")),
    );
    assert_eq!(status(&r, "P_Key"), Status::Fail, "{r}");
    assert!(r.check("P_Key").unwrap().found.contains("job 'owner'"));
    assert_eq!(
        status(&r, "SM partitions"),
        Status::Warn,
        "no file yet: {r}"
    );
    let path = fx.root.join("etc/opensm/partitions.conf");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let u =
        hpmmap_vf::partitions::update(&sysfs, &path, &[hpmmap_vf::records::dir(&sysfs)]).unwrap();
    hpmmap_vf::records::write_atomic(&path, &u.text).unwrap();
    let r = run_with(
        &sysfs,
        &opts("0000:3b:00.1", GIB, ROOT_CAP),
        &IbSelftest {
            ib: IbOptions::parse(
                Some(&claim.guid().unwrap().to_string()),
                Some("0x8123"),
                Some("owner"),
            )
            .unwrap(),
            partitions: Some(path.clone()),
        },
    );
    let c = r.check("SM partitions").unwrap();
    assert_eq!(c.status, Status::Ok, "{r}");
    assert!(
        c.found.contains("is partition 'hpmmap_owner'"),
        "{}",
        c.found
    );
}
