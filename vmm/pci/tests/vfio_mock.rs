//! The VFIO PCI device on the root bus, against hpmmap-pci's MOCK of the kernel's VFIO
//! (no IOMMU or VF exists on the build host) and a recording fake of KVM's memory-slot
//! and interrupt-routing calls. tests/kvm_host.rs runs the KVM side on real KVM.

use std::collections::BTreeMap;
use std::sync::Arc;

use hpmmap_pci::layout::ECAM_BASE;
use hpmmap_pci::msix::MsiMessage;
use hpmmap_pci::testing::{Call, RecordingKvm};
use hpmmap_pci::vfio::mock::{MockDevice, MockGroup, MockVfio};
use hpmmap_pci::vfio::GuestRamRegion;
use hpmmap_pci::{KvmHooks, PciRoot, PciWindows, VfioPciDevice};

const GIB: u64 = 1 << 30;
const NAME: &str = "0000:3b:00.3";
const GROUP: u32 = 31;
/// BAR0 and BAR3 as placed for a guest with 6 GiB of RAM end (64-bit window at 6 GiB).
const BAR0: u64 = 6 * GIB;
const BAR3: u64 = 6 * GIB + 0x4000;
const MSIX_INDEX: u32 = hpmmap_pci::vfio::PCI_MSIX_IRQ_INDEX;

fn vf_config() -> Vec<u8> {
    hpmmap_pci::testing::igbvf_config()
}

fn mock_for(group: u32, name: &str) -> Arc<MockVfio> {
    Arc::new(MockVfio::new(vec![MockGroup {
        id: group,
        viable: true,
        devices: vec![MockDevice {
            name: name.into(),
            bar_sizes: [0x4000, 0, 0, 0x4000, 0, 0],
            config: vf_config(),
            msix_vectors: 3,
        }],
    }]))
}

fn ram() -> Vec<GuestRamRegion> {
    vec![
        GuestRamRegion {
            gpa: 0,
            hva: 0x7f00_0000_0000,
            size: 3 * GIB,
        },
        GuestRamRegion {
            gpa: 4 * GIB,
            hva: 0x7f00_0000_0000 + 3 * GIB,
            size: 2 * GIB,
        },
    ]
}

struct Rig {
    root: PciRoot,
    kvm: Arc<RecordingKvm>,
    mock: Arc<MockVfio>,
    slot: u8,
}

fn hooks(kvm: &Arc<RecordingKvm>) -> KvmHooks {
    KvmHooks {
        slots: kvm.clone(),
        router: kvm.clone(),
    }
}

fn rig() -> Rig {
    let mock = mock_for(GROUP, NAME);
    let kvm = Arc::new(RecordingKvm::default());
    let dev = VfioPciDevice::open(mock.clone(), GROUP, NAME, &ram(), hooks(&kvm)).unwrap();
    let root = PciRoot::new(PciWindows::for_ram_end(6 * GIB));
    let slot = root.add_device(Box::new(dev)).unwrap();
    Rig {
        root,
        kvm,
        mock,
        slot,
    }
}

impl Rig {
    fn select(&self, off: u16) {
        let a = 0x8000_0000u32 | (u32::from(self.slot) << 11) | u32::from(off & 0xfc);
        assert!(self.root.pio_write(0xCF8, &a.to_le_bytes()));
    }
    /// A conf1 read of the VF's config space.
    fn rd(&self, off: u16, len: usize) -> u32 {
        self.select(off);
        let mut d = vec![0u8; len];
        assert!(self.root.pio_read(0xCFC + (off & 3), &mut d));
        let mut b = [0u8; 4];
        b[..len].copy_from_slice(&d);
        u32::from_le_bytes(b)
    }
    fn wr(&self, off: u16, len: usize, v: u32) {
        self.select(off);
        assert!(self
            .root
            .pio_write(0xCFC + (off & 3), &v.to_le_bytes()[..len]));
    }
    fn mmio_rd(&self, addr: u64, len: usize) -> Option<u64> {
        let mut d = vec![0u8; len];
        if !self.root.mmio_read(addr, &mut d) {
            return None;
        }
        let mut b = [0u8; 8];
        b[..len].copy_from_slice(&d);
        Some(u64::from_le_bytes(b))
    }
    fn mmio_wr(&self, addr: u64, len: usize, v: u64) {
        assert!(
            self.root.mmio_write(addr, &v.to_le_bytes()[..len]),
            "{addr:#x} not routed"
        );
    }
    /// The eventfds VFIO got for MSI-X, from the mock's record of SET_IRQS.
    fn msix_fds(&self) -> Vec<i32> {
        self.mock
            .irq_sets()
            .into_iter()
            .rev()
            .find(|(_, i, _, f)| *i == MSIX_INDEX && !f.is_empty())
            .map(|s| s.3)
            .expect("MSI-X enabled")
    }
}

