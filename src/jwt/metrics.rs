//! Per-route JWT counters (names in the `jwt` module docs).

use super::authenticate::AuthOutcome;
use super::verify;
use crate::host::{Host, MetricId, MetricKind};

/// Per-route counters; see the module docs for names.
#[derive(Debug, Clone, Copy)]
pub struct JwtMetrics {
    pub allowed: MetricId,
    pub denied: MetricId,
    pub cache_hit: MetricId,
    pub keys_pending: MetricId,
    pub checks_native: MetricId,
    pub checks_wasm: MetricId,
}

impl JwtMetrics {
    /// Defines the counters (configuration time); a failure leaves a no-op metric.
    pub fn define(host: &impl Host, route: &str) -> JwtMetrics {
        let d = |s: &str| {
            host.define_metric(MetricKind::Counter, &format!("meshguard.jwt.{route}.{s}"))
                .unwrap_or(MetricId::NONE)
        };
        JwtMetrics {
            allowed: d("allowed"),
            denied: d("denied"),
            cache_hit: d("cache_hit"),
            keys_pending: d("keys_pending"),
            checks_native: d("signature_checks_native"),
            checks_wasm: d("signature_checks_wasm"),
        }
    }

    /// Counts one request's signature checks (none on a cache hit: no host
    /// call then).
    pub fn record_checks(&self, host: &impl Host, checks: verify::VerifyStats) {
        let native = checks.native_calls.min(checks.signature_checks);
        if native > 0 {
            host.increment_metric(self.checks_native, native as i64);
        }
        if checks.signature_checks > native {
            host.increment_metric(self.checks_wasm, (checks.signature_checks - native) as i64);
        }
    }

    pub fn record(&self, host: &impl Host, outcome: &AuthOutcome) {
        match outcome {
            AuthOutcome::Allowed { cache_hit, .. } => {
                host.increment_metric(self.allowed, 1);
                if *cache_hit {
                    host.increment_metric(self.cache_hit, 1);
                }
            }
            AuthOutcome::Denied { .. } => host.increment_metric(self.denied, 1),
            AuthOutcome::KeysPending { .. } => host.increment_metric(self.keys_pending, 1),
        }
    }
}
