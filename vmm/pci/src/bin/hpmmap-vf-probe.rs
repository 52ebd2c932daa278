//! `hpmmap-vf-probe`: VF passthrough on a real host without a guest. Claims a VF (as
//! `hpmmap-vmm --vf`), opens VFIO, DMA-maps a buffer, maps the BARs around the MSI-X
//! table and PBA, enables and disables MSI-X, then puts everything back. Needs a real
//! IOMMU and VF: the nested lab (vmm/vf/lab/vfio.sh) runs it.

use anyhow::{bail, Context, Result};
use clap::Parser;
use hpmmap_pci::config_space::ConfigIo;
use hpmmap_pci::msix::MsixCap;
use hpmmap_pci::vfio::{BarMapping, GuestRamRegion, KernelVfio, VfioDevice, VfioPassthrough};
use hpmmap_vf::args::{exit_code_of, parse_size, IbArgs, InputError};
use hpmmap_vf::ib::IbOptions;
use hpmmap_vf::{claim_vf_with, Sysfs, VfRequest};
use std::process::ExitCode;
use vmm_sys_util::eventfd::EventFd;

/// Claim a VF, open VFIO, DMA-map a buffer, wire MSI-X, map BARs, put it all back.
#[derive(Parser)]
#[command(name = "hpmmap-vf-probe")]
struct Cli {
    #[arg(long)]
    vf: String,
    /// Enable this many VFs if the PF has none.
    #[arg(long)]
    vf_create: Option<u32>,
    /// Buffer to DMA-map at guest-physical 0 (e.g. 64M).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    mem: u64,
    /// Make the device raise MSI-X vector 0 and wait for its eventfd (82576 VF /
    /// igbvf only: writes its EIMS and EICS registers).
    #[arg(long)]
    irq_test: bool,
    /// Hold everything for this many seconds before tearing down; SIGTERM or
    /// SIGINT meanwhile tears down through restore_all(), as the VMM does.
    #[arg(long)]
    hold: Option<u64>,
    #[command(flatten)]
    ib: IbArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = cli
        .ib
        .parse()
        .map_err(anyhow::Error::from)
        .and_then(|ib| probe(&cli.vf, cli.vf_create, cli.mem, cli.irq_test, cli.hold, &ib));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hpmmap-vf-probe: {e:#}");
            ExitCode::from(exit_code_of(&e))
        }
    }
}

