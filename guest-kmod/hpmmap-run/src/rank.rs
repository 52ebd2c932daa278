//! Counters of one rank: `HPMMAP_IOC_RANK_STATS` (the module keeps the final counters of
//! an ended address space, keyed by its pid) and the one line hpmmap-run prints for it.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;

use crate::{DEVICE, IOC_MAGIC, UAPI_VERSION};

/// Remove the record once read.
pub const RANK_TAKE: u32 = 1 << 0;
/// `state`: the caller's own address space, still running.
pub const RANK_LIVE: u32 = 1;
/// `state`: a record of an address space that has ended.
pub const RANK_ENDED: u32 = 2;

/// `struct hpmmap_rank_stats`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RankStats {
    pub size: u32,
    pub version: u32,
    pub pid: i32,
    pub flags: u32,
    pub state: u32,
    pub uid: u32,
    pub faults: u64,
    pub mappings: u64,
    pub fallbacks: u64,
    pub fork_copies: u64,
    pub fork_failures: u64,
    pub bytes_mapped: u64,
    pub bytes_peak: u64,
    pub reserved: [u64; 2],
}

const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (IOC_MAGIC << 8) | nr
}

/// `HPMMAP_IOC_RANK_STATS`.
pub const IOC_RANK_STATS: u64 = iowr(5, std::mem::size_of::<RankStats>());

impl RankStats {
    /// The request for `pid`'s ended record (0: the caller's own, live).
    pub fn request(pid: i32, flags: u32) -> Self {
        RankStats {
            size: std::mem::size_of::<RankStats>() as u32,
            version: UAPI_VERSION,
            pid,
            flags,
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RankError {
    #[error("cannot open {DEVICE}: {0}")]
    Open(std::io::Error),
    #[error("no counters kept for it (it ran on Linux memory, or they were taken already)")]
    NotFound,
    #[error("its counters belong to another user")]
    Denied,
    #[error("the hpmmap module is too old to keep counters per rank")]
    Unsupported,
    #[error("reading its counters failed: {0}")]
    Other(std::io::Error),
}

/// Reads (and with `take`, removes) the record the module kept for process `pid`.
pub fn read_rank(pid: i32, take: bool) -> Result<RankStats, RankError> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(DEVICE)
        .map_err(RankError::Open)?;
    let mut arg = RankStats::request(pid, if take { RANK_TAKE } else { 0 });
    // SAFETY: the request number encodes exactly `RankStats`'s size; the pointer is
    // valid and writable for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            IOC_RANK_STATS as _,
            &mut arg as *mut RankStats,
        )
    };
    if rc == 0 {
        return Ok(arg);
    }
    let err = std::io::Error::last_os_error();
    Err(match err.raw_os_error() {
        Some(libc::ENOENT) => RankError::NotFound,
        Some(libc::EPERM) => RankError::Denied,
        Some(libc::ENOTTY) => RankError::Unsupported,
        _ => RankError::Other(err),
    })
}

/// The rank of this process as its launcher set it, from `env`: Open MPI's, then PMI's
/// (MPICH, Slurm), then the job image runner's own `HPMMAP_RANK` (its copies launch).
pub fn mpi_rank(env: impl Fn(&str) -> Option<String>) -> Option<u32> {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "HPMMAP_RANK"]
        .iter()
        .find_map(|k| env(k).and_then(|v| v.trim().parse().ok()))
}

/// `hpmmap-run: rank pid=P [mpi_rank=R] faults=.. mapped_peak=.. mappings=.. fallbacks=..
/// fork_copies=.. mapped_at_end=..` (bytes), or the reason there are no counters.
pub fn rank_line(pid: u32, mpi: Option<u32>, stats: &Result<RankStats, RankError>) -> String {
    let mut s = format!("hpmmap-run: rank pid={pid}");
    if let Some(r) = mpi {
        s.push_str(&format!(" mpi_rank={r}"));
    }
    match stats {
        Ok(st) => s.push_str(&format!(
            " faults={} mapped_peak={} mappings={} fallbacks={} fork_copies={} mapped_at_end={}",
            st.faults, st.bytes_peak, st.mappings, st.fallbacks, st.fork_copies, st.bytes_mapped
        )),
        Err(e) => s.push_str(&format!(" counters unavailable: {e}")),
    }
    s
}

