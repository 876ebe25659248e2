//! Counter increments batched per worker VM, flushed by the root's timer.
//!
//! Every `proxy_increment_metric` is a call out of the VM, and V8 makes
//! those dear: on a route with JWT, a rate limit and a breaker, the three
//! counters a request bumps cost more than all of meshguard's own code for
//! that request (see `bench/README.md`). Envoy's own filters bump atomics in
//! memory. So the filter adds increments up here, one slot per counter, and
//! the root context's tick hands each counter's sum to the host in one call
//! (top-level `metrics_flush_interval`, default 100 ms; `"0s"` turns
//! batching off and every increment goes straight to the host).
//!
//! What users see: a counter in `/stats` lags the traffic by at most the
//! flush interval (plus one tick's jitter) and is exact after that. Only
//! counter increments are batched: gauges set with `record_metric` (the
//! breaker's `state`) and histograms go to the host at once, and no metric
//! is both incremented and set. If Envoy tears the whole VM down (the module
//! itself is replaced), the increments of its last interval are lost; a new
//! configuration of the same module keeps the VM and its pending counts.

use super::{Host, HostError, IdHasher, MetricId, MetricKind, SetError, SharedValue};
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// Pending counter increments: one sum per metric.
#[derive(Debug, Default)]
pub struct MetricBatch {
    pending: RefCell<HashMap<MetricId, i64, BuildHasherDefault<IdHasher>>>,
    used: std::cell::Cell<bool>,
}

impl MetricBatch {
    /// Adds `delta` to the metric's pending sum (no host call).
    pub fn add(&self, id: MetricId, delta: i64) {
        if id == MetricId::NONE || delta == 0 {
            return;
        }
        // Never re-entered (nothing here calls out), so the borrow cannot
        // fail; if it somehow did, the increment goes to no one rather than
        // panicking on traffic.
        self.used.set(true);
        if let Ok(mut p) = self.pending.try_borrow_mut() {
            let sum = p.entry(id).or_insert(0);
            *sum = sum.saturating_add(delta);
        }
    }

    /// Hands every pending sum to `host` (one call per metric with a
    /// non-zero sum) and empties the batch. Returns the number of calls.
    pub fn flush(&self, host: &impl Host) -> usize {
        // The sums are taken out of the cell (an empty map allocates
        // nothing), so the host is called without the borrow held, and put
        // back emptied: its capacity serves the next flush (the native
        // module flushes at the end of every hook: no allocation per hook).
        let mut taken = match self.pending.try_borrow_mut() {
            Ok(mut p) if !p.is_empty() => std::mem::take(&mut *p),
            _ => return 0,
        };
        let mut calls = 0;
        for (id, delta) in taken.drain() {
            if delta != 0 {
                host.increment_metric(id, delta);
                calls += 1;
            }
        }
        if let Ok(mut p) = self.pending.try_borrow_mut() {
            // Anything added while the host was called stays pending.
            if p.is_empty() {
                *p = taken;
            }
        }
        calls
    }

    /// Whether increments wait for a flush.
    pub fn is_empty(&self) -> bool {
        self.pending.try_borrow().map_or(true, |p| p.is_empty())
    }

    /// Whether anything was ever added: the VM then keeps flushing, even
    /// under a configuration that no longer batches (streams of the one
    /// before may still be adding).
    pub fn ever_used(&self) -> bool {
        self.used.get()
    }

    /// The pending sum of one metric (0 if none).
    pub fn pending(&self, id: MetricId) -> i64 {
        self.pending
            .try_borrow()
            .ok()
            .and_then(|p| p.get(&id).copied())
            .unwrap_or(0)
    }
}

/// A host whose counter increments go to a [`MetricBatch`] (when given
/// one); everything else goes to the inner host unchanged.
pub struct Batched<'a, H: Host> {
    inner: &'a H,
    batch: Option<&'a MetricBatch>,
}

impl<'a, H: Host> Batched<'a, H> {
    /// `batch: None` passes increments straight through.
    pub fn new(inner: &'a H, batch: Option<&'a MetricBatch>) -> Self {
        Batched { inner, batch }
    }
}

