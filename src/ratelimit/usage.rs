//! Usage-based cost (docs: "Usage-based limits"): a limit with `usage` reads a
//! request's real cost from its response, in a header, in a JSON body field
//! (dotted path) or in the JSON `data` of the last server-sent event that
//! carries it. The limit's `cost` is the estimate taken up front (default
//! 1); the difference is settled when the response ends:
//!
//! - local limits: the extra is charged even past zero (the bucket goes
//!   into debt: it refills nothing until the debt is paid, so later
//!   requests wait), a cost below the estimate is given back (debt first);
//! - global limits: the extra is reported to the rate limit service as a
//!   second call with the same descriptors and `hits_addend` = the extra,
//!   its answer ignored (Envoy's `apply_on_stream_done`); the RLS protocol
//!   has no refund, so a cost below the estimate stays charged.
//!
//! Settling never holds the response: the body is scanned as it passes,
//! nothing is buffered but a bounded piece (`max_body_bytes`: the whole
//! JSON body is scanned in a streaming pass with no copy; for SSE, one
//! event's data is kept). Anything unreadable (missing, malformed, not a
//! number, negative, above 10^9, over the bound) keeps the estimate and is
//! counted in `usage_settlement_failures`; fractional costs round up.

use super::bucket::BucketParams;
pub use super::meter::*;
use super::policy::{KeyPart, LimitPolicy};
use super::rls::proto;
use super::{store, LimitRef, Taken, TakenList};
use crate::host::{Host, MetricId, MetricKind};
use crate::request::{ClientIpRule, Request};

/// The usage counters of one limit with `usage`.
#[derive(Debug, Clone, Copy)]
pub struct UsageMetrics {
    /// Tokens charged in all (estimates, then settled costs).
    pub tokens: MetricId,
    pub settled: MetricId,
    pub failures: MetricId,
    /// Tokens charged past an empty bucket (local limits).
    pub debt_tokens: MetricId,
}

/// The usage counters of a route's limits: `local[i]` / `global[i]` for
/// limit `i` (`None` for limits without `usage`).
#[derive(Debug, Clone, Default)]
pub struct RouteUsageMetrics {
    pub local: Vec<Option<UsageMetrics>>,
    pub global: Vec<Option<UsageMetrics>>,
}

/// Defines `meshguard.ratelimit.<route>.<limit>.usage_tokens`,
/// `.usage_settled`, `.usage_settlement_failures`, `.usage_debt_tokens`.
pub fn define_metrics(
    host: &impl Host,
    route: &str,
    local: &[LimitPolicy],
    global: &[LimitPolicy],
) -> RouteUsageMetrics {
    let def = |l: &LimitPolicy| {
        l.usage.as_ref()?;
        let c = |what: &str| {
            host.define_metric(
                MetricKind::Counter,
                &format!("meshguard.ratelimit.{route}.{}.{what}", l.name),
            )
            .unwrap_or(MetricId::NONE)
        };
        Some(UsageMetrics {
            tokens: c("usage_tokens"),
            settled: c("usage_settled"),
            failures: c("usage_settlement_failures"),
            debt_tokens: c("usage_debt_tokens"),
        })
    };
    RouteUsageMetrics {
        local: local.iter().map(def).collect(),
        global: global.iter().map(def).collect(),
    }
}

/// One limit of a request waiting for its response's cost.
#[derive(Debug, Clone)]
pub struct Pending {
    pub of: LimitRef,
    /// Where a local limit's tokens were taken.
    pub taken: Option<Taken>,
    /// A global limit's `limit_remaining` after the first call, when the
    /// service said: the report never adds more (see [`settle`]).
    pub remaining: Option<u64>,
    pub meter: Meter,
}

/// The limits of an admitted request that settle on its response.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub pending: Vec<Pending>,
}

impl Usage {
    /// The usage limits of a request: the local ones that took tokens
    /// (`taken`; shadow limits take none and settle nothing) and, when the
    /// service was asked, the global ones (`global_remaining[i]`: what the
    /// service said was left of limit `i`, if it said). `None` when there
    /// are none.
    pub fn begin(
        local: &[LimitPolicy],
        global: &[LimitPolicy],
        taken: &TakenList,
        with_global: bool,
        global_remaining: &[Option<u64>],
    ) -> Option<Usage> {
        let mut pending = Vec::new();
        for t in taken.iter() {
            if let Some(p) = local.get(t.limit).and_then(|l| l.usage.as_ref()) {
                pending.push(Pending {
                    of: LimitRef::Local(t.limit),
                    taken: Some(t.clone()),
                    remaining: None,
                    meter: Meter::new(p),
                });
            }
        }
        if with_global {
            for (i, l) in global.iter().enumerate() {
                if let Some(p) = &l.usage {
                    pending.push(Pending {
                        of: LimitRef::Global(i),
                        taken: None,
                        remaining: global_remaining.get(i).copied().flatten(),
                        meter: Meter::new(p),
                    });
                }
            }
        }
        (!pending.is_empty()).then_some(Usage { pending })
    }

    pub fn wants_body(&self) -> bool {
        self.pending.iter().any(|p| p.meter.wants_body())
    }

