//! Range requests answered from stored complete responses (RFC 9110 14,
//! RFC 9111 3.3-3.4): one byte range (`bytes=a-b`, `bytes=a-`,
//! `bytes=-n`) of a stored 200 is a `206` with `Content-Range`; a range
//! past the end is a `416` with `Content-Range: bytes */length`.
//!
//! What is not done, on purpose: several ranges in one request (a
//! `multipart/byteranges` body) are answered with the whole 200, which
//! RFC 9110 14.2 allows; a `Range` that cannot be parsed, or in another
//! unit than `bytes`, is ignored (14.2: the whole 200). Partial responses
//! (206) from the origin are never stored nor combined (3.4): a `Range`
//! request that misses goes upstream as sent and its 206 passes through.

use super::etag;
use super::httpdate;

/// What a `Range` asks of a body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAsk {
    /// Send the whole response (no usable range).
    Whole,
    /// Send bytes `first..=last`.
    Part { first: u64, last: u64 },
    /// 416: no byte of the range exists.
    Unsatisfiable,
}

/// Reads a `Range` field value against a body of `len` bytes.
pub fn ask(range: &[u8], len: u64) -> RangeAsk {
    let Ok(s) = std::str::from_utf8(range) else {
        return RangeAsk::Whole;
    };
    let s = s.trim();
    let Some((unit, set)) = s.split_once('=') else {
        return RangeAsk::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = set.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let num = |x: &str| -> Option<u64> {
        (!x.is_empty() && x.bytes().all(|c| c.is_ascii_digit()))
            .then(|| x.parse::<u64>().ok())
            .flatten()
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        // bytes=-n: the last n bytes
        (true, false) => match num(b) {
            Some(0) => RangeAsk::Unsatisfiable,
            Some(_) if len == 0 => RangeAsk::Unsatisfiable,
            Some(n) => RangeAsk::Part {
                first: len.saturating_sub(n),
                last: len - 1,
            },
            None => RangeAsk::Whole,
        },
        // bytes=a-
        (false, true) => match num(a) {
            Some(first) if first < len => RangeAsk::Part {
                first,
                last: len - 1,
            },
            Some(_) => RangeAsk::Unsatisfiable,
            None => RangeAsk::Whole,
        },
        // bytes=a-b
        (false, false) => match (num(a), num(b)) {
            (Some(first), Some(last)) if first <= last => {
                if first < len {
                    RangeAsk::Part {
                        first,
                        last: last.min(len - 1),
                    }
                } else {
                    RangeAsk::Unsatisfiable
                }
            }
            _ => RangeAsk::Whole,
        },
        (true, true) => RangeAsk::Whole,
    }
}

/// `If-Range` (RFC 9110 13.1.5): the range applies only when the stored
/// response is the one the client has. An entity-tag must match the stored
/// `ETag` strongly; a date must equal the stored `Last-Modified` (and be
/// a strong validator: at least a second before the stored `Date`).
pub fn if_range_holds<'a>(
    if_range: &[u8],
    stored: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> bool {
    let (mut tag, mut modified, mut date) = (None, None, None);
    for (n, v) in stored {
        match n {
            "etag" if tag.is_none() => tag = Some(v),
            "last-modified" if modified.is_none() => modified = Some(v),
            "date" if date.is_none() => date = Some(v),
            _ => {}
        }
    }
    let v = if_range.trim_ascii();
    if v.starts_with(b"\"") || v.starts_with(b"W/") {
        return match (etag::parse(v), tag.and_then(etag::parse)) {
            (Some(a), Some(b)) => etag::strong_eq(&a, &b),
            _ => false,
        };
    }
    match (
        httpdate::parse(v),
        modified.and_then(httpdate::parse),
        date.and_then(httpdate::parse),
    ) {
        (Some(asked), Some(lm), Some(d)) => asked == lm && lm < d,
        _ => false,
    }
}

/// The `Content-Range` value of a part, or of a 416 (`bytes */len`).
pub fn content_range(ask: RangeAsk, len: u64) -> Vec<u8> {
    match ask {
        RangeAsk::Part { first, last } => format!("bytes {first}-{last}/{len}").into_bytes(),
        _ => format!("bytes */{len}").into_bytes(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges() {
        let p = |first, last| RangeAsk::Part { first, last };
        assert_eq!(ask(b"bytes=0-4", 10), p(0, 4));
        assert_eq!(ask(b"bytes=5-", 10), p(5, 9));
        assert_eq!(ask(b"bytes=-3", 10), p(7, 9));
        assert_eq!(ask(b"bytes=-30", 10), p(0, 9));
        assert_eq!(ask(b"bytes=8-100", 10), p(8, 9));
        assert_eq!(ask(b"Bytes = 1-1", 10), p(1, 1));
        assert_eq!(ask(b"bytes=10-", 10), RangeAsk::Unsatisfiable);
        assert_eq!(ask(b"bytes=10-20", 10), RangeAsk::Unsatisfiable);
        assert_eq!(ask(b"bytes=-0", 10), RangeAsk::Unsatisfiable);
        assert_eq!(ask(b"bytes=-5", 0), RangeAsk::Unsatisfiable);
        assert_eq!(ask(b"bytes=0-", 0), RangeAsk::Unsatisfiable);
        for whole in [
            &b"bytes=5-2"[..],
            b"bytes=0-1,3-4",
            b"items=0-1",
            b"bytes=a-b",
            b"bytes=-",
            b"bytes=+1-2",
            b"bytes 0-1",
            b"bytes=99999999999999999999999-",
            b"\xff",
        ] {
            assert_eq!(ask(whole, 10), RangeAsk::Whole, "{whole:?}");
        }
        assert_eq!(content_range(p(0, 4), 10), b"bytes 0-4/10");
        assert_eq!(content_range(RangeAsk::Unsatisfiable, 10), b"bytes */10");
    }

    #[test]
    fn if_range() {
        const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
        const LATER: &str = "Sun, 06 Nov 1994 09:49:37 GMT";
        let (lm, later) = (LM, LATER);
        let stored =
            |h: &'static [(&'static str, &'static str)]| h.iter().map(|(n, v)| (*n, v.as_bytes()));
        let with_tag: &[(&str, &str)] = &[("etag", "\"v1\"")];
        assert!(if_range_holds(b"\"v1\"", stored(with_tag)));
        assert!(!if_range_holds(b"\"v2\"", stored(with_tag)));
        assert!(!if_range_holds(b"W/\"v1\"", stored(with_tag)));
        let weak: &[(&str, &str)] = &[("etag", "W/\"v1\"")];
        assert!(!if_range_holds(b"\"v1\"", stored(weak)));
        let dated: &[(&str, &str)] = &[("last-modified", LM), ("date", LATER)];
        assert!(if_range_holds(lm.as_bytes(), stored(dated)));
        assert!(!if_range_holds(later.as_bytes(), stored(dated)));
        let same: &[(&str, &str)] = &[("last-modified", LM), ("date", LM)];
        assert!(!if_range_holds(lm.as_bytes(), stored(same)));
        assert!(!if_range_holds(b"junk", stored(dated)));
    }
}
