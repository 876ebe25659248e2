//! Per-worker cache of verified tokens, so each distinct token pays for
//! signature verification once (a signature check costs ~55-175 us of CPU
//! in Envoy depending on the algorithm, a cache hit ~2 us).
//!
//! Key: the token bytes themselves, in this worker's memory only (never
//! logged, never in shared data). The map is indexed by a fingerprint: a
//! seeded mix of the token's length and its last [`FINGERPRINT_TAIL`]
//! bytes (the end of the signature: the most varying part), used as the
//! map's hash as it is, and an entry matches only if the full bytes are
//! equal, so a hit is exact. Hashing the whole ~700-byte token was 60% of
//! a cache hit's instructions; the tail is enough because only tokens whose
//! signature verified are ever inserted: nobody without the signing key
//! can choose which tokens share a fingerprint, and two verified tokens
//! that do (not seen in practice) just evict each other. Tokens over
//! [`MAX_CACHED_TOKEN`] bytes are not cached (bounded memory: capacity x
//! 4 KiB at most).
//! Value: the provider that verified it, its claims and payload segment.
//! An entry lives until the token's `exp` and at most [`MAX_ENTRY_TTL`],
//! and for a remote JWKS only while the key that verified it is still in
//! the provider's current key set (checked on every hit against this
//! worker's copy, which follows the shared record within a second: a key
//! removed by the IdP stops a cached token as soon as it stops a new one);
//! when full, the oldest insertion is evicted. Route claim rules are NOT
//! cached: they are evaluated on every request (they differ per route).

use super::jwk::KeySet;
use super::verify::{NativePaths, VerifyStats};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;

/// How many bytes at the end of a token its fingerprint hashes.
pub const FINGERPRINT_TAIL: usize = 64;

/// Longest token kept in the cache (bytes).
pub const MAX_CACHED_TOKEN: usize = 4096;
/// Default number of entries.
pub const DEFAULT_CAPACITY: usize = 1024;
/// An entry is re-verified at least this often (nanoseconds): bounds how
/// long a token stays accepted after its key left the JWKS.
pub const MAX_ENTRY_TTL: u64 = 300 * 1_000_000_000;

/// A verified token.
#[derive(Debug, Clone)]
pub struct Verified {
    pub provider: usize,
    pub claims: Arc<super::claims::Claims>,
    /// The payload segment (base64url), for `payload_header`.
    pub payload_b64: Arc<str>,
    /// The key that verified it, when it came from a remote JWKS (which can
    /// change): a hit is honoured only while that key is still in the
    /// provider's current set. `None` for inline keys (they never change).
    pub key: Option<KeyRef>,
}

/// A key of a remote provider's key set, by position.
#[derive(Debug, Clone)]
pub struct KeyRef {
    pub set: Arc<KeySet>,
    pub index: usize,
}

#[derive(Debug)]
struct Entry {
    token: Arc<[u8]>,
    seq: u64,
    expires_at: u64,
    value: Verified,
}

/// Per-worker JWT state: the verified-token cache, whether the host's
/// native RSA verification works, and counters. Keep one per worker VM
/// (in the root context) and pass it to [`super::authenticate`].
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    /// Fingerprint -> entry.
    map: HashMap<u64, Entry, BuildHasherDefault<FingerprintHash>>,
    /// Insertion order: seq -> fingerprint.
    order: BTreeMap<u64, u64>,
    /// Random per cache (from std's `RandomState`): fingerprints differ
    /// between workers and runs.
    seed: u64,
    next_seq: u64,
    pub(crate) native: NativePaths,
    /// Work counters (tests, debugging).
    pub stats: CacheStats,
}

/// Counters of a [`TokenCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub verify: VerifyStats,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(DEFAULT_CAPACITY)
    }
}

