//! A stored response and its fixed little-endian binary encoding.
//!
//! ```text
//! u8      version (ENTRY_VERSION)
//! [32]    primary key hash (detects slot collisions)
//! [32]    secondary key hash (Vary)
//! u64     request_time  (ns since epoch, host clock)
//! u64     response_time (ns since epoch, host clock)
//! u16     status
//! facts   (FACTS_LEN bytes, derived from the headers when encoding):
//!         u16 flags, then 7 x u64: max-age, s-maxage, explicit lifetime,
//!         heuristic base, corrected initial age (s), stale-while-revalidate,
//!         stale-if-error (a value whose flag says absent is 0). Flags:
//!         1 no-cache, 2 public, 4 must-revalidate, 8 proxy-revalidate,
//!         16 max-age present, 32 max-age invalid, 64 s-maxage present,
//!         128 s-maxage invalid, 256 / 512 explicit lifetime source (1
//!         s-maxage, 2 max-age, 3 Expires; 0 none), 1024 heuristic base
//!         present, 2048 stale-while-revalidate present, 4096
//!         stale-if-error present
//! u16     number of vary names,  then each: u16 len, bytes
//! u16     number of headers,     then each: u16 name len, name, u32 value len, value
//! u32     body len, body
//! ```
//! Decoding checks every length against what is left; any mismatch, an
//! unknown version, an unknown tag or trailing bytes make the entry corrupt
//! (dropped).
//!
//! The facts ([`Facts`]) are what the headers say about freshness, parsed
//! once at store time so that a hit never parses a header; [`EntryView`]
//! reads an encoded entry in place, without allocating.

use super::directives::Seconds;
use super::freshness::{Facts, LifetimeSource};

/// Bumped whenever the layout changes: old entries are then dropped.
/// 2: the facts block.
pub const ENTRY_VERSION: u8 = 2;
/// Most headers kept in one entry.
pub const MAX_HEADERS: usize = 128;
/// Bytes of the facts block.
pub const FACTS_LEN: usize = 2 + 7 * 8;
/// Bytes before the vary names: version, keys, times, status, facts.
const FIXED_LEN: usize = 1 + 32 + 32 + 8 + 8 + 2 + FACTS_LEN;

const F_NO_CACHE: u16 = 1;
const F_PUBLIC: u16 = 2;
const F_MUST_REVALIDATE: u16 = 4;
const F_PROXY_REVALIDATE: u16 = 8;
const F_MAX_AGE: u16 = 16;
const F_MAX_AGE_INVALID: u16 = 32;
const F_S_MAXAGE: u16 = 64;
const F_S_MAXAGE_INVALID: u16 = 128;
/// Two bits: the explicit lifetime's source.
const F_SOURCE_SHIFT: u16 = 8;
const F_HEURISTIC: u16 = 1024;
const F_SWR: u16 = 2048;
const F_SIE: u16 = 4096;
const F_ALL: u16 = 8191;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub primary: [u8; 32],
    pub secondary: [u8; 32],
    pub request_time_ns: u64,
    pub response_time_ns: u64,
    pub status: u16,
    pub vary_names: Vec<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The targeted cache-control field (RFC 9213) the facts are read
    /// from instead of `Cache-Control` and `Expires`; not encoded (the
    /// facts are). `None`: `Cache-Control`.
    pub control: Option<String>,
}

