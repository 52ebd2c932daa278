//! Command-line pieces shared by `hpmmap-vf` and hpmmap-pci's `hpmmap-vf-probe`: the
//! InfiniBand flags, sizes, and the error kind that means exit status 2.

use crate::error::VfError;
use crate::ib::IbOptions;

/// The InfiniBand flags, as strings so that a bad value is one line and exit 2.
#[derive(clap::Args, Default)]
pub struct IbArgs {
    /// Node and port GUID for the VF (64 bits, e.g. 0x0002c90300a1b2c3); derived from
    /// the PF's GUID and the VF index when absent.
    #[arg(long)]
    pub vf_guid: Option<String>,
    /// The job's P_Key: 0x8000 set for full membership (0x8123), clear for limited.
    #[arg(long)]
    pub pkey: Option<String>,
    /// The job's name in claim records and partitions.conf.
    #[arg(long)]
    pub job: Option<String>,
}

impl IbArgs {
    pub fn parse(&self) -> Result<IbOptions, VfError> {
        IbOptions::parse(
            self.vf_guid.as_deref(),
            self.pkey.as_deref(),
            self.job.as_deref(),
        )
    }
}

/// `64M`, `18G`, `4096`: a non-zero multiple of 4 KiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 64M, 18G)"))?;
    match n.checked_mul(mul) {
        Some(0) | None => Err(format!("'{s}' is not a usable size")),
        Some(v) if v % 4096 != 0 => Err(format!("'{s}' is not a multiple of 4 KiB")),
        Some(v) => Ok(v),
    }
}

/// An error in what the user asked for: exit status 2.
#[derive(Debug)]
pub struct InputError(pub String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// Exit status for an error at a binary's edge: 2 for bad input, else 1.
pub fn exit_code_of(e: &anyhow::Error) -> u8 {
    let input = e.downcast_ref::<InputError>().is_some()
        || e.downcast_ref::<VfError>()
            .is_some_and(|v| v.is_input_error());
    if input {
        2
    } else {
        1
    }
}
