//! The breaker over shared data: read the state, apply a transition, write
//! it back with compare-and-swap, in a bounded loop; plus metrics and logs.
//!
//! Writes happen only when the state changed: a CLOSED breaker without the
//! ratio rule costs one `shared_get` per request and one write per failure.

use super::codec;
use super::policy::BreakerPolicy;
use super::state::{Admission, BreakerState, Outcome, Phase, ProbeTicket};
use crate::config::fmt_duration;
use crate::host::{Host, MetricId, MetricKind, OneClock, SetError, CREATE_CAS};
use sha2::{Digest, Sha256};

/// Shared-data namespace of breaker states.
pub const KEY_PREFIX: &str = "meshguard/v1/cb/";
/// Keys longer than this, or with other characters than `[A-Za-z0-9._-]`,
/// are stored under a readable prefix plus a hash (see [`shared_key`]).
pub const MAX_KEY_LEN: usize = 64;
/// Read-modify-write attempts before giving up. Fallback: admit (fail
/// open) and drop the outcome, with a `warn` line. A breaker must never be
/// the cause of an outage, and losing one observation under heavy
/// contention is harmless (the next request observes again).
pub const MAX_CAS_ATTEMPTS: u32 = 8;

/// The breaker's metrics for one route (defined once, at config time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerMetrics {
    /// The route name, used in log lines.
    pub route: String,
    /// `shared_key(route)`, built once at configuration: the key of a
    /// route-scoped breaker needs no formatting per request. Empty for
    /// [`BreakerMetrics::none`].
    pub route_shared_key: String,
    /// Gauge `meshguard.breaker.<route>.state`: 0 closed, 1 open, 2 half-open.
    pub state: MetricId,
    /// Counter `meshguard.breaker.<route>.trips`: transitions to OPEN.
    pub trips: MetricId,
    /// Counter `meshguard.breaker.<route>.rejected`: requests answered 503.
    pub rejected: MetricId,
    /// Counter `meshguard.breaker.<route>.probes`: HALF_OPEN probes admitted.
    pub probes: MetricId,
}

impl BreakerMetrics {
    /// No metrics (recording is a no-op); logs name only the key.
    pub fn none() -> Self {
        BreakerMetrics {
            route: String::new(),
            route_shared_key: String::new(),
            state: MetricId::NONE,
            trips: MetricId::NONE,
            rejected: MetricId::NONE,
            probes: MetricId::NONE,
        }
    }

    /// Defines the four metrics of `route`. A metric the host refuses is
    /// logged once and becomes [`MetricId::NONE`]; this never fails.
    pub fn define(host: &impl Host, route: &str) -> Self {
        let def = |kind, what: &str| {
            let name = format!("meshguard.breaker.{route}.{what}");
            match host.define_metric(kind, &name) {
                Ok(id) => id,
                Err(e) => {
                    log::warn!("meshguard: could not define metric {name}: {e}");
                    MetricId::NONE
                }
            }
        };
        BreakerMetrics {
            route: route.to_string(),
            route_shared_key: shared_key(route),
            state: def(MetricKind::Gauge, "state"),
            trips: def(MetricKind::Counter, "trips"),
            rejected: def(MetricKind::Counter, "rejected"),
            probes: def(MetricKind::Counter, "probes"),
        }
    }
}

impl Default for BreakerMetrics {
    fn default() -> Self {
        Self::none()
    }
}

/// The shared-data key of breaker `key`: `meshguard/v1/cb/<key>` when `key`
/// is 1..=64 characters of `[A-Za-z0-9._-]`, else
/// `meshguard/v1/cb/<first 32 chars, others as '_'>~<24 hex of SHA-256>`
/// (e.g. Istio cluster names `outbound|8080||svc.ns.svc.cluster.local`).
/// The `~` never occurs in the plain form, so the two cannot collide.
pub fn shared_key(key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        // Two copies into one allocation (no formatting machinery: this
        // runs twice per request).
        let mut s = String::with_capacity(KEY_PREFIX.len() + key.len());
        s.push_str(KEY_PREFIX);
        s.push_str(key);
        return s;
    }
    let readable: String = key
        .chars()
        .take(32)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(24);
    for b in digest.iter().take(12) {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("{KEY_PREFIX}{readable}~{hex}")
}

