//! Validated rate-limit configuration: one [`LimitPolicy`] per entry of a
//! route's `rate_limit` list, and how its bucket key is built.

use super::store::fnv1a;
use super::text::Decimal;
use crate::config::raw::{RawKeyPart, RawRateLimit};
use crate::config::{show_str, valid_name, ConfigError, NAME_EXPECTED};
use crate::grpc;
use crate::host::MetricId;
use crate::request::{ClientIpRule, Request};
use std::collections::HashSet;

/// Largest capacity / refill / cost accepted: keeps the bucket arithmetic
/// (tokens x interval in nanoseconds) far from overflow.
pub const MAX_TOKENS: i64 = 1_000_000_000;
/// Longest refill interval accepted (one year).
pub const MAX_INTERVAL_NS: u64 = 366 * 24 * 3600 * 1_000_000_000;
/// Longest value kept from one key part; longer values are hashed.
pub const MAX_KEY_PART: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub enum KeyPart {
    ClientIp,
    Path,
    Method,
    /// The gRPC service of the path (`/<service>/<method>`), "" otherwise.
    GrpcService,
    /// The gRPC method of the path, "" otherwise.
    GrpcMethod,
    Header(String),
    Query(String),
    Cookie(String),
    Claim(Vec<String>),
    Constant(String),
}

/// Where a limit is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// A token bucket in this Envoy process's shared data.
    #[default]
    Local,
    /// The rate limit service (`rate_limit_service`), shared by every
    /// replica; its own configuration sets the rate.
    Global,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LimitMetrics {
    pub allowed: Option<MetricId>,
    pub limited: Option<MetricId>,
    pub shadow_limited: Option<MetricId>,
    pub errors: Option<MetricId>,
}

#[derive(Debug, Clone)]
pub struct LimitPolicy {
    pub name: String,
    pub scope: Scope,
    pub key: Vec<KeyPart>,
    /// Bucket parameters (local limits; 0 for global ones).
    pub capacity: u64,
    pub refill_tokens: u64,
    pub refill_interval_ns: u64,
    pub cost: u64,
    pub shadow: bool,
    /// The route's `RateLimit-Policy` value (same for every limit of the
    /// route), built once at configuration time by [`set_policy_header`].
    pub policy_header: std::sync::Arc<str>,
    /// `<route>\u{1f}<name>\u{1f}`: how every bucket identity of this limit
    /// starts (the request's bucket key follows), built by [`Self::compile`].
    pub identity_prefix: std::sync::Arc<str>,
    /// `fnv1a(identity_prefix)`, to hash an identity from its key alone.
    pub identity_prefix_hash: u64,
    /// Global limits: the hits leased at once (`lease`), 0 = one call per
    /// request (`lease.rs`).
    pub lease: u64,
    /// Usage-based cost (`usage`): `cost` is then the estimate.
    pub usage: Option<super::meter::UsagePolicy>,
}

/// The start of a bucket identity (see [`LimitPolicy::identity_prefix`]).
pub fn identity_prefix(route: &str, name: &str) -> String {
    // Configuration time only: the formatting machinery is in the module anyway.
    format!("{route}\u{1f}{name}\u{1f}")
}

/// Which rate-limit response headers to send (`rate_limit_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStyle {
    Ietf,
    Legacy,
    Both,
    None,
}

