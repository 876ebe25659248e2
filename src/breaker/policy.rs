//! Validated `circuit_breaker` configuration: [`BreakerPolicy::compile`]
//! turns the user's [`RawBreaker`] into plain numbers (nanoseconds, counts,
//! a status bitmap) so nothing is parsed or checked per request.

use crate::config::raw::RawBreaker;
use crate::config::{fmt_duration, show_str, ConfigError};

const SEC: u64 = 1_000_000_000;

pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
pub const DEFAULT_MIN_REQUESTS: u32 = 20;
pub const DEFAULT_WINDOW_NS: u64 = 10 * SEC;
pub const DEFAULT_OPEN_DURATION_NS: u64 = 5 * SEC;
pub const DEFAULT_MAX_OPEN_DURATION_NS: u64 = 60 * SEC;
pub const DEFAULT_HALF_OPEN_REQUESTS: u32 = 1;
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;

/// Buckets in the failure-ratio window (each `window / BUCKETS` wide).
pub const BUCKETS: usize = 10;

/// Upper bounds: keep counters in `u32` and time sums far from overflow.
pub const MAX_COUNT: i64 = 1_000_000;
pub const MAX_HALF_OPEN_REQUESTS: i64 = 1000;
pub const MAX_SUCCESS_THRESHOLD: i64 = 1000;
pub const MAX_FAILURE_STATUSES: usize = 64;
/// One entry per gRPC code, at most.
pub const MAX_GRPC_FAILURE_STATUSES: usize = 17;
/// Longest `window` / `slow_call` accepted.
pub const MAX_WINDOW_NS: u64 = 3600 * SEC;
/// Longest `open_duration` / `max_open_duration` accepted.
pub const MAX_OPEN_NS: u64 = 24 * 3600 * SEC;
/// A HALF_OPEN probe slot is considered lost (its worker died, or the filter
/// never reported the stream's end) after this long without a new probe.
/// The actual lease is `max(max_open_duration, MIN_PROBE_LEASE_NS)`.
pub const MIN_PROBE_LEASE_NS: u64 = 30 * SEC;

/// Whose failures share one breaker state (`scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One state per route (`"route"`, the default).
    Route,
    /// One state per upstream cluster (`"upstream"`): routes that send to
    /// the same cluster trip together.
    Upstream,
}

/// The set of HTTP statuses that count as failures, as a bitmap over
/// 0..640 (only 100..=599 can be set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusSet([u64; 10]);

impl StatusSet {
    pub fn insert(&mut self, status: u32) {
        if let Some(w) = self.0.get_mut((status / 64) as usize) {
            *w |= 1u64 << (status % 64);
        }
    }
    pub fn contains(&self, status: u32) -> bool {
        match self.0.get((status / 64) as usize) {
            Some(w) => w & (1u64 << (status % 64)) != 0,
            None => false,
        }
    }
    /// All codes of a class, e.g. 5 -> 500..=599.
    pub fn insert_class(&mut self, class: u32) {
        for s in class * 100..class * 100 + 100 {
            self.insert(s);
        }
    }
}

/// The failure-ratio rule (`failure_ratio`, `min_requests`, `window`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioRule {
    /// In (0, 1].
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window_ns: u64,
}

/// A validated `circuit_breaker` section.
#[derive(Debug, Clone)]
pub struct BreakerPolicy {
    pub failure_statuses: StatusSet,
    /// gRPC calls: the `grpc-status` codes that are failures.
    pub grpc_failure_statuses: crate::grpc::CodeSet,
    pub consecutive_failures: u32,
    pub ratio: Option<RatioRule>,
    pub slow_call_ns: Option<u64>,
    pub open_duration_ns: u64,
    pub max_open_duration_ns: u64,
    pub half_open_requests: u32,
    pub success_threshold: u32,
    pub scope: Scope,
}