/// Which breaker a request belongs to: the route name, or with
/// `"scope": "upstream"` the upstream cluster name (the route name when
/// the cluster is unknown).
pub fn breaker_key<'a>(
    policy: &BreakerPolicy,
    route: &'a str,
    cluster: Option<&'a str>,
) -> &'a str {
    match (policy.scope, cluster) {
        (super::policy::Scope::Upstream, Some(c)) if !c.is_empty() => c,
        _ => route,
    }
}

enum UpdateError {
    Host(String),
    Contention,
}

struct Updated<R> {
    result: R,
    before: BreakerState,
    after: BreakerState,
}

/// Bounded read-modify-CAS-write of one breaker state. `apply` runs on a
/// fresh copy at every attempt. An absent key reads as CLOSED and is only
/// created (with [`CREATE_CAS`]) when the state changes; a corrupt value
/// reads as CLOSED and is overwritten.
fn update<H: Host, R>(
    host: &H,
    metrics: &BreakerMetrics,
    key: &str,
    mut apply: impl FnMut(&mut BreakerState) -> R,
) -> Result<Updated<R>, UpdateError> {
    let skey: std::borrow::Cow<'_, str> =
        if key == metrics.route && !metrics.route_shared_key.is_empty() {
            metrics.route_shared_key.as_str().into()
        } else {
            shared_key(key).into()
        };
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = host.shared_get(&skey).map_err(|e| UpdateError::Host(e.0))?;
        let (mut state, cas, must_write) = match bytes {
            None => (BreakerState::new(), Some(CREATE_CAS), false),
            Some(b) => match codec::decode(&b) {
                Some(s) => (s, cas, false),
                None => {
                    log::warn!(
                        "meshguard: circuit breaker {key}: corrupt shared-data value ({} bytes) at {skey}, resetting to CLOSED",
                        b.len()
                    );
                    (BreakerState::new(), cas, true)
                }
            },
        };
        let before = state.clone();
        let result = apply(&mut state);
        if state == before && !must_write {
            return Ok(Updated {
                result,
                before,
                after: state,
            });
        }
        match host.shared_set(&skey, &codec::encode(&state), cas) {
            Ok(()) => {
                return Ok(Updated {
                    result,
                    before,
                    after: state,
                })
            }
            Err(SetError::CasMismatch) => continue,
            Err(SetError::Host(m)) => return Err(UpdateError::Host(m)),
        }
    }
    Err(UpdateError::Contention)
}

fn who(metrics: &BreakerMetrics, key: &str) -> String {
    if metrics.route.is_empty() || metrics.route == key {
        format!("route={key}")
    } else {
        format!("route={} key={key}", metrics.route)
    }
}

/// Metrics and the info line of a committed transition (the clock is read
/// only then: with the pipeline's `OneClock` it is the reading already made).
fn report<H: Host>(host: &H, metrics: &BreakerMetrics, key: &str, u: &Updated<impl Sized>) {
    let (from, to) = (u.before.phase, u.after.phase);
    if from == to {
        return;
    }
    let now = host.now_nanos();
    host.record_metric(metrics.state, to as u64);
    match to {
        Phase::Open => {
            host.increment_metric(metrics.trips, 1);
            log::info!(
                "meshguard: circuit breaker {} {} -> {}: open for {} (trip {})",
                who(metrics, key),
                from.as_str(),
                to.as_str(),
                fmt_duration(u.after.open_remaining_ns(now)),
                u.after.trips
            );
        }
        Phase::HalfOpen | Phase::Closed => {
            log::info!(
                "meshguard: circuit breaker {} {} -> {} (was open for {})",
                who(metrics, key),
                from.as_str(),
                to.as_str(),
                fmt_duration(now.saturating_sub(u.before.opened_at))
            );
        }
    }
}

fn fail_open_log(metrics: &BreakerMetrics, key: &str, what: &str, e: &UpdateError) {
    match e {
        UpdateError::Host(m) => log::warn!(
            "meshguard: circuit breaker {}: shared data unavailable ({m}); {what}",
            who(metrics, key)
        ),
        UpdateError::Contention => log::warn!(
            "meshguard: circuit breaker {}: {MAX_CAS_ATTEMPTS} compare-and-swap attempts failed under contention; {what}",
            who(metrics, key)
        ),
    }
}

/// Decides whether a request may go upstream (call before sending it).
///
/// Fails open: if shared data is unavailable or contention exhausts
/// [`MAX_CAS_ATTEMPTS`], the request is admitted as a non-probe and a
/// `warn` line is logged.
pub fn admit(
    host: &impl Host,
    policy: &BreakerPolicy,
    metrics: &BreakerMetrics,
    key: &str,
) -> Admission {
    admit_ticket(host, policy, metrics, key).0
}

