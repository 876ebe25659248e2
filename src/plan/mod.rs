//! The plan: the validated, immutable [`Config`] every worker runs, assembled
//! from the raw document (`config`) by each feature's own compiler
//! (`route`, `jwt`, `ratelimit`, `breaker`, `cache`, `request`). It is the
//! one module that knows every feature; the filter reads it and never
//! changes it (its runtime handles live in the filter).

use crate::breaker::BreakerPolicy;
use crate::cache::{CachePolicy, CacheStoreConfig};
use crate::config::raw::{RawConfig, RawObservability};
use crate::config::{self, fmt_duration, show_str, valid_name, ConfigError, NAME_EXPECTED};
use crate::jwt::claims::check_claim_path;
use crate::jwt::{JwtProviders, RouteJwt};
use crate::ratelimit::policy::{
    compile_grpc_status, compile_max_keys, RouteLimits, DEFAULT_MAX_RATE_LIMIT_KEYS,
};
use crate::ratelimit::rls::RlsConfig;
use crate::ratelimit::{HeaderStyle, LimitPolicy};
use crate::request::path::{self, EscapedSlashes};
use crate::request::ClientIpRule;
use crate::route::{RouteIndex, RouteMatch};
use std::collections::HashSet;

/// Bounds that keep per-request work and memory predictable.
pub const MAX_ROUTES: usize = 1000;
/// Default and bound of `metrics_flush_interval`.
pub const DEFAULT_METRICS_FLUSH_INTERVAL_NS: u64 = 100_000_000;
pub const MAX_METRICS_FLUSH_INTERVAL_NS: u64 = 10_000_000_000;

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
    pub route_index: RouteIndex,
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
    /// What meshguard shows of its decisions (`observability`).
    pub observability: Observability,
}

/// Most claims `observability.claims` may publish.
pub const MAX_PUBLISHED_CLAIMS: usize = 32;

/// `observability`: what meshguard shows of its decisions to the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observability {
    /// Publish each decision as filter state `wasm.meshguard` (off by
    /// default: one host call that costs Envoy several microseconds per
    /// request).
    pub filter_state: bool,
    /// Verified claims published as filter state `wasm.meshguard.claim.<name>`.
    pub claims: Vec<String>,
    /// `Proxy-Status` on meshguard's own replies.
    pub proxy_status: bool,
    /// Copy the request's trace headers onto meshguard's calls.
    pub trace_propagation: bool,
}

impl Default for Observability {
    fn default() -> Self {
        Observability {
            filter_state: false,
            claims: Vec::new(),
            proxy_status: true,
            trace_propagation: true,
        }
    }
}

impl Observability {
    fn compile(raw: Option<&RawObservability>) -> Result<Observability, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Observability::default());
        };
        if raw.claims.len() > MAX_PUBLISHED_CLAIMS {
            return Err(ConfigError::expected(
                "observability.claims",
                &format!("at most {MAX_PUBLISHED_CLAIMS} claims"),
                raw.claims.len(),
            ));
        }
        let mut claims: Vec<String> = Vec::with_capacity(raw.claims.len());
        for (i, c) in raw.claims.iter().enumerate() {
            check_claim_path(c, &format!("observability.claims[{i}]"))?;
            if !claims.contains(c) {
                claims.push(c.clone());
            }
        }
        Ok(Observability {
            filter_state: raw.filter_state.unwrap_or(false),
            claims,
            proxy_status: raw.proxy_status.unwrap_or(true),
            trace_propagation: raw.trace_propagation.unwrap_or(true),
        })
    }
}

impl Config {
    /// The pass-through configuration (no routes).
    pub fn empty() -> Self {
        Config {
            routes: Vec::new(),
            route_index: RouteIndex::default(),
            jwt_providers: JwtProviders::default(),
            rate_limit_headers: HeaderStyle::Ietf,
            xff_trusted_hops: 0,
            ipv6_prefix: 128,
            path_normalization: Some(EscapedSlashes::Reject),
            claim_headers: Vec::new(),
            cache_store: CacheStoreConfig::default(),
            max_rate_limit_keys: DEFAULT_MAX_RATE_LIMIT_KEYS,
            rate_limit_service: None,
            metrics_flush_interval_ns: DEFAULT_METRICS_FLUSH_INTERVAL_NS,
            observability: Observability::default(),
        }
    }

    /// Parses and validates a configuration document.
    pub fn from_bytes(bytes: &[u8]) -> Result<Config, ConfigError> {
        match config::parse(bytes)? {
            None => Ok(Config::empty()),
            Some(raw) => compile(raw),
        }
    }
}

fn compile(raw: RawConfig) -> Result<Config, ConfigError> {
    let client_ip = ClientIpRule::compile(raw.client_ip.as_ref())?;
    let metrics_flush_interval_ns = match raw.metrics_flush_interval {
        None => DEFAULT_METRICS_FLUSH_INTERVAL_NS,
        Some(d) if d.0 <= MAX_METRICS_FLUSH_INTERVAL_NS => d.0,
        Some(d) => {
            return Err(ConfigError::expected(
                "metrics_flush_interval",
                "a duration from \"0s\" (every increment at once) to \"10s\"",
                show_str(&fmt_duration(d.0)),
            ))
        }
    };
    let rate_limit_service = match &raw.rate_limit_service {
        Some(rls) => Some(RlsConfig::compile(rls, "rate_limit_service")?),
        None => None,
    };
    let mut cfg = Config {
        rate_limit_headers: HeaderStyle::compile(raw.rate_limit_headers.as_deref())?,
        xff_trusted_hops: client_ip.xff_trusted_hops,
        ipv6_prefix: client_ip.ipv6_prefix,
        path_normalization: path::compile(raw.path_normalization.as_ref())?,
        cache_store: CacheStoreConfig::compile(raw.cache_store.as_ref())?,
        max_rate_limit_keys: compile_max_keys(raw.max_rate_limit_keys)?,
        metrics_flush_interval_ns,
        rate_limit_service,
        observability: Observability::compile(raw.observability.as_ref())?,
        ..Config::empty()
    };
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
        let limits = RouteLimits::compile(
            r.rate_limit.as_ref(),
            &r.name,
            jwt.is_some(),
            cfg.rate_limit_service.is_some(),
            &path,
        )?;
        let rate_limit_grpc_status =
            compile_grpc_status(r.rate_limit_grpc_status.as_ref(), !limits.is_empty(), &path)?;
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
            rate_limits: limits.local,
            global_limits: limits.global,
            rate_limit_grpc_status,
            breaker,
            cache,
        });
    }
    cfg.route_index = RouteIndex::new(cfg.routes.iter().map(|r| &r.matcher));
    Ok(cfg)
}

#[cfg(test)]
mod tests;
