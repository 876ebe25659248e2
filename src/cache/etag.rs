//! Validators and conditional requests (RFC 9110 8.8.3, 13.1.2, 13.1.3,
//! 13.2.2): entity-tag comparison, `If-None-Match` lists and `*`, and
//! `If-Modified-Since` against `Last-Modified`. An `If-Modified-Since`
//! that is not a valid date, or is later than the cache's current time,
//! is ignored (RFC 9110 13.1.3: only a date the recipient has seen pass
//! can say the client's copy is current): the full response is sent.

use super::headers::{self, HeaderList, Headers};
use super::httpdate;

/// A parsed entity-tag: `W/"x"` or `"x"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ETag<'a> {
    pub weak: bool,
    pub opaque: &'a [u8],
}

/// Parses one entity-tag (surrounding whitespace allowed).
pub fn parse(v: &[u8]) -> Option<ETag<'_>> {
    let v = v.trim_ascii();
    let (weak, rest) = match v.strip_prefix(b"W/") {
        Some(r) => (true, r),
        None => (false, v),
    };
    let [b'"', opaque @ .., b'"'] = rest else {
        return None;
    };
    if opaque.contains(&b'"') {
        return None;
    }
    Some(ETag { weak, opaque })
}

/// Strong comparison: both strong and identical.
pub fn strong_eq(a: &ETag, b: &ETag) -> bool {
    !a.weak && !b.weak && a.opaque == b.opaque
}

/// Weak comparison: identical opaque tags, weakness ignored.
pub fn weak_eq(a: &ETag, b: &ETag) -> bool {
    a.opaque == b.opaque
}

/// Splits an entity-tag list (`"a", W/"b"`), respecting quotes (commas are
/// legal inside an opaque tag). Malformed members are skipped.
pub fn parse_list(v: &[u8]) -> Vec<ETag<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    // The byte at `i`, `None` past the end.
    let at = |i: usize| v.get(i).copied();
    while i < v.len() && out.len() < 64 {
        while at(i).is_some_and(|c| c == b',' || c.is_ascii_whitespace()) {
            i += 1;
        }
        let start = i;
        if v.get(i..).is_some_and(|r| r.starts_with(b"W/")) {
            i += 2;
        }
        if at(i) == Some(b'"') {
            i += 1;
            while at(i).is_some_and(|c| c != b'"') {
                i += 1;
            }
            i += 1;
        } else {
            while at(i).is_some_and(|c| c != b',') {
                i += 1;
            }
        }
        let end = i.min(v.len());
        if let Some(t) = v.get(start..end).and_then(parse) {
            out.push(t);
        }
        while at(i).is_some_and(|c| c != b',') {
            i += 1;
        }
    }
    out
}

/// The stored response's fields a conditional request is compared with:
/// the first `ETag`, `Last-Modified` and `Date` values (as
/// `headers::first` finds them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredValidators<'a> {
    pub etag: Option<&'a [u8]>,
    pub last_modified: Option<&'a [u8]>,
    pub date: Option<&'a [u8]>,
}