impl Default for BreakerPolicy {
    /// The policy of an empty `"circuit_breaker": {}` section.
    fn default() -> Self {
        let mut failure_statuses = StatusSet::default();
        failure_statuses.insert_class(5);
        BreakerPolicy {
            failure_statuses,
            grpc_failure_statuses: crate::grpc::CodeSet::SERVER_FAILURES,
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            ratio: None,
            slow_call_ns: None,
            open_duration_ns: DEFAULT_OPEN_DURATION_NS,
            max_open_duration_ns: DEFAULT_MAX_OPEN_DURATION_NS,
            half_open_requests: DEFAULT_HALF_OPEN_REQUESTS,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            scope: Scope::Route,
        }
    }
}

/// What `grpc_failure_statuses` entries may be.
pub const GRPC_STATUS_EXPECTED: &str =
    "a gRPC status name such as \"UNAVAILABLE\" or a number from 0 to 16";

const STATUS_EXPECTED: &str =
    "a status code from 100 to 599 (e.g. 503 or \"503\") or a class \"1xx\" to \"5xx\"";

fn int_at_least_1(path: &str, field: &str, v: i64, max: i64) -> Result<u32, ConfigError> {
    if v < 1 {
        return Err(ConfigError::expected(
            format!("{path}.{field}"),
            "an integer >= 1",
            v,
        ));
    }
    if v > max {
        return Err(ConfigError::expected(
            format!("{path}.{field}"),
            &format!("an integer <= {max}"),
            v,
        ));
    }
    Ok(v as u32)
}

fn duration_in(
    path: &str,
    field: &str,
    d: crate::config::Duration,
    max: u64,
) -> Result<u64, ConfigError> {
    if d.0 == 0 || d.0 > max {
        return Err(ConfigError::expected(
            format!("{path}.{field}"),
            &format!(
                "a duration greater than 0 and at most {}",
                fmt_duration(max)
            ),
            show_str(&fmt_duration(d.0)),
        ));
    }
    Ok(d.0)
}

fn parse_status(v: &serde_json::Value) -> Option<Result<u32, u32>> {
    // Ok(code) or Err(class)
    match v {
        serde_json::Value::Number(n) => {
            let c = n.as_u64()?;
            if (100..=599).contains(&c) {
                Some(Ok(c as u32))
            } else {
                None
            }
        }
        serde_json::Value::String(s) => {
            let b = s.as_bytes();
            if b.len() != 3 {
                return None;
            }
            let first = *b.first()?;
            if !(b'1'..=b'5').contains(&first) {
                return None;
            }
            if b.get(1..)?.eq_ignore_ascii_case(b"xx") {
                return Some(Err(u32::from(first - b'0')));
            }
            if b.get(1..)?.iter().all(u8::is_ascii_digit) {
                let c: u32 = s.parse().ok()?;
                return Some(Ok(c));
            }
            None
        }
        _ => None,
    }
}

fn show_json(v: &serde_json::Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 80 {
        let cut: String = text.chars().take(80).collect();
        format!("{cut}...")
    } else {
        text
    }
}

