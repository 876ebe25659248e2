//! Purge by path prefix and by tag (surrogate key), over a store that
//! cannot be enumerated: a bounded **purge log** per route in one
//! shared-data key, read with the entry (one read per lookup, only on
//! routes with `purge.prefix` or `purge.tag_header`).
//!
//! - A record is (time, kind, length, 64-bit hash): a prefix purge hashes
//!   the lower-cased authority and the path prefix (its length kept), a
//!   tag purge hashes the tag. A stored response whose store time
//!   (`response_time_ns`, refreshed by a 304) is not after a matching
//!   record is treated as absent: a miss, never served stale either.
//! - Tags are read from the stored response's `tag_header` lines (what
//!   the origin sent; a request never adds to them), separated by spaces
//!   or commas. More than [`MAX_TAGS_PER_RESPONSE`] tags: any tag purge
//!   matches the response.
//! - At most [`MAX_RECORDS`] records: appending past it drops the oldest
//!   and raises the log's **floor** to its time; every response stored
//!   at or before the floor is treated as purged (more is purged, never
//!   less). A log that cannot be read (host error, unknown version,
//!   corrupt) hides every stored response of the route (and an append
//!   over a corrupt one sets the floor to now).
//! - Hash collisions (64-bit FNV-1a) can only purge more.

use crate::host::{Host, SetError};

/// Records kept per route.
pub const MAX_RECORDS: usize = 64;
/// Tags a response may carry before any tag purge matches it.
pub const MAX_TAGS_PER_RESPONSE: usize = 32;
/// Tags one `PURGE` may name.
pub const MAX_TAGS_PER_PURGE: usize = 16;
/// Longest prefix a `PURGE` may name.
pub const MAX_PREFIX_BYTES: usize = 4096;

const VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 8 + 1;
const RECORD_LEN: usize = 8 + 1 + 2 + 8;
const KIND_PREFIX: u8 = 1;
const KIND_TAG: u8 = 2;
/// Append attempts against concurrent writers.
const CAS_TRIES: usize = 8;

/// The shared-data key of a route's log.
pub(crate) fn log_key(route: &str) -> String {
    let mut k = String::with_capacity(26 + route.len());
    k.push_str("meshguard/v1/cache/purge/");
    k.push_str(route);
    k
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    at_ns: u64,
    kind: u8,
    len: u16,
    hash: u64,
}

impl Record {
    /// A purge of every URI of `authority` whose path starts with `prefix`.
    pub(crate) fn prefix(at_ns: u64, authority: &str, prefix: &str) -> Record {
        Record {
            at_ns,
            kind: KIND_PREFIX,
            len: prefix.len().min(u16::MAX as usize) as u16,
            hash: prefix_hash(authority, prefix.as_bytes()),
        }
    }
    /// A purge of every response tagged `tag`.
    pub(crate) fn tag(at_ns: u64, tag: &[u8]) -> Record {
        Record {
            at_ns,
            kind: KIND_TAG,
            len: 0,
            hash: fnv(&[tag]),
        }
    }
}

/// A route's purge log as read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PurgeLog {
    floor_ns: u64,
    records: Vec<Record>,
}

fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in p.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn prefix_hash(authority: &str, prefix: &[u8]) -> u64 {
    fnv(&[authority.to_ascii_lowercase().as_bytes(), prefix])
}

/// The tag hashes of a response's `tag_header` values, and whether there
/// were more than [`MAX_TAGS_PER_RESPONSE`].
pub(crate) fn tag_hashes<'a>(values: impl Iterator<Item = &'a [u8]>) -> (Vec<u64>, bool) {
    let mut out = Vec::new();
    for v in values {
        for t in v.split(|b| matches!(b, b' ' | b',' | b'\t')) {
            if t.is_empty() {
                continue;
            }
            if out.len() == MAX_TAGS_PER_RESPONSE {
                return (out, true);
            }
            out.push(fnv(&[t]));
        }
    }
    (out, false)
}

fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
}

impl PurgeLog {
    fn everything(floor_ns: u64) -> PurgeLog {
        PurgeLog {
            floor_ns,
            records: Vec::new(),
        }
    }