impl<'a> StoredValidators<'a> {
    pub fn of(stored: &'a Headers) -> StoredValidators<'a> {
        let mut s = StoredValidators::default();
        for (n, v) in stored {
            s.see(n, v);
        }
        s
    }

    /// Takes in the next stored header (in order).
    pub fn see(&mut self, name: &str, value: &'a [u8]) {
        if value.len() > crate::request::MAX_HEADER_VALUE {
            return;
        }
        let slot = if name.eq_ignore_ascii_case("etag") {
            &mut self.etag
        } else if name.eq_ignore_ascii_case("last-modified") {
            &mut self.last_modified
        } else if name.eq_ignore_ascii_case("date") {
            &mut self.date
        } else {
            return;
        };
        if slot.is_none() {
            *slot = Some(value);
        }
    }
}

/// `If-None-Match` evaluation against a stored response (weak comparison,
/// as 13.1.2 requires): true when the condition is FALSE, i.e. the client's
/// copy is current and a 304 is the answer. `*` matches any stored response.
pub fn if_none_match_hits(if_none_match: &[&[u8]], stored: &Headers) -> bool {
    if_none_match_hits_etag(if_none_match, StoredValidators::of(stored).etag)
}

fn if_none_match_hits_etag(if_none_match: &[&[u8]], stored_etag: Option<&[u8]>) -> bool {
    if if_none_match.iter().any(|v| v.trim_ascii() == b"*") {
        return true;
    }
    let Some(tag) = stored_etag.and_then(parse) else {
        return false;
    };
    if_none_match
        .iter()
        .flat_map(|v| parse_list(v))
        .any(|t| weak_eq(&t, &tag))
}

/// Whether the stored response is not modified since `If-Modified-Since`:
/// modification time is `Last-Modified`, else its `Date`, else when it was
/// received (RFC 9111 4.3.2). An invalid date, or one later than
/// `now_secs`, ignores the header.
pub fn not_modified_since(
    ims: &[u8],
    stored: &Headers,
    response_time_secs: u64,
    now_secs: u64,
) -> bool {
    not_modified_since_by(
        ims,
        &StoredValidators::of(stored),
        response_time_secs,
        now_secs,
    )
}

fn not_modified_since_by(
    ims: &[u8],
    stored: &StoredValidators,
    response_time_secs: u64,
    now_secs: u64,
) -> bool {
    let Some(since) = httpdate::parse(ims).filter(|&s| s <= now_secs) else {
        return false;
    };
    let modified = stored
        .last_modified
        .and_then(httpdate::parse)
        .or_else(|| stored.date.and_then(httpdate::parse))
        .unwrap_or(response_time_secs);
    modified <= since
}

/// Whether a conditional GET/HEAD request may be answered with 304 from the
/// stored response: `If-None-Match` if present (then `If-Modified-Since` is
/// ignored, 13.2.2), otherwise `If-Modified-Since`.
/// `now_secs` is the cache's current time.
pub fn answer_304(
    request: &(impl HeaderList + ?Sized),
    stored: &Headers,
    response_time_secs: u64,
    now_secs: u64,
) -> bool {
    answer_304_by(
        request,
        &StoredValidators::of(stored),
        response_time_secs,
        now_secs,
    )
}

/// [`answer_304`] given the stored response's validators.
pub fn answer_304_by(
    request: &(impl HeaderList + ?Sized),
    stored: &StoredValidators,
    response_time_secs: u64,
    now_secs: u64,
) -> bool {
    let inm: Vec<&[u8]> = headers::all(request, "if-none-match").collect();
    if !inm.is_empty() {
        return if_none_match_hits_etag(&inm, stored.etag);
    }
    match headers::first(request, "if-modified-since") {
        Some(ims) => not_modified_since_by(ims, stored, response_time_secs, now_secs),
        None => false,
    }
}

/// Whether the request carries its own validators.
pub fn is_conditional(request: &(impl HeaderList + ?Sized)) -> bool {
    headers::has(request, "if-none-match") || headers::has(request, "if-modified-since")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn hs(v: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        v.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn strong_and_weak_comparison_table() {
        // RFC 9110 8.8.3.2 table.
        let cases = [
            (&b"W/\"1\""[..], &b"W/\"1\""[..], false, true),
            (b"W/\"1\"", b"W/\"2\"", false, false),
            (b"W/\"1\"", b"\"1\"", false, true),
            (b"\"1\"", b"\"1\"", true, true),
        ];
        for (a, b, strong, weak) in cases {
            let (a, b) = (parse(a).unwrap(), parse(b).unwrap());
            assert_eq!(strong_eq(&a, &b), strong);
            assert_eq!(weak_eq(&a, &b), weak);
        }
        assert!(parse(b"abc").is_none());
        assert!(parse(b"\"a\"b\"").is_none());
        // Too short to hold both quotes; the shortest tag is empty.
        assert!(parse(b"\"").is_none());
        assert!(parse(b"W/\"").is_none());
        assert!(parse(b"W/").is_none());
        assert_eq!(parse(b"\"\"").map(|t| t.opaque), Some(&b""[..]));
        assert_eq!(parse(b"W/\"\"").map(|t| t.weak), Some(true));
    }

    #[test]
    fn lists_and_star() {
        let stored = hs(&[("etag", "W/\"v2\"")]);
        assert!(if_none_match_hits(&[b"\"v1\", \"v2\""], &stored));
        assert!(if_none_match_hits(&[b"\"v1\"", b" W/\"v2\" "], &stored));
        assert!(!if_none_match_hits(&[b"\"v1\""], &stored));
        assert!(if_none_match_hits(&[b"*"], &hs(&[])));
        assert!(!if_none_match_hits(&[b"\"v1\""], &hs(&[])));
        let l = parse_list(b"\"a,b\", garbage, W/\"c\"");
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].opaque, b"a,b");
        // Members cut at the end of the list are skipped, not misread.
        for cut in [&b"\"a\", \"b"[..], b"\"a\", W/", b"\"a\", W/\"", b"\"a\","] {
            let l = parse_list(cut);
            assert_eq!(l.len(), 1, "{:?}", String::from_utf8_lossy(cut));
            assert_eq!(l[0].opaque, b"a");
        }
    }

    #[test]
    fn if_modified_since() {
        let stored = hs(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let now = 784_111_777 + 3600;
        assert!(not_modified_since(
            b"Sun, 06 Nov 1994 08:49:37 GMT",
            &stored,
            0,
            now
        ));
        assert!(!not_modified_since(
            b"Sat, 05 Nov 1994 08:49:37 GMT",
            &stored,
            0,
            now
        ));
        assert!(!not_modified_since(b"garbage", &stored, 0, now));
        // No Last-Modified: the time it was received.
        assert!(not_modified_since(
            b"Sun, 06 Nov 1994 08:49:37 GMT",
            &hs(&[]),
            784_111_777,
            now
        ));
    }

    #[test]
    fn an_if_modified_since_in_the_future_is_ignored() {
        let stored = hs(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let ims = b"Sun, 06 Nov 1994 09:49:37 GMT"; // 784_115_377
        assert!(not_modified_since(ims, &stored, 0, 784_115_377));
        assert!(!not_modified_since(ims, &stored, 0, 784_115_376));
        let req = hs(&[("if-modified-since", "Sun, 06 Nov 1994 09:49:37 GMT")]);
        assert!(answer_304(&req, &stored, 0, 784_115_400));
        assert!(!answer_304(&req, &stored, 0, 784_111_777));
    }

    #[test]
    fn if_none_match_takes_precedence() {
        let stored = hs(&[
            ("etag", "\"x\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let req = hs(&[
            ("if-none-match", "\"y\""),
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!answer_304(&req, &stored, 0, u64::MAX));
        assert!(is_conditional(&req));
    }
}