impl TokenCache {
    /// A cache holding at most `capacity` tokens (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            capacity,
            map: HashMap::default(),
            order: BTreeMap::new(),
            seed: RandomState::new().hash_one(0x6d65_7368_6775_6172_u64),
            next_seq: 0,
            native: NativePaths::default(),
            stats: CacheStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// What this worker learned about the host's native verification.
    pub fn native(&self) -> NativePaths {
        self.native
    }

    /// A live entry for `key` at `now` (nanoseconds); expired ones are dropped.
    pub fn get(&mut self, key: &[u8], now: u64) -> Option<Verified> {
        let (fp, e) = self.entry_of(key)?;
        if now < e.expires_at {
            return Some(e.value.clone());
        }
        self.remove(fp);
        None
    }

    /// Drops `key`'s entry (its verifying key left the JWKS).
    pub fn forget(&mut self, key: &[u8]) {
        if let Some((fp, _)) = self.entry_of(key) {
            self.remove(fp);
        }
    }

    /// Points `key`'s entry at the same key in a newer key set (the JWKS
    /// was refetched and still holds it), so later hits compare pointers.
    pub fn rebind(&mut self, key: &[u8], to: KeyRef) {
        if let Some((fp, _)) = self.entry_of(key) {
            if let Some(e) = self.map.get_mut(&fp) {
                e.value.key = Some(to);
            }
        }
    }

    /// `key`'s fingerprint and entry, when the entry holds exactly `key`.
    fn entry_of(&self, key: &[u8]) -> Option<(u64, &Entry)> {
        let fp = self.fingerprint(key);
        let e = self.map.get(&fp)?;
        crate::bytes::eq(&e.token, key).then_some((fp, e))
    }

    fn remove(&mut self, fp: u64) {
        if let Some(e) = self.map.remove(&fp) {
            self.order.remove(&e.seq);
        }
    }

    fn fingerprint(&self, token: &[u8]) -> u64 {
        let tail = token
            .get(token.len().saturating_sub(FINGERPRINT_TAIL)..)
            .unwrap_or_default();
        fingerprint(self.seed, token.len(), tail)
    }