#[test]
fn vf_enumerates_with_firmware_placed_bars() {
    let r = rig();
    assert_eq!(r.slot, 1, "slot 0 is the host bridge");
    assert_eq!(r.rd(0, 4), 0x10ca_8086);
    assert_eq!(r.rd(0x0a, 2), 0x0200, "class: Ethernet");
    assert_eq!(r.rd(0x0e, 1), 0, "single function to the guest");
    assert_eq!(r.rd(0x10, 4), (BAR0 as u32) | 0xc);
    assert_eq!(r.rd(0x14, 4), (BAR0 >> 32) as u32);
    assert_eq!(r.rd(0x1c, 4), (BAR3 as u32) | 0x4);
    assert_eq!(r.rd(0x20, 4), (BAR3 >> 32) as u32);
    assert_eq!(r.rd(0x34, 1), 0x70);
    assert_eq!(r.rd(0x72, 2), 0x0002, "MSI-X off, 3 vectors");
    assert_eq!(r.rd(0x3d, 1), 0, "no INTx");
    // ECAM reaches the same function.
    let mut d = [0u8; 4];
    assert!(r.root.mmio_read(ECAM_BASE + (1 << 15), &mut d));
    assert_eq!(u32::from_le_bytes(d), 0x10ca_8086);
    // Nothing is mapped or routed before the guest enables decode.
    assert!(r.kvm.calls().is_empty());
    assert_eq!(r.mmio_rd(BAR3, 4), None);
    // VFIO state: device reset, guest RAM DMA-mapped IOVA = GPA in 1 GiB calls.
    assert!(r
        .mock
        .log()
        .iter()
        .any(|l| l == &format!("open group {GROUP} device {NAME}")));
    let maps: Vec<(u64, u64)> = r.mock.mappings().iter().map(|m| (m.0, m.1)).collect();
    assert_eq!(
        maps,
        vec![
            (0, GIB),
            (GIB, GIB),
            (2 * GIB, GIB),
            (4 * GIB, GIB),
            (5 * GIB, GIB)
        ]
    );
    assert_eq!(
        r.mock.live_mmaps(),
        3,
        "BAR0 whole, BAR3 around table and PBA"
    );
}

#[test]
fn bar_sizing_protocol_reads_the_size_mask() {
    let r = rig();
    r.wr(0x10, 4, 0xffff_ffff);
    r.wr(0x14, 4, 0xffff_ffff);
    assert_eq!(r.rd(0x10, 4), 0xffff_c00c, "16 KiB, 64-bit, prefetchable");
    assert_eq!(r.rd(0x14, 4), 0xffff_ffff);
    r.wr(0x1c, 4, 0xffff_ffff);
    assert_eq!(r.rd(0x1c, 4), 0xffff_c004, "16 KiB, 64-bit");
    // Unimplemented BARs read zero whatever is written.
    r.wr(0x18, 4, 0xffff_ffff);
    assert_eq!(r.rd(0x18, 4), 0);
    r.wr(0x10, 4, BAR0 as u32);
    r.wr(0x14, 4, (BAR0 >> 32) as u32);
    assert_eq!(r.rd(0x10, 4), (BAR0 as u32) | 0xc);
    assert!(r.kvm.calls().is_empty(), "decode off: nothing mapped");
    assert!(
        r.mock.config_writes().is_empty(),
        "BAR writes never reach the device"
    );
}

