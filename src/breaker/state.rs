//! The breaker state machine, pure: a plain [`BreakerState`] value and the
//! transitions of the module docs (numbered there, referenced here as T1..).
//! No host, no clock: `now` (nanoseconds) and `jitter` (a random `u64`) are
//! arguments, so every transition is unit-tested with plain numbers.

use super::policy::BreakerPolicy;

pub use super::policy::BUCKETS;

/// The three states. The discriminant is the `state` gauge value and the
/// byte in the shared-data encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl Phase {
    pub fn from_u8(b: u8) -> Option<Phase> {
        match b {
            0 => Some(Phase::Closed),
            1 => Some(Phase::Open),
            2 => Some(Phase::HalfOpen),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Closed => "CLOSED",
            Phase::Open => "OPEN",
            Phase::HalfOpen => "HALF_OPEN",
        }
    }
}

/// Whether a request may go upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it upstream. `probe`: it holds one of the HALF_OPEN slots and
    /// its outcome must be reported with `probe = true` (or released).
    Allowed { probe: bool },
    /// Reply 503 locally with `Retry-After: retry_after_secs` (>= 1).
    Rejected { retry_after_secs: u64 },
}

/// What [`BreakerState::admit`] said about a request, as its outcome is
/// reported: whether it was a probe, and of which HALF_OPEN round
/// ([`BreakerState::round`]). A bare `bool` converts to a ticket without a
/// round (the probe is then taken to belong to the current round).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTicket {
    pub probe: bool,
    pub round: Option<u64>,
}

impl From<bool> for ProbeTicket {
    fn from(probe: bool) -> Self {
        ProbeTicket { probe, round: None }
    }
}

impl ProbeTicket {
    /// Does this probe hold a slot of `state`'s current HALF_OPEN round?
    fn holds_slot_of(&self, state: &BreakerState) -> bool {
        self.probe && self.round.is_none_or(|r| r == state.round())
    }
}

/// How an upstream exchange ended, for the breaker (see `classify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// One slice of the ratio window. `start` is the bucket's index on the
/// time axis (`now / bucket_width`), so a slot is reused when its index is
/// older than the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bucket {
    pub start: u64,
    pub total: u32,
    pub failures: u32,
}

/// Everything one breaker remembers; lives in shared data (see `codec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerState {
    pub phase: Phase,
    /// Failures in a row while CLOSED.
    pub consecutive_failures: u32,
    /// Trips since the breaker was last CLOSED by successes (backoff
    /// exponent); 0 while it has never tripped or after closing.
    pub trips: u32,
    /// When it last went OPEN (ns).
    pub opened_at: u64,
    /// When OPEN ends (ns): the first admit at or after it goes HALF_OPEN.
    pub open_until: u64,
    /// HALF_OPEN probes admitted and not yet reported, across all workers.
    pub half_open_in_flight: u32,
    /// HALF_OPEN probes that succeeded since entering HALF_OPEN.
    pub half_open_successes: u32,
    /// When the last probe slot was taken (lease start, see
    /// `BreakerPolicy::probe_lease_ns`).
    pub probe_at: u64,
    /// Width of the buckets below; a config change of `window` resets them.
    pub bucket_width: u64,
    pub buckets: [Bucket; BUCKETS],
}

impl Default for BreakerState {
    fn default() -> Self {
        Self::new()
    }
}

