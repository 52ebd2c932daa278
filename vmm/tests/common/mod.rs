//! Helpers for the host-KVM tests: payloads assembled here (iced-x86) and wrapped in tiny ELF64
//! files, running the real `hpmmap-vmm` binary with a timeout, and reserving 1 GiB pages.
#![allow(dead_code)]

pub mod lab;

pub use hpmmap_testkit::Tier;
use hpmmap_vmm::devices::pv;
use iced_x86::code_asm::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub const PAYLOAD_BASE: u64 = 0x20_0000;
// The PV device's page and registers, from the VMM's own definitions (which a unit test
// holds to guest-kmod/module/hpmmap_pv.h).
pub const PV: u64 = hpmmap_vmm::memory::layout::PV_MMIO_BASE;
pub const PV_STATUS: u64 = PV + pv::reg::STATUS;
pub const PV_ARG_ADDR: u64 = PV + pv::reg::ARG_ADDR;
pub const PV_ARG_LEN: u64 = PV + pv::reg::ARG_LEN;
pub const PV_COMMAND: u64 = PV + pv::reg::COMMAND;
pub const PV_EXIT: u64 = PV + pv::reg::EXIT;
pub const COM1: u32 = 0x3F8;
pub const GIB: u64 = 1 << 30;

pub fn vmm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hpmmap-vmm")
}

/// True when /dev/kvm can be used; otherwise a kvm-tier skip (a failure where CI requires
/// the tier).
pub fn kvm_or_skip(test: &str) -> bool {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm unusable ({e})"));
    hpmmap_testkit::enter(Tier::Kvm, test, usable)
}

/// True when /dev/kvm can be used and the test runs as root (`why` says what needs root);
/// otherwise a kvm- or root-tier skip.
pub fn root_kvm_or_skip(test: &str, why: &str) -> bool {
    if !kvm_or_skip(test) {
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        hpmmap_testkit::skip(Tier::Root, test, why);
        return false;
    }
    true
}

pub fn is_kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

pub struct Segment {
    pub addr: u64,
    pub bytes: Vec<u8>,
}