impl HeaderStyle {
    /// The top-level `rate_limit_headers` (default `ietf`).
    pub fn compile(raw: Option<&str>) -> Result<HeaderStyle, ConfigError> {
        match raw {
            None => Ok(HeaderStyle::Ietf),
            Some(style) => HeaderStyle::parse(style).ok_or_else(|| {
                ConfigError::expected(
                    "rate_limit_headers",
                    "one of \"ietf\", \"legacy\", \"both\", \"none\"",
                    show_str(style),
                )
            }),
        }
    }

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

/// Bounds that keep per-request work and shared memory predictable.
pub const MAX_LIMITS_PER_ROUTE: usize = 16;
pub const DEFAULT_MAX_RATE_LIMIT_KEYS: u32 = 10_000;
pub const MAX_RATE_LIMIT_KEYS: u64 = 1_000_000;
/// Largest `lease` of a global limit (`lease.rs`).
pub const MAX_LEASE: u64 = 1_000_000;

/// A route's limits, compiled: local ones in order, then global ones (the
/// rate limit service counts them, after the local ones).
#[derive(Debug, Default)]
pub struct RouteLimits {
    pub local: Vec<LimitPolicy>,
    pub global: Vec<LimitPolicy>,
}

impl RouteLimits {
    /// A route's `rate_limit` list. `has_jwt`: the route verifies tokens
    /// (claim key parts need one); `has_service`: a top-level
    /// `rate_limit_service` exists (global limits need one).
    pub fn compile(
        raw: Option<&Vec<RawRateLimit>>,
        route: &str,
        has_jwt: bool,
        has_service: bool,
        path: &str,
    ) -> Result<RouteLimits, ConfigError> {
        let mut out = RouteLimits::default();
        let Some(limits) = raw else {
            return Ok(out);
        };
        if limits.len() > MAX_LIMITS_PER_ROUTE {
            return Err(ConfigError::expected(
                format!("{path}.rate_limit"),
                &format!("at most {MAX_LIMITS_PER_ROUTE} limits"),
                limits.len(),
            ));
        }
        let mut limit_names = HashSet::new();
        for (j, l) in limits.iter().enumerate() {
            let lp = format!("{path}.rate_limit[{j}]");
            let policy = LimitPolicy::compile(l, j, route, &lp)?;
            if !limit_names.insert(policy.name.clone()) {
                return Err(ConfigError::expected(
                    format!("{lp}.name"),
                    "a limit name used only once per route",
                    show_str(&policy.name),
                ));
            }
            if policy.uses_claims() && !has_jwt {
                return Err(ConfigError::new(
                    format!("{lp}.key"),
                    "expected a \"jwt\" section on this route: a {\"claim\": ...} key part needs a verified token",
                ));
            }
            match policy.scope {
                Scope::Local => out.local.push(policy),
                Scope::Global if !has_service => {
                    return Err(ConfigError::new(
                        format!("{lp}.scope"),
                        "expected a top-level \"rate_limit_service\" section: a global limit is counted by that service",
                    ));
                }
                Scope::Global => out.global.push(policy),
            }
        }
        set_policy_header(&mut out.local);
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.global.is_empty()
    }
}

/// A route's `rate_limit_grpc_status`: the gRPC status of its refusals to
/// gRPC calls (default `RESOURCE_EXHAUSTED`); only with limits.
pub fn compile_grpc_status(
    raw: Option<&serde_json::Value>,
    has_limits: bool,
    path: &str,
) -> Result<grpc::Code, ConfigError> {
    match raw {
        None => Ok(grpc::Code::RESOURCE_EXHAUSTED),
        Some(_) if !has_limits => Err(ConfigError::new(
            format!("{path}.rate_limit_grpc_status"),
            "expected a \"rate_limit\" section on this route: the status only applies to its refusals",
        )),
        Some(v) => match grpc::Code::from_json(v) {
            Some(c) if c != grpc::Code::OK => Ok(c),
            _ => Err(ConfigError::expected(
                format!("{path}.rate_limit_grpc_status"),
                "a gRPC status name such as \"RESOURCE_EXHAUSTED\" or \"UNAVAILABLE\", or a number from 1 to 16",
                v,
            )),
        },
    }
}

/// A limit's `usage`, if any.
fn compile_usage(
    raw: &RawRateLimit,
    path: &str,
) -> Result<Option<super::meter::UsagePolicy>, ConfigError> {
    raw.usage
        .as_ref()
        .map(|u| super::meter::UsagePolicy::compile(u, &format!("{path}.usage")))
        .transpose()
}

/// The top-level `max_rate_limit_keys` (the bucket table's size).
pub fn compile_max_keys(raw: Option<u64>) -> Result<u32, ConfigError> {
    match raw {
        None => Ok(DEFAULT_MAX_RATE_LIMIT_KEYS),
        Some(n) if (1..=MAX_RATE_LIMIT_KEYS).contains(&n) => Ok(n as u32),
        Some(n) => Err(ConfigError::expected(
            "max_rate_limit_keys",
            &format!("an integer from 1 to {MAX_RATE_LIMIT_KEYS}"),
            n,
        )),
    }
}

/// Builds the `RateLimit-Policy` value of a route's limits (enforced ones
/// only) and stores it in each of them.
pub fn set_policy_header(limits: &mut [LimitPolicy]) {
    let items: Vec<String> = limits
        .iter()
        .filter(|l| !l.shadow)
        .map(|l| format!("\"{}\";q={};w={}", l.name, l.capacity, l.window_secs()))
        .collect();
    let header: std::sync::Arc<str> = std::sync::Arc::from(items.join(", "));
    for l in limits.iter_mut() {
        l.policy_header = header.clone();
    }
}

impl LimitPolicy {
    pub fn compile(
        raw: &RawRateLimit,
        index: usize,
        route: &str,
        path: &str,
    ) -> Result<LimitPolicy, ConfigError> {
        let name = match &raw.name {
            Some(n) => {
                if !valid_name(n) {
                    return Err(ConfigError::expected(
                        format!("{path}.name"),
                        NAME_EXPECTED,
                        show_str(n),
                    ));
                }
                n.clone()
            }
            None => format!("limit{index}"),
        };
        let int = |field: &str, v: i64| -> Result<u64, ConfigError> {
            if (1..=MAX_TOKENS).contains(&v) {
                Ok(v as u64)
            } else {
                Err(ConfigError::expected(
                    format!("{path}.{field}"),
                    &format!("an integer from 1 to {MAX_TOKENS}"),
                    v,
                ))
            }
        };
        let scope = match raw.scope.as_deref() {
            None | Some("local") => Scope::Local,
            Some("global") => Scope::Global,
            Some(other) => {
                return Err(ConfigError::expected(
                    format!("{path}.scope"),
                    "\"local\" or \"global\"",
                    show_str(other),
                ))
            }
        };
        let mut key = Vec::new();
        for (i, part) in raw.key.iter().enumerate() {
            key.push(compile_part(part, &format!("{path}.key[{i}]"))?);
        }
        let lease = match raw.lease {
            None => 0,
            Some(_) if scope == Scope::Local => {
                return Err(ConfigError::new(
                    format!("{path}.lease"),
                    "expected no `lease` on a local limit: a lease is a batch of hits obtained from the rate limit service (use \"scope\": \"global\")",
                ))
            }
            Some(n) if (1..=MAX_LEASE as i64).contains(&n) => n as u64,
            Some(n) => {
                return Err(ConfigError::expected(
                    format!("{path}.lease"),
                    &format!("an integer from 1 to {}", MAX_LEASE),
                    n,
                ))
            }
        };
        if scope == Scope::Global {
            for (field, present) in [
                ("capacity", raw.capacity.is_some()),
                ("refill_tokens", raw.refill_tokens.is_some()),
                ("refill_interval", raw.refill_interval.is_some()),
            ] {
                if present {
                    return Err(ConfigError::new(
                        format!("{path}.{field}"),
                        "expected no bucket settings on a global limit: the rate limit service's own configuration sets its rate (remove the key, or use \"scope\": \"local\")",
                    ));
                }
            }
            let cost = int("cost", raw.cost.unwrap_or(1))?;
            if lease != 0 && lease < cost {
                return Err(ConfigError::expected(
                    format!("{path}.lease"),
                    &format!("at least cost ({cost}): a lease must hold one request"),
                    lease,
                ));
            }
            if lease != 0 && raw.usage.is_some() {
                // A leased limit's hits are spent in the process: a
                // settlement would need to spend from the lease too, which
                // is not built; refused rather than silently charging the
                // estimate only.
                return Err(ConfigError::new(
                    format!("{path}.usage"),
                    "expected no `usage` on a leased limit: usage-based cost is settled with the rate limit service per request (remove `lease`, or `usage`)",
                ));
            }
            return Ok(LimitPolicy {
                name,
                scope,
                key,
                capacity: 0,
                refill_tokens: 0,
                refill_interval_ns: 0,
                cost,
                shadow: raw.shadow,
                policy_header: std::sync::Arc::from(""),
                identity_prefix: std::sync::Arc::from(""),
                identity_prefix_hash: fnv1a(b""),
                lease,
                usage: compile_usage(raw, path)?,
            });
        }
        let capacity = int(
            "capacity",
            raw.capacity.ok_or_else(|| {
                ConfigError::new(
                    format!("{path}.capacity"),
                    "missing required key `capacity`: expected an integer from 1 to 1000000000 (or \"scope\": \"global\")",
                )
            })?,
        )?;
        let refill_tokens = int(
            "refill_tokens",
            raw.refill_tokens.unwrap_or(capacity as i64),
        )?;
        let cost = int("cost", raw.cost.unwrap_or(1))?;
        if cost > capacity {
            return Err(ConfigError::expected(
                format!("{path}.cost"),
                &format!("at most capacity ({capacity}), or no request could ever pass"),
                cost,
            ));
        }
        let interval = raw.refill_interval.ok_or_else(|| {
            ConfigError::new(
                format!("{path}.refill_interval"),
                "missing required key `refill_interval`: expected a duration such as \"1s\" or \"1m\"",
            )
        })?;
        if interval.0 < 1_000_000 || interval.0 > MAX_INTERVAL_NS {
            return Err(ConfigError::expected(
                format!("{path}.refill_interval"),
                "a duration from \"1ms\" to one year",
                format!("{}ns", interval.0),
            ));
        }
        let prefix = identity_prefix(route, &name);
        Ok(LimitPolicy {
            identity_prefix_hash: fnv1a(prefix.as_bytes()),
            identity_prefix: std::sync::Arc::from(prefix),
            name,
            scope,
            key,
            capacity,
            refill_tokens,
            refill_interval_ns: interval.0,
            cost,
            shadow: raw.shadow,
            policy_header: std::sync::Arc::from(""),
            lease: 0,
            usage: compile_usage(raw, path)?,
        })
    }

