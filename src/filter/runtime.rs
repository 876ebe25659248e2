//! What a configuration becomes in a worker VM: the validated [`Config`]
//! (never changed after it is compiled) and the runtime handles it needs,
//! metric ids first, kept beside it per route ([`RouteRuntime`]).

use crate::breaker::BreakerMetrics;
use crate::cache::CacheMetrics;
use crate::host::batch::Batched;
use crate::host::{Host, MetricId, MetricKind, Stream};
use crate::jwt::JwtMetrics;
use crate::plan::Config;
use crate::ratelimit::lease::LeaseMetrics;
use crate::ratelimit::rls::RlsMetrics;
use crate::ratelimit::{self, LimitMetrics, Limiter};
use crate::request::ClientIpRule;

/// The runtime handles of one route (same index as `Config::routes`).
pub struct RouteRuntime {
    /// Counters of the route's local limits, in order.
    pub limits: Vec<LimitMetrics>,
    /// Counters of the route's global limits, in order.
    pub global_limits: Vec<LimitMetrics>,
    /// Counters of its calls to the rate limit service.
    pub rls: RlsMetrics,
    /// Lease counters of its global limits, in order (`NONE` without `lease`).
    pub leases: Vec<LeaseMetrics>,
    /// The breaker's gauge and counters (none without a breaker).
    pub breaker: BreakerMetrics,
    pub jwt: Option<JwtMetrics>,
    pub cache: CacheMetrics,
    /// Does any rate-limit key need the peer address?
    pub needs_peer_ip: bool,
    /// Usage counters of the limits with `usage`.
    pub usage: ratelimit::usage::RouteUsageMetrics,
}

/// Everything a stream needs, immutable after `on_configure`.
pub struct Runtime {
    pub config: Config,
    pub routes: Vec<RouteRuntime>,
    pub limiter: Limiter,
    pub has_remote_jwks: bool,
    /// `meshguard.path_rejected`: requests refused for a path that cannot
    /// be normalised (`request::path`).
    pub path_rejected: MetricId,
    /// `meshguard.claim_headers_removed`: requests that carried their own
    /// copy of a header meshguard sets from claims (removed).
    pub claim_headers_removed: MetricId,
    /// `meshguard.streams_reset`: streams forgotten without their end
    /// passing through the filter (see `dispatch`).
    pub streams_reset: MetricId,
    /// `meshguard.jwks.fetches` / `meshguard.jwks.fetch_failures`: JWKS
    /// fetches sent, and those that failed (not sent, no answer, a status
    /// other than 200).
    pub jwks_fetches: MetricId,
    pub jwks_fetch_failures: MetricId,
}

impl Runtime {
    /// Defines the configuration's metrics; the configuration is kept as
    /// compiled.
    pub fn new(host: &impl Host, config: Config) -> Runtime {
        let counter = |name: &str| {
            host.define_metric(MetricKind::Counter, name)
                .unwrap_or(MetricId::NONE)
        };
        let evictions = counter("meshguard.ratelimit.evictions");
        let routes = config
            .routes
            .iter()
            .map(|r| RouteRuntime {
                limits: ratelimit::define_metrics(host, &r.name, &r.rate_limits),
                global_limits: ratelimit::define_metrics(host, &r.name, &r.global_limits),
                rls: if r.global_limits.is_empty() {
                    RlsMetrics::NONE
                } else {
                    RlsMetrics::define(host, &r.name)
                },
                leases: r
                    .global_limits
                    .iter()
                    .map(|l| match l.lease {
                        0 => LeaseMetrics::NONE,
                        _ => LeaseMetrics::define(host, &r.name, &l.name),
                    })
                    .collect(),
                breaker: match r.breaker {
                    Some(_) => BreakerMetrics::define(host, &r.name),
                    None => BreakerMetrics::none(),
                },
                jwt: r.jwt.as_ref().map(|_| JwtMetrics::define(host, &r.name)),
                cache: match r.cache {
                    Some(_) => CacheMetrics::define(host, &r.name),
                    None => CacheMetrics::NONE,
                },
                needs_peer_ip: config.xff_trusted_hops > 0
                    || r.rate_limits
                        .iter()
                        .chain(&r.global_limits)
                        .any(|l| l.key.contains(&ratelimit::KeyPart::ClientIp)),
                usage: ratelimit::usage::define_metrics(
                    host,
                    &r.name,
                    &r.rate_limits,
                    &r.global_limits,
                ),
            })
            .collect();
        let limiter = Limiter {
            slots: config.max_rate_limit_keys,
            style: config.rate_limit_headers,
            client_ip: ClientIpRule {
                xff_trusted_hops: config.xff_trusted_hops,
                ipv6_prefix: config.ipv6_prefix,
            },
            evictions,
        };
        let path_rejected = counter("meshguard.path_rejected");
        let claim_headers_removed = counter("meshguard.claim_headers_removed");
        // Defined with the configuration's metrics, so it shows as 0.
        let streams_reset = counter("meshguard.streams_reset");
        let jwks_fetches = counter("meshguard.jwks.fetches");
        let jwks_fetch_failures = counter("meshguard.jwks.fetch_failures");
        let has_remote_jwks =
            (0..config.jwt_providers.len()).any(|i| config.jwt_providers.remote(i).is_some());
        Runtime {
            config,
            routes,
            limiter,
            has_remote_jwks,
            path_rejected,
            claim_headers_removed,
            streams_reset,
            jwks_fetches,
            jwks_fetch_failures,
        }
    }

    /// The host a stream's work uses: the proxy, with counter increments
    /// batched in the VM unless `metrics_flush_interval` is "0s" or the
    /// host does not batch (the root's tick flushes them; see
    /// `host::batch`).
    pub fn host<'a, P: Host + Stream>(&self, px: &'a P) -> Batched<'a, P> {
        let batch = self.config.metrics_flush_interval_ns > 0 && px.batches_counters();
        Batched::new(px, batch.then(|| px.metric_batch()))
    }

    /// Route `idx`'s runtime handles.
    pub fn route(&self, idx: usize) -> Option<&RouteRuntime> {
        self.routes.get(idx)
    }
}
