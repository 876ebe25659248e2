//! Entries in proxy-wasm shared data, within `cache_store.max_bytes`.
//!
//! Shared data has no delete and no eviction, so the store is a FIXED table
//! laid out once from the budget ([`Layout`]):
//!
//! - `meshguard/v1/cache/c/<i>` for `i < slots`: chunks, each value at most
//!   `chunk_bytes` long;
//! - `meshguard/v1/cache/lock/<i>` for `i < locks`: fill locks, each value
//!   exactly [`LOCK_VALUE_LEN`] bytes;
//! - `meshguard/v1/cache/inv/<i>` for `i < invalidations`: when URIs were
//!   last invalidated, each value exactly [`INV_VALUE_LEN`] bytes.
//!
//! `slots * chunk_bytes + locks * LOCK_VALUE_LEN + invalidations *
//! INV_VALUE_LEN <= max_bytes` holds by construction ([`Layout::new`]) and
//! every write goes through a function that checks the value length, so
//! the bytes held never exceed the budget and the number of keys never
//! exceeds `slots + locks + invalidations`.
//!
//! Invalidation and fills in flight: an unsafe request invalidating a URI
//! ([`Store::invalidate`]) first records the time in the URI's
//! invalidation record (URIs share [`Layout::invalidations`] records by
//! hash), then drops the URI's entries. A fill stores only when no
//! invalidation of its record happened since its request was looked up
//! ([`Store::invalidated_since`]), checked before writing and again after
//! (an invalidation recorded in between drops what was written, and one
//! recorded later drops it itself): a response fetched before a POST
//! changed the resource is never stored after it. URIs sharing a record
//! only cost each other a fill now and then.
//!
//! An entry (encoded by [`Entry`]) occupies a run of consecutive chunks
//! (wrapping): a HEAD chunk then CONTINUATION chunks. Every chunk carries the
//! entry's generation (a 64-bit id drawn when it is written) and its index,
//! so a run partly overwritten by a newer entry is detected and treated as
//! evicted. The head also carries the checksum ([`checksum`], 8 bytes at a
//! time) and length of the whole encoding, the URI hash, the primary and
//! secondary key hashes, and the time stored.
//!
//! Placement: an entry's head may sit in one of [`PROBES`] slots derived
//! from its URI hash (so invalidation finds every variant of a URI). A
//! lookup ([`Store::probe`]) reads them in order and stops at the first
//! entry that answers: one shared-data read per hit when the entry sits in
//! its first slot and fits one chunk (the head read is not repeated). Each
//! worker checks an entry's checksum and parses it once: hits on the same
//! entry (same slot and generation) reuse what that read learnt
//! (`checked`; in Node's V8, `bench/v8prof.cjs`: a hit on an 8 KiB
//! response 3.6-4.4 -> 2.0-2.7 us of wasm, on a 30-byte one -0.15 us). A new
//! entry goes to the slot holding the same key (replace), else an unused
//! slot, else the probed head stored longest ago (LRU-ish: oldest first).
//! Writing a run overwrites whatever it covers; each valid head of another
//! entry overwritten counts as one eviction.
//!
//! Chunk layout (little-endian):
//! ```text
//! head: u8 version | u8 kind=1 | u64 generation | u16 index=0 | u16 chunks
//!       | u32 total len | u32 checksum | [32] uri | [32] primary
//!       | [32] secondary | u64 stored_at_ns | payload...
//! cont: u8 version | u8 kind=2 | u64 generation | u16 index | payload...
//! tomb: u8 version | u8 kind=3
//! lock: u8 version | u64 deadline_ns | u64 key tag | u64 holder (0: released;
//!       a released lock with a live deadline means "pass": go without lock)
//! inv:  u8 version | u64 last invalidation ns
//! ```
//! Chunk versions: 1 had an FNV-1a checksum; 2 (this one) [`checksum`].
//! Chunks of another version are dropped when read.

use super::entry::{Entry, EntryMeta, EntryView};
use crate::config::raw::RawCacheStore;
use crate::config::ConfigError;
use crate::host::{lease_holds, Host, SetError, CREATE_CAS};

pub const DEFAULT_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_CACHE_MAX_ENTRY_BYTES: u64 = 1024 * 1024;

/// The top-level `cache_store` section: the byte budget shared by every
/// route's cache, and the largest entry.
#[derive(Debug, Clone)]
pub struct CacheStoreConfig {
    pub max_bytes: u64,
    pub max_entry_bytes: u64,
}

impl Default for CacheStoreConfig {
    fn default() -> Self {
        CacheStoreConfig {
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            max_entry_bytes: DEFAULT_CACHE_MAX_ENTRY_BYTES,
        }
    }
}

impl CacheStoreConfig {
    pub fn compile(raw: Option<&RawCacheStore>) -> Result<CacheStoreConfig, ConfigError> {
        let mut out = CacheStoreConfig::default();
        let Some(cs) = raw else {
            return Ok(out);
        };
        if let Some(m) = cs.max_bytes {
            if m < 1024 {
                return Err(ConfigError::expected(
                    "cache_store.max_bytes",
                    "an integer >= 1024",
                    m,
                ));
            }
            out.max_bytes = m;
        }
        if let Some(m) = cs.max_entry_bytes {
            if m < 1 {
                return Err(ConfigError::expected(
                    "cache_store.max_entry_bytes",
                    "an integer >= 1",
                    m,
                ));
            }
            out.max_entry_bytes = m;
        }
        if out.max_entry_bytes > out.max_bytes {
            return Err(ConfigError::expected(
                "cache_store.max_entry_bytes",
                &format!("at most cache_store.max_bytes ({})", out.max_bytes),
                out.max_entry_bytes,
            ));
        }
        Ok(out)
    }
}

pub const CHUNK_VERSION: u8 = 2;
const KIND_HEAD: u8 = 1;
const KIND_CONT: u8 = 2;
const KIND_TOMB: u8 = 3;
pub const HEAD_HDR: usize = 1 + 1 + 8 + 2 + 2 + 4 + 4 + 32 + 32 + 32 + 8;
pub const CONT_HDR: usize = 1 + 1 + 8 + 2;
pub const MIN_CHUNK: usize = 256;
pub const MAX_CHUNK_TARGET: usize = 16 * 1024;
pub const MAX_SLOTS: u64 = 65_536;
/// Head positions probed per URI.
pub const PROBES: usize = 4;
pub const LOCK_VERSION: u8 = 1;
pub const LOCK_VALUE_LEN: usize = 25;
pub const MAX_LOCKS: u64 = 64;
pub const INV_VERSION: u8 = 1;
pub const INV_VALUE_LEN: usize = 9;
pub const MAX_INVALIDATIONS: u64 = 256;
/// How long a fill lock holds before others may go upstream themselves.
pub const LOCK_TTL_NS: u64 = 5_000_000_000;
/// How long a key whose response was not storable is filled without a lock.
pub const PASS_TTL_NS: u64 = 5_000_000_000;
/// How soon a request looks again after losing the race for a lock twice
/// in a row (others are taking and releasing it at that moment).
pub const CONTENDED_RETRY_NS: u64 = 1_000_000;
/// Holder id of a released lock (free, or "pass" while its deadline lasts).
const PASS_HOLDER: u64 = 0;