impl Entry {
    /// Encoded size, without encoding.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN
            + 2
            + self.vary_names.iter().map(|n| 2 + n.len()).sum::<usize>()
            + 2
            + self
                .headers
                .iter()
                .map(|(n, v)| 2 + n.len() + 4 + v.len())
                .sum::<usize>()
            + 4
            + self.body.len()
    }

    /// The facts of this entry's headers (stored with it by [`Entry::encode`]).
    pub fn facts(&self) -> Facts {
        match &self.control {
            Some(field) => Facts::of(
                &super::directives::controlled_by(&self.headers, field),
                self.request_time_ns,
                self.response_time_ns,
            ),
            None => Facts::of(&self.headers, self.request_time_ns, self.response_time_ns),
        }
    }

    /// Encodes; `None` when a field is too long for its length prefix.
    pub fn encode(&self) -> Option<Vec<u8>> {
        if self.vary_names.len() > u16::MAX as usize
            || self.headers.len() > MAX_HEADERS
            || self.body.len() > u32::MAX as usize
        {
            return None;
        }
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(ENTRY_VERSION);
        out.extend_from_slice(&self.primary);
        out.extend_from_slice(&self.secondary);
        out.extend_from_slice(&self.request_time_ns.to_le_bytes());
        out.extend_from_slice(&self.response_time_ns.to_le_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        put_facts(&mut out, &self.facts());
        out.extend_from_slice(&(self.vary_names.len() as u16).to_le_bytes());
        for n in &self.vary_names {
            put_u16_bytes(&mut out, n.as_bytes())?;
        }
        out.extend_from_slice(&(self.headers.len() as u16).to_le_bytes());
        for (n, v) in &self.headers {
            put_u16_bytes(&mut out, n.as_bytes())?;
            out.extend_from_slice(&u32::try_from(v.len()).ok()?.to_le_bytes());
            out.extend_from_slice(v);
        }
        out.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.body);
        Some(out)
    }

    /// Decodes; `Err` names what is wrong (for the warning log line).
    pub fn decode(b: &[u8]) -> Result<Entry, &'static str> {
        Ok(EntryView::parse(b)?.to_entry())
    }
}

/// What [`EntryView::parse`] learnt of an encoding: its fixed fields and
/// where the rest lies. No borrow: kept to view the same bytes again
/// ([`EntryView::again`]) without parsing them again.
#[derive(Debug, Clone, Copy)]
pub struct EntryMeta {
    pub primary: [u8; 32],
    pub secondary: [u8; 32],
    pub request_time_ns: u64,
    pub response_time_ns: u64,
    pub status: u16,
    pub facts: Facts,
    vary_count: usize,
    vary: (usize, usize),
    header_count: usize,
    headers: (usize, usize),
    /// Where the body lies in the parsed bytes.
    pub body_offset: usize,
    pub body_len: usize,
}

/// An encoded entry read in place: every length checked once by
/// [`EntryView::parse`], nothing copied. Derefs to its [`EntryMeta`].
#[derive(Debug, Clone, Copy)]
pub struct EntryView<'a> {
    meta: EntryMeta,
    b: &'a [u8],
}

impl std::ops::Deref for EntryView<'_> {
    type Target = EntryMeta;
    fn deref(&self) -> &EntryMeta {
        &self.meta
    }
}

impl<'a> EntryView<'a> {
    /// Checks an encoding (the same checks as [`Entry::decode`]).
    pub fn parse(b: &'a [u8]) -> Result<EntryView<'a>, &'static str> {
        let mut r = Reader { b, i: 0 };
        let version = r.u8()?;
        if version != ENTRY_VERSION {
            return Err("unknown entry version");
        }
        let primary = r.array()?;
        let secondary = r.array()?;
        let request_time_ns = r.u64()?;
        let response_time_ns = r.u64()?;
        let status = r.u16()?;
        let facts = read_facts(&mut r)?;
        let vary_count = r.u16()? as usize;
        let vary_start = r.i;
        for _ in 0..vary_count {
            let len = r.u16()? as usize;
            utf8(r.take(len)?).ok_or("vary name not UTF-8")?;
        }
        let vary = (vary_start, r.i);
        let header_count = r.u16()? as usize;
        if header_count > MAX_HEADERS {
            return Err("too many headers");
        }
        let headers_start = r.i;
        for _ in 0..header_count {
            let len = r.u16()? as usize;
            utf8(r.take(len)?).ok_or("header name not UTF-8")?;
            let vlen = r.u32()? as usize;
            r.take(vlen)?;
        }
        let headers = (headers_start, r.i);
        let body_len = r.u32()? as usize;
        let body_offset = r.i;
        r.take(body_len)?;
        if r.i != b.len() {
            return Err("trailing bytes");
        }
        Ok(EntryView {
            meta: EntryMeta {
                primary,
                secondary,
                request_time_ns,
                response_time_ns,
                status,
                facts,
                vary_count,
                vary,
                header_count,
                headers,
                body_offset,
                body_len,
            },
            b,
        })
    }

