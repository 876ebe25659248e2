//! The configuration document exactly as users write it (docs/configuration.md),
//! unknown keys rejected. Semantic checks happen in `compile`.
//!
//! The module reads these types with the hand-written reader of
//! `config::read` (for size: serde's derived visitors were ~157 KB of the
//! module). The serde attributes stay: they describe the document to the
//! JSON Schema (`schemars` reads them) and to the derived `Deserialize`,
//! compiled in tests only, which the reader is tested against.

use super::duration::Duration;
use schemars::JsonSchema;
#[cfg(test)]
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "meshguard configuration",
    description = "The JSON document of the meshguard proxy-wasm filter (Envoy `configuration` / Istio `pluginConfig`)."
)]
pub struct RawConfig {
    /// Editor hint (`"$schema": "..."`), ignored.
    #[serde(rename = "$schema", default)]
    pub schema: Option<String>,
    /// JWT providers by name, referenced by routes' `jwt.providers`.
    #[serde(default)]
    pub jwt_providers: BTreeMap<String, RawProvider>,
    /// Routes, tried in order; the first match applies; no match passes through.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Rate-limit response headers: "ietf" (default), "legacy", "both" or "none".
    #[serde(default)]
    #[schemars(regex(pattern = "^(ietf|legacy|both|none)$"))]
    pub rate_limit_headers: Option<String>,
    #[serde(default)]
    pub client_ip: Option<RawClientIp>,
    /// How the path is normalised before routes match and `path` keys are
    /// built (on by default).
    #[serde(default)]
    pub path_normalization: Option<RawPathNormalization>,
    #[serde(default)]
    pub cache_store: Option<RawCacheStore>,
    /// The rate limit service that counts `"scope": "global"` limits.
    #[serde(default)]
    pub rate_limit_service: Option<RawRateLimitService>,
    /// Most rate-limit buckets kept per Envoy process (default 10000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_rate_limit_keys: Option<u64>,
    /// How long counter increments may wait before they reach Envoy's
    /// stats (default "100ms"; "0s": every increment at once).
    #[serde(default)]
    pub metrics_flush_interval: Option<Duration>,
    /// What meshguard shows of its decisions: Envoy filter state (access
    /// logs, RBAC), `Proxy-Status` on its replies, trace context on its
    /// calls.
    #[serde(default)]
    pub observability: Option<RawObservability>,
}

#[derive(Debug, Default, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawObservability {
    /// true: each decision as a line of Envoy filter state
    /// `wasm.meshguard`, for access logs (default false: it costs Envoy
    /// several microseconds of CPU per request).
    #[serde(default)]
    pub filter_state: Option<bool>,
    /// Verified claims published as filter state `meshguard.claim.<name>`
    /// (for Envoy's RBAC filter and access logs); default none.
    #[serde(default)]
    pub claims: Vec<String>,
    /// false: meshguard's replies carry no `Proxy-Status` (default true).
    #[serde(default)]
    pub proxy_status: Option<bool>,
    /// false: calls to the rate limit service and JWKS fetches do not carry
    /// the request's trace headers (default true).
    #[serde(default)]
    pub trace_propagation: Option<bool>,
}

#[derive(Debug, Default, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawClientIp {
    #[serde(default)]
    pub xff_trusted_hops: u32,
    /// IPv6 clients are identified by this prefix length (e.g. 64); default
    /// 128 (whole addresses).
    #[serde(default)]
    #[schemars(range(min = 1, max = 128))]
    pub ipv6_prefix: Option<u8>,
}

#[derive(Debug, Default, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawPathNormalization {
    /// false: routes match the path exactly as sent (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// An encoded `/` or `\` (`%2F`, `%5C`) in the path: "reject" (400,
    /// default) or "keep" (kept encoded: the path stays distinct).
    #[serde(default)]
    #[schemars(regex(pattern = "^(reject|keep)$"))]
    pub escaped_slashes: Option<String>,
}

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawCacheStore {
    #[serde(default)]
    pub max_bytes: Option<u64>,
    #[serde(default)]
    pub max_entry_bytes: Option<u64>,
}

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique route name, 1-64 characters of [A-Za-z0-9_-] (used in metric names).
    #[schemars(regex(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub name: String,
    /// Request matcher; all fields optional and ANDed.
    #[serde(default, rename = "match")]
    pub matcher: Option<RawMatch>,
    #[serde(default)]
    pub jwt: Option<RawRouteJwt>,
    #[serde(default)]
    pub rate_limit: Option<Vec<RawRateLimit>>,
    /// The gRPC status of this route's rate-limit refusals to gRPC calls:
    /// a name (`"RESOURCE_EXHAUSTED"`, the default, which clients do not
    /// retry on their own; `"UNAVAILABLE"`, which retry policies do retry)
    /// or a number from 1 to 16.
    #[serde(default)]
    pub rate_limit_grpc_status: Option<serde_json::Value>,
    #[serde(default)]
    pub circuit_breaker: Option<RawBreaker>,
    #[serde(default)]
    pub cache: Option<RawCache>,
}