/// The fields of a rank line, by name (for whoever collects the lines: the job init's
/// tests, the suite).
pub fn parse_rank_line(line: &str) -> Option<Vec<(String, String)>> {
    let rest = line.strip_prefix("hpmmap-run: rank ")?;
    Some(
        rest.split_whitespace()
            .map_while(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Appends `line` to the file named by `HPMMAP_RANK_LOG` (one write, so lines of ranks
/// ending together do not interleave).
pub fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new().append(true).create(true).open(path)?;
    f.write_all(format!("{line}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layout_matches_the_c_header() {
        // six 32-bit fields, seven u64 counters, two reserved u64
        assert_eq!(std::mem::size_of::<RankStats>(), 96);
        assert_eq!(IOC_RANK_STATS, 0xC060_4805);
        let r = RankStats::request(42, RANK_TAKE);
        assert_eq!(
            (r.size, r.version, r.pid, r.flags),
            (96, UAPI_VERSION, 42, 1)
        );
    }

    #[test]
    fn mpi_rank_from_open_mpi_then_pmi_then_the_image_runner() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(mpi_rank(env(&[("OMPI_COMM_WORLD_RANK", "3")])), Some(3));
        assert_eq!(mpi_rank(env(&[("PMI_RANK", "5")])), Some(5));
        assert_eq!(
            mpi_rank(env(&[("PMI_RANK", "5"), ("OMPI_COMM_WORLD_RANK", "1")])),
            Some(1)
        );
        assert_eq!(
            mpi_rank(env(&[("OMPI_COMM_WORLD_RANK", "x"), ("PMI_RANK", "2")])),
            Some(2)
        );
        assert_eq!(
            mpi_rank(env(&[("HPMMAP_RANK", "4"), ("PMI_RANK", "2")])),
            Some(2)
        );
        assert_eq!(mpi_rank(env(&[("HPMMAP_RANK", "4")])), Some(4));
        assert_eq!(mpi_rank(env(&[])), None);
    }

    #[test]
    fn line_prints_and_parses_back() {
        let st = RankStats {
            faults: 0,
            mappings: 12,
            fallbacks: 1,
            fork_copies: 2,
            bytes_mapped: 4 << 20,
            bytes_peak: 1 << 30,
            ..RankStats::request(0, 0)
        };
        let line = rank_line(77, Some(1), &Ok(st));
        assert_eq!(
            line,
            "hpmmap-run: rank pid=77 mpi_rank=1 faults=0 mapped_peak=1073741824 mappings=12 \
             fallbacks=1 fork_copies=2 mapped_at_end=4194304"
        );
        let f = parse_rank_line(&line).unwrap();
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("pid"), Some("77"));
        assert_eq!(get("mpi_rank"), Some("1"));
        assert_eq!(get("faults"), Some("0"));
        assert_eq!(get("mapped_peak"), Some("1073741824"));
        assert_eq!(f.len(), 8);
        let no_mpi = rank_line(78, None, &Ok(st));
        assert!(no_mpi.starts_with("hpmmap-run: rank pid=78 faults=0 "));
        assert!(parse_rank_line("hpmmap-run: cannot execute x").is_none());
    }

    #[test]
    fn missing_counters_say_why() {
        let line = rank_line(9, None, &Err(RankError::NotFound));
        assert_eq!(
            line,
            "hpmmap-run: rank pid=9 counters unavailable: no counters kept for it \
             (it ran on Linux memory, or they were taken already)"
        );
        assert_eq!(
            parse_rank_line(&line).unwrap(),
            vec![("pid".to_string(), "9".to_string())]
        );
    }

    #[test]
    fn lines_append_whole() {
        let dir = std::env::temp_dir().join(format!("hpmmap-run-rank-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ranks.log");
        let _ = std::fs::remove_file(&p);
        append_line(&p, "hpmmap-run: rank pid=1 faults=0").unwrap();
        append_line(&p, "hpmmap-run: rank pid=2 faults=0").unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "hpmmap-run: rank pid=1 faults=0\nhpmmap-run: rank pid=2 faults=0\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
