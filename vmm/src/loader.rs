//! Kernel and initramfs loading: an ELF with a PVH note is entered at its PVH entry, an ELF
//! without one at its 64-bit entry, a bzImage by the 64-bit boot protocol (linux-loader).

use crate::arch::x86_64::boot::Initrd;
use crate::arch::x86_64::regs::EntryMode;
use crate::memory::layout::{GuestLayout, HIGH_MEMORY_START};
use crate::units::format_size;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
const XLF_KERNEL_64: u16 = 1;
/// The 64-bit entry point of a bzImage's protected-mode code.
const BZIMAGE_ENTRY64_OFFSET: u64 = 0x200;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{flag} {path}: cannot read: {err}")]
    Unreadable {
        flag: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("--kernel {0}: neither an ELF nor a bzImage")]
    NotAKernel(PathBuf),
    #[error(
        "--kernel {0}: a bzImage without a 64-bit entry point (xloadflags lacks XLF_KERNEL_64)"
    )]
    Not64Bit(PathBuf),
    #[error("--kernel {0}: cannot be loaded into guest RAM: {1}")]
    Load(PathBuf, String),
    #[error("--initrd {path}: {size} does not fit in the guest's usable RAM below {limit} above the kernel (ends at {kernel_end})", size = format_size(*size), limit = format!("{limit:#x}"), kernel_end = format!("{kernel_end:#x}"))]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
        kernel_end: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelFormat {
    ElfPvh,
    Elf64,
    BzImage,
}

#[derive(Debug, Clone)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    pub mode: EntryMode,
    pub entry: u64,
    /// First byte after everything the kernel occupies while booting.
    pub end: u64,
    pub setup_header: Option<setup_header>,
}

fn open(flag: &'static str, path: &Path) -> Result<File, LoadError> {
    let unreadable = |err| LoadError::Unreadable {
        flag,
        path: path.to_path_buf(),
        err,
    };
    let f = File::open(path).map_err(unreadable)?;
    let meta = f.metadata().map_err(unreadable)?;
    if meta.is_dir() {
        return Err(unreadable(std::io::Error::from_raw_os_error(libc::EISDIR)));
    }
    Ok(f)
}

/// Identifies a kernel file without loading it (so bad input is refused before guest RAM is
/// allocated).
pub fn probe_kernel(path: &Path) -> Result<KernelFormat, LoadError> {
    let mut f = open("--kernel", path)?;
    let mut magic = [0u8; 4];
    if f.read_exact(&mut magic).is_ok() && &magic == ELF_MAGIC {
        return Ok(KernelFormat::Elf64);
    }
    let is_bz = f.seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET)).is_ok()
        && f.read_exact(&mut magic).is_ok()
        && &magic == BZIMAGE_MAGIC;
    if is_bz {
        Ok(KernelFormat::BzImage)
    } else {
        Err(LoadError::NotAKernel(path.to_path_buf()))
    }
}

/// Size of an initramfs, checking that it can be read.
pub fn probe_initrd(path: &Path) -> Result<u64, LoadError> {
    let f = open("--initrd", path)?;
    f.metadata()
        .map(|m| m.len())
        .map_err(|err| LoadError::Unreadable {
            flag: "--initrd",
            path: path.to_path_buf(),
            err,
        })
}

pub fn load_kernel(
    mem: &GuestMemoryMmap,
    layout: &GuestLayout,
    path: &Path,
) -> Result<LoadedKernel, LoadError> {
    let format = probe_kernel(path)?;
    let mut f = open("--kernel", path)?;
    let load_err =
        |e: linux_loader::loader::Error| LoadError::Load(path.to_path_buf(), e.to_string());
    let loaded = match format {
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(HIGH_MEMORY_START)))
                .map_err(load_err)?;
            let hdr = r.setup_header.unwrap_or_default();
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoadError::Not64Bit(path.to_path_buf()));
            }
            let start = r.kernel_load.0;
            LoadedKernel {
                format: KernelFormat::BzImage,
                mode: EntryMode::Linux64,
                entry: start + BZIMAGE_ENTRY64_OFFSET,
                // The kernel decompresses itself in place and needs init_size bytes from there.
                end: r.kernel_end.max(start + hdr.init_size as u64),
                setup_header: Some(hdr),
            }
        }
        KernelFormat::Elf64 | KernelFormat::ElfPvh => {
            let r = Elf::load(mem, None, &mut f, Some(GuestAddress(HIGH_MEMORY_START)))
                .map_err(load_err)?;
            match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => LoadedKernel {
                    format: KernelFormat::ElfPvh,
                    mode: EntryMode::Pvh,
                    entry: addr.0,
                    end: r.kernel_end,
                    setup_header: None,
                },
                _ => LoadedKernel {
                    format: KernelFormat::Elf64,
                    mode: EntryMode::Linux64,
                    entry: r.kernel_load.0,
                    end: r.kernel_end,
                    setup_header: None,
                },
            }
        }
    };
    if loaded.end > layout.low_usable_end() {
        return Err(LoadError::Load(
            path.to_path_buf(),
            format!(
                "it ends at {:#x}, beyond the guest kernel's usable RAM ({:#x}; the rest is pool or hole)",
                loaded.end,
                layout.low_usable_end()
            ),
        ));
    }
    Ok(loaded)
}

/// Loads the initramfs at the top of the kernel's usable low RAM, page-aligned, above the
/// kernel and below the limit the kernel announces.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    layout: &GuestLayout,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<Initrd, LoadError> {
    let size = probe_initrd(path)?;
    let mut limit = layout.low_usable_end();
    if let Some(h) = kernel.setup_header {
        if h.initrd_addr_max != 0 {
            limit = limit.min(h.initrd_addr_max as u64 + 1);
        }
    }
    let kernel_end = kernel.end.div_ceil(4096) * 4096;
    let too_large = || LoadError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        limit,
        kernel_end,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !0xFFF;
    if addr < kernel_end {
        return Err(too_large());
    }
    let mut f = open("--initrd", path)?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| LoadError::Unreadable {
            flag: "--initrd",
            path: path.to_path_buf(),
            err: std::io::Error::other(e.to_string()),
        })?;
    Ok(Initrd { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("hpmmap-loader-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn probes_formats() {
        let elf = tmp("elf", b"\x7fELF\x02\x01\x01");
        assert_eq!(probe_kernel(&elf).unwrap(), KernelFormat::Elf64);
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bzp = tmp("bz", &bz);
        assert_eq!(probe_kernel(&bzp).unwrap(), KernelFormat::BzImage);
        let junk = tmp("junk", b"#!/bin/sh\necho not a kernel\n");
        assert!(matches!(probe_kernel(&junk), Err(LoadError::NotAKernel(_))));
        let empty = tmp("empty", b"");
        assert!(matches!(
            probe_kernel(&empty),
            Err(LoadError::NotAKernel(_))
        ));
        assert!(matches!(
            probe_kernel(Path::new("/nonexistent/vmlinux")),
            Err(LoadError::Unreadable { .. })
        ));
        assert!(matches!(
            probe_kernel(Path::new("/")),
            Err(LoadError::Unreadable { .. })
        ));
        for p in [elf, bzp, junk, empty] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn error_messages_name_the_flag_and_path() {
        let e = probe_kernel(Path::new("/nonexistent/vmlinux")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("--kernel /nonexistent/vmlinux: cannot read"),
            "{s}"
        );
        let e = probe_initrd(Path::new("/nonexistent/rd")).unwrap_err();
        assert!(e.to_string().starts_with("--initrd /nonexistent/rd"));
    }
}