#[derive(Debug, Default, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path_exact: Option<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub headers: Option<Vec<RawHeaderMatch>>,
    /// gRPC calls to this service (and method): the path
    /// `/<service>/<method>`, whatever the content-type.
    #[serde(default)]
    pub grpc: Option<RawGrpcMatch>,
    /// `false`: `path_prefix` / `path_exact` compare ASCII letters
    /// case-insensitively, and `path` key parts of the route's limits are
    /// lower-cased (for origins that do not tell `/Admin` from `/admin`).
    /// Default true.
    #[serde(default)]
    pub case_sensitive: Option<bool>,
}

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawGrpcMatch {
    /// Fully qualified service name, e.g. `"pkg.v1.Orders"`.
    pub service: String,
    /// Method name, e.g. `"Get"`; absent: every method of the service.
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub present: Option<bool>,
}

// ---------------------------------------------------------------- JWT

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub issuer: String,
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    pub jwks: RawJwks,
    #[serde(default)]
    pub from: Option<Vec<RawTokenSource>>,
    #[serde(default)]
    pub clock_skew: Option<Duration>,
    #[serde(default)]
    pub require_exp: Option<bool>,
    #[serde(default)]
    pub max_lifetime: Option<Duration>,
    #[serde(default)]
    pub forward: Option<bool>,
    #[serde(default)]
    pub claims_to_headers: Option<Vec<RawClaimToHeader>>,
    #[serde(default)]
    pub payload_header: Option<String>,
}

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawJwks {
    #[serde(default)]
    pub inline: Option<serde_json::Value>,
    #[serde(default)]
    pub inline_string: Option<String>,
    #[serde(default)]
    pub remote: Option<RawRemoteJwks>,
}

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawRemoteJwks {
    pub cluster: String,
    #[serde(default)]
    pub authority: Option<String>,
    pub path: String,
    #[serde(default)]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub cache_duration: Option<Duration>,
}

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawTokenSource {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
}

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawClaimToHeader {
    pub claim: String,
    pub header: String,
}

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawRouteJwt {
    pub providers: Vec<String>,
    #[serde(default)]
    pub allow_missing: bool,
    /// true: a request carrying more than one distinct token (in any of the
    /// providers' locations, or twice in one) is refused with 400
    /// `invalid_request` (RFC 6750 3.1). Default false: the first valid
    /// token is used and every other token location is removed.
    #[serde(default)]
    pub reject_multiple_tokens: bool,
    #[serde(default)]
    pub claims: Vec<RawClaimRule>,
}

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawClaimRule {
    pub claim: String,
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
    #[serde(default)]
    pub one_of: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub contains: Option<serde_json::Value>,
}

// ---------------------------------------------------------------- rate limit

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
#[schemars(transform = rate_limit_scope_rule)]
pub struct RawRateLimit {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub key: Vec<RawKeyPart>,
    /// "local" (default): a token bucket in this Envoy process. "global":
    /// counted by the rate limit service (top-level `rate_limit_service`),
    /// whose own configuration sets the rate.
    #[serde(default)]
    #[schemars(regex(pattern = "^(local|global)$"))]
    pub scope: Option<String>,
    /// Tokens the bucket holds (buckets start full). Local limits only.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000000000))]
    pub capacity: Option<i64>,
    /// Tokens added per refill_interval, continuously (default: capacity).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000000000))]
    pub refill_tokens: Option<i64>,
    #[serde(default)]
    pub refill_interval: Option<Duration>,
    /// Tokens a request takes (default 1, at most capacity).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000000000))]
    pub cost: Option<i64>,
    #[serde(default)]
    pub shadow: bool,
    /// Global limits only: obtain this many hits at once from the rate
    /// limit service and spend them in this Envoy process (leased global
    /// limit; at most one call per batch instead of one per request).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000000))]
    pub lease: Option<i64>,
    /// Usage-based cost: the request's real cost is read from its response
    /// (a header, a JSON body field, or the last server-sent event that
    /// carries it); `cost` is then the estimate charged up front and the
    /// difference is settled when the response ends.
    #[serde(default)]
    pub usage: Option<RawUsage>,
}

/// Where a limit reads a request's real cost in its response: exactly one
/// of `header`, `json`, `sse_json`.
#[derive(Debug, Default, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    /// A response header holding the cost, e.g. "x-usage-tokens".
    #[serde(default)]
    pub header: Option<String>,
    /// A dotted path to a number in a JSON response body, e.g.
    /// "usage.total_tokens".
    #[serde(default)]
    pub json: Option<String>,
    /// A dotted path to a number in the JSON `data` of the server-sent
    /// events of a streamed response; the last event carrying it counts.
    #[serde(default)]
    pub sse_json: Option<String>,
    /// The most body bytes inspected (`json`: the whole body; `sse_json`:
    /// one event); beyond it the estimate stands (default 65536).
    #[serde(default)]
    #[schemars(range(min = 1, max = 16777216))]
    pub max_body_bytes: Option<i64>,
}

