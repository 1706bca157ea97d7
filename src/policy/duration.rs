//! Durations as the policy writes and shows them: parsed with `humantime`,
//! kept to whole seconds (certificate validity is counted in seconds), and
//! printed as hours, minutes and seconds, e.g. `26h 3m`.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{value:?} is not a duration: use a number and a unit, e.g. \"15m\" or \"1h 30m\"")]
    Syntax { value: String },
    #[error("{value:?} is not a whole number of seconds: use e.g. \"90s\" or \"2m\"")]
    Fraction { value: String },
    #[error("{value:?} is too long: the limit is {}", format(*.limit))]
    TooLong { value: String, limit: Duration },
}

/// Parses a humantime duration of whole seconds, at most `limit`.
pub fn parse(value: &str, limit: Duration) -> Result<Duration, DurationError> {
    let parsed = humantime::parse_duration(value.trim()).map_err(|_| DurationError::Syntax {
        value: value.to_string(),
    })?;
    if parsed.subsec_nanos() != 0 {
        return Err(DurationError::Fraction {
            value: value.to_string(),
        });
    }
    if parsed > limit {
        return Err(DurationError::TooLong {
            value: value.to_string(),
            limit,
        });
    }
    Ok(parsed)
}

/// Formats whole seconds as `1h 30m`, `15m`, `45s`, `0s` (sub-second parts
/// are dropped). The result parses back with `humantime`.
pub fn format(d: Duration) -> String {
    format_secs(d.as_secs())
}

/// [`format`] for a count of seconds.
pub fn format_secs(total: u64) -> String {
    use std::fmt::Write;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let mut out = String::with_capacity(16);
    // Writing to a String cannot fail.
    let mut part = |n: u64, unit: char| {
        let sep = if out.is_empty() { "" } else { " " };
        let _ = write!(out, "{sep}{n}{unit}");
    };
    if h > 0 {
        part(h, 'h');
    }
    if m > 0 {
        part(m, 'm');
    }
    if s > 0 || (h == 0 && m == 0) {
        part(s, 's');
    }
    out
}

/// Serializes a duration as its [`format`] text.
pub fn serialize<S: serde::Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn formats_hours_minutes_seconds() {
        assert_eq!(format(Duration::from_secs(0)), "0s");
        assert_eq!(format(Duration::from_secs(45)), "45s");
        assert_eq!(format(Duration::from_secs(900)), "15m");
        assert_eq!(format(Duration::from_secs(3600)), "1h");
        assert_eq!(format(Duration::from_secs(26 * 3600 + 180)), "26h 3m");
        assert_eq!(format(Duration::from_secs(3661)), "1h 1m 1s");
    }

    #[test]
    fn formatted_durations_parse_back() {
        for secs in [0, 1, 59, 60, 3599, 3600, 93_784, 31_536_000] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse(&format(d), Duration::MAX), Ok(d), "{secs}");
        }
    }

    #[test]
    fn parse_refuses_bad_fractional_and_long_values() {
        assert_eq!(parse("15m", DAY), Ok(Duration::from_secs(900)));
        assert_eq!(parse("1h 30m", DAY), Ok(Duration::from_secs(5400)));
        assert!(matches!(
            parse("15", DAY),
            Err(DurationError::Syntax { .. })
        ));
        assert!(matches!(
            parse("soon", DAY),
            Err(DurationError::Syntax { .. })
        ));
        assert!(matches!(parse("", DAY), Err(DurationError::Syntax { .. })));
        assert!(matches!(
            parse("1500ms", DAY),
            Err(DurationError::Fraction { .. })
        ));
        assert!(matches!(
            parse("2d", DAY),
            Err(DurationError::TooLong { .. })
        ));
        let msg = parse("15", DAY).unwrap_err().to_string();
        assert!(msg.contains("\"15m\""), "{msg}");
    }
}
