//! Token-bucket rate limiting, exact across all worker threads of one Envoy
//! process (docs/configuration.md, "Rate limiting": `routes[].rate_limit[]`).
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
//! - `usage`: the request's real cost is read from its response (a header,
//!   a JSON field, the last server-sent event carrying it) and settled
//!   when the response ends; `cost` is then the estimate (`usage.rs`).
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
pub mod lease;
pub mod meter;
pub mod policy;
pub mod rls;
pub mod store;
pub(crate) mod text;
pub mod usage;

use crate::host::{Host, MetricId, MetricKind};
use crate::request::{ClientIpRule, Request};
use bucket::BucketParams;
pub use policy::{HeaderStyle, KeyPart, LimitMetrics, LimitPolicy};

/// The verdict for one request on one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Headers to add to the response (the 429, or the upstream's).
    pub headers: Vec<(&'static str, String)>,
    /// Headers the rate limit service asked to add to the response.
    pub service_headers: Vec<(String, String)>,
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
    pub client_ip: ClientIpRule,
    pub evictions: MetricId,
}

/// Defines the per-limit metrics of a route (once, at configuration time):
/// one [`LimitMetrics`] per limit, in the order of `limits`, for the
/// functions below (the filter keeps them; the policies stay as compiled).
pub fn define_metrics(host: &impl Host, route: &str, limits: &[LimitPolicy]) -> Vec<LimitMetrics> {
    let def = |l: &str, what: &str| {
        host.define_metric(
            MetricKind::Counter,
            &format!("meshguard.ratelimit.{route}.{l}.{what}"),
        )
        .ok()
    };
    limits
        .iter()
        .map(|l| LimitMetrics {
            allowed: def(&l.name, "allowed"),
            limited: def(&l.name, "limited"),
            shadow_limited: def(&l.name, "shadow_limited"),
            errors: def(&l.name, "errors"),
        })
        .collect()
}

/// Limit `i`'s metrics (none when `metrics` has no entry for it).
fn metrics_of(metrics: &[LimitMetrics], i: usize) -> &LimitMetrics {
    const NONE: &LimitMetrics = &LimitMetrics {
        allowed: None,
        limited: None,
        shadow_limited: None,
        errors: None,
    };
    metrics.get(i).unwrap_or(NONE)
}

fn bump(host: &impl Host, m: Option<MetricId>) {
    if let Some(id) = m {
        host.increment_metric(id, 1);
    }
}

/// A local limit that took tokens for a request (given back if a later
/// limit, local or global, refuses it).
#[derive(Debug, Clone)]
pub struct Taken {
    /// Index of the limit in the route's local limits.
    pub limit: usize,
    /// The request's bucket key for that limit (its identity is the limit's
    /// `identity_prefix` followed by this; empty for unkeyed limits).
    pub key: String,
    pub slot: u32,
}

/// Which limit a [`Tightest`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitRef {
    /// Index in the route's local limits.
    Local(usize),
    /// Index in the route's global limits.
    Global(usize),
}

/// The most constrained enforced limit of a request so far (for the
/// rate-limit headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tightest {
    pub of: LimitRef,
    pub remaining: u64,
    pub reset_secs: u64,
    /// The limit's size (`capacity`, or the service's requests per unit).
    pub limit: u64,
}

impl Tightest {
    /// The limit's name.
    fn name<'a>(&self, local: &'a [LimitPolicy], global: &'a [LimitPolicy]) -> &'a str {
        let l = match self.of {
            LimitRef::Local(i) => local.get(i),
            LimitRef::Global(i) => global.get(i),
        };
        l.map_or("", |l| l.name.as_str())
    }
}

/// The local limits that took tokens for a request: the first one inline
/// (a route with one limit allocates nothing), more in a `Vec`.
#[derive(Debug, Clone, Default)]
pub struct TakenList {
    first: Option<Taken>,
    rest: Vec<Taken>,
}

impl TakenList {
    pub fn push(&mut self, t: Taken) {
        if self.first.is_none() {
            self.first = Some(t);
        } else {
            self.rest.push(t);
        }
    }

    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// In the order they were pushed.
    pub fn iter(&self) -> impl Iterator<Item = &Taken> {
        self.first.iter().chain(self.rest.iter())
    }
}

/// What the local limits did with a request.
#[derive(Debug)]
pub enum LocalOutcome {
    /// A local limit refused it (earlier tokens already given back).
    Refused(Decision),
    /// Every local limit admitted it.
    Admitted(Admitted),
}

#[derive(Debug, Default)]
pub struct Admitted {
    pub taken: TakenList,
    pub tightest: Option<Tightest>,
}