impl BreakerPolicy {
    /// Validates a `circuit_breaker` section; `path` is its JSON path
    /// (e.g. `routes[0].circuit_breaker`), used in every error.
    pub fn compile(raw: &RawBreaker, path: &str) -> Result<BreakerPolicy, ConfigError> {
        let mut p = BreakerPolicy::default();

        if let Some(list) = &raw.failure_statuses {
            if list.len() > MAX_FAILURE_STATUSES {
                return Err(ConfigError::expected(
                    format!("{path}.failure_statuses"),
                    &format!("at most {MAX_FAILURE_STATUSES} entries"),
                    list.len(),
                ));
            }
            let mut set = StatusSet::default();
            for (i, v) in list.iter().enumerate() {
                match parse_status(v) {
                    Some(Ok(code)) => set.insert(code),
                    Some(Err(class)) => set.insert_class(class),
                    None => {
                        return Err(ConfigError::expected(
                            format!("{path}.failure_statuses[{i}]"),
                            STATUS_EXPECTED,
                            show_json(v),
                        ))
                    }
                }
            }
            p.failure_statuses = set;
        }

        if let Some(list) = &raw.grpc_failure_statuses {
            if list.len() > MAX_GRPC_FAILURE_STATUSES {
                return Err(ConfigError::expected(
                    format!("{path}.grpc_failure_statuses"),
                    &format!("at most {MAX_GRPC_FAILURE_STATUSES} entries"),
                    list.len(),
                ));
            }
            let mut set = crate::grpc::CodeSet::default();
            for (i, v) in list.iter().enumerate() {
                match crate::grpc::Code::from_json(v) {
                    Some(c) => set.insert(c),
                    None => {
                        return Err(ConfigError::expected(
                            format!("{path}.grpc_failure_statuses[{i}]"),
                            GRPC_STATUS_EXPECTED,
                            show_json(v),
                        ))
                    }
                }
            }
            p.grpc_failure_statuses = set;
        }

        if let Some(n) = raw.consecutive_failures {
            p.consecutive_failures = int_at_least_1(path, "consecutive_failures", n, MAX_COUNT)?;
        }

        match raw.failure_ratio {
            Some(r) => {
                if !(r > 0.0 && r <= 1.0) {
                    return Err(ConfigError::expected(
                        format!("{path}.failure_ratio"),
                        "a number greater than 0 and at most 1",
                        r,
                    ));
                }
                let min_requests = match raw.min_requests {
                    Some(n) => int_at_least_1(path, "min_requests", n, MAX_COUNT)?,
                    None => DEFAULT_MIN_REQUESTS,
                };
                let window_ns = match raw.window {
                    Some(d) => duration_in(path, "window", d, MAX_WINDOW_NS)?,
                    None => DEFAULT_WINDOW_NS,
                };
                p.ratio = Some(RatioRule {
                    failure_ratio: r,
                    min_requests,
                    window_ns,
                });
            }
            None => {
                // A typo must not silently disable a policy: these two only
                // mean something together with failure_ratio.
                for (field, set) in [
                    ("min_requests", raw.min_requests.is_some()),
                    ("window", raw.window.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::new(
                            format!("{path}.{field}"),
                            format!(
                                "expected \"failure_ratio\" to be set too: `{field}` only applies to the failure-ratio rule"
                            ),
                        ));
                    }
                }
            }
        }

