//! The process-wide key-value store behind the native [`Host`]'s shared
//! data: what Envoy's proxy-wasm shared data is for the wasm build, with the
//! same rules (see `host/mod.rs`): every write gets a fresh CAS token from
//! one process-wide 32-bit counter (never 0, skipped on wrap); a write with
//! a token fails when the key exists under another token; a write to an
//! absent key always succeeds; token 0 or none writes unconditionally.
//! There is no delete and no eviction, as in Envoy: the policy code keeps
//! keys in bounded sets (slot tables), so the same bounds hold.
//!
//! The map is split into shards by key hash, each behind its own lock, so
//! workers touching different buckets do not wait for each other; the CAS
//! check and the write happen under one shard lock, which makes a
//! compare-and-swap exact across workers.
//!
//! [`Host`]: crate::host::Host

use crate::host::{HostError, SetError, SharedValue};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

const SHARDS: usize = 16;

/// A key's value and CAS token.
struct Entry {
    key: String,
    value: Vec<u8>,
    cas: u32,
}

/// One shard: the entries by their key's hash (computed once per call:
/// it also picks the shard), a list per hash for the rare collision.
type Map = HashMap<u64, Vec<Entry>, BuildHasherDefault<Spread>>;
type Shard = Mutex<Map>;

/// The map's hasher: the keys are already hashes (the store's seeded
/// `foldhash`, see [`Store`]), kept as they are.
#[derive(Default)]
struct Spread(u64);

impl Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// See the module docs.
///
/// Keys are hashed with `foldhash` seeded per process, not SipHash: every
/// key meshguard writes is built from configuration (route and provider
/// names, Envoy's cluster names for upstream-scoped breakers) or from
/// bounded counters (rate-limit and cache slot numbers), never from a
/// client's bytes, so no client picks the keys a hash-flooding attack
/// would need; SipHash cost ~140 instructions per
/// key, twice per rate-limited request (read, then write).
pub struct Store {
    shards: Vec<Shard>,
    hasher: foldhash::fast::RandomState,
    next_cas: AtomicU32,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            next_cas: AtomicU32::new(0),
        }
    }
}

