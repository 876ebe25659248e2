//! Token-bucket rate limiting, exact across all worker threads of one Envoy
//! process (CONFIG.md `rate_limit`).
//!
//! ```json
//! "rate_limit": [
//!   { "name": "per-key", "key": [ { "header": "x-api-key" } ],
//!     "capacity": 100, "refill_tokens": 100, "refill_interval": "1m" },
//!   { "name": "burst", "capacity": 20, "refill_tokens": 20, "refill_interval": "1s",
//!     "shadow": true }
//! ]
//! ```
//!
//! - A bucket holds at most `capacity` tokens, starts full, and refills
//!   continuously at `refill_tokens` per `refill_interval` (default
//!   `refill_tokens` = `capacity`; `refill_interval` is required). A request
//!   takes `cost` tokens (default 1, at most `capacity`).
//! - One bucket per (route, limit, key) per Envoy process, in proxy-wasm
//!   shared data, updated with compare-and-swap: all workers see one bucket,
//!   so `capacity` requests pass, not `capacity x workers`. The arithmetic is
//!   integer and exact (`bucket.rs`); the slot table (`store.rs`) bounds the
//!   number of buckets at `max_rate_limit_keys`, reusing idle buckets first.
//! - Every limit of a route must admit the request. Limits are taken in
//!   order; when one refuses, the tokens already taken by earlier limits of
//!   the same request are given back, and later limits are not charged.
//! - Refused: 429 with `Retry-After` (whole seconds until `cost` tokens are
//!   back, at least 1), the configured rate-limit headers and a JSON body
//!   `{"error":"rate_limited","route":..,"limit":..,"retry_after":..}`.
//!   Admitted responses carry the headers too, for the most constrained limit.
//! - `shadow: true`: the limit is computed but never refuses; what it would
//!   have refused is counted (`shadow_limited`) and logged at info level.
//! - Failure policy: FAIL OPEN. If shared data fails, or `MAX_CAS_RETRIES`
//!   compare-and-swaps all lose (extreme contention), the limit admits the
//!   request, counts it in `errors` and logs a warning. A clock that goes
//!   backwards refills nothing and never corrupts a bucket.
//!
//! Headers (`rate_limit_headers`):
//! - `ietf` (default): `RateLimit-Policy: "per-key";q=100;w=60` (one item per
//!   enforced limit; `w` = seconds for an empty bucket to refill) and
//!   `RateLimit: "per-key";r=42;t=12` (the limit with the fewest tokens
//!   left; `t` = seconds until that bucket is full again).
//! - `legacy`: `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
//! - `both`, or `none`. `Retry-After` is always sent on 429.
//!
//! Metrics (counters, per route and limit):
//! `meshguard.ratelimit.<route>.<limit>.allowed`, `.limited`,
//! `.shadow_limited`, `.errors`; and `meshguard.ratelimit.evictions`
//! (buckets whose slot was reused for another key).

pub mod bucket;
pub mod policy;
pub mod store;

use crate::host::{Host, MetricId, MetricKind};
use crate::request::Request;
use bucket::BucketParams;
pub use policy::{KeyPart, LimitMetrics, LimitPolicy};

/// Which rate-limit response headers to send (`rate_limit_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStyle {
    Ietf,
    Legacy,
    Both,
    None,
}

impl HeaderStyle {
    pub fn parse(s: &str) -> Option<HeaderStyle> {
        match s {
            "ietf" => Some(HeaderStyle::Ietf),
            "legacy" => Some(HeaderStyle::Legacy),
            "both" => Some(HeaderStyle::Both),
            "none" => Some(HeaderStyle::None),
            _ => None,
        }
    }
}

/// The verdict for one request on one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Headers to add to the response (the 429, or the upstream's).
    pub headers: Vec<(&'static str, String)>,
    /// Set when refused: the refusing limit and the seconds to wait.
    pub refused_by: Option<String>,
    pub retry_after_secs: u64,
}

impl Decision {
    /// The JSON body of a 429.
    pub fn body(&self, route: &str) -> String {
        serde_json::json!({
            "error": "rate_limited",
            "route": route,
            "limit": self.refused_by.as_deref().unwrap_or(""),
            "retry_after": self.retry_after_secs,
        })
        .to_string()
    }
}

/// Process-wide settings of the limiter.
#[derive(Debug, Clone, Copy)]
pub struct Limiter {
    pub slots: u32,
    pub style: HeaderStyle,
    pub xff_trusted_hops: u32,
    pub evictions: MetricId,
}

/// Defines the per-limit metrics of a route (once, at configuration time).
pub fn define_metrics(host: &impl Host, route: &str, limits: &mut [LimitPolicy]) {
    let def = |l: &str, what: &str| {
        host.define_metric(
            MetricKind::Counter,
            &format!("meshguard.ratelimit.{route}.{l}.{what}"),
        )
        .ok()
    };
    for l in limits.iter_mut() {
        l.metrics = LimitMetrics {
            allowed: def(&l.name, "allowed"),
            limited: def(&l.name, "limited"),
            shadow_limited: def(&l.name, "shadow_limited"),
            errors: def(&l.name, "errors"),
        };
    }
}