/// The fixed key table derived from the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub chunk_bytes: usize,
    pub slots: u32,
    pub locks: u32,
    pub invalidations: u32,
}

impl Layout {
    /// Lays out `max_bytes`: a sixteenth at most for locks (up to 64), a
    /// sixty-fourth at most for invalidation records (1 to 256), the rest
    /// in chunks of about `max_bytes / 256` bytes (256 B to 16 KiB, larger
    /// only past 65536 slots). `slots == 0` disables storing.
    pub fn new(cfg: &CacheStoreConfig) -> Layout {
        let max = cfg.max_bytes;
        let locks = (max / 16 / LOCK_VALUE_LEN as u64).clamp(0, MAX_LOCKS);
        let inv = INV_VALUE_LEN as u64;
        let invalidations = (max / 64 / inv).clamp(1, MAX_INVALIDATIONS).min(max / inv);
        let data = max.saturating_sub(locks * LOCK_VALUE_LEN as u64 + invalidations * inv);
        let mut chunk = (data / 256).clamp(MIN_CHUNK as u64, MAX_CHUNK_TARGET as u64);
        if data / chunk > MAX_SLOTS {
            chunk = data.div_ceil(MAX_SLOTS);
        }
        let slots = (data / chunk).min(MAX_SLOTS);
        Layout {
            chunk_bytes: chunk as usize,
            slots: slots as u32,
            locks: locks as u32,
            invalidations: invalidations as u32,
        }
    }

    /// Upper bound of the bytes the table can hold.
    pub fn capacity_bytes(&self) -> u64 {
        self.slots as u64 * self.chunk_bytes as u64
            + self.locks as u64 * LOCK_VALUE_LEN as u64
            + self.invalidations as u64 * INV_VALUE_LEN as u64
    }

    /// Chunks needed for an encoded entry of `len` bytes.
    pub fn chunks_for(&self, len: usize) -> usize {
        let first = self.chunk_bytes.saturating_sub(HEAD_HDR);
        if len <= first {
            return 1;
        }
        1 + (len - first).div_ceil(self.chunk_bytes.saturating_sub(CONT_HDR).max(1))
    }

    /// Every key the store may ever write (tests and tooling).
    pub fn all_keys(&self) -> Vec<String> {
        (0..self.slots)
            .map(chunk_key)
            .chain((0..self.locks).map(lock_key))
            .chain((0..self.invalidations).map(invalidation_key))
            .collect()
    }

    /// Head positions for a URI hash.
    pub fn candidates(&self, uri: &[u8; 32]) -> Vec<u32> {
        self.candidate_slots(uri).collect()
    }

    /// [`Layout::candidates`], without allocating: distinct positions, in
    /// probing order.
    pub fn candidate_slots(&self, uri: &[u8; 32]) -> impl Iterator<Item = u32> {
        let mut out = [0u32; PROBES];
        let mut n = 0;
        if self.slots > 0 {
            for i in 0..PROBES {
                let Some(b) = le_u64(uri, i * 8) else {
                    break;
                };
                let p = (b % self.slots as u64) as u32;
                if !out.iter().take(n).any(|&q| q == p) {
                    if let Some(o) = out.get_mut(n) {
                        *o = p;
                        n += 1;
                    }
                }
            }
        }
        out.into_iter().take(n)
    }
}

const CHUNK_PREFIX: &[u8] = b"meshguard/v1/cache/c/";
const LOCK_PREFIX: &[u8] = b"meshguard/v1/cache/lock/";
const INV_PREFIX: &[u8] = b"meshguard/v1/cache/inv/";

/// A shared-data key built on the stack (no allocation, no formatting).
/// The key NAMES never change with the value formats: shared data has no
/// delete, so new names would leave the old keys' bytes held for good.
pub struct Key {
    buf: [u8; 40],
    len: usize,
}

impl Key {
    fn new(prefix: &[u8], i: u32) -> Key {
        // The decimal digits at the end of `digits` (a u32 has at most 10).
        let mut digits = [0u8; 10];
        let mut n = digits.len();
        let mut v = i;
        for d in digits.iter_mut().rev() {
            n -= 1;
            *d = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let (p, d) = (prefix.len(), digits.get(n..).unwrap_or_default());
        // At most 24 + 10 bytes: both parts always fit the 40.
        let mut buf = [0u8; 40];
        let mut len = 0;
        if let Some(dst) = buf.get_mut(..p) {
            dst.copy_from_slice(prefix);
            len = p;
        }
        if let Some(dst) = buf.get_mut(len..len + d.len()) {
            dst.copy_from_slice(d);
            len += d.len();
        }
        Key { buf, len }
    }
    pub fn chunk(i: u32) -> Key {
        Key::new(CHUNK_PREFIX, i)
    }
    pub fn lock(i: u32) -> Key {
        Key::new(LOCK_PREFIX, i)
    }
    pub fn invalidation(i: u32) -> Key {
        Key::new(INV_PREFIX, i)
    }
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

pub fn chunk_key(i: u32) -> String {
    Key::chunk(i).as_str().to_string()
}

pub fn lock_key(i: u32) -> String {
    Key::lock(i).as_str().to_string()
}

pub fn invalidation_key(i: u32) -> String {
    Key::invalidation(i).as_str().to_string()
}

/// A lock value: (deadline ns, key tag, holder).
type LockFields = (u64, u64, u64);

/// What a head slot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadInfo {
    pub generation: u64,
    pub chunks: u16,
    pub total_len: u32,
    pub checksum: u32,
    pub uri: [u8; 32],
    pub primary: [u8; 32],
    pub secondary: [u8; 32],
    pub stored_at_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// Never written, a tombstone, a continuation chunk, or dropped garbage.
    Free,
    Head(HeadInfo),
}

/// Checksum of an entry's encoding, to detect corrupt entries (not an
/// adversary: every writer is this module). Eight bytes per step
/// (multiply-rotate, as FxHash), the length mixed in first, a final
/// avalanche folded to 32 bits; a changed word always changes the 64-bit
/// state. About 8x fewer instructions than the byte-wise FNV-1a of chunk
/// version 1.
pub fn checksum(b: &[u8]) -> u32 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let step = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let mut h = (b.len() as u64 ^ 0x6d65_7368_6775_6172).wrapping_mul(K);
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = step(h, u64::from_le_bytes(a));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut a = [0u8; 8];
        for (d, &b) in a.iter_mut().zip(rest) {
            *d = b;
        }
        h = step(h, u64::from_le_bytes(a));
    }
    h ^= h >> 31;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 29;
    (h ^ (h >> 32)) as u32
}

// Fixed-size fields at byte `i`; `None` past the end of `b`.
fn le_u16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(*b.get(i..)?.first_chunk()?))
}
fn le_u32(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(*b.get(i..)?.first_chunk()?))
}
fn le_u64(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(*b.get(i..)?.first_chunk()?))
}
fn arr32(b: &[u8], i: usize) -> Option<[u8; 32]> {
    b.get(i..)?.first_chunk().copied()
}

