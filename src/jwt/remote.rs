//! Remote JWKS: a pure state machine, driven by the filter, that keeps one
//! provider's keys in shared data for the whole Envoy process.
//!
//! Shared data (fixed little-endian layouts, version byte first):
//!
//! ```text
//! meshguard/v1/jwks/<provider>        u8 version=1 | u64 fetched_at_nanos | JWKS JSON text
//! meshguard/v1/jwks/<provider>/lease  u8 version=1 | u64 lease_until | u64 next_fetch_at
//!                                     | u64 last_forced_at | u32 consecutive_failures
//! ```
//!
//! Transitions (all times from `Host::now_nanos`):
//!
//! 1. `poll` (on every tick, and when a request waits for keys): when
//!    `now >= next_fetch_at` and no live lease exists, CAS-write a lease
//!    until `now + timeout + 1s`. Only the worker whose CAS succeeds gets a
//!    [`FetchRequest`]; it must dispatch the HTTP call and report back.
//!    A lease whose holder vanished simply expires.
//! 2. `on_fetch_result(Ok(body))` with at least one usable key: store the
//!    text, clear failures, schedule the refresh at 85-90% of
//!    `cache_duration` (jittered so processes do not synchronise).
//! 3. `on_fetch_result(Err)` (non-200, timeout, unusable body): keep the last
//!    good keys (they never expire: an IdP outage must not become an
//!    outage here), count the failure, retry after an exponential backoff
//!    (1s doubling to 5 min) with jitter, randomness from `Host::random_u64`.
//! 4. `request_refresh` (a token names an unknown `kid`, e.g. after key
//!    rotation): make the next fetch due now, at most once per
//!    [`REFETCH_COOLDOWN`] process-wide, and never while backing off.
//! 5. `keys`: the parsed keys of this worker; the shared record is re-read
//!    at most every [`RECHECK_INTERVAL`] and re-parsed only when its
//!    `fetched_at` changed.

use super::jwk::KeySet;
use crate::host::{lease_holds, Host, CREATE_CAS};
use std::sync::{Arc, Mutex, MutexGuard};

/// Unknown-kid refetches happen at most this often per provider (nanos).
pub const REFETCH_COOLDOWN: u64 = 30 * SEC;
/// Backoff after a failed fetch: base, doubling per failure, capped.
pub const BACKOFF_BASE: u64 = SEC;
pub const BACKOFF_MAX: u64 = 300 * SEC;
/// How often a worker re-reads the shared JWKS record (nanos).
pub const RECHECK_INTERVAL: u64 = SEC;
/// Largest JWKS body accepted (bytes).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Extra lease time beyond the HTTP timeout.
const LEASE_MARGIN: u64 = SEC;
const CAS_RETRIES: usize = 4;
const SEC: u64 = 1_000_000_000;
const VERSION: u8 = 1;
const LEASE_LEN: usize = 1 + 8 + 8 + 8 + 4;

/// An HTTP call the filter must dispatch (`GET path` on `cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub provider: usize,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: std::time::Duration,
}

/// Why a fetch produced no body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailure {
    /// The upstream answered with this (non-200) status.
    Status(u32),
    /// No response: timeout, reset, unknown cluster...
    NoResponse,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Lease {
    lease_until: u64,
    next_fetch_at: u64,
    last_forced_at: u64,
    failures: u32,
}

impl Lease {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(LEASE_LEN);
        b.push(VERSION);
        b.extend_from_slice(&self.lease_until.to_le_bytes());
        b.extend_from_slice(&self.next_fetch_at.to_le_bytes());
        b.extend_from_slice(&self.last_forced_at.to_le_bytes());
        b.extend_from_slice(&self.failures.to_le_bytes());
        b
    }

    /// Anything malformed decodes as the initial state (fetch now).
    fn decode(b: &[u8]) -> Lease {
        if b.len() != LEASE_LEN || b.first() != Some(&VERSION) {
            return Lease::default();
        }
        let u = |i: usize| Some(u64::from_le_bytes(*b.get(i..)?.first_chunk()?));
        let f = b.get(25..).and_then(|r| r.first_chunk()).copied();
        match (u(1), u(9), u(17), f) {
            (Some(lease_until), Some(next_fetch_at), Some(last_forced_at), Some(f)) => Lease {
                lease_until,
                next_fetch_at,
                last_forced_at,
                failures: u32::from_le_bytes(f),
            },
            _ => Lease::default(),
        }
    }
}

/// Encodes the shared JWKS record.
pub fn encode_record(fetched_at: u64, json: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(9 + json.len());
    b.push(VERSION);
    b.extend_from_slice(&fetched_at.to_le_bytes());
    b.extend_from_slice(json);
    b
}

