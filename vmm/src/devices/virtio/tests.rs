//! The transport and virtio-blk driven as a guest driver would drive them, through BAR
//! and config-space accesses, against a real GuestMemoryMmap and a real disk file.

use super::block::{BlockDevice, DiskSpec, SEGMENT_MAX};
use super::pci::*;
use hpmmap_pci::testing::{Call, RecordingKvm};
use hpmmap_pci::PciDevice;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

const RAM: u64 = 1 << 20;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HDR: u64 = 0x8000;
const DATA: u64 = 0x10000;
const STATUS: u64 = 0x9000;
const QSIZE: u16 = 16;
const MSI_ADDR: u64 = 0xfee0_0000;

struct Rig {
    t: VirtioPci,
    mem: GuestMemoryMmap,
    kvm: Arc<RecordingKvm>,
    path: std::path::PathBuf,
    avail_idx: u16,
}

fn disk(name: &str, bytes: usize, fill: impl Fn(usize) -> u8) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("hpmmap-virtio-{}-{name}", std::process::id()));
    std::fs::write(&p, (0..bytes).map(fill).collect::<Vec<u8>>()).unwrap();
    p
}

impl Rig {
    fn new(name: &str, ro: bool) -> Rig {
        let path = disk(name, 64 * 512, |i| (i / 512) as u8);
        let spec = DiskSpec {
            path: path.clone(),
            ro,
            serial: "hpmmap-root".into(),
        };
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let kvm = Arc::new(RecordingKvm::default());
        let dev = BlockDevice::open(&spec).unwrap();
        let mut t = VirtioPci::new(Box::new(dev), mem.clone(), kvm.clone());
        t.place_bar(0, 0xC000_0000);
        t.config_write(0x04, 2, 0x6); // memory decode, bus master
        Rig {
            t,
            mem,
            kvm,
            path,
            avail_idx: 0,
        }
    }