#[test]
fn memory_decode_maps_bar_pages_as_slots_and_traps_msix() {
    let r = rig();
    r.wr(0x04, 2, 0x0006);
    assert_eq!(
        r.kvm.calls(),
        vec![
            Call::Map {
                slot: 10,
                gpa: BAR0,
                size: 0x4000
            },
            // BAR3 minus the table page (0x0000) and the PBA page (0x2000).
            Call::Map {
                slot: 11,
                gpa: BAR3 + 0x1000,
                size: 0x1000
            },
            Call::Map {
                slot: 12,
                gpa: BAR3 + 0x3000,
                size: 0x1000
            },
        ]
    );
    assert_eq!(r.rd(0x04, 2), 0x0006);
    assert!(
        r.mock.config_writes().iter().any(|(_, b)| b == &[6, 0]),
        "the command register reaches the device (bus master for DMA)"
    );
    // The trapped table page answers from the emulated table: vector 0 starts masked.
    assert_eq!(r.mmio_rd(BAR3 + 0xc, 4), Some(1));
    assert_eq!(r.mmio_rd(BAR3 + 0x2000, 8), Some(0), "PBA empty");
    // Past the BARs: not the bus's.
    assert_eq!(r.mmio_rd(BAR3 + 0x4000, 4), None);
    // Decode off again removes every slot.
    r.kvm.clear_calls();
    r.wr(0x04, 2, 0x0004);
    assert_eq!(
        r.kvm.calls(),
        vec![
            Call::Unmap { slot: 10 },
            Call::Unmap { slot: 11 },
            Call::Unmap { slot: 12 }
        ]
    );
    assert!(r.kvm.slots().is_empty());
    assert_eq!(r.mmio_rd(BAR3 + 0xc, 4), None);
}

#[test]
fn guest_moving_a_bar_moves_its_slots_and_traps() {
    let r = rig();
    r.wr(0x04, 2, 0x0002);
    // The guest moves BAR3 below 4 GiB: low dword, then high dword.
    r.wr(0x1c, 4, 0xC000_0000);
    r.wr(0x20, 4, 0);
    assert_eq!(r.rd(0x1c, 4), 0xC000_0004);
    let gpas: Vec<(u64, u64)> = r.kvm.slots().values().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        gpas,
        vec![(BAR0, 0x4000), (0xC000_1000, 0x1000), (0xC000_3000, 0x1000)]
    );
    assert_eq!(
        r.mmio_rd(0xC000_000C, 4),
        Some(1),
        "table trapped at the new base"
    );
    assert_eq!(r.mmio_rd(BAR3 + 0xc, 4), None, "old base no longer decodes");
    // A move onto BAR0 overlaps: KVM refuses the slots, the BAR stays trapped, no panic.
    r.wr(0x1c, 4, BAR0 as u32);
    r.wr(0x20, 4, (BAR0 >> 32) as u32);
    let n = r.kvm.slots().len();
    assert_eq!(n, 1, "only BAR0's slot: {:?}", r.kvm.slots());
}

/// Issue 12.5: BARs outside the windows the bridge announces decode nowhere (as real
/// hardware: the bridge does not forward those addresses): a BAR moved over guest RAM, the
/// PV page or the IOAPIC gets no memory slot and no trap, and maps again once back inside.
#[test]
fn bars_outside_the_bridge_windows_get_no_slot_and_no_trap() {
    let r = rig();
    r.wr(0x04, 2, 0x0002);
    let bar3_slots = |r: &Rig| r.kvm.slots().values().filter(|s| s.0 != BAR0).count();
    assert_eq!(bar3_slots(&r), 2, "BAR3's two non-MSI-X pages");
    for (lo, hi, what) in [
        (0x4000_0000u32, 0u32, "guest RAM at 1 GiB"),
        (0xFEB0_0000, 0, "the PV page"),
        (0xFEC0_0000, 0, "the IOAPIC"),
        (0xE000_0000, 0, "the ECAM window"),
        (0x0000_0000, 0x100, "above the 64-bit window"),
        (0x0000_0000, 1, "high guest RAM at 4 GiB"),
    ] {
        r.wr(0x20, 4, hi);
        r.wr(0x1c, 4, lo);
        let addr = (u64::from(hi) << 32) | u64::from(lo);
        assert_eq!(bar3_slots(&r), 0, "{what}: {:?}", r.kvm.slots());
        if lo != 0xE000_0000 {
            // (The ECAM window itself answers there, with config space.)
            assert_eq!(r.mmio_rd(addr + 0xc, 4), None, "{what}: trapped");
        }
        assert_eq!(r.mmio_rd(BAR3 + 0xc, 4), None, "{what}: old base");
    }
    r.wr(0x20, 4, (BAR3 >> 32) as u32);
    r.wr(0x1c, 4, BAR3 as u32);
    assert_eq!(bar3_slots(&r), 2, "back inside the window");
    assert_eq!(r.mmio_rd(BAR3 + 0xc, 4), Some(1), "table trapped again");
}