/// Decodes the shared JWKS record: `(fetched_at, json)`.
pub fn decode_record(b: &[u8]) -> Option<(u64, &[u8])> {
    let (head, json) = b.split_first_chunk::<9>()?;
    let [VERSION, fetched_at @ ..] = *head else {
        return None;
    };
    Some((u64::from_le_bytes(fetched_at), json))
}

#[derive(Debug, Default)]
struct Local {
    /// This worker holds the lease and awaits a result until then.
    in_flight_until: u64,
    parsed: Option<(u64, Arc<KeySet>)>,
    checked_at: Option<u64>,
    refresh_requested_at: Option<u64>,
}

/// One remote provider's JWKS (see the module docs).
#[derive(Debug)]
pub struct RemoteJwks {
    pub provider_index: usize,
    pub provider: String,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: u64,
    pub cache_duration: u64,
    local: Mutex<Local>,
}

impl RemoteJwks {
    pub fn new(
        provider_index: usize,
        provider: &str,
        cluster: &str,
        authority: &str,
        path: &str,
        timeout: u64,
        cache_duration: u64,
    ) -> Self {
        RemoteJwks {
            provider_index,
            provider: provider.to_string(),
            cluster: cluster.to_string(),
            authority: authority.to_string(),
            path: path.to_string(),
            timeout,
            cache_duration,
            local: Mutex::new(Local::default()),
        }
    }

    pub fn record_key(&self) -> String {
        format!("meshguard/v1/jwks/{}", self.provider)
    }

