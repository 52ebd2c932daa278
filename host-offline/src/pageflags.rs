//! Whether a physical range holds hugetlb pages, from /proc/kpageflags (one u64 of flags per
//! page frame). Cycling a memory block offline dissolves the free hugetlb pages in it, and a
//! 1 GiB page this tool reserved a moment ago is just such a page: block cycling must pass
//! over those ranges, or it shrinks the pool it is growing (or another user's).

use crate::host::Host;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// KPF_HUGE in include/uapi/linux/kernel-page-flags.h: set on every page of a hugetlb folio.
pub const KPF_HUGE: u64 = 1 << 17;

/// hugetlb pages are at least 2 MiB and aligned to their size, so one frame in each 2 MiB
/// tells whether that 2 MiB belongs to one.
const STRIDE: u64 = 2 << 20;

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// Ok(true) when some 2 MiB of `[start, start + len)` is part of a hugetlb page; Err with
/// the reason when kpageflags cannot be read (no CONFIG_PROC_PAGE_MONITOR, not root, a
/// recorded tree without it).
pub fn holds_hugetlb(host: &Host, start: u64, len: u64) -> Result<bool, String> {
    let path = host.proc("kpageflags");
    let f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let page = page_size();
    let mut addr = start;
    while addr < start + len {
        let mut word = [0u8; 8];
        match f.read_exact_at(&mut word, addr / page * 8) {
            Ok(()) => {
                if u64::from_ne_bytes(word) & KPF_HUGE != 0 {
                    return Ok(true);
                }
            }
            // Beyond the last frame (a sparse recording): nothing there.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        addr += STRIDE;
    }
    Ok(false)
}
