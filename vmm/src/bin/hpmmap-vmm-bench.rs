//! Benchmark harness for hpmmap-vmm (not a test): prefault rate of guest RAM against a plain
//! memset of the same mapping, the VMM's resident memory beyond guest RAM, and the time from
//! start to the first guest instruction. Every figure is printed with its platform.

use clap::Parser;
use hpmmap_vmm::memory::hugepages::{pool_counters, PageSize};
use hpmmap_vmm::memory::{GuestRam, RamOptions};
use hpmmap_vmm::platform::Platform;
use hpmmap_vmm::units::{format_size, parse_size, GIB};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "hpmmap-vmm-bench",
    about = "Benchmarks of hpmmap-vmm (prefault, RSS, start-up)"
)]
struct Args {
    /// Guest RAM for the prefault comparison (default: every free 1 GiB page, else 1G of 2M
    /// or small pages).
    #[arg(long, value_parser = |s: &str| parse_size(s).map_err(|e| e.to_string()))]
    size: Option<u64>,
    /// Start-up runs to take the median of.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Prefault / memset rounds to take the best of.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The hpmmap-vmm binary (default: beside this one).
    #[arg(long)]
    vmm: Option<PathBuf>,
}

/// mov dx,0x3f8; "ready\n" out byte by byte; cli; hlt; jmp back to cli.
fn ready_code() -> Vec<u8> {
    let mut c = vec![0x66, 0xBA, 0xF8, 0x03];
    for b in b"ready\n" {
        c.extend_from_slice(&[0xB0, *b, 0xEE]);
    }
    c.extend_from_slice(&[0xFA, 0xF4, 0xEB, 0xFC]);
    c
}

/// mov rax,0xFEB00034 (PV EXIT); mov dword [rax],0; cli; hlt; jmp back to cli.
fn exit0_code() -> Vec<u8> {
    let mut c = vec![0x48, 0xB8];
    c.extend_from_slice(&0xFEB0_0034u64.to_le_bytes());
    c.extend_from_slice(&[0xC7, 0x00, 0, 0, 0, 0]);
    c.extend_from_slice(&[0xFA, 0xF4, 0xEB, 0xFC]);
    c
}

/// ELF64 executable with one PT_LOAD at 2 MiB holding `code`, entered at its start.
fn elf(code: &[u8]) -> Vec<u8> {
    let base = 0x20_0000u64;
    let mut f = b"\x7fELF\x02\x01\x01\x00\0\0\0\0\0\0\0\0".to_vec();
    for v in [2u16, 0x3E] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&1u32.to_le_bytes());
    for v in [base, 64, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&7u32.to_le_bytes());
    for v in [
        120u64,
        base,
        base,
        code.len() as u64,
        code.len() as u64,
        4096,
    ] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(code);
    f
}

fn gib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / GIB as f64 / d.as_secs_f64().max(1e-9)
}

fn prefault_vs_memset(size: u64, page: PageSize, rounds: usize) -> Result<(), String> {
    let opts = RamOptions {
        bytes: size,
        page_size: page,
        backend: hpmmap_vmm::memory::RamBackend::Memfd,
        numa_node: None,
        workers: 0,
        progress: false,
        parts: vec![],
    };
    // The first use of memory can be slower than any later one where the host itself is
    // virtualized and reclaims free guest pages (free page reporting): shown separately.
    let (ram, first) = GuestRam::create(&opts).map_err(|e| e.to_string())?;
    let page_seen = ram.kernel_page_size().ok().flatten().map(format_size);
    let (mut best_prefault, mut best_memset) = (0.0f64, 0.0f64);
    let mut workers = first.workers;
    for _ in 0..rounds {
        ram.punch_hole(0, size).map_err(|e| e.to_string())?;
        let st = ram.prefault(&opts).map_err(|e| e.to_string())?;
        best_prefault = best_prefault.max(st.gib_per_s);
        workers = st.workers;
        // The same mapping with its pages given back: a plain memset faults every page in.
        ram.punch_hole(0, size).map_err(|e| e.to_string())?;
        let t = Instant::now();
        // SAFETY: writing our own guest RAM mapping, nobody else uses it.
        unsafe { std::ptr::write_bytes(ram.as_ptr(), 0xA5, size as usize) };
        best_memset = best_memset.max(gib_s(size, t.elapsed()));
    }
    // And once more on resident pages: the memory bandwidth bar.
    let t = Instant::now();
    // SAFETY: as above.
    unsafe { std::ptr::write_bytes(ram.as_ptr(), 0x5A, size as usize) };
    let resident = gib_s(size, t.elapsed());
    println!(
        "prefault  {} on {} pages (smaps: {}), best of {rounds}: MADV_POPULATE_WRITE x{workers} workers {:.2} GiB/s | first-touch memset x1 {:.2} GiB/s | memset of resident pages {:.2} GiB/s | first use after reservation {:.2} GiB/s",
        format_size(size),
        page.name(),
        page_seen.unwrap_or_else(|| "mixed".into()),
        best_prefault,
        best_memset,
        resident,
        first.gib_per_s,
    );
    Ok(())
}

