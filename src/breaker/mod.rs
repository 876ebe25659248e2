//! Circuit breaker (docs/configuration.md, "Circuit breaker": `routes[].circuit_breaker`): stop sending requests to
//! an upstream that keeps failing, answer them locally with 503 instead,
//! and let a few probes find out when it has recovered.
//!
//! ```json
//! { "name": "orders-api",
//!   "circuit_breaker": {
//!     "failure_statuses": ["5xx"],
//!     "consecutive_failures": 5,
//!     "failure_ratio": 0.5, "min_requests": 20, "window": "10s",
//!     "slow_call": "2s",
//!     "open_duration": "5s", "max_open_duration": "60s",
//!     "half_open_requests": 1, "success_threshold": 1,
//!     "scope": "route" } }
//! ```
//!
//! # Fields
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `failure_statuses` | `["5xx"]` | codes (`503`, `"503"`, 100..=599) or classes (`"1xx"`..`"5xx"`), at most 64 entries; `[]` = only upstream failures and slow calls count |
//! | `grpc_failure_statuses` | `["UNKNOWN", "DEADLINE_EXCEEDED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"]` | gRPC calls: `grpc-status` codes that are failures, by name or number (0..=16) |
//! | `consecutive_failures` | 5 | trip after this many failures in a row (1..=1000000) |
//! | `failure_ratio` | off | in (0, 1]; trip when failures / requests over `window` reaches it |
//! | `min_requests` | 20 | ratio rule only: fewer requests in the window never trip (1..=1000000) |
//! | `window` | `"10s"` | ratio rule only: rolling window, 10 buckets of `window / 10` (> 0, <= 1h) |
//! | `slow_call` | off | a response slower than this (time to response headers) is a failure |
//! | `open_duration` | `"5s"` | OPEN time after the first trip (> 0, <= 24h) |
//! | `max_open_duration` | `"60s"` | cap of the doubling OPEN time (>= `open_duration`, <= 24h) |
//! | `half_open_requests` | 1 | probes in flight at once in HALF_OPEN, all workers together (1..=1000) |
//! | `success_threshold` | 1 | probe successes that close the breaker (1..=1000) |
//! | `scope` | `"route"` | `"route"`: one breaker per route; `"upstream"`: one per upstream cluster |
//!
//! `min_requests` or `window` without `failure_ratio` is a config error (a
//! typo must not silently disable a rule). If only `open_duration` is set
//! and exceeds 60s, `max_open_duration` follows it.
//!
//! # What counts as a failure ([`classify`])
//!
//! For a request the breaker admitted, in this order:
//! 1. A response meshguard generated itself (any local reply: 401, 403,
//!    429, cache hits, the breaker's own 503) never counts: `None`.
//! 2. A stream the client cancelled (Envoy flag `DC`, or the downstream
//!    reset before a response) never counts: `None`. A probe that ends
//!    this way must be given back with [`release`] (the filter does it
//!    when its tick finds the stream gone: `filter::dispatch`).
//! 3. An upstream failure is a failure: connect failure, reset, timeout,
//!    overflow. The filter derives it from Envoy's `response.flags` with
//!    [`upstream_failure_from_response_flags`], which accepts `UH` (no
//!    healthy upstream), `UT` (upstream request timeout), `LR` (local
//!    reset), `UR` (upstream remote reset), `UF` (upstream connection
//!    failure), `UC` (upstream connection termination), `UO` (upstream
//!    overflow: Envoy's own circuit breaking), `URX` (retry limit / connect
//!    attempts exceeded), `UMSDR` (max stream duration), `UPE` (upstream
//!    protocol error) and `DF` (DNS resolution failed). Flags about the
//!    client or local policy (`DC`, `DPE`, `NR`, `NC`, `RL`, `UAEX`, `FI`,
//!    `DI`, `LH`, `IH`, `SI`, `DT`, `OM`, `RFCF`, `NFCF`...) are not upstream
//!    failures. Envoy's replies for those failures are all 5xx, so the
//!    filter reads the flags only for a 5xx response or none
//!    ([`response_flags_matter`]): a 1xx-4xx response came from the
//!    upstream and skips that host call.
//! 4. A status in `failure_statuses` is a failure. Envoy's own local
//!    replies for upstream trouble arrive here as ordinary statuses: 503
//!    "no healthy upstream" / "upstream connect error", 504 "upstream
//!    request timeout". With the default `["5xx"]` they are failures even
//!    if the filter could not read the flags.
//! 5. With `slow_call`, a response whose headers took longer than it
//!    (`elapsed_ns > slow_call`) is a failure even if its status is fine.
//! 6. Any other response is a success. No status and no failure flag (a
//!    stream that ended with nothing to judge) does not count: `None`.
//!
//! # gRPC calls ([`classify_grpc`])
//!
//! A gRPC call (request `content-type` `application/grpc*`) answers HTTP
//! 200 whether it failed or not: its outcome is the
//! `grpc-status`, in the response headers (a trailers-only response: an
//! error, or Envoy's own reply for an upstream failure) or in the trailers
//! that end the stream. The filter reads it from the headers, and when a
//! 200 has none, waits for the trailers (streaming calls are judged at
//! their end). A response that is not 200 is judged as HTTP (rules 1-6).
//! A gRPC-Web call's trailers travel in its body, which is not parsed: a
//! `grpc-status` header (trailers-only) decides, else it is judged as HTTP.
//! Then, in this order:
//! 1. A client cancel (`DC`, or the stream gone without its end passing
//!    through the filter) never counts, as for HTTP. An upstream reset after
//!    the response headers also ends a stream past the filter: without a
//!    callback at every stream's end (a cost on every request) it cannot be
//!    told from a cancel, and does not count either. A reset before the
//!    headers does: Envoy answers it with `UNAVAILABLE` and a failure flag.
//! 2. An upstream failure flag is a failure.
//! 3. No `grpc-status` at the end (the stream ended without trailers, or
//!    headers-only with none) or a malformed one (not 1 to 10 digits) is a
//!    failure: the response is broken. A number above 16 reads `UNKNOWN`.
//! 4. A code in `grpc_failure_statuses` is a failure.
//! 5. `slow_call` compares the time to the response *headers* (a
//!    streaming call may last as long as it likes once it answered).
//! 6. Anything else is a success.
//!
//! # State machine
//!
//! One [`BreakerState`] per breaker key (the route name, or with `"scope":
//! "upstream"` the upstream cluster name, see [`breaker_key`]) lives in
//! proxy-wasm shared data under `meshguard/v1/cb/<key>`, shared by every
//! worker of the Envoy process. Transitions (`state.rs`):
//!
//! 1. **T1 CLOSED, outcome**: a success resets the consecutive-failure
//!    count; with the ratio rule, every outcome is added to the current
//!    bucket of the rolling window (a bucket older than the window is
//!    reused and reset first).
//! 2. **T2 CLOSED -> OPEN (trip)**: on a failure that makes the consecutive
//!    count reach `consecutive_failures`, or (ratio rule) makes
//!    failures / requests over the window reach `failure_ratio` with at
//!    least `min_requests` requests in it. `trips += 1`; OPEN lasts
//!    `open_duration * 2^(trips-1)`, capped at `max_open_duration`, plus a
//!    random 0..=10% of that (from `Host::random_u64`) so workers and
//!    replicas do not probe in lockstep. Counters and window are cleared.
//! 3. **T3 OPEN, request before `open_until`**: rejected, `Retry-After`
//!    = seconds until `open_until`, rounded up, at least 1. Outcomes of
//!    requests admitted before the trip are ignored while OPEN.
//! 4. **T4 OPEN -> HALF_OPEN**: lazily, by the first request at or after
//!    `open_until` (no timer); that request becomes a probe (T5).
//! 5. **T5 HALF_OPEN, request**: admitted as a probe while fewer than
//!    `half_open_requests` probes are in flight (one counter in shared data,
//!    so across ALL workers); otherwise rejected as OPEN with
//!    `Retry-After: 1`. Outcomes of non-probes are ignored in HALF_OPEN.
//! 6. **T6 HALF_OPEN -> CLOSED**: the `success_threshold`-th probe success.
//!    Everything resets, including `trips` (the backoff starts over).
//! 7. **T7 HALF_OPEN -> OPEN**: any probe failure, with the next, longer
//!    OPEN time (T2's formula with the incremented `trips`).
//! 8. **T8 probe released**: a probe that ended with no outcome frees its
//!    slot and counts nothing.
//! 9. **T9 lost probes**: if no probe was admitted for
//!    `max(max_open_duration, 30s)` while slots are taken, the slots are
//!    presumed lost (a worker died, a stream never reported) and freed, so
//!    HALF_OPEN can never stay shut forever.
//!
//! ```text
//!                  T2: consecutive_failures
//!                      or failure_ratio
//!   +--------+  --------------------------->  +------+  T3: reject 503
//!   | CLOSED |                                | OPEN |  Retry-After
//!   +--------+  <-----+                       +------+
//!    T1 ^  |          |                        ^    |
//!       +--+          | T6: success_threshold  |    | T4: now >= open_until
//!                     |     probe successes    |    v     (next request)
//!                     |                    T7: +-----------+
//!                     +------------------------| HALF_OPEN |  T5, T8, T9
//!                               one probe      +-----------+
//!                               failure, open time x2
//! ```
//!
//! # Time, concurrency, failures of the host
//!
//! - Time comes only from `Host::now_nanos`. If it goes backwards: an OPEN
//!   period is re-anchored at the new "now" (never longer than its
//!   duration), the probe lease restarts, a window outcome less than a
//!   window behind is counted in the newest bucket, more than that resets
//!   the window.
//! - Every change is a read, transition, compare-and-swap write; a lost
//!   CAS retries, at most [`MAX_CAS_ATTEMPTS`] times. After that, or if
//!   shared data fails, the request is admitted (fail open) and a `warn`
//!   line is logged; an outcome that cannot be written is dropped with a
//!   `warn` line. A missing key is CLOSED (created with `CREATE_CAS` when it
//!   first changes); a value that does not decode (`codec.rs`: fixed
//!   210-byte little-endian layout with a version byte) is reset to CLOSED
//!   with a `warn` line.
//! - Only changes are written: a healthy CLOSED breaker without the ratio
//!   rule or `slow_call` costs two shared-data reads per request (at the
//!   admission, and at the response to see whether a failure elsewhere
//!   needs resetting), no write and no clock reading.
//! - Keys longer than 64 bytes or with characters outside `[A-Za-z0-9._-]`
//!   (Istio cluster names contain `|`) are stored as a readable prefix plus
//!   a SHA-256 hash ([`shared_key`]). Their number is bounded by the
//!   configured routes / clusters, not by traffic.
//! - Probes carry their HALF_OPEN round ([`ProbeTicket`], from
//!   [`admit_ticket`]: the `opened_at` of the OPEN period the round follows,
//!   set by each trip). A probe of an earlier round that reports late (it
//!   outlived a reopening) neither counts nor frees a slot of the current
//!   round: its slot went with its round.
//!
//! # Metrics and logs
//!
//! [`BreakerMetrics::define`] (at configuration time; the filter keeps
//! them beside the policy and passes them to [`admit_ticket`], [`record`]
//! and [`release`]) defines, per route:
//! - gauge `meshguard.breaker.<route>.state`: 0 closed, 1 open, 2 half-open,
//!   set by whichever worker commits a transition (so OPEN -> HALF_OPEN
//!   shows only when the next request arrives);
//! - counters `meshguard.breaker.<route>.trips`, `.rejected`, `.probes`.
//!
//! Every transition logs one `info` line naming the route (and key when it
//! differs), both states and the OPEN time, e.g.
//! `meshguard: circuit breaker route=orders-api CLOSED -> OPEN: open for 5.3s (trip 1)`.
//!
//! # How the filter uses it
//!
//! `filter::pipeline` runs the breaker last before the upstream (after JWT,
//! rate limit and the cache lookup), and reports at most once per stream:
//!
//! ```text
//! on_configure:      metrics = BreakerMetrics::define(host, &route.name)
//! request headers:   key = breaker_key(policy, &route.name, cluster);
//!                    match admit_ticket(host, policy, &metrics, key) {
//!                        (Allowed { .. }, ticket) => keep (key, ticket, and the start
//!                                 time only with slow_call); continue
//!                        (Rejected { retry_after_secs }, _) => local 503 + Retry-After,
//!                                 body {"error":"circuit_open",...}; never record
//!                    }
//! response headers:  HTTP: classify(policy, status, upstream failure flags,
//!                          elapsed, false, cancelled);
//!                    gRPC (200): a grpc-status header -> classify_grpc(...),
//!                          none -> wait for the trailers;
//!                    Some(o) => record(host, policy, &metrics, key, o, ticket);
//!                    None and a probe => release(host, &metrics, key, ticket)
//! response trailers: a gRPC call waiting: classify_grpc with their grpc-status
//! stream end:        the response's last byte (end_of_stream, or the trailers),
//!                    or the root's tick finding the stream's context gone
//!                    (`filter::dispatch`; no `proxy_on_log` is exported): if
//!                    nothing was recorded yet, classify with the final flags (a
//!                    stream gone without its end passing the filter counts as
//!                    cancelled); None and a probe => release
//! ```