/// Anonymous memory standing in for guest RAM.
struct Buffer {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Buffer {
    fn new(len: u64) -> Result<Self> {
        // SAFETY: fresh anonymous mapping, owned by the returned value.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("allocating the DMA buffer");
        }
        Ok(Buffer {
            ptr,
            len: len as usize,
        })
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: from mmap above.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// igbvf (82576 VF) registers in BAR0.
const IGBVF_EICS: usize = 0x1520;
const IGBVF_EIMS: usize = 0x1524;

/// Has an 82576 VF raise MSI-X vector 0 and waits for the vector's eventfd: proof that
/// an interrupt from the device reaches user space through the IOMMU's interrupt
/// remapping and VFIO.
fn igbvf_irq_test(dev: &VfioDevice, bar0: &BarMapping, efd: &EventFd) -> Result<u64> {
    // MSI-X messages are memory writes by the device: bus mastering must be on.
    let mut cmd = [0u8; 2];
    dev.read(0x04, &mut cmd);
    let c = u16::from_le_bytes(cmd) | 0x6;
    dev.write(0x04, &c.to_le_bytes());
    // SAFETY: BAR0 of an igbvf is 16 KiB and mapped whole; these are its 32-bit
    // interrupt mask-set and cause-set registers.
    unsafe {
        std::ptr::write_volatile(bar0.ptr.add(IGBVF_EIMS) as *mut u32, 0x7);
        std::ptr::write_volatile(bar0.ptr.add(IGBVF_EICS) as *mut u32, 0x1);
    }
    let mut ctl = [0u8; 2];
    dev.read(0x72, &mut ctl);
    dev.read(0x04, &mut cmd);
    // SAFETY: as above; EIMS reads back the mask.
    let eims = unsafe { std::ptr::read_volatile(bar0.ptr.add(IGBVF_EIMS) as *const u32) };
    println!(
        "      command {:#06x} (bus master on), MSI-X control {:#06x}, EIMS {eims:#x}; writing EICS bit 0",
        u16::from_le_bytes(cmd),
        u16::from_le_bytes(ctl)
    );
    for _ in 0..200 {
        if let Ok(v) = efd.read() {
            return Ok(v);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let irqs = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    for l in irqs.lines().filter(|l| l.contains("vfio")) {
        eprintln!(
            "      {}",
            l.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    bail!("MSI-X vector 0 did not fire within 2 s after writing EICS")
}

static SIGNALLED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: the teardown itself runs in normal context.
    SIGNALLED.store(sig, std::sync::atomic::Ordering::SeqCst);
}

fn catch_term_and_int() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs a handler that only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Waits up to `secs` for SIGTERM/SIGINT; returns the signal if one came.
fn hold_for(secs: u64) -> Option<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        let s = SIGNALLED.load(std::sync::atomic::Ordering::SeqCst);
        if s != 0 {
            return Some(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

fn probe(
    spec: &str,
    create: Option<u32>,
    mem: u64,
    irq_test: bool,
    hold: Option<u64>,
    ib: &IbOptions,
) -> Result<()> {
    if hold.is_some() {
        catch_term_and_int();
    }
    let sysfs = Sysfs::host();
    println!("[1/6] claiming --vf {spec}");
    let claim = claim_vf_with(
        &sysfs,
        &VfRequest {
            spec: spec.into(),
            create,
        },
        ib,
    )?;
    if let Some(g) = claim.guid() {
        println!(
            "      InfiniBand: node/port GUID {g}, policy Follow{} (job '{}')",
            claim
                .pkey()
                .map(|p| format!(", P_Key {p}"))
                .unwrap_or_default(),
            claim.job()
        );
    }
    println!(
        "      VF {} (PF {}), IOMMU group {}, was on {}; now on {:?}",
        claim.vf(),
        claim.pf(),
        claim.iommu_group(),
        claim.original_driver().unwrap_or("no driver"),
        sysfs.driver_of(claim.vf())?.unwrap_or_default()
    );
    let buf = Buffer::new(mem)?;
    println!(
        "[2/6] opening VFIO (container, group {}, device) and DMA-mapping {} MiB at GPA 0",
        claim.iommu_group(),
        mem >> 20
    );
    let ram = [GuestRamRegion {
        gpa: 0,
        hva: buf.ptr as u64,
        size: mem,
    }];
    let p = VfioPassthrough::open(
        &KernelVfio::new(sysfs.paths().sys.clone()),
        claim.iommu_group(),
        &claim.vf().to_string(),
        &ram,
    )?;
    println!(
        "      {} DMA mapping(s): {:x?}",
        p.device.dma_mappings().len(),
        p.device.dma_mappings()
    );
    println!(
        "[3/6] device: {} of BAR0-5 present, {} MSI-X vectors",
        (0..6).filter(|&i| p.device.region(i).is_some()).count(),
        p.device.msix_vectors()
    );
    let cfg = p.device.read_config_space()?;
    println!(
        "      vendor:device {:02x}{:02x}:{:02x}{:02x}",
        cfg[1], cfg[0], cfg[3], cfg[2]
    );
    let bars = p.device.bars(&cfg);
    for b in &bars {
        println!(
            "      BAR{} {:?}{} {:#x} bytes",
            b.index,
            b.kind,
            if b.prefetchable { " prefetchable" } else { "" },
            b.size
        );
    }
    let msix = MsixCap::parse(&cfg);
    println!("      MSI-X: {msix:x?}");
    println!("[4/6] mapping BARs except the MSI-X table/PBA pages");
    let mut maps = Vec::new();
    for b in &bars {
        for m in p.device.map_bar(b.index, msix.as_ref())? {
            // SAFETY: a live mapping of at least 4 bytes of device memory; a volatile
            // 32-bit read is what the guest driver would do.
            let first = unsafe { std::ptr::read_volatile(m.ptr as *const u32) };
            println!(
                "      BAR{} +{:#x}..+{:#x} mapped, first dword {first:#010x}",
                m.bar,
                m.bar_offset,
                m.bar_offset + m.len
            );
            maps.push(m);
        }
    }
    println!("[5/6] MSI-X: attaching one eventfd per vector, then detaching");
    let n = p.device.msix_vectors() as usize;
    let mut fds = Vec::new();
    for _ in 0..n {
        fds.push(EventFd::new(libc::EFD_NONBLOCK).context("eventfd")?);
    }
    if n > 0 {
        p.device.enable_msix(&fds.iter().collect::<Vec<_>>())?;
        println!("      {n} vectors enabled through VFIO_DEVICE_SET_IRQS");
        if irq_test {
            if cfg[0..4] != [0x86, 0x80, 0xca, 0x10] {
                bail!(InputError(
                    "--irq-test knows only the 82576 VF (8086:10ca, igbvf)".into()
                ));
            }
            let bar0 = maps
                .iter()
                .find(|m| m.bar == 0 && m.bar_offset == 0)
                .context("BAR0 is not mapped")?;
            let count = igbvf_irq_test(&p.device, bar0, &fds[0])?;
            println!("      device raised MSI-X vector 0: eventfd count {count}");
        }
        if let Some(secs) = hold {
            println!(
                "      holding {secs} s with VFIO live; SIGTERM/SIGINT tear down via restore_all()"
            );
            if let Some(sig) = hold_for(secs) {
                // The VMM's signal path: close VFIO first (vfio-pci's unbind waits for
                // the device fd), then put every claimed VF back.
                println!("      signal {sig}: closing VFIO, then restore_all()");
                let vf = claim.vf();
                drop(maps);
                drop(p);
                drop(buf);
                drop(fds);
                let errors = hpmmap_vf::restore_all();
                for e in &errors {
                    eprintln!("hpmmap-vf-probe: {e}");
                }
                println!(
                    "      VF {vf} is on {:?} after restore_all()",
                    sysfs.driver_of(vf)?
                );
                std::process::exit(128 + sig);
            }
        }
        p.device.disable_msix()?;
        println!("      MSI-X disabled");
    }
    drop(fds);
    drop(maps);
    println!("[6/6] closing VFIO and restoring the VF's driver");
    drop(p);
    drop(buf);
    let vf = claim.vf();
    let orig = claim.original_driver().map(str::to_string);
    claim.release()?;
    if !sysfs.pci_dev(vf).exists() {
        // We enabled the VFs (--vf-create), so release set sriov_numvfs back to 0.
        println!("      VF {vf} is gone: the VFs this probe enabled were disabled again");
    } else {
        let now = sysfs.driver_of(vf)?;
        println!("      VF {vf} is on {now:?} (was {orig:?})");
        if now != orig {
            bail!("VF {vf} is on {now:?}, not back on {orig:?}");
        }
    }
    println!("probe passed");
    Ok(())
}
