//! Remote JWKS state machine: one fetch per process (lease by CAS in shared
//! data), refresh timing, backoff that keeps the last good keys, and the
//! unknown-kid refetch cooldown. Two "workers" = two clones of one FakeHost
//! (shared store and clock), each with its own compiled config.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod jwt_support;

use jwt_support::*;
use meshguard::host::fake::FakeHost;
use meshguard::host::Host;
use meshguard::jwt::remote::{BACKOFF_MAX, REFETCH_COOLDOWN};
use meshguard::jwt::{AuthOutcome, FetchFailure, FetchRequest, TokenCache};
use serde_json::json;
use std::time::Duration;

fn remote_setup(extra: serde_json::Value) -> Setup {
    let mut remote = json!({ "cluster": "idp", "authority": "auth.test", "path": "/jwks.json" });
    for (k, v) in extra.as_object().unwrap() {
        remote[k] = v.clone();
    }
    Setup::new(
        json!({ "main": { "issuer": ISS, "jwks": { "remote": remote } } }),
        json!({ "providers": ["main"] }),
    )
}

struct Worker {
    host: FakeHost,
    setup: Setup,
    cache: TokenCache,
}

impl Worker {
    fn new(host: &FakeHost) -> Worker {
        Worker::with(host, json!({}))
    }
    fn with(host: &FakeHost, remote: serde_json::Value) -> Worker {
        Worker {
            host: host.clone(),
            setup: remote_setup(remote),
            cache: TokenCache::default(),
        }
    }
    fn poll(&self) -> Vec<FetchRequest> {
        self.setup.providers().poll(&self.host)
    }
    fn deliver(&self, r: Result<&[u8], FetchFailure>) -> bool {
        self.setup.providers().on_fetch_result(&self.host, 0, r)
    }
    fn auth(&mut self, token: &str) -> AuthOutcome<'_> {
        self.setup.auth(&self.host, &bearer(token), &mut self.cache)
    }
}

fn jwks_text(kids: &[&str]) -> Vec<u8> {
    jwks_only(kids).to_string().into_bytes()
}

#[test]
fn requests_wait_for_keys_and_only_one_worker_fetches() {
    let h = host();
    let (mut a, mut b) = (Worker::new(&h), Worker::new(&h));
    assert_eq!(
        a.auth(&tok("valid_RS256")),
        AuthOutcome::KeysPending { provider: 0 }
    );

    let fa = a.poll();
    let fb = b.poll();
    assert_eq!(
        fa,
        vec![FetchRequest {
            provider: 0,
            cluster: "idp".into(),
            authority: "auth.test".into(),
            path: "/jwks.json".into(),
            timeout: Duration::from_secs(5),
        }]
    );
    assert!(fb.is_empty(), "the lease is held by worker a");
    assert!(
        a.poll().is_empty(),
        "no second fetch while one is in flight"
    );

    assert!(a.deliver(Ok(&jwks_text(&["rsa-1"]))));
    // Worker b sees the keys through shared data.
    allowed(&b.auth(&tok("valid_RS256")));
    allowed(&a.auth(&tok("valid_RS256")));

    // Stored record: version 1, fetched_at, JSON.
    let raw = h.raw("meshguard/v1/jwks/main").unwrap();
    assert_eq!(raw[0], 1);
    assert_eq!(
        u64::from_le_bytes(raw[1..9].try_into().unwrap()),
        NOW_SECS * SEC
    );
    assert!(raw[9..].starts_with(b"{"));
}

#[test]
fn a_vanished_lease_holder_is_replaced_after_the_timeout() {
    let h = host();
    let (a, b) = (Worker::new(&h), Worker::new(&h));
    assert_eq!(a.poll().len(), 1);
    h.advance(Duration::from_secs(5));
    assert!(b.poll().is_empty());
    h.advance(Duration::from_secs(1) + Duration::from_nanos(1));
    assert_eq!(b.poll().len(), 1, "lease (timeout + 1s) expired");
}

/// A lease taken a moment ago by a worker whose clock reads a little later
/// holds for the others (one fetch, not two): see `host::CLOCK_SKEW_NS`.
#[test]
fn a_lease_from_a_clock_slightly_ahead_holds() {
    let h = host();
    let (a, b) = (Worker::new(&h), Worker::new(&h));
    let t = h.now_nanos();
    assert_eq!(a.poll().len(), 1);
    for lag in [1, 1_000_000, 999_999_999] {
        h.set_now(t - lag);
        assert!(b.poll().is_empty(), "{lag} ns behind");
    }
}