    pub fn on_headers(
        &mut self,
        local: &[LimitPolicy],
        global: &[LimitPolicy],
        header: impl Fn(&str) -> Option<Vec<u8>>,
    ) {
        for p in &mut self.pending {
            if let Some(u) = policy(local, global, p.of).and_then(|l| l.usage.as_ref()) {
                p.meter.on_headers(u, &header);
            }
        }
    }

    pub fn on_body(&mut self, local: &[LimitPolicy], global: &[LimitPolicy], chunk: &[u8]) {
        for p in &mut self.pending {
            if let Some(u) = policy(local, global, p.of).and_then(|l| l.usage.as_ref()) {
                p.meter.on_body(u, chunk);
            }
        }
    }
}

fn policy<'a>(
    local: &'a [LimitPolicy],
    global: &'a [LimitPolicy],
    of: LimitRef,
) -> Option<&'a LimitPolicy> {
    match of {
        LimitRef::Local(i) => local.get(i),
        LimitRef::Global(i) => global.get(i),
    }
}

/// Settles a request's usage limits (its response ended, or its stream):
/// local buckets are charged or refunded at once; the global limits' extra
/// costs are returned, `(global limit index, extra tokens)`, for a report
/// to the rate limit service: at most what the service said was left of
/// the limit after the first call.
pub fn settle(
    host: &impl Host,
    route: &str,
    local: &[LimitPolicy],
    global: &[LimitPolicy],
    metrics: &RouteUsageMetrics,
    usage: &mut Usage,
) -> Vec<(usize, u64)> {
    let mut report = Vec::new();
    for p in &mut usage.pending {
        let Some(l) = policy(local, global, p.of) else {
            continue;
        };
        let Some(u) = &l.usage else {
            continue;
        };
        let m = match p.of {
            LimitRef::Local(i) => metrics.local.get(i),
            LimitRef::Global(i) => metrics.global.get(i),
        }
        .copied()
        .flatten();
        let bump = |id: Option<MetricId>, n: u64| {
            if let Some(id) = id.filter(|_| n > 0) {
                host.increment_metric(id, n as i64);
            }
        };
        let reading = p.meter.finish(u);
        let actual = match reading {
            Reading::Cost(c) => c,
            other => {
                log::debug!(
                    "meshguard: usage of {route}/{}: {}; the estimate ({}) stands",
                    l.name,
                    other.reason(),
                    l.cost
                );
                bump(m.map(|m| m.failures), 1);
                bump(m.map(|m| m.tokens), l.cost);
                continue;
            }
        };
        bump(m.map(|m| m.settled), 1);
        bump(m.map(|m| m.tokens), actual);
        match (p.of, &p.taken) {
            (LimitRef::Local(_), Some(t)) => {
                let (prefix, prefix_hash) = super::prefix_of(l, route);
                let identity = store::Identity {
                    prefix: &prefix,
                    prefix_hash,
                    key: &t.key,
                };
                let params = BucketParams {
                    capacity: l.capacity,
                    refill_tokens: l.refill_tokens,
                    refill_interval_ns: l.refill_interval_ns,
                };
                match store::settle_id(host, t.slot, &identity, &params, l.cost, actual) {
                    Ok(debt) => bump(m.map(|m| m.debt_tokens), debt),
                    Err(e) => {
                        log::warn!(
                            "meshguard: usage settlement of {route}/{} failed: {e:?}",
                            l.name
                        );
                        bump(m.map(|m| m.failures), 1);
                    }
                }
            }
            (LimitRef::Global(i), _) if actual > l.cost => {
                // Never more than the service said was left: a report past
                // the limit may not be counted at all (Limitador counts
                // nothing for a call over the limit), and with it the
                // window's budget is spent either way.
                let extra = (actual - l.cost).min(p.remaining.unwrap_or(u64::MAX));
                if extra > 0 {
                    report.push((i, extra));
                }
            }
            _ => {}
        }
    }
    usage.pending.clear();
    report
}

/// The `RateLimitRequest` reporting the extra cost of a request to the
/// rate limit service: the descriptors of the first call for the limits in
/// `extra`, each with `hits_addend` = its extra tokens.
pub fn report(
    domain: &str,
    route: &str,
    global: &[LimitPolicy],
    extra: &[(usize, u64)],
    req: &Request,
    claims: Option<&crate::jwt::claims::Claims>,
    client_ip: ClientIpRule,
) -> Vec<u8> {
    let descriptors: Vec<proto::RateLimitDescriptor> = extra
        .iter()
        .filter_map(|(i, n)| Some((global.get(*i)?, *n)))
        .map(|(l, n)| {
            let values = l
                .key
                .iter()
                .map(|p: &KeyPart| p.value(req, claims, client_ip));
            proto::RateLimitDescriptor {
                entries: super::rls::descriptor_entries(route, l, values),
                hits_addend: Some(proto::UInt64Value { value: n }),
            }
        })
        .collect();
    // Services that predate the descriptor's own addend read the
    // request's: right when every descriptor adds the same.
    let same = extra.windows(2).all(|w| matches!(w, [a, b] if a.1 == b.1));
    let hits = match extra.first() {
        Some((_, n)) if same => (*n).min(u32::MAX as u64) as u32,
        _ => 0,
    };
    proto::RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: hits,
    }
    .encode()
}

#[cfg(test)]
mod tests;
