//! virtio-blk on the host's KVM (tier 2): a payload assembled here drives two disks through
//! the PCI bus as a driver would (conf1 decode enable, common configuration, one split
//! virtqueue, notify) under the default `--seccomp kill`; and bad `--disk`/`--output`
//! input is one line, exit 2, nothing left.

mod common;

use common::*;
use iced_x86::code_asm::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
/// BAR0 of the first and second virtio functions (00:01.0, 00:02.0): the firmware places
/// 32 KiB BARs from the start of the 32-bit window.
const BAR_A: u64 = 0xC000_0000;
const BAR_B: u64 = 0xC000_8000;
const BAR_C: u64 = 0xC001_0000;
/// Where the payload's second segment (a ustar stream for the output disk) lies.
const TAR_AT: u64 = 0x50_0000;
const OUT: u64 = 0x30_0000;
const HDRS: u64 = 0x41_0000;
const STATUS: u64 = 0x41_0100;
const WBUF: u64 = 0x42_0000;
const SERIAL_A: &str = "serial-0123456789abc";
const WRITTEN: &str = "written by the guest through virtio-blk";

fn conf1_enable(a: &mut CodeAssembler, slot: u32) -> Result<(), IcedError> {
    a.mov(eax, 0x8000_0004 | (slot << 11))?;
    a.mov(edx, 0xCF8u32)?;
    a.out(dx, eax)?;
    a.mov(edx, 0xCFCu32)?;
    a.mov(eax, 6u32)?; // memory decode, bus master
    a.out(dx, eax)
}

/// The driver's init sequence with queue 0 of 16 at `rings` (desc, +0x1000 avail, +0x2000 used).
fn init(a: &mut CodeAssembler, bar: u64, rings: u64) -> Result<(), IcedError> {
    a.mov(rdi, bar)?;
    for s in [0u32, 1, 3] {
        a.mov(byte_ptr(rdi + 0x14), s)?;
    }
    a.mov(dword_ptr(rdi + 0x08), 1u32)?; // driver_feature_select 1
    a.mov(dword_ptr(rdi + 0x0c), 1u32)?; // VIRTIO_F_VERSION_1 (bit 32)
    a.mov(byte_ptr(rdi + 0x14), 0xbu32)?;
    a.mov(word_ptr(rdi + 0x16), 0u32)?;
    a.mov(word_ptr(rdi + 0x18), 16u32)?;
    a.mov(dword_ptr(rdi + 0x20), rings as u32)?;
    a.mov(dword_ptr(rdi + 0x28), (rings + 0x1000) as u32)?;
    a.mov(dword_ptr(rdi + 0x30), (rings + 0x2000) as u32)?;
    a.mov(word_ptr(rdi + 0x1c), 1u32)?;
    a.mov(byte_ptr(rdi + 0x14), 0xfu32)
}

/// header -> data -> status as descriptors 3n..3n+2, made available as the n-th chain,
/// then the queue is kicked (served before the write returns).
#[allow(clippy::too_many_arguments)]
fn request(
    a: &mut CodeAssembler,
    bar: u64,
    rings: u64,
    n: u32,
    ty: u32,
    sector: u64,
    data: Option<(u64, u32, bool)>,
    status: u64,
) -> Result<(), IcedError> {
    let hdr = HDRS + 0x20 * u64::from(n) + (rings & 0xf000);
    a.mov(rdi, hdr)?;
    a.mov(dword_ptr(rdi), ty)?;
    a.mov(rax, sector)?;
    a.mov(qword_ptr(rdi + 8), rax)?;
    let mut descs = vec![(hdr, 16u32, false)];
    if let Some(d) = data {
        descs.push(d);
    }
    descs.push((status, 1, true));
    let first = 3 * n;
    for (i, (addr, len, write)) in descs.iter().enumerate() {
        let last = i + 1 == descs.len();
        let flags = u32::from(!last) | if *write { 2 } else { 0 };
        a.mov(rdi, rings + 16 * u64::from(first + i as u32))?;
        a.mov(rax, *addr)?;
        a.mov(qword_ptr(rdi), rax)?;
        a.mov(dword_ptr(rdi + 8), *len)?;
        a.mov(word_ptr(rdi + 12), flags)?;
        a.mov(word_ptr(rdi + 14), first + i as u32 + 1)?;
    }
    a.mov(rdi, rings + 0x1000)?;
    a.mov(word_ptr(rdi + 4 + 2 * n as i32), first)?;
    a.mov(word_ptr(rdi + 2), n + 1)?;
    a.mov(rdi, bar + 0x3000)?;
    a.mov(word_ptr(rdi), 0u32)
}