/// A minimal ELF64 executable: one PT_LOAD per segment, optional notes (name, type, desc).
pub fn elf64(entry: u64, segments: &[Segment], notes: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
    let nphdr = segments.len() + usize::from(!notes.is_empty());
    let mut data_off = 64 + 56 * nphdr;
    let mut phdrs = Vec::new();
    let mut body = Vec::new();
    let phdr = |kind: u32, off: u64, addr: u64, size: u64| {
        let mut p = Vec::with_capacity(56);
        p.extend_from_slice(&kind.to_le_bytes());
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(&off.to_le_bytes());
        p.extend_from_slice(&addr.to_le_bytes());
        p.extend_from_slice(&addr.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        p.extend_from_slice(&size.to_le_bytes());
        p.extend_from_slice(&4u64.to_le_bytes());
        p
    };
    for s in segments {
        phdrs.extend(phdr(1, data_off as u64, s.addr, s.bytes.len() as u64));
        body.extend_from_slice(&s.bytes);
        data_off += s.bytes.len();
    }
    if !notes.is_empty() {
        while !data_off.is_multiple_of(4) {
            body.push(0);
            data_off += 1;
        }
        let mut n = Vec::new();
        for (name, kind, desc) in notes {
            n.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
            n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            n.extend_from_slice(&kind.to_le_bytes());
            n.extend_from_slice(name.as_bytes());
            n.push(0);
            while n.len() % 4 != 0 {
                n.push(0);
            }
            n.extend_from_slice(desc);
            while n.len() % 4 != 0 {
                n.push(0);
            }
        }
        phdrs.extend(phdr(4, data_off as u64, 0, n.len() as u64));
        body.extend_from_slice(&n);
    }
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    f.extend_from_slice(&[0u8; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3Eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&entry.to_le_bytes());
    f.extend_from_slice(&64u64.to_le_bytes()); // program headers right after
    f.extend_from_slice(&0u64.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&64u16.to_le_bytes());
    f.extend_from_slice(&56u16.to_le_bytes());
    f.extend_from_slice(&(nphdr as u16).to_le_bytes());
    f.extend_from_slice(&64u16.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&phdrs);
    f.extend_from_slice(&body);
    f
}

/// A 64-bit payload at PAYLOAD_BASE (entered by the 64-bit boot protocol).
pub fn asm64(build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    build(&mut a).unwrap();
    a.assemble(PAYLOAD_BASE).unwrap()
}

/// Prints `text` on COM1.
pub fn print(a: &mut CodeAssembler, text: &str) -> Result<(), IcedError> {
    a.mov(edx, COM1)?;
    for b in text.bytes() {
        a.mov(al, b as u32)?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// Writes the job's exit status to the PV device, then waits (the VMM stops the VM).
pub fn pv_exit(a: &mut CodeAssembler, status: u32) -> Result<(), IcedError> {
    a.mov(rax, PV_EXIT)?;
    a.mov(dword_ptr(rax), status)?;
    halt_forever(a)
}

pub fn halt_forever(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut l = a.create_label();
    a.set_label(&mut l)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(l)
}

/// Issues a PV command with [addr, +len) as its argument.
pub fn pv_command(a: &mut CodeAssembler, cmd: u32, addr: u64, len: u64) -> Result<(), IcedError> {
    a.mov(rax, PV_ARG_ADDR)?;
    a.mov(rbx, addr)?;
    a.mov(qword_ptr(rax), rbx)?;
    a.mov(rax, PV_ARG_LEN)?;
    a.mov(rbx, len)?;
    a.mov(qword_ptr(rax), rbx)?;
    a.mov(rax, PV_COMMAND)?;
    a.mov(dword_ptr(rax), cmd)
}

/// Stores `text` byte by byte at guest-physical `addr` (identity-mapped below 4 GiB).
pub fn store_text(a: &mut CodeAssembler, addr: u64, text: &str) -> Result<(), IcedError> {
    a.mov(rdi, addr)?;
    for (i, b) in text.bytes().enumerate() {
        a.mov(byte_ptr(rdi + i as i32), b as u32)?;
    }
    Ok(())
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("hpmmap-vmm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
    pub fn write(&self, f: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(f);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs hpmmap-vmm with `args`, killing it after `timeout`.
pub fn run_vmm(args: &[&str], timeout: Duration) -> Run {
    run_cmd(Command::new(vmm_bin()).args(args), timeout)
}

pub fn run_cmd(cmd: &mut Command, timeout: Duration) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        elapsed: start.elapsed(),
    }
}

const HUGE_1G: &str = "/sys/kernel/mm/hugepages/hugepages-1048576kB";
const HUGE_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
pub const HUGETLB_LOCK: &str = "/tmp/hpmmap-hugetlb.lock";

fn read_num(p: &str) -> u64 {
    std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
}

pub fn free_1g_pages() -> u64 {
    free_pages(HUGE_1G)
}

fn free_pages(dir: &str) -> u64 {
    read_num(&format!("{dir}/free_hugepages"))
        .saturating_sub(read_num(&format!("{dir}/resv_hugepages")))
}

/// Holds the shared hugetlb lock and `n` available 1 GiB pages; gives back what it added.
pub struct HugePages {
    _lock: std::fs::File,
    dir: &'static str,
    added: u64,
}

impl HugePages {
    /// `None` (after printing SKIP) where the host cannot provide the pages.
    pub fn reserve(test: &str, n: u64) -> Option<HugePages> {
        Self::reserve_in(test, HUGE_1G, n)
    }

    /// `n` available 2 MiB pages.
    pub fn reserve_2m(test: &str, n: u64) -> Option<HugePages> {
        Self::reserve_in(test, HUGE_2M, n)
    }

    fn reserve_in(test: &str, dir: &'static str, n: u64) -> Option<HugePages> {
        use std::os::fd::AsRawFd;
        if !Path::new(dir).exists() {
            hpmmap_testkit::skip(Tier::Hugetlb, test, format!("no {dir} on this host"));
            return None;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(HUGETLB_LOCK)
            .unwrap();
        // SAFETY: flock on a descriptor we own; released when the file closes.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let avail = free_pages(dir);
        let mut hp = HugePages {
            _lock: lock,
            dir,
            added: 0,
        };
        if avail < n {
            let want = n - avail;
            let before = read_num(&format!("{dir}/nr_hugepages"));
            let _ = std::fs::write(format!("{dir}/nr_hugepages"), (before + want).to_string());
            hp.added = read_num(&format!("{dir}/nr_hugepages")).saturating_sub(before);
        }
        if free_pages(dir) < n {
            let have = free_pages(dir);
            hpmmap_testkit::skip(
                Tier::Hugetlb,
                test,
                format!("could not reserve {n} free pages in {dir} (have {have})"),
            );
            return None;
        }
        hpmmap_testkit::ran(Tier::Hugetlb, test);
        Some(hp)
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if self.added > 0 {
            let dir = self.dir;
            let now = read_num(&format!("{dir}/nr_hugepages"));
            let _ = std::fs::write(
                format!("{dir}/nr_hugepages"),
                now.saturating_sub(self.added).to_string(),
            );
        }
    }
}

pub fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Starts hpmmap-vmm with a payload that prints "ready" and halts, reads the guest RAM
/// mapping's smaps entry from the running process, kills it. Returns (start, end,
/// KernelPageSize text, VmFlags).
pub fn running_guest_ram_smaps(args: &[&str]) -> (u64, u64, String, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(vmm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(line, "ready\n", "guest did not start");
    let smaps = smaps.unwrap();
    let mut lines = smaps.lines();
    while let Some(l) = lines.next() {
        if !l.contains("/memfd:hpmmap-guest-ram") {
            continue;
        }
        let range = l.split_whitespace().next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut kps = String::new();
        for l in lines.by_ref() {
            if let Some(v) = l.strip_prefix("KernelPageSize:") {
                kps = v.trim().to_string();
            }
            if let Some(v) = l.strip_prefix("VmFlags:") {
                let flags = v.split_whitespace().map(String::from).collect();
                return (a, b, kps, flags);
            }
        }
    }
    panic!("no guest RAM mapping in smaps");
}

pub fn ready_payload(dir: &TempDir) -> String {
    let code = asm64(|a| {
        print(a, "ready\n")?;
        halt_forever(a)
    });
    let elf = elf64(
        PAYLOAD_BASE,
        &[Segment {
            addr: PAYLOAD_BASE,
            bytes: code,
        }],
        &[],
    );
    dir.write("ready.elf", &elf).display().to_string()
}