    fn w(&mut self, off: u64, len: usize, v: u64) {
        self.t.bar_write(0, off, &v.to_le_bytes()[..len]);
    }
    fn r(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.t.bar_read(0, off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// MSI-X on, vectors 0 (config) and 1 (queue 0) unmasked, as Linux sets them up.
    fn msix(&mut self) {
        let cap = self.find_cap(0x11);
        self.t.config_write(cap + 2, 2, 0x8000);
        for v in 0..2u64 {
            let e = MSIX_TABLE + v * 16;
            self.w(e, 4, MSI_ADDR);
            self.w(e + 4, 4, 0);
            self.w(e + 8, 4, 0x40 + v);
            self.w(e + 12, 4, 0);
        }
    }

    fn find_cap(&mut self, id: u8) -> u16 {
        let mut at = self.t.config_read(0x34, 1) as u16;
        while at != 0 {
            if self.t.config_read(at, 1) as u8 == id {
                return at;
            }
            at = self.t.config_read(at + 1, 1) as u16;
        }
        panic!("no capability {id:#x}");
    }

    fn features(&mut self) -> u64 {
        self.w(0x00, 4, 0);
        let lo = self.r(0x04, 4);
        self.w(0x00, 4, 1);
        lo | (self.r(0x04, 4) << 32)
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queue 0, DRIVER_OK; returns the status.
    fn init(&mut self, features: u64) -> u8 {
        self.w(0x14, 1, 0);
        self.w(0x14, 1, u64::from(VIRTIO_CONFIG_S_ACKNOWLEDGE));
        self.w(
            0x14,
            1,
            u64::from(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER),
        );
        for sel in 0..2 {
            self.w(0x08, 4, sel);
            self.w(0x0c, 4, (features >> (32 * sel)) & 0xffff_ffff);
        }
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        self.w(0x14, 1, u64::from(s));
        if self.r(0x14, 1) as u32 & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            return self.r(0x14, 1) as u8;
        }
        self.w(0x10, 2, 0);
        self.setup_queue(QSIZE, DESC, AVAIL, USED);
        self.w(0x14, 1, u64::from(s | VIRTIO_CONFIG_S_DRIVER_OK));
        self.r(0x14, 1) as u8
    }

    fn setup_queue(&mut self, size: u16, desc: u64, avail: u64, used: u64) {
        self.w(0x16, 2, 0);
        self.w(0x18, 2, u64::from(size));
        self.w(0x1a, 2, 1);
        for (off, a) in [(0x20, desc), (0x28, avail), (0x30, used)] {
            self.w(off, 4, a & 0xffff_ffff);
            self.w(off + 4, 4, a >> 32);
        }
        self.w(0x1c, 2, 1);
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC + u64::from(i) * 16);
        self.mem.write_obj(addr, at).unwrap();
        self.mem.write_obj(len, at.unchecked_add(8)).unwrap();
        self.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        self.mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }

    /// Makes head `head` available and kicks queue 0.
    fn submit(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        self.w(NOTIFY, 2, 0);
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }
    /// (id, len) of used element `i`.
    fn used(&self, i: u16) -> (u32, u32) {
        let at = USED + 4 + 8 * u64::from(i % QSIZE);
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    fn header(&self, ty: u32, sector: u64) {
        self.mem.write_obj(ty, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// header / data / status, the way Linux lays out one-segment requests.
    fn request(&mut self, ty: u32, sector: u64, len: u32, data_writable: bool) -> u8 {
        self.header(ty, sector);
        let f = if data_writable { VRING_DESC_F_WRITE } else { 0 } as u16;
        self.desc(0, HDR, 16, VRING_DESC_F_NEXT as u16, 1);
        if len > 0 {
            self.desc(1, DATA, len, f | VRING_DESC_F_NEXT as u16, 2);
            self.desc(2, STATUS, 1, VRING_DESC_F_WRITE as u16, 0);
        } else {
            self.desc(1, STATUS, 1, VRING_DESC_F_WRITE as u16, 0);
        }
        self.submit(0);
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn needs_reset(&mut self) -> bool {
        self.r(0x14, 1) as u32 & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }

    fn msis(&self) -> Vec<u32> {
        self.kvm
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::SignalMsi(m) => Some(m.data),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn config_space_presents_a_modern_virtio_blk_with_its_capabilities() {
    let mut r = Rig::new("cfgspace", false);
    assert_eq!(r.t.config_read(0, 4), 0x1042_1af4);
    assert_eq!(r.t.config_read(0x08, 1), 1, "revision 1: modern only");
    assert_eq!(r.t.config_read(0x3d, 1), 0, "no INTx pin");
    // BAR sizing: all-ones reads back the size mask.
    r.t.config_write(0x10, 4, 0xffff_ffff);
    assert_eq!(r.t.config_read(0x10, 4), !(BAR_SIZE as u32 - 1));
    r.t.config_write(0x10, 4, 0xC000_0000);
    // The four virtio capabilities point into BAR0 at the documented offsets.
    let mut at = r.t.config_read(0x34, 1) as u16;
    let mut seen = Vec::new();
    while at != 0 {
        if r.t.config_read(at, 1) == 0x09 {
            let ty = r.t.config_read(at + 3, 1);
            let off = r.t.config_read(at + 8, 4);
            seen.push((ty, off));
        }
        at = r.t.config_read(at + 1, 1) as u16;
    }
    assert_eq!(
        seen,
        vec![
            (1, COMMON as u32),
            (2, NOTIFY as u32),
            (3, ISR as u32),
            (4, DEVICE as u32)
        ]
    );
    let msix = r.find_cap(0x11);
    assert_eq!(r.t.config_read(msix + 2, 2) & 0x7ff, 1, "2 vectors");
    // Device config: capacity in sectors.
    assert_eq!(r.r(DEVICE, 8), 64);
    assert_eq!(r.r(DEVICE + 12, 4), u64::from(super::block::SEGMENTS_MAX));
}

#[test]
fn feature_negotiation_keeps_only_offered_features_with_version_1() {
    let mut r = Rig::new("features", true);
    let f = r.features();
    assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
    assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0, "read-only disk says so");
    assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
    // Without VERSION_1 (a legacy driver): FEATURES_OK does not stick.
    let s = r.init(f & !(1 << VIRTIO_F_VERSION_1));
    assert_eq!(u32::from(s) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    // A feature never offered: refused too.
    let s = r.init(f | (1 << VIRTIO_BLK_F_DISCARD));
    assert_eq!(u32::from(s) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    let s = r.init(f);
    assert_ne!(u32::from(s) & VIRTIO_CONFIG_S_DRIVER_OK, 0);
    assert_eq!(r.r(0x12, 2), 1, "one queue");
    assert_eq!(r.r(0x18, 2), u64::from(QSIZE));
    assert_eq!(r.r(0x1c, 2), 1, "enabled");
    // Reset clears everything the driver set.
    r.w(0x14, 1, 0);
    assert_eq!(r.r(0x14, 1), 0);
    assert_eq!(r.r(0x1c, 2), 0);
    assert_eq!(r.r(0x18, 2), 256, "back to the maximum");
}

#[test]
fn read_write_flush_get_id_chain() {
    let mut r = Rig::new("rw", false);
    r.msix();
    let f = r.features();
    r.init(f);
    // Read sectors 3..5: the disk's bytes are their sector number.
    assert_eq!(r.request(VIRTIO_BLK_T_IN, 3, 1024, true), 0);
    let mut buf = vec![0u8; 1024];
    r.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 3) && buf[512..].iter().all(|&b| b == 4));
    assert_eq!(r.used_idx(), 1);
    assert_eq!(r.used(0), (0, 1025), "data plus status byte written");
    assert_eq!(r.msis(), vec![0x41], "queue vector 1 fired");
    // Write sector 7 and read the file back on the host.
    r.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(r.request(VIRTIO_BLK_T_OUT, 7, 512, false), 0);
    assert_eq!(r.used(1), (0, 1));
    let host = std::fs::read(&r.path).unwrap();
    assert!(host[7 * 512..8 * 512].iter().all(|&b| b == 0xab));
    assert!(host[8 * 512..9 * 512].iter().all(|&b| b == 8));
    assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, 0, false), 0);
    // GET_ID: the serial, NUL padded to 20 bytes.
    assert_eq!(r.request(VIRTIO_BLK_T_GET_ID, 0, 20, true), 0);
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..11], b"hpmmap-root");
    assert!(id[11..].iter().all(|&b| b == 0));
    assert_eq!(r.used(3), (0, 21));
    // Past the end of the disk, and an unknown type: errors, and the device goes on.
    assert_eq!(
        r.request(VIRTIO_BLK_T_IN, 63, 1024, true),
        VIRTIO_BLK_S_IOERR as u8
    );
    assert_eq!(r.request(99, 0, 0, false), VIRTIO_BLK_S_UNSUPP as u8);
    assert!(!r.needs_reset());
    assert_eq!(r.msis().len(), 6);
}

#[test]
fn read_only_disk_refuses_writes_with_ioerr() {
    let mut r = Rig::new("ro", true);
    let f = r.features();
    r.init(f);
    r.mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        r.request(VIRTIO_BLK_T_OUT, 0, 512, false),
        VIRTIO_BLK_S_IOERR as u8
    );
    assert!(std::fs::read(&r.path).unwrap()[..512]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(r.request(VIRTIO_BLK_T_FLUSH, 0, 0, false), 0);
    assert_eq!(r.request(VIRTIO_BLK_T_IN, 1, 512, true), 0);
}

#[test]
fn masked_vector_is_pending_and_delivered_on_unmask() {
    let mut r = Rig::new("mask", false);
    r.msix();
    let f = r.features();
    r.init(f);
    r.w(MSIX_TABLE + 16 + 12, 4, 1); // mask vector 1
    r.request(VIRTIO_BLK_T_IN, 0, 512, true);
    assert!(r.msis().is_empty());
    assert_eq!(r.r(MSIX_PBA, 8), 0b10, "pending bit of vector 1");
    r.w(MSIX_TABLE + 16 + 12, 4, 0);
    assert_eq!(r.msis(), vec![0x41]);
    // An out-of-range vector reads back as NO_VECTOR.
    r.w(0x14, 1, 0);
    r.w(0x1a, 2, 7);
    assert_eq!(r.r(0x1a, 2), 0xffff);
}

/// Each malformed chain or queue puts the device in NEEDS_RESET without touching memory
/// outside guest RAM; a reset and a new init make it work again.
#[test]
fn malformed_chains_stop_the_device_until_reset() {
    type Bad = fn(&mut Rig);
    // (name, what the failure says, the chain or queue)
    let cases: &[(&str, &str, Bad)] = &[
        ("loop", "does not end", |r| {
            r.header(VIRTIO_BLK_T_IN, 0);
            r.desc(0, HDR, 16, VRING_DESC_F_NEXT as u16, 1);
            r.desc(
                1,
                DATA,
                512,
                (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
                1,
            );
            r.submit(0);
        }),
        ("next past the table", "does not end", |r| {
            r.header(VIRTIO_BLK_T_IN, 0);
            r.desc(0, HDR, 16, VRING_DESC_F_NEXT as u16, 200);
            r.submit(0);
        }),
        ("head past the table", "does not end", |r| {
            r.submit(QSIZE + 3)
        }),
        ("out of RAM", "is not guest RAM", |r| {
            r.header(VIRTIO_BLK_T_IN, 0);
            r.desc(0, HDR, 16, VRING_DESC_F_NEXT as u16, 1);
            r.desc(
                1,
                RAM - 256,
                512,
                (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
                2,
            );
            r.desc(2, STATUS, 1, VRING_DESC_F_WRITE as u16, 0);
            r.submit(0);
        }),
        ("address wraps", "is not guest RAM", |r| {
            r.desc(0, u64::MAX - 8, 16, 0, 0);
            r.submit(0);
        }),
        ("zero length", "length 0", |r| {
            r.header(VIRTIO_BLK_T_IN, 0);
            r.desc(0, HDR, 16, VRING_DESC_F_NEXT as u16, 1);
            r.desc(
                1,
                DATA,
                0,
                (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
                2,
            );
            r.desc(2, STATUS, 1, VRING_DESC_F_WRITE as u16, 0);
            r.submit(0);
        }),
        ("oversized", "above the 1048576-byte segment limit", |r| {
            r.header(VIRTIO_BLK_T_IN, 0);
            r.desc(0, HDR, 16, VRING_DESC_F_NEXT as u16, 1);
            r.desc(
                1,
                0,
                SEGMENT_MAX + 512,
                (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
                2,
            );
            r.desc(2, STATUS, 1, VRING_DESC_F_WRITE as u16, 0);
            r.submit(0);
        }),
        (
            "readable after writable",
            "device-readable descriptor after",
            |r| {
                r.header(VIRTIO_BLK_T_OUT, 0);
                r.desc(
                    0,
                    STATUS,
                    1,
                    (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
                    1,
                );
                r.desc(1, HDR, 16, 0, 0);
                r.submit(0);
            },
        ),
        ("no status byte", "no device-writable status byte", |r| {
            r.header(VIRTIO_BLK_T_FLUSH, 0);
            r.desc(0, HDR, 16, 0, 0);
            r.submit(0);
        }),
        ("short header", "no 16-byte request header", |r| {
            r.header(VIRTIO_BLK_T_IN, 0);
            r.desc(0, HDR, 8, VRING_DESC_F_NEXT as u16, 1);
            r.desc(1, STATUS, 1, VRING_DESC_F_WRITE as u16, 0);
            r.submit(0);
        }),
        ("avail index jumps", "available ring", |r| {
            r.mem.write_obj(40u16, GuestAddress(AVAIL + 2)).unwrap();
            r.w(NOTIFY, 2, 0);
        }),
        ("rings outside RAM", "not a valid split virtqueue", |r| {
            r.w(0x14, 1, 0);
            let f = r.features();
            r.init(f);
            // init above is fine; now the driver re-inits with a used ring past RAM.
            r.w(0x14, 1, 0);
            r.w(0x14, 1, 3);
            r.setup_queue(QSIZE, DESC, AVAIL, RAM - 8);
        }),
        (
            "queue size not a power of two",
            "not a valid split virtqueue",
            |r| {
                r.w(0x14, 1, 0);
                r.w(0x14, 1, 3);
                r.setup_queue(12, DESC, AVAIL, USED);
            },
        ),
        ("misaligned ring", "not a valid split virtqueue", |r| {
            r.w(0x14, 1, 0);
            r.w(0x14, 1, 3);
            r.setup_queue(QSIZE, DESC + 4, AVAIL, USED);
        }),
    ];
    for (name, says, bad) in cases {
        let mut r = Rig::new(&format!("bad-{}", name.replace(' ', "-")), false);
        r.msix();
        let f = r.features();
        r.init(f);
        let disk_before = std::fs::read(&r.path).unwrap();
        bad(&mut r);
        assert!(r.needs_reset(), "{name}: device must need a reset");
        let why = r.t.failure().map(|f| f.to_string()).unwrap_or_default();
        assert!(why.contains(says), "{name}: {why}");
        assert_eq!(r.used_idx(), 0, "{name}: nothing completed");
        assert_eq!(
            std::fs::read(&r.path).unwrap(),
            disk_before,
            "{name}: disk untouched"
        );
        // A config-change interrupt when MSI-X is set up (vector 0 = data 0x40).
        if r.r(0x10, 2) == 0 && *name != "rings outside RAM" {
            assert!(r.msis().contains(&0x40), "{name}: config interrupt");
        }
        // Stopped: a good request now is not served.
        r.request(VIRTIO_BLK_T_IN, 0, 512, true);
        assert_eq!(r.used_idx(), 0, "{name}: stopped until reset");
        // Reset and re-init: works again.
        for i in 0..QSIZE {
            r.desc(i, 0, 0, 0, 0);
        }
        r.mem.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
        r.mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
        r.avail_idx = 0;
        r.w(0x14, 1, 0);
        assert!(!r.needs_reset(), "{name}: reset clears NEEDS_RESET");
        let s = r.init(f);
        assert_ne!(u32::from(s) & VIRTIO_CONFIG_S_DRIVER_OK, 0, "{name}");
        assert_eq!(r.request(VIRTIO_BLK_T_IN, 2, 512, true), 0, "{name}");
        assert_eq!(r.used_idx(), 1, "{name}: served after reset");
    }
}

#[test]
fn disk_specs_parse_and_check() {
    let d = DiskSpec::parse("/x/root.img,ro,serial=hpmmap-root").unwrap();
    assert!(d.ro);
    assert_eq!(d.serial, "hpmmap-root");
    assert_eq!(DiskSpec::parse("/x/data.img").unwrap().serial, "data.img");
    for bad in [
        "",
        "/x,rw",
        "/x,serial=",
        "/x,serial=has space",
        "/x,serial=abcdefghijklmnopqrstu",
    ] {
        let e = DiskSpec::parse(bad).unwrap_err().to_string();
        assert!(e.starts_with("--disk "), "{e}");
    }
    let missing = DiskSpec::parse("/nonexistent/disk.img").unwrap();
    assert!(missing.check().unwrap_err().why.contains("cannot open"));
    let dir = DiskSpec::parse("/tmp").unwrap();
    assert_eq!(dir.check().unwrap_err().why, "is a directory");
    let odd = disk("odd", 1000, |_| 0);
    let e = DiskSpec::parse(odd.to_str().unwrap())
        .unwrap()
        .check()
        .unwrap_err();
    assert!(e.why.contains("512-byte sectors"), "{e}");
    std::fs::remove_file(odd).unwrap();
}

/// A tar stream as a hostile guest could write it: good files and directories come back,
/// everything else is skipped.
#[test]
fn output_unpack_takes_files_and_directories_only() {
    use super::output::OutputDisk;
    let base = std::env::temp_dir().join(format!("hpmmap-out-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir(&base).unwrap();
    let dir = base.join("out");
    let mut out = OutputDisk::create(&dir, 1 << 20, None).unwrap();
    assert!(dir.is_dir());
    // Only DIR beside the (unlinked) backing file.
    assert_eq!(std::fs::read_dir(&base).unwrap().count(), 1);
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &[u8], ty: tar::EntryType, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        if ty == tar::EntryType::Symlink {
            h.set_link_name("/etc/passwd").unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add(b"./", tar::EntryType::Directory, 0o755, b"");
    add(b"./res/", tar::EntryType::Directory, 0o777, b"");
    add(b"./res/a.txt", tar::EntryType::Regular, 0o4777, b"hello");
    add(b"./b.bin", tar::EntryType::Regular, 0o644, &[7u8; 3000]);
    add(b"deep/x/y", tar::EntryType::Regular, 0o600, b"z");
    add(b"../escape", tar::EntryType::Regular, 0o644, b"no");
    add(b"/abs", tar::EntryType::Regular, 0o644, b"no");
    add(b"link", tar::EntryType::Symlink, 0o777, b"");
    add(b"dev", tar::EntryType::Char, 0o666, b"");
    add(b"res/../../up", tar::EntryType::Regular, 0o644, b"no");
    let stream = b.into_inner().unwrap();
    out.backing().unwrap().write_all_at(&stream, 0).unwrap();
    let rep = out.unpack();
    assert_eq!((rep.files, rep.bytes, rep.skipped), (3, 3006, 5), "{rep:?}");
    assert_eq!(rep.error, None);
    assert_eq!(std::fs::read(dir.join("res/a.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read(dir.join("b.bin")).unwrap().len(), 3000);
    assert_eq!(std::fs::read(dir.join("deep/x/y")).unwrap(), b"z");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("res/a.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid and world write masked");
    assert!(!base.join("escape").exists() && !base.join("up").exists());
    assert!(!dir.join("link").exists() && !dir.join("dev").exists());
    drop(out);
    // DIR and its files stay; nothing else was left beside it.
    assert_eq!(std::fs::read_dir(&base).unwrap().count(), 1);
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn output_dir_checks_and_no_leftovers_on_an_unused_disk() {
    use super::output::{check, OutputDisk};
    let base = std::env::temp_dir().join(format!("hpmmap-out-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir(&base).unwrap();
    std::fs::write(base.join("file"), b"x").unwrap();
    assert!(check(&base, 1 << 20)
        .unwrap_err()
        .to_string()
        .contains("not empty"));
    assert!(check(&base.join("file"), 1 << 20).is_err());
    assert!(check(&base.join("new"), 1000).is_err());
    assert!(check(Path::new("/nonexistent/out"), 1 << 20).is_err());
    // A disk made and dropped without unpacking (the run failed) removes the DIR it made.
    drop(OutputDisk::create(&base.join("new"), 1 << 20, None).unwrap());
    assert_eq!(std::fs::read_dir(&base).unwrap().count(), 1);
    std::fs::remove_dir_all(&base).unwrap();
}

/// 200 000 random guest actions (register writes and reads of every width, ring and
/// descriptor memory filled with noise, kicks, resets): nothing panics, the disk never grows,
/// and the device still works after a reset.
#[test]
fn random_guest_programming_never_panics() {
    let mut r = Rig::new("fuzz", false);
    r.msix();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let size = std::fs::metadata(&r.path).unwrap().len();
    for step in 0..200_000u32 {
        let v = rnd();
        let len = [1usize, 2, 4, 8][(v & 3) as usize];
        match (v >> 2) % 8 {
            0 => r.w(rnd() % 0x40, len, rnd()),
            1 => {
                let _ = r.r(rnd() % BAR_SIZE, len);
            }
            2 => r.w(NOTIFY + (rnd() % 16), len, rnd() % 4),
            3 => r.w(MSIX_TABLE + rnd() % 0x40, len, rnd()),
            4 => {
                // Noise into the rings and the first descriptors.
                let at = [DESC, AVAIL, USED][(rnd() % 3) as usize] + rnd() % 0x100;
                let _ = r.mem.write_obj(rnd(), GuestAddress(at));
            }
            5 => {
                let _ =
                    r.t.config_write((rnd() % 0x100) as u16, len.min(4), rnd() as u32);
            }
            6 if step % 1000 == 0 => {
                let f = r.features();
                r.init(f);
            }
            _ => r.w(0x14, 1, rnd() & 0xff),
        }
    }
    assert_eq!(std::fs::metadata(&r.path).unwrap().len(), size);
    // Back to a sane state: decode on, MSI-X on, a clean queue, then a good request.
    r.t.config_write(0x10, 4, 0xC000_0000);
    r.t.config_write(0x04, 2, 0x6);
    for i in 0..QSIZE {
        r.desc(i, 0, 0, 0, 0);
    }
    r.mem.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
    r.mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
    r.avail_idx = 0;
    let f = r.features();
    r.init(f);
    assert_eq!(r.request(VIRTIO_BLK_T_IN, 1, 512, true), 0);
}