/// [`admit`], with the ticket to report the outcome with (a probe carries
/// its HALF_OPEN round, so a late report of an earlier round's probe
/// decides nothing).
pub fn admit_ticket(
    host: &impl Host,
    policy: &BreakerPolicy,
    metrics: &BreakerMetrics,
    key: &str,
) -> (Admission, ProbeTicket) {
    // A CLOSED breaker admits without looking at the time: the clock is
    // read only when the state read says OPEN or HALF_OPEN (once, even if
    // the compare-and-swap is retried), so a healthy breaker costs no clock
    // reading per request.
    let host = &OneClock::new(host);
    match update(host, metrics, key, |s| {
        let now = match s.phase {
            Phase::Closed => 0,
            Phase::Open | Phase::HalfOpen => host.now_nanos(),
        };
        (s.admit(policy, now), s.round())
    }) {
        Ok(u) => {
            report(host, metrics, key, &u);
            let (admission, round) = u.result;
            let probe = matches!(admission, Admission::Allowed { probe: true });
            match admission {
                Admission::Rejected { .. } => host.increment_metric(metrics.rejected, 1),
                Admission::Allowed { probe: true } => host.increment_metric(metrics.probes, 1),
                Admission::Allowed { probe: false } => {}
            }
            let round = probe.then_some(round);
            (admission, ProbeTicket { probe, round })
        }
        Err(e) => {
            fail_open_log(metrics, key, "admitting the request (fail open)", &e);
            (
                Admission::Allowed { probe: false },
                ProbeTicket::from(false),
            )
        }
    }
}

/// Reports how an admitted request ended. `probe` is what [`admit`] said
/// (or the ticket of [`admit_ticket`]); a probe's report also frees its
/// HALF_OPEN slot.
pub fn record(
    host: &impl Host,
    policy: &BreakerPolicy,
    metrics: &BreakerMetrics,
    key: &str,
    outcome: Outcome,
    probe: impl Into<ProbeTicket>,
) {
    let probe = probe.into();
    // A success without the ratio rule needs no time (it resets a count or
    // closes the breaker): no clock reading, the common case of a healthy
    // upstream.
    let now = match (outcome, &policy.ratio) {
        (Outcome::Success, None) => 0,
        _ => host.now_nanos(),
    };
    // Randomness is only needed if this failure may open the breaker.
    let jitter = match outcome {
        Outcome::Failure => host.random_u64(),
        Outcome::Success => 0,
    };
    match update(host, metrics, key, |s| {
        s.on_outcome(policy, outcome, probe, now, jitter)
    }) {
        Ok(u) => report(host, metrics, key, &u),
        Err(e) => fail_open_log(metrics, key, "outcome not counted", &e),
    }
}

/// A probe's stream ended with no outcome (client cancelled, or meshguard
/// replied locally after admitting it): frees its slot, counts nothing.
/// Non-probes need no call.
pub fn release(
    host: &impl Host,
    metrics: &BreakerMetrics,
    key: &str,
    probe: impl Into<ProbeTicket>,
) {
    let probe = probe.into();
    match update(host, metrics, key, |s| s.release_probe(probe)) {
        Ok(_) => {}
        Err(e) => fail_open_log(
            metrics,
            key,
            "probe slot not released (it expires with the probe lease)",
            &e,
        ),
    }
}

