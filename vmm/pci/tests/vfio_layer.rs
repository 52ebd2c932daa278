//! What hpmmap-pci itself does around VFIO (DMA chunking and rollback, unmapping before
//! close, error propagation, BAR mmaps around the MSI-X pages, the vector-count check,
//! config space through the config region), against the MOCK of the kernel's VFIO
//! (src/vfio/mock.rs). Container, group attach and type1v2 ordering are vfio-ioctls'
//! now; the crate-error mapping is unit-tested in src/vfio/kernel.rs. No VFIO device
//! exists on the build host; the nested lab runs the real thing.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use hpmmap_pci::config_space::{ConfigEvent, VfConfig};
use hpmmap_pci::msix::MsixEvent;
use hpmmap_pci::vfio::mock::{region_offset, MockDevice, MockGroup, MockVfio};
use hpmmap_pci::vfio::{dma_chunks, GuestRamRegion, VfioDevice, VfioError, VfioPassthrough};
use vmm_sys_util::eventfd::EventFd;

const GIB: u64 = 1 << 30;
const HVA: u64 = 0x7f00_0000_0000;

fn vf_config() -> Vec<u8> {
    hpmmap_pci::testing::igbvf_config()
}

fn mock(viable: bool) -> Arc<MockVfio> {
    Arc::new(MockVfio::new(vec![MockGroup {
        id: 31,
        viable,
        devices: vec![MockDevice {
            name: "0000:3b:00.3".into(),
            bar_sizes: [0x4000, 0, 0, 0x4000, 0, 0],
            config: vf_config(),
            msix_vectors: 3,
        }],
    }]))
}

/// Interface 1's layout: low RAM [0, 3 GiB) and high RAM from 4 GiB, one host mapping.
fn ram(total: u64) -> Vec<GuestRamRegion> {
    let low = total.min(3 * GIB);
    let mut v = vec![GuestRamRegion {
        gpa: 0,
        hva: HVA,
        size: low,
    }];
    if total > low {
        v.push(GuestRamRegion {
            gpa: 4 * GIB,
            hva: HVA + low,
            size: total - low,
        });
    }
    v
}

#[test]
fn chunks_split_at_every_gib_with_iova_equal_gpa() {
    let c = dma_chunks(&ram(4 * GIB + GIB / 2)).unwrap();
    assert_eq!(
        c,
        vec![
            (0, HVA, GIB),
            (GIB, HVA + GIB, GIB),
            (2 * GIB, HVA + 2 * GIB, GIB),
            (4 * GIB, HVA + 3 * GIB, GIB),
            (5 * GIB, HVA + 4 * GIB, GIB / 2),
        ]
    );
    let c = dma_chunks(&[GuestRamRegion {
        gpa: GIB / 2,
        hva: HVA,
        size: GIB,
    }])
    .unwrap();
    assert_eq!(
        c,
        vec![(GIB / 2, HVA, GIB / 2), (GIB, HVA + GIB / 2, GIB / 2)]
    );
    assert!(matches!(
        dma_chunks(&[GuestRamRegion {
            gpa: 0,
            hva: HVA + 1,
            size: GIB
        }]),
        Err(VfioError::Unaligned { .. })
    ));
    let overlap = [
        GuestRamRegion {
            gpa: 0,
            hva: HVA,
            size: 2 * GIB,
        },
        GuestRamRegion {
            gpa: GIB,
            hva: HVA,
            size: GIB,
        },
    ];
    assert!(matches!(dma_chunks(&overlap), Err(VfioError::Overlap(g)) if g == GIB));
}

