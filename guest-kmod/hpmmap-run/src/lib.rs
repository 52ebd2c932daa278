//! `hpmmap-run`'s library: the `/dev/hpmmap` user interface (mirrors
//! `guest-kmod/module/hpmmap_uapi.h`), registration of the calling process, the
//! counters of a rank (`rank`) and running the rank as a child (`supervise`).

pub mod rank;
pub mod supervise;

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::str::FromStr;

/// Version of the ioctl structs this crate speaks (`HPMMAP_UAPI_VERSION`).
pub const UAPI_VERSION: u32 = 1;
/// The module's device node.
pub const DEVICE: &str = "/dev/hpmmap";
/// Registration takes effect at the next successful execve.
pub const REG_ON_EXEC: u32 = 1 << 0;
/// Pool exhausted: fail with ENOMEM instead of falling back to Linux memory.
pub const REG_NO_FALLBACK: u32 = 1 << 1;

/// `struct hpmmap_register`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Register {
    pub size: u32,
    pub version: u32,
    pub pid: i32,
    pub flags: u32,
    pub page_shift: u32,
    pub node: i32,
    pub reserved: u64,
}

const IOC_WRITE: u64 = 1;
pub(crate) const IOC_MAGIC: u64 = b'H' as u64;

const fn iow(nr: u64, size: usize) -> u64 {
    (IOC_WRITE << 30) | ((size as u64) << 16) | (IOC_MAGIC << 8) | nr
}

/// `HPMMAP_IOC_REGISTER`.
pub const IOC_REGISTER: u64 = iow(1, std::mem::size_of::<Register>());

/// The largest page hpmmap may use for the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    Huge1G,
    Huge2M,
}

impl PageSize {
    pub fn shift(self) -> u32 {
        match self {
            PageSize::Huge1G => 30,
            PageSize::Huge2M => 21,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--page-size: expected 1G or 2M, got {0:?}")]
pub struct BadPageSize(pub String);

impl FromStr for PageSize {
    type Err = BadPageSize;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "1G" | "1GB" | "1GIB" => Ok(PageSize::Huge1G),
            "2M" | "2MB" | "2MIB" => Ok(PageSize::Huge2M),
            _ => Err(BadPageSize(s.to_string())),
        }
    }
}

/// What the launcher asks of the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub page_size: PageSize,
    pub node: Option<u32>,
    pub no_fallback: bool,
}

impl Options {
    /// The ioctl argument: registration of the caller, effective at its next exec.
    pub fn to_register(&self) -> Register {
        Register {
            size: std::mem::size_of::<Register>() as u32,
            version: UAPI_VERSION,
            pid: 0,
            flags: REG_ON_EXEC | if self.no_fallback { REG_NO_FALLBACK } else { 0 },
            page_shift: self.page_size.shift(),
            node: self.node.map_or(-1, |n| n as i32),
            reserved: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("{DEVICE} not found: is the hpmmap module loaded?")]
    NoDevice,
    #[error("cannot open {DEVICE}: {0}")]
    Open(std::io::Error),
    #[error("this process is already registered with hpmmap")]
    AlreadyRegistered,
    #[error("the hpmmap module speaks another interface version than {UAPI_VERSION}")]
    Version,
    #[error("the hpmmap module rejected the request (page size or --node {0:?} invalid)")]
    Invalid(Option<u32>),
    #[error("hpmmap registration failed: {0}")]
    Other(std::io::Error),
}

/// Registers the calling process; the registration applies from its next execve on,
/// and is inherited by its children and threads (hpmmap-run never execs itself: the
/// child it forks inherits the registration and execs the program).
pub fn register_on_exec(opts: &Options) -> Result<(), RegisterError> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(DEVICE)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RegisterError::NoDevice,
            _ => RegisterError::Open(e),
        })?;
    let arg = opts.to_register();
    // SAFETY: the request number encodes exactly `Register`'s size and the pointer is
    // valid for the duration of the call.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), IOC_REGISTER as _, &arg as *const Register) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    Err(match err.raw_os_error() {
        Some(libc::EBUSY) => RegisterError::AlreadyRegistered,
        Some(libc::EPROTO) => RegisterError::Version,
        Some(libc::EINVAL) => RegisterError::Invalid(opts.node),
        _ => RegisterError::Other(err),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layout_matches_the_c_header() {
        // sizeof(struct hpmmap_register) in hpmmap_uapi.h: six 32-bit fields and a u64.
        assert_eq!(std::mem::size_of::<Register>(), 32);
        assert_eq!(IOC_REGISTER, 0x4020_4801);
    }

    #[test]
    fn page_sizes_parse() {
        assert_eq!("1G".parse::<PageSize>(), Ok(PageSize::Huge1G));
        assert_eq!("2m".parse::<PageSize>(), Ok(PageSize::Huge2M));
        assert_eq!("4K".parse::<PageSize>(), Err(BadPageSize("4K".to_string())));
        assert_eq!(
            "4K".parse::<PageSize>().unwrap_err().to_string(),
            "--page-size: expected 1G or 2M, got \"4K\""
        );
    }

    #[test]
    fn register_arg_carries_the_options() {
        let r = Options {
            page_size: PageSize::Huge2M,
            node: Some(1),
            no_fallback: true,
        }
        .to_register();
        assert_eq!(r.page_shift, 21);
        assert_eq!(r.node, 1);
        assert_eq!(r.flags, REG_ON_EXEC | REG_NO_FALLBACK);
        assert_eq!(r.version, UAPI_VERSION);
        let d = Options {
            page_size: PageSize::Huge1G,
            node: None,
            no_fallback: false,
        }
        .to_register();
        assert_eq!((d.page_shift, d.node, d.flags), (30, -1, REG_ON_EXEC));
    }
}