pub mod codec;
pub mod policy;
pub mod state;
pub mod store;

pub use policy::{BreakerPolicy, RatioRule, Scope, StatusSet};
pub use state::{Admission, BreakerState, Outcome, Phase, ProbeTicket};
pub use store::{
    admit, admit_ticket, breaker_key, record, release, shared_key, snapshot, BreakerMetrics,
    KEY_PREFIX, MAX_CAS_ATTEMPTS,
};

/// Envoy `response.flags` bits (the legacy `ResponseFlag` bit vector that
/// the `response.flags` attribute exposes), as far as the breaker cares.
pub(crate) mod response_flags {
    /// `UH` no healthy upstream.
    pub const NO_HEALTHY_UPSTREAM: u64 = 0x2;
    /// `UT` upstream request timeout.
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
    /// `LR` connection local reset.
    pub const LOCAL_RESET: u64 = 0x8;
    /// `UR` upstream remote reset.
    pub const UPSTREAM_REMOTE_RESET: u64 = 0x10;
    /// `UF` upstream connection failure.
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
    /// `UC` upstream connection termination.
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40;
    /// `UO` upstream overflow (Envoy's own circuit breaking).
    pub const UPSTREAM_OVERFLOW: u64 = 0x80;
    /// `DC` downstream connection termination (client went away).
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;
    /// `URX` upstream retry limit exceeded.
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 0x8000;
    /// `UMSDR` upstream max stream duration reached.
    pub const UPSTREAM_MAX_STREAM_DURATION_REACHED: u64 = 0x80000;
    /// `UPE` upstream protocol error.
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 0x800000;
    /// `DF` DNS resolution failed.
    pub const DNS_RESOLUTION_FAILED: u64 = 0x4000000;

