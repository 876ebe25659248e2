//! Durations as the configuration writes them: `"250ms"`, `"2s"`, `"1.5s"`, `"5m"`,
//! `"1h"`. Stored as whole nanoseconds.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
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
                    E::custom(format!("expected {EXPECTED}, got {}", super::show_str(v)))
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
}
