//! KVM's binary statistics (KVM_GET_STATS_FD, Linux 5.14+): how many guest pages KVM maps at
//! each size, which shows whether the 1 GiB host pages really became 1 GiB guest mappings.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

const KVM_GET_STATS_FD: u64 = 0xAECE; // _IO(KVMIO, 0xce)
const HEADER_LEN: usize = 24;
const DESC_FIXED_LEN: usize = 16;

/// Reads every statistic of a KVM VM or vCPU descriptor as name → value (the last bucket's
/// value for histograms is not needed here: only plain counters are returned).
pub fn read_stats(kvm_object: &impl AsRawFd) -> io::Result<BTreeMap<String, u64>> {
    // SAFETY: ioctl on a KVM descriptor we hold; it returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(kvm_object.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, 0)?;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let name_size = u32_at(&header, 4) as usize;
    let num_desc = u32_at(&header, 8) as usize;
    let desc_offset = u32_at(&header, 16) as u64;
    let data_offset = u32_at(&header, 20) as u64;
    let desc_len = DESC_FIXED_LEN + name_size;
    let mut descs = vec![0u8; desc_len * num_desc];
    file.read_exact_at(&mut descs, desc_offset)?;
    parse(&descs, name_size, num_desc, |off, buf| {
        file.read_exact_at(buf, data_offset + off)
    })
}

/// Splits the descriptor block and reads each counter's first value through `read_data`.
fn parse(
    descs: &[u8],
    name_size: usize,
    num_desc: usize,
    read_data: impl Fn(u64, &mut [u8]) -> io::Result<()>,
) -> io::Result<BTreeMap<String, u64>> {
    let desc_len = DESC_FIXED_LEN + name_size;
    let mut out = BTreeMap::new();
    for i in 0..num_desc {
        let d = &descs[i * desc_len..(i + 1) * desc_len];
        let size = u16::from_le_bytes([d[6], d[7]]) as usize;
        let offset = u32::from_le_bytes(d[8..12].try_into().unwrap()) as u64;
        let name_bytes = &d[DESC_FIXED_LEN..];
        let end = name_bytes
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(name_bytes.len());
        let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
        if size == 0 {
            continue;
        }
        let mut v = [0u8; 8];
        read_data(offset, &mut v)?;
        out.insert(name, u64::from_le_bytes(v));
    }
    Ok(out)
}

/// The three page-size counters of a VM, as the report shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KvmPages {
    pub pages_4k: u64,
    pub pages_2m: u64,
    pub pages_1g: u64,
}

impl KvmPages {
    pub fn from_stats(s: &BTreeMap<String, u64>) -> Option<Self> {
        Some(KvmPages {
            pages_4k: *s.get("pages_4k")?,
            pages_2m: *s.get("pages_2m")?,
            pages_1g: *s.get("pages_1g")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(name: &str, size: u16, offset: u32, name_size: usize) -> Vec<u8> {
        let mut d = vec![0u8; DESC_FIXED_LEN + name_size];
        d[6..8].copy_from_slice(&size.to_le_bytes());
        d[8..12].copy_from_slice(&offset.to_le_bytes());
        d[DESC_FIXED_LEN..DESC_FIXED_LEN + name.len()].copy_from_slice(name.as_bytes());
        d
    }

    #[test]
    fn parses_descriptors_and_values() {
        let ns = 48;
        let mut descs = desc("pages_4k", 1, 0, ns);
        descs.extend(desc("pages_2m", 1, 8, ns));
        descs.extend(desc("pages_1g", 1, 16, ns));
        descs.extend(desc("halt_poll_success_hist", 32, 24, ns));
        let data: Vec<u64> = vec![100, 3, 2, 9];
        let s = parse(&descs, ns, 4, |off, buf| {
            buf.copy_from_slice(&data[(off / 8) as usize].to_le_bytes());
            Ok(())
        })
        .unwrap();
        assert_eq!(
            KvmPages::from_stats(&s).unwrap(),
            KvmPages {
                pages_4k: 100,
                pages_2m: 3,
                pages_1g: 2
            }
        );
        assert_eq!(s["halt_poll_success_hist"], 9);
        assert!(KvmPages::from_stats(&BTreeMap::new()).is_none());
    }
}