    /// Every flag that means the upstream failed (see the module docs).
    pub const UPSTREAM_FAILURE_MASK: u64 = NO_HEALTHY_UPSTREAM
        | UPSTREAM_REQUEST_TIMEOUT
        | LOCAL_RESET
        | UPSTREAM_REMOTE_RESET
        | UPSTREAM_CONNECTION_FAILURE
        | UPSTREAM_CONNECTION_TERMINATION
        | UPSTREAM_OVERFLOW
        | UPSTREAM_RETRY_LIMIT_EXCEEDED
        | UPSTREAM_MAX_STREAM_DURATION_REACHED
        | UPSTREAM_PROTOCOL_ERROR
        | DNS_RESOLUTION_FAILED;
}

/// True when Envoy's `response.flags` bit vector says the upstream failed:
/// any of `UH UT LR UR UF UC UO URX UMSDR UPE DF`.
pub fn upstream_failure_from_response_flags(flags: u64) -> bool {
    flags & response_flags::UPSTREAM_FAILURE_MASK != 0
}

/// Whether a response with this `:status` (None: no response) may carry
/// `response.flags` that matter here (an upstream failure, the client
/// gone). Envoy sets the upstream-failure flags on the replies it makes
/// for those failures, which are all 5xx (503 UF/UH/UO/UC/UR/URX/LR/DF,
/// 504 UT/UMSDR, 502 UPE); a 1xx-4xx response came from the upstream
/// itself, and a client that left has no response. So reading the flags
/// (a host call that returns data: ~1.3 us) is skipped for those.
pub fn response_flags_matter(status: Option<u32>) -> bool {
    !matches!(status, Some(100..=499))
}