impl Admitted {
    /// The rate-limit headers for this request, as numbers (see
    /// [`HeaderValues`]); `None` when there are none to send.
    pub fn header_values(&self, style: HeaderStyle) -> Option<HeaderValues> {
        match style {
            HeaderStyle::None => None,
            _ => self
                .tightest
                .map(|tightest| HeaderValues { style, tightest }),
        }
    }
}

/// The headers [`admitted_headers`] gives for a request every local limit
/// admitted, kept as numbers until the response is written: small, `Copy`,
/// and written without any allocation by [`HeaderValues::for_each`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderValues {
    style: HeaderStyle,
    tightest: Tightest,
}

/// Room on the stack for a `RateLimit` value: a name (at most 64 bytes in a
/// valid configuration) and two numbers.
const RATELIMIT_VALUE_MAX: usize = 128;

impl HeaderValues {
    /// Calls `f(name, value)` for each header, in the order and with the
    /// bytes [`admitted_headers`] gives them (`limits`: the route's local
    /// limits, as given to [`check_local`]).
    pub fn for_each(&self, limits: &[LimitPolicy], mut f: impl FnMut(&'static str, &[u8])) {
        let t = &self.tightest;
        let ietf = matches!(self.style, HeaderStyle::Ietf | HeaderStyle::Both);
        let legacy = matches!(self.style, HeaderStyle::Legacy | HeaderStyle::Both);
        if ietf {
            let policy = policy_of(limits, &[]);
            if !policy.is_empty() {
                f("ratelimit-policy", policy.as_bytes());
            }
            let name = t.name(limits, &[]);
            let r = text::Decimal::new(t.remaining);
            let reset = text::Decimal::new(t.reset_secs);
            let parts: [&[u8]; 6] = [
                b"\"",
                name.as_bytes(),
                b"\";r=",
                r.as_bytes(),
                b";t=",
                reset.as_bytes(),
            ];
            let len: usize = parts.iter().map(|p| p.len()).sum();
            if len <= RATELIMIT_VALUE_MAX {
                let mut buf = [0u8; RATELIMIT_VALUE_MAX];
                let mut at = 0;
                for p in parts {
                    if let Some(dst) = buf.get_mut(at..at + p.len()) {
                        dst.copy_from_slice(p);
                    }
                    at += p.len();
                }
                f("ratelimit", buf.get(..len).unwrap_or(&[]));
            } else {
                f("ratelimit", &parts.concat());
            }
        }
        if legacy {
            f("x-ratelimit-limit", text::Decimal::new(t.limit).as_bytes());
            f(
                "x-ratelimit-remaining",
                text::Decimal::new(t.remaining).as_bytes(),
            );
            f(
                "x-ratelimit-reset",
                text::Decimal::new(t.reset_secs).as_bytes(),
            );
        }
    }
}

fn params(l: &LimitPolicy) -> BucketParams {
    BucketParams {
        capacity: l.capacity,
        refill_tokens: l.refill_tokens,
        refill_interval_ns: l.refill_interval_ns,
    }
}

/// The start of limit `l`'s bucket identities on `route`, and its hash: the
/// one `compile` built, or (limits compiled for another route name, as in
/// tests) built here.
fn prefix_of<'a>(l: &'a LimitPolicy, route: &str) -> (std::borrow::Cow<'a, str>, u64) {
    let p: &str = &l.identity_prefix;
    let b = p.as_bytes();
    let built_for_route = b.len() == route.len() + l.name.len() + 2
        && b.get(..route.len()) == Some(route.as_bytes())
        && b.get(route.len()) == Some(&0x1f)
        && b.get(route.len() + 1..b.len() - 1) == Some(l.name.as_bytes())
        && b.last() == Some(&0x1f);
    if built_for_route {
        (std::borrow::Cow::Borrowed(p), l.identity_prefix_hash)
    } else {
        build_prefix(l, route)
    }
}

#[cold]
#[inline(never)]
fn build_prefix<'a>(l: &LimitPolicy, route: &str) -> (std::borrow::Cow<'a, str>, u64) {
    let p = policy::identity_prefix(route, &l.name);
    let h = store::fnv1a(p.as_bytes());
    (std::borrow::Cow::Owned(p), h)
}

/// Applies a route's local limits and builds the final decision (routes
/// without global limits). `metrics`: the limits' counters (from
/// [`define_metrics`]); `claims` are the verified JWT claims, if any (for
/// `{"claim": ...}` key parts).
pub fn check(
    host: &impl Host,
    limiter: &Limiter,
    route: &str,
    limits: &[LimitPolicy],
    metrics: &[LimitMetrics],
    req: &Request,
    claims: Option<&crate::jwt::claims::Claims>,
) -> Decision {
    match check_local(host, limiter, route, limits, metrics, req, claims) {
        LocalOutcome::Refused(d) => d,
        LocalOutcome::Admitted(a) => admitted(limiter.style, limits, &a),
    }
}