/// Schema rule: a local limit needs `capacity` and `refill_interval`; a
/// global one must not have them (the rate limit service sets the rate).
fn rate_limit_scope_rule(schema: &mut schemars::Schema) {
    let rule = serde_json::json!({
        "if": { "properties": { "scope": { "const": "global" } }, "required": ["scope"] },
        "then": { "not": { "anyOf": [
            { "required": ["capacity"] },
            { "required": ["refill_tokens"] },
            { "required": ["refill_interval"] }
        ] } },
        "else": { "required": ["capacity", "refill_interval"] }
    });
    if let (Some(obj), serde_json::Value::Object(rule)) = (schema.as_object_mut(), rule) {
        obj.extend(rule);
    }
}

/// The Envoy rate limit service (RLS gRPC protocol) used by global limits.
#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawRateLimitService {
    /// Envoy cluster of the service (HTTP/2).
    pub cluster: String,
    /// The RLS `domain` (default "meshguard").
    #[serde(default)]
    pub domain: Option<String>,
    /// Deadline of one call (default "20ms").
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// When the service fails or is late: "allow" (default) or "deny".
    #[serde(default)]
    #[schemars(regex(pattern = "^(allow|deny)$"))]
    pub failure_mode: Option<String>,
}

/// A rate-limit key part: a bare string (`"client_ip"`, `"path"`,
/// `"method"`) or a one-key object (`{"header": "x-api-key"}`...).
#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(untagged)]
pub enum RawKeyPart {
    Simple(String),
    Object(BTreeMap<String, String>),
}

// ---------------------------------------------------------------- breaker

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    #[serde(default)]
    pub failure_statuses: Option<Vec<serde_json::Value>>,
    /// gRPC calls: the `grpc-status` codes that count as failures, by name
    /// (`"UNAVAILABLE"`) or number (`14`). Default: UNKNOWN,
    /// DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    #[serde(default)]
    pub grpc_failure_statuses: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub consecutive_failures: Option<i64>,
    #[serde(default)]
    pub failure_ratio: Option<f64>,
    #[serde(default)]
    pub min_requests: Option<i64>,
    #[serde(default)]
    pub window: Option<Duration>,
    #[serde(default)]
    pub slow_call: Option<Duration>,
    #[serde(default)]
    pub open_duration: Option<Duration>,
    #[serde(default)]
    pub max_open_duration: Option<Duration>,
    #[serde(default)]
    pub half_open_requests: Option<i64>,
    #[serde(default)]
    pub success_threshold: Option<i64>,
    #[serde(default)]
    pub scope: Option<String>,
}

// ---------------------------------------------------------------- cache

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub vary_allowlist: Option<Vec<String>>,
    #[serde(default)]
    pub key_headers: Option<Vec<String>>,
    #[serde(default)]
    pub ignore_query: bool,
    #[serde(default)]
    pub default_ttl: Option<Duration>,
    #[serde(default)]
    pub heuristic_freshness: bool,
    /// Responses with `Set-Cookie`: "public_only" (default: stored only
    /// with `public` or `s-maxage`, without the `Set-Cookie` lines),
    /// "strip" (stored by the usual rules, without them), "store" (stored
    /// and sent with them to every client), "no_store" (never stored).
    #[serde(default)]
    #[schemars(regex(pattern = "^(public_only|strip|store|no_store)$"))]
    pub set_cookie: Option<String>,
    /// Targeted cache-control fields (RFC 9213) obeyed instead of
    /// `Cache-Control` and `Expires`, the first one present winning
    /// (default ["CDN-Cache-Control"]; [] for none).
    #[serde(default)]
    pub targeted_cache_control: Option<Vec<String>>,
    /// When the upstream fails (500/502/503/504, reset, timeout) or the
    /// route's circuit breaker is open: serve a stored response stale by
    /// at most this long, even without `stale-if-error` (never one with
    /// `must-revalidate`, `proxy-revalidate`, `s-maxage` or `no-cache`).
    #[serde(default)]
    pub stale_on_error: Option<Duration>,
    /// A `PURGE` request drops the stored responses of its URI (every
    /// variant) when the route's `jwt` verified a token whose claims
    /// satisfy every rule here; anyone else gets 403. Default: no purge
    /// (`PURGE` goes upstream like any unsafe method).
    #[serde(default)]
    pub purge: Option<RawCachePurge>,
}

#[derive(Debug, JsonSchema)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(deny_unknown_fields)]
pub struct RawCachePurge {
    /// Claim rules the purging token must all satisfy (at least one).
    pub claims: Vec<RawClaimRule>,
    /// Also purge by path prefix (`Meshguard-Purge: prefix`): every lookup
    /// on the route then reads the route's purge log (one shared-data read).
    #[serde(default)]
    pub prefix: bool,
    /// Response header carrying the response's tags (surrogate keys,
    /// space- or comma-separated, e.g. `surrogate-key`): enables purge by
    /// tag (`Meshguard-Purge-Tag`), with the same read per lookup.
    #[serde(default)]
    pub tag_header: Option<String>,
}