    /// The view of bytes that [`EntryView::parse`] accepted, from what it
    /// learnt (`meta()`), without parsing again. Given other bytes, the
    /// iterators end early or yield garbage; nothing panics.
    pub fn again(b: &'a [u8], meta: EntryMeta) -> EntryView<'a> {
        EntryView { meta, b }
    }

    pub fn meta(&self) -> EntryMeta {
        self.meta
    }

    fn part(&self, (from, to): (usize, usize)) -> &'a [u8] {
        self.b.get(from..to).unwrap_or_default()
    }

    /// The `Vary` names, in stored order.
    pub fn vary_names(&self) -> Names<'a> {
        Names {
            r: Reader {
                b: self.part(self.meta.vary),
                i: 0,
            },
            left: self.meta.vary_count,
        }
    }

    /// The stored headers, in order.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            r: Reader {
                b: self.part(self.meta.headers),
                i: 0,
            },
            left: self.meta.header_count,
        }
    }

    /// Number of stored headers.
    pub fn header_count(&self) -> usize {
        self.meta.header_count
    }

    pub fn body(&self) -> &'a [u8] {
        self.part((
            self.meta.body_offset,
            self.meta.body_offset.saturating_add(self.meta.body_len),
        ))
    }

    /// The owned entry.
    pub fn to_entry(&self) -> Entry {
        Entry {
            primary: self.primary,
            secondary: self.secondary,
            request_time_ns: self.request_time_ns,
            response_time_ns: self.response_time_ns,
            status: self.status,
            vary_names: self.vary_names().map(str::to_string).collect(),
            headers: self
                .headers()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
            body: self.body().to_vec(),
            control: None,
        }
    }
}

/// Iterator over the vary names of an [`EntryView`].
#[derive(Debug, Clone)]
pub struct Names<'a> {
    r: Reader<'a>,
    left: usize,
}

impl<'a> Iterator for Names<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        self.left = self.left.checked_sub(1)?;
        let len = self.r.u16().ok()? as usize;
        std::str::from_utf8(self.r.take(len).ok()?).ok()
    }
}