#[test]
fn passthrough_maps_all_ram_in_order_and_tears_down_completely() {
    let m = mock(true);
    let p = VfioPassthrough::open(&*m, 31, "0000:3b:00.3", &ram(6 * GIB)).unwrap();
    assert_eq!(m.mappings().len(), 6);
    assert!(m
        .mappings()
        .iter()
        .all(|(iova, size, _)| *size == GIB && iova % GIB == 0));
    assert_eq!(
        m.mappings()[3],
        (4 * GIB, GIB, HVA + 3 * GIB),
        "GPA 4 GiB is host offset 3 GiB"
    );
    let log = m.log();
    let pos = |s: &str| {
        log.iter()
            .position(|l| l.starts_with(s))
            .unwrap_or_else(|| panic!("{s} not in {log:?}"))
    };
    assert!(
        pos("open group 31 device 0000:3b:00.3") < pos("MAP_DMA"),
        "guest RAM is mapped once the device (and so the IOMMU) is there"
    );
    assert_eq!(p.device.dma_mappings().len(), 6);
    assert_eq!(m.open_handles(), 1);
    drop(p);
    assert_eq!(m.open_handles(), 0, "every fd closed");
    assert!(m.mappings().is_empty());
    let log = m.log();
    let unmap = log.iter().position(|l| l.starts_with("UNMAP_DMA")).unwrap();
    let close = log.iter().position(|l| l == "close 0000:3b:00.3").unwrap();
    assert!(
        unmap < close,
        "unmapped while the IOMMU still existed: {log:?}"
    );
    assert!(
        log.iter().skip(close).all(|l| !l.starts_with("UNMAP_DMA")),
        "every chunk unmapped explicitly before close: {log:?}"
    );
    assert_eq!(log.iter().filter(|l| l.starts_with("UNMAP_DMA")).count(), 6);
}

#[test]
fn failed_chunk_unmaps_the_ones_before_and_names_the_gpa() {
    let m = mock(true);
    m.fail_map_at(4 * GIB);
    let e = VfioPassthrough::open(&*m, 31, "0000:3b:00.3", &ram(6 * GIB))
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "DMA map of guest RAM GPA 0x100000000+0x40000000 (host VA 0x7f00c0000000) failed"
        ),
        "{msg}"
    );
    assert!(msg.contains("RLIMIT_MEMLOCK"), "{msg}");
    assert!(m.mappings().is_empty());
    assert_eq!(m.open_handles(), 0);
}

#[test]
fn non_viable_group_is_refused_and_closed() {
    let m = mock(false);
    let e = VfioPassthrough::open(&*m, 31, "0000:3b:00.3", &ram(GIB))
        .err()
        .unwrap();
    assert!(matches!(e, VfioError::GroupNotViable(31)), "{e}");
    assert!(e
        .to_string()
        .contains("/sys/kernel/iommu_groups/31/devices"));
    assert_eq!(m.open_handles(), 0);
}

#[test]
fn container_without_type1v2_is_refused() {
    let m = Arc::new(MockVfio::new(vec![]).without_type1v2());
    let e = VfioDevice::open(&*m, 31, "0000:3b:00.3").err().unwrap();
    assert!(matches!(e, VfioError::NoType1v2));
    assert_eq!(m.open_handles(), 0);
}

#[test]
fn group_held_elsewhere_and_unknown_group() {
    let m = mock(true);
    let d = VfioDevice::open(&*m, 31, "0000:3b:00.3").unwrap();
    let e = VfioDevice::open(&*m, 31, "0000:3b:00.3").err().unwrap();
    assert_eq!(e.to_string(), "opening /dev/vfio/31: Device or resource busy (os error 16) (another process holds this group)");
    let e = VfioDevice::open(&*m, 99, "0000:3b:00.3").err().unwrap();
    assert!(
        e.to_string().contains("/dev/vfio/99") && e.to_string().contains("is vfio-pci loaded"),
        "{e}"
    );
    drop(d);
    assert_eq!(m.open_handles(), 0);
}

#[test]
fn unknown_device_name_in_group() {
    let m = mock(true);
    let e = VfioDevice::open(&*m, 31, "0000:3b:00.7").err().unwrap();
    assert!(
        e.to_string()
            .starts_with("VFIO_GROUP_GET_DEVICE_FD 0000:3b:00.7 in group 31: "),
        "{e}"
    );
    assert_eq!(m.open_handles(), 0);
}

