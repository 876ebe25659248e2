//! Global rate limits: limits with `"scope": "global"` are counted by an
//! Envoy rate limit service (RLS: `envoy.service.ratelimit.v3.
//! RateLimitService/ShouldRateLimit` over gRPC), such as envoyproxy/ratelimit
//! (Redis) or Kuadrant's Limitador, so every replica of a service shares one
//! count.
//!
//! ```json
//! "rate_limit_service": { "cluster": "ratelimit", "domain": "meshguard",
//!                         "timeout": "20ms", "failure_mode": "allow" },
//! "routes": [ { "name": "api", "rate_limit": [
//!   { "name": "burst", "capacity": 50, "refill_interval": "1s" },
//!   { "name": "per-user", "scope": "global", "key": [ { "claim": "sub" } ] } ] } ]
//! ```
//!
//! - `cluster` (required): the Envoy cluster of the service; it must speak
//!   HTTP/2 (gRPC). `domain` (default `"meshguard"`): the RLS domain, the
//!   namespace of the service's limits. `timeout` (default `"20ms"`, from
//!   `"1ms"` to `"10s"`): deadline of one call. `failure_mode` (default
//!   `"allow"`): what happens when the service fails, is late, or cannot be
//!   reached: `"allow"` lets the request through (local limits still
//!   apply), `"deny"` answers 503 `{"error":"rate_limit_unavailable"}`.
//! - The service owns the rate: a global limit has no `capacity`,
//!   `refill_tokens` or `refill_interval` (an error if present). `cost` is
//!   sent as the hits addend; `shadow` works as for local limits.
//! - One call per request, carrying one descriptor per global limit of the
//!   route, in order: entries `route` = route name, `limit` = limit name,
//!   then one entry per key part ([`KeyPart::descriptor_key`]: `client_ip`,
//!   `path`, `method`, `grpc_service`, `grpc_method`, `header.<name>`, `query.<name>`, `cookie.<name>`,
//!   `claim.<path>`, `constant`), value as for local bucket keys (missing =
//!   empty, longer than 256 bytes = its SHA-256).
//! - Local limits run first: a request they refuse never costs a network
//!   call. When the service then says `OVER_LIMIT`, the local tokens are
//!   given back, like a later local limit refusing.
//! - `OVER_LIMIT`: 429 like a local limit, `Retry-After` from the refusing
//!   descriptor's `duration_until_reset` (else its limit's unit, else 1 s),
//!   rate-limit headers from the service's `current_limit` and
//!   `limit_remaining`. The service's `response_headers_to_add` go on the
//!   429 (or on the upstream's response when allowed) and its
//!   `request_headers_to_add` on the request sent upstream.
//! - The request is paused during the call and always resumed or answered:
//!   Envoy enforces `timeout` on the call, and the worker's timer enforces
//!   it again (plus a small grace) in case no answer ever comes. Envoy
//!   reports its own deadline as UNAVAILABLE "upstream request timeout";
//!   meshguard counts that as a timeout.
//! - Calls belong to the worker's root context, not to the stream
//!   (`filter/root.rs`): a client that leaves mid-call leaves nothing
//!   behind; the late answer is dropped.
//!
//! Metrics (counters, per route): `meshguard.rls.<route>.ok`, `.over_limit`,
//! `.error` (service or transport error, undecodable answer), `.timeout`,
//! `.failure_mode_allowed`, `.failure_mode_denied`; per global limit, the
//! same `meshguard.ratelimit.<route>.<limit>.allowed` / `.limited` /
//! `.shadow_limited` / `.errors` as local limits.

pub mod proto;

use super::policy::{KeyPart, LimitPolicy};
use crate::config::raw::RawRateLimitService;
use crate::config::{show_str, ConfigError};
use crate::host::{Host, MetricId, MetricKind};
use crate::request::{ClientIpRule, Request};

pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";
pub const DEFAULT_DOMAIN: &str = "meshguard";
pub const DEFAULT_TIMEOUT_NS: u64 = 20_000_000;
pub const MAX_TIMEOUT_NS: u64 = 10_000_000_000;
/// Longest cluster name accepted (keeps the `GrpcService` descriptor ASCII).
pub const MAX_CLUSTER_NAME: usize = 120;
/// Extra wait past `timeout` before the worker's timer gives up on a call
/// Envoy never answered.
pub const GRACE_NS: u64 = 50_000_000;
/// Largest answer read from the service.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The validated `rate_limit_service` section.
#[derive(Debug, Clone)]
pub struct RlsConfig {
    pub cluster: String,
    pub domain: String,
    pub timeout_ns: u64,
    pub deny_on_failure: bool,
    /// Serialized `GrpcService { envoy_grpc { cluster_name } }`.
    pub grpc_service: Vec<u8>,
}