    pub fn lease_key(&self) -> String {
        format!("meshguard/v1/jwks/{}/lease", self.provider)
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        match self.local.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn read_lease(&self, host: &impl Host) -> Option<(Lease, Option<u32>)> {
        let (v, cas) = host.shared_get(&self.lease_key()).ok()?;
        Some((v.as_deref().map(Lease::decode).unwrap_or_default(), cas))
    }

    fn write_lease(&self, host: &impl Host, l: &Lease, cas: Option<u32>) -> bool {
        let cas = Some(cas.unwrap_or(CREATE_CAS));
        host.shared_set(&self.lease_key(), &l.encode(), cas).is_ok()
    }

    /// Read-modify-write of the lease with a bounded CAS retry loop. If all
    /// retries lose, the lease simply expires on its own (safe fallback).
    fn update_lease(&self, host: &impl Host, f: impl Fn(&mut Lease)) {
        for _ in 0..CAS_RETRIES {
            let Some((mut l, cas)) = self.read_lease(host) else {
                return;
            };
            f(&mut l);
            if self.write_lease(host, &l, cas) {
                return;
            }
        }
    }

    /// Transition 1. `Some` only when this worker must fetch now.
    pub fn poll(&self, host: &impl Host) -> Option<FetchRequest> {
        let now = host.now_nanos();
        let lease_len = self.timeout.saturating_add(LEASE_MARGIN);
        {
            let local = self.local();
            if lease_holds(local.in_flight_until, now, lease_len) {
                return None;
            }
        }
        let (mut l, cas) = self.read_lease(host)?;
        if now < l.next_fetch_at {
            return None;
        }
        // A live lease, taken by a worker whose clock may read a little
        // later (tolerating a clock that jumped backwards).
        if lease_holds(l.lease_until, now, lease_len) {
            return None;
        }
        l.lease_until = now.saturating_add(lease_len);
        if !self.write_lease(host, &l, cas) {
            return None;
        }
        self.local().in_flight_until = l.lease_until;
        Some(FetchRequest {
            provider: self.provider_index,
            cluster: self.cluster.clone(),
            authority: self.authority.clone(),
            path: self.path.clone(),
            timeout: std::time::Duration::from_nanos(self.timeout),
        })
    }

    /// Transitions 2 and 3. Returns true when new keys were stored.
    pub fn on_fetch_result(&self, host: &impl Host, result: Result<&[u8], FetchFailure>) -> bool {
        let now = host.now_nanos();
        self.local().in_flight_until = 0;
        let parsed = match result {
            Ok(body) if body.len() > MAX_JWKS_BYTES => Err("JWKS body too large".to_string()),
            Ok(body) => match KeySet::from_text(body, &self.provider) {
                Ok(ks) if !ks.keys.is_empty() => Ok((body, ks)),
                Ok(_) => Err("JWKS has no usable key".to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(FetchFailure::Status(s)) => Err(format!("HTTP status {s}")),
            Err(FetchFailure::NoResponse) => Err("no response".to_string()),
        };
        match parsed {
            Ok((body, ks)) => {
                let stored = host
                    .shared_set(&self.record_key(), &encode_record(now, body), None)
                    .is_ok();
                if !stored {
                    log::warn!(
                        "meshguard: jwt provider {}: could not store JWKS in shared data",
                        self.provider
                    );
                }
                {
                    let mut local = self.local();
                    local.parsed = Some((now, Arc::new(ks)));
                    local.checked_at = Some(now);
                }
                let refresh = self.refresh_delay(host);
                self.update_lease(host, |l| {
                    l.lease_until = 0;
                    l.failures = 0;
                    l.next_fetch_at = now.saturating_add(refresh);
                });
                stored
            }
            Err(why) => {
                let jitter_seed = host.random_u64();
                self.update_lease(host, |l| {
                    l.lease_until = 0;
                    l.failures = l.failures.saturating_add(1);
                    l.next_fetch_at = now.saturating_add(backoff(l.failures, jitter_seed));
                });
                log::warn!(
                    "meshguard: jwt provider {}: JWKS fetch from cluster {} failed ({why}); keeping the last good keys",
                    self.provider,
                    self.cluster
                );
                false
            }
        }
    }

    /// Refresh at 85% to 90% of `cache_duration`.
    fn refresh_delay(&self, host: &impl Host) -> u64 {
        let base = self.cache_duration / 10 * 9;
        let span = self.cache_duration / 20;
        let jitter = if span > 0 {
            host.random_u64() % span
        } else {
            0
        };
        base.saturating_sub(jitter).max(SEC)
    }

    /// Transition 4: a token named a `kid` we do not have.
    pub fn request_refresh(&self, host: &impl Host) {
        let now = host.now_nanos();
        {
            let mut local = self.local();
            if local
                .refresh_requested_at
                .is_some_and(|t| now >= t && now < t.saturating_add(REFETCH_COOLDOWN))
            {
                return;
            }
            local.refresh_requested_at = Some(now);
        }
        let Some((mut l, cas)) = self.read_lease(host) else {
            return;
        };
        let cooling = l.last_forced_at != 0
            && now >= l.last_forced_at
            && now < l.last_forced_at.saturating_add(REFETCH_COOLDOWN);
        if cooling || l.failures > 0 || l.next_fetch_at <= now {
            return;
        }
        l.next_fetch_at = now;
        l.last_forced_at = now;
        if self.write_lease(host, &l, cas) {
            log::info!(
                "meshguard: jwt provider {}: unknown kid, JWKS refetch scheduled",
                self.provider
            );
        }
    }

    /// Transition 5: this worker's keys, `None` until a first fetch succeeded.
    pub fn keys(&self, host: &impl Host) -> Option<Arc<KeySet>> {
        let now = host.now_nanos();
        let mut local = self.local();
        if let (Some((_, ks)), Some(t)) = (&local.parsed, local.checked_at) {
            if now >= t && now < t.saturating_add(RECHECK_INTERVAL) {
                return Some(ks.clone());
            }
        }
        local.checked_at = Some(now);
        if let Ok((Some(rec), _)) = host.shared_get(&self.record_key()) {
            if let Some((fetched_at, json)) = decode_record(&rec) {
                let known = local.parsed.as_ref().map(|(v, _)| *v);
                if known != Some(fetched_at) {
                    match KeySet::from_text(json, &self.provider) {
                        Ok(ks) if !ks.keys.is_empty() => local.parsed = Some((fetched_at, Arc::new(ks))),
                        _ => log::warn!(
                            "meshguard: jwt provider {}: stored JWKS unusable; keeping previous keys",
                            self.provider
                        ),
                    }
                }
            }
        }
        local.parsed.as_ref().map(|(_, ks)| ks.clone())
    }
}

/// Exponential backoff with "equal jitter": half fixed, half random.
pub fn backoff(failures: u32, seed: u64) -> u64 {
    let exp = failures.saturating_sub(1).min(20);
    let d = BACKOFF_BASE.saturating_mul(1u64 << exp).min(BACKOFF_MAX);
    let half = d / 2;
    half + if half > 0 { seed % half } else { 0 }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn lease_roundtrip_and_corrupt_decodes_as_initial() {
        let l = Lease {
            lease_until: 1,
            next_fetch_at: 2,
            last_forced_at: 3,
            failures: 4,
        };
        assert_eq!(Lease::decode(&l.encode()), l);
        assert_eq!(Lease::decode(b"junk"), Lease::default());
    }

    #[test]
    fn record_roundtrip() {
        let r = encode_record(42, b"{}");
        assert_eq!(decode_record(&r), Some((42, &b"{}"[..])));
        assert_eq!(decode_record(b"\x02aaaaaaaa"), None);
        assert_eq!(decode_record(&r[..9]), Some((42, &b""[..])));
        for len in 0..9 {
            assert_eq!(decode_record(&r[..len]), None, "{len} bytes");
        }
    }

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        for (f, lo, hi) in [
            (1, SEC / 2, SEC),
            (2, SEC, 2 * SEC),
            (4, 4 * SEC, 8 * SEC),
            (30, BACKOFF_MAX / 2, BACKOFF_MAX),
        ] {
            for seed in [0, 1, u64::MAX, 123_456_789] {
                let d = backoff(f, seed);
                assert!(d >= lo && d < hi, "failures {f} seed {seed}: {d}");
            }
        }
    }
}