impl Store {
    /// The one store of this process.
    pub fn global() -> &'static Store {
        static STORE: OnceLock<Store> = OnceLock::new();
        STORE.get_or_init(Store::default)
    }

    /// The key's hash and its shard, locked.
    fn shard(&self, key: &str) -> Result<(u64, std::sync::MutexGuard<'_, Map>), String> {
        let h = self.hasher.hash_one(key);
        // Bits the map does not look at pick the shard (hashbrown takes
        // the low bits for the slot and the top 7 for its tags): keys of
        // one shard still spread over its whole table.
        let shard = self
            .shards
            .get((h >> 32) as usize % SHARDS)
            .ok_or("no shard")?;
        // A poisoned lock only means a writer panicked (caught at the FFI
        // edge, `guard.rs`): under the lock a value is only replaced
        // whole, so the map itself is still consistent.
        Ok((h, shard.lock().unwrap_or_else(|e| e.into_inner())))
    }

    fn bump(&self) -> u32 {
        loop {
            let c = self
                .next_cas
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if c != 0 {
                return c;
            }
        }
    }

    pub fn get(&self, key: &str) -> Result<SharedValue, HostError> {
        self.read(key, |value, cas| (value.map(<[u8]>::to_vec), cas))
    }

    /// The key's value and token, lent to `f` under the shard's lock (no
    /// copy): `f` must not touch the store (the lock is not re-entrant).
    pub fn read<R>(
        &self,
        key: &str,
        f: impl FnOnce(Option<&[u8]>, Option<u32>) -> R,
    ) -> Result<R, HostError> {
        let (h, map) = self.shard(key).map_err(HostError)?;
        let found = map.get(&h).and_then(|l| l.iter().find(|e| e.key == key));
        Ok(match found {
            Some(e) => f(Some(&e.value), Some(e.cas)),
            None => f(None, None),
        })
    }

    pub fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        let (h, mut map) = self.shard(key).map_err(SetError::Host)?;
        let list = map.entry(h).or_default();
        match list.iter_mut().find(|e| e.key == key) {
            Some(e) => {
                if let Some(c) = cas {
                    if c != 0 && c != e.cas {
                        return Err(SetError::CasMismatch);
                    }
                }
                e.value.clear();
                e.value.extend_from_slice(value);
                e.cas = self.bump();
            }
            None => list.push(Entry {
                key: key.to_owned(),
                value: value.to_vec(),
                cas: self.bump(),
            }),
        }
        Ok(())
    }

    /// Number of keys (tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .map(|m| m.values().map(Vec::len).sum())
                    .unwrap_or(0)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::CREATE_CAS;
    use std::sync::Arc;

    #[test]
    fn cas_rules_match_envoy_shared_data() {
        let s = Store::default();
        assert_eq!(s.get("k").unwrap(), (None, None));
        // An absent key is written whatever the token.
        s.set("k", b"a", Some(12345)).unwrap();
        let (v, c) = s.get("k").unwrap();
        assert_eq!(v.as_deref(), Some(&b"a"[..]));
        let c = c.unwrap();
        assert_ne!(c, 0);
        // A stale token fails, the current one succeeds and changes it.
        assert_eq!(s.set("k", b"b", Some(c + 1)), Err(SetError::CasMismatch));
        s.set("k", b"b", Some(c)).unwrap();
        let (_, c2) = s.get("k").unwrap();
        assert_ne!(c2, Some(c));
        assert_eq!(s.set("k", b"c", Some(c)), Err(SetError::CasMismatch));
        // Creation with CREATE_CAS loses against an existing key.
        assert_eq!(
            s.set("k", b"d", Some(CREATE_CAS)),
            Err(SetError::CasMismatch)
        );
        // No token (or 0) writes unconditionally.
        s.set("k", b"e", None).unwrap();
        s.set("k", b"f", Some(0)).unwrap();
        assert_eq!(s.get("k").unwrap().0.as_deref(), Some(&b"f"[..]));
    }

    /// Two keys with one hash (planted: collisions of the seeded hash
    /// are not found by chance) live side by side, each with its own value and
    /// token.
    #[test]
    fn keys_sharing_a_hash_are_kept_apart() {
        let s = Store::default();
        {
            let (h, mut map) = s.shard("k").unwrap();
            map.entry(h).or_default().push(Entry {
                key: "twin".into(),
                value: b"t".to_vec(),
                cas: 7,
            });
        }
        assert_eq!(s.get("k").unwrap(), (None, None));
        s.set("k", b"a", Some(CREATE_CAS)).unwrap();
        let (v, c) = s.get("k").unwrap();
        assert_eq!(v.as_deref(), Some(&b"a"[..]));
        assert_eq!(s.set("k", b"b", Some(7)), Err(SetError::CasMismatch));
        s.set("k", b"b", c).unwrap();
        let (_, map) = s.shard("k").unwrap();
        let list = map
            .values()
            .find(|l| l.len() == 2)
            .expect("one list of two");
        let twin = list.iter().find(|e| e.key == "twin").unwrap();
        assert_eq!((twin.value.as_slice(), twin.cas), (&b"t"[..], 7));
        let k = list.iter().find(|e| e.key == "k").unwrap();
        assert_eq!(k.value, b"b");
    }

    /// `read` lends what `get` copies: the same bytes and token, and
    /// absence as (None, None); the lock is released after `f`.
    #[test]
    fn read_lends_the_value_get_copies() {
        let s = Store::default();
        assert_eq!(s.read("k", |v, c| (v.is_none(), c)).unwrap(), (true, None));
        s.set("k", b"abc", None).unwrap();
        let (v, c) = s.get("k").unwrap();
        let lent = s.read("k", |v, c| (v.map(<[u8]>::to_vec), c)).unwrap();
        assert_eq!(lent, (v, c));
        // The shard is free again: a write to the same key goes through.
        s.set("k", b"d", c).unwrap();
        assert!(s.read("k", |v, _| v == Some(&b"d"[..])).unwrap());
    }

    #[test]
    fn the_token_counter_skips_zero_on_wrap() {
        let s = Store::default();
        s.next_cas.store(u32::MAX - 1, Ordering::Relaxed);
        s.set("a", b"", None).unwrap();
        assert_eq!(s.get("a").unwrap().1, Some(u32::MAX));
        s.set("a", b"", None).unwrap();
        assert_eq!(s.get("a").unwrap().1, Some(1));
    }

    /// Threads incrementing one counter with read-CAS-retry loops: no
    /// increment is lost (the exactness the rate limiter relies on).
    #[test]
    fn racing_cas_increments_are_exact() {
        let s = Arc::new(Store::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        loop {
                            let (v, cas) = s.get("n").unwrap();
                            let n = v
                                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                                .unwrap_or(0);
                            let cas = cas.or(Some(CREATE_CAS));
                            if s.set("n", &(n + 1).to_le_bytes(), cas).is_ok() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let v = s.get("n").unwrap().0.unwrap();
        assert_eq!(u64::from_le_bytes(v.try_into().unwrap()), 8000);
        assert_eq!(s.len(), 1);
    }
}
