//! Configuration: the JSON document of docs/configuration.md, parsed and validated once
//! (in `on_configure`) into an immutable [`Config`].
//!
//! ```json
//! { "routes": [ { "name": "api", "match": { "path_prefix": "/api/" },
//!                 "rate_limit": [ { "name": "all", "capacity": 100,
//!                                   "refill_tokens": 100, "refill_interval": "1m" } ] } ] }
//! ```
//!
//! Every failure is a [`ConfigError`] naming the JSON path, what is expected
//! and the bad value, e.g.
//! `invalid config at routes[1].rate_limit[0].capacity: expected an integer >= 1, got 0`.
//! Unknown keys are errors (a typo must never silently disable a policy); a
//! top-level `"$schema"` string is the one key that is allowed and ignored.
//! An empty document (zero bytes or whitespace) is valid: no routes, every
//! request passes through untouched.

pub mod duration;
pub mod raw;
pub mod shape;

use crate::breaker::BreakerPolicy;
use crate::cache::CachePolicy;
use crate::jwt::{JwtProviders, RouteJwt};
use crate::ratelimit::policy::Scope;
use crate::ratelimit::rls::RlsConfig;
use crate::ratelimit::{HeaderStyle, LimitPolicy};
use crate::request::path::EscapedSlashes;
use crate::route::RouteMatch;
pub use duration::Duration;
use raw::RawConfig;
use std::collections::HashSet;
use std::fmt;

/// Largest configuration document accepted (bytes). Envoy hands the whole
/// document to every worker VM; anything bigger is almost surely a mistake.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;
/// Bounds that keep per-request work and memory predictable.
pub const MAX_ROUTES: usize = 1000;
pub const MAX_LIMITS_PER_ROUTE: usize = 16;
pub const DEFAULT_MAX_RATE_LIMIT_KEYS: u32 = 10_000;
pub const MAX_RATE_LIMIT_KEYS: u64 = 1_000_000;
/// Default and bound of `metrics_flush_interval`.
pub const DEFAULT_METRICS_FLUSH_INTERVAL_NS: u64 = 100_000_000;
pub const MAX_METRICS_FLUSH_INTERVAL_NS: u64 = 10_000_000_000;
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_CACHE_MAX_ENTRY_BYTES: u64 = 1024 * 1024;

/// A configuration error: where (JSON path) and what (expected vs got).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub msg: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, msg: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// `expected <what>, got <value>`.
    pub fn expected(path: impl Into<String>, what: &str, got: impl fmt::Display) -> Self {
        ConfigError::new(path, format!("expected {what}, got {got}"))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "invalid config: {}", self.msg)
        } else {
            write!(f, "invalid config at {}: {}", self.path, self.msg)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Renders a user string for an error message: quoted, escaped, truncated.
pub fn show_str(s: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = s.chars().take(MAX).collect();
    if s.chars().count() > MAX {
        out.push_str("...");
    }
    format!("{out:?}")
}

/// Shared top-level settings that are not per route.
#[derive(Debug, Clone)]
pub struct CacheStoreConfig {
    pub max_bytes: u64,
    pub max_entry_bytes: u64,
}

/// One validated route.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub jwt: Option<RouteJwt>,
    /// Local (`"scope": "local"`) limits, in order.
    pub rate_limits: Vec<LimitPolicy>,
    /// Global (`"scope": "global"`) limits, in order: counted by the rate
    /// limit service, after the local ones.
    pub global_limits: Vec<LimitPolicy>,
    /// The gRPC status of rate-limit refusals to gRPC calls
    /// (`rate_limit_grpc_status`, default `RESOURCE_EXHAUSTED`).
    pub rate_limit_grpc_status: crate::grpc::Code,
    pub breaker: Option<BreakerPolicy>,
    pub cache: Option<CachePolicy>,
}

impl Route {
    /// Whether any policy applies (a route without one only marks traffic
    /// as matched: it is passed through untouched).
    pub fn has_policy(&self) -> bool {
        self.jwt.is_some()
            || !self.rate_limits.is_empty()
            || !self.global_limits.is_empty()
            || self.breaker.is_some()
            || self.cache.is_some()
    }
}