    pub fn uses_claims(&self) -> bool {
        self.key.iter().any(|k| matches!(k, KeyPart::Claim(_)))
    }

    /// Seconds for an empty bucket to become full again (the IETF `w`).
    pub fn window_secs(&self) -> u64 {
        let ns = (self.capacity as u128 * self.refill_interval_ns as u128)
            .div_ceil(self.refill_tokens.max(1) as u128);
        (ns.div_ceil(1_000_000_000) as u64).max(1)
    }

    /// The bucket key for this request: each part length-prefixed so that
    /// two different part lists can never produce the same key. A missing
    /// part is the empty string (it never escapes the limit).
    pub fn bucket_key(
        &self,
        req: &Request,
        claims: Option<&crate::jwt::claims::Claims>,
        xff_hops: ClientIpRule,
    ) -> String {
        let mut out = String::new();
        self.push_bucket_key(req, claims, xff_hops, &mut out);
        out
    }

    /// Appends [`Self::bucket_key`] to `out`. The parts read as text from
    /// the request (a header that is valid UTF-8, the path, the method, the
    /// peer address, a constant) are copied from where they are, without
    /// an intermediate `String`.
    pub fn push_bucket_key(
        &self,
        req: &Request,
        claims: Option<&crate::jwt::claims::Claims>,
        xff_hops: ClientIpRule,
        out: &mut String,
    ) {
        for part in &self.key {
            let borrowed: Option<&str> = match part {
                KeyPart::Header(h) => match req.header(h) {
                    Some(v) => std::str::from_utf8(v).ok(),
                    None => Some(""),
                },
                KeyPart::Path => Some(req.match_path()),
                KeyPart::Method => Some(&req.method),
                KeyPart::GrpcService => Some(grpc_part(req, true)),
                KeyPart::GrpcMethod => Some(grpc_part(req, false)),
                KeyPart::ClientIp if xff_hops.xff_trusted_hops == 0 => Some(&req.peer_ip),
                KeyPart::Constant(c) => Some(c),
                _ => None,
            };
            match borrowed {
                // Longer values are hashed by `value`.
                Some(v) if v.len() <= MAX_KEY_PART => push_part(out, v),
                _ => push_part(out, &part.value(req, claims, xff_hops)),
            }
        }
    }
}

/// The gRPC service (`service`) or method of the path routes match, ""
/// when it is not a gRPC path.
fn grpc_part(req: &Request, service: bool) -> &str {
    match crate::grpc::service_method(req.match_path()) {
        Some((s, _)) if service => s,
        Some((_, m)) => m,
        None => "",
    }
}

/// One length-prefixed key part: `<len>:<value>`.
fn push_part(out: &mut String, v: &str) {
    Decimal::new(v.len() as u64).push_to(out);
    out.push(':');
    out.push_str(v);
}

impl KeyPart {
    /// This part's value for a request: missing is "", values longer than
    /// [`MAX_KEY_PART`] bytes are replaced by their SHA-256 (hex).
    pub fn value(
        &self,
        req: &Request,
        claims: Option<&crate::jwt::claims::Claims>,
        xff_hops: ClientIpRule,
    ) -> String {
        let v: String = match self {
            KeyPart::ClientIp => req.client_ip(xff_hops),
            KeyPart::Path => req.match_path().to_string(),
            KeyPart::Method => req.method.clone(),
            KeyPart::GrpcService => grpc_part(req, true).to_string(),
            KeyPart::GrpcMethod => grpc_part(req, false).to_string(),
            KeyPart::Header(h) => req
                .header(h)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default(),
            KeyPart::Query(q) => req.query_param(q).unwrap_or_default(),
            KeyPart::Cookie(c) => req.cookie(c).unwrap_or_default(),
            KeyPart::Claim(path) => claim_value(claims, path),
            KeyPart::Constant(c) => c.clone(),
        };
        if v.len() > MAX_KEY_PART {
            hash_hex(v.as_bytes())
        } else {
            v
        }
    }

