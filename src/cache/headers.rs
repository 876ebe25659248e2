//! Small helpers over header lists `(lowercase name, value bytes)`.

use crate::request::MAX_HEADER_VALUE;

pub type Headers = [(String, Vec<u8>)];

/// A list of header fields `(name, value)`, in order: stored and response
/// lists ([`Headers`]) and the request's own (`request::Headers`, which
/// keeps the host's buffer). The helpers below take either, and compare
/// names as bytes (no UTF-8 check per field and per look-up).
pub trait HeaderList {
    /// The fields, names as bytes.
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_;
}

impl HeaderList for Headers {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.iter().map(|(n, v)| (n.as_bytes(), v.as_slice()))
    }
}

impl HeaderList for Vec<(String, Vec<u8>)> {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.as_slice().fields()
    }
}

impl HeaderList for crate::request::Headers {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.raw_iter()
    }
}

/// All values of a header (names compared case-insensitively); values longer
/// than [`MAX_HEADER_VALUE`] are skipped, as if absent.
pub fn all<'a, H: HeaderList + ?Sized>(
    headers: &'a H,
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .fields()
        .filter(move |(n, v)| {
            n.eq_ignore_ascii_case(name.as_bytes()) && v.len() <= MAX_HEADER_VALUE
        })
        .map(|(_, v)| v)
}

/// First value of a header.
pub fn first<'a, H: HeaderList + ?Sized>(headers: &'a H, name: &'a str) -> Option<&'a [u8]> {
    all(headers, name).next()
}

/// Whether a header is present at all.
pub fn has<H: HeaderList + ?Sized>(headers: &H, name: &str) -> bool {
    headers
        .fields()
        .any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
}

/// Number of field lines of a header.
pub fn count<H: HeaderList + ?Sized>(headers: &H, name: &str) -> usize {
    headers
        .fields()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .count()
}

/// Whether `name` is an HTTP token (RFC 9110 5.6.2), the syntax of header
/// names and directive names.
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Appends our Cache-Status member after an existing value (RFC 9211: the
/// list is ordered from origin to client, so the cache nearest the client
/// comes last), keeping our member's bytes when there is no existing value.
pub fn append_cache_status_owned(existing: Option<&[u8]>, ours: Vec<u8>) -> Vec<u8> {
    match existing {
        Some(e) if !e.iter().all(u8::is_ascii_whitespace) => {
            let mut v = Vec::with_capacity(e.len() + 2 + ours.len());
            v.extend_from_slice(e);
            v.extend_from_slice(b", ");
            v.extend_from_slice(&ours);
            v
        }
        _ => ours,
    }
}

/// Appends the decimal digits of `v` (no `core::fmt`).
pub fn push_u64(out: &mut Vec<u8>, v: u64) {
    // At most 20 digits (u64::MAX), written from the end of `digits`.
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = v;
    for d in digits.iter_mut().rev() {
        i -= 1;
        *d = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(i..).unwrap_or_default());
}

/// Appends `v` in decimal, with a `-` when negative (no `core::fmt`).
pub fn push_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    push_u64(out, v.unsigned_abs());
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_case_insensitively_and_skips_huge_ones() {
        let h = vec![
            ("etag".to_string(), b"\"a\"".to_vec()),
            ("ETag".to_string(), b"\"b\"".to_vec()),
            ("x".to_string(), vec![b'a'; MAX_HEADER_VALUE + 1]),
        ];
        assert_eq!(first(&h, "etag"), Some(&b"\"a\""[..]));
        assert_eq!(all(&h, "ETAG").count(), 2);
        assert_eq!(first(&h, "x"), None);
        assert!(has(&h, "x"));
        assert_eq!(count(&h, "etag"), 2);
    }

    #[test]
    fn integers_are_written_like_display() {
        for v in [0i64, 1, 9, 10, 42, 600, -1, -5, -600, i64::MAX, i64::MIN] {
            let mut out = b"x=".to_vec();
            push_i64(&mut out, v);
            assert_eq!(out, format!("x={v}").into_bytes());
        }
        for v in [0u64, 7, 86_400, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, v);
            assert_eq!(out, v.to_string().into_bytes());
        }
    }

    #[test]
    fn tokens_and_cache_status_lists() {
        assert!(is_token("accept-encoding"));
        assert!(!is_token("bad name"));
        assert!(!is_token(""));
        assert_eq!(
            append_cache_status_owned(None, b"meshguard; hit".to_vec()),
            b"meshguard; hit"
        );
        assert_eq!(
            append_cache_status_owned(Some(b"origin-cache; hit"), b"meshguard; hit".to_vec()),
            b"origin-cache; hit, meshguard; hit"
        );
    }
}