    fn decode(b: &[u8]) -> Option<PurgeLog> {
        if b.first() != Some(&VERSION) {
            return None;
        }
        let floor_ns = u64_at(b, 1)?;
        let n = usize::from(*b.get(9)?);
        if n > MAX_RECORDS || b.len() != HEADER_LEN + n * RECORD_LEN {
            return None;
        }
        let mut records = Vec::with_capacity(n);
        for i in 0..n {
            let o = HEADER_LEN + i * RECORD_LEN;
            records.push(Record {
                at_ns: u64_at(b, o)?,
                kind: *b.get(o + 8)?,
                len: u16::from_le_bytes(b.get(o + 9..o + 11)?.try_into().ok()?),
                hash: u64_at(b, o + 11)?,
            });
        }
        Some(PurgeLog { floor_ns, records })
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + self.records.len() * RECORD_LEN);
        b.push(VERSION);
        b.extend_from_slice(&self.floor_ns.to_le_bytes());
        b.push(self.records.len() as u8);
        for r in &self.records {
            b.extend_from_slice(&r.at_ns.to_le_bytes());
            b.push(r.kind);
            b.extend_from_slice(&r.len.to_le_bytes());
            b.extend_from_slice(&r.hash.to_le_bytes());
        }
        b
    }

    /// The route's log (one shared-data read); unreadable: hides all.
    pub(crate) fn read(host: &impl Host, route: &str) -> PurgeLog {
        match host.shared_get(&log_key(route)) {
            Ok((None, _)) => PurgeLog::default(),
            Ok((Some(v), _)) => PurgeLog::decode(&v).unwrap_or_else(|| {
                log::warn!("meshguard: cache: {route}: unreadable purge log: hiding every entry");
                PurgeLog::everything(u64::MAX)
            }),
            Err(_) => PurgeLog::everything(u64::MAX),
        }
    }

    /// Whether a response stored at `stored_ns` for `authority` + `path`
    /// was purged since. `tags` gives its tag hashes (read only when a
    /// tag record could match).
    pub(crate) fn hides(
        &self,
        stored_ns: u64,
        authority: &str,
        path: &str,
        tags: impl FnOnce() -> (Vec<u64>, bool),
    ) -> bool {
        if stored_ns <= self.floor_ns {
            return true;
        }
        let mut tags = Some(tags);
        let mut known: Option<(Vec<u64>, bool)> = None;
        for r in self.records.iter().filter(|r| stored_ns <= r.at_ns) {
            match r.kind {
                KIND_PREFIX => {
                    if let Some(p) = path.as_bytes().get(..usize::from(r.len)) {
                        if prefix_hash(authority, p) == r.hash {
                            return true;
                        }
                    }
                }
                KIND_TAG => {
                    if known.is_none() {
                        known = tags.take().map(|f| f());
                    }
                    if let Some((hashes, overflow)) = &known {
                        if *overflow || hashes.contains(&r.hash) {
                            return true;
                        }
                    }
                }
                // A kind this version does not know: purge more.
                _ => return true,
            }
        }
        false
    }

    /// Whether the log has nothing that could hide anything.
    pub(crate) fn is_empty(&self) -> bool {
        self.floor_ns == 0 && self.records.is_empty()
    }
}