/// The current state of breaker `key`, if stored and valid (diagnostics,
/// tests). Reads only.
pub fn snapshot(host: &impl Host, key: &str) -> Option<BreakerState> {
    match host.shared_get(&shared_key(key)) {
        Ok((Some(b), _)) => codec::decode(&b),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use std::sync::{Mutex, Once};

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S;

    static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    struct Capture;
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            LOGS.lock()
                .unwrap()
                .push(format!("{} {}", r.level(), r.args()));
        }
        fn flush(&self) {}
    }
    static CAPTURE: Capture = Capture;
    static INIT: Once = Once::new();

    /// Log lines mentioning `needle` (tests use unique keys, so parallel
    /// tests do not see each other's lines).
    fn logs(needle: &str) -> Vec<String> {
        INIT.call_once(|| {
            let _ = log::set_logger(&CAPTURE);
            log::set_max_level(log::LevelFilter::Trace);
        });
        LOGS.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    fn setup(route: &str) -> (FakeHost, BreakerPolicy, BreakerMetrics) {
        logs("");
        let host = FakeHost::new(T0);
        let p = BreakerPolicy {
            consecutive_failures: 2,
            ..BreakerPolicy::default()
        };
        let m = BreakerMetrics::define(&host, route);
        (host, p, m)
    }

    fn trip(host: &FakeHost, p: &BreakerPolicy, m: &BreakerMetrics, key: &str) {
        for _ in 0..p.consecutive_failures {
            record(host, p, m, key, Outcome::Failure, false);
        }
    }

    #[test]
    fn only_outcomes_that_need_the_time_read_the_clock() {
        let (host, mut p, m) = setup("clock");
        // A CLOSED breaker admits without the time (the healthy case).
        let reads = host.clock_reads();
        assert_eq!(
            admit(&host, &p, &m, "clock"),
            Admission::Allowed { probe: false }
        );
        assert_eq!(host.clock_reads(), reads);
        // A success without the ratio rule: no clock (the healthy case).
        record(&host, &p, &m, "clock", Outcome::Success, false);
        assert_eq!(host.clock_reads(), reads);
        // A failure may trip (the OPEN time starts now): one reading.
        record(&host, &p, &m, "clock", Outcome::Failure, false);
        assert_eq!(host.clock_reads(), reads + 1);
        // The tripping failure reads once more for its info line.
        record(&host, &p, &m, "clock", Outcome::Failure, false);
        assert_eq!(snapshot(&host, "clock").map(|s| s.phase), Some(Phase::Open));
        assert_eq!(host.clock_reads(), reads + 3);
        // OPEN: the admission needs the time (one reading).
        let reads = host.clock_reads();
        assert!(matches!(
            admit(&host, &p, &m, "clock"),
            Admission::Rejected { .. }
        ));
        assert_eq!(host.clock_reads(), reads + 1);
        // OPEN -> HALF_OPEN once its time is over: the same one reading
        // serves the transition's info line.
        host.set_now(T0 + 61 * S);
        let reads = host.clock_reads();
        assert_eq!(
            admit(&host, &p, &m, "clock"),
            Admission::Allowed { probe: true }
        );
        assert_eq!(host.clock_reads(), reads + 1);
        // With the ratio rule a success goes into the time window.
        p.ratio = Some(super::super::RatioRule {
            failure_ratio: 0.5,
            min_requests: 10,
            window_ns: 10 * S,
        });
        let reads = host.clock_reads();
        record(&host, &p, &m, "clock-ratio", Outcome::Success, false);
        assert_eq!(host.clock_reads(), reads + 1);
        let s = snapshot(&host, "clock-ratio").unwrap();
        assert_eq!(s.window_totals(T0 + 61 * S), (1, 0));
    }

    #[test]
    fn full_cycle_updates_state_metrics_and_logs() {
        let (host, p, m) = setup("cycle");
        assert_eq!(
            admit(&host, &p, &m, "cycle"),
            Admission::Allowed { probe: false }
        );
        assert_eq!(host.shared_len(), 0, "CLOSED admit writes nothing");
        trip(&host, &p, &m, "cycle");
        assert_eq!(host.metric("meshguard.breaker.cycle.state"), Some(1));
        assert_eq!(host.metric("meshguard.breaker.cycle.trips"), Some(1));
        let s = snapshot(&host, "cycle").unwrap();
        assert_eq!(s.phase, Phase::Open);
        let open = s.open_until - T0;
        assert!((5 * S..=5 * S + S / 2).contains(&open));

        assert!(matches!(
            admit(&host, &p, &m, "cycle"),
            Admission::Rejected {
                retry_after_secs: 5 | 6
            }
        ));
        assert_eq!(host.metric("meshguard.breaker.cycle.rejected"), Some(1));

        host.set_now(s.open_until);
        assert_eq!(
            admit(&host, &p, &m, "cycle"),
            Admission::Allowed { probe: true }
        );
        assert_eq!(host.metric("meshguard.breaker.cycle.state"), Some(2));
        assert_eq!(host.metric("meshguard.breaker.cycle.probes"), Some(1));
        assert!(matches!(
            admit(&host, &p, &m, "cycle"),
            Admission::Rejected {
                retry_after_secs: 1
            }
        ));
        assert_eq!(host.metric("meshguard.breaker.cycle.rejected"), Some(2));

        record(&host, &p, &m, "cycle", Outcome::Success, true);
        assert_eq!(host.metric("meshguard.breaker.cycle.state"), Some(0));
        assert_eq!(snapshot(&host, "cycle"), Some(BreakerState::new()));

        let lines = logs("route=cycle ");
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("INFO ") && lines[0].contains("CLOSED -> OPEN: open for 5."));
        assert!(lines[0].contains("(trip 1)"));
        assert!(lines[1].contains("OPEN -> HALF_OPEN"));
        assert!(lines[2].contains("HALF_OPEN -> CLOSED"));
    }

    #[test]
    fn upstream_scope_logs_route_and_key() {
        let (host, p, m) = setup("scoped");
        trip(&host, &p, &m, "outbound|80||svc");
        let lines = logs("route=scoped key=outbound|80||svc CLOSED -> OPEN");
        assert_eq!(lines.len(), 1);
        assert!(host.raw(&shared_key("outbound|80||svc")).is_some());
    }

    #[test]
    fn release_frees_a_probe_slot_without_counting() {
        let (host, p, m) = setup("release");
        trip(&host, &p, &m, "release");
        host.advance(std::time::Duration::from_secs(6));
        assert_eq!(
            admit(&host, &p, &m, "release"),
            Admission::Allowed { probe: true }
        );
        assert!(matches!(
            admit(&host, &p, &m, "release"),
            Admission::Rejected { .. }
        ));
        release(&host, &m, "release", true);
        let s = snapshot(&host, "release").unwrap();
        assert_eq!(
            (s.phase, s.half_open_in_flight, s.half_open_successes),
            (Phase::HalfOpen, 0, 0)
        );
        assert_eq!(
            admit(&host, &p, &m, "release"),
            Admission::Allowed { probe: true }
        );
    }

    #[test]
    fn probe_failure_reopens_for_longer() {
        let (host, p, m) = setup("reopen");
        trip(&host, &p, &m, "reopen");
        let first = snapshot(&host, "reopen").unwrap();
        host.set_now(first.open_until);
        assert_eq!(
            admit(&host, &p, &m, "reopen"),
            Admission::Allowed { probe: true }
        );
        record(&host, &p, &m, "reopen", Outcome::Failure, true);
        let s = snapshot(&host, "reopen").unwrap();
        assert_eq!((s.phase, s.trips), (Phase::Open, 2));
        let d = s.open_until - s.opened_at;
        assert!((10 * S..=11 * S).contains(&d), "{d}");
        assert_eq!(host.metric("meshguard.breaker.reopen.trips"), Some(2));
        assert_eq!(logs("route=reopen HALF_OPEN -> OPEN: open for 1").len(), 1);
    }

    #[test]
    fn contention_exhausting_retries_fails_open_with_a_log() {
        let (host, p, m) = setup("contended");
        trip(&host, &p, &m, "contended");
        host.force_cas_failures(u64::from(MAX_CAS_ATTEMPTS));
        // OPEN and rejecting needs no write, so contention does not matter:
        assert!(matches!(
            admit(&host, &p, &m, "contended"),
            Admission::Rejected { .. }
        ));
        host.advance(std::time::Duration::from_secs(7));
        // The OPEN -> HALF_OPEN write loses every CAS: fail open.
        assert_eq!(
            admit(&host, &p, &m, "contended"),
            Admission::Allowed { probe: false }
        );
        let lines = logs("route=contended: 8 compare-and-swap attempts failed");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("WARN ") && lines[0].contains("fail open"));
        // State untouched; the next request takes the probe normally.
        assert_eq!(snapshot(&host, "contended").unwrap().phase, Phase::Open);
        assert_eq!(
            admit(&host, &p, &m, "contended"),
            Admission::Allowed { probe: true }
        );
    }

    #[test]
    fn contention_below_the_bound_is_retried() {
        let (host, p, m) = setup("retried");
        host.force_cas_failures(u64::from(MAX_CAS_ATTEMPTS - 1));
        record(&host, &p, &m, "retried", Outcome::Failure, false);
        assert_eq!(snapshot(&host, "retried").unwrap().consecutive_failures, 1);
        assert!(logs("route=retried").is_empty());
    }

    #[test]
    fn lost_outcome_under_contention_is_logged() {
        let (host, p, m) = setup("lost");
        host.force_cas_failures(100);
        record(&host, &p, &m, "lost", Outcome::Failure, false);
        assert_eq!(snapshot(&host, "lost"), None);
        assert_eq!(logs("route=lost: 8 compare-and-swap attempts failed under contention; outcome not counted").len(), 1);
        host.force_cas_failures(0);
    }

    #[test]
    fn broken_shared_data_fails_open() {
        let (host, p, m) = setup("broken");
        trip(&host, &p, &m, "broken");
        host.set_broken(true);
        assert_eq!(
            admit(&host, &p, &m, "broken"),
            Admission::Allowed { probe: false }
        );
        record(&host, &p, &m, "broken", Outcome::Failure, false);
        release(&host, &m, "broken", true);
        let lines = logs("route=broken: shared data unavailable");
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].contains("admitting the request (fail open)"));
        host.set_broken(false);
        assert!(matches!(
            admit(&host, &p, &m, "broken"),
            Admission::Rejected { .. }
        ));
    }

    #[test]
    fn corrupt_value_resets_to_closed_with_a_warning() {
        let (host, p, m) = setup("corrupt");
        let key = shared_key("corrupt");
        for bad in [&b""[..], b"garbage", &[9u8; codec::ENCODED_LEN][..]] {
            host.put_raw(&key, bad);
            assert_eq!(
                admit(&host, &p, &m, "corrupt"),
                Admission::Allowed { probe: false }
            );
            assert_eq!(host.raw(&key), Some(codec::encode(&BreakerState::new())));
        }
        let lines = logs("circuit breaker corrupt: corrupt shared-data value");
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines.iter().all(|l| l.starts_with("WARN ")));
        // A corrupt value seen by record is reset and the outcome counted.
        host.put_raw(&key, b"x");
        record(&host, &p, &m, "corrupt", Outcome::Failure, false);
        assert_eq!(snapshot(&host, "corrupt").unwrap().consecutive_failures, 1);
    }

    #[test]
    fn two_workers_share_one_state() {
        let (host, p, m) = setup("create");
        record(&host, &p, &m, "create", Outcome::Failure, false);
        let other = host.clone();
        record(&other, &p, &m, "create", Outcome::Failure, false);
        assert_eq!(snapshot(&host, "create").unwrap().phase, Phase::Open);
    }

    #[test]
    fn success_in_closed_without_ratio_writes_nothing() {
        let (host, p, m) = setup("quiet");
        record(&host, &p, &m, "quiet", Outcome::Success, false);
        assert_eq!(host.shared_len(), 0);
    }

    #[test]
    fn shared_keys_are_namespaced_bounded_and_distinct() {
        assert_eq!(shared_key("orders-api"), "meshguard/v1/cb/orders-api");
        let long = "x".repeat(65);
        let k = shared_key(&long);
        assert!(k.len() <= KEY_PREFIX.len() + 32 + 1 + 24, "{k}");
        assert!(k.starts_with("meshguard/v1/cb/xxxx"));
        let a = shared_key("outbound|8080||a.ns.svc.cluster.local");
        let b = shared_key("outbound_8080__a.ns.svc.cluster.local");
        assert_ne!(a, b);
        assert!(a.contains('~') && !b.contains('~'));
        assert_ne!(shared_key(""), shared_key("_"));
        assert_ne!(shared_key(&"y".repeat(100)), shared_key(&"y".repeat(101)));
    }

    #[test]
    fn breaker_key_follows_scope() {
        let mut p = BreakerPolicy::default();
        assert_eq!(breaker_key(&p, "r", Some("c")), "r");
        p.scope = super::super::policy::Scope::Upstream;
        assert_eq!(breaker_key(&p, "r", Some("c")), "c");
        assert_eq!(breaker_key(&p, "r", None), "r");
        assert_eq!(breaker_key(&p, "r", Some("")), "r");
    }

    #[test]
    fn metrics_are_named_per_route() {
        let host = FakeHost::new(0);
        let m = BreakerMetrics::define(&host, "orders");
        assert_eq!(m.route, "orders");
        assert_eq!(m.route_shared_key, shared_key("orders"));
        assert_eq!(m.route_shared_key, "meshguard/v1/cb/orders");
        // A long route name: the hashed form, built once.
        let long = format!("r-{}", "é".repeat(70));
        let m = BreakerMetrics::define(&FakeHost::new(0), &long);
        assert_eq!(m.route_shared_key, shared_key(&long));
        assert!(m.route_shared_key.contains('~'));
        let mut names = host.metric_names();
        names.sort();
        assert_eq!(
            names,
            [
                "meshguard.breaker.orders.probes",
                "meshguard.breaker.orders.rejected",
                "meshguard.breaker.orders.state",
                "meshguard.breaker.orders.trips"
            ]
        );
    }
}