/// The decision for a request every local limit admitted (no global ones).
pub fn admitted(style: HeaderStyle, limits: &[LimitPolicy], a: &Admitted) -> Decision {
    let mut headers = Vec::new();
    admitted_headers(style, limits, a, &mut headers);
    Decision {
        allowed: true,
        headers,
        service_headers: Vec::new(),
        refused_by: None,
        retry_after_secs: 0,
    }
}

/// Appends the headers of [`admitted`]`(style, limits, a)` to `out`: the
/// same headers, in the same order, without the `Decision` around them
/// (for callers that collect response headers in a list of their own).
pub fn admitted_headers(
    style: HeaderStyle,
    limits: &[LimitPolicy],
    a: &Admitted,
    out: &mut Vec<(&'static str, String)>,
) {
    let Some(t) = a.tightest.as_ref() else {
        return;
    };
    push_headers(
        out,
        style,
        &policy_of(limits, &[]),
        Some((t.name(limits, &[]), t)),
    );
}

/// Takes tokens from every local limit of a route, in order (`metrics`:
/// theirs, from [`define_metrics`]).
pub fn check_local(
    host: &impl Host,
    limiter: &Limiter,
    route: &str,
    limits: &[LimitPolicy],
    metrics: &[LimitMetrics],
    req: &Request,
    claims: Option<&crate::jwt::claims::Claims>,
) -> LocalOutcome {
    let mut admitted = Admitted::default();
    for (i, l) in limits.iter().enumerate() {
        let m = metrics_of(metrics, i);
        let (prefix, prefix_hash) = prefix_of(l, route);
        let mut key = String::new();
        if !l.key.is_empty() {
            // Most keys fit: one allocation, no growth.
            key.reserve(64);
            l.push_bucket_key(req, claims, limiter.client_ip, &mut key);
        }
        let identity = store::Identity {
            prefix: &prefix,
            prefix_hash,
            key: &key,
        };
        let t = match store::take_id(host, limiter.slots, &identity, &params(l), l.cost) {
            Ok(t) => t,
            Err(e) => {
                log::warn!(
                    "meshguard: rate limit {route}/{} failed open: {e:?}",
                    l.name
                );
                bump(host, m.errors);
                continue;
            }
        };
        if t.evicted {
            host.increment_metric(limiter.evictions, 1);
        }
        if t.take.allowed {
            bump(host, m.allowed);
            if !l.shadow {
                admitted.taken.push(Taken {
                    limit: i,
                    key,
                    slot: t.slot,
                });
            }
        } else if l.shadow {
            bump(host, m.shadow_limited);
            log::info!(
                "meshguard: shadow rate limit {route}/{} would have refused a request",
                l.name
            );
            continue;
        } else {
            bump(host, m.limited);
            refund(host, route, limits, &admitted.taken);
            let retry = t.take.retry_after_ns.div_ceil(1_000_000_000).max(1);
            let tight = Tightest {
                of: LimitRef::Local(i),
                remaining: 0,
                reset_secs: t.take.reset_ns.div_ceil(1_000_000_000),
                limit: l.capacity,
            };
            let mut headers = Vec::new();
            push_headers(
                &mut headers,
                limiter.style,
                &policy_of(limits, &[]),
                Some((&l.name, &tight)),
            );
            return LocalOutcome::Refused(Decision {
                allowed: false,
                headers,
                service_headers: Vec::new(),
                refused_by: Some(l.name.clone()),
                retry_after_secs: retry,
            });
        }
        let reset_secs = t.take.reset_ns.div_ceil(1_000_000_000);
        if !l.shadow
            && admitted
                .tightest
                .as_ref()
                .is_none_or(|b| t.take.remaining < b.remaining)
        {
            admitted.tightest = Some(Tightest {
                of: LimitRef::Local(i),
                remaining: t.take.remaining,
                reset_secs,
                limit: l.capacity,
            });
        }
    }
    LocalOutcome::Admitted(admitted)
}

/// Gives back the tokens a request took from local limits.
pub fn refund(host: &impl Host, route: &str, limits: &[LimitPolicy], taken: &TakenList) {
    for t in taken.iter() {
        let Some(l) = limits.get(t.limit) else {
            continue;
        };
        let (prefix, prefix_hash) = prefix_of(l, route);
        let identity = store::Identity {
            prefix: &prefix,
            prefix_hash,
            key: &t.key,
        };
        if let Err(e) = store::refund_id(host, t.slot, &identity, &params(l), l.cost) {
            log::warn!(
                "meshguard: rate limit refund {route}/{} failed: {e:?}",
                l.name
            );
        }
    }
}

/// Combines local admission with the rate limit service's verdict on the
/// route's global limits: counts each global limit (`global_metrics`:
/// theirs), gives local tokens back when the service refuses, and builds
/// the decision.
#[allow(clippy::too_many_arguments)]
pub fn apply_verdict(
    host: &impl Host,
    style: HeaderStyle,
    route: &str,
    local: &[LimitPolicy],
    global: &[LimitPolicy],
    global_metrics: &[LimitMetrics],
    admitted: &Admitted,
    verdict: &rls::Verdict,
) -> Decision {
    let mut refusing: Option<(usize, &LimitPolicy, &rls::LimitStatus)> = None;
    let mut tightest = admitted.tightest;
    for (i, (l, st)) in global.iter().zip(&verdict.statuses).enumerate() {
        let m = metrics_of(global_metrics, i);
        if st.over && l.shadow {
            bump(host, m.shadow_limited);
            log::info!(
                "meshguard: shadow global rate limit {route}/{} would have refused a request",
                l.name
            );
            continue;
        }
        if st.over {
            bump(host, m.limited);
            refusing = refusing.or(Some((i, l, st)));
            continue;
        }
        bump(host, m.allowed);
        if let Some((size, unit)) = st.limit.filter(|_| !l.shadow) {
            if tightest.as_ref().is_none_or(|b| st.remaining < b.remaining) {
                tightest = Some(Tightest {
                    of: LimitRef::Global(i),
                    remaining: st.remaining,
                    reset_secs: st.reset_secs.unwrap_or(unit),
                    limit: size,
                });
            }
        }
    }
    let policy = policy_of(local, &global_policy_items(global, verdict));
    let mut headers = Vec::new();
    match refusing {
        Some((i, l, st)) => {
            refund(host, route, local, &admitted.taken);
            let retry = st
                .reset_secs
                .or(st.limit.map(|(_, unit)| unit))
                .unwrap_or(1)
                .max(1);
            let tight = Tightest {
                of: LimitRef::Global(i),
                remaining: 0,
                reset_secs: retry,
                limit: st.limit.map_or(0, |(size, _)| size),
            };
            push_headers(
                &mut headers,
                style,
                &policy,
                st.limit.map(|_| (l.name.as_str(), &tight)),
            );
            Decision {
                allowed: false,
                headers,
                service_headers: verdict.response_headers.clone(),
                refused_by: Some(l.name.clone()),
                retry_after_secs: retry,
            }
        }
        None => {
            push_headers(
                &mut headers,
                style,
                &policy,
                tightest.as_ref().map(|t| (t.name(local, global), t)),
            );
            Decision {
                allowed: true,
                headers,
                service_headers: verdict.response_headers.clone(),
                refused_by: None,
                retry_after_secs: 0,
            }
        }
    }
}

/// The call to the service failed: counts it on every global limit
/// (`global_metrics`: theirs) and applies `failure_mode`. Allowed: the
/// local headers only. Denied: the local tokens are given back and the
/// caller answers 503.
#[allow(clippy::too_many_arguments)]
pub fn apply_failure(
    host: &impl Host,
    style: HeaderStyle,
    route: &str,
    local: &[LimitPolicy],
    global: &[LimitPolicy],
    global_metrics: &[LimitMetrics],
    admitted: &Admitted,
    deny: bool,
) -> Decision {
    for i in 0..global.len() {
        bump(host, metrics_of(global_metrics, i).errors);
    }
    if deny {
        refund(host, route, local, &admitted.taken);
    }
    let mut headers = Vec::new();
    if !deny {
        admitted_headers(style, local, admitted, &mut headers);
    }
    Decision {
        allowed: !deny,
        headers,
        service_headers: Vec::new(),
        refused_by: None,
        retry_after_secs: if deny { 1 } else { 0 },
    }
}

/// `RateLimit-Policy` items of the global limits the service described.
fn global_policy_items(global: &[LimitPolicy], verdict: &rls::Verdict) -> Vec<String> {
    global
        .iter()
        .zip(&verdict.statuses)
        .filter(|(l, _)| !l.shadow)
        .filter_map(|(l, st)| {
            let (size, unit) = st.limit?;
            Some(format!("\"{}\";q={size};w={unit}", l.name))
        })
        .collect()
}

/// The route's `RateLimit-Policy` value: the local limits' (precomputed at
/// configuration time, borrowed) and `extra` items.
fn policy_of<'a>(local: &'a [LimitPolicy], extra: &[String]) -> std::borrow::Cow<'a, str> {
    use std::borrow::Cow;
    let base: Cow<'a, str> = match local.first() {
        Some(first) if !first.policy_header.is_empty() => Cow::Borrowed(&first.policy_header),
        Some(_) => {
            // Limits not built by `config` (tests): compute it here.
            let mut copy = local.to_vec();
            policy::set_policy_header(&mut copy);
            Cow::Owned(
                copy.first()
                    .map(|l| l.policy_header.to_string())
                    .unwrap_or_default(),
            )
        }
        None => Cow::Borrowed(""),
    };
    if extra.is_empty() {
        return base;
    }
    let mut items: Vec<&str> = Vec::with_capacity(1 + extra.len());
    if !base.is_empty() {
        items.push(&base);
    }
    items.extend(extra.iter().map(String::as_str));
    Cow::Owned(items.join(", "))
}