/// Parses a chunk value as a head. Unknown versions / kinds are reported as
/// `Err` (corrupt or older format); continuations and tombstones are `Free`.
pub fn parse_head(v: &[u8]) -> Result<SlotState, &'static str> {
    let [version, kind, ..] = *v else {
        return Err("chunk too short");
    };
    if version != CHUNK_VERSION {
        return Err("unknown chunk version");
    }
    let head = || {
        if v.len() < HEAD_HDR || le_u16(v, 10)? != 0 {
            return None;
        }
        Some(HeadInfo {
            generation: le_u64(v, 2)?,
            chunks: le_u16(v, 12)?,
            total_len: le_u32(v, 14)?,
            checksum: le_u32(v, 18)?,
            uri: arr32(v, 22)?,
            primary: arr32(v, 54)?,
            secondary: arr32(v, 86)?,
            stored_at_ns: le_u64(v, 118)?,
        })
    };
    match kind {
        KIND_TOMB => Ok(SlotState::Free),
        KIND_CONT if v.len() >= CONT_HDR => Ok(SlotState::Free),
        KIND_HEAD => head().map(SlotState::Head).ok_or("malformed chunk"),
        _ => Err("malformed chunk"),
    }
}

/// An entry's encoding as read from its chunks: `buf[start..]`. For an
/// entry of one chunk, `buf` is the head chunk's value itself (not copied).
#[derive(Debug)]
pub struct Payload {
    buf: Vec<u8>,
    start: usize,
}

impl Payload {
    pub fn bytes(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    /// `bytes()[from..from + len]` as a vector, in the payload's own buffer
    /// (moved to its front: no allocation). Out-of-range parts are cut.
    pub fn into_range(mut self, from: usize, len: usize) -> Vec<u8> {
        let a = self.start.saturating_add(from).min(self.buf.len());
        let end = a.saturating_add(len).min(self.buf.len());
        self.buf.truncate(end);
        self.buf.drain(..a);
        self.buf
    }
}

/// Entries this worker has read, found whole and parsed, by slot
/// (direct-mapped, [`checked::SLOTS`] of them): a hit on the same entry
/// again skips its checksum (a pass over every byte: ~2 us for a 16 KiB
/// chunk) and its parse. Sound because a chunk's bytes never change under
/// the same generation: every write of an entry draws a new one (random,
/// 64 bits), and the memo is keyed by the head just read (slot,
/// generation, checksum, length). What it gives up: corruption of an entry
/// after this worker first checked it (by a foreign writer of meshguard's
/// keys: meshguard itself never rewrites a generation) goes unseen by this
/// worker. Each VM runs one thread; natively (tests) each thread has its
/// own memo.
mod checked {
    use super::{EntryMeta, HeadInfo};
    use std::cell::RefCell;

    pub const SLOTS: usize = 64;

    #[derive(Clone, Copy, PartialEq, Eq)]
    struct Key {
        slot: u32,
        generation: u64,
        checksum: u32,
        total_len: u32,
    }

    thread_local! {
        static MEMO: RefCell<Vec<Option<(Key, EntryMeta)>>> = const { RefCell::new(Vec::new()) };
    }

    fn key(slot: u32, head: &HeadInfo) -> Key {
        Key {
            slot,
            generation: head.generation,
            checksum: head.checksum,
            total_len: head.total_len,
        }
    }

    /// What this worker learnt of the entry whose head is `head`, if it
    /// checked this very entry before.
    pub fn get(slot: u32, head: &HeadInfo) -> Option<EntryMeta> {
        let k = key(slot, head);
        MEMO.with(|m| match m.try_borrow().ok()?.get(slot as usize % SLOTS) {
            Some(Some((have, meta))) if *have == k => Some(*meta),
            _ => None,
        })
    }

    /// Remembers an entry found whole (checksum) and well-formed (parse).
    pub fn put(slot: u32, head: &HeadInfo, meta: EntryMeta) {
        MEMO.with(|m| {
            if let Ok(mut m) = m.try_borrow_mut() {
                if m.is_empty() {
                    m.resize(SLOTS, None);
                }
                if let Some(e) = m.get_mut(slot as usize % SLOTS) {
                    *e = Some((key(slot, head), meta));
                }
            }
        });
    }
}

/// What [`Store::probe`] found. (A return value, moved once: boxing the
/// large variant would cost an allocation per hit.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Probe {
    /// The first stored entry of the key that the caller accepted (view
    /// it with [`EntryView::again`]).
    Found(Payload, EntryMeta),
    /// Entries of the key exist, none accepted (e.g. other `Vary` values).
    Rejected,
    /// No readable entry of the key.
    Nothing,
}

/// The store: a layout and a host. Cheap to build per call.
pub struct Store<'h, H: Host> {
    pub host: &'h H,
    pub layout: Layout,
}

/// Result of writing an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Stored {
        slot: u32,
        evicted: u32,
    },
    /// Larger than the table or than one chunk run allows.
    TooBig,
    /// Another worker wrote the same chunks meanwhile; not stored.
    Contended,
    /// The host refused; not stored.
    HostError,
}

/// Fill-lock outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOutcome {
    /// We hold it until released or `LOCK_TTL_NS` passes.
    Acquired(LockGuard),
    /// Another request is filling this key; it has `remaining_ns` left.
    /// Also the answer when other workers took and released the lock
    /// between each of our attempts (`CONTENDED_RETRY_NS`): look again soon.
    HeldByOther { remaining_ns: u64 },
    /// The lock slot is busy with another key, the key is in "pass" mode
    /// (its last response was not storable), or the host failed: proceed
    /// without a lock.
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockGuard {
    pub slot: u32,
    pub holder: u64,
    /// The lock record we replaced was this key's (released, expired or
    /// "pass"): someone locked the key before us and may have stored or
    /// refreshed its entry after the caller read the store.
    pub key_locked_before: bool,
}

impl<'h, H: Host> Store<'h, H> {
    pub fn new(host: &'h H, cfg: &CacheStoreConfig) -> Self {
        Store {
            host,
            layout: Layout::new(cfg),
        }
    }

    /// Bounded write: refuses values that would break the byte budget.
    fn put(&self, key: &str, value: &[u8], max: usize, cas: Option<u32>) -> Result<(), SetError> {
        if value.len() > max {
            return Err(SetError::Host("value larger than its slot".into()));
        }
        self.host.shared_set(key, value, cas)
    }

    /// Reads the head at a slot, with its CAS token. Corrupt or old-format
    /// values are logged and overwritten with a tombstone (dropped).
    pub fn read_head(&self, slot: u32) -> (SlotState, Option<u32>) {
        let (state, cas, _) = self.read_head_value(slot);
        (state, cas)
    }

    /// [`Store::read_head`], also returning the value read (a head's value
    /// holds the start of its entry).
    fn read_head_value(&self, slot: u32) -> (SlotState, Option<u32>, Option<Vec<u8>>) {
        let key = Key::chunk(slot);
        let key = key.as_str();
        match self.host.shared_get(key) {
            Ok((Some(v), cas)) => match parse_head(&v) {
                Ok(s) => (s, cas, Some(v)),
                Err(why) => {
                    log::warn!("meshguard: cache: dropping corrupt entry at {key}: {why}");
                    let _ = self.put(
                        key,
                        &[CHUNK_VERSION, KIND_TOMB],
                        self.layout.chunk_bytes,
                        cas,
                    );
                    (SlotState::Free, None, None)
                }
            },
            Ok((None, _)) => (SlotState::Free, None, None),
            Err(e) => {
                log::debug!("meshguard: cache: shared_get {key}: {e}");
                (SlotState::Free, None, None)
            }
        }
    }

