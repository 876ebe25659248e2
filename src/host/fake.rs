//! In-memory [`Host`] for tests: real CAS semantics (same rules as Envoy's
//! shared data), a settable clock, deterministic randomness, inspectable
//! metrics, and failure injection.
//!
//! Clone a `FakeHost` to get a second "worker" sharing the same store,
//! metrics and clock, as Envoy's worker VMs share one process.

use super::{Host, HostError, MetricId, MetricKind, SetError, SharedValue};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Store {
    map: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    metrics: Vec<(String, MetricKind, i64)>,
}

/// See the module docs.
#[derive(Clone, Default)]
pub struct FakeHost {
    store: Arc<Mutex<Store>>,
    clock: Arc<AtomicU64>,
    /// `now_nanos` calls so far (each one a host call in Envoy).
    clock_reads: Arc<AtomicU64>,
    rng: Arc<AtomicU64>,
    /// When > 0, the next N `shared_set` calls fail with a CAS mismatch.
    forced_cas_failures: Arc<AtomicU64>,
    /// When true, every shared-data call fails with a host error.
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeHost {
    /// A host whose clock reads `start_nanos`.
    pub fn new(start_nanos: u64) -> Self {
        let h = FakeHost::default();
        h.clock.store(start_nanos, Ordering::SeqCst);
        h.rng.store(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst);
        h
    }

    /// How many times the clock was read.
    pub fn clock_reads(&self) -> u64 {
        self.clock_reads.load(Ordering::SeqCst)
    }

    pub fn set_now(&self, nanos: u64) {
        self.clock.store(nanos, Ordering::SeqCst);
    }

    pub fn advance(&self, d: std::time::Duration) {
        self.clock.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Makes the next `n` writes fail with a CAS mismatch (contention).
    pub fn force_cas_failures(&self, n: u64) {
        self.forced_cas_failures.store(n, Ordering::SeqCst);
    }

    /// Makes every shared-data call fail (host error) until reset.
    pub fn set_broken(&self, broken: bool) {
        self.broken.store(broken, Ordering::SeqCst);
    }

    /// Number of keys in shared data.
    pub fn shared_len(&self) -> usize {
        self.lock().map.len()
    }

    /// Raw value of a key (tests only).
    pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().map.get(key).map(|(v, _)| v.clone())
    }

    /// Overwrites a key unconditionally (tests: corrupt values).
    pub fn put_raw(&self, key: &str, value: &[u8]) {
        let mut s = self.lock();
        let cas = s.bump();
        s.map.insert(key.to_string(), (value.to_vec(), cas));
    }

    /// Value of a metric by name, if defined.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.lock()
            .metrics
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
    }

    /// All metric names defined so far.
    pub fn metric_names(&self) -> Vec<String> {
        self.lock()
            .metrics
            .iter()
            .map(|(n, _, _)| n.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        match self.store.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl Store {
    fn bump(&mut self) -> u32 {
        // Envoy's counter: starts at 1, skips 0 on wrap.
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        self.next_cas
    }
}

impl Host for FakeHost {
    fn now_nanos(&self) -> u64 {
        self.clock_reads.fetch_add(1, Ordering::SeqCst);
        self.clock.load(Ordering::SeqCst)
    }

    fn shared_get(&self, key: &str) -> Result<SharedValue, HostError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(HostError("fake: shared data broken".into()));
        }
        let s = self.lock();
        Ok(match s.map.get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(SetError::Host("fake: shared data broken".into()));
        }
        if self
            .forced_cas_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(SetError::CasMismatch);
        }
        let mut s = self.lock();
        if let Some((_, current)) = s.map.get(key) {
            if let Some(c) = cas {
                if c != 0 && c != *current {
                    return Err(SetError::CasMismatch);
                }
            }
        }
        let new_cas = s.bump();
        s.map.insert(key.to_string(), (value.to_vec(), new_cas));
        Ok(())
    }

    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        for b in buf.iter_mut() {
            // xorshift64*: deterministic, good enough for jitter tests.
            let mut x = self.rng.load(Ordering::SeqCst);
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.rng.store(x, Ordering::SeqCst);
            *b = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8;
        }
        Ok(())
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<MetricId, HostError> {
        let mut s = self.lock();
        if let Some(i) = s.metrics.iter().position(|(n, _, _)| n == name) {
            return Ok(MetricId(i as u32));
        }
        s.metrics.push((name.to_string(), kind, 0));
        Ok(MetricId((s.metrics.len() - 1) as u32))
    }

    fn increment_metric(&self, id: MetricId, delta: i64) {
        let mut s = self.lock();
        if let Some(m) = s.metrics.get_mut(id.0 as usize) {
            m.2 += delta;
        }
    }

    fn record_metric(&self, id: MetricId, value: u64) {
        let mut s = self.lock();
        if let Some(m) = s.metrics.get_mut(id.0 as usize) {
            m.2 = value as i64;
        }
    }
}
