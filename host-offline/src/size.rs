//! Sizes on the command line. Everything hpmmap-offline hands out is counted in 1 GiB pages,
//! so a size that is not a whole number of GiB is refused rather than rounded.

use crate::error::{Error, Result};

pub const GIB: u64 = 1 << 30;

/// Parses `18G`, `18GiB`, `1T`, `2048M`, `1073741824` (bytes) into bytes.
pub fn parse_bytes(flag: &str, text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(Error::input(format!(
            "{flag} {text:?}: expected a number with an optional unit (K, M, G, T), e.g. 18G"
        )));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| Error::input(format!("{flag} {text:?}: number too large")))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => {
            return Err(Error::input(format!(
                "{flag} {text:?}: unknown unit {unit:?} (use K, M, G or T, powers of 1024)"
            )))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| Error::input(format!("{flag} {text:?}: size too large")))
}

/// Parses a size that must be a whole number of GiB; returns the number of GiB.
pub fn parse_gib(flag: &str, text: &str) -> Result<u64> {
    let bytes = parse_bytes(flag, text)?;
    if !bytes.is_multiple_of(GIB) {
        return Err(Error::input(format!(
            "{flag} {text}: not a whole number of GiB (memory is handed out in 1 GiB pages)"
        )));
    }
    Ok(bytes / GIB)
}

/// Human form used in reports: whole GiB as `18 GiB`, anything else with two decimals.
pub fn human(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes < GIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{:.2} GiB", bytes as f64 / GIB as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_gib_forms_parse() {
        assert_eq!(parse_gib("--size", "18G").unwrap(), 18);
        assert_eq!(parse_gib("--size", "2GiB").unwrap(), 2);
        assert_eq!(parse_gib("--size", "1t").unwrap(), 1024);
        assert_eq!(parse_gib("--size", "2048M").unwrap(), 2);
        assert_eq!(parse_gib("--size", "1073741824").unwrap(), 1);
        assert_eq!(parse_gib("--size", "0G").unwrap(), 0);
    }

    #[test]
    fn partial_gib_and_garbage_are_refused_naming_the_flag() {
        for bad in [
            "1536M",
            "1.5G",
            "G",
            "",
            "-1G",
            "3GB",
            "12Q",
            "99999999999999999999G",
        ] {
            let e = parse_gib("--size", bad).unwrap_err();
            assert!(e.is_input(), "{bad}: {e}");
            assert!(e.to_string().starts_with("--size"), "{bad}: {e}");
        }
        assert!(parse_gib("--keep", "100M")
            .unwrap_err()
            .to_string()
            .contains("not a whole number of GiB"));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(3 * GIB), "3 GiB");
        assert_eq!(human(GIB + GIB / 2), "1.50 GiB");
        assert_eq!(human(128 << 20), "128 MiB");
    }
}
