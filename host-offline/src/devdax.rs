//! Device-dax mode: for hosts whose job memory is set aside at boot (memmap=, EFI soft
//! reserved, pmem namespaces) and shows up on the dax bus. `reserve --devdax` prepares a
//! /dev/daxX.Y of the asked size with 1 GiB alignment (so a VMM can map it with 1 GiB pages);
//! `release --all` puts the device back as it was.
//!
//! The sysfs protocol followed here is the dax bus's (drivers/dax/bus.c): a device's `align`
//! and `size` can change only while no driver is bound and only in a dynamic region (one with
//! `dax_region/available_size`); a size must be a multiple of the align; binding goes through
//! `/sys/bus/dax/drivers/device_dax/bind`. Static regions (pmem namespaces) fix size and align
//! when the namespace is created.

use crate::blocks;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::hugetlb;
use crate::session::Session;
use crate::size::{human, GIB};
use crate::state::{BlockChange, DaxChange};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

pub const DEVICE_DAX: &str = "device_dax";
pub const KMEM: &str = "kmem";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaxDevice {
    pub name: String,
    #[serde(skip)]
    pub dir: PathBuf,
    #[serde(skip)]
    pub region: PathBuf,
    pub size: u64,
    pub align: Option<u64>,
    pub node: Option<i64>,
    pub driver: Option<String>,
    /// Start of the device's physical range (kmem memory blocks live there).
    pub resource: Option<u64>,
    /// Region can be carved (has available_size): size and align are writable.
    pub dynamic: bool,
    pub region_available: Option<u64>,
}

fn bus(host: &Host) -> PathBuf {
    host.sys("bus/dax")
}

fn read_opt_u64(host: &Host, p: &Path) -> Option<u64> {
    host.read_u64(p).ok()
}