#[test]
fn msix_table_writes_produce_gsi_routes_and_irqfds() {
    let r = rig();
    r.wr(0x04, 2, 0x0006);
    r.kvm.clear_calls();
    r.wr(0x72, 2, 0x8002);
    assert_eq!(r.rd(0x72, 2), 0x8002, "MSI-X enable reads back");
    let fds = r.msix_fds();
    assert_eq!(fds.len(), 3, "one eventfd per vector");
    assert!(r.kvm.calls().is_empty(), "all vectors still masked");

    // Vector 1: 8-byte address, data, then unmask.
    let e1 = BAR3 + 16;
    r.mmio_wr(e1, 8, 0xfee0_1000);
    r.mmio_wr(e1 + 8, 4, 0x4041);
    assert!(r.kvm.calls().is_empty());
    r.mmio_wr(e1 + 12, 4, 0);
    let msg = MsiMessage {
        address: 0xfee0_1000,
        data: 0x4041,
    };
    assert_eq!(
        r.kvm.calls(),
        vec![
            Call::Route { gsi: 25, msg },
            Call::Irqfd {
                gsi: 25,
                fd: fds[1]
            }
        ]
    );
    assert_eq!(r.kvm.routes(), BTreeMap::from([(25, msg)]));
    assert_eq!(r.mmio_rd(e1, 8), Some(0xfee0_1000));
    assert_eq!(r.mmio_rd(e1 + 8, 4), Some(0x4041));

    // A new message under an unmasked vector updates the route, keeps the irqfd.
    r.kvm.clear_calls();
    r.mmio_wr(e1 + 8, 4, 0x4042);
    let msg2 = MsiMessage {
        data: 0x4042,
        ..msg
    };
    assert_eq!(r.kvm.calls(), vec![Call::Route { gsi: 25, msg: msg2 }]);

    // Masked: irqfd detached; a device signal shows in the PBA until unmasked.
    r.kvm.clear_calls();
    r.mmio_wr(e1 + 12, 4, 1);
    assert_eq!(
        r.kvm.calls(),
        vec![
            Call::UnIrqfd {
                gsi: 25,
                fd: fds[1]
            },
            Call::Unroute { gsi: 25 }
        ]
    );
    assert_eq!(r.mmio_rd(BAR3 + 0x2000, 8), Some(0));
    let one = 1u64;
    // SAFETY: `fds[1]` is the vector's eventfd, owned by the device and open until `r` is
    // dropped at the end of the test; the buffer is `one`, a live u64, and the length is its
    // 8 bytes, so the kernel reads only memory we own.
    let written = unsafe { libc::write(fds[1], (&one as *const u64).cast(), 8) };
    assert_eq!(written, 8);
    assert_eq!(r.mmio_rd(BAR3 + 0x2000, 8), Some(0b10), "vector 1 pending");
    r.kvm.clear_calls();
    r.mmio_wr(e1 + 12, 4, 0);
    assert_eq!(
        r.kvm.calls(),
        vec![
            Call::Route { gsi: 25, msg: msg2 },
            Call::Irqfd {
                gsi: 25,
                fd: fds[1]
            }
        ]
    );
    assert_eq!(
        r.mmio_rd(BAR3 + 0x2000, 8),
        Some(0),
        "attached irqfd: KVM delivers the pending signal"
    );
    // What KVM does on attach: it consumes the count (the fake does not).
    let mut cnt = 0u64;
    // SAFETY: the same open eventfd as above; the buffer is `cnt`, a live u64 borrowed
    // mutably for the call only, and the length is its 8 bytes, so the kernel writes only
    // memory we own (an eventfd read is exactly 8 bytes).
    let read = unsafe { libc::read(fds[1], (&mut cnt as *mut u64).cast(), 8) };
    assert_eq!(read, 8);

    // Function mask, then MSI-X off.
    r.kvm.clear_calls();
    r.wr(0x72, 2, 0xc002);
    assert_eq!(
        r.kvm.calls(),
        vec![
            Call::UnIrqfd {
                gsi: 25,
                fd: fds[1]
            },
            Call::Unroute { gsi: 25 }
        ]
    );
    r.wr(0x72, 2, 0x0002);
    let last = r.mock.irq_sets().last().cloned().unwrap();
    assert_eq!(
        last,
        (NAME.to_string(), MSIX_INDEX, 0, vec![]),
        "VFIO MSI-X off"
    );
    assert!(r.kvm.irqfds().is_empty() && r.kvm.routes().is_empty());
    // Odd table accesses are harmless.
    r.mmio_wr(BAR3 + 1, 2, 0xffff);
    assert_eq!(r.mmio_rd(BAR3 + 1, 2), Some(0xffff));
    r.mmio_wr(BAR3 + 0x2000, 8, u64::MAX);
    assert_eq!(r.mmio_rd(BAR3 + 0x2000, 8), Some(0), "PBA is read-only");
}