/// Appends the rate-limit headers of `style` for the limit `tightest` (its
/// name and state) to `out`; nothing without one. Values are built without
/// `core::fmt`, each in a `String` of the right capacity.
fn push_headers(
    out: &mut Vec<(&'static str, String)>,
    style: HeaderStyle,
    policy: &str,
    tightest: Option<(&str, &Tightest)>,
) {
    let Some((name, t)) = tightest else {
        return;
    };
    let ietf = matches!(style, HeaderStyle::Ietf | HeaderStyle::Both);
    let legacy = matches!(style, HeaderStyle::Legacy | HeaderStyle::Both);
    out.reserve(usize::from(ietf) * 2 + usize::from(legacy) * 3);
    if ietf {
        if !policy.is_empty() {
            out.push(("ratelimit-policy", policy.to_string()));
        }
        // "<name>";r=<remaining>;t=<reset>
        let r = text::Decimal::new(t.remaining);
        let reset = text::Decimal::new(t.reset_secs);
        let mut v = String::with_capacity(name.len() + 8 + r.len() + reset.len());
        v.push('"');
        v.push_str(name);
        v.push_str("\";r=");
        r.push_to(&mut v);
        v.push_str(";t=");
        reset.push_to(&mut v);
        out.push(("ratelimit", v));
    }
    if legacy {
        out.push(("x-ratelimit-limit", text::u64_string(t.limit)));
        out.push(("x-ratelimit-remaining", text::u64_string(t.remaining)));
        out.push(("x-ratelimit-reset", text::u64_string(t.reset_secs)));
    }
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
            client_ip: ClientIpRule::default(),
            evictions: MetricId::NONE,
        }
    }

    fn req(key: &str) -> Request {
        Request {
            headers: vec![("x-api-key".into(), key.as_bytes().to_vec())].into(),
            ..Request::default()
        }
    }

    #[test]
    fn refuses_after_capacity_with_retry_after_and_body() {
        let h = FakeHost::new(1);
        let ls = limits(
            r#"[{"name": "all", "capacity": 2, "refill_tokens": 1, "refill_interval": "10s"}]"#,
        );
        let m = define_metrics(&h, "api", &ls);
        let lim = limiter(HeaderStyle::Ietf);
        assert!(check(&h, &lim, "api", &ls, &m, &req("a"), None).allowed);
        let d = check(&h, &lim, "api", &ls, &m, &req("a"), None);
        assert!(d.allowed);
        assert_eq!(d.headers[1], ("ratelimit", "\"all\";r=0;t=20".to_string()));
        let d = check(&h, &lim, "api", &ls, &m, &req("a"), None);
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
    fn header_values_write_what_admitted_gives() {
        let long = "n".repeat(200);
        for style in [
            HeaderStyle::Ietf,
            HeaderStyle::Legacy,
            HeaderStyle::Both,
            HeaderStyle::None,
        ] {
            for json in [
                r#"[{"name": "all", "capacity": 1000000000, "refill_interval": "1s"}]"#.to_string(),
                r#"[{"name": "a", "capacity": 5, "refill_interval": "1h"},
                    {"name": "b", "capacity": 2, "refill_interval": "1m", "cost": 2},
                    {"name": "s", "capacity": 1, "refill_interval": "1s", "shadow": true}]"#
                    .to_string(),
                r#"[{"name": "long", "capacity": 3, "refill_interval": "1s"}]"#.to_string(),
                r#"[{"name": "s", "capacity": 1, "refill_interval": "1s", "shadow": true}]"#
                    .to_string(),
            ] {
                let raw: Vec<RawRateLimit> = serde_json::from_str(&json).expect("json");
                let mut ls: Vec<LimitPolicy> = raw
                    .iter()
                    .enumerate()
                    .map(|(i, r)| LimitPolicy::compile(r, i, "api", "p").expect("valid"))
                    .collect();
                if json.contains("\"long\"") {
                    // Longer than any valid name: the value no longer fits
                    // on the stack.
                    ls[0].name = long.clone();
                }
                if json.contains("\"a\"") {
                    policy::set_policy_header(&mut ls);
                }
                let h = FakeHost::new(1);
                for _ in 0..3 {
                    let LocalOutcome::Admitted(a) =
                        check_local(&h, &limiter(style), "api", &ls, &[], &req("k"), None)
                    else {
                        continue;
                    };
                    let want = admitted(style, &ls, &a).headers;
                    let mut got: Vec<(&'static str, String)> = Vec::new();
                    if let Some(v) = a.header_values(style) {
                        v.for_each(&ls, |n, b| {
                            got.push((n, String::from_utf8(b.to_vec()).expect("utf8")))
                        });
                    }
                    assert_eq!(got, want, "{style:?} {json}");
                }
            }
        }
    }

    #[test]
    fn admitted_headers_append_what_admitted_gives() {
        let h = FakeHost::new(1);
        let ls = limits(r#"[{"name": "all", "capacity": 3, "refill_interval": "1s"}]"#);
        let LocalOutcome::Admitted(a) = check_local(
            &h,
            &limiter(HeaderStyle::Both),
            "api",
            &ls,
            &[],
            &req("a"),
            None,
        ) else {
            panic!("refused");
        };
        let mut out = vec![("cache-status", "x".to_string())];
        admitted_headers(HeaderStyle::Both, &ls, &a, &mut out);
        let want = admitted(HeaderStyle::Both, &ls, &a).headers;
        assert_eq!(out[0], ("cache-status", "x".to_string()));
        assert_eq!(&out[1..], &want[..]);
        assert_eq!(
            want,
            vec![
                ("ratelimit-policy", "\"all\";q=3;w=1".to_string()),
                ("ratelimit", "\"all\";r=2;t=1".to_string()),
                ("x-ratelimit-limit", "3".to_string()),
                ("x-ratelimit-remaining", "2".to_string()),
                ("x-ratelimit-reset", "1".to_string()),
            ]
        );
    }

    #[test]
    fn identities_are_route_limit_and_key_whatever_the_compiled_route() {
        // Compiled for route "r", used on "api": the identity follows the
        // route it is used on (as before the prefix was precomputed).
        let h = FakeHost::new(1);
        let ls = limits(
            r#"[{"name": "l", "capacity": 2, "refill_interval": "1h", "key": [{"header": "x-api-key"}]}]"#,
        );
        let lim = limiter(HeaderStyle::None);
        assert!(check(&h, &lim, "api", &ls, &[], &req("k"), None).allowed);
        let t =
            store::take(&h, lim.slots, "api\u{1f}l\u{1f}1:k", &params(&ls[0]), 1).expect("take");
        assert!(t.take.allowed && t.take.remaining == 0, "{t:?}");
        assert!(!check(&h, &lim, "api", &ls, &[], &req("k"), None).allowed);
        // On its own route the precomputed prefix is used, with the same result.
        let (p, hash) = prefix_of(&ls[0], "r");
        assert!(matches!(p, std::borrow::Cow::Borrowed(_)));
        assert_eq!(
            (&*p, hash),
            ("r\u{1f}l\u{1f}", store::fnv1a("r\u{1f}l\u{1f}".as_bytes()))
        );
        let (p, _) = prefix_of(&ls[0], "api");
        assert_eq!(&*p, "api\u{1f}l\u{1f}");
        let (p, _) = prefix_of(&ls[0], "r\u{1f}l");
        assert_eq!(&*p, "r\u{1f}l\u{1f}l\u{1f}");
    }

    #[test]
    fn keys_separate_buckets() {
        let h = FakeHost::new(1);
        let ls = limits(
            r#"[{"capacity": 1, "refill_interval": "1h", "key": [{"header": "x-api-key"}]}]"#,
        );
        let lim = limiter(HeaderStyle::None);
        assert!(check(&h, &lim, "api", &ls, &[], &req("a"), None).allowed);
        assert!(check(&h, &lim, "api", &ls, &[], &req("b"), None).allowed);
        assert!(!check(&h, &lim, "api", &ls, &[], &req("a"), None).allowed);
        // Missing header = empty key: one shared bucket, never an escape.
        let none = Request::default();
        assert!(check(&h, &lim, "api", &ls, &[], &none, None).allowed);
        assert!(!check(&h, &lim, "api", &ls, &[], &none, None).allowed);
    }

    #[test]
    fn a_refusing_limit_refunds_earlier_limits() {
        let h = FakeHost::new(1);
        let ls = limits(
            r#"[{"name": "big", "capacity": 10, "refill_interval": "1h"},
                {"name": "small", "capacity": 1, "refill_interval": "1h"}]"#,
        );
        let lim = limiter(HeaderStyle::Legacy);
        let d = check(&h, &lim, "api", &ls, &[], &req("a"), None);
        assert!(d.allowed);
        assert_eq!(
            d.headers[1],
            ("x-ratelimit-remaining", "0".to_string()),
            "tightest limit reported"
        );
        for _ in 0..5 {
            assert!(!check(&h, &lim, "api", &ls, &[], &req("a"), None).allowed);
        }
        // "big" lost only the one admitted request's token.
        let only_big = &ls[..1];
        let d = check(&h, &lim, "api", only_big, &[], &req("a"), None);
        assert_eq!(d.headers[1], ("x-ratelimit-remaining", "8".to_string()));
    }

    #[test]
    fn shadow_limits_count_but_never_refuse() {
        let h = FakeHost::new(1);
        let ls =
            limits(r#"[{"name": "s", "capacity": 1, "refill_interval": "1h", "shadow": true}]"#);
        let m = define_metrics(&h, "api", &ls);
        let lim = limiter(HeaderStyle::Both);
        for _ in 0..3 {
            let d = check(&h, &lim, "api", &ls, &m, &req("a"), None);
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
        let ls = limits(r#"[{"name": "all", "capacity": 1, "refill_interval": "1h"}]"#);
        let m = define_metrics(&h, "api", &ls);
        h.set_broken(true);
        let lim = limiter(HeaderStyle::Ietf);
        for _ in 0..3 {
            assert!(check(&h, &lim, "api", &ls, &m, &req("a"), None).allowed);
        }
        assert_eq!(h.metric("meshguard.ratelimit.api.all.errors"), Some(3));
    }

    #[test]
    fn claims_feed_keys() {
        let h = FakeHost::new(1);
        let ls = limits(r#"[{"capacity": 1, "refill_interval": "1h", "key": [{"claim": "sub"}]}]"#);
        let lim = limiter(HeaderStyle::None);
        let claims = |v| crate::jwt::claims::Claims::from_value(&v).expect("object");
        let alice = claims(serde_json::json!({"sub": "alice"}));
        let bob = claims(serde_json::json!({"sub": "bob"}));
        assert!(check(&h, &lim, "api", &ls, &[], &req(""), Some(&alice)).allowed);
        assert!(check(&h, &lim, "api", &ls, &[], &req(""), Some(&bob)).allowed);
        assert!(!check(&h, &lim, "api", &ls, &[], &req(""), Some(&alice)).allowed);
    }
    fn verdict(statuses: Vec<rls::LimitStatus>) -> rls::Verdict {
        rls::Verdict {
            statuses,
            response_headers: vec![("x-rls".into(), "1".into())],
            request_headers: vec![],
        }
    }

    fn st(
        over: bool,
        limit: Option<(u64, u64)>,
        remaining: u64,
        reset: Option<u64>,
    ) -> rls::LimitStatus {
        rls::LimitStatus {
            over,
            limit,
            remaining,
            reset_secs: reset,
        }
    }

    fn admit(h: &FakeHost, local: &[LimitPolicy]) -> Admitted {
        match check_local(
            h,
            &limiter(HeaderStyle::Ietf),
            "api",
            local,
            &[],
            &req("a"),
            None,
        ) {
            LocalOutcome::Admitted(a) => a,
            LocalOutcome::Refused(d) => panic!("refused: {d:?}"),
        }
    }

    #[test]
    fn global_refusal_gives_local_tokens_back() {
        let h = FakeHost::new(1);
        let local = limits(r#"[{"name": "burst", "capacity": 2, "refill_interval": "1h"}]"#);
        let global = limits(r#"[{"name": "g", "scope": "global"}]"#);
        let m = define_metrics(&h, "api", &global);
        let a = admit(&h, &local);
        assert_eq!(a.taken.len(), 1);
        let v = verdict(vec![st(true, Some((10, 60)), 0, Some(42))]);
        let d = apply_verdict(&h, HeaderStyle::Both, "api", &local, &global, &m, &a, &v);
        assert!(!d.allowed);
        assert_eq!(d.refused_by.as_deref(), Some("g"));
        assert_eq!(d.retry_after_secs, 42);
        assert_eq!(
            d.headers,
            vec![
                (
                    "ratelimit-policy",
                    "\"burst\";q=2;w=3600, \"g\";q=10;w=60".to_string()
                ),
                ("ratelimit", "\"g\";r=0;t=42".to_string()),
                ("x-ratelimit-limit", "10".to_string()),
                ("x-ratelimit-remaining", "0".to_string()),
                ("x-ratelimit-reset", "42".to_string()),
            ]
        );
        assert_eq!(
            d.service_headers,
            vec![("x-rls".to_string(), "1".to_string())]
        );
        assert_eq!(h.metric("meshguard.ratelimit.api.g.limited"), Some(1));
        // The local token came back: two more requests fit in "burst".
        admit(&h, &local);
        admit(&h, &local);
        assert!(matches!(
            check_local(
                &h,
                &limiter(HeaderStyle::Ietf),
                "api",
                &local,
                &[],
                &req("a"),
                None
            ),
            LocalOutcome::Refused(_)
        ));
    }

    #[test]
    fn global_headers_report_the_tightest_limit() {
        let h = FakeHost::new(1);
        let local = limits(r#"[{"name": "burst", "capacity": 100, "refill_interval": "1s"}]"#);
        let global =
            limits(r#"[{"name": "g", "scope": "global"}, {"name": "h", "scope": "global"}]"#);
        let m = define_metrics(&h, "api", &global);
        let a = admit(&h, &local);
        let v = verdict(vec![
            st(false, Some((50, 60)), 3, Some(20)),
            st(false, None, 0, None),
        ]);
        let d = apply_verdict(&h, HeaderStyle::Ietf, "api", &local, &global, &m, &a, &v);
        assert!(d.allowed);
        assert_eq!(
            d.headers,
            vec![
                (
                    "ratelimit-policy",
                    "\"burst\";q=100;w=1, \"g\";q=50;w=60".to_string()
                ),
                ("ratelimit", "\"g\";r=3;t=20".to_string()),
            ]
        );
        assert_eq!(h.metric("meshguard.ratelimit.api.g.allowed"), Some(1));
        assert_eq!(h.metric("meshguard.ratelimit.api.h.allowed"), Some(1));
    }

    #[test]
    fn retry_after_falls_back_to_the_unit_then_one_second() {
        let h = FakeHost::new(1);
        let global = limits(r#"[{"name": "g", "scope": "global"}]"#);
        let a = Admitted::default();
        let unit = verdict(vec![st(true, Some((5, 3600)), 0, None)]);
        let d = apply_verdict(&h, HeaderStyle::None, "api", &[], &global, &[], &a, &unit);
        assert_eq!((d.allowed, d.retry_after_secs), (false, 3600));
        assert!(d.headers.is_empty());
        let bare = verdict(vec![st(true, None, 0, None)]);
        let d = apply_verdict(&h, HeaderStyle::Ietf, "api", &[], &global, &[], &a, &bare);
        assert_eq!((d.allowed, d.retry_after_secs), (false, 1));
        assert!(d.headers.is_empty(), "no limit described: no headers");
        let body: serde_json::Value = serde_json::from_str(&d.body("api")).expect("json");
        assert_eq!(body["limit"], "g");
    }

    #[test]
    fn shadow_global_limits_never_refuse() {
        let h = FakeHost::new(1);
        let global = limits(
            r#"[{"name": "s", "scope": "global", "shadow": true}, {"name": "g", "scope": "global"}]"#,
        );
        let m = define_metrics(&h, "api", &global);
        let v = verdict(vec![
            st(true, Some((1, 1)), 0, Some(1)),
            st(false, Some((9, 1)), 8, Some(1)),
        ]);
        let d = apply_verdict(
            &h,
            HeaderStyle::Ietf,
            "api",
            &[],
            &global,
            &m,
            &Admitted::default(),
            &v,
        );
        assert!(d.allowed);
        assert_eq!(
            d.headers,
            vec![
                ("ratelimit-policy", "\"g\";q=9;w=1".to_string()),
                ("ratelimit", "\"g\";r=8;t=1".to_string()),
            ],
            "shadow limits are invisible to clients"
        );
        assert_eq!(
            h.metric("meshguard.ratelimit.api.s.shadow_limited"),
            Some(1)
        );
        assert_eq!(h.metric("meshguard.ratelimit.api.s.limited"), Some(0));
    }

    #[test]
    fn failure_mode_allow_keeps_local_headers_and_deny_refunds() {
        let h = FakeHost::new(1);
        let local = limits(r#"[{"name": "burst", "capacity": 1, "refill_interval": "1h"}]"#);
        let global = limits(r#"[{"name": "g", "scope": "global"}]"#);
        let m = define_metrics(&h, "api", &global);
        let a = admit(&h, &local);
        let d = apply_failure(&h, HeaderStyle::Ietf, "api", &local, &global, &m, &a, false);
        assert!(d.allowed);
        assert_eq!(
            d.headers[1],
            ("ratelimit", "\"burst\";r=0;t=3600".to_string())
        );
        assert_eq!(h.metric("meshguard.ratelimit.api.g.errors"), Some(1));
        // deny: the token taken by "burst" is given back.
        let d = apply_failure(&h, HeaderStyle::Ietf, "api", &local, &global, &m, &a, true);
        assert!(!d.allowed && d.headers.is_empty());
        admit(&h, &local);
        assert_eq!(h.metric("meshguard.ratelimit.api.g.errors"), Some(2));
    }
}