impl BreakerState {
    /// A CLOSED breaker that has seen nothing.
    pub fn new() -> Self {
        BreakerState {
            phase: Phase::Closed,
            consecutive_failures: 0,
            trips: 0,
            opened_at: 0,
            open_until: 0,
            half_open_in_flight: 0,
            half_open_successes: 0,
            probe_at: 0,
            bucket_width: 0,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    /// Decides whether a request may go upstream (T3, T4, T5, T9).
    pub fn admit(&mut self, policy: &BreakerPolicy, now: u64) -> Admission {
        if self.phase == Phase::Open {
            if now < self.opened_at {
                // Clock went backwards past the trip: re-anchor so OPEN
                // lasts at most its full duration from "now", never longer.
                let dur = self.open_until.saturating_sub(self.opened_at);
                self.opened_at = now;
                self.open_until = now.saturating_add(dur);
            }
            if now < self.open_until {
                return Admission::Rejected {
                    retry_after_secs: retry_after_secs(self.open_until - now),
                };
            }
            // T4: lazily, on the first request after open_until.
            self.phase = Phase::HalfOpen;
            self.half_open_in_flight = 0;
            self.half_open_successes = 0;
            self.probe_at = now;
        }
        if self.phase == Phase::HalfOpen {
            self.expire_lost_probes(policy, now);
            if self.half_open_in_flight < policy.half_open_requests {
                // T5
                self.half_open_in_flight += 1;
                self.probe_at = now;
                return Admission::Allowed { probe: true };
            }
            // T5: slots taken, rejected as OPEN.
            return Admission::Rejected {
                retry_after_secs: 1,
            };
        }
        Admission::Allowed { probe: false }
    }

    /// Records a success (T1, T6).
    pub fn on_success(&mut self, policy: &BreakerPolicy, now: u64, probe: impl Into<ProbeTicket>) {
        self.on_outcome(policy, Outcome::Success, probe, now, 0);
    }

    /// Records a failure (T1, T2, T7); `jitter` is a random `u64` used only
    /// if this failure opens the breaker.
    pub fn on_failure(
        &mut self,
        policy: &BreakerPolicy,
        now: u64,
        probe: impl Into<ProbeTicket>,
        jitter: u64,
    ) {
        self.on_outcome(policy, Outcome::Failure, probe, now, jitter);
    }

    /// The current HALF_OPEN round: `opened_at` of the OPEN period it
    /// follows (each trip sets it, and HALF_OPEN never changes it).
    pub fn round(&self) -> u64 {
        self.opened_at
    }

    /// Records an outcome. `probe` is what `admit` said for that request
    /// (with the round it was admitted in, see [`ProbeTicket`]).
    pub fn on_outcome(
        &mut self,
        policy: &BreakerPolicy,
        outcome: Outcome,
        probe: impl Into<ProbeTicket>,
        now: u64,
        jitter: u64,
    ) {
        let ticket = probe.into();
        match self.phase {
            // A probe reported after others already closed the breaker is an
            // ordinary, recent observation: it counts like any other.
            Phase::Closed => {
                let failed = outcome == Outcome::Failure;
                if failed {
                    self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                } else {
                    self.consecutive_failures = 0;
                }
                let ratio_tripped = self.count_in_window(policy, now, failed);
                if failed
                    && (self.consecutive_failures >= policy.consecutive_failures || ratio_tripped)
                {
                    self.trip(policy, now, jitter); // T2
                }
            }
            // Requests admitted before the trip and finishing now say
            // nothing new: the breaker is already open.
            Phase::Open => {}
            Phase::HalfOpen => {
                if !ticket.holds_slot_of(self) {
                    // Admitted while CLOSED (before the trip) or by a
                    // fail-open fallback, or a probe of an earlier round
                    // (its slot went with that round): only this round's
                    // probes decide HALF_OPEN.
                    return;
                }
                self.half_open_in_flight = self.half_open_in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Success => {
                        self.half_open_successes = self.half_open_successes.saturating_add(1);
                        if self.half_open_successes >= policy.success_threshold {
                            self.close(); // T6
                        }
                    }
                    Outcome::Failure => self.trip(policy, now, jitter), // T7
                }
            }
        }
    }

    /// A probe ended with no outcome (client cancelled): frees its slot and
    /// counts nothing (T8); a probe of an earlier round frees nothing.
    pub fn release_probe(&mut self, probe: impl Into<ProbeTicket>) {
        if self.phase == Phase::HalfOpen && probe.into().holds_slot_of(self) {
            self.half_open_in_flight = self.half_open_in_flight.saturating_sub(1);
        }
    }

    /// Seconds until the breaker may admit again (for logs and tests).
    pub fn open_remaining_ns(&self, now: u64) -> u64 {
        self.open_until.saturating_sub(now)
    }

    /// Requests and failures currently in the ratio window.
    pub fn window_totals(&self, now: u64) -> (u32, u32) {
        if self.bucket_width == 0 {
            return (0, 0);
        }
        let idx = now / self.bucket_width;
        let newest = self.newest_bucket();
        // A clock slightly behind the newest bucket reads as that bucket.
        let idx = match newest {
            Some(n) if n > idx && n - idx < BUCKETS as u64 => n,
            _ => idx,
        };
        self.sum_window(idx)
    }

    fn sum_window(&self, idx: u64) -> (u32, u32) {
        let mut total = 0u32;
        let mut failures = 0u32;
        for b in &self.buckets {
            if b.total > 0 && b.start <= idx && idx - b.start < BUCKETS as u64 {
                total = total.saturating_add(b.total);
                failures = failures.saturating_add(b.failures);
            }
        }
        (total, failures)
    }

    fn newest_bucket(&self) -> Option<u64> {
        self.buckets
            .iter()
            .filter(|b| b.total > 0)
            .map(|b| b.start)
            .max()
    }

    /// T1: adds one outcome to the ratio window; true when the ratio rule
    /// now says trip.
    fn count_in_window(&mut self, policy: &BreakerPolicy, now: u64, failed: bool) -> bool {
        let Some(rule) = policy.ratio else {
            return false;
        };
        let width = policy.bucket_width_ns();
        if self.bucket_width != width {
            self.clear_window();
            self.bucket_width = width;
        }
        let mut idx = now / width;
        if let Some(newest) = self.newest_bucket() {
            if newest > idx {
                if newest - idx < BUCKETS as u64 {
                    // Clock went back a little: count into the newest bucket.
                    idx = newest;
                } else {
                    // Clock went back by more than the window: start over.
                    self.clear_window();
                }
            }
        }
        let slot = (idx % BUCKETS as u64) as usize;
        if let Some(b) = self.buckets.get_mut(slot) {
            if b.start != idx || b.total == 0 {
                *b = Bucket {
                    start: idx,
                    total: 0,
                    failures: 0,
                };
            }
            b.total = b.total.saturating_add(1);
            if failed {
                b.failures = b.failures.saturating_add(1);
            }
        }
        let (total, failures) = self.sum_window(idx);
        total >= rule.min_requests
            && total > 0
            && f64::from(failures) / f64::from(total) >= rule.failure_ratio
    }

    fn clear_window(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }

    /// T2 / T7: go OPEN for the next (longer) open time.
    fn trip(&mut self, policy: &BreakerPolicy, now: u64, jitter: u64) {
        self.trips = self.trips.saturating_add(1);
        self.phase = Phase::Open;
        self.opened_at = now;
        self.open_until = now.saturating_add(policy.open_time_ns(self.trips, jitter));
        self.consecutive_failures = 0;
        self.half_open_in_flight = 0;
        self.half_open_successes = 0;
        self.clear_window();
    }

    /// T6: back to a fresh CLOSED breaker (the backoff starts over).
    fn close(&mut self) {
        let width = self.bucket_width;
        *self = BreakerState::new();
        self.bucket_width = width;
    }

    /// T9: slots whose probes never reported (worker died, stream lost)
    /// come back after the lease, so HALF_OPEN can never wedge shut.
    fn expire_lost_probes(&mut self, policy: &BreakerPolicy, now: u64) {
        if self.half_open_in_flight == 0 {
            return;
        }
        if now < self.probe_at {
            // Clock went backwards: restart the lease rather than expire.
            self.probe_at = now;
            return;
        }
        if now - self.probe_at >= policy.probe_lease_ns() {
            self.half_open_in_flight = 0;
        }
    }
}

/// `Retry-After` for `remaining_ns` of OPEN time: whole seconds, rounded
/// up, at least 1.
pub fn retry_after_secs(remaining_ns: u64) -> u64 {
    remaining_ns.div_ceil(1_000_000_000).max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::breaker::policy::RatioRule;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: 3,
            ..BreakerPolicy::default()
        }
    }

    fn ratio_policy(ratio: f64, min: u32) -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: 1_000_000,
            ratio: Some(RatioRule {
                failure_ratio: ratio,
                min_requests: min,
                window_ns: 10 * S,
            }),
            ..BreakerPolicy::default()
        }
    }

    fn tripped(p: &BreakerPolicy, now: u64) -> BreakerState {
        let mut s = BreakerState::new();
        for _ in 0..p.consecutive_failures {
            s.on_failure(p, now, false, 0);
        }
        assert_eq!(s.phase, Phase::Open);
        s
    }

    #[test]
    fn closed_admits_everything_without_changing_state() {
        let p = policy();
        let mut s = BreakerState::new();
        assert_eq!(s.admit(&p, T0), Admission::Allowed { probe: false });
        assert_eq!(s, BreakerState::new());
    }

    #[test]
    fn success_resets_the_consecutive_count() {
        let p = policy();
        let mut s = BreakerState::new();
        s.on_failure(&p, T0, false, 0);
        s.on_failure(&p, T0, false, 0);
        s.on_success(&p, T0, false);
        assert_eq!(s.consecutive_failures, 0);
        s.on_failure(&p, T0, false, 0);
        s.on_failure(&p, T0, false, 0);
        assert_eq!(s.phase, Phase::Closed);
        s.on_failure(&p, T0, false, 0);
        assert_eq!(s.phase, Phase::Open);
    }

    #[test]
    fn consecutive_failures_trip_open_for_open_duration() {
        let p = policy();
        let s = tripped(&p, T0);
        assert_eq!(s.trips, 1);
        assert_eq!(s.opened_at, T0);
        assert_eq!(s.open_until, T0 + 5 * S);
        assert_eq!(s.consecutive_failures, 0);
    }

    #[test]
    fn open_rejects_with_retry_after_rounded_up() {
        let p = policy();
        let mut s = tripped(&p, T0);
        assert_eq!(
            s.admit(&p, T0),
            Admission::Rejected {
                retry_after_secs: 5
            }
        );
        assert_eq!(
            s.admit(&p, T0 + 4 * S + 1),
            Admission::Rejected {
                retry_after_secs: 1
            }
        );
        assert_eq!(
            s.admit(&p, T0 + S / 2),
            Admission::Rejected {
                retry_after_secs: 5
            }
        );
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(S), 1);
        assert_eq!(retry_after_secs(S + 1), 2);
    }

    #[test]
    fn outcomes_while_open_are_ignored() {
        let p = policy();
        let mut s = tripped(&p, T0);
        let before = s.clone();
        s.on_failure(&p, T0 + S, false, 0);
        s.on_success(&p, T0 + S, false);
        s.on_failure(&p, T0 + S, true, 0);
        s.release_probe(true);
        assert_eq!(s, before);
    }

    #[test]
    fn open_becomes_half_open_lazily_at_open_until() {
        let p = policy();
        let mut s = tripped(&p, T0);
        assert!(matches!(
            s.admit(&p, T0 + 5 * S - 1),
            Admission::Rejected { .. }
        ));
        assert_eq!(s.phase, Phase::Open);
        assert_eq!(s.admit(&p, T0 + 5 * S), Admission::Allowed { probe: true });
        assert_eq!(s.phase, Phase::HalfOpen);
        assert_eq!(s.half_open_in_flight, 1);
    }

    #[test]
    fn half_open_admits_at_most_half_open_requests() {
        let p = BreakerPolicy {
            half_open_requests: 2,
            ..policy()
        };
        let mut s = tripped(&p, T0);
        let t = T0 + 6 * S;
        assert_eq!(s.admit(&p, t), Admission::Allowed { probe: true });
        assert_eq!(s.admit(&p, t), Admission::Allowed { probe: true });
        assert_eq!(
            s.admit(&p, t),
            Admission::Rejected {
                retry_after_secs: 1
            }
        );
        s.release_probe(true);
        assert_eq!(s.half_open_in_flight, 1);
        assert_eq!(s.admit(&p, t), Admission::Allowed { probe: true });
    }

    #[test]
    fn success_threshold_successes_close_and_reset_backoff() {
        let p = BreakerPolicy {
            success_threshold: 2,
            ..policy()
        };
        let mut s = tripped(&p, T0);
        let t = T0 + 5 * S;
        assert_eq!(s.admit(&p, t), Admission::Allowed { probe: true });
        s.on_success(&p, t, true);
        assert_eq!(s.phase, Phase::HalfOpen);
        assert_eq!(s.half_open_in_flight, 0);
        assert_eq!(s.admit(&p, t), Admission::Allowed { probe: true });
        s.on_success(&p, t, true);
        assert_eq!(s.phase, Phase::Closed);
        assert_eq!(s.trips, 0);
        assert_eq!(s, BreakerState::new());
    }

    #[test]
    fn non_probe_outcomes_do_not_decide_half_open() {
        let p = policy();
        let mut s = tripped(&p, T0);
        let t = T0 + 5 * S;
        s.admit(&p, t);
        let before = s.clone();
        s.on_success(&p, t, false);
        s.on_failure(&p, t, false, 0);
        assert_eq!(s, before);
    }

    #[test]
    fn probe_failure_reopens_with_doubled_time() {
        let p = policy();
        let mut s = tripped(&p, T0);
        let mut t = T0 + 5 * S;
        let mut want = [10, 20, 40, 60, 60].iter();
        for trips in 2..=6 {
            assert_eq!(s.admit(&p, t), Admission::Allowed { probe: true });
            s.on_failure(&p, t, true, 0);
            assert_eq!(s.phase, Phase::Open);
            assert_eq!(s.trips, trips);
            let w = want.next().copied().unwrap_or(0);
            assert_eq!(s.open_until - t, w * S);
            t = s.open_until;
        }
        // Then a success closes and the next trip starts from 5s again.
        s.admit(&p, t);
        s.on_success(&p, t, true);
        let s2 = {
            let mut s = s;
            for _ in 0..3 {
                s.on_failure(&p, t, false, 0);
            }
            s
        };
        assert_eq!(s2.open_until - t, 5 * S);
    }

    #[test]
    fn a_probe_of_an_earlier_round_decides_nothing() {
        let p = BreakerPolicy {
            half_open_requests: 2,
            ..policy()
        };
        let mut s = tripped(&p, T0);
        // Round 1: two probes; B fails and reopens the breaker.
        let t1 = T0 + 5 * S;
        assert_eq!(s.admit(&p, t1), Admission::Allowed { probe: true });
        let round1 = s.round();
        let a = ProbeTicket {
            probe: true,
            round: Some(round1),
        };
        assert_eq!(s.admit(&p, t1), Admission::Allowed { probe: true });
        s.on_failure(&p, t1, a, 0);
        assert_eq!(s.phase, Phase::Open);
        // Round 2: probe C takes a slot.
        let t2 = s.open_until;
        assert_eq!(s.admit(&p, t2), Admission::Allowed { probe: true });
        let round2 = s.round();
        assert_ne!(round1, round2);
        assert_eq!(s.half_open_in_flight, 1);
        // A (round 1) reports late: a success that would have closed the
        // breaker, then (as if released) nothing: neither counts nor frees.
        s.on_success(&p, t2 + S, a);
        s.release_probe(a);
        assert_eq!(s.phase, Phase::HalfOpen);
        assert_eq!((s.half_open_in_flight, s.half_open_successes), (1, 0));
        // C's own report decides.
        s.on_success(
            &p,
            t2 + S,
            ProbeTicket {
                probe: true,
                round: Some(round2),
            },
        );
        assert_eq!(s.phase, Phase::Closed);
    }

    #[test]
    fn reopen_jitter_stays_within_ten_percent() {
        let p = policy();
        for j in [0, 1, 1 << 63, u64::MAX] {
            let mut s = BreakerState::new();
            for _ in 0..3 {
                s.on_failure(&p, T0, false, j);
            }
            let d = s.open_until - T0;
            assert!((5 * S..=5 * S + S / 2).contains(&d), "{d}");
        }
    }

    #[test]
    fn probe_reported_after_close_counts_as_closed_outcome() {
        let p = policy();
        let mut s = BreakerState::new();
        s.on_failure(&p, T0, true, 0);
        assert_eq!(s.consecutive_failures, 1);
        s.release_probe(true);
        assert_eq!(s.consecutive_failures, 1);
    }

    #[test]
    fn lost_probe_slots_come_back_after_the_lease() {
        let p = policy(); // lease = max(60s, 30s) = 60s
        let mut s = tripped(&p, T0);
        let t = T0 + 5 * S;
        assert_eq!(s.admit(&p, t), Admission::Allowed { probe: true });
        assert!(matches!(
            s.admit(&p, t + 59 * S),
            Admission::Rejected { .. }
        ));
        assert_eq!(s.admit(&p, t + 60 * S), Admission::Allowed { probe: true });
        assert_eq!(s.half_open_in_flight, 1);
    }

    #[test]
    fn clock_going_backwards_never_extends_open_beyond_its_duration() {
        let p = policy();
        let mut s = tripped(&p, T0);
        // Clock jumps back an hour: OPEN restarts its 5s from there.
        let back = T0 - 3600 * S;
        assert_eq!(
            s.admit(&p, back),
            Admission::Rejected {
                retry_after_secs: 5
            }
        );
        assert_eq!(s.opened_at, back);
        assert_eq!(
            s.admit(&p, back + 5 * S),
            Admission::Allowed { probe: true }
        );
    }

    #[test]
    fn clock_going_backwards_in_half_open_restarts_the_probe_lease() {
        let p = policy();
        let mut s = tripped(&p, T0);
        let t = T0 + 5 * S;
        s.admit(&p, t);
        assert!(matches!(
            s.admit(&p, t - 100 * S),
            Admission::Rejected { .. }
        ));
        assert_eq!(s.probe_at, t - 100 * S);
        assert!(matches!(
            s.admit(&p, t - 50 * S),
            Admission::Rejected { .. }
        ));
    }

    #[test]
    fn ratio_trips_exactly_at_min_requests() {
        let p = ratio_policy(0.5, 20);
        let mut s = BreakerState::new();
        for _ in 0..19 {
            s.on_failure(&p, T0, false, 0);
            assert_eq!(s.phase, Phase::Closed);
        }
        assert_eq!(s.window_totals(T0), (19, 19));
        s.on_failure(&p, T0, false, 0);
        assert_eq!(s.phase, Phase::Open);
        assert_eq!(s.window_totals(T0), (0, 0), "window cleared on trip");
    }

    #[test]
    fn ratio_trips_when_reaching_the_ratio_not_below() {
        let p = ratio_policy(0.3, 10);
        let mut s = BreakerState::new();
        for _ in 0..8 {
            s.on_success(&p, T0, false);
        }
        s.on_failure(&p, T0, false, 0);
        s.on_failure(&p, T0, false, 0); // 2/10 = 0.2
        assert_eq!(s.phase, Phase::Closed);
        for _ in 0..4 {
            s.on_success(&p, T0, false);
        }
        s.on_failure(&p, T0, false, 0); // 3/15 = 0.2
        assert_eq!(s.phase, Phase::Closed);
        s.on_failure(&p, T0, false, 0);
        s.on_failure(&p, T0, false, 0); // 5/17 = 0.294
        assert_eq!(s.phase, Phase::Closed);
        s.on_failure(&p, T0, false, 0); // 6/18 = 0.333
        assert_eq!(s.phase, Phase::Open);

        // Exactly the ratio trips: 3 of 10 at 0.3.
        let mut s = BreakerState::new();
        for _ in 0..7 {
            s.on_success(&p, T0, false);
        }
        s.on_failure(&p, T0, false, 0);
        s.on_failure(&p, T0, false, 0);
        assert_eq!(s.phase, Phase::Closed);
        s.on_failure(&p, T0, false, 0);
        assert_eq!(s.phase, Phase::Open);
    }

    #[test]
    fn ratio_successes_alone_never_trip() {
        let p = ratio_policy(1.0, 1);
        let mut s = BreakerState::new();
        for _ in 0..100 {
            s.on_success(&p, T0, false);
        }
        assert_eq!(s.phase, Phase::Closed);
        s.on_failure(&p, T0, false, 0);
        assert_eq!(s.phase, Phase::Closed, "1/101 < 1.0");
    }

    #[test]
    fn ratio_buckets_roll_over_and_old_ones_expire() {
        let p = ratio_policy(0.5, 4);
        let base = (T0 / S) * S; // aligned to 1s buckets
        let mut s = BreakerState::new();
        s.on_failure(&p, base, false, 0);
        s.on_failure(&p, base + S, false, 0);
        s.on_failure(&p, base + 2 * S, false, 0);
        assert_eq!(s.window_totals(base + 2 * S), (3, 3));
        // Bucket 0 is still inside at +9.999s, gone at +10s.
        assert_eq!(s.window_totals(base + 10 * S - 1), (3, 3));
        assert_eq!(s.window_totals(base + 10 * S), (2, 2));
        // A new outcome at +10s reuses slot 0 and resets it first.
        s.on_success(&p, base + 10 * S, false);
        assert_eq!(s.buckets[((base / S + 10) % 10) as usize].total, 1);
        assert_eq!(s.window_totals(base + 10 * S), (3, 2));
        assert_eq!(s.phase, Phase::Closed, "only 3 requests");
        // Long after, everything has expired: min_requests not met.
        let late = base + 100 * S;
        assert_eq!(s.window_totals(late), (0, 0));
        s.on_failure(&p, late, false, 0);
        s.on_failure(&p, late, false, 0);
        s.on_failure(&p, late, false, 0);
        assert_eq!(s.phase, Phase::Closed);
        s.on_failure(&p, late, false, 0);
        assert_eq!(s.phase, Phase::Open);
    }

    #[test]
    fn ratio_window_tolerates_clock_going_backwards() {
        let p = ratio_policy(0.5, 100);
        let base = (T0 / S) * S;
        let mut s = BreakerState::new();
        s.on_failure(&p, base + 5 * S, false, 0);
        // A little back: counted into the newest bucket, nothing lost.
        s.on_failure(&p, base + 3 * S, false, 0);
        assert_eq!(s.window_totals(base + 5 * S), (2, 2));
        assert_eq!(s.window_totals(base + 3 * S), (2, 2));
        // Far back: the window restarts.
        s.on_failure(&p, base - 3600 * S, false, 0);
        assert_eq!(s.window_totals(base - 3600 * S), (1, 1));
    }

    #[test]
    fn ratio_window_resets_when_window_config_changes() {
        let p = ratio_policy(0.9, 100);
        let mut s = BreakerState::new();
        s.on_failure(&p, T0, false, 0);
        assert_eq!(s.window_totals(T0), (1, 1));
        let mut p2 = p.clone();
        if let Some(r) = p2.ratio.as_mut() {
            r.window_ns = 20 * S;
        }
        s.on_failure(&p2, T0, false, 0);
        assert_eq!(s.bucket_width, 2 * S);
        assert_eq!(s.window_totals(T0), (1, 1));
    }

    #[test]
    fn consecutive_and_ratio_both_apply() {
        let mut p = ratio_policy(0.9, 100);
        p.consecutive_failures = 2;
        let mut s = BreakerState::new();
        s.on_failure(&p, T0, false, 0);
        s.on_failure(&p, T0, false, 0);
        assert_eq!(s.phase, Phase::Open);
    }
}