#[test]
fn teardown_detaches_irqfds_then_slots_then_vfio() {
    let r = rig();
    r.wr(0x04, 2, 0x0006);
    r.wr(0x72, 2, 0x8002);
    for v in 0..3u64 {
        let e = BAR3 + 16 * v;
        r.mmio_wr(e, 8, 0xfee0_0000);
        r.mmio_wr(e + 8, 4, 0x30 + v);
        r.mmio_wr(e + 12, 4, 0);
    }
    assert_eq!(r.kvm.irqfds().len(), 3);
    r.kvm.clear_calls();
    r.root.shutdown();
    let calls = r.kvm.calls();
    let first_unmap = calls
        .iter()
        .position(|c| matches!(c, Call::Unmap { .. }))
        .unwrap();
    assert!(calls[..first_unmap]
        .iter()
        .all(|c| matches!(c, Call::UnIrqfd { .. } | Call::Unroute { .. })));
    assert_eq!(
        calls[..first_unmap]
            .iter()
            .filter(|c| matches!(c, Call::UnIrqfd { .. }))
            .count(),
        3
    );
    assert!(r.kvm.slots().is_empty() && r.kvm.irqfds().is_empty() && r.kvm.routes().is_empty());
    assert_eq!(r.mock.live_mmaps(), 0);
    assert!(r.mock.mappings().is_empty(), "DMA unmapped");
    assert_eq!(r.mock.open_handles(), 0, "device, group, container closed");
    assert_eq!(
        r.mock.irq_sets().last().cloned().unwrap(),
        (NAME.to_string(), MSIX_INDEX, 0, vec![])
    );
    // The bus still answers, with the VF gone.
    assert_eq!(r.rd(0, 4), u32::MAX);
}

