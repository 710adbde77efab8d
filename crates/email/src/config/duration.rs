//! Durations as YAML strings: `"1h"`, `"90s"`, `"1h30m"`, Go's `"1.5h"`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

/// Parses a duration the way the configuration does.
///
/// humantime's syntax first (`"5m"`, `"1h 30m"`, `"2days"`); then Go's
/// `time.ParseDuration` syntax, which the Go original used for `max-time`,
/// so that its files (`"1.5h"`, `"0"`) keep working.
///
/// ```
/// use std::time::Duration;
/// use email::config::parse_duration;
///
/// assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
/// assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
/// assert!(parse_duration("soon").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    match humantime::parse_duration(text) {
        Ok(d) => Ok(d),
        Err(e) => parse_go_duration(text).ok_or_else(|| {
            format!("invalid duration {text:?} ({e}); write e.g. \"90s\", \"5m\" or \"1h\"")
        }),
    }
}

/// Go's `time.ParseDuration`: `[0-9.]+unit` repeated, units ns us µs ms s m h;
/// a bare `0` is allowed. Negative durations are not (they mean nothing here).
fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * nanos_per_unit;
    }
    // Go caps durations at about 292 years; so do we, to stay in u64 nanoseconds.
    (total.is_finite() && total < u64::MAX as f64).then(|| Duration::from_nanos(total as u64))
}

/// `deserialize_with` for a [`Duration`] field.
pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(D::Error::custom)
}

/// `serialize_with` for a [`Duration`] field: `"1h"`, `"5m"`, `"1h 30m"`.
pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humantime_and_go_syntax() {
        let cases = [
            ("1h", 3600.0),
            ("5m", 300.0),
            ("1h 30m", 5400.0),
            ("1h30m", 5400.0),
            ("1.5h", 5400.0),
            ("300ms", 0.3),
            ("0", 0.0),
            ("2days", 172_800.0),
        ];
        for (text, secs) in cases {
            let got = parse_duration(text).map(|d| d.as_secs_f64());
            assert_eq!(got, Ok(secs), "{text}");
        }
    }

    #[test]
    fn nonsense_is_an_error_that_shows_the_text() {
        for text in ["", "soon", "5", "-5m", "1x", "h"] {
            let err = parse_duration(text).err();
            assert!(
                err.is_some_and(|e| e.contains(&format!("{text:?}"))),
                "{text}"
            );
        }
    }
}