    /// Looks a key up: reads the URI's candidate heads in order and, for
    /// each head of (`uri`, `primary`), its whole entry (checked as
    /// [`Store::read_entry`] does); returns the first entry `accept` takes,
    /// without reading the remaining candidates.
    pub fn probe(
        &self,
        uri: &[u8; 32],
        primary: &[u8; 32],
        mut accept: impl FnMut(&EntryView<'_>) -> bool,
    ) -> Probe {
        let mut any = false;
        for slot in self.layout.candidate_slots(uri) {
            let (SlotState::Head(head), _, Some(value)) = self.read_head_value(slot) else {
                continue;
            };
            if head.uri != *uri || head.primary != *primary {
                continue;
            }
            let known = checked::get(slot, &head);
            let Some(payload) = self.read_payload(slot, &head, Some(value), known.is_none()) else {
                continue;
            };
            let view = match known {
                Some(meta) => Some(EntryView::again(payload.bytes(), meta)),
                None => self.check(slot, &head, payload.bytes()).inspect(|v| {
                    checked::put(slot, &head, v.meta());
                }),
            };
            let accepted = match view {
                Some(view) => {
                    any = true;
                    accept(&view).then(|| view.meta())
                }
                None => None,
            };
            if let Some(meta) = accepted {
                return Probe::Found(payload, meta);
            }
        }
        if any {
            Probe::Rejected
        } else {
            Probe::Nothing
        }
    }

    /// Parses a payload read for `head`; a corrupt one is dropped.
    fn check<'p>(&self, slot: u32, head: &HeadInfo, payload: &'p [u8]) -> Option<EntryView<'p>> {
        match EntryView::parse(payload) {
            Ok(v) if v.primary == head.primary => Some(v),
            Ok(_) => self.drop_corrupt(slot, "primary key mismatch"),
            Err(why) => self.drop_corrupt(slot, why),
        }
    }

    /// Heads of a URI's candidate slots that match `uri` (and `primary`).
    pub fn matching_heads(
        &self,
        uri: &[u8; 32],
        primary: Option<&[u8; 32]>,
    ) -> Vec<(u32, HeadInfo)> {
        let mut out = Vec::new();
        for slot in self.layout.candidates(uri) {
            if let (SlotState::Head(h), _) = self.read_head(slot) {
                if &h.uri == uri && primary.is_none_or(|p| &h.primary == p) {
                    out.push((slot, h));
                }
            }
        }
        out
    }

    /// Reads the whole entry whose head is `head` at `slot`. `None` when
    /// the run was partly overwritten (evicted) or is corrupt (logged and
    /// dropped).
    pub fn read_entry(&self, slot: u32, head: &HeadInfo) -> Option<Entry> {
        let payload = self.read_payload(slot, head, None, true)?;
        let view = self.check(slot, head, payload.bytes())?;
        Some(view.to_entry())
    }

    /// Reads the encoding of the entry whose head is `head` at `slot`
    /// (`first`: the head chunk's value when already read) and checks its
    /// run (generations, indexes, lengths) and, with `verify`, its checksum
    /// (false: this worker has checked this very entry before, see
    /// [`checked`]); `None` when evicted or corrupt (dropped).
    fn read_payload(
        &self,
        slot: u32,
        head: &HeadInfo,
        first: Option<Vec<u8>>,
        verify: bool,
    ) -> Option<Payload> {
        let n = head.chunks as u32;
        if n == 0 || n > self.layout.slots {
            return self.drop_corrupt(slot, "chunk count out of range");
        }
        let total = head.total_len as usize;
        let read = |pos: u32| match self.host.shared_get(Key::chunk(pos).as_str()) {
            Ok((Some(v), _)) => Some(v),
            _ => None,
        };
        let v = match first {
            Some(v) => v,
            None => read(slot)?,
        };
        if v.len() < HEAD_HDR
            || v.get(1) != Some(&KIND_HEAD)
            || le_u64(&v, 2) != Some(head.generation)
        {
            return None; // replaced since the head was read
        }
        if v.len() - HEAD_HDR > total {
            return self.drop_corrupt(slot, "longer than its header says");
        }
        if n == 1 {
            // The whole entry is in the head chunk: use its value as is.
            if v.len() - HEAD_HDR != total {
                return self.drop_corrupt(slot, "shorter than its header says");
            }
            if verify && checksum(v.get(HEAD_HDR..).unwrap_or_default()) != head.checksum {
                return self.drop_corrupt(slot, "checksum mismatch");
            }
            return Some(Payload {
                buf: v,
                start: HEAD_HDR,
            });
        }
        let mut payload = Vec::with_capacity(total.min(self.layout.capacity_bytes() as usize));
        payload.extend_from_slice(v.get(HEAD_HDR..).unwrap_or_default());
        for j in 1..n {
            let pos = (slot + j) % self.layout.slots;
            let v = read(pos)?;
            let Some((hdr, part)) = v.split_first_chunk::<CONT_HDR>() else {
                log::debug!("meshguard: cache: entry at slot {slot} was partly evicted");
                return None;
            };
            if hdr[0] != CHUNK_VERSION
                || hdr[1] != KIND_CONT
                || le_u64(hdr, 2) != Some(head.generation)
                || le_u16(hdr, 10).map(u32::from) != Some(j)
            {
                log::debug!("meshguard: cache: entry at slot {slot} was partly evicted");
                return None;
            }
            payload.extend_from_slice(part);
            if payload.len() > total {
                return self.drop_corrupt(slot, "longer than its header says");
            }
        }
        if payload.len() != total {
            return self.drop_corrupt(slot, "shorter than its header says");
        }
        if verify && checksum(&payload) != head.checksum {
            return self.drop_corrupt(slot, "checksum mismatch");
        }
        Some(Payload {
            buf: payload,
            start: 0,
        })
    }

    fn drop_corrupt<T>(&self, slot: u32, why: &str) -> Option<T> {
        let key = Key::chunk(slot);
        let key = key.as_str();
        log::warn!("meshguard: cache: dropping corrupt entry at {key}: {why}");
        let _ = self.put(
            key,
            &[CHUNK_VERSION, KIND_TOMB],
            self.layout.chunk_bytes,
            None,
        );
        None
    }

    /// Overwrites a head with a tombstone (there is no delete).
    pub fn tombstone(&self, slot: u32) -> bool {
        self.put(
            Key::chunk(slot).as_str(),
            &[CHUNK_VERSION, KIND_TOMB],
            self.layout.chunk_bytes,
            None,
        )
        .is_ok()
    }

    /// Invalidates a URI (an unsafe method changed it): records the time,
    /// so that fills in flight do not store (see the module docs), then
    /// drops every stored variant; returns how many.
    pub fn invalidate(&self, uri: &[u8; 32]) -> usize {
        self.record_invalidation(uri);
        self.drop_uri(uri)
    }

    /// Drops every stored variant of a URI; returns how many.
    pub fn drop_uri(&self, uri: &[u8; 32]) -> usize {
        self.matching_heads(uri, None)
            .into_iter()
            .filter(|(slot, _)| self.tombstone(*slot))
            .count()
    }

    /// The invalidation record of a URI, if the layout has any.
    fn invalidation_slot(&self, uri: &[u8; 32]) -> Option<u32> {
        let b = le_u64(uri, 8)?;
        (self.layout.invalidations > 0).then(|| (b % self.layout.invalidations as u64) as u32)
    }

    /// Reads an invalidation record: `Ok(None)` absent, `Err` unreadable.
    fn read_invalidation(&self, key: &str) -> Result<(Option<u64>, Option<u32>), ()> {
        match self.host.shared_get(key) {
            Ok((Some(v), cas)) if v.len() == INV_VALUE_LEN && v.first() == Some(&INV_VERSION) => {
                Ok((le_u64(&v, 1), cas))
            }
            Ok((Some(_), _)) => {
                log::warn!("meshguard: cache: dropping corrupt invalidation record at {key}");
                Err(())
            }
            Ok((None, cas)) => Ok((None, cas)),
            Err(_) => Err(()),
        }
    }

    /// Records that `uri` was invalidated now (the record keeps the latest
    /// time: compare-and-swap, a few tries).
    pub fn record_invalidation(&self, uri: &[u8; 32]) {
        let Some(slot) = self.invalidation_slot(uri) else {
            return;
        };
        let key = Key::invalidation(slot);
        let key = key.as_str();
        let mut latest = self.host.now_nanos();
        let value = |at: u64| {
            let mut v = [0u8; INV_VALUE_LEN];
            v[0] = INV_VERSION;
            v[1..].copy_from_slice(&at.to_le_bytes());
            v
        };
        for _ in 0..4 {
            // Corrupt or unreadable: overwritten without CAS.
            let (at, cas) = match self.read_invalidation(key) {
                Ok((at, cas)) => (at, Some(cas.unwrap_or(CREATE_CAS))),
                Err(()) => (None, None),
            };
            latest = latest.max(at.unwrap_or(0));
            match self.put(key, &value(latest), INV_VALUE_LEN, cas) {
                Ok(()) => return,
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Host(e)) => {
                    log::debug!("meshguard: cache: shared_set {key}: {e}");
                    return;
                }
            }
        }
        // Others kept writing (each its own time, as late as it read):
        // the latest time seen goes in unconditionally.
        let _ = self.put(key, &value(latest), INV_VALUE_LEN, None);
    }

    /// Whether `uri`'s invalidation record was written at or after
    /// `since_ns` (a fill that started then must not store). Fails closed:
    /// a record that cannot be read, or no record at all in the layout,
    /// says yes.
    pub fn invalidated_since(&self, uri: &[u8; 32], since_ns: u64) -> bool {
        let Some(slot) = self.invalidation_slot(uri) else {
            return true;
        };
        match self.read_invalidation(Key::invalidation(slot).as_str()) {
            Ok((Some(at), _)) => at >= since_ns,
            Ok((None, _)) => false,
            Err(()) => true,
        }
    }

    /// Writes an entry under `uri` (placement described in the module docs).
    pub fn write(&self, uri: &[u8; 32], entry: &Entry) -> WriteOutcome {
        let slots = self.layout.slots;
        let Some(payload) = entry.encode() else {
            return WriteOutcome::TooBig;
        };
        let n = self.layout.chunks_for(payload.len());
        if slots == 0
            || n > slots as usize
            || n > u16::MAX as usize
            || payload.len() > u32::MAX as usize
        {
            return WriteOutcome::TooBig;
        }
        // Choose the head slot.
        let mut best: Option<(u32, u8, u64)> = None; // (slot, rank, stored_at)
        for slot in self.layout.candidate_slots(uri) {
            let (state, _) = self.read_head(slot);
            let (rank, at) = match state {
                SlotState::Head(h)
                    if h.uri == *uri
                        && h.primary == entry.primary
                        && h.secondary == entry.secondary =>
                {
                    (0, 0)
                }
                SlotState::Free => (1, 0),
                SlotState::Head(h) => (2, h.stored_at_ns),
            };
            if best.is_none_or(|(_, r, a)| (rank, at) < (r, a)) {
                best = Some((slot, rank, at));
            }
        }
        let Some((head_slot, _, _)) = best else {
            return WriteOutcome::TooBig;
        };
        let generation = self.generation(entry);
        let mut evicted = 0u32;
        let first_len = self.layout.chunk_bytes - HEAD_HDR;
        let cont_len = self.layout.chunk_bytes - CONT_HDR;
        // Continuations first, head last: readers never see a head whose
        // run is not complete (a torn run fails the generation check).
        let (first, rest) = payload.split_at(first_len.min(payload.len()));
        let mut parts = rest.chunks(cont_len.max(1));
        for j in 1..n {
            let pos = (head_slot + j as u32) % slots;
            let part = parts.next().unwrap_or_default();
            let mut v = Vec::with_capacity(CONT_HDR + part.len());
            v.push(CHUNK_VERSION);
            v.push(KIND_CONT);
            v.extend_from_slice(&generation.to_le_bytes());
            v.extend_from_slice(&(j as u16).to_le_bytes());
            v.extend_from_slice(part);
            match self.overwrite(pos, &v, uri, entry) {
                Ok(ev) => evicted += ev,
                Err(o) => return o,
            }
        }
        let mut v = Vec::with_capacity(HEAD_HDR + first.len());
        v.push(CHUNK_VERSION);
        v.push(KIND_HEAD);
        v.extend_from_slice(&generation.to_le_bytes());
        v.extend_from_slice(&0u16.to_le_bytes());
        v.extend_from_slice(&(n as u16).to_le_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        v.extend_from_slice(&checksum(&payload).to_le_bytes());
        v.extend_from_slice(uri);
        v.extend_from_slice(&entry.primary);
        v.extend_from_slice(&entry.secondary);
        v.extend_from_slice(&entry.response_time_ns.to_le_bytes());
        v.extend_from_slice(first);
        match self.overwrite(head_slot, &v, uri, entry) {
            Ok(ev) => WriteOutcome::Stored {
                slot: head_slot,
                evicted: evicted + ev,
            },
            Err(o) => o,
        }
    }

    /// Writes one chunk with CAS against what is there; counts an eviction
    /// when a valid head of another entry is overwritten.
    fn overwrite(
        &self,
        pos: u32,
        value: &[u8],
        uri: &[u8; 32],
        entry: &Entry,
    ) -> Result<u32, WriteOutcome> {
        let key = Key::chunk(pos);
        let key = key.as_str();
        let (state, cas) = self.read_head(pos);
        let evicted = match state {
            SlotState::Head(h)
                if !(h.uri == *uri
                    && h.primary == entry.primary
                    && h.secondary == entry.secondary) =>
            {
                1
            }
            _ => 0,
        };
        match self.put(
            key,
            value,
            self.layout.chunk_bytes,
            Some(cas.unwrap_or(CREATE_CAS)),
        ) {
            Ok(()) => Ok(evicted),
            Err(SetError::CasMismatch) => Err(WriteOutcome::Contended),
            Err(SetError::Host(e)) => {
                log::debug!("meshguard: cache: shared_set {key}: {e}");
                Err(WriteOutcome::HostError)
            }
        }
    }

    fn generation(&self, entry: &Entry) -> u64 {
        let mut p = [0u8; 8];
        p.copy_from_slice(&entry.primary[..8]);
        let g = self.host.random_u64()
            ^ self.host.now_nanos().rotate_left(17)
            ^ u64::from_le_bytes(p)
            ^ entry.response_time_ns;
        g.max(1)
    }

    fn lock_slot(&self, primary: &[u8; 32]) -> Option<(u32, u64)> {
        if self.layout.locks == 0 {
            return None;
        }
        let tag = le_u64(primary, 0)?.max(1);
        Some(((tag % self.layout.locks as u64) as u32, tag))
    }

    fn read_lock(&self, slot: u32) -> Option<(Option<LockFields>, Option<u32>)> {
        let key = Key::lock(slot);
        let key = key.as_str();
        match self.host.shared_get(key) {
            Ok((Some(v), cas)) => {
                let fields = match (le_u64(&v, 1), le_u64(&v, 9), le_u64(&v, 17)) {
                    (Some(deadline), Some(tag), Some(holder))
                        if v.len() == LOCK_VALUE_LEN && v.first() == Some(&LOCK_VERSION) =>
                    {
                        (deadline, tag, holder)
                    }
                    _ => {
                        log::warn!("meshguard: cache: dropping corrupt lock at {key}");
                        return Some((None, cas));
                    }
                };
                Some((Some(fields), cas))
            }
            Ok((None, _)) => Some((None, None)),
            Err(_) => None,
        }
    }

    fn lock_value(deadline: u64, tag: u64, holder: u64) -> [u8; LOCK_VALUE_LEN] {
        let mut v = [0u8; LOCK_VALUE_LEN];
        v[0] = LOCK_VERSION;
        v[1..9].copy_from_slice(&deadline.to_le_bytes());
        v[9..17].copy_from_slice(&tag.to_le_bytes());
        v[17..25].copy_from_slice(&holder.to_le_bytes());
        v
    }

    /// Takes the fill lock for a primary key. A lock whose deadline has
    /// passed, or lies further ahead than `LOCK_TTL_NS` plus the clocks'
    /// skew (the clock went backwards), is free ([`lease_holds`]).
    pub fn try_lock(&self, primary: &[u8; 32]) -> LockOutcome {
        let Some((slot, tag)) = self.lock_slot(primary) else {
            return LockOutcome::Unavailable;
        };
        let now = self.host.now_nanos();
        for _ in 0..2 {
            let Some((cur, cas)) = self.read_lock(slot) else {
                return LockOutcome::Unavailable;
            };
            let key_locked_before = cur.is_some_and(|(_, t, _)| t == tag);
            if let Some((deadline, t, holder_of)) = cur {
                let live = lease_holds(deadline, now, LOCK_TTL_NS);
                if live {
                    return if t == tag && holder_of != PASS_HOLDER {
                        LockOutcome::HeldByOther {
                            remaining_ns: deadline - now,
                        }
                    } else {
                        LockOutcome::Unavailable
                    };
                }
            }
            let holder = (self.host.random_u64() ^ now ^ tag).max(1);
            let v = Self::lock_value(now.saturating_add(LOCK_TTL_NS), tag, holder);
            match self.put(
                Key::lock(slot).as_str(),
                &v,
                LOCK_VALUE_LEN,
                Some(cas.unwrap_or(CREATE_CAS)),
            ) {
                Ok(()) => {
                    return LockOutcome::Acquired(LockGuard {
                        slot,
                        holder,
                        key_locked_before,
                    })
                }
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Host(_)) => return LockOutcome::Unavailable,
            }
        }
        // Lost the race twice: other workers are taking and releasing this
        // lock right now (e.g. waiters looking again as a revalidation
        // completes). Going upstream without the lock would send a second
        // fill or revalidation; the caller waits a moment and looks again.
        LockOutcome::HeldByOther {
            remaining_ns: CONTENDED_RETRY_NS,
        }
    }

    /// Releases a lock we hold (no-op if it expired and someone took it).
    pub fn unlock(&self, guard: LockGuard) {
        self.release_with(guard, 0);
    }

    /// Releases a lock and marks the key "pass" for [`PASS_TTL_NS`]: its
    /// response was not storable, so requests arriving meanwhile go
    /// upstream in parallel instead of queueing behind a lock one by one
    /// (the "hit-for-pass" of other caches).
    pub fn unlock_pass(&self, guard: LockGuard) {
        self.release_with(guard, self.host.now_nanos().saturating_add(PASS_TTL_NS));
    }

    fn release_with(&self, guard: LockGuard, deadline: u64) {
        for _ in 0..2 {
            let Some((Some((_, tag, holder)), cas)) = self.read_lock(guard.slot) else {
                return;
            };
            if holder != guard.holder {
                return;
            }
            let v = Self::lock_value(deadline, tag, PASS_HOLDER);
            match self.put(Key::lock(guard.slot).as_str(), &v, LOCK_VALUE_LEN, cas) {
                Err(SetError::CasMismatch) => continue,
                _ => return,
            }
        }
    }
}