/// Iterator over the headers of an [`EntryView`].
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    r: Reader<'a>,
    left: usize,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a [u8]);
    fn next(&mut self) -> Option<(&'a str, &'a [u8])> {
        self.left = self.left.checked_sub(1)?;
        let len = self.r.u16().ok()? as usize;
        let name = std::str::from_utf8(self.r.take(len).ok()?).ok()?;
        let vlen = self.r.u32().ok()? as usize;
        Some((name, self.r.take(vlen).ok()?))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

/// Whether `b` is UTF-8; names are ASCII in practice, checked inline.
fn utf8(b: &[u8]) -> Option<()> {
    if b.is_ascii() || std::str::from_utf8(b).is_ok() {
        Some(())
    } else {
        None
    }
}

fn put_u16_bytes(out: &mut Vec<u8>, s: &[u8]) -> Option<()> {
    out.extend_from_slice(&u16::try_from(s.len()).ok()?.to_le_bytes());
    out.extend_from_slice(s);
    Some(())
}

fn put_facts(out: &mut Vec<u8>, f: &Facts) {
    let mut flags = 0u16;
    let mut v = [0u64; 7];
    let mut set = |on: bool, bit: u16| {
        if on {
            flags |= bit;
        }
    };
    set(f.no_cache, F_NO_CACHE);
    set(f.public, F_PUBLIC);
    set(f.must_revalidate, F_MUST_REVALIDATE);
    set(f.proxy_revalidate, F_PROXY_REVALIDATE);
    for (i, s, present, invalid) in [
        (0, f.max_age, F_MAX_AGE, F_MAX_AGE_INVALID),
        (1, f.s_maxage, F_S_MAXAGE, F_S_MAXAGE_INVALID),
    ] {
        match s {
            Some(Seconds::Value(n)) => {
                flags |= present;
                if let Some(x) = v.get_mut(i) {
                    *x = n;
                }
            }
            Some(Seconds::Invalid) => flags |= present | invalid,
            None => {}
        }
    }
    if let Some((n, source)) = f.explicit_lifetime {
        let code = match source {
            LifetimeSource::SMaxAge => 1,
            LifetimeSource::MaxAge => 2,
            LifetimeSource::Expires => 3,
            // Never explicit: not produced by `explicit_lifetime`.
            _ => 0,
        };
        flags |= code << F_SOURCE_SHIFT;
        v[2] = n;
    }
    for (i, o, bit) in [
        (3, f.heuristic_base, F_HEURISTIC),
        (5, f.stale_while_revalidate, F_SWR),
        (6, f.stale_if_error, F_SIE),
    ] {
        if let Some(n) = o {
            flags |= bit;
            if let Some(x) = v.get_mut(i) {
                *x = n;
            }
        }
    }
    v[4] = f.initial_age;
    out.extend_from_slice(&flags.to_le_bytes());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn read_facts(r: &mut Reader<'_>) -> Result<Facts, &'static str> {
    let flags = r.u16()?;
    if flags & !F_ALL != 0 {
        return Err("unknown fact flags");
    }
    let mut v = [0u64; 7];
    for x in &mut v {
        *x = r.u64()?;
    }
    let on = |bit: u16| flags & bit != 0;
    let secs = |present: u16, invalid: u16, n: u64| match (on(present), on(invalid)) {
        (false, _) => None,
        (true, false) => Some(Seconds::Value(n)),
        (true, true) => Some(Seconds::Invalid),
    };
    let opt = |bit: u16, n: u64| on(bit).then_some(n);
    let explicit_lifetime = match (flags >> F_SOURCE_SHIFT) & 3 {
        1 => Some((v[2], LifetimeSource::SMaxAge)),
        2 => Some((v[2], LifetimeSource::MaxAge)),
        3 => Some((v[2], LifetimeSource::Expires)),
        _ => None,
    };
    Ok(Facts {
        explicit_lifetime,
        heuristic_base: opt(F_HEURISTIC, v[3]),
        initial_age: v[4],
        max_age: secs(F_MAX_AGE, F_MAX_AGE_INVALID, v[0]),
        s_maxage: secs(F_S_MAXAGE, F_S_MAXAGE_INVALID, v[1]),
        no_cache: on(F_NO_CACHE),
        public: on(F_PUBLIC),
        must_revalidate: on(F_MUST_REVALIDATE),
        proxy_revalidate: on(F_PROXY_REVALIDATE),
        stale_while_revalidate: opt(F_SWR, v[5]),
        stale_if_error: opt(F_SIE, v[6]),
    })
}

#[derive(Debug, Clone)]
struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.i.checked_add(n).ok_or("length overflow")?;
        let s = self.b.get(self.i..end).ok_or("truncated")?;
        self.i = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        self.take(1)?.first().copied().ok_or("truncated")
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(a))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn array(&mut self) -> Result<[u8; 32], &'static str> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            primary: [7; 32],
            secondary: [9; 32],
            request_time_ns: 1,
            response_time_ns: 2,
            status: 200,
            vary_names: vec!["accept".into()],
            headers: vec![
                ("etag".into(), b"\"x\"".to_vec()),
                ("x-bin".into(), vec![0xff, 0]),
            ],
            body: b"hello".to_vec(),
            control: None,
        }
    }

    #[test]
    fn round_trips_and_predicts_its_size() {
        let e = sample();
        let b = e.encode().unwrap_or_default();
        assert_eq!(b.len(), e.encoded_len());
        assert_eq!(Entry::decode(&b), Ok(e));
    }

    #[test]
    fn every_truncation_and_bad_version_is_rejected() {
        let b = sample().encode().unwrap_or_default();
        for n in 0..b.len() {
            assert!(Entry::decode(&b[..n]).is_err(), "prefix {n}");
        }
        let mut v = b.clone();
        v[0] = 99;
        assert_eq!(Entry::decode(&v), Err("unknown entry version"));
        let mut t = b.clone();
        t.push(0);
        assert_eq!(Entry::decode(&t), Err("trailing bytes"));
    }

    /// Offset of the facts block in an encoding.
    const FACTS_AT: usize = 1 + 32 + 32 + 8 + 8 + 2;

    fn with_headers(h: &[(&str, &str)]) -> Entry {
        Entry {
            headers: h
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            request_time_ns: 1_700_000_000_000_000_000,
            response_time_ns: 1_700_000_002_000_000_000,
            ..sample()
        }
    }

    #[test]
    fn the_view_reads_what_decode_reads_without_copying() {
        let e = sample();
        let b = e.encode().unwrap();
        let v = EntryView::parse(&b).unwrap();
        assert_eq!(v.to_entry(), e);
        assert_eq!(v.vary_names().collect::<Vec<_>>(), vec!["accept"]);
        assert_eq!(
            v.headers().collect::<Vec<_>>(),
            vec![("etag", &b"\"x\""[..]), ("x-bin", &[0xff, 0][..])]
        );
        assert_eq!(v.header_count(), 2);
        assert_eq!(v.body(), b"hello");
        assert_eq!(&b[v.body_offset..], b"hello");
        assert_eq!((v.status, v.primary, v.secondary), (200, [7; 32], [9; 32]));
        let again = EntryView::again(&b, v.meta());
        assert_eq!(again.to_entry(), e);
        // Other bytes: garbage or nothing, never a panic.
        let short = EntryView::again(&b[..40], v.meta());
        assert_eq!(short.headers().count(), 0);
        assert_eq!(short.body(), b"");
    }

    #[test]
    fn facts_are_stored_with_the_entry() {
        for h in [
            vec![("cache-control", "public, max-age=600, stale-if-error=5")],
            vec![
                ("cache-control", "s-maxage=x, no-cache, must-revalidate"),
                ("age", "7"),
            ],
            vec![
                (
                    "cache-control",
                    "proxy-revalidate, stale-while-revalidate=9",
                ),
                ("expires", "Tue, 14 Nov 2023 22:23:20 GMT"),
                ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
                ("last-modified", "Mon, 13 Nov 2023 10:00:00 GMT"),
            ],
            vec![],
        ] {
            let e = with_headers(&h);
            let b = e.encode().unwrap();
            assert_eq!(b.len(), e.encoded_len());
            let v = EntryView::parse(&b).unwrap();
            assert_eq!(v.facts, e.facts(), "{h:?}");
            assert_eq!(Entry::decode(&b), Ok(e));
        }
        let f = with_headers(&[
            ("cache-control", "public, max-age=600, stale-if-error=5"),
            ("age", "3"),
        ])
        .facts();
        assert_eq!(f.explicit_lifetime, Some((600, LifetimeSource::MaxAge)));
        assert_eq!(f.max_age, Some(Seconds::Value(600)));
        assert!(f.public && !f.no_cache);
        assert_eq!(f.stale_if_error, Some(5));
        // Age 3 + 2 s between request and response.
        assert_eq!(f.initial_age, 5);
    }

    #[test]
    fn bad_fact_flags_and_versions_are_rejected() {
        let b = sample().encode().unwrap();
        for bad in [0x2000u16, 0x8000, 0xffff] {
            let mut v = b.clone();
            v[FACTS_AT..FACTS_AT + 2].copy_from_slice(&bad.to_le_bytes());
            assert_eq!(
                Entry::decode(&v).err(),
                Some("unknown fact flags"),
                "{bad:x}"
            );
        }
        // Every flag combination of the known bits reads back as written.
        let mut v = b.clone();
        v[FACTS_AT..FACTS_AT + 2].copy_from_slice(&F_ALL.to_le_bytes());
        let f = EntryView::parse(&v).unwrap().facts;
        let mut again = Vec::new();
        put_facts(&mut again, &f);
        assert_eq!(&again[..], &v[FACTS_AT..FACTS_AT + FACTS_LEN]);
        let mut old = b.clone();
        old[0] = 1;
        assert_eq!(EntryView::parse(&old).err(), Some("unknown entry version"));
        let mut bad_name = b.clone();
        let at = b.windows(5).position(|w| w == b"x-bin").unwrap();
        bad_name[at] = 0xff;
        assert_eq!(Entry::decode(&bad_name), Err("header name not UTF-8"));
    }
}
