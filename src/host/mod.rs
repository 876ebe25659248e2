//! The host port: everything meshguard's logic needs from its environment.
//!
//! Features (rate limiting, JWT, breaker, cache) take `&impl Host` and never
//! call the host themselves. The filter's stream I/O (headers, bodies,
//! local replies, resumption, calls) goes through the second port,
//! [`Stream`] (`stream.rs`), faked by `fake_stream.rs`. `proxy_wasm.rs` is the only adapter to the real
//! host (Envoy), through the ABI imports declared in `abi.rs`; `fake.rs` is an in-memory host with the same
//! compare-and-swap semantics and a settable clock, for native tests.
//! Two wrappers shape how a request's work reaches the host: `OneClock`
//! (one clock reading per pass) and `batch::Batched` (counter increments
//! summed in the worker VM and flushed by the root's tick).
//!
//! Shared-data semantics (as implemented by Envoy, and mirrored by the fake):
//! - `shared_get` returns the value and its CAS token (never 0);
//!   `shared_read` hands the same to a closure, without a copy where the
//!   host keeps the bytes (the native module's store).
//! - `shared_set(key, v, Some(cas))` fails with [`SetError::CasMismatch`] when
//!   the key exists and its token differs; `None` writes unconditionally.
//! - A set on an ABSENT key always succeeds, whatever the token. To create a
//!   key only if nobody else did, use [`CREATE_CAS`]: it cannot match an
//!   existing key's token unless the host's 32-bit counter is exactly there
//!   (once in 4 billion writes), so racing creators lose and retry.
//! - There is no delete and no eviction: keys must come from bounded sets.

#[cfg(target_os = "wasi")]
pub(crate) mod abi;
#[cfg(all(target_os = "wasi", feature = "alloc-count"))]
mod alloc_count;
pub(crate) mod batch;
pub mod fake;
#[cfg(test)]
pub(crate) mod fake_stream;
pub mod header_map;
#[cfg(target_os = "wasi")]
pub(crate) mod proxy_wasm;
pub(crate) mod stream;

pub use stream::{HeaderVisitor, Stream};

use std::fmt;

/// CAS token used to create a key only if it is still absent (see module docs).
pub const CREATE_CAS: u32 = u32::MAX;

/// How far ahead of one worker's clock another worker's may read. A lock
/// or lease in shared data carries its deadline in the taker's clock; one
/// taken a moment ago by a worker whose clock reads later lies up to its
/// length plus this ahead of `now` and is live (proxy-wasm's clock is each
/// worker's event-loop time; a native worker may read `now` just before
/// another takes the lock). Further ahead: the clock went backwards, and
/// it is free.
pub const CLOCK_SKEW_NS: u64 = 1_000_000_000;

/// Whether a lock or lease of `length` ns whose deadline (in its taker's
/// clock) is `deadline` still holds at this worker's `now`: not passed, and
/// no further ahead than `length` plus [`CLOCK_SKEW_NS`] (further: the
/// clock went backwards, and it is free). The one rule of the cache's fill
/// locks and the JWKS fetch lease.
pub fn lease_holds(deadline: u64, now: u64, length: u64) -> bool {
    deadline > now && deadline - now <= length.saturating_add(CLOCK_SKEW_NS)
}

/// Why a shared-data write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    /// Somebody else wrote the key since we read it: re-read and retry.
    CasMismatch,
    /// Any other host failure (the value could not be stored).
    Host(String),
}

/// A host call failed for a reason the logic cannot fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError(pub String);

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for SetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetError::CasMismatch => f.write_str("compare-and-swap mismatch"),
            SetError::Host(m) => f.write_str(m),
        }
    }
}

/// A value read from shared data, with its CAS token.
pub type SharedValue = (Option<Vec<u8>>, Option<u32>);

/// Kinds of metrics the host can define.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Handle of a defined metric. `MetricId::NONE` is a metric the host could
/// not define: recording on it is a no-op, never an error on traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MetricId(pub u32);

impl MetricId {
    pub const NONE: MetricId = MetricId(u32::MAX);
}

/// Hasher for small integer ids the host hands out (context ids, metric
/// ids): the id, spread by one multiplication, is its own hash (no SipHash
/// per lookup).
#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        // Spread sequential ids over the table's buckets (hashbrown takes
        // the top bits for its control bytes).
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// What meshguard needs from its host.
pub trait Host {
    /// Wall-clock time in nanoseconds since the Unix epoch. May go backwards:
    /// callers must tolerate that.
    fn now_nanos(&self) -> u64;

    /// Reads a shared-data key (process-wide, shared by all workers).
    fn shared_get(&self, key: &str) -> Result<SharedValue, HostError>;

