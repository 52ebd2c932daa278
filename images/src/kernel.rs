//! Debian's kernel: which ABI, its packages (image; headers, common headers and kbuild
//! for module builds), and the PVH-bootable ELF `vmlinux` taken out of the bzImage.

use crate::debs::{apt_depends, Deb, DebCache, DebError};
use crate::elf::Elf;
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KernelError {
    #[error(
        "--kernel-version {0}: not a Debian kernel ABI (expected like 6.1.0-28 or 6.1.0-28-amd64)"
    )]
    BadVersion(String),
    #[error("--kernel-version {abi}: unknown kernel version: neither apt nor the cache {cache} has linux-image-{abi}")]
    Unknown { abi: String, cache: PathBuf },
    #[error("kernel {abi}: headers missing: neither apt nor the cache {cache} has {package} (needed to build the hpmmap module; --no-hpmmap builds without it)")]
    HeadersMissing {
        abi: String,
        package: String,
        cache: PathBuf,
    },
    #[error("cannot find the default kernel: apt-cache lists no linux-image-* dependency of linux-image-amd64 and the cache {0} holds no linux-image package (run apt-get update, or pass --kernel-version)")]
    NoDefault(PathBuf),
    #[error("{0}: not a bzImage this builder understands: {1}")]
    BadBzImage(PathBuf, String),
    #[error(transparent)]
    Deb(#[from] DebError),
}

/// Normalises `6.1.0-28` and `6.1.0-28-amd64` to `6.1.0-28-amd64`.
pub fn parse_abi(s: &str) -> Result<String, KernelError> {
    let bad = || KernelError::BadVersion(s.to_string());
    let base = s.strip_suffix("-amd64").unwrap_or(s);
    let (ver, abi) = base.split_once('-').ok_or_else(bad)?;
    let nums: Vec<&str> = ver.split('.').collect();
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
    if nums.len() != 3 || !nums.iter().all(|n| digits(n)) || !digits(abi) {
        return Err(bad());
    }
    Ok(format!("{base}-amd64"))
}

/// The ABI `linux-image-amd64` points at; without apt metadata, the newest cached image.
pub fn default_abi(cache: &DebCache) -> Result<String, KernelError> {
    if let Some(dep) = apt_depends("linux-image-amd64")
        .into_iter()
        .find(|d| d.starts_with("linux-image-") && d.ends_with("-amd64"))
    {
        return Ok(dep.trim_start_matches("linux-image-").to_string());
    }
    let mut abis: Vec<String> = std::fs::read_dir(cache.debs_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            let rest = f.strip_prefix("linux-image-")?;
            let abi = rest.split('_').next()?;
            parse_abi(abi).ok()
        })
        .collect();
    abis.sort();
    abis.pop()
        .ok_or_else(|| KernelError::NoDefault(cache.debs_dir()))
}

#[derive(Clone)]
pub struct Kernel {
    pub abi: String,
    pub image: Deb,
    pub tree: PathBuf,
}

impl Kernel {
    pub fn bzimage(&self) -> PathBuf {
        self.tree.join(format!("boot/vmlinuz-{}", self.abi))
    }
    pub fn vmlinux(&self) -> PathBuf {
        self.tree.join(format!("boot/vmlinux-{}", self.abi))
    }
    pub fn modules_dir(&self) -> PathBuf {
        self.tree.join(format!("lib/modules/{}", self.abi))
    }
}

/// The image package for `abi`, from the cache or apt (not yet unpacked).
pub fn kernel_deb(cache: &DebCache, abi: &str) -> Result<Deb, KernelError> {
    let name = format!("linux-image-{abi}");
    if !cache.knows(&name) {
        return Err(KernelError::Unknown {
            abi: abi.to_string(),
            cache: cache.debs_dir(),
        });
    }
    Ok(cache.get(&name, None)?)
}

pub fn fetch_kernel(cache: &DebCache, abi: &str) -> Result<Kernel, KernelError> {
    let image = kernel_deb(cache, abi)?;
    unpack_kernel(cache, abi, image)
}

/// Unpacks the image package once and extracts vmlinux beside its bzImage.
pub fn unpack_kernel(cache: &DebCache, abi: &str, image: Deb) -> Result<Kernel, KernelError> {
    let abi_s = abi.to_string();
    let tree = cache.unpack("kernel", &[&image], |root, _| {
        let bz = root.join(format!("boot/vmlinuz-{abi_s}"));
        let data = std::fs::read(&bz).map_err(|source| DebError::Io {
            path: bz.clone(),
            source,
        })?;
        crate::progress::step(format!("extracting vmlinux from {}", bz.display()));
        let vmlinux = vmlinux_from_bzimage(&data).map_err(|detail| DebError::Unpack {
            deb: bz.clone(),
            detail,
        })?;
        let out = root.join(format!("boot/vmlinux-{abi_s}"));
        std::fs::write(&out, vmlinux).map_err(|source| DebError::Io { path: out, source })
    })?;
    Ok(Kernel {
        abi: abi.to_string(),
        image,
        tree,
    })
}

/// The series (`6.1`) of an ABI (`6.1.0-28-amd64`).
pub fn series(abi: &str) -> String {
    abi.split('.').take(2).collect::<Vec<_>>().join(".")
}

pub struct Headers {
    pub debs: Vec<Deb>,
    /// The directory to pass as KDIR to an out-of-tree module build.
    pub kdir: PathBuf,
}

