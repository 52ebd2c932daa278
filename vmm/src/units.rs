//! Parsing of the human units the CLI accepts: byte sizes with K/M/G/T suffixes and CPU lists.

use thiserror::Error;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const TIB: u64 = 1 << 40;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UnitError {
    #[error(
        "'{0}' is not a size (expected a number with an optional K, M, G or T suffix, e.g. 18G)"
    )]
    BadSize(String),
    #[error("'{0}' is too large")]
    SizeOverflow(String),
    #[error("'{0}' is not a CPU list (expected e.g. 0-3,8,10-11)")]
    BadCpuList(String),
}

/// Parses `18G`, `512M`, `1t`, `4096` (bytes). Suffixes are binary (K = 1024); an optional
/// trailing `B` or `iB` is accepted so that `1GiB` and `1GB` mean the same thing as `1G`.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let bad = || UnitError::BadSize(text.to_string());
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("ib"))
        .or_else(|| t.strip_suffix('B'))
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(t);
    let (digits, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], KIB),
        Some('m' | 'M') => (&t[..t.len() - 1], MIB),
        Some('g' | 'G') => (&t[..t.len() - 1], GIB),
        Some('t' | 'T') => (&t[..t.len() - 1], TIB),
        Some(c) if c.is_ascii_digit() => (t, 1),
        _ => return Err(bad()),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| UnitError::SizeOverflow(text.to_string()))?;
    n.checked_mul(mult)
        .ok_or_else(|| UnitError::SizeOverflow(text.to_string()))
}

/// Formats a byte count the way `parse_size` reads it, using the largest exact unit.
pub fn format_size(bytes: u64) -> String {
    for (unit, mult) in [("T", TIB), ("G", GIB), ("M", MIB), ("K", KIB)] {
        if bytes >= mult && bytes.is_multiple_of(mult) {
            return format!("{}{}", bytes / mult, unit);
        }
    }
    format!("{bytes}")
}

/// CPU numbers a list may name: 0 to 65535.
const CPU_LIST_LIMIT: usize = 1 << 16;

/// Parses a Linux-style CPU list (`0-3,8,10-11`) in the order written, duplicates removed.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, UnitError> {
    let bad = || UnitError::BadCpuList(text.to_string());
    let mut cpus = Vec::new();
    // A bitmap keeps de-duplication linear: `--cpus 0-65535` checked each CPU against
    // every earlier one (fuzz finding units-parse_cpu_list-quadratic).
    let mut seen = vec![false; CPU_LIST_LIMIT];
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let lo: usize = lo.trim().parse().map_err(|_| bad())?;
        let hi: usize = hi.trim().parse().map_err(|_| bad())?;
        if lo > hi || hi >= CPU_LIST_LIMIT {
            return Err(bad());
        }
        for (c, seen) in seen.iter_mut().enumerate().take(hi + 1).skip(lo) {
            if !std::mem::replace(seen, true) {
                cpus.push(c);
            }
        }
    }
    if cpus.is_empty() {
        return Err(bad());
    }
    Ok(cpus)
}

/// Writes CPUs as a Linux-style list with ranges (`0-3,8,10-11`), in ascending order.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(format_cpu_list(&[3, 0, 1, 2, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpu_list(&[5]), "5");
        assert_eq!(format_cpu_list(&[]), "");
        let l = parse_cpu_list("0-15,32-47").unwrap();
        assert_eq!(format_cpu_list(&l), "0-15,32-47");
    }

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(parse_size("18G").unwrap(), 18 * GIB);
        assert_eq!(parse_size("512m").unwrap(), 512 * MIB);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("2T").unwrap(), 2 * TIB);
        assert_eq!(parse_size("1GiB").unwrap(), GIB);
        assert_eq!(parse_size("1GB").unwrap(), GIB);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("0").unwrap(), 0);
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in ["", "G", "1.5G", "-1G", "12X", "1 G G", "0x10"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            parse_size("99999999999T"),
            Err(UnitError::SizeOverflow("99999999999T".into()))
        );
    }

    #[test]
    fn size_formatting_round_trips() {
        for s in [GIB, 3 * GIB, 2 * MIB, 4096, 5, 3 * TIB] {
            assert_eq!(parse_size(&format_size(s)).unwrap(), s);
        }
        assert_eq!(format_size(18 * GIB), "18G");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("5").unwrap(), vec![5]);
        assert_eq!(parse_cpu_list("1,1,0").unwrap(), vec![1, 0]);
        for bad in ["", "a", "3-1", "1-", ",", "1,,2"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad} accepted");
        }
    }

    /// fuzz/seeds/units/units-parse_cpu_list-quadratic: 50,473 CPUs took over 10 s with a
    /// quadratic duplicate check; linear it is milliseconds even in a debug build.
    #[test]
    fn long_cpu_lists_parse_in_linear_time() {
        let start = std::time::Instant::now();
        let cpus = parse_cpu_list("0879-051351").unwrap();
        assert_eq!(cpus.len(), 51351 - 879 + 1);
        assert_eq!((cpus[0], cpus[cpus.len() - 1]), (879, 51351));
        let all = parse_cpu_list("0-65535,7,0-65535");
        assert_eq!(all.unwrap().len(), 1 << 16);
        assert!(parse_cpu_list("0-65536").is_err(), "CPU 65536 accepted");
        let took = start.elapsed();
        assert!(took.as_secs_f64() < 2.0, "took {took:?}");
    }
}