impl RlsConfig {
    pub fn compile(raw: &RawRateLimitService, path: &str) -> Result<RlsConfig, ConfigError> {
        let c = &raw.cluster;
        if c.is_empty() || c.len() > MAX_CLUSTER_NAME || !c.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::expected(
                format!("{path}.cluster"),
                &format!(
                    "an Envoy cluster name of 1 to {MAX_CLUSTER_NAME} printable ASCII characters"
                ),
                show_str(c),
            ));
        }
        let domain = raw.domain.clone().unwrap_or_else(|| DEFAULT_DOMAIN.into());
        if domain.is_empty() || domain.len() > 256 {
            return Err(ConfigError::expected(
                format!("{path}.domain"),
                "a non-empty string of at most 256 bytes",
                show_str(&domain),
            ));
        }
        let timeout_ns = raw.timeout.map_or(DEFAULT_TIMEOUT_NS, |d| d.0);
        if !(1_000_000..=MAX_TIMEOUT_NS).contains(&timeout_ns) {
            return Err(ConfigError::expected(
                format!("{path}.timeout"),
                "a duration from \"1ms\" to \"10s\"",
                format!("{timeout_ns}ns"),
            ));
        }
        let deny_on_failure = match raw.failure_mode.as_deref() {
            None | Some("allow") => false,
            Some("deny") => true,
            Some(other) => {
                return Err(ConfigError::expected(
                    format!("{path}.failure_mode"),
                    "\"allow\" or \"deny\"",
                    show_str(other),
                ))
            }
        };
        Ok(RlsConfig {
            grpc_service: grpc_service(c),
            cluster: c.clone(),
            domain,
            timeout_ns,
            deny_on_failure,
        })
    }
}

/// The `GrpcService` naming an Envoy cluster, as `proxy_grpc_call` takes it.
pub fn grpc_service(cluster: &str) -> Vec<u8> {
    proto::GrpcService {
        envoy_grpc: Some(proto::EnvoyGrpc {
            cluster_name: cluster.to_string(),
        }),
    }
    .encode()
}

/// Per-route counters of the calls.
#[derive(Debug, Clone, Copy)]
pub struct RlsMetrics {
    pub ok: MetricId,
    pub over_limit: MetricId,
    pub error: MetricId,
    pub timeout: MetricId,
    pub failure_mode_allowed: MetricId,
    pub failure_mode_denied: MetricId,
}

impl RlsMetrics {
    pub const NONE: RlsMetrics = RlsMetrics {
        ok: MetricId::NONE,
        over_limit: MetricId::NONE,
        error: MetricId::NONE,
        timeout: MetricId::NONE,
        failure_mode_allowed: MetricId::NONE,
        failure_mode_denied: MetricId::NONE,
    };

    pub fn define(host: &impl Host, route: &str) -> RlsMetrics {
        let def = |what: &str| {
            host.define_metric(
                MetricKind::Counter,
                &format!("meshguard.rls.{route}.{what}"),
            )
            .unwrap_or(MetricId::NONE)
        };
        RlsMetrics {
            ok: def("ok"),
            over_limit: def("over_limit"),
            error: def("error"),
            timeout: def("timeout"),
            failure_mode_allowed: def("failure_mode_allowed"),
            failure_mode_denied: def("failure_mode_denied"),
        }
    }
}

/// The serialized `RateLimitRequest` for a request on a route: one
/// descriptor per global limit without a `lease` (leased ones are counted
/// by their leases, `lease.rs`), in order.
pub fn request(
    domain: &str,
    route: &str,
    limits: &[LimitPolicy],
    req: &Request,
    claims: Option<&crate::jwt::claims::Claims>,
    xff_hops: ClientIpRule,
) -> Vec<u8> {
    let mut per_request = limits.iter().filter(|l| l.lease == 0);
    let first_cost = per_request.clone().next().map(|l| l.cost);
    let same_cost = per_request.all(|l| Some(l.cost) == first_cost);
    let limits = limits.iter().filter(|l| l.lease == 0);
    let descriptors = limits
        .clone()
        .map(|l| {
            let values = l
                .key
                .iter()
                .map(|p: &KeyPart| p.value(req, claims, xff_hops));
            proto::RateLimitDescriptor {
                entries: descriptor_entries(route, l, values),
                hits_addend: (!same_cost).then_some(proto::UInt64Value { value: l.cost }),
            }
        })
        .collect();
    let hits = match first_cost {
        Some(c) if same_cost && c != 1 => c.min(u32::MAX as u64) as u32,
        _ => 0,
    };
    proto::RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: hits,
    }
    .encode()
}

/// Limit `l`'s descriptor entries: `route`, `limit`, then one entry per
/// key part with its value (`values`, in the key's order). Every call
/// meshguard sends (per request, lease refill, usage report) describes a
/// limit this one way, so the service counts them in the same counter.
pub fn descriptor_entries(
    route: &str,
    l: &LimitPolicy,
    values: impl Iterator<Item = String>,
) -> Vec<proto::Entry> {
    let mut entries = Vec::with_capacity(2 + l.key.len());
    entries.push(proto::Entry {
        key: "route".into(),
        value: route.into(),
    });
    entries.push(proto::Entry {
        key: "limit".into(),
        value: l.name.clone(),
    });
    entries.extend(l.key.iter().zip(values).map(|(p, value)| proto::Entry {
        key: p.descriptor_key(),
        value,
    }));
    entries
}