/// Rss of the process outside the guest RAM mapping, from /proc/PID/smaps (kB).
fn rss_beyond_guest_ram(pid: u32) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut other, mut guest) = (0u64, 0u64);
    let mut in_guest = false;
    for l in smaps.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_guest = l.contains("hpmmap-guest-ram");
        } else if let Some(v) = l.strip_prefix("Rss:") {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
            if in_guest {
                guest += kb;
            } else {
                other += kb;
            }
        }
    }
    Some((other, guest))
}

fn vmm_rss(vmm: &Path, kernel: &Path, mem: &str, page: &str) -> Result<(), String> {
    let mut child = Command::new(vmm)
        .args(["--mem", mem, "--hugepages", page, "--kernel"])
        .arg(kernel)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).map_err(|e| e.to_string())?;
    let r = rss_beyond_guest_ram(child.id());
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        .unwrap_or_default();
    let (other, guest) = r.ok_or("smaps unreadable")?;
    println!(
        "rss       --mem {mem} --hugepages {page}: VMM resident beyond guest RAM {:.2} MiB (guest RAM counted in Rss: {:.0} MiB; VmHWM {hwm})",
        other as f64 / 1024.0,
        guest as f64 / 1024.0
    );
    Ok(())
}

fn startup(vmm: &Path, kernel: &Path, mem: &str, page: &str, runs: usize) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("hpmmap-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let rep = dir.join("r.json");
    let mut first = Vec::new();
    let mut wall = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let st = Command::new(vmm)
            .args(["--mem", mem, "--hugepages", page, "--report"])
            .arg(&rep)
            .arg("--kernel")
            .arg(kernel)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        if st.code() != Some(0) {
            return Err(format!("hpmmap-vmm exited with {st}"));
        }
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&rep).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        first.push(
            j["start_to_first_instruction_ms"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "startup   --mem {mem} --hugepages {page}: start to first guest instruction median {:.1} ms (min {:.1}, max {:.1}) over {runs} runs; whole run (exec to exit) median {:.1} ms",
        median(&mut first.clone()),
        first.iter().cloned().fold(f64::INFINITY, f64::min),
        first.iter().cloned().fold(0.0, f64::max),
        median(&mut wall),
    );
    Ok(())
}

fn main() {
    let a = Args::parse();
    let platform = Platform::detect();
    println!("hpmmap-vmm-bench — platform: {}", platform.describe());
    println!(
        "host: {} CPUs available, kernel {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let free_1g = pool_counters(Path::new("/sys"), PageSize::Huge1G, None)
        .map(|c| c.available())
        .unwrap_or(0);
    let vmm = a.vmm.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("hpmmap-vmm")))
            .unwrap_or_else(|| PathBuf::from("hpmmap-vmm"))
    });
    let mut failed = false;
    let mut report = |what: &str, r: Result<(), String>| {
        if let Err(e) = r {
            println!("{what}: not measured: {e}");
            failed = true;
        }
    };

    // Prefault against memset, on the largest page size the host can give now.
    let (size, page) = match (a.size, free_1g) {
        (Some(s), _) if free_1g * GIB >= s && s % GIB == 0 => (s, PageSize::Huge1G),
        (Some(s), _) => (s, PageSize::Small),
        (None, n) if n > 0 => (n * GIB, PageSize::Huge1G),
        (None, _) => {
            println!("note: no free 1 GiB pages (reserve with `hpmmap-offline reserve --size NG`); measuring small pages");
            (GIB, PageSize::Small)
        }
    };
    report("prefault", prefault_vs_memset(size, page, a.rounds));
    if page == PageSize::Huge1G {
        report(
            "prefault",
            prefault_vs_memset(size, PageSize::Small, a.rounds),
        );
    }

    let dir = std::env::temp_dir().join(format!("hpmmap-bench-k-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let ready = dir.join("ready.elf");
    let exit0 = dir.join("exit0.elf");
    let _ = std::fs::write(&ready, elf(&ready_code()));
    let _ = std::fs::write(&exit0, elf(&exit0_code()));
    report("rss", vmm_rss(&vmm, &ready, "64M", "none"));
    if free_1g >= 1 {
        report("rss", vmm_rss(&vmm, &ready, "1G", "1G"));
    }
    report("startup", startup(&vmm, &exit0, "64M", "none", a.runs));
    if free_1g >= 1 {
        report("startup", startup(&vmm, &exit0, "1G", "1G", a.runs));
    }
    let _ = std::fs::remove_dir_all(&dir);
    if failed {
        std::process::exit(1);
    }
}