/// The validated, immutable configuration.
#[derive(Debug)]
pub struct Config {
    pub routes: Vec<Route>,
    /// Finds the route of a request in time that does not grow with the
    /// number of routes.
    pub route_index: crate::route::RouteIndex,
    pub jwt_providers: JwtProviders,
    pub rate_limit_headers: HeaderStyle,
    pub xff_trusted_hops: u32,
    /// `client_ip.ipv6_prefix` (128: whole addresses).
    pub ipv6_prefix: u8,
    /// `path_normalization`: `None` when off.
    pub path_normalization: Option<EscapedSlashes>,
    /// Every header any provider maps claims to (and `payload_header`),
    /// lower case with `_` written `-`: removed from every request
    /// meshguard sees, in any spelling (`x_user` too).
    pub claim_headers: Vec<String>,
    pub cache_store: CacheStoreConfig,
    pub max_rate_limit_keys: u32,
    pub rate_limit_service: Option<RlsConfig>,
    /// Counter increments wait at most this long in the worker before they
    /// reach the host (0: not batched; see `host::batch`).
    pub metrics_flush_interval_ns: u64,
}

impl Config {
    /// The pass-through configuration (no routes).
    pub fn empty() -> Self {
        Config {
            routes: Vec::new(),
            route_index: crate::route::RouteIndex::default(),
            jwt_providers: JwtProviders::default(),
            rate_limit_headers: HeaderStyle::Ietf,
            xff_trusted_hops: 0,
            ipv6_prefix: 128,
            path_normalization: Some(EscapedSlashes::Reject),
            claim_headers: Vec::new(),
            cache_store: CacheStoreConfig {
                max_bytes: DEFAULT_CACHE_MAX_BYTES,
                max_entry_bytes: DEFAULT_CACHE_MAX_ENTRY_BYTES,
            },
            max_rate_limit_keys: DEFAULT_MAX_RATE_LIMIT_KEYS,
            rate_limit_service: None,
            metrics_flush_interval_ns: DEFAULT_METRICS_FLUSH_INTERVAL_NS,
        }
    }

    /// Parses and validates a configuration document.
    pub fn from_bytes(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::expected(
                "",
                &format!("a document of at most {MAX_CONFIG_BYTES} bytes"),
                format!("{} bytes", bytes.len()),
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            ConfigError::new(
                "",
                format!(
                    "expected UTF-8 JSON text, got invalid UTF-8 at byte {}",
                    e.valid_up_to()
                ),
            )
        })?;
        if text.trim().is_empty() {
            return Ok(Config::empty());
        }
        if !text.trim_start().starts_with('{') {
            let first: String = text.trim_start().chars().take(20).collect();
            return Err(ConfigError::expected(
                "",
                "a JSON object",
                format!("{first:?}..."),
            ));
        }
        // Two steps: JSON text to a `Value` (syntax errors, with line and
        // column), then the `Value` to the typed document with the JSON path
        // tracked. Deserializing from a `Value` rather than from the text
        // keeps the path-tracking code small in the wasm module.
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ConfigError::new("", humanize_serde(&e)))?;
        if let Some(path) = shape::array_where_object(&value) {
            return Err(ConfigError::expected(path, "an object", "an array"));
        }
        let raw: RawConfig = match serde_path_to_error::deserialize(&value) {
            Ok(r) => r,
            Err(e) => {
                let path = match e.path().to_string().as_str() {
                    "?" | "." => String::new(),
                    p => p.to_string(),
                };
                return Err(ConfigError::new(path, humanize_serde(&e.into_inner())));
            }
        };
        compile(raw)
    }
}

/// The JSON Schema of the configuration document, generated from the serde
/// types (committed as `meshguard.schema.json`; a test keeps it fresh).
/// It checks structure, names and simple ranges; cross-field rules (unique
/// names, provider references, cost <= capacity...) are only checked by
/// [`Config::from_bytes`] (and `meshguard-validate`).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(raw::RawConfig);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