fn bump(host: &impl Host, m: Option<MetricId>) {
    if let Some(id) = m {
        host.increment_metric(id, 1);
    }
}

/// Applies a route's limits to a request. `claims` are the verified JWT
/// claims, if any (for `{"claim": ...}` key parts).
pub fn check(
    host: &impl Host,
    limiter: &Limiter,
    route: &str,
    limits: &[LimitPolicy],
    req: &Request,
    claims: Option<&serde_json::Value>,
) -> Decision {
    // (limit, identity, slot) of every token taken, to refund on refusal.
    let mut taken: Vec<(&LimitPolicy, String, u32)> = Vec::with_capacity(limits.len());
    // Most constrained enforced limit: (remaining, reset_ns, limit).
    let mut tightest: Option<(u64, u64, &LimitPolicy)> = None;
    for l in limits {
        let identity = format!(
            "{route}\u{1f}{}\u{1f}{}",
            l.name,
            l.bucket_key(req, claims, limiter.xff_trusted_hops)
        );
        let params = BucketParams {
            capacity: l.capacity,
            refill_tokens: l.refill_tokens,
            refill_interval_ns: l.refill_interval_ns,
        };
        let t = match store::take(host, limiter.slots, &identity, &params, l.cost) {
            Ok(t) => t,
            Err(e) => {
                log::warn!(
                    "meshguard: rate limit {route}/{} failed open: {e:?}",
                    l.name
                );
                bump(host, l.metrics.errors);
                continue;
            }
        };
        if t.evicted {
            host.increment_metric(limiter.evictions, 1);
        }
        if t.take.allowed {
            bump(host, l.metrics.allowed);
            if !l.shadow {
                taken.push((l, identity, t.slot));
            }
        } else if l.shadow {
            bump(host, l.metrics.shadow_limited);
            log::info!(
                "meshguard: shadow rate limit {route}/{} would have refused a request",
                l.name
            );
            continue;
        } else {
            bump(host, l.metrics.limited);
            for (pl, pid, slot) in &taken {
                let pp = BucketParams {
                    capacity: pl.capacity,
                    refill_tokens: pl.refill_tokens,
                    refill_interval_ns: pl.refill_interval_ns,
                };
                if let Err(e) = store::refund(host, *slot, pid, &pp, pl.cost) {
                    log::warn!(
                        "meshguard: rate limit refund {route}/{} failed: {e:?}",
                        pl.name
                    );
                }
            }
            let retry = t.take.retry_after_ns.div_ceil(1_000_000_000).max(1);
            return Decision {
                allowed: false,
                headers: headers(limiter.style, limits, Some((0, t.take.reset_ns, l))),
                refused_by: Some(l.name.clone()),
                retry_after_secs: retry,
            };
        }
        if !l.shadow && tightest.is_none_or(|(r, _, _)| t.take.remaining < r) {
            tightest = Some((t.take.remaining, t.take.reset_ns, l));
        }
    }
    Decision {
        allowed: true,
        headers: headers(limiter.style, limits, tightest),
        refused_by: None,
        retry_after_secs: 0,
    }
}

