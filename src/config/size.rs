//! Byte sizes as the config file writes them (a leaf: read by the raw
//! settings and route keys alike).

/// A byte size: a plain number of bytes, or a number with a unit
/// (`64KiB`, `8k`, `10MiB`, `1MB`; `k`/`m`/`g` and `KiB`/`MiB`/`GiB` are
/// powers of 1024, `KB`/`MB`/`GB` powers of 1000).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| format!("invalid size {text:?}: use bytes or e.g. 64KiB, 10MiB"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "k" | "K" | "KiB" | "Ki" => 1 << 10,
        "m" | "M" | "MiB" | "Mi" => 1 << 20,
        "g" | "G" | "GiB" | "Gi" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("invalid size {text:?}: unknown unit {other:?} (use e.g. 64KiB, 10MiB)")),
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("invalid size {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_bytes_or_with_a_unit() {
        assert_eq!(parse_size("8192"), Ok(8192));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("8k"), Ok(8192));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