/// Rewrites serde's wording ("invalid type: string \"x\", expected u32")
/// into the contract's ("expected an integer, got string \"x\"").
fn humanize_serde(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    // Strip serde_json's " at line L column C" suffix: the JSON path says where.
    let msg = match msg.rfind(" at line ") {
        Some(i) if e.line() > 0 => msg[..i].to_string(),
        _ => msg,
    };
    if e.is_syntax() || e.is_eof() {
        return format!(
            "expected JSON, got a syntax error ({msg}) at line {} column {}",
            e.line(),
            e.column()
        );
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some((got, want)) = rest.split_once(", expected ") {
                return format!("expected {}, got {}", friendly_type(want), got);
            }
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        if let Some((field, allowed)) = rest.split_once(", expected ") {
            return format!("unknown key {field}: expected {allowed}");
        }
        return format!("unknown key {rest}");
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        return format!("missing required key {rest}");
    }
    msg
}

fn friendly_type(want: &str) -> String {
    match want {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" | "bool" => "true or false".into(),
        "a sequence" => "an array".into(),
        "a map" => "an object".into(),
        other => other.to_string(),
    }
}

/// Route names appear in metric names, logs and shared-data keys.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub const NAME_EXPECTED: &str =
    "a name of 1 to 64 characters from [A-Za-z0-9_-] (it is used in metric names)";