pub fn read_device(host: &Host, name: &str) -> Result<DaxDevice> {
    let link = bus(host).join("devices").join(name);
    let dir = fs::canonicalize(&link).map_err(|source| Error::Read {
        path: link.clone(),
        source,
    })?;
    let region = dir
        .parent()
        .map(|p| p.join("dax_region"))
        .unwrap_or_default();
    let node = host
        .read(&dir.join("target_node"))
        .or_else(|_| host.read(&dir.join("numa_node")))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok());
    let driver = fs::read_link(dir.join("driver"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
    let region_available = read_opt_u64(host, &region.join("available_size"));
    let resource = host
        .read(&dir.join("resource"))
        .ok()
        .and_then(|r| u64::from_str_radix(r.trim().trim_start_matches("0x"), 16).ok());
    Ok(DaxDevice {
        resource,
        name: name.to_string(),
        size: host.read_u64(&dir.join("size"))?,
        align: read_opt_u64(host, &dir.join("align")),
        node,
        driver,
        dynamic: region_available.is_some(),
        region_available,
        region,
        dir,
    })
}

pub fn list(host: &Host) -> Vec<DaxDevice> {
    host.list(&bus(host).join("devices"))
        .iter()
        .filter_map(|n| read_device(host, n).ok())
        .collect()
}

#[derive(Debug, Clone)]
pub struct DevdaxOptions {
    pub size_gib: u64,
    pub node: Option<u32>,
    pub device: Option<String>,
    /// The job the device is for (`--job ID`): recorded in its share; devices held for
    /// other jobs are not taken.
    pub job: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DevdaxReport {
    pub device: String,
    pub path: String,
    pub size: u64,
    pub align: u64,
    pub node: Option<i64>,
    /// False when the device already was what was asked for.
    pub changed: bool,
}

/// Why `d` cannot serve `size` bytes, or None when it can (after reconfiguration).
fn unsuitable(d: &DaxDevice, size: u64) -> Option<String> {
    let ready = d.driver.as_deref() == Some(DEVICE_DAX) && d.align == Some(GIB) && d.size >= size;
    if ready {
        return None;
    }
    match d.driver.as_deref() {
        Some(KMEM) => {
            // System-ram mode: converted whole (its blocks go offline), never resized.
            if !d.dynamic && d.align != Some(GIB) {
                return Some(format!(
                    "in system-ram mode (kmem) in a static region with align {}; the align is \
                     fixed when the namespace is created",
                    d.align.map(human).unwrap_or_else(|| "unknown".into())
                ));
            }
            if d.size < size || !d.size.is_multiple_of(GIB) {
                return Some(format!(
                    "in system-ram mode (kmem) with {}, not a whole number of GiB of at least {}",
                    human(d.size),
                    human(size)
                ));
            }
            if d.resource.is_none() {
                return Some("in system-ram mode (kmem) without a resource attribute".into());
            }
            return None;
        }
        Some(DEVICE_DAX) if d.dynamic => {
            return Some(format!(
                "bound to device_dax with size {} and align {}; not 1 GiB-aligned of at least {} \
                 (in use?)",
                human(d.size),
                d.align.map(human).unwrap_or_else(|| "?".into()),
                human(size)
            ))
        }
        Some(other) if other != DEVICE_DAX => return Some(format!("bound to {other}")),
        _ => {}
    }
    if !d.dynamic {
        if d.align != Some(GIB) {
            return Some(format!(
                "static region (pmem namespace): align {} is fixed when the namespace is created \
                 (ndctl create-namespace -m devdax --align 1G)",
                d.align.map(human).unwrap_or_else(|| "unknown".into())
            ));
        }
        if d.size < size {
            return Some(format!("static region device of {} only", human(d.size)));
        }
        return None;
    }
    let reachable = d.size + d.region_available.unwrap_or(0);
    if reachable < size {
        return Some(format!("region has room for {} only", human(reachable)));
    }
    None
}

/// Processes mapping the device (a VMM using it): releasing would pull memory from under them.
pub fn users(host: &Host, device: &str) -> Vec<u32> {
    let needle = format!(" /dev/{device}");
    let mut out = Vec::new();
    for pid in host.list(host.proc_root()) {
        let Ok(n) = pid.parse::<u32>() else { continue };
        if let Ok(maps) = fs::read_to_string(host.proc_root().join(&pid).join("maps")) {
            if maps.lines().any(|l| l.ends_with(&needle)) {
                out.push(n);
            }
        }
    }
    out
}

pub fn reserve_devdax(
    host: &Host,
    state_path: &Path,
    opts: &DevdaxOptions,
) -> Result<DevdaxReport> {
    let r = reserve_devdax_inner(host, state_path, opts)?;
    if let Some(job) = &opts.job {
        // The device is the job's from now on, prepared by this run or usable as it was.
        let mut session = Session::open(host, state_path, true)?.expect("created on demand");
        let boot = crate::jobs::boot_id(host);
        let e = session.state.jobs.entry(job.clone()).or_default();
        if e.created_unix == 0 {
            e.created_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            e.boot_id = boot;
        }
        if !e.devdax.contains(&r.device) {
            e.devdax.push(r.device.clone());
        }
        session.finish()?;
    }
    Ok(r)
}

fn reserve_devdax_inner(
    host: &Host,
    state_path: &Path,
    opts: &DevdaxOptions,
) -> Result<DevdaxReport> {
    if let Some(j) = &opts.job {
        crate::state::validate_job(j)?;
    }
    if opts.size_gib == 0 {
        return Err(Error::input("--size 0: nothing to reserve"));
    }
    let size = opts.size_gib * GIB;
    if !bus(host).join("devices").is_dir() {
        return Err(Error::input(format!(
            "--devdax: no dax bus ({} missing): the host needs memory set aside at boot \
             (memmap=, efi soft-reserved, pmem) and the dax drivers",
            bus(host).join("devices").display()
        )));
    }
    if let Some(n) = opts.node {
        hugetlb::check_node(host, n).or_else(|e| {
            // A dax region's target node may be memory-less to the kernel (that is the point).
            if hugetlb::nodes(host).contains(&n) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    }
    let all = list(host);
    if let Some(name) = &opts.device {
        if !all.iter().any(|d| &d.name == name) {
            return Err(Error::input(format!(
                "--dax-device {name}: no such device under {}",
                bus(host).join("devices").display()
            )));
        }
    }
    let eligible: Vec<&DaxDevice> = all
        .iter()
        .filter(|d| opts.device.as_ref().is_none_or(|n| &d.name == n))
        .filter(|d| opts.node.is_none_or(|n| d.node == Some(n as i64)))
        .collect();
    // Read-only look at the state first: bad input must not create the state directory.
    let st = crate::state::load(state_path)?;
    // Devices held for a job other than this run's are not this run's to take.
    let held_by_other = |name: &str| -> Option<String> {
        st.as_ref()?.jobs.iter().find_map(|(j, s)| {
            (Some(j) != opts.job.as_ref() && s.devdax.iter().any(|d| d == name)).then(|| j.clone())
        })
    };
    if let Some(name) = &opts.device {
        if let Some(j) = held_by_other(name) {
            return Err(Error::input(format!(
                "--dax-device {name}: held for job {j} (release --job {j} first)"
            )));
        }
    }
    let eligible: Vec<&DaxDevice> = eligible
        .into_iter()
        .filter(|d| held_by_other(&d.name).is_none())
        .collect();
    let mine = |name: &str| -> bool {
        match &opts.job {
            Some(j) => st
                .as_ref()
                .and_then(|s| s.jobs.get(j))
                .is_some_and(|s| s.devdax.iter().any(|d| d == name)),
            None => held_by_other(name).is_none(),
        }
    };
    if let Some(prev) = st
        .as_ref()
        .and_then(|s| s.devdax.iter().find(|c| mine(&c.device)).cloned())
    {
        let d = read_device(host, &prev.device)?;
        if prev.size == size && d.driver.as_deref() == Some(DEVICE_DAX) && d.align == Some(GIB) {
            return Ok(report(&d, false));
        }
        return Err(Error::input(format!(
            "--devdax: {} is already prepared with {}; `release --all` first",
            prev.device,
            human(prev.size)
        )));
    }
    let mut why = Vec::new();
    let mut chosen = None;
    // Prefer a device that already fits, then one that needs the fewest changes.
    let mut ordered = eligible.clone();
    ordered.sort_by_key(|d| {
        (
            !(d.driver.as_deref() == Some(DEVICE_DAX) && d.align == Some(GIB)),
            d.driver.as_deref() == Some(KMEM),
            d.size == 0,
            d.name.clone(),
        )
    });
    for d in ordered {
        match unsuitable(d, size) {
            None => {
                chosen = Some(d.clone());
                break;
            }
            Some(w) => why.push(format!("{}: {w}", d.name)),
        }
    }
    let Some(d) = chosen else {
        let scope = match (opts.node, &opts.device) {
            (_, Some(n)) => format!("device {n}"),
            (Some(n), None) => format!("node {n}"),
            (None, None) => "this host".into(),
        };
        return Err(Error::input(format!(
            "--devdax --size {}G: no dax device on {scope} can serve it{}",
            opts.size_gib,
            if why.is_empty() {
                String::from(" (none found)")
            } else {
                format!(": {}", why.join("; "))
            }
        )));
    };
    if d.driver.as_deref() == Some(DEVICE_DAX) && d.align == Some(GIB) && d.size >= size {
        return Ok(report(&d, false));
    }
    let mut session = Session::open(host, state_path, true)?.expect("created on demand");
    if let Some(c) = session.state.devdax.iter().find(|c| c.device == d.name) {
        return Err(Error::input(format!(
            "--devdax: another hpmmap-offline prepared {} meanwhile",
            c.device
        )));
    }
    let change = DaxChange {
        device: d.name.clone(),
        original_driver: d.driver.clone(),
        original_size: d.size,
        original_align: d.align.unwrap_or(0),
        size: if d.dynamic && d.driver.as_deref() != Some(KMEM) {
            size
        } else {
            d.size
        },
        align: GIB,
    };
    session.state.devdax.push(change.clone());
    if d.driver.as_deref() == Some(KMEM) {
        for b in kmem_blocks(host, &d)? {
            session.state.blocks.push(BlockChange {
                id: b.id,
                node: b.node,
                original_state: b.state.clone(),
                original_zone: b.zone().map(String::from),
                dax: Some(d.name.clone()),
                zone_moved: false,
            });
        }
    }
    session.save()?;
    host.progress(format!(
        "{}: align 1 GiB, size {}, bind {DEVICE_DAX}",
        d.name,
        human(change.size)
    ));
    match configure(host, &d, &change) {
        Ok(now) => {
            session.finish()?;
            Ok(report(&now, true))
        }
        Err(e) => {
            let mut undo = undo_change(host, &change);
            if undo.is_ok() {
                session.state.devdax.retain(|c| c.device != change.device);
                match session.restore_blocks(false) {
                    Ok(stuck) if !stuck.is_empty() => {
                        undo = Err(Error::StateIo {
                            path: state_path.into(),
                            why: format!("blocks not back online: {}", stuck.join("; ")),
                        })
                    }
                    Err(x) => undo = Err(x),
                    Ok(_) => {}
                }
            }
            let _ = session.finish();
            Err(match undo {
                Ok(()) => e,
                Err(u) => Error::StateIo {
                    path: state_path.into(),
                    why: format!("{e}; undoing it also failed ({u}); `release --all` retries"),
                },
            })
        }
    }
}

fn report(d: &DaxDevice, changed: bool) -> DevdaxReport {
    DevdaxReport {
        device: d.name.clone(),
        path: format!("/dev/{}", d.name),
        size: d.size,
        align: d.align.unwrap_or(0),
        node: d.node,
        changed,
    }
}

/// Memory blocks holding a system-ram (kmem) device's memory.
fn kmem_blocks(host: &Host, d: &DaxDevice) -> Result<Vec<blocks::Block>> {
    let bs = blocks::block_size(host).ok_or_else(|| {
        Error::input(format!(
            "--devdax: {} is in system-ram mode but the host has no memory-hotplug sysfs",
            d.name
        ))
    })?;
    let start = d.resource.unwrap_or(0) / bs;
    let end = (d.resource.unwrap_or(0) + d.size).div_ceil(bs);
    let ids: Vec<u64> = (start..end)
        .filter(|&id| blocks::block_dir(host, id).exists())
        .collect();
    if ids.is_empty() {
        return Err(Error::input(format!(
            "--devdax: no memory blocks for {} (system-ram mode) under {}",
            d.name,
            blocks::memory_dir(host).display()
        )));
    }
    ids.into_iter()
        .map(|id| blocks::read_block(host, id))
        .collect()
}

/// Takes a system-ram device's memory away from the kernel: every block offline (the
/// kernel migrates what lives there or refuses), then kmem unbound, which removes it.
fn leave_system_ram(host: &Host, d: &DaxDevice) -> Result<()> {
    for b in kmem_blocks(host, d)? {
        if b.state != "offline" {
            host.progress(format!("{}: memory{} offline", d.name, b.id));
            blocks::offline(host, b.id).map_err(|e| match e.raw_os_error() {
                Some(errno) => Error::Write {
                    path: blocks::state_path(host, b.id),
                    value: "offline".into(),
                    source: std::io::Error::new(
                        std::io::Error::from_raw_os_error(errno).kind(),
                        format!(
                            "{}: the host still uses {}'s memory",
                            crate::error::strerror(errno),
                            d.name
                        ),
                    ),
                },
                None => e,
            })?;
        }
    }
    host.write(
        &bus(host).join("drivers").join(KMEM).join("unbind"),
        &d.name,
    )
}

fn configure(host: &Host, d: &DaxDevice, c: &DaxChange) -> Result<DaxDevice> {
    if d.driver.as_deref() == Some(KMEM) {
        leave_system_ram(host, d)?;
    }
    if d.dynamic {
        // align first: the kernel checks a new size against the current align.
        if d.align != Some(GIB) {
            host.write(&d.dir.join("align"), &GIB.to_string())?;
        }
        if d.size != c.size {
            host.write(&d.dir.join("size"), &c.size.to_string())?;
        }
    }
    if read_device(host, &d.name)?.driver.as_deref() != Some(DEVICE_DAX) {
        host.write(
            &bus(host).join("drivers").join(DEVICE_DAX).join("bind"),
            &d.name,
        )?;
    }
    let now = read_device(host, &d.name)?;
    if now.driver.as_deref() != Some(DEVICE_DAX) || now.align != Some(GIB) || now.size != c.size {
        return Err(Error::Parse {
            path: now.dir.clone(),
            content: format!(
                "driver {:?} align {:?} size {}",
                now.driver, now.align, now.size
            ),
            why: format!("expected {DEVICE_DAX}, align {GIB}, size {}", c.size),
        });
    }
    Ok(now)
}

/// Puts a device back to its recorded driver, size and align.
fn undo_change(host: &Host, c: &DaxChange) -> Result<()> {
    let d = read_device(host, &c.device)?;
    if d.driver.is_some() && d.driver != c.original_driver {
        let drv = d.driver.clone().unwrap_or_default();
        host.write(
            &bus(host).join("drivers").join(&drv).join("unbind"),
            &c.device,
        )?;
    }
    if d.dynamic {
        if d.size != c.original_size {
            host.write(&d.dir.join("size"), &c.original_size.to_string())?;
        }
        if c.original_align != 0 && d.align != Some(c.original_align) {
            host.write(&d.dir.join("align"), &c.original_align.to_string())?;
        }
    }
    let now = read_device(host, &c.device)?;
    if let Some(orig) = &c.original_driver {
        if now.driver.as_deref() != Some(orig.as_str()) {
            host.write(
                &bus(host).join("drivers").join(orig).join("bind"),
                &c.device,
            )?;
        }
    }
    Ok(())
}

/// Undoes every recorded dax change; returns (done, left-with-reason).
pub fn release_all(session: &mut Session) -> Result<(Vec<String>, Vec<String>)> {
    release_which(session, |_| true)
}

/// [`release_all`] for the devices `which` names (a job's devices, or those of no job).
pub fn release_which(
    session: &mut Session,
    which: impl Fn(&str) -> bool,
) -> Result<(Vec<String>, Vec<String>)> {
    let host = session.host;
    let mut done = Vec::new();
    let mut left = Vec::new();
    let mut kept = Vec::new();
    for c in std::mem::take(&mut session.state.devdax) {
        if !which(&c.device) {
            kept.push(c);
            continue;
        }
        let users = users(host, &c.device);
        if !users.is_empty() {
            left.push(format!(
                "{} is mapped by pid {}; kept",
                c.device,
                users
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            kept.push(c);
            continue;
        }
        match undo_change(host, &c) {
            Ok(()) => done.push(c.device.clone()),
            Err(e) => {
                left.push(format!("{}: {e}", c.device));
                kept.push(c);
            }
        }
    }
    session.state.devdax = kept;
    session.save()?;
    Ok((done, left))
}