/// True when Envoy's `response.flags` say the client went away (`DC`).
pub fn client_cancelled_from_response_flags(flags: u64) -> bool {
    flags & response_flags::DOWNSTREAM_CONNECTION_TERMINATION != 0
}

/// Decides what an admitted request's end means for the breaker (see
/// "What counts as a failure" above). `None`: it does not count.
pub fn classify(
    policy: &BreakerPolicy,
    status: Option<u32>,
    upstream_failure: bool,
    elapsed_ns: u64,
    generated_by_meshguard: bool,
    cancelled_by_client: bool,
) -> Option<Outcome> {
    if generated_by_meshguard || cancelled_by_client {
        return None;
    }
    if upstream_failure {
        return Some(Outcome::Failure);
    }
    let status = status?;
    if policy.failure_statuses.contains(status) {
        return Some(Outcome::Failure);
    }
    if let Some(slow) = policy.slow_call_ns {
        if elapsed_ns > slow {
            return Some(Outcome::Failure);
        }
    }
    Some(Outcome::Success)
}

/// Decides what a gRPC call's end means for the breaker (see "gRPC calls"
/// above): `status` is its `grpc-status` (`None`: the response ended with
/// none), `elapsed_ns` the time to its response headers.
pub fn classify_grpc(
    policy: &BreakerPolicy,
    status: Option<crate::grpc::Status>,
    upstream_failure: bool,
    elapsed_ns: u64,
    cancelled_by_client: bool,
) -> Option<Outcome> {
    use crate::grpc::Status;
    if cancelled_by_client {
        return None;
    }
    let failed = upstream_failure
        || match status {
            None | Some(Status::Malformed) => true,
            Some(Status::Code(c)) => policy.grpc_failure_statuses.contains(c),
        };
    let slow = policy.slow_call_ns.is_some_and(|slow| elapsed_ns > slow);
    Some(match failed || slow {
        true => Outcome::Failure,
        false => Outcome::Success,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn classify_grpc_reads_the_status_and_never_trusts_a_broken_one() {
        use crate::grpc::{parse_status, Code, Status};
        let p = BreakerPolicy {
            slow_call_ns: Some(2000 * MS),
            ..BreakerPolicy::default()
        };
        use Outcome::*;
        let code = |n| Some(Status::Code(Code::from_number(n).unwrap()));
        type Case = (Option<Status>, bool, u64, bool, Option<Outcome>);
        let cases: &[Case] = &[
            (code(0), false, MS, false, Some(Success)),
            (code(5), false, MS, false, Some(Success)), // NOT_FOUND
            (code(8), false, MS, false, Some(Success)), // RESOURCE_EXHAUSTED
            (code(16), false, MS, false, Some(Success)), // UNAUTHENTICATED
            (code(14), false, MS, false, Some(Failure)), // UNAVAILABLE
            (code(2), false, MS, false, Some(Failure)),
            (code(4), false, MS, false, Some(Failure)),
            (code(13), false, MS, false, Some(Failure)),
            (code(15), false, MS, false, Some(Failure)),
            // Broken: no status at the end, or not a number.
            (None, false, MS, false, Some(Failure)),
            (Some(Status::Malformed), false, MS, false, Some(Failure)),
            (
                Some(parse_status(b"banana")),
                false,
                MS,
                false,
                Some(Failure),
            ),
            (
                Some(parse_status(b"99999999999999")),
                false,
                MS,
                false,
                Some(Failure),
            ),
            (
                Some(parse_status(b"4000000000")),
                false,
                MS,
                false,
                Some(Failure),
            ), // UNKNOWN
            // Upstream failure flags win; a client cancel never counts.
            (code(0), true, MS, false, Some(Failure)),
            (code(14), false, MS, true, None),
            (None, true, MS, true, None),
            // slow_call: time to headers.
            (code(0), false, 2000 * MS + 1, false, Some(Failure)),
            (code(0), false, 2000 * MS, false, Some(Success)),
        ];
        for &(st, uf, el, cancel, want) in cases {
            assert_eq!(
                classify_grpc(&p, st, uf, el, cancel),
                want,
                "{st:?} uf={uf} el={el} cancel={cancel}"
            );
        }
        // The list is configurable.
        let mut q = BreakerPolicy {
            grpc_failure_statuses: crate::grpc::CodeSet::default(),
            ..BreakerPolicy::default()
        };
        q.grpc_failure_statuses.insert(Code::RESOURCE_EXHAUSTED);
        assert_eq!(classify_grpc(&q, code(14), false, 0, false), Some(Success));
        assert_eq!(classify_grpc(&q, code(8), false, 0, false), Some(Failure));
        assert_eq!(classify_grpc(&q, None, false, 0, false), Some(Failure));
    }

    #[test]
    fn response_flags_are_read_only_when_they_can_matter() {
        for status in [100, 200, 204, 301, 304, 404, 429, 499] {
            assert!(!response_flags_matter(Some(status)), "{status}");
        }
        for status in [500, 502, 503, 504, 599, 600, 0, 99] {
            assert!(response_flags_matter(Some(status)), "{status}");
        }
        assert!(
            response_flags_matter(None),
            "no response: reset or client gone"
        );
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn classify_follows_the_documented_order() {
        let p = BreakerPolicy {
            slow_call_ns: Some(2000 * MS),
            ..BreakerPolicy::default()
        };
        use Outcome::*;
        // (status, upstream_failure, elapsed, generated_by_meshguard, cancelled, want)
        type Case = (Option<u32>, bool, u64, bool, bool, Option<Outcome>);
        let cases: &[Case] = &[
            (Some(200), false, 10 * MS, false, false, Some(Success)),
            (Some(404), false, 10 * MS, false, false, Some(Success)),
            (Some(500), false, 10 * MS, false, false, Some(Failure)),
            (Some(503), false, 10 * MS, false, false, Some(Failure)),
            (Some(504), false, 10 * MS, false, false, Some(Failure)),
            (Some(599), false, 10 * MS, false, false, Some(Failure)),
            // meshguard's own replies never count, even 503
            (Some(503), false, 10 * MS, true, false, None),
            (Some(429), false, 10 * MS, true, false, None),
            // client cancel never counts
            (None, true, 10 * MS, false, true, None),
            (Some(200), false, 10 * MS, false, true, None),
            // upstream failure without a status
            (None, true, 10 * MS, false, false, Some(Failure)),
            (Some(200), true, 10 * MS, false, false, Some(Failure)),
            // slow calls: strictly slower than slow_call
            (Some(200), false, 2000 * MS, false, false, Some(Success)),
            (Some(200), false, 2000 * MS + 1, false, false, Some(Failure)),
            // nothing to judge
            (None, false, 10 * MS, false, false, None),
        ];
        for &(status, uf, el, gen, cancel, want) in cases {
            assert_eq!(
                classify(&p, status, uf, el, gen, cancel),
                want,
                "{status:?} uf={uf} el={el} gen={gen} cancel={cancel}"
            );
        }
    }

    #[test]
    fn classify_without_slow_call_ignores_latency() {
        let p = BreakerPolicy::default();
        assert_eq!(
            classify(&p, Some(200), false, u64::MAX, false, false),
            Some(Outcome::Success)
        );
    }

    #[test]
    fn classify_uses_configured_statuses_only() {
        let mut p = BreakerPolicy {
            failure_statuses: StatusSet::default(),
            ..BreakerPolicy::default()
        };
        p.failure_statuses.insert(503);
        p.failure_statuses.insert_class(4);
        assert_eq!(
            classify(&p, Some(503), false, 0, false, false),
            Some(Outcome::Failure)
        );
        assert_eq!(
            classify(&p, Some(500), false, 0, false, false),
            Some(Outcome::Success)
        );
        assert_eq!(
            classify(&p, Some(429), false, 0, false, false),
            Some(Outcome::Failure)
        );
        assert_eq!(
            classify(&p, Some(1000), false, 0, false, false),
            Some(Outcome::Success)
        );
    }

    #[test]
    fn response_flags_map_to_upstream_failures() {
        use response_flags::*;
        for f in [
            NO_HEALTHY_UPSTREAM,
            UPSTREAM_REQUEST_TIMEOUT,
            LOCAL_RESET,
            UPSTREAM_REMOTE_RESET,
            UPSTREAM_CONNECTION_FAILURE,
            UPSTREAM_CONNECTION_TERMINATION,
            UPSTREAM_OVERFLOW,
            UPSTREAM_RETRY_LIMIT_EXCEEDED,
            UPSTREAM_MAX_STREAM_DURATION_REACHED,
            UPSTREAM_PROTOCOL_ERROR,
            DNS_RESOLUTION_FAILED,
        ] {
            assert!(upstream_failure_from_response_flags(f), "{f:#x}");
            assert!(upstream_failure_from_response_flags(f | 0x4000));
        }
        // LH, NR, DI, FI, RL, UAEX, RLSE, DC, SI, IH, DPE, RFCF, NFCF, DT, NC, OM
        for f in [
            0x1u64, 0x100, 0x200, 0x400, 0x800, 0x1000, 0x2000, 0x4000, 0x10000, 0x20000, 0x40000,
            0x100000, 0x200000, 0x400000, 0x1000000, 0x2000000,
        ] {
            assert!(!upstream_failure_from_response_flags(f), "{f:#x}");
        }
        assert!(!upstream_failure_from_response_flags(0));
        assert!(client_cancelled_from_response_flags(0x4000));
        assert!(!client_cancelled_from_response_flags(0x20));
    }
}