/// A test host that calls `before_get` with the key before every
/// shared-data read, then reads from the fake (count reads, or let another
/// "worker" act between two reads).
#[cfg(test)]
pub(crate) struct Spy<'a, F: Fn(&str)> {
    pub host: &'a crate::host::fake::FakeHost,
    pub before_get: F,
}

/// A spy counting its shared-data reads in `reads`.
#[cfg(test)]
pub(crate) fn counting<'a>(
    host: &'a crate::host::fake::FakeHost,
    reads: &'a std::cell::Cell<usize>,
) -> Spy<'a, impl Fn(&str) + 'a> {
    Spy {
        host,
        before_get: move |_: &str| reads.set(reads.get() + 1),
    }
}

#[cfg(test)]
impl<F: Fn(&str)> Host for Spy<'_, F> {
    fn now_nanos(&self) -> u64 {
        self.host.now_nanos()
    }
    fn shared_get(&self, key: &str) -> Result<crate::host::SharedValue, crate::host::HostError> {
        (self.before_get)(key);
        self.host.shared_get(key)
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        self.host.shared_set(key, value, cas)
    }
    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), crate::host::HostError> {
        self.host.random_bytes(buf)
    }
    fn define_metric(
        &self,
        kind: crate::host::MetricKind,
        name: &str,
    ) -> Result<crate::host::MetricId, crate::host::HostError> {
        self.host.define_metric(kind, name)
    }
    fn increment_metric(&self, id: crate::host::MetricId, delta: i64) {
        self.host.increment_metric(id, delta)
    }
    fn record_metric(&self, id: crate::host::MetricId, value: u64) {
        self.host.record_metric(id, value)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    fn cfg(max: u64) -> CacheStoreConfig {
        CacheStoreConfig {
            max_bytes: max,
            max_entry_bytes: max,
        }
    }

    #[test]
    fn layout_never_exceeds_the_budget() {
        for max in [
            1024u64,
            1025,
            4096,
            65_536,
            1 << 20,
            64 << 20,
            1 << 40,
            u64::MAX / 2,
        ] {
            let l = Layout::new(&cfg(max));
            assert!(l.capacity_bytes() <= max, "{max}: {l:?}");
            assert!(
                l.slots >= 1 && (l.slots as u64) <= MAX_SLOTS,
                "{max}: {l:?}"
            );
            assert!(l.chunk_bytes >= MIN_CHUNK);
        }
        assert_eq!(Layout::new(&cfg(64 << 20)).chunk_bytes, 16 * 1024);
    }

    fn entry(primary: u8, body: usize) -> Entry {
        Entry {
            primary: [primary; 32],
            status: 200,
            body: vec![primary; body],
            response_time_ns: primary as u64,
            ..Entry::default()
        }
    }

    #[test]
    fn multi_chunk_entries_round_trip() {
        let h = FakeHost::new(1);
        let s = Store::new(&h, &cfg(64 * 1024));
        let uri = [3u8; 32];
        let e = entry(5, 3000);
        let WriteOutcome::Stored { slot, .. } = s.write(&uri, &e) else {
            panic!("not stored");
        };
        let heads = s.matching_heads(&uri, Some(&e.primary));
        assert_eq!(heads.len(), 1);
        assert_eq!(heads[0].0, slot);
        assert!(heads[0].1.chunks > 1);
        assert_eq!(s.read_entry(slot, &heads[0].1), Some(e));
    }

    #[test]
    fn torn_runs_read_as_evicted_and_garbage_is_dropped() {
        let h = FakeHost::new(1);
        let s = Store::new(&h, &cfg(64 * 1024));
        let uri = [3u8; 32];
        let e = entry(5, 3000);
        let WriteOutcome::Stored { slot, .. } = s.write(&uri, &e) else {
            panic!("not stored");
        };
        let head = s.matching_heads(&uri, None)[0].1.clone();
        let k = chunk_key((slot + 1) % s.layout.slots);
        let mut v = h.raw(&k).unwrap();
        v[2] ^= 1; // other generation
        h.put_raw(&k, &v);
        assert_eq!(s.read_entry(slot, &head), None);
        h.put_raw(&chunk_key(slot), b"\x07garbage");
        assert!(s.matching_heads(&uri, None).is_empty());
        assert_eq!(
            h.raw(&chunk_key(slot)),
            Some(vec![CHUNK_VERSION, KIND_TOMB])
        );
    }

    #[test]
    fn keys_are_the_documented_names() {
        for i in [0u32, 7, 10, 65_535, u32::MAX] {
            assert_eq!(chunk_key(i), format!("meshguard/v1/cache/c/{i}"));
            assert_eq!(lock_key(i), format!("meshguard/v1/cache/lock/{i}"));
            assert_eq!(invalidation_key(i), format!("meshguard/v1/cache/inv/{i}"));
        }
    }

    #[test]
    fn the_checksum_sees_every_flipped_bit_and_length() {
        let b: Vec<u8> = (0..=130u8).collect();
        let c = checksum(&b);
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut v = b.clone();
                v[i] ^= 1 << bit;
                assert_ne!(checksum(&v), c, "byte {i} bit {bit}");
            }
        }
        assert_ne!(checksum(&b[..130]), c);
        let mut z = b.clone();
        z.push(0);
        assert_ne!(checksum(&z), c);
        assert_ne!(checksum(b""), checksum(b"\0"));
    }

    #[test]
    fn payload_ranges_reuse_the_buffer_and_are_cut_to_it() {
        let p = || Payload {
            buf: b"HEADpayload-body".to_vec(),
            start: 4,
        };
        assert_eq!(p().bytes(), b"payload-body");
        assert_eq!(p().into_range(8, 4), b"body");
        assert_eq!(p().into_range(8, 100), b"body");
        assert_eq!(p().into_range(100, 4), b"");
    }

    #[test]
    fn an_entry_checked_once_is_not_checked_again_until_its_slot_is_rewritten() {
        let h = FakeHost::new(7);
        let s = Store::new(&h, &cfg(1 << 20));
        let uri = [9u8; 32];
        let body_of = |p: &Payload| EntryView::parse(p.bytes()).unwrap().body().to_vec();
        let flip_last = |slot: u32| {
            let k = chunk_key(slot);
            let mut v = h.raw(&k).unwrap();
            let last = v.len() - 1;
            v[last] ^= 0xff;
            h.put_raw(&k, &v);
        };
        let mut a = entry(9, 100);
        a.primary = uri;
        let WriteOutcome::Stored { slot, .. } = s.write(&uri, &a) else {
            panic!("not stored");
        };
        let Probe::Found(p, _) = s.probe(&uri, &uri, |_| true) else {
            panic!("stored");
        };
        assert_eq!(body_of(&p), a.body);
        // The same entry again is served from what the first read learnt:
        // a byte changed behind meshguard's back (same generation) is not
        // looked for again (the documented trade-off; this proves the memo
        // is used).
        flip_last(slot);
        let Probe::Found(p, _) = s.probe(&uri, &uri, |_| true) else {
            panic!("memoised");
        };
        assert_eq!(body_of(&p).last(), Some(&(9 ^ 0xff)));
        // A new entry in that slot has a new generation: checked again, so
        // its corruption is seen and it is dropped...
        let mut b = a.clone();
        b.body = vec![1; 100];
        let WriteOutcome::Stored { slot: again, .. } = s.write(&uri, &b) else {
            panic!("not stored");
        };
        assert_eq!(again, slot);
        flip_last(slot);
        assert!(matches!(s.probe(&uri, &uri, |_| true), Probe::Nothing));
        // ...and an intact one is read as itself, never as the memoised one
        // (another body of the same length).
        let mut c = a.clone();
        c.body = vec![2; 100];
        assert!(matches!(s.write(&uri, &c), WriteOutcome::Stored { .. }));
        let Probe::Found(p, _) = s.probe(&uri, &uri, |_| true) else {
            panic!("stored");
        };
        assert_eq!(body_of(&p), c.body);
    }

    #[test]
    fn a_probe_stops_at_the_first_accepted_entry_and_reads_its_head_once() {
        let h = FakeHost::new(1);
        let s = Store::new(&h, &cfg(1 << 20));
        let mut uri = [0u8; 32];
        for (i, b) in uri.iter_mut().enumerate() {
            *b = i as u8 * 7 + 1;
        }
        assert_eq!(s.layout.candidates(&uri).len(), PROBES);
        let mut a = entry(5, 10);
        a.primary = uri;
        let mut b = a.clone();
        b.secondary = [1; 32];
        b.body = b"other".to_vec();
        assert!(matches!(s.write(&uri, &a), WriteOutcome::Stored { .. }));
        assert!(matches!(s.write(&uri, &b), WriteOutcome::Stored { .. }));
        let reads = std::cell::Cell::new(0);
        let counting = counting(&h, &reads);
        let cs = Store::new(&counting, &cfg(1 << 20));
        let Probe::Found(p, _) = cs.probe(&uri, &uri, |_| true) else {
            panic!("stored");
        };
        assert_eq!(reads.get(), 1, "one shared-data read");
        assert_eq!(EntryView::parse(p.bytes()).unwrap().to_entry(), a);
        let Probe::Found(p, _) = cs.probe(&uri, &uri, |v| v.secondary == [1; 32]) else {
            panic!("stored");
        };
        assert_eq!(EntryView::parse(p.bytes()).unwrap().body(), b"other");
        assert!(matches!(cs.probe(&uri, &uri, |_| false), Probe::Rejected));
        assert!(matches!(cs.probe(&uri, &[4; 32], |_| true), Probe::Nothing));
        // A multi-chunk entry reads its head once too: one read per chunk.
        let big = Entry {
            body: vec![7; 40_000],
            ..a.clone()
        };
        assert!(matches!(s.write(&uri, &big), WriteOutcome::Stored { .. }));
        reads.set(0);
        let Probe::Found(p, _) = cs.probe(&uri, &uri, |v| v.secondary == big.secondary) else {
            panic!("stored");
        };
        let n = s.layout.chunks_for(big.encoded_len());
        assert!(n > 1);
        assert_eq!(reads.get(), n);
        assert_eq!(EntryView::parse(p.bytes()).unwrap().to_entry(), big);
    }

    #[test]
    fn invalidation_records_keep_the_latest_time_and_fail_closed() {
        let h = FakeHost::new(1_000);
        let s = Store::new(&h, &cfg(64 * 1024));
        assert!(s.layout.invalidations >= 1);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert!(!s.invalidated_since(&a, 0), "never invalidated");
        s.record_invalidation(&a);
        assert!(s.invalidated_since(&a, 1_000) && !s.invalidated_since(&a, 1_001));
        // A clock that went back does not move the record back.
        h.set_now(500);
        s.record_invalidation(&a);
        assert!(s.invalidated_since(&a, 1_000));
        h.set_now(2_000);
        s.record_invalidation(&a);
        assert!(s.invalidated_since(&a, 2_000));
        // invalidate() records too, and drops the entries.
        let e = entry(5, 10);
        assert!(matches!(s.write(&b, &e), WriteOutcome::Stored { .. }));
        h.set_now(3_000);
        assert_eq!(s.invalidate(&b), 1);
        assert!(s.invalidated_since(&b, 3_000));
        assert!(s.matching_heads(&b, None).is_empty());
        // An unreadable record says "invalidated" until the next write.
        let slot = s.invalidation_slot(&a).unwrap();
        h.put_raw(&invalidation_key(slot), b"junk");
        assert!(s.invalidated_since(&a, u64::MAX));
        h.set_now(4_000);
        s.record_invalidation(&a);
        assert!(s.invalidated_since(&a, 4_000) && !s.invalidated_since(&a, 4_001));
        // No record in the layout: nothing is known, nothing may be stored.
        let tiny = Store::new(&h, &cfg(8));
        assert_eq!(tiny.layout.invalidations, 0);
        assert!(tiny.invalidated_since(&a, 0));
        tiny.record_invalidation(&a);
    }

    #[test]
    fn locks_are_exclusive_expire_and_release() {
        let h = FakeHost::new(10_000_000_000);
        let s = Store::new(&h, &cfg(1 << 20));
        let p = [9u8; 32];
        let LockOutcome::Acquired(g) = s.try_lock(&p) else {
            panic!("first lock");
        };
        let w2 = h.clone();
        let s2 = Store::new(&w2, &cfg(1 << 20));
        assert!(matches!(s2.try_lock(&p), LockOutcome::HeldByOther { .. }));
        h.advance(std::time::Duration::from_secs(6));
        assert!(matches!(s2.try_lock(&p), LockOutcome::Acquired(_)));
        // The first holder's release is now a no-op.
        s.unlock(g);
        assert!(matches!(s.try_lock(&p), LockOutcome::HeldByOther { .. }));
        // Clock going far backwards frees a lock instead of holding it forever.
        h.set_now(1);
        assert!(matches!(s.try_lock(&p), LockOutcome::Acquired(_)));
    }

    /// A lock taken a moment ago by a worker whose clock reads a little
    /// later than this one's (proxy-wasm: each worker's event-loop time; a
    /// native worker that read `now` just before another took the lock)
    /// is held, not mistaken for a lock from a clock that went backwards:
    /// that mistake let two requests revalidate the same key at once (the
    /// flaky `test_concurrent_revalidation_collapses`).
    #[test]
    fn a_lock_from_a_clock_slightly_ahead_is_held() {
        let t = 10_000_000_000;
        let h = FakeHost::new(t);
        let s = Store::new(&h, &cfg(1 << 20));
        let p = [9u8; 32];
        assert!(matches!(s.try_lock(&p), LockOutcome::Acquired(_)));
        let behind = h.clone();
        let s2 = Store::new(&behind, &cfg(1 << 20));
        for lag in [1, 1_000_000, crate::host::CLOCK_SKEW_NS - 1] {
            behind.set_now(t - lag);
            assert!(
                matches!(s2.try_lock(&p), LockOutcome::HeldByOther { .. }),
                "{lag} ns behind"
            );
        }
        // More than the allowed skew behind: the clock went backwards.
        behind.set_now(t - crate::host::CLOCK_SKEW_NS - 1);
        assert!(matches!(s2.try_lock(&p), LockOutcome::Acquired(_)));
    }

    #[test]
    fn heads_are_read_field_by_field_and_every_truncation_is_refused() {
        let mut v = vec![CHUNK_VERSION, KIND_HEAD];
        v.extend_from_slice(&7u64.to_le_bytes()); // generation
        v.extend_from_slice(&0u16.to_le_bytes()); // index
        v.extend_from_slice(&3u16.to_le_bytes()); // chunks
        v.extend_from_slice(&1000u32.to_le_bytes()); // total len
        v.extend_from_slice(&0xdead_beefu32.to_le_bytes()); // checksum
        v.extend_from_slice(&[1u8; 32]);
        v.extend_from_slice(&[2u8; 32]);
        v.extend_from_slice(&[3u8; 32]);
        v.extend_from_slice(&99u64.to_le_bytes()); // stored at
        assert_eq!(v.len(), HEAD_HDR);
        let head = HeadInfo {
            generation: 7,
            chunks: 3,
            total_len: 1000,
            checksum: 0xdead_beef,
            uri: [1; 32],
            primary: [2; 32],
            secondary: [3; 32],
            stored_at_ns: 99,
        };
        assert_eq!(parse_head(&v), Ok(SlotState::Head(head.clone())));
        v.push(0xaa); // payload bytes follow the header
        assert_eq!(parse_head(&v), Ok(SlotState::Head(head)));
        for len in 0..HEAD_HDR {
            let want = if len < 2 {
                "chunk too short"
            } else {
                "malformed chunk"
            };
            assert_eq!(parse_head(&v[..len]), Err(want), "{len} bytes");
        }
        // A continuation's header, cut short, is malformed too.
        v[1] = KIND_CONT;
        assert_eq!(parse_head(&v[..CONT_HDR]), Ok(SlotState::Free));
        assert_eq!(parse_head(&v[..CONT_HDR - 1]), Err("malformed chunk"));
        // A head chunk claiming to be a continuation (index != 0) is not a head.
        v[1] = KIND_HEAD;
        v[10] = 1;
        assert_eq!(parse_head(&v), Err("malformed chunk"));
    }
}
