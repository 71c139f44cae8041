//! Human durations for certificate lifetimes: `90s`, `15m`, `24h`, `7d`, or
//! combinations such as `1h30m`.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (examples: 90s, 15m, 24h, 7d, 1h30m)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

/// Parses `<number><unit>` groups, units `s`, `m`, `h`, `d`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let (num, tail) = rest.split_at(digits);
        if tail.starts_with('.') {
            return Err(err(
                "fractions are not supported, use a smaller unit such as 90m",
            ));
        }
        let n: u64 = num.parse().map_err(|_| err("number too large"))?;
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let secs_per = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "" => return Err(err("missing unit after a number")),
            _ => return Err(err("unknown unit (use s, m, h or d)")),
        };
        total = n
            .checked_mul(secs_per)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| err("too large"))?;
        rest = tail;
    }
    Ok(Duration::from_secs(total))
}

/// Formats whole seconds in the largest exact unit: `24h`, `15m`, `90s`, `7d`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".to_owned(),
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_combined_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        for (input, reason) in [
            ("", "empty"),
            ("15", "missing unit"),
            ("h", "expected a number"),
            ("15x", "unknown unit"),
            ("1.5h", "fractions"),
            ("-5m", "expected a number"),
            ("99999999999999999999s", "too large"),
            ("999999999999999999d", "too large"),
        ] {
            let e = parse_duration(input).unwrap_err();
            assert!(e.to_string().contains(reason), "{input}: {e}");
        }
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(
            format_duration(Duration::from_secs(3_600 * 24 * 2 + 3_600)),
            "49h"
        );
        assert_eq!(format_duration(Duration::from_secs(900)), "15m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