    /// Reads a shared-data key and hands its value and CAS token to `f`,
    /// without copying the value where the host can: the native store
    /// lends its bytes under its shard's lock, so `f` must be short and
    /// must not call the host. By default, [`Host::shared_get`].
    fn shared_read<R>(
        &self,
        key: &str,
        f: impl FnOnce(Option<&[u8]>, Option<u32>) -> R,
    ) -> Result<R, HostError>
    where
        Self: Sized,
    {
        let (value, cas) = self.shared_get(key)?;
        Ok(f(value.as_deref(), cas))
    }

    /// Writes a shared-data key; see the module docs for CAS semantics.
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;

    /// Fills `buf` with random bytes (for jitter, never for keys or secrets).
    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError>;

    /// Defines (or finds) a metric by name. Called at configuration time only.
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<MetricId, HostError>;

    /// Adds `delta` to a counter or gauge.
    fn increment_metric(&self, id: MetricId, delta: i64);

    /// Sets a gauge or records a histogram value.
    fn record_metric(&self, id: MetricId, value: u64);

    /// Calls a host foreign function (Envoy: `verify_signature`, ...).
    /// `Ok(None)` is an empty result; `Err` means the host lacks it or it
    /// failed: callers must fall back (e.g. to pure-Rust crypto).
    fn call_foreign(&self, name: &str, _args: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        Err(HostError(format!("foreign function {name} not available")))
    }

    /// A random `u64`, or 0 when the host has no randomness (jitter then
    /// degrades to none, which is safe).
    fn random_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        match self.random_bytes(&mut b) {
            Ok(()) => u64::from_le_bytes(b),
            Err(_) => 0,
        }
    }
}

/// A host whose clock is read once: the first `now_nanos` asks the host,
/// later ones return the same instant. For one pass over a request's
/// policies (microseconds long), where each clock read is a host call that
/// costs more than the precision it would buy. Everything else goes to the
/// inner host.
pub struct OneClock<'a, H: Host> {
    inner: &'a H,
    now: std::cell::Cell<Option<u64>>,
}

impl<'a, H: Host> OneClock<'a, H> {
    pub fn new(inner: &'a H) -> Self {
        OneClock {
            inner,
            now: std::cell::Cell::new(None),
        }
    }
}

impl<H: Host> Host for OneClock<'_, H> {
    fn now_nanos(&self) -> u64 {
        match self.now.get() {
            Some(t) => t,
            None => {
                let t = self.inner.now_nanos();
                self.now.set(Some(t));
                t
            }
        }
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
        self.inner.increment_metric(id, delta)
    }
    fn record_metric(&self, id: MetricId, value: u64) {
        self.inner.record_metric(id, value)
    }
    fn call_foreign(&self, name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        self.inner.call_foreign(name, args)
    }
}

#[cfg(test)]
mod one_clock_tests {
    use super::fake::FakeHost;
    use super::*;

    #[test]
    fn reads_the_clock_once_and_delegates_the_rest() {
        let h = FakeHost::new(1);
        let c = OneClock::new(&h);
        let t0 = c.now_nanos();
        h.advance(std::time::Duration::from_secs(5));
        assert_eq!(c.now_nanos(), t0, "the first reading sticks");
        assert_eq!(h.now_nanos(), t0 + 5_000_000_000);
        assert_eq!(OneClock::new(&h).now_nanos(), t0 + 5_000_000_000);
        c.shared_set("k", b"v", None).expect("set");
        let (v, cas) = h.shared_get("k").expect("get");
        assert_eq!(
            c.shared_read("k", |v, cas| (v.map(<[u8]>::to_vec), cas))
                .expect("read"),
            (v, cas),
            "shared_read passes the value and token shared_get returns"
        );
        assert_eq!(
            h.shared_get("k").expect("get").0.as_deref(),
            Some(&b"v"[..])
        );
        let id = c.define_metric(MetricKind::Counter, "m").expect("metric");
        c.increment_metric(id, 2);
        assert_eq!(h.metric("m"), Some(2));
    }
}

#[cfg(test)]
mod lease_tests {
    use super::{lease_holds, CLOCK_SKEW_NS};

    /// Held until the deadline passes; a deadline up to the length plus
    /// the skew ahead is held (a worker whose clock reads later took it),
    /// further ahead it is free (the clock went backwards).
    #[test]
    fn a_lease_holds_until_its_deadline_within_the_skew() {
        let (now, len) = (100 * CLOCK_SKEW_NS, 5 * CLOCK_SKEW_NS);
        assert!(!lease_holds(0, now, len));
        assert!(!lease_holds(now, now, len));
        assert!(lease_holds(now + 1, now, len));
        assert!(lease_holds(now + len, now, len));
        assert!(lease_holds(now + len + CLOCK_SKEW_NS, now, len));
        assert!(!lease_holds(now + len + CLOCK_SKEW_NS + 1, now, len));
        assert!(lease_holds(u64::MAX, now, u64::MAX));
    }
}
