//! Parsing of the lab's size and file arguments.

use super::LabError;
use std::path::PathBuf;

/// `8G`, `4096M`, `1T` or a byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.chars().last() {
        Some('G' | 'g') => (&s[..s.len() - 1], 1u64 << 30),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        Some(c) if c.is_ascii_digit() => (s, 1),
        _ => return Err("expected a size like 8G or 4096M".into()),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a size like 8G or 4096M".to_string())?;
    n.checked_mul(mult).ok_or_else(|| "too large".to_string())
}

/// L1's RAM: a size of at least 1 GiB.
pub fn parse_mem(s: &str) -> Result<u64, LabError> {
    let bad = |why: &str| LabError::Mem(s.to_string(), why.to_string());
    let bytes = parse_size(s).map_err(|e| bad(&e))?;
    if bytes < 1 << 30 {
        return Err(bad("L1 needs at least 1G"));
    }
    Ok(bytes)
}

/// A host file or directory placed in L1 (`HOSTPATH:GUESTPATH`, GUESTPATH absolute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    pub spec: String,
    pub host: PathBuf,
    pub guest: String,
}

pub fn parse_add(spec: &str) -> Result<Add, LabError> {
    let bad = |why: String| LabError::Add(spec.to_string(), why);
    let (h, g) = spec
        .rsplit_once(':')
        .ok_or_else(|| bad("expected HOSTPATH:GUESTPATH".into()))?;
    if h.is_empty() {
        return Err(bad("empty host path".into()));
    }
    if !g.starts_with('/') || g == "/" || g.split('/').any(|c| c == "..") {
        return Err(bad(format!(
            "guest path {g:?} must be absolute, below /, without .."
        )));
    }
    let host = PathBuf::from(h);
    if !host.exists() {
        return Err(bad(format!("{h} does not exist")));
    }
    Ok(Add {
        spec: spec.to_string(),
        host,
        guest: g.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_mem("8G").unwrap(), 8 << 30);
        assert_eq!(parse_mem("4096M").unwrap(), 4 << 30);
        for bad in ["", "G", "8X", "-1G", "512M", "99999999999T"] {
            let e = parse_mem(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--mem {bad}:")), "{e}");
        }
    }

    #[test]
    fn adds() {
        let a = parse_add("/etc/hostname:/data/h").unwrap();
        assert_eq!(a.guest, "/data/h");
        for bad in [
            "/etc/hostname",
            "/etc/hostname:rel",
            "/etc/hostname:/",
            "/no/such:/x",
            "/etc:/a/../b",
        ] {
            let e = parse_add(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--add {bad}:")), "{e}");
        }
    }
}
