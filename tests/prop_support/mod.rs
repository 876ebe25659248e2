//! Shared by the property tests (`tests/prop_*.rs`): a worker whose
//! shared-data writes can be raced by another worker, deterministically.
//!
//! `Racing` wraps one clone of a `FakeHost` (one worker VM). Before each of
//! its compare-and-swap writes it pops one step of a plan: `true` runs the
//! rival's whole operation (on another clone of the same store) first, so
//! the write lands between the worker's read and its CAS exactly as a
//! competing worker's would. proptest chooses the plans, so every
//! interleaving at write granularity is reachable and shrinks to a minimal
//! counter-example.

#![allow(dead_code)]

use meshguard::host::fake::FakeHost;
use meshguard::host::{Host, HostError, MetricId, MetricKind, SetError, SharedValue};
use std::cell::RefCell;
use std::collections::VecDeque;

/// Cases per property: `MESHGUARD_PROP_CASES` (default `default`).
pub fn cases(default: u32) -> u32 {
    std::env::var("MESHGUARD_PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub struct Racing<'r> {
    pub me: FakeHost,
    plan: RefCell<VecDeque<bool>>,
    rival: RefCell<Option<Box<dyn FnMut() + 'r>>>,
}

impl<'r> Racing<'r> {
    pub fn new(me: FakeHost) -> Self {
        Racing {
            me,
            plan: RefCell::new(VecDeque::new()),
            rival: RefCell::new(None),
        }
    }

    /// The next writes are raced as `plan` says, by `rival`.
    pub fn race(&self, plan: &[bool], rival: impl FnMut() + 'r) {
        *self.plan.borrow_mut() = plan.iter().copied().collect();
        *self.rival.borrow_mut() = Some(Box::new(rival));
    }

    /// No more racing (the rival's borrows end here).
    pub fn calm(&self) {
        self.plan.borrow_mut().clear();
        *self.rival.borrow_mut() = None;
    }
}

impl Host for Racing<'_> {
    fn now_nanos(&self) -> u64 {
        self.me.now_nanos()
    }
    fn shared_get(&self, key: &str) -> Result<SharedValue, HostError> {
        self.me.shared_get(key)
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        let go = self.plan.borrow_mut().pop_front().unwrap_or(false);
        if go {
            // Taken out while it runs: a rival never races itself.
            let rival = self.rival.borrow_mut().take();
            if let Some(mut f) = rival {
                f();
                *self.rival.borrow_mut() = Some(f);
            }
        }
        self.me.shared_set(key, value, cas)
    }
    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        self.me.random_bytes(buf)
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<MetricId, HostError> {
        self.me.define_metric(kind, name)
    }
    fn increment_metric(&self, id: MetricId, delta: i64) {
        self.me.increment_metric(id, delta)
    }
    fn record_metric(&self, id: MetricId, value: u64) {
        self.me.record_metric(id, value)
    }
}