/// How many of `limits` one request's call carries (those without a lease).
pub fn per_request_count(limits: &[LimitPolicy]) -> usize {
    limits.iter().filter(|l| l.lease == 0).count()
}

/// The serialized `RateLimitRequest` of a lease refill: limit `l`'s one
/// descriptor (its key `values`, in order) with `hits_addend` = `hits`.
pub fn lease_request(
    domain: &str,
    route: &str,
    l: &LimitPolicy,
    values: Vec<String>,
    hits: u64,
) -> Vec<u8> {
    proto::RateLimitRequest {
        domain: domain.into(),
        descriptors: vec![proto::RateLimitDescriptor {
            entries: descriptor_entries(route, l, values.into_iter()),
            hits_addend: None,
        }],
        hits_addend: hits.min(u32::MAX as u64) as u32,
    }
    .encode()
}

/// Why a call gave no verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The call could not be sent (unknown cluster, host refusal).
    Dispatch(String),
    /// Envoy or the service answered a gRPC error status.
    Status(u32, Option<String>),
    /// No answer before the deadline (gRPC DEADLINE_EXCEEDED, or the
    /// worker's own deadline).
    Timeout,
    /// The answer is not a `RateLimitResponse` we can use.
    BadResponse(String),
}

impl CallError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, CallError::Timeout)
    }
}

/// gRPC status DEADLINE_EXCEEDED.
pub const GRPC_DEADLINE_EXCEEDED: u32 = 4;

/// What the service said about one global limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitStatus {
    pub over: bool,
    /// From `current_limit`, when the service sent it: (requests per unit,
    /// unit in seconds).
    pub limit: Option<(u64, u64)>,
    pub remaining: u64,
    /// Seconds until the window resets (`duration_until_reset`).
    pub reset_secs: Option<u64>,
}

/// The service's verdict, per global limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// One per global limit, in order.
    pub statuses: Vec<LimitStatus>,
    pub response_headers: Vec<(String, String)>,
    pub request_headers: Vec<(String, String)>,
}

/// Decodes a `RateLimitResponse` for `n` global limits.
pub fn decode(body: &[u8], n: usize) -> Result<Verdict, CallError> {
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(CallError::BadResponse(format!(
            "{} bytes (at most {MAX_RESPONSE_BYTES})",
            body.len()
        )));
    }
    let r = proto::RateLimitResponse::decode(body)
        .map_err(|e| CallError::BadResponse(format!("not a RateLimitResponse: {e}")))?;
    let overall_over = match r.overall_code {
        proto::CODE_OK => false,
        proto::CODE_OVER_LIMIT => true,
        other => {
            return Err(CallError::BadResponse(format!(
                "overall_code {other} (expected OK or OVER_LIMIT)"
            )))
        }
    };
    // Per-descriptor statuses are optional in the protocol; without them
    // (or with a count that does not match) the overall code applies to
    // every limit.
    let per_descriptor = r.statuses.len() == n;
    let statuses = (0..n)
        .map(|i| match r.statuses.get(i).filter(|_| per_descriptor) {
            Some(s) => {
                let limit = s
                    .current_limit
                    .as_ref()
                    .and_then(|l| Some((l.requests_per_unit as u64, l.unit_secs()?)));
                LimitStatus {
                    over: s.code == proto::CODE_OVER_LIMIT,
                    limit,
                    remaining: if limit.is_some() {
                        s.limit_remaining as u64
                    } else {
                        0
                    },
                    reset_secs: s.duration_until_reset.as_ref().map(|d| d.ceil_secs()),
                }
            }
            None => LimitStatus {
                over: overall_over,
                limit: None,
                remaining: 0,
                reset_secs: None,
            },
        })
        .collect();
    let headers = |hs: &[proto::HeaderValue]| -> Vec<(String, String)> {
        hs.iter()
            .filter(|h| valid_header(&h.key, &h.value))
            .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
            .collect()
    };
    Ok(Verdict {
        statuses,
        response_headers: headers(&r.response_headers_to_add),
        request_headers: headers(&r.request_headers_to_add),
    })
}

/// A header a service may add: a token name (not a pseudo-header, not a
/// hop-by-hop or framing header) and a value without control characters.
fn valid_header(name: &str, value: &str) -> bool {
    const FORBIDDEN: [&str; 7] = [
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
    ];
    !name.is_empty()
        && name.len() <= 256
        && value.len() <= 8192
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !FORBIDDEN.iter().any(|f| name.eq_ignore_ascii_case(f))
        && value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests;
