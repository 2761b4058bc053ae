//! Durations in Prometheus's grammar: unit-suffixed parts from years down to milliseconds,
//! largest first, each at most once (`1d`, `1h30m`, `90s`, `0s`). A bare `0` is allowed;
//! any other bare number is not.

const UNITS: [(&str, u64); 7] = [
    ("y", 365 * 24 * 3_600_000),
    ("w", 7 * 24 * 3_600_000),
    ("d", 24 * 3_600_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// The duration in milliseconds, or why `text` is not one.
pub fn parse(text: &str) -> Result<u64, String> {
    if text == "0" {
        return Ok(0);
    }
    if text.is_empty() {
        return Err("empty duration".to_string());
    }
    if text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("invalid duration \"{text}\" (missing unit)"));
    }
    let invalid = || format!("invalid duration \"{text}\" (write e.g. 30s, 5m, 1h30m or 1d)");

    let mut rest = text;
    let mut total: u64 = 0;
    // The next unit allowed; units must come largest first, each once.
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let Some(position) = UNITS[next_unit..]
            .iter()
            .position(|(name, _)| *name == unit)
        else {
            return Err(if unit.is_empty() {
                format!("invalid duration \"{text}\" (missing unit)")
            } else {
                invalid()
            });
        };
        let (_, millis) = UNITS[next_unit + position];
        next_unit += position + 1;
        total = number
            .checked_mul(millis)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(invalid)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// The canonical spelling Prometheus prints: `86400000` ms is `1d`, `0` is `0s`.
pub fn format(millis: u64) -> String {
    if millis == 0 {
        return "0s".to_string();
    }
    let mut left = millis;
    let mut out = String::new();
    for (name, size) in UNITS {
        if left >= size {
            out.push_str(&format!("{}{name}", left / size));
            left %= size;
        }
    }
    out
}

/// Whether `text` is a number with no unit, as in a range `[10]`.
pub fn is_bare_number(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_durations_parse() {
        assert_eq!(parse("1d"), Ok(86_400_000));
        assert_eq!(parse("1h30m"), Ok(5_400_000));
        assert_eq!(parse("90s"), Ok(90_000));
        assert_eq!(parse("0s"), Ok(0));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("1m30s500ms"), Ok(90_500));
        assert_eq!(parse("2w"), Ok(14 * 86_400_000));
    }

    #[test]
    fn bad_durations_say_why() {
        assert_eq!(
            parse("5").unwrap_err(),
            "invalid duration \"5\" (missing unit)"
        );
        assert!(parse("30m1h").is_err(), "units must be largest first");
        assert!(parse("1h1h").is_err());
        assert!(parse("-1m").is_err());
        assert!(parse("1.5h").is_err());
        assert!(parse("5 m").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn durations_print_canonically() {
        assert_eq!(format(parse("24h").unwrap()), "1d");
        assert_eq!(format(parse("90s").unwrap()), "1m30s");
        assert_eq!(format(0), "0s");
    }
}