impl<H: Host> Host for Batched<'_, H> {
    fn now_nanos(&self) -> u64 {
        self.inner.now_nanos()
    }
    fn shared_get(&self, key: &str) -> Result<SharedValue, HostError> {
        self.inner.shared_get(key)
    }
    fn shared_read<R>(
        &self,
        key: &str,
        f: impl FnOnce(Option<&[u8]>, Option<u32>) -> R,
    ) -> Result<R, HostError> {
        self.inner.shared_read(key, f)
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        self.inner.shared_set(key, value, cas)
    }
    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        self.inner.random_bytes(buf)
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<MetricId, HostError> {
        self.inner.define_metric(kind, name)
    }
    fn increment_metric(&self, id: MetricId, delta: i64) {
        match self.batch {
            Some(b) => b.add(id, delta),
            None => self.inner.increment_metric(id, delta),
        }
    }
    fn record_metric(&self, id: MetricId, value: u64) {
        self.inner.record_metric(id, value)
    }
    fn call_foreign(&self, name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        self.inner.call_foreign(name, args)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeHost;
    use super::*;

    #[test]
    fn increments_wait_for_the_flush_then_arrive_summed_once_per_metric() {
        let h = FakeHost::new(1);
        let a = h.define_metric(MetricKind::Counter, "a").expect("a");
        let b = h.define_metric(MetricKind::Counter, "b").expect("b");
        let batch = MetricBatch::default();
        let batched = Batched::new(&h, Some(&batch));
        for _ in 0..1000 {
            batched.increment_metric(a, 1);
        }
        batched.increment_metric(b, 7);
        batched.increment_metric(b, 0);
        assert_eq!(
            (h.metric("a"), h.metric("b")),
            (Some(0), Some(0)),
            "nothing reaches the host before a flush"
        );
        assert_eq!((batch.pending(a), batch.pending(b)), (1000, 7));
        assert_eq!(batch.flush(&h), 2, "one call per metric");
        assert_eq!((h.metric("a"), h.metric("b")), (Some(1000), Some(7)));
        assert!(batch.is_empty());
        assert_eq!(batch.flush(&h), 0, "an empty batch makes no call");
        batched.increment_metric(a, 2);
        batch.flush(&h);
        assert_eq!(h.metric("a"), Some(1002), "later increments add up");
    }

    #[test]
    fn without_a_batch_increments_go_straight_through_and_the_rest_is_delegated() {
        let h = FakeHost::new(1);
        let a = h.define_metric(MetricKind::Counter, "a").expect("a");
        let g = h.define_metric(MetricKind::Gauge, "g").expect("g");
        let direct = Batched::new(&h, None);
        direct.increment_metric(a, 3);
        assert_eq!(h.metric("a"), Some(3));
        let batch = MetricBatch::default();
        let batched = Batched::new(&h, Some(&batch));
        batched.record_metric(g, 2);
        assert_eq!(h.metric("g"), Some(2), "gauges are set at once");
        batched.shared_set("k", b"v", None).expect("set");
        assert_eq!(h.raw("k").as_deref(), Some(&b"v"[..]));
        assert_eq!(batched.now_nanos(), h.now_nanos());
    }

    #[test]
    fn undefined_metrics_and_zero_deltas_leave_nothing_pending() {
        let batch = MetricBatch::default();
        batch.add(MetricId::NONE, 5);
        batch.add(MetricId(3), 0);
        assert!(batch.is_empty());
        assert!(!batch.ever_used());
        batch.add(MetricId(3), i64::MAX);
        assert!(batch.ever_used());
        batch.add(MetricId(3), 1);
        assert_eq!(
            batch.pending(MetricId(3)),
            i64::MAX,
            "saturates, never wraps"
        );
    }

    #[test]
    fn a_sum_that_cancels_out_makes_no_call() {
        let h = FakeHost::new(1);
        let g = h.define_metric(MetricKind::Gauge, "g").expect("g");
        let batch = MetricBatch::default();
        batch.add(g, 4);
        batch.add(g, -4);
        assert_eq!(batch.flush(&h), 0);
        assert_eq!(h.metric("g"), Some(0));
    }

    #[test]
    fn increments_added_during_a_flush_stay_pending_and_the_batch_is_reused() {
        let h = FakeHost::new(1);
        let a = h.define_metric(MetricKind::Counter, "a").expect("a");
        let b = h.define_metric(MetricKind::Counter, "b").expect("b");
        let batch = MetricBatch::default();
        batch.add(a, 5);
        batch.add(b, 2);
        // A host whose increments come back into the batch being flushed
        // (a host call that re-enters the filter): nothing may be lost.
        let reentrant = Batched::new(&h, Some(&batch));
        assert_eq!(batch.flush(&reentrant), 2);
        assert_eq!(
            (batch.pending(a), batch.pending(b)),
            (5, 2),
            "added while flushing: kept for the next flush"
        );
        assert_eq!(batch.flush(&h), 2);
        assert_eq!((h.metric("a"), h.metric("b")), (Some(5), Some(2)));
        for round in 0..3 {
            batch.add(a, 1);
            assert_eq!(batch.flush(&h), 1, "round {round}");
        }
        assert_eq!(h.metric("a"), Some(8));
        assert!(batch.is_empty());
    }
}