fn compile(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut cfg = Config::empty();

    if let Some(style) = &raw.rate_limit_headers {
        cfg.rate_limit_headers = HeaderStyle::parse(style).ok_or_else(|| {
            ConfigError::expected(
                "rate_limit_headers",
                "one of \"ietf\", \"legacy\", \"both\", \"none\"",
                show_str(style),
            )
        })?;
    }
    if let Some(ip) = &raw.client_ip {
        if ip.xff_trusted_hops > 64 {
            return Err(ConfigError::expected(
                "client_ip.xff_trusted_hops",
                "an integer from 0 to 64",
                ip.xff_trusted_hops,
            ));
        }
        cfg.xff_trusted_hops = ip.xff_trusted_hops;
        if let Some(p) = ip.ipv6_prefix {
            if !(1..=128).contains(&p) {
                return Err(ConfigError::expected(
                    "client_ip.ipv6_prefix",
                    "a prefix length from 1 to 128",
                    p,
                ));
            }
            cfg.ipv6_prefix = p;
        }
    }
    if let Some(pn) = &raw.path_normalization {
        let slashes = match pn.escaped_slashes.as_deref() {
            None | Some("reject") => EscapedSlashes::Reject,
            Some("keep") => EscapedSlashes::Keep,
            Some(other) => {
                return Err(ConfigError::expected(
                    "path_normalization.escaped_slashes",
                    "\"reject\" or \"keep\"",
                    show_str(other),
                ))
            }
        };
        cfg.path_normalization = (pn.enabled != Some(false)).then_some(slashes);
    }
    if let Some(cs) = &raw.cache_store {
        if let Some(m) = cs.max_bytes {
            if m < 1024 {
                return Err(ConfigError::expected(
                    "cache_store.max_bytes",
                    "an integer >= 1024",
                    m,
                ));
            }
            cfg.cache_store.max_bytes = m;
        }
        if let Some(m) = cs.max_entry_bytes {
            if m < 1 {
                return Err(ConfigError::expected(
                    "cache_store.max_entry_bytes",
                    "an integer >= 1",
                    m,
                ));
            }
            cfg.cache_store.max_entry_bytes = m;
        }
        if cfg.cache_store.max_entry_bytes > cfg.cache_store.max_bytes {
            return Err(ConfigError::expected(
                "cache_store.max_entry_bytes",
                &format!(
                    "at most cache_store.max_bytes ({})",
                    cfg.cache_store.max_bytes
                ),
                cfg.cache_store.max_entry_bytes,
            ));
        }
    }
    if let Some(n) = raw.max_rate_limit_keys {
        if !(1..=MAX_RATE_LIMIT_KEYS).contains(&n) {
            return Err(ConfigError::expected(
                "max_rate_limit_keys",
                &format!("an integer from 1 to {MAX_RATE_LIMIT_KEYS}"),
                n,
            ));
        }
        cfg.max_rate_limit_keys = n as u32;
    }

    if let Some(d) = raw.metrics_flush_interval {
        if d.0 > MAX_METRICS_FLUSH_INTERVAL_NS {
            return Err(ConfigError::expected(
                "metrics_flush_interval",
                "a duration from \"0s\" (every increment at once) to \"10s\"",
                show_str(&crate::breaker::policy::fmt_duration(d.0)),
            ));
        }
        cfg.metrics_flush_interval_ns = d.0;
    }

    if let Some(rls) = &raw.rate_limit_service {
        cfg.rate_limit_service = Some(RlsConfig::compile(rls, "rate_limit_service")?);
    }

    cfg.jwt_providers = JwtProviders::compile(&raw.jwt_providers)?;
    cfg.claim_headers = cfg.jwt_providers.claim_headers();

    if raw.routes.len() > MAX_ROUTES {
        return Err(ConfigError::expected(
            "routes",
            &format!("at most {MAX_ROUTES} routes"),
            raw.routes.len(),
        ));
    }
    let mut names = HashSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if !valid_name(&r.name) {
            return Err(ConfigError::expected(
                format!("{path}.name"),
                NAME_EXPECTED,
                show_str(&r.name),
            ));
        }
        if !names.insert(r.name.as_str()) {
            return Err(ConfigError::expected(
                format!("{path}.name"),
                "a route name used only once",
                format!("{} (already used by an earlier route)", show_str(&r.name)),
            ));
        }
        let matcher = match &r.matcher {
            Some(m) => RouteMatch::compile(m, &format!("{path}.match"))?,
            None => RouteMatch::default(),
        };
        let jwt = match &r.jwt {
            Some(j) => Some(RouteJwt::compile(
                j,
                &cfg.jwt_providers,
                &format!("{path}.jwt"),
            )?),
            None => None,
        };
        let mut rate_limits = Vec::new();
        let mut global_limits = Vec::new();
        if let Some(limits) = &r.rate_limit {
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
                let policy = LimitPolicy::compile(l, j, &r.name, &lp)?;
                if !limit_names.insert(policy.name.clone()) {
                    return Err(ConfigError::expected(
                        format!("{lp}.name"),
                        "a limit name used only once per route",
                        show_str(&policy.name),
                    ));
                }
                if policy.uses_claims() && jwt.is_none() {
                    return Err(ConfigError::new(
                        format!("{lp}.key"),
                        "expected a \"jwt\" section on this route: a {\"claim\": ...} key part needs a verified token",
                    ));
                }
                match policy.scope {
                    Scope::Local => rate_limits.push(policy),
                    Scope::Global if cfg.rate_limit_service.is_none() => {
                        return Err(ConfigError::new(
                            format!("{lp}.scope"),
                            "expected a top-level \"rate_limit_service\" section: a global limit is counted by that service",
                        ));
                    }
                    Scope::Global => global_limits.push(policy),
                }
            }
            crate::ratelimit::policy::set_policy_header(&mut rate_limits);
        }
        let rate_limit_grpc_status = match &r.rate_limit_grpc_status {
            None => crate::grpc::Code::RESOURCE_EXHAUSTED,
            Some(_) if rate_limits.is_empty() && global_limits.is_empty() => {
                return Err(ConfigError::new(
                    format!("{path}.rate_limit_grpc_status"),
                    "expected a \"rate_limit\" section on this route: the status only applies to its refusals",
                ));
            }
            Some(v) => match crate::grpc::Code::from_json(v) {
                Some(c) if c != crate::grpc::Code::OK => c,
                _ => {
                    return Err(ConfigError::expected(
                        format!("{path}.rate_limit_grpc_status"),
                        "a gRPC status name such as \"RESOURCE_EXHAUSTED\" or \"UNAVAILABLE\", or a number from 1 to 16",
                        v,
                    ))
                }
            },
        };
        let breaker = match &r.circuit_breaker {
            Some(b) => Some(BreakerPolicy::compile(
                b,
                &format!("{path}.circuit_breaker"),
            )?),
            None => None,
        };
        let cache = match &r.cache {
            Some(c) => Some(CachePolicy::compile(c, &format!("{path}.cache"))?),
            None => None,
        };
        cfg.routes.push(Route {
            name: r.name.clone(),
            matcher,
            jwt,
            rate_limits,
            global_limits,
            rate_limit_grpc_status,
            breaker,
            cache,
        });
    }
    cfg.route_index = crate::route::RouteIndex::new(cfg.routes.iter().map(|r| &r.matcher));
    Ok(cfg)
}

#[cfg(test)]
mod tests;