#[test]
fn device_regions_msix_and_bar_mappings() {
    let m = mock(true);
    let p = VfioPassthrough::open(&*m, 31, "0000:3b:00.3", &ram(GIB)).unwrap();
    let d = &p.device;
    assert_eq!(d.region(3).unwrap().size, 0x4000);
    assert_eq!(d.region(3).unwrap().offset, region_offset(3));
    let cfg = d.read_config_space().unwrap();
    assert_eq!(&cfg[0..4], &0x10ca_8086u32.to_le_bytes());
    let bars = d.bars(&cfg);
    assert_eq!(
        bars.iter().map(|b| (b.index, b.size)).collect::<Vec<_>>(),
        vec![(0, 0x4000), (3, 0x4000)]
    );
    let model = VfConfig::new(cfg, &bars);
    let cap = *model.msix_cap().unwrap();
    assert_eq!(
        (
            cap.table_bar,
            cap.table_offset,
            cap.pba_bar,
            cap.pba_offset,
            cap.table_size
        ),
        (3, 0, 3, 0x2000, 3)
    );

    // BAR3 holds the table (page 0) and PBA (page 2): only pages 1 and 3 are mapped.
    let maps = d.map_bar(3, Some(&cap)).unwrap();
    assert_eq!(
        maps.iter()
            .map(|b| (b.bar_offset, b.len))
            .collect::<Vec<_>>(),
        vec![(0x1000, 0x1000), (0x3000, 0x1000)]
    );
    let whole = d.map_bar(0, Some(&cap)).unwrap();
    assert_eq!(
        whole
            .iter()
            .map(|b| (b.bar_offset, b.len))
            .collect::<Vec<_>>(),
        vec![(0, 0x4000)]
    );
    assert_eq!(m.live_mmaps(), 3);
    drop((maps, whole));
    assert_eq!(m.live_mmaps(), 0);

    let efds: Vec<EventFd> = (0..4).map(|_| EventFd::new(0).unwrap()).collect();
    let all: Vec<&EventFd> = efds.iter().collect();
    let raw: Vec<i32> = efds.iter().map(|f| f.as_raw_fd()).collect();
    let e = d.enable_msix(&all).unwrap_err();
    assert!(matches!(
        e,
        VfioError::TooManyVectors {
            requested: 4,
            available: 3,
            ..
        }
    ));
    d.enable_msix(&all[..3]).unwrap();
    assert_eq!(
        m.irq_sets(),
        vec![("0000:3b:00.3".to_string(), 2, 0, raw[..3].to_vec())]
    );
    drop(p);
    assert_eq!(
        m.irq_sets().last().unwrap(),
        &("0000:3b:00.3".to_string(), 2, 0, vec![]),
        "MSI-X off at close"
    );
    assert_eq!(m.open_handles(), 0);
}

#[test]
fn guest_config_writes_reach_the_device_through_vfio() {
    let m = mock(true);
    let p = VfioPassthrough::open(&*m, 31, "0000:3b:00.3", &ram(GIB)).unwrap();
    let cfg = p.device.read_config_space().unwrap();
    let bars = p.device.bars(&cfg);
    let mut model = VfConfig::new(cfg, &bars);
    model.set_bar_address(3, 0xc000_0000);
    let ev = model.write(&p.device, 0x04, 2, 0x0006);
    assert_eq!(
        ev,
        vec![ConfigEvent::BarMap {
            bar: 3,
            addr: 0xc000_0000,
            size: 0x4000
        }],
        "BAR0 has no address yet"
    );
    assert_eq!(m.config_writes(), vec![(region_offset(7) + 4, vec![6, 0])]);
    let ev = model.write(&p.device, 0x72, 2, 0x8000);
    assert_eq!(ev, vec![ConfigEvent::Msix(MsixEvent::Enable(true))]);
    assert_eq!(model.read(&p.device, 0x00, 4), 0x10ca_8086);
}