fn headers(
    style: HeaderStyle,
    limits: &[LimitPolicy],
    tightest: Option<(u64, u64, &LimitPolicy)>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let Some((remaining, reset_ns, l)) = tightest else {
        return out;
    };
    let reset = reset_ns.div_ceil(1_000_000_000);
    if matches!(style, HeaderStyle::Ietf | HeaderStyle::Both) {
        let policy = match &limits.first() {
            Some(first) if !first.policy_header.is_empty() => first.policy_header.to_string(),
            _ => {
                // Limits not built by `config` (tests): compute it here.
                let mut copy = limits.to_vec();
                policy::set_policy_header(&mut copy);
                copy.first()
                    .map(|l| l.policy_header.to_string())
                    .unwrap_or_default()
            }
        };
        out.push(("ratelimit-policy", policy));
        out.push((
            "ratelimit",
            format!("\"{}\";r={remaining};t={reset}", l.name),
        ));
    }
    if matches!(style, HeaderStyle::Legacy | HeaderStyle::Both) {
        out.push(("x-ratelimit-limit", l.capacity.to_string()));
        out.push(("x-ratelimit-remaining", remaining.to_string()));
        out.push(("x-ratelimit-reset", reset.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw::RawRateLimit;
    use crate::host::fake::FakeHost;

    fn limits(json: &str) -> Vec<LimitPolicy> {
        let raw: Vec<RawRateLimit> = serde_json::from_str(json).expect("json");
        raw.iter()
            .enumerate()
            .map(|(i, r)| LimitPolicy::compile(r, i, "r", "p").expect("valid"))
            .collect()
    }

    fn limiter(style: HeaderStyle) -> Limiter {
        Limiter {
            slots: 1000,
            style,
            xff_trusted_hops: 0,
            evictions: MetricId::NONE,
        }
    }

    fn req(key: &str) -> Request {
        Request {
            headers: vec![("x-api-key".into(), key.as_bytes().to_vec())],
            ..Request::default()
        }
    }

    #[test]
    fn refuses_after_capacity_with_retry_after_and_body() {
        let h = FakeHost::new(1);
        let mut ls = limits(
            r#"[{"name": "all", "capacity": 2, "refill_tokens": 1, "refill_interval": "10s"}]"#,
        );
        define_metrics(&h, "api", &mut ls);
        let lim = limiter(HeaderStyle::Ietf);
        assert!(check(&h, &lim, "api", &ls, &req("a"), None).allowed);
        let d = check(&h, &lim, "api", &ls, &req("a"), None);
        assert!(d.allowed);
        assert_eq!(d.headers[1], ("ratelimit", "\"all\";r=0;t=20".to_string()));
        let d = check(&h, &lim, "api", &ls, &req("a"), None);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_secs, 10);
        assert_eq!(d.refused_by.as_deref(), Some("all"));
        assert_eq!(
            d.headers[0],
            ("ratelimit-policy", "\"all\";q=2;w=20".to_string())
        );
        let body: serde_json::Value = serde_json::from_str(&d.body("api")).expect("json");
        assert_eq!(body["error"], "rate_limited");
        assert_eq!(body["retry_after"], 10);
        assert_eq!(h.metric("meshguard.ratelimit.api.all.allowed"), Some(2));
        assert_eq!(h.metric("meshguard.ratelimit.api.all.limited"), Some(1));
    }

    #[test]
    fn keys_separate_buckets() {
        let h = FakeHost::new(1);
        let ls = limits(
            r#"[{"capacity": 1, "refill_interval": "1h", "key": [{"header": "x-api-key"}]}]"#,
        );
        let lim = limiter(HeaderStyle::None);
        assert!(check(&h, &lim, "api", &ls, &req("a"), None).allowed);
        assert!(check(&h, &lim, "api", &ls, &req("b"), None).allowed);
        assert!(!check(&h, &lim, "api", &ls, &req("a"), None).allowed);
        // Missing header = empty key: one shared bucket, never an escape.
        let none = Request::default();
        assert!(check(&h, &lim, "api", &ls, &none, None).allowed);
        assert!(!check(&h, &lim, "api", &ls, &none, None).allowed);
    }

    #[test]
    fn a_refusing_limit_refunds_earlier_limits() {
        let h = FakeHost::new(1);
        let ls = limits(
            r#"[{"name": "big", "capacity": 10, "refill_interval": "1h"},
                {"name": "small", "capacity": 1, "refill_interval": "1h"}]"#,
        );
        let lim = limiter(HeaderStyle::Legacy);
        let d = check(&h, &lim, "api", &ls, &req("a"), None);
        assert!(d.allowed);
        assert_eq!(
            d.headers[1],
            ("x-ratelimit-remaining", "0".to_string()),
            "tightest limit reported"
        );
        for _ in 0..5 {
            assert!(!check(&h, &lim, "api", &ls, &req("a"), None).allowed);
        }
        // "big" lost only the one admitted request's token.
        let only_big = &ls[..1];
        let d = check(&h, &lim, "api", only_big, &req("a"), None);
        assert_eq!(d.headers[1], ("x-ratelimit-remaining", "8".to_string()));
    }

    #[test]
    fn shadow_limits_count_but_never_refuse() {
        let h = FakeHost::new(1);
        let mut ls =
            limits(r#"[{"name": "s", "capacity": 1, "refill_interval": "1h", "shadow": true}]"#);
        define_metrics(&h, "api", &mut ls);
        let lim = limiter(HeaderStyle::Both);
        for _ in 0..3 {
            let d = check(&h, &lim, "api", &ls, &req("a"), None);
            assert!(d.allowed);
            assert!(
                d.headers.is_empty(),
                "shadow limits are invisible to clients"
            );
        }
        assert_eq!(
            h.metric("meshguard.ratelimit.api.s.shadow_limited"),
            Some(2)
        );
    }

    #[test]
    fn fails_open_when_shared_data_breaks() {
        let h = FakeHost::new(1);
        let mut ls = limits(r#"[{"name": "all", "capacity": 1, "refill_interval": "1h"}]"#);
        define_metrics(&h, "api", &mut ls);
        h.set_broken(true);
        let lim = limiter(HeaderStyle::Ietf);
        for _ in 0..3 {
            assert!(check(&h, &lim, "api", &ls, &req("a"), None).allowed);
        }
        assert_eq!(h.metric("meshguard.ratelimit.api.all.errors"), Some(3));
    }

    #[test]
    fn claims_feed_keys() {
        let h = FakeHost::new(1);
        let ls = limits(r#"[{"capacity": 1, "refill_interval": "1h", "key": [{"claim": "sub"}]}]"#);
        let lim = limiter(HeaderStyle::None);
        let alice = serde_json::json!({"sub": "alice"});
        let bob = serde_json::json!({"sub": "bob"});
        assert!(check(&h, &lim, "api", &ls, &req(""), Some(&alice)).allowed);
        assert!(check(&h, &lim, "api", &ls, &req(""), Some(&bob)).allowed);
        assert!(!check(&h, &lim, "api", &ls, &req(""), Some(&alice)).allowed);
    }
}