        if let Some(d) = raw.slow_call {
            p.slow_call_ns = Some(duration_in(path, "slow_call", d, MAX_WINDOW_NS)?);
        }
        if let Some(d) = raw.open_duration {
            p.open_duration_ns = duration_in(path, "open_duration", d, MAX_OPEN_NS)?;
        }
        match raw.max_open_duration {
            Some(d) => {
                let m = duration_in(path, "max_open_duration", d, MAX_OPEN_NS)?;
                if m < p.open_duration_ns {
                    return Err(ConfigError::expected(
                        format!("{path}.max_open_duration"),
                        &format!(
                            "a duration >= open_duration ({})",
                            fmt_duration(p.open_duration_ns)
                        ),
                        show_str(&fmt_duration(m)),
                    ));
                }
                p.max_open_duration_ns = m;
            }
            // Only open_duration given and above the default cap: the cap
            // follows it (no backoff) rather than rejecting a valid-looking
            // config.
            None => p.max_open_duration_ns = p.max_open_duration_ns.max(p.open_duration_ns),
        }
        if let Some(n) = raw.half_open_requests {
            p.half_open_requests =
                int_at_least_1(path, "half_open_requests", n, MAX_HALF_OPEN_REQUESTS)?;
        }
        if let Some(n) = raw.success_threshold {
            p.success_threshold =
                int_at_least_1(path, "success_threshold", n, MAX_SUCCESS_THRESHOLD)?;
        }
        if let Some(s) = &raw.scope {
            p.scope = match s.as_str() {
                "route" => Scope::Route,
                "upstream" => Scope::Upstream,
                _ => {
                    return Err(ConfigError::expected(
                        format!("{path}.scope"),
                        "\"route\" or \"upstream\"",
                        show_str(s),
                    ))
                }
            };
        }
        Ok(p)
    }

    /// How long the breaker stays OPEN after its `trips`-th consecutive trip
    /// (1-based): `open_duration * 2^(trips-1)`, capped at
    /// `max_open_duration`, plus jitter in `[0, 10%]` of that, taken
    /// uniformly from `jitter` (a random `u64`).
    pub fn open_time_ns(&self, trips: u32, jitter: u64) -> u64 {
        let shift = trips.saturating_sub(1).min(63);
        let base = self
            .open_duration_ns
            .saturating_mul(1u64 << shift)
            .min(self.max_open_duration_ns);
        // (base * jitter / 2^64) < base, so the extra is at most base / 10.
        let scaled = ((u128::from(base) * u128::from(jitter)) >> 64) as u64;
        base.saturating_add(scaled / 10)
    }

    /// Width of one bucket of the ratio window (window / 10, at least 1ns).
    pub fn bucket_width_ns(&self) -> u64 {
        match &self.ratio {
            Some(r) => (r.window_ns / BUCKETS as u64).max(1),
            None => 0,
        }
    }

    /// See [`MIN_PROBE_LEASE_NS`].
    pub fn probe_lease_ns(&self) -> u64 {
        self.max_open_duration_ns.max(MIN_PROBE_LEASE_NS)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(v: serde_json::Value) -> RawBreaker {
        serde_json::from_value(v).unwrap()
    }

    fn err(v: serde_json::Value) -> String {
        BreakerPolicy::compile(&raw(v), "routes[0].circuit_breaker")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn empty_section_gets_documented_defaults() {
        let p = BreakerPolicy::compile(&raw(json!({})), "cb").unwrap();
        for s in 500..=599 {
            assert!(p.failure_statuses.contains(s));
        }
        assert!(!p.failure_statuses.contains(499));
        assert!(!p.failure_statuses.contains(600));
        assert_eq!(p.consecutive_failures, 5);
        assert_eq!(p.ratio, None);
        assert_eq!(p.slow_call_ns, None);
        assert_eq!(p.open_duration_ns, 5 * SEC);
        assert_eq!(p.max_open_duration_ns, 60 * SEC);
        assert_eq!(p.half_open_requests, 1);
        assert_eq!(p.success_threshold, 1);
        assert_eq!(p.scope, Scope::Route);
    }

    #[test]
    fn full_contract_example_compiles() {
        let p = BreakerPolicy::compile(
            &raw(json!({ "failure_statuses": ["5xx", 429, "408"],
              "consecutive_failures": 3,
              "failure_ratio": 0.5, "min_requests": 10, "window": "30s",
              "slow_call": "2s",
              "open_duration": "1s", "max_open_duration": "8s",
              "half_open_requests": 2, "success_threshold": 3,
              "scope": "upstream" })),
            "cb",
        )
        .unwrap();
        assert!(p.failure_statuses.contains(503));
        assert!(p.failure_statuses.contains(429));
        assert!(p.failure_statuses.contains(408));
        assert!(!p.failure_statuses.contains(404));
        assert_eq!(p.consecutive_failures, 3);
        assert_eq!(
            p.ratio,
            Some(RatioRule {
                failure_ratio: 0.5,
                min_requests: 10,
                window_ns: 30 * SEC
            })
        );
        assert_eq!(p.bucket_width_ns(), 3 * SEC);
        assert_eq!(p.slow_call_ns, Some(2 * SEC));
        assert_eq!(p.open_duration_ns, SEC);
        assert_eq!(p.max_open_duration_ns, 8 * SEC);
        assert_eq!(p.half_open_requests, 2);
        assert_eq!(p.success_threshold, 3);
        assert_eq!(p.scope, Scope::Upstream);
    }

    #[test]
    fn ratio_defaults_when_only_failure_ratio_is_set() {
        let p = BreakerPolicy::compile(&raw(json!({"failure_ratio": 1})), "cb").unwrap();
        assert_eq!(
            p.ratio,
            Some(RatioRule {
                failure_ratio: 1.0,
                min_requests: 20,
                window_ns: 10 * SEC
            })
        );
    }

    #[test]
    fn status_classes_and_codes_accept_every_spelling() {
        let p =
            BreakerPolicy::compile(&raw(json!({"failure_statuses": ["4XX", 100, "599"]})), "cb")
                .unwrap();
        assert!(p.failure_statuses.contains(400) && p.failure_statuses.contains(499));
        assert!(p.failure_statuses.contains(100) && p.failure_statuses.contains(599));
        assert!(!p.failure_statuses.contains(500));
        let empty = BreakerPolicy::compile(&raw(json!({"failure_statuses": []})), "cb").unwrap();
        assert_eq!(empty.failure_statuses, StatusSet::default());
    }

    #[test]
    fn every_bad_value_is_rejected_with_its_json_path() {
        let p = "invalid config at routes[0].circuit_breaker";
        let cases: Vec<(serde_json::Value, String)> = vec![
            (json!({"failure_statuses": [600]}), format!("{p}.failure_statuses[0]: expected {STATUS_EXPECTED}, got 600")),
            (json!({"failure_statuses": [99]}), format!("{p}.failure_statuses[0]: expected {STATUS_EXPECTED}, got 99")),
            (json!({"failure_statuses": ["5xx", -1]}), format!("{p}.failure_statuses[1]: expected {STATUS_EXPECTED}, got -1")),
            (json!({"failure_statuses": [503.5]}), format!("{p}.failure_statuses[0]: expected {STATUS_EXPECTED}, got 503.5")),
            (json!({"failure_statuses": ["6xx"]}), format!("{p}.failure_statuses[0]: expected {STATUS_EXPECTED}, got \"6xx\"")),
            (json!({"failure_statuses": ["5x"]}), format!("{p}.failure_statuses[0]: expected {STATUS_EXPECTED}, got \"5x\"")),
            (json!({"failure_statuses": ["50x"]}), format!("{p}.failure_statuses[0]: expected {STATUS_EXPECTED}, got \"50x\"")),
            (json!({"failure_statuses": ["099"]}), format!("{p}.failure_statuses[0]: expected {STATUS_EXPECTED}, got \"099\"")),
            (json!({"failure_statuses": [true]}), format!("{p}.failure_statuses[0]: expected {STATUS_EXPECTED}, got true")),
            (json!({"failure_statuses": [null]}), format!("{p}.failure_statuses[0]: expected {STATUS_EXPECTED}, got null")),
            (json!({"failure_statuses": vec![500; 65]}), format!("{p}.failure_statuses: expected at most 64 entries, got 65")),
            (json!({"consecutive_failures": 0}), format!("{p}.consecutive_failures: expected an integer >= 1, got 0")),
            (json!({"consecutive_failures": -3}), format!("{p}.consecutive_failures: expected an integer >= 1, got -3")),
            (json!({"consecutive_failures": 1_000_001}), format!("{p}.consecutive_failures: expected an integer <= 1000000, got 1000001")),
            (json!({"failure_ratio": 0}), format!("{p}.failure_ratio: expected a number greater than 0 and at most 1, got 0")),
            (json!({"failure_ratio": 1.5}), format!("{p}.failure_ratio: expected a number greater than 0 and at most 1, got 1.5")),
            (json!({"failure_ratio": -0.5}), format!("{p}.failure_ratio: expected a number greater than 0 and at most 1, got -0.5")),
            (json!({"failure_ratio": 0.5, "min_requests": 0}), format!("{p}.min_requests: expected an integer >= 1, got 0")),
            (json!({"failure_ratio": 0.5, "window": "0s"}), format!("{p}.window: expected a duration greater than 0 and at most 1h, got \"0s\"")),
            (json!({"failure_ratio": 0.5, "window": "2h"}), format!("{p}.window: expected a duration greater than 0 and at most 1h, got \"2h\"")),
            (json!({"min_requests": 5}), format!("{p}.min_requests: expected \"failure_ratio\" to be set too: `min_requests` only applies to the failure-ratio rule")),
            (json!({"window": "5s"}), format!("{p}.window: expected \"failure_ratio\" to be set too: `window` only applies to the failure-ratio rule")),
            (json!({"slow_call": "0ms"}), format!("{p}.slow_call: expected a duration greater than 0 and at most 1h, got \"0s\"")),
            (json!({"open_duration": "0s"}), format!("{p}.open_duration: expected a duration greater than 0 and at most 24h, got \"0s\"")),
            (json!({"open_duration": "25h"}), format!("{p}.open_duration: expected a duration greater than 0 and at most 24h, got \"25h\"")),
            (json!({"max_open_duration": "0s"}), format!("{p}.max_open_duration: expected a duration greater than 0 and at most 24h, got \"0s\"")),
            (json!({"max_open_duration": "1s"}), format!("{p}.max_open_duration: expected a duration >= open_duration (5s), got \"1s\"")),
            (json!({"open_duration": "10s", "max_open_duration": "9.5s"}), format!("{p}.max_open_duration: expected a duration >= open_duration (10s), got \"9.5s\"")),
            (json!({"half_open_requests": 0}), format!("{p}.half_open_requests: expected an integer >= 1, got 0")),
            (json!({"half_open_requests": 1001}), format!("{p}.half_open_requests: expected an integer <= 1000, got 1001")),
            (json!({"success_threshold": 0}), format!("{p}.success_threshold: expected an integer >= 1, got 0")),
            (json!({"success_threshold": 5000}), format!("{p}.success_threshold: expected an integer <= 1000, got 5000")),
            (json!({"scope": "cluster"}), format!("{p}.scope: expected \"route\" or \"upstream\", got \"cluster\"")),
            (json!({"scope": ""}), format!("{p}.scope: expected \"route\" or \"upstream\", got \"\"")),
        ];
        for (input, want) in cases {
            assert_eq!(err(input.clone()), want, "input {input}");
        }
    }

    #[test]
    fn open_duration_above_default_cap_raises_the_cap() {
        let p = BreakerPolicy::compile(&raw(json!({"open_duration": "2m"})), "cb").unwrap();
        assert_eq!(p.max_open_duration_ns, 120 * SEC);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = BreakerPolicy::default(); // 5s, cap 60s
        let want = [5, 10, 20, 40, 60, 60, 60];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(p.open_time_ns(i as u32 + 1, 0), w * SEC, "trip {}", i + 1);
        }
        assert_eq!(p.open_time_ns(0, 0), 5 * SEC);
        assert_eq!(p.open_time_ns(u32::MAX, 0), 60 * SEC);
        let huge = BreakerPolicy {
            open_duration_ns: MAX_OPEN_NS,
            max_open_duration_ns: MAX_OPEN_NS,
            ..BreakerPolicy::default()
        };
        assert_eq!(huge.open_time_ns(200, 0), MAX_OPEN_NS);
    }

    #[test]
    fn jitter_is_never_negative_nor_above_ten_percent() {
        let p = BreakerPolicy::default();
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for trips in 1..10 {
            let base = p.open_time_ns(trips, 0);
            for j in [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
                let t = p.open_time_ns(trips, j);
                assert!(t >= base && t <= base + base / 10, "{trips} {j}");
            }
            for _ in 0..1000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let t = p.open_time_ns(trips, x);
                assert!(t >= base && t <= base + base / 10);
            }
        }
        // The top of the range is reached (almost exactly 10%).
        let t = p.open_time_ns(1, u64::MAX);
        assert!(t > 5 * SEC + 5 * SEC / 10 - 10);
    }
}