/// Appends `records` to the route's log (compare-and-swap, retried):
/// false when the host would not store it (the purge did not happen).
pub(crate) fn append(host: &impl Host, route: &str, now: u64, records: &[Record]) -> bool {
    let key = log_key(route);
    for _ in 0..CAS_TRIES {
        let (mut log, cas) = match host.shared_get(&key) {
            Ok((Some(v), cas)) => (
                PurgeLog::decode(&v).unwrap_or_else(|| PurgeLog::everything(now)),
                cas,
            ),
            Ok((None, cas)) => (PurgeLog::default(), cas),
            Err(_) => return false,
        };
        log.records.extend_from_slice(records);
        let excess = log.records.len().saturating_sub(MAX_RECORDS);
        for old in log.records.drain(..excess) {
            log.floor_ns = log.floor_ns.max(old.at_ns);
        }
        match host.shared_set(&key, &log.encode(), cas) {
            Ok(()) => return true,
            Err(SetError::CasMismatch) => continue,
            Err(SetError::Host(e)) => {
                log::warn!("meshguard: cache: {route}: purge log not written: {e}");
                return false;
            }
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    fn no_tags() -> (Vec<u64>, bool) {
        (vec![], false)
    }

    #[test]
    fn a_prefix_hides_what_was_stored_before_it_under_that_prefix_and_host() {
        let log = PurgeLog {
            floor_ns: 0,
            records: vec![Record::prefix(100, "API.test", "/catalog/")],
        };
        assert!(log.hides(100, "api.test", "/catalog/x?y=1", no_tags));
        assert!(log.hides(50, "api.test", "/catalog/", no_tags));
        // stored after the purge, another path, another host, shorter path
        assert!(!log.hides(101, "api.test", "/catalog/x", no_tags));
        assert!(!log.hides(50, "api.test", "/catalogue/x", no_tags));
        assert!(!log.hides(50, "other.test", "/catalog/x", no_tags));
        assert!(!log.hides(50, "api.test", "/catalog", no_tags));
        // byte prefixes, not case-folded: /Catalog/ is another path
        assert!(!log.hides(50, "api.test", "/Catalog/x", no_tags));
    }

    #[test]
    fn a_tag_hides_responses_carrying_it_and_too_many_tags_match_any() {
        let log = PurgeLog {
            floor_ns: 0,
            records: vec![Record::tag(100, b"product-42")],
        };
        let (t, over) = tag_hashes([&b"a, product-42"[..], b"b"].into_iter());
        assert!(!over);
        assert!(log.hides(90, "h", "/p", || (t.clone(), false)));
        let (t2, _) = tag_hashes([&b"product-4 product-420,Product-42"[..]].into_iter());
        assert!(!log.hides(90, "h", "/p", || (t2, false)));
        assert!(!log.hides(101, "h", "/p", || (t, false)));
        let many: String = (0..=MAX_TAGS_PER_RESPONSE)
            .map(|i| format!("t{i} "))
            .collect();
        let (t3, over) = tag_hashes([many.as_bytes()].into_iter());
        assert!(over && t3.len() == MAX_TAGS_PER_RESPONSE);
        assert!(log.hides(90, "h", "/p", || (t3, over)));
        // tags are not looked at when no tag record applies
        let log = PurgeLog {
            floor_ns: 0,
            records: vec![Record::prefix(100, "h", "/x")],
        };
        assert!(!log.hides(90, "h", "/p", || panic!("tags read")));
    }

    #[test]
    fn past_the_bound_the_oldest_record_becomes_the_floor_purging_more() {
        let host = FakeHost::new(0);
        for i in 0..(MAX_RECORDS as u64 + 3) {
            assert!(append(&host, "r", 1000 + i, &[Record::tag(1000 + i, b"t")]));
        }
        let log = PurgeLog::read(&host, "r");
        assert_eq!(log.records.len(), MAX_RECORDS);
        assert_eq!(log.floor_ns, 1002);
        // an untagged response stored before the dropped records is hidden
        assert!(log.hides(1002, "h", "/p", no_tags));
        assert!(!log.hides(1003, "h", "/p", no_tags));
        assert_eq!(PurgeLog::decode(&log.encode()), Some(log));
    }

    #[test]
    fn an_unreadable_log_hides_everything_and_is_replaced_by_a_floor() {
        let host = FakeHost::new(0);
        host.put_raw(&log_key("r"), b"\x09garbage");
        let log = PurgeLog::read(&host, "r");
        assert!(log.hides(u64::MAX - 1, "h", "/p", no_tags));
        assert!(append(&host, "r", 500, &[Record::tag(500, b"x")]));
        let log = PurgeLog::read(&host, "r");
        assert_eq!(log.floor_ns, 500);
        assert!(log.hides(400, "h", "/p", no_tags));
        // a truncated record, a count over the bound
        let mut b = log.encode();
        b.pop();
        assert_eq!(PurgeLog::decode(&b), None);
        let mut b = PurgeLog::default().encode();
        b[9] = (MAX_RECORDS + 1) as u8;
        assert_eq!(PurgeLog::decode(&b), None);
        host.set_broken(true);
        assert!(!append(&host, "r", 600, &[Record::tag(600, b"x")]));
        assert!(PurgeLog::read(&host, "r").hides(u64::MAX - 1, "h", "/p", no_tags));
    }
}