    /// The descriptor entry key naming this part in rate limit service
    /// requests: `client_ip`, `path`, `method`, `header.<name>`,
    /// `query.<name>`, `cookie.<name>`, `claim.<dotted.path>`, `constant`.
    pub fn descriptor_key(&self) -> String {
        match self {
            KeyPart::ClientIp => "client_ip".into(),
            KeyPart::Path => "path".into(),
            KeyPart::Method => "method".into(),
            KeyPart::GrpcService => "grpc_service".into(),
            KeyPart::GrpcMethod => "grpc_method".into(),
            KeyPart::Header(h) => format!("header.{h}"),
            KeyPart::Query(q) => format!("query.{q}"),
            KeyPart::Cookie(c) => format!("cookie.{c}"),
            KeyPart::Claim(p) => format!("claim.{}", p.join(".")),
            KeyPart::Constant(_) => "constant".into(),
        }
    }
}

/// The value of a claim at a dotted path, as key text: strings as they are,
/// other JSON values as JSON; missing = "".
pub fn claim_value(claims: Option<&crate::jwt::claims::Claims>, path: &[String]) -> String {
    let mut segs = path.iter();
    let Some(mut cur) = claims.zip(segs.next()).and_then(|(c, s)| c.get(s)) else {
        return String::new();
    };
    for seg in segs {
        match cur.get(seg.as_str()) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// SHA-256 hex of long key material (bounded key size, no collisions in practice).
pub fn hash_hex(b: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(b);
    let mut s = String::with_capacity(64);
    for byte in d {
        s.push_str(&format!("{byte:02x}"));
    }
    s
}

fn compile_part(part: &RawKeyPart, path: &str) -> Result<KeyPart, ConfigError> {
    const EXPECTED: &str = "\"client_ip\", \"path\", \"method\", \"grpc_service\", \"grpc_method\", or an object with one of \"header\", \"query\", \"cookie\", \"claim\", \"constant\"";
    match part {
        RawKeyPart::Simple(s) => match s.as_str() {
            "client_ip" => Ok(KeyPart::ClientIp),
            "path" => Ok(KeyPart::Path),
            "method" => Ok(KeyPart::Method),
            "grpc_service" => Ok(KeyPart::GrpcService),
            "grpc_method" => Ok(KeyPart::GrpcMethod),
            other => Err(ConfigError::expected(path, EXPECTED, show_str(other))),
        },
        RawKeyPart::Object(map) => {
            if map.len() != 1 {
                return Err(ConfigError::expected(
                    path,
                    EXPECTED,
                    format!("an object with {} keys", map.len()),
                ));
            }
            let (k, v) = match map.iter().next() {
                Some(kv) => kv,
                None => return Err(ConfigError::expected(path, EXPECTED, "an empty object")),
            };
            let nonempty = |what: &str| -> Result<String, ConfigError> {
                if v.is_empty() {
                    Err(ConfigError::expected(format!("{path}.{k}"), what, "\"\""))
                } else {
                    Ok(v.clone())
                }
            };
            match k.as_str() {
                "header" => Ok(KeyPart::Header(
                    nonempty("a header name")?.to_ascii_lowercase(),
                )),
                "query" => Ok(KeyPart::Query(nonempty("a query parameter name")?)),
                "cookie" => Ok(KeyPart::Cookie(nonempty("a cookie name")?)),
                "claim" => {
                    let c = nonempty("a claim name or dotted path such as \"org.id\"")?;
                    if c.split('.').any(str::is_empty) {
                        return Err(ConfigError::expected(
                            format!("{path}.claim"),
                            "a claim name or dotted path such as \"org.id\"",
                            show_str(&c),
                        ));
                    }
                    Ok(KeyPart::Claim(c.split('.').map(str::to_string).collect()))
                }
                "constant" => Ok(KeyPart::Constant(v.clone())),
                other => Err(ConfigError::expected(
                    path,
                    EXPECTED,
                    format!("key {}", show_str(other)),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Result<LimitPolicy, ConfigError> {
        let raw: RawRateLimit = serde_json::from_str(json).expect("json");
        LimitPolicy::compile(&raw, 0, "r", "p")
    }

    fn req() -> Request {
        Request {
            method: "GET".into(),
            path: "/a?api_key=K1".into(),
            authority: "h".into(),
            headers: vec![
                ("x-api-key".into(), b"abc".to_vec()),
                ("cookie".into(), b"sid=S".to_vec()),
            ]
            .into(),
            peer_ip: "127.0.0.7".into(),
            norm_path: None,
        }
    }

    #[test]
    fn defaults_refill_to_capacity_and_cost_to_one() {
        let p = policy(r#"{"capacity": 5, "refill_interval": "1s"}"#).expect("ok");
        assert_eq!(
            (p.capacity, p.refill_tokens, p.cost, p.name.as_str()),
            (5, 5, 1, "limit0")
        );
        assert_eq!(p.window_secs(), 1);
    }

    #[test]
    fn rejects_bad_numbers_with_paths() {
        let cases = [
            (
                r#"{"capacity": 0, "refill_interval": "1s"}"#,
                "p.capacity",
                "expected an integer from 1",
            ),
            (
                r#"{"capacity": -3, "refill_interval": "1s"}"#,
                "p.capacity",
                "got -3",
            ),
            (
                r#"{"capacity": 5, "refill_tokens": 0, "refill_interval": "1s"}"#,
                "p.refill_tokens",
                "got 0",
            ),
            (
                r#"{"capacity": 5, "cost": 6, "refill_interval": "1s"}"#,
                "p.cost",
                "at most capacity",
            ),
            (
                r#"{"capacity": 5}"#,
                "p.refill_interval",
                "missing required key",
            ),
            (
                r#"{"capacity": 5, "refill_interval": "0s"}"#,
                "p.refill_interval",
                "from \"1ms\"",
            ),
            (
                r#"{"capacity": 5, "refill_interval": "1s", "name": "a b"}"#,
                "p.name",
                "[A-Za-z0-9_-]",
            ),
            (
                r#"{"capacity": 5, "refill_interval": "1s", "key": ["ip"]}"#,
                "p.key[0]",
                "\"client_ip\"",
            ),
            (
                r#"{"capacity": 5, "refill_interval": "1s", "key": [{"header": ""}]}"#,
                "p.key[0].header",
                "a header name",
            ),
            (
                r#"{"capacity": 5, "refill_interval": "1s", "key": [{"hdr": "x"}]}"#,
                "p.key[0]",
                "key \"hdr\"",
            ),
            (
                r#"{"capacity": 5, "refill_interval": "1s", "key": [{"header": "a", "query": "b"}]}"#,
                "p.key[0]",
                "2 keys",
            ),
            (
                r#"{"capacity": 5, "refill_interval": "1s", "key": [{"claim": "a..b"}]}"#,
                "p.key[0].claim",
                "dotted",
            ),
        ];
        for (json, path, msg) in cases {
            let e = policy(json).expect_err(json);
            assert_eq!(e.path, path, "{json}");
            assert!(e.msg.contains(msg), "{json}: {}", e.msg);
        }
    }

    #[test]
    fn bucket_keys_take_every_part_and_missing_parts_are_empty() {
        let p = policy(
            r#"{"capacity": 5, "refill_interval": "1s", "key": ["client_ip", "method", "path",
                {"header": "X-Api-Key"}, {"query": "api_key"}, {"cookie": "sid"}, {"constant": "c"},
                {"header": "absent"}, {"claim": "org.id"}]}"#,
        )
        .expect("ok");
        let claims =
            crate::jwt::claims::Claims::from_value(&serde_json::json!({"org": {"id": 42}}))
                .expect("object");
        let k = p.bucket_key(&req(), Some(&claims), ClientIpRule::default());
        assert_eq!(k, "9:127.0.0.73:GET2:/a3:abc2:K11:S1:c0:2:42");
        // Without claims the claim part is empty, still one well-defined bucket.
        assert!(p
            .bucket_key(&req(), None, ClientIpRule::default())
            .ends_with("0:0:"));
    }

    /// The bucket key as built before `push_bucket_key`: every part through
    /// `value`, lengths through `to_string`.
    fn reference_key(
        p: &LimitPolicy,
        req: &Request,
        claims: Option<&crate::jwt::claims::Claims>,
        hops: ClientIpRule,
    ) -> String {
        let mut out = String::new();
        for part in &p.key {
            let v = part.value(req, claims, hops);
            out.push_str(&v.len().to_string());
            out.push(':');
            out.push_str(&v);
        }
        out
    }

    #[test]
    fn bucket_keys_match_the_reference_on_many_requests() {
        let p = policy(
            r#"{"capacity": 5, "refill_interval": "1s", "key": ["client_ip", "method", "path",
                {"header": "X-Api-Key"}, {"query": "api_key"}, {"cookie": "sid"}, {"constant": "c:1"},
                {"header": "absent"}, {"claim": "org.id"}]}"#,
        )
        .expect("ok");
        let mut x: u64 = 12345;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let values: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"abc".to_vec(),
            vec![0xff, 0xfe, b'a'],
            "é日本".as_bytes().to_vec(),
            vec![b'k'; MAX_KEY_PART],
            vec![b'k'; MAX_KEY_PART + 1],
            vec![0xc3; MAX_KEY_PART / 2 + 1],
            b"1.2.3.4, 5.6.7.8".to_vec(),
        ];
        for _ in 0..2000 {
            let mut pick = || values[(next() % values.len() as u64) as usize].clone();
            let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
            let r = Request {
                method: text(pick()),
                path: format!("/{}?api_key={}", text(pick()), text(pick())),
                authority: "h".into(),
                headers: vec![
                    ("x-api-key".into(), pick()),
                    ("cookie".into(), [b"sid=".to_vec(), pick()].concat()),
                    ("x-forwarded-for".into(), pick()),
                ]
                .into(),
                peer_ip: text(pick()),
                norm_path: None,
            };
            let claims = crate::jwt::claims::Claims::from_value(
                &serde_json::json!({"org": {"id": text(pick())}}),
            )
            .expect("object");
            for hops in [ClientIpRule::hops(0), ClientIpRule::hops(1)] {
                for c in [None, Some(&claims)] {
                    assert_eq!(p.bucket_key(&r, c, hops), reference_key(&p, &r, c, hops));
                }
            }
        }
    }

    #[test]
    fn grpc_key_parts_read_service_and_method_from_the_path() {
        let p = policy(
            r#"{"capacity": 5, "refill_interval": "1s", "key": ["grpc_service", "grpc_method"]}"#,
        )
        .expect("ok");
        let mk = |path: &str| Request {
            path: path.into(),
            ..Request::default()
        };
        let hops = ClientIpRule::default();
        assert_eq!(
            p.bucket_key(&mk("/pkg.v1.Orders/Get"), None, hops),
            "13:pkg.v1.Orders3:Get"
        );
        // Not a gRPC path: both parts are empty.
        assert_eq!(p.bucket_key(&mk("/a/b/c"), None, hops), "0:0:");
        assert_eq!(p.bucket_key(&mk("/"), None, hops), "0:0:");
        // `value` (the rate limit service's descriptors) agrees.
        let r = mk("/pkg.v1.Orders/Get?x");
        assert_eq!(
            p.bucket_key(&r, None, hops),
            reference_key(&p, &r, None, hops)
        );
        assert_eq!(p.key[0].descriptor_key(), "grpc_service");
        assert_eq!(p.key[1].descriptor_key(), "grpc_method");
    }

    #[test]
    fn identity_prefix_is_route_and_name_and_hashed() {
        let p =
            policy(r#"{"name": "per-key", "capacity": 5, "refill_interval": "1s"}"#).expect("ok");
        assert_eq!(&*p.identity_prefix, "r\u{1f}per-key\u{1f}");
        assert_eq!(
            p.identity_prefix_hash,
            fnv1a("r\u{1f}per-key\u{1f}".as_bytes())
        );
        assert_eq!(identity_prefix("api", "all"), "api\u{1f}all\u{1f}");
    }

    #[test]
    fn length_prefixing_prevents_key_collisions() {
        let p = policy(r#"{"capacity": 5, "refill_interval": "1s", "key": [{"header": "a"}, {"header": "b"}]}"#)
            .expect("ok");
        let mk = |a: &str, b: &str| Request {
            headers: vec![
                ("a".into(), a.as_bytes().to_vec()),
                ("b".into(), b.as_bytes().to_vec()),
            ]
            .into(),
            ..Request::default()
        };
        assert_ne!(
            p.bucket_key(&mk("x:", "y"), None, ClientIpRule::default()),
            p.bucket_key(&mk("x", ":y"), None, ClientIpRule::default())
        );
    }

    #[test]
    fn long_key_parts_are_hashed_to_bound_size() {
        let p =
            policy(r#"{"capacity": 5, "refill_interval": "1s", "key": [{"header": "x-api-key"}]}"#)
                .expect("ok");
        let long = "k".repeat(10_000);
        let r = Request {
            headers: vec![("x-api-key".into(), long.into_bytes())].into(),
            ..Request::default()
        };
        let k = p.bucket_key(&r, None, ClientIpRule::default());
        assert_eq!(k.len(), 3 + 64);
    }
}