    /// Stores a verified token until `exp_secs` (if any), at most
    /// [`MAX_ENTRY_TTL`] from `now`.
    pub fn insert(&mut self, token: &[u8], value: Verified, exp_secs: Option<i64>, now: u64) {
        if self.capacity == 0 || token.len() > MAX_CACHED_TOKEN {
            return;
        }
        let fp = self.fingerprint(token);
        let mut expires_at = now.saturating_add(MAX_ENTRY_TTL);
        if let Some(exp) = exp_secs {
            let exp_nanos = u64::try_from(exp)
                .unwrap_or(0)
                .saturating_mul(1_000_000_000);
            expires_at = expires_at.min(exp_nanos);
        }
        if expires_at <= now {
            return;
        }
        self.remove(fp);
        while self.map.len() >= self.capacity {
            match self.order.pop_first() {
                Some((_, old_fp)) => {
                    self.map.remove(&old_fp);
                }
                None => break,
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, fp);
        self.map.insert(
            fp,
            Entry {
                token: Arc::from(token),
                seq,
                expires_at,
                value,
            },
        );
    }
}

/// The map's hasher: the key already is a well-mixed fingerprint, so it
/// is used as it is (hashing it again with SipHash cost as much as
/// computing it).
#[derive(Default)]
struct FingerprintHash(u64);

impl Hasher for FingerprintHash {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A seeded multiply-xorshift mix of the token's length and tail, 8 bytes
/// at a time: ~60 instructions where SipHash took ~420 (a sixth of a
/// cache hit). Not a keyed PRF, and it need not be: only tokens whose
/// signature verified are ever inserted, so nobody can fill the map with
/// chosen collisions, and a lookup that collides is caught by the
/// full-bytes comparison (see the module docs).
fn fingerprint(seed: u64, len: usize, tail: &[u8]) -> u64 {
    const M: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (seed ^ len as u64).wrapping_mul(M);
    for chunk in tail.chunks(8) {
        let mut w = [0u8; 8];
        for (d, &b) in w.iter_mut().zip(chunk) {
            *d = b;
        }
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(M);
        h ^= h >> 29;
    }
    h ^ (h >> 32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn fingerprints_depend_on_seed_length_and_every_tail_byte() {
        let tail: Vec<u8> = (0u8..64).collect();
        let base = fingerprint(7, 700, &tail);
        assert_eq!(base, fingerprint(7, 700, &tail));
        assert_ne!(base, fingerprint(8, 700, &tail));
        assert_ne!(base, fingerprint(7, 701, &tail));
        let mut seen = std::collections::HashSet::new();
        for i in 0..tail.len() {
            let mut t = tail.clone();
            t[i] ^= 1;
            assert!(seen.insert(fingerprint(7, 700, &t)), "byte {i}");
        }
        assert!(!seen.contains(&base));
        // Short tails (tokens under 64 bytes) work too.
        assert_ne!(fingerprint(7, 3, b"abc"), fingerprint(7, 3, b"abd"));
    }

    fn v(p: usize) -> Verified {
        Verified {
            provider: p,
            claims: Arc::default(),
            payload_b64: Arc::from(""),
            key: None,
        }
    }

    #[test]
    fn entries_expire_at_exp_and_at_most_after_max_ttl() {
        let mut c = TokenCache::new(4);
        let now = 1000 * S;
        c.insert(b"a", v(0), Some(1010), now);
        c.insert(b"b", v(0), None, now);
        assert!(c.get(b"a", now + 9 * S).is_some());
        assert!(c.get(b"a", now + 10 * S).is_none());
        assert!(c.get(b"b", now + MAX_ENTRY_TTL - 1).is_some());
        assert!(c.get(b"b", now + MAX_ENTRY_TTL).is_none());
        assert!(c.is_empty());
        // Already expired: not stored.
        c.insert(b"c", v(0), Some(999), now);
        assert!(c.is_empty());
    }

    #[test]
    fn full_cache_evicts_oldest_insertion() {
        let mut c = TokenCache::new(2);
        for t in [b"1", b"2", b"3"] {
            c.insert(t, v(0), None, 0);
        }
        assert_eq!(c.len(), 2);
        assert!(c.get(b"1", 0).is_none());
        assert!(c.get(b"3", 0).is_some());
        // Re-inserting refreshes position.
        c.insert(b"2", v(1), None, 0);
        c.insert(b"4", v(0), None, 0);
        assert!(c.get(b"3", 0).is_none());
        assert_eq!(c.get(b"2", 0).map(|e| e.provider), Some(1));
    }

    #[test]
    fn a_hit_needs_the_whole_token_not_just_its_fingerprint() {
        let mut c = TokenCache::new(8);
        let now = 1000 * S;
        // Same length, same last 64 bytes: same fingerprint.
        let a = [b"aaaa.".as_slice(), &[b'x'; 100]].concat();
        let b = [b"bbbb.".as_slice(), &[b'x'; 100]].concat();
        c.insert(&a, v(1), None, now);
        assert_eq!(c.get(&a, now).map(|x| x.provider), Some(1));
        assert!(c.get(&b, now).is_none(), "never another token's verdict");
        // Both verified: they share the slot, the newer one wins.
        c.insert(&b, v(2), None, now);
        assert_eq!(c.get(&b, now).map(|x| x.provider), Some(2));
        assert!(c.get(&a, now).is_none());
        assert_eq!(c.len(), 1);
        // Short tokens and the empty token work too.
        c.insert(b"t", v(3), None, now);
        c.insert(b"", v(4), None, now);
        assert_eq!(c.get(b"t", now).map(|x| x.provider), Some(3));
        assert_eq!(c.get(b"", now).map(|x| x.provider), Some(4));
        assert!(c.get(b"u", now).is_none());
    }

    #[test]
    fn zero_capacity_disables() {
        let mut c = TokenCache::new(0);
        c.insert(b"1", v(0), None, 0);
        assert!(c.is_empty());
    }
}