/// linux-headers-<abi>, its -common tree and linux-kbuild-<series>, at the image's
/// version where apt or the cache has it; downloaded, not yet unpacked.
pub fn headers_debs(
    cache: &DebCache,
    abi: &str,
    image_version: &str,
) -> Result<Vec<Deb>, KernelError> {
    let base = abi.trim_end_matches("-amd64");
    let names = [
        format!("linux-headers-{abi}"),
        format!("linux-headers-{base}-common"),
        format!("linux-kbuild-{}", series(abi)),
    ];
    let mut debs = Vec::new();
    for n in &names {
        let cached = cache.cached(n);
        if crate::debs::apt_candidate(n).is_none() && cached.is_empty() {
            return Err(KernelError::HeadersMissing {
                abi: abi.to_string(),
                package: n.clone(),
                cache: cache.debs_dir(),
            });
        }
        let d = match cache.get(n, Some(image_version)) {
            Ok(d) => d,
            Err(e) => match cached.into_iter().last() {
                Some(d) => d,
                None => return Err(e.into()),
            },
        };
        debs.push(d);
    }
    Ok(debs)
}

/// Unpacks the header packages together so their relative links and Makefile resolve.
pub fn unpack_headers(cache: &DebCache, abi: &str, debs: Vec<Deb>) -> Result<Headers, KernelError> {
    let abi_s = abi.to_string();
    let refs: Vec<&Deb> = debs.iter().collect();
    let tree = cache.unpack("headers", &refs, |root, final_root| {
        // The arch headers' Makefile includes the common tree by its absolute
        // /usr/src path; point it into this tree (at the path it is renamed to).
        let mk = root.join(format!("usr/src/linux-headers-{abi_s}/Makefile"));
        let text = std::fs::read_to_string(&mk).map_err(|source| DebError::Io {
            path: mk.clone(),
            source,
        })?;
        let fixed = text.replace("/usr/src/", &format!("{}/usr/src/", final_root.display()));
        std::fs::write(&mk, fixed).map_err(|source| DebError::Io { path: mk, source })
    })?;
    let kdir = tree.join(format!("usr/src/linux-headers-{abi}"));
    Ok(Headers { debs, kdir })
}

/// XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit entry point PVH loaders (QEMU, rust-vmm's
/// linux-loader) jump to.
pub const PVH_NOTE_TYPE: u32 = 18;

pub fn pvh_entry(vmlinux: &[u8]) -> Option<u32> {
    let elf = Elf::parse(vmlinux).ok()?;
    elf.notes()
        .ok()?
        .into_iter()
        .find(|n| n.name == b"Xen" && n.kind == PVH_NOTE_TYPE && n.desc.len() >= 4)
        .map(|n| u32::from_le_bytes(n.desc[..4].try_into().unwrap()))
}

/// The kernel ELF inside a bzImage: the setup header's payload_offset/length locate the
/// compressed vmlinux (Debian's 6.1 uses xz with the x86 BCJ filter).
pub fn vmlinux_from_bzimage(bz: &[u8]) -> Result<Vec<u8>, String> {
    if bz.len() < 0x250 || &bz[0x202..0x206] != b"HdrS" {
        return Err("no setup header (HdrS)".into());
    }
    let version = u16::from_le_bytes([bz[0x206], bz[0x207]]);
    if version < 0x208 {
        return Err(format!("boot protocol {version:#x} has no payload fields"));
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let off = u32::from_le_bytes(bz[0x248..0x24c].try_into().unwrap()) as usize;
    let len = u32::from_le_bytes(bz[0x24c..0x250].try_into().unwrap()) as usize;
    let start = (setup_sects + 1) * 512 + off;
    let payload = bz
        .get(start..start + len)
        .ok_or("payload lies past the end of the file")?;
    let elf = if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        unxz(payload)?
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(payload)
            .read_to_end(&mut out)
            .map_err(|e| format!("gzip payload: {e}"))?;
        out
    } else {
        return Err(format!(
            "payload compression with magic {:02x?} is not supported (xz, gzip are)",
            &payload[..payload.len().min(4)]
        ));
    };
    if pvh_entry(&elf).is_none() {
        return Err("the decompressed vmlinux has no PVH entry note (CONFIG_PVH)".into());
    }
    Ok(elf)
}

fn unxz(input: &[u8]) -> Result<Vec<u8>, String> {
    let mut dec = xz4rust::XzDecoder::in_heap_with_alloc_dict_size(1 << 16, 1 << 28);
    let mut out = vec![0u8; 64 << 20];
    let mut produced = 0;
    let mut consumed = 0;
    loop {
        if produced == out.len() {
            out.resize(out.len() * 2, 0);
        }
        let r = dec
            .decode(&input[consumed..], &mut out[produced..])
            .map_err(|e| format!("xz payload: {e:?}"))?;
        consumed += r.input_consumed();
        produced += r.output_produced();
        if r.is_end_of_stream() {
            break;
        }
        if !r.made_progress() && consumed >= input.len() {
            return Err("xz payload ends before its stream does".into());
        }
    }
    out.truncate(produced);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_forms() {
        assert_eq!(parse_abi("6.1.0-28").unwrap(), "6.1.0-28-amd64");
        assert_eq!(parse_abi("6.1.0-28-amd64").unwrap(), "6.1.0-28-amd64");
        for bad in [
            "",
            "6.1",
            "6.1.0",
            "6.1.0-",
            "6.1.0-x",
            "linux-6.1.0-28",
            "6.1.0-28-arm64",
        ] {
            let e = parse_abi(bad).unwrap_err().to_string();
            assert!(e.starts_with("--kernel-version"), "{bad}: {e}");
        }
    }

    #[test]
    fn bzimage_garbage_is_an_error() {
        assert!(vmlinux_from_bzimage(b"not a kernel").is_err());
        let mut fake = vec![0u8; 0x1000];
        fake[0x202..0x206].copy_from_slice(b"HdrS");
        fake[0x206] = 0x0f;
        fake[0x207] = 0x02;
        let e = vmlinux_from_bzimage(&fake).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
    }
}
