//! Durations as the configuration writes them: `"250ms"`, `"2s"`, `"1.5s"`, `"5m"`,
//! `"1h"`. Stored as whole nanoseconds.

#[cfg(test)]
use serde::de::{self, Deserializer, Visitor};
#[cfg(test)]
use serde::Deserialize;
#[cfg(test)]
use std::fmt;

/// A non-negative duration in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub u64);

pub const EXPECTED: &str = "a duration string like \"250ms\", \"2s\", \"1.5s\", \"5m\" or \"1h\"";

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Duration(s * 1_000_000_000)
    }
    pub const fn from_millis(ms: u64) -> Self {
        Duration(ms * 1_000_000)
    }
    pub fn as_nanos(self) -> u64 {
        self.0
    }
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0)
    }
    /// Whole seconds, rounded up (for `Retry-After`-style values).
    pub fn ceil_secs(self) -> u64 {
        self.0.div_ceil(1_000_000_000)
    }

    /// Parses `<number><unit>` with unit one of `ns`, `us`, `ms`, `s`, `m`, `h`.
    pub fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, unit) = s.split_at(split);
        if num.is_empty()
            || num.starts_with('.')
            || num.ends_with('.')
            || num.matches('.').count() > 1
        {
            return None;
        }
        let per: u64 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (int, frac) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        let int: u64 = int.parse().ok()?;
        let mut nanos = int.checked_mul(per)?;
        if !frac.is_empty() {
            if frac.len() > 9 {
                return None;
            }
            let f: u64 = frac.parse().ok()?;
            let scale = 10u64.pow(frac.len() as u32);
            nanos = nanos.checked_add(f.checked_mul(per)? / scale)?;
        }
        Some(Duration(nanos))
    }
}

/// Tests only: the derived `Deserialize` of the raw types (which
/// `config::read` is tested against) reads durations with it.
#[cfg(test)]
impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).ok_or_else(|| {
                    E::custom(format!(
                        "expected {EXPECTED}, got {}",
                        super::error::show_str(v)
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(\\.[0-9]{1,9})?(ns|us|µs|ms|s|m|h)$",
            "description": "A duration: \"250ms\", \"2s\", \"1.5s\", \"5m\", \"1h\"."
        })
    }
}

const SEC_NS: u64 = 1_000_000_000;

/// Renders nanoseconds the way configs write durations (`"1.5s"`, `"250ms"`).
pub fn fmt_duration(ns: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(SEC_NS, "s"), (1_000_000, "ms"), (1_000, "us"), (1, "ns")];
    if ns == 0 {
        return "0s".into();
    }
    if ns % (3600 * SEC_NS) == 0 {
        return format!("{}h", ns / (3600 * SEC_NS));
    }
    if ns % (60 * SEC_NS) == 0 {
        return format!("{}m", ns / (60 * SEC_NS));
    }
    for (per, unit) in UNITS {
        if ns >= per {
            let whole = ns / per;
            let frac = ns % per;
            if frac == 0 {
                return format!("{whole}{unit}");
            }
            // Up to 3 decimals, trailing zeros trimmed.
            let milli = frac * 1000 / per;
            if milli == 0 {
                return format!("{whole}{unit}");
            }
            let s = format!("{whole}.{milli:03}");
            return format!("{}{unit}", s.trim_end_matches('0'));
        }
    }
    format!("{ns}ns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_fractions() {
        let cases = [
            ("250ms", 250_000_000),
            ("2s", 2_000_000_000),
            ("1.5s", 1_500_000_000),
            ("5m", 300_000_000_000),
            ("1h", 3_600_000_000_000),
            ("0s", 0),
            ("10us", 10_000),
            ("7ns", 7),
            ("0.25m", 15_000_000_000),
        ];
        for (s, want) in cases {
            assert_eq!(Duration::parse(s), Some(Duration(want)), "{s}");
        }
    }

    #[test]
    fn rejects_malformed_durations() {
        for s in [
            "",
            "s",
            "5",
            "5 minutes",
            "-1s",
            "1.s",
            ".5s",
            "1..5s",
            "1d",
            "abc",
            "1e3s",
            "99999999999999999999h",
            "1.0000000001s",
        ] {
            assert_eq!(Duration::parse(s), None, "{s:?} should be rejected");
        }
    }

    #[test]
    fn ceil_secs_rounds_up() {
        assert_eq!(Duration(1).ceil_secs(), 1);
        assert_eq!(Duration::from_millis(1500).ceil_secs(), 2);
        assert_eq!(Duration::from_secs(3).ceil_secs(), 3);
        assert_eq!(Duration(0).ceil_secs(), 0);
    }

    #[test]
    fn durations_render_like_config() {
        assert_eq!(fmt_duration(0), "0s");
        assert_eq!(fmt_duration(5 * 1_000_000_000), "5s");
        assert_eq!(fmt_duration(1_500_000_000), "1.5s");
        assert_eq!(fmt_duration(250_000_000), "250ms");
        assert_eq!(fmt_duration(5_512_345_678), "5.512s");
        assert_eq!(fmt_duration(7), "7ns");
        assert_eq!(fmt_duration(90 * 1_000_000_000), "90s");
        assert_eq!(fmt_duration(120 * 1_000_000_000), "2m");
        assert_eq!(fmt_duration(7200 * 1_000_000_000), "2h");
        assert_eq!(Duration::from_secs(2).0, 2 * 1_000_000_000);
    }
}