#[test]
fn keys_are_refreshed_before_cache_duration_expires() {
    let h = host();
    let (a, b) = (Worker::new(&h), Worker::new(&h));
    assert_eq!(a.poll().len(), 1);
    a.deliver(Ok(&jwks_text(&["rsa-1"])));
    // Default cache_duration 10m: refresh due between 8.5 and 9 minutes.
    h.advance(Duration::from_secs(8 * 60 + 29));
    assert!(a.poll().is_empty() && b.poll().is_empty());
    h.advance(Duration::from_secs(31));
    let due: usize = a.poll().len() + b.poll().len();
    assert_eq!(due, 1, "exactly one worker refreshes before 10m");
}

#[test]
fn failures_back_off_with_jitter_and_keep_the_last_good_keys() {
    let h = host();
    let (mut a, b) = (Worker::new(&h), Worker::new(&h));
    assert_eq!(a.poll().len(), 1);
    a.deliver(Ok(&jwks_text(&["rsa-1", "ec-256"])));
    h.advance(Duration::from_secs(10 * 60));
    assert_eq!(a.poll().len(), 1);
    assert!(!a.deliver(Err(FetchFailure::Status(503))));
    // Old keys still verify (a new token so the cache does not help).
    allowed(&a.auth(&tok("valid_ES256")));

    // Backoff 1: between 0.5s and 1s.
    h.advance(Duration::from_millis(499));
    assert!(a.poll().is_empty() && b.poll().is_empty());
    h.advance(Duration::from_millis(501));
    let winner = if !b.poll().is_empty() {
        &b
    } else {
        panic!("retry due after 1s")
    };
    // An unusable body is a failure too; backoff 2: between 1s and 2s.
    assert!(!winner.deliver(Ok(br#"{"keys":[{"kty":"XYZ"}]}"#)));
    h.advance(Duration::from_millis(999));
    assert!(a.poll().is_empty() && b.poll().is_empty());
    h.advance(Duration::from_millis(1001));
    assert_eq!(a.poll().len(), 1);
    a.deliver(Err(FetchFailure::NoResponse));

    // Many failures: capped at BACKOFF_MAX.
    for _ in 0..20 {
        h.advance(Duration::from_nanos(BACKOFF_MAX));
        assert_eq!(a.poll().len(), 1);
        a.deliver(Err(FetchFailure::NoResponse));
    }
    allowed(&a.auth(&tok("valid_RS256")));
    // Recovery resets the backoff and installs the new keys.
    h.advance(Duration::from_nanos(BACKOFF_MAX));
    assert_eq!(a.poll().len(), 1);
    assert!(a.deliver(Ok(&jwks_text(&["ed-1"]))));
    allowed(&a.auth(&tok("valid_EdDSA")));
}

#[test]
fn unknown_kid_triggers_one_refetch_per_cooldown() {
    let h = host();
    let (mut a, mut b) = (Worker::new(&h), Worker::new(&h));
    assert_eq!(a.poll().len(), 1);
    a.deliver(Ok(&jwks_text(&["ec-256"])));
    h.advance(Duration::from_secs(1));

    // rsa-1 is not published yet: rejected, and a refetch is scheduled.
    assert_eq!(
        denial(&a.auth(&tok("valid_RS256"))),
        (401, "unknown key id".into())
    );
    let fetches: Vec<_> = b.poll().into_iter().chain(a.poll()).collect();
    assert_eq!(fetches.len(), 1);
    assert!(
        b.deliver(Ok(&jwks_text(&["ec-256", "rsa-1"])))
            || a.deliver(Ok(&jwks_text(&["ec-256", "rsa-1"])))
    );
    h.advance(Duration::from_secs(2));
    allowed(&a.auth(&tok("valid_RS256")));

    // Another unknown kid inside the cooldown: rejected, no fetch (attackers
    // sending random kids cannot hammer the IdP).
    assert_eq!(
        denial(&b.auth(&tok("unknown_kid"))),
        (401, "unknown key id".into())
    );
    assert!(a.poll().is_empty() && b.poll().is_empty());

    // After the cooldown, an unknown kid schedules a refetch again.
    h.advance(Duration::from_nanos(REFETCH_COOLDOWN));
    assert_eq!(
        denial(&b.auth(&tok("unknown_kid"))),
        (401, "unknown key id".into())
    );
    assert_eq!(a.poll().len() + b.poll().len(), 1);
}

#[test]
fn corrupt_shared_record_keeps_previous_keys() {
    let h = host();
    let mut a = Worker::new(&h);
    assert_eq!(a.poll().len(), 1);
    a.deliver(Ok(&jwks_text(&["rsa-1"])));
    h.put_raw(
        "meshguard/v1/jwks/main",
        b"\x01\x00\x00\x00\x00\x00\x00\x00\x09not json",
    );
    h.advance(Duration::from_secs(2));
    allowed(&a.auth(&tok("valid_RS256")));
    // A fresh worker that never parsed keys still waits.
    let mut fresh = Worker::new(&h);
    assert_eq!(
        fresh.auth(&tok("valid_RS256")),
        AuthOutcome::KeysPending { provider: 0 }
    );
}

#[test]
fn remote_config_defaults_and_overrides() {
    let s = remote_setup(json!({ "timeout": "2s", "cache_duration": "1m" }));
    let r = s.providers().remote(0).unwrap();
    assert_eq!((r.timeout, r.cache_duration), (2 * SEC, 60 * SEC));
    let s = remote_setup(json!({}));
    let r = s.providers().remote(0).unwrap();
    assert_eq!((r.timeout, r.cache_duration), (5 * SEC, 600 * SEC));
}

#[test]
fn a_cached_token_stops_being_accepted_when_its_key_leaves_the_jwks() {
    let h = host();
    let mut a = Worker::with(&h, json!({ "cache_duration": "60s" }));
    assert_eq!(a.poll().len(), 1);
    a.deliver(Ok(&jwks_text(&["rsa-1", "ec-256"])));
    let rs = tok("valid_RS256");
    let es = tok("valid_ES256");
    allowed(&a.auth(&rs));
    allowed(&a.auth(&es));
    let verified = a.cache.stats.verify;
    allowed(&a.auth(&rs));
    assert_eq!(a.cache.stats.verify, verified, "a hit verifies nothing");

    // The IdP drops rsa-1 (e.g. a compromised key); the refresh lands.
    // A refresh is due after 51-54 s (85-90% of cache_duration), well
    // inside the token cache's own 5-minute bound.
    h.advance(Duration::from_secs(55));
    assert_eq!(a.poll().len(), 1);
    assert!(a.deliver(Ok(&jwks_text(&["ec-256"]))));
    // The worker re-reads the shared record (at most once a second): the
    // cached token is checked against the new set.
    h.advance(Duration::from_secs(2));
    assert_eq!(denial(&a.auth(&rs)), (401, "unknown key id".into()));
    assert_eq!(denial(&a.auth(&rs)), (401, "unknown key id".into()));
    // A token whose key stayed is still a hit: no new verification.
    let hits = a.cache.stats.hits;
    let verified = a.cache.stats.verify;
    allowed(&a.auth(&es));
    assert_eq!(a.cache.stats.hits, hits + 1);
    assert_eq!(a.cache.stats.verify, verified);
}

#[test]
fn a_refetched_jwks_with_the_same_keys_keeps_cached_tokens() {
    let h = host();
    let mut a = Worker::with(&h, json!({ "cache_duration": "60s" }));
    assert_eq!(a.poll().len(), 1);
    a.deliver(Ok(&jwks_text(&["rsa-1"])));
    let rs = tok("valid_RS256");
    allowed(&a.auth(&rs));
    for _ in 0..3 {
        h.advance(Duration::from_secs(55));
        assert_eq!(a.poll().len(), 1);
        assert!(a.deliver(Ok(&jwks_text(&["ec-256", "rsa-1"]))));
        h.advance(Duration::from_secs(2));
        let (hits, misses) = (a.cache.stats.hits, a.cache.stats.misses);
        allowed(&a.auth(&rs));
        allowed(&a.auth(&rs));
        assert_eq!(
            (a.cache.stats.hits, a.cache.stats.misses),
            (hits + 2, misses),
            "the key moved to the new set: still a hit"
        );
    }
}
