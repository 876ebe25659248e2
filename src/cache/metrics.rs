//! Per-route cache counters.

use crate::host::{Host, MetricId, MetricKind};

/// The counters of one route:
/// `meshguard.cache.<route>.{hit,miss,stored,evicted,bypass,purged,purge_denied,purged_prefix,purged_tag,refetched,refetch_failed}`
/// (`purged`: stored responses a `PURGE` dropped; `purge_denied`: `PURGE`
/// requests refused; `purged_prefix` / `purged_tag`: purges by prefix / by
/// tag recorded; `refetched` / `refetch_failed`: a revalidation's 304
/// named another representation and the full request succeeded / did not,
/// see [`refetch`](super::refetch)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheMetrics {
    pub hit: MetricId,
    pub miss: MetricId,
    pub stored: MetricId,
    pub evicted: MetricId,
    pub bypass: MetricId,
    pub purged: MetricId,
    pub purge_denied: MetricId,
    pub refetched: MetricId,
    pub refetch_failed: MetricId,
    pub purged_prefix: MetricId,
    pub purged_tag: MetricId,
}

impl CacheMetrics {
    pub const NONE: CacheMetrics = CacheMetrics {
        hit: MetricId::NONE,
        miss: MetricId::NONE,
        stored: MetricId::NONE,
        evicted: MetricId::NONE,
        bypass: MetricId::NONE,
        purged: MetricId::NONE,
        purge_denied: MetricId::NONE,
        refetched: MetricId::NONE,
        refetch_failed: MetricId::NONE,
        purged_prefix: MetricId::NONE,
        purged_tag: MetricId::NONE,
    };

    /// Defines the route's counters (call once, at configuration time). A
    /// counter the host refuses is `MetricId::NONE` (recording is a no-op).
    pub fn define(host: &impl Host, route: &str) -> CacheMetrics {
        let d = |what: &str| {
            host.define_metric(
                MetricKind::Counter,
                &format!("meshguard.cache.{route}.{what}"),
            )
            .unwrap_or(MetricId::NONE)
        };
        CacheMetrics {
            hit: d("hit"),
            miss: d("miss"),
            stored: d("stored"),
            evicted: d("evicted"),
            bypass: d("bypass"),
            purged: d("purged"),
            purge_denied: d("purge_denied"),
            refetched: d("refetched"),
            refetch_failed: d("refetch_failed"),
            purged_prefix: d("purged_prefix"),
            purged_tag: d("purged_tag"),
        }
    }
}