/// The output disk's tar stream as a guest's init would write it.
fn output_stream() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, ty: tar::EntryType, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_entry_type(ty);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add("./", tar::EntryType::Directory, b"");
    add("./result.txt", tar::EntryType::Regular, b"from the guest\n");
    add("./d/", tar::EntryType::Directory, b"");
    add("./d/x", tar::EntryType::Regular, b"x");
    b.into_inner().unwrap()
}

/// Both runs: plain, and jailed (root only) as uid 65534 with the disks opened before the
/// jail and the output unpacked through DIR's descriptor.
fn guest_drives_three_disks(jail: bool) {
    let dir = TempDir::new(if jail {
        "virtio-host-jail"
    } else {
        "virtio-host"
    });
    let stream = output_stream();
    let mut a_bytes = b"disk:".to_vec();
    a_bytes.resize(8 * 512, b'.');
    let disk_a = dir.write("a.img", &a_bytes);
    let disk_b = dir.write("b.img", &vec![0u8; 8 * 512]);
    let (ra, rb, rc) = (0x40_0000u64, 0x40_8000u64, 0x44_0000u64);
    let code = asm64(|a| {
        for slot in 1..=3 {
            conf1_enable(a, slot)?;
        }
        init(a, BAR_A, ra)?;
        init(a, BAR_B, rb)?;
        init(a, BAR_C, rc)?;
        store_text(a, WBUF, &format!("{WRITTEN:.<512}"))?;
        // A: read sector 0 to OUT; GET_ID over OUT+5; a write, refused (read-only).
        request(a, BAR_A, ra, 0, 0, 0, Some((OUT, 512, true)), STATUS)?;
        request(a, BAR_A, ra, 1, 8, 0, Some((OUT + 5, 20, true)), STATUS + 1)?;
        request(a, BAR_A, ra, 2, 1, 0, Some((WBUF, 512, false)), STATUS + 2)?;
        // B: write sector 1, flush.
        request(a, BAR_B, rb, 0, 1, 1, Some((WBUF, 512, false)), STATUS + 3)?;
        request(a, BAR_B, rb, 1, 4, 0, None, STATUS + 4)?;
        // C (--output): the tar stream at offset 0, as the guest's init writes it.
        request(
            a,
            BAR_C,
            rc,
            0,
            1,
            0,
            Some((TAR_AT, stream.len() as u32, false)),
            STATUS + 5,
        )?;
        // The five status bytes as digits after the serial.
        for i in 0..6 {
            a.mov(rsi, STATUS + i)?;
            a.mov(al, byte_ptr(rsi))?;
            a.add(al, b'0' as u32)?;
            a.mov(rdi, OUT + 25 + i)?;
            a.mov(byte_ptr(rdi), al)?;
        }
        pv_command(a, 2, OUT, 31)?;
        pv_exit(a, 0)
    });
    let k = dir.write(
        "virtio.elf",
        &elf64(
            PAYLOAD_BASE,
            &[
                Segment {
                    addr: PAYLOAD_BASE,
                    bytes: code,
                },
                Segment {
                    addr: TAR_AT,
                    bytes: stream.clone(),
                },
            ],
            &[],
        ),
    );
    let rep = dir.path("r.json");
    let out = dir.path("out");
    let a_arg = format!("{},ro,serial={SERIAL_A}", disk_a.display());
    let b_arg = format!("{},serial=scratch", disk_b.display());
    let jail_dir = dir.path("jail");
    let mut args = vec![
        "--mem",
        "64M",
        "--hugepages",
        "none",
        "--kernel",
        k.to_str().unwrap(),
        "--disk",
        &a_arg,
        "--disk",
        &b_arg,
        "--output",
        out.to_str().unwrap(),
        "--output-size",
        "1M",
        "--report",
        rep.to_str().unwrap(),
    ];
    if jail {
        args.extend(["--jail", jail_dir.to_str().unwrap()]);
        args.extend(["--uid", "65534", "--gid", "65534"]);
    }
    let r = run_vmm(&args, T);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let j = report(&rep);
    // read OK, GET_ID OK, write to the read-only disk IOERR (1), write OK, flush OK, the
    // output stream written OK.
    assert_eq!(j["result"], format!("disk:{SERIAL_A}001000"));
    let b = std::fs::read(&disk_b).unwrap();
    assert!(b[512..512 + WRITTEN.len()] == *WRITTEN.as_bytes());
    assert!(b[..512].iter().all(|&x| x == 0) && b[1024..].iter().all(|&x| x == 0));
    assert_eq!(
        std::fs::read(&disk_a).unwrap(),
        a_bytes,
        "read-only disk unchanged"
    );
    let disks = j["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 3, "{disks:?}");
    assert_eq!(disks[0]["serial"], SERIAL_A);
    assert_eq!(disks[0]["ro"], true);
    assert_eq!(disks[1]["bytes"], 4096);
    assert_eq!(disks[2]["serial"], "hpmmap-out");
    // What the guest wrote comes back, owned by the VMM's uid.
    assert_eq!(j["output"]["files"], 2, "{}", j["output"]);
    assert_eq!(j["output"]["bytes"], 16);
    assert_eq!(j["output"]["skipped"], 0);
    assert_eq!(
        std::fs::read_to_string(out.join("result.txt")).unwrap(),
        "from the guest\n"
    );
    assert_eq!(std::fs::read_to_string(out.join("d/x")).unwrap(), "x");
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(out.join("result.txt")).unwrap().uid();
    assert_eq!(uid, if jail { 65534 } else { 0 });
    if jail {
        assert!(!jail_dir.exists(), "the jail is removed at exit");
        assert_eq!(j["jail"]["uid"], 65534);
    }
    assert_eq!(j["unhandled_mmio"], 0);
    // Nothing beside DIR: the backing file was unlinked at creation.
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("hpmmap-out"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn guest_reads_writes_flushes_and_gets_ids_under_seccomp_kill() {
    if !kvm_or_skip("guest_reads_writes_flushes_and_gets_ids_under_seccomp_kill") {
        panic!("needs /dev/kvm");
    }
    guest_drives_three_disks(false);
}

#[test]
fn jailed_vmm_keeps_its_disks_and_unpacks_the_output() {
    let name = "jailed_vmm_keeps_its_disks_and_unpacks_the_output";
    if !root_kvm_or_skip(name, "--jail needs root") {
        return;
    }
    guest_drives_three_disks(true);
}

#[test]
fn bad_disk_and_output_input_is_one_line_exit_2_nothing_left() {
    let dir = TempDir::new("virtio-bad");
    let k = dir.write("k.elf", &[0u8; 64]).display().to_string();
    let ok = dir.write("ok.img", &[0u8; 1024]).display().to_string();
    let odd = dir.write("odd.img", &[0u8; 1000]).display().to_string();
    let full = dir.path("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    let new_out = dir.path("new-out");
    let missing = dir.path("missing.img").display().to_string();
    let d = dir.0.display().to_string();
    let dup1 = format!("{ok},serial=x");
    let reserved = format!("{ok},serial=hpmmap-out");
    let bad_opt = format!("{ok},rw");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--disk", &missing], "cannot open"),
        (vec!["--disk", &d], "is a directory"),
        (vec!["--disk", &odd], "512-byte sectors"),
        (vec!["--disk", &dup1, "--disk", &dup1], "used twice"),
        (vec!["--disk", &bad_opt], "unknown option 'rw'"),
        (
            vec!["--disk", &reserved, "--output", new_out.to_str().unwrap()],
            "used twice",
        ),
        (vec!["--output", full.to_str().unwrap()], "not empty"),
        (
            vec![
                "--output",
                new_out.to_str().unwrap(),
                "--output-size",
                "1000",
            ],
            "512-byte sectors",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["--mem", "64M", "--kernel", &k];
        args.extend(extra.iter());
        let r = run_vmm(&args, T);
        assert_eq!(r.code, Some(2), "{extra:?}: {}", r.stderr);
        let lines: Vec<_> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{extra:?}: {}", r.stderr);
        assert!(lines[0].contains(want), "{extra:?}: {}", lines[0]);
        assert!(!new_out.exists(), "{extra:?}: --output DIR left behind");
        assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1);
    }
    let left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, ["full", "k.elf", "odd.img", "ok.img"]);
}