#[test]
fn garbage_config_and_mmio_never_panic() {
    let r = rig();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let lens = [1usize, 2, 3, 4, 8];
    for _ in 0..20_000 {
        let x = next();
        let v = next();
        let len = lens[(x >> 8) as usize % lens.len()];
        let buf = v.to_le_bytes();
        let mut out = [0u8; 8];
        match x % 6 {
            0 => {
                // Address register: mostly our slot, sometimes anything.
                let a = if x & 0x100 != 0 {
                    v as u32
                } else {
                    0x8000_0800 | (v as u32 & 0xfc)
                };
                r.root.pio_write(0xCF8, &a.to_le_bytes());
            }
            1 => {
                let port = 0xCF8 + (v % 8) as u16;
                r.root.pio_read(port, &mut out[..len.min(4)]);
            }
            2 => {
                let port = 0xCFC + (x >> 20) as u16 % 4;
                r.root.pio_write(port, &buf[..len.min(4)]);
            }
            3 => {
                let off = (x >> 16) % (2 << 15);
                r.root.mmio_write(ECAM_BASE + off, &buf[..len]);
            }
            4 => {
                let off = (x >> 16) % (2 << 15);
                r.root.mmio_read(ECAM_BASE + off, &mut out[..len]);
            }
            _ => {
                // Wherever the BARs are now (the guest may have moved them), and near.
                let addr = [BAR0, BAR3, 0xC000_0000][(x >> 4) as usize % 3] + (v % 0x5000);
                if x & 0x10 != 0 {
                    r.root.mmio_write(addr, &buf[..len]);
                } else {
                    r.root.mmio_read(addr, &mut out[..len]);
                }
            }
        }
    }
    // Identity registers are read-only: the bus and the VF still identify.
    assert_eq!(r.rd(0, 4), 0x10ca_8086);
    r.select(0);
    r.root.pio_write(0xCF8, &0x8000_0000u32.to_le_bytes());
    let mut d = [0u8; 4];
    r.root.pio_read(0xCFC, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
    // Everything the garbage set up tears down completely.
    r.root.shutdown();
    assert!(r.kvm.slots().is_empty() && r.kvm.irqfds().is_empty());
    assert_eq!(r.mock.open_handles(), 0);
    assert_eq!(r.mock.live_mmaps(), 0);
}

/// A private copy of one of hpmmap-vf's sysfs fixtures (a hand-built ConnectX-6 tree,
/// with the kernel's reaction to sysfs writes SIMULATED by hpmmap_vf::sim).
fn fixture(name: &str) -> std::path::PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vf/tests/fixtures")
        .join(name);
    let dst = std::env::temp_dir().join(format!("hpmmap-pci-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    hpmmap_vf::sim::copy_tree(&src, &dst).unwrap();
    std::fs::create_dir_all(dst.join("sys/class/iommu")).unwrap();
    dst
}

#[test]
fn the_device_owns_its_claim_and_rebinds_on_teardown_or_failed_open() {
    let root_dir = fixture("connectx6");
    let sysfs = hpmmap_vf::sim::sim_sysfs(&root_dir);
    let dev_dir = root_dir.join("sys/bus/pci/devices/0000:3b:00.3");
    let state = || {
        (
            std::fs::read_link(dev_dir.join("driver")).ok(),
            std::fs::read_to_string(dev_dir.join("driver_override")).unwrap(),
        )
    };
    let before = state();
    let req = hpmmap_vf::VfRequest {
        spec: "ib0".into(),
        create: None,
    };

    let claim = hpmmap_vf::claim_vf(&sysfs, &req).unwrap();
    assert_eq!(claim.vf().to_string(), NAME);
    let mock = mock_for(claim.iommu_group(), NAME);
    let kvm = Arc::new(RecordingKvm::default());
    let dev = VfioPciDevice::from_claim(claim, mock.clone(), &ram(), hooks(&kvm)).unwrap();
    let bus = PciRoot::new(PciWindows::for_ram_end(6 * GIB));
    bus.add_device(Box::new(dev)).unwrap();
    assert_ne!(state(), before, "bound to vfio-pci while the guest has it");
    bus.shutdown();
    assert_eq!(state(), before, "original binding back after teardown");
    assert_eq!(mock.open_handles(), 0);

    // VFIO refuses (the group is not in the mock): the claim is undone on the way out.
    let claim = hpmmap_vf::claim_vf(&sysfs, &req).unwrap();
    let wrong = mock_for(claim.iommu_group() + 1, NAME);
    let err = VfioPciDevice::from_claim(claim, wrong.clone(), &ram(), hooks(&kvm))
        .err()
        .expect("open must fail");
    assert!(err.to_string().contains("/dev/vfio/"), "{err}");
    assert_eq!(state(), before);
    assert_eq!(wrong.open_handles(), 0);
    let _ = std::fs::remove_dir_all(&root_dir);
}

#[test]
fn decode_left_on_by_the_host_is_off_for_the_guest_until_it_enables_it() {
    // vfio-pci can show a VF with memory decode on; the guest must still see a device
    // out of reset, and its enabling decode must map the BARs.
    let mut cfg = vf_config();
    cfg[0x04] = 0x06;
    let mock = Arc::new(MockVfio::new(vec![MockGroup {
        id: GROUP,
        viable: true,
        devices: vec![MockDevice {
            name: NAME.into(),
            bar_sizes: [0x4000, 0, 0, 0x4000, 0, 0],
            config: cfg,
            msix_vectors: 3,
        }],
    }]));
    let kvm = Arc::new(RecordingKvm::default());
    let dev = VfioPciDevice::open(mock.clone(), GROUP, NAME, &ram(), hooks(&kvm)).unwrap();
    let root = PciRoot::new(PciWindows::for_ram_end(6 * GIB));
    let slot = root.add_device(Box::new(dev)).unwrap();
    let r = Rig {
        root,
        kvm,
        mock,
        slot,
    };
    assert_eq!(r.rd(0x04, 2) & 3, 0, "decode off at start");
    r.wr(0x04, 2, 0x0006);
    assert_eq!(r.kvm.slots().len(), 3, "BAR0 + BAR3 around the MSI-X pages");
}
