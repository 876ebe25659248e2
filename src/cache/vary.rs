//! `Vary` (RFC 9111 4.1): the secondary cache key.
//!
//! The stored entry keeps the header names its response varied on (lower
//! case, deduplicated, sorted) and a SHA-256 of the request's normalised
//! values for those names. Normalisation: each field line is trimmed and
//! runs of spaces / tabs collapse to one space; several field lines are
//! joined with `", "`; an absent header differs from an empty one.
//!
//! Values of every length are keyed exactly, whatever limit other parts of
//! meshguard put on the values they read: a value too long to read is never
//! keyed as if absent (that would let one client's response answer clients
//! that sent nothing). The hash is computed as the value streams in: no
//! copy of the value is made.

use super::headers::{self, HeaderList, Headers};
use sha2::{Digest, Sha256};

/// Most header names a stored response may vary on.
pub const MAX_VARY_NAMES: usize = 16;

/// Why a response's `Vary` prevents storing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaryError {
    /// `Vary: *`: no request can ever match.
    Star,
    /// Varies on a header outside `vary_allowlist` (named).
    NotAllowed(String),
    /// More than [`MAX_VARY_NAMES`] names.
    TooMany,
}

/// The header names a response varies on, checked against the allowlist.
pub fn vary_names(response: &Headers, allowlist: &[String]) -> Result<Vec<String>, VaryError> {
    let mut names: Vec<String> = Vec::new();
    for line in headers::all(response, "vary") {
        for n in String::from_utf8_lossy(line).split(',') {
            let n = n.trim().to_ascii_lowercase();
            if n.is_empty() {
                continue;
            }
            if n == "*" {
                return Err(VaryError::Star);
            }
            if !allowlist.contains(&n) {
                return Err(VaryError::NotAllowed(n));
            }
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    if headers::all(response, "vary").count() != headers::count(response, "vary") {
        // A Vary line too long to read: refuse rather than guess.
        return Err(VaryError::TooMany);
    }
    if names.len() > MAX_VARY_NAMES {
        return Err(VaryError::TooMany);
    }
    names.sort();
    Ok(names)
}

/// Normalised value of one request header (`None` when absent).
pub fn normalise<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    emit_normalised(values, |part| out.extend_from_slice(part)).then_some(out)
}

/// Hands the normalised value of the field lines `values` to `emit`, in
/// parts; false when there are no lines (the header is absent). The parts
/// joined are [`normalise`]'s value: the lines' runs of non-blank bytes,
/// one space between runs of a line, `", "` before a line's first run when
/// something came before, and a lone `","` for a blank line that follows.
fn emit_normalised<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    mut emit: impl FnMut(&[u8]),
) -> bool {
    let mut present = false;
    let mut any_out = false;
    for line in values {
        present = true;
        let mut first = true;
        for run in line
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|r| !r.is_empty())
        {
            if !first {
                emit(b" ");
            } else if any_out {
                emit(b", ");
            }
            emit(run);
            first = false;
            any_out = true;
        }
        if first && any_out {
            emit(b",");
        }
    }
    present
}

/// Every field line of `name` in the request, however long (names
/// compared case-insensitively).
fn lines<'a, H: HeaderList + ?Sized>(
    request: &'a H,
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    request
        .fields()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v)
}

/// The secondary key of a request for the given vary names.
pub fn secondary_key(names: &[String], request: &(impl HeaderList + ?Sized)) -> [u8; 32] {
    secondary_key_of(names.iter().map(String::as_str), request)
}

/// SHA-256 of nothing: the secondary key when there are no vary names.
pub const NO_VARY: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// [`secondary_key`] over names given one by one; with no names it is the
/// constant [`NO_VARY`] (no hashing).
pub fn secondary_key_of<'a>(
    names: impl IntoIterator<Item = &'a str>,
    request: &(impl HeaderList + ?Sized),
) -> [u8; 32] {
    let mut names = names.into_iter().peekable();
    if names.peek().is_none() {
        return NO_VARY;
    }
    let mut h = Sha256::new();
    for n in names {
        h.update((n.len() as u32).to_le_bytes());
        h.update(n.as_bytes());
        // Two passes over the lines, no copy: the length, then the bytes.
        let mut len = 0usize;
        if emit_normalised(lines(request, n), |part| len += part.len()) {
            h.update([1u8]);
            h.update((len as u32).to_le_bytes());
            emit_normalised(lines(request, n), |part| h.update(part));
        } else {
            h.update([0u8]);
        }
    }
    h.finalize().into()
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
    fn allow() -> Vec<String> {
        vec![
            "accept".into(),
            "accept-encoding".into(),
            "accept-language".into(),
        ]
    }

    #[test]
    fn names_lowercased_deduplicated_sorted() {
        let r = hs(&[("vary", "Accept-Encoding, accept"), ("vary", "ACCEPT")]);
        assert_eq!(
            vary_names(&r, &allow()),
            Ok(vec!["accept".into(), "accept-encoding".into()])
        );
        assert_eq!(vary_names(&hs(&[]), &allow()), Ok(vec![]));
    }

    #[test]
    fn star_and_unlisted_names_refuse() {
        assert_eq!(
            vary_names(&hs(&[("vary", "accept, *")]), &allow()),
            Err(VaryError::Star)
        );
        assert_eq!(
            vary_names(&hs(&[("vary", "Cookie")]), &allow()),
            Err(VaryError::NotAllowed("cookie".into()))
        );
    }

    #[test]
    fn normalisation_collapses_whitespace_and_joins_lines() {
        let a = hs(&[("accept-encoding", "  gzip,   br ")]);
        let b = hs(&[("accept-encoding", "gzip, br")]);
        let c = hs(&[("accept-encoding", "gzip,"), ("accept-encoding", " br")]);
        let names = vec!["accept-encoding".to_string()];
        assert_eq!(secondary_key(&names, &a), secondary_key(&names, &b));
        assert_eq!(
            normalise(headers::all(&c, "accept-encoding")).as_deref(),
            Some(&b"gzip,, br"[..])
        );
        assert_ne!(
            secondary_key(&names, &b),
            secondary_key(&names, &hs(&[("accept-encoding", "br")]))
        );
    }

    #[test]
    fn no_names_is_the_hash_of_nothing() {
        assert_eq!(NO_VARY, <[u8; 32]>::from(Sha256::digest(b"")));
        assert_eq!(secondary_key(&[], &hs(&[("accept", "x")])), NO_VARY);
        let names = ["accept".to_string(), "accept-encoding".to_string()];
        let req = hs(&[("accept-encoding", "gzip"), ("accept", "*/*")]);
        assert_eq!(
            secondary_key(&names, &req),
            secondary_key_of(["accept", "accept-encoding"], &req)
        );
        assert_ne!(secondary_key(&names, &req), NO_VARY);
    }

    #[test]
    fn streamed_normalisation_is_the_joined_value() {
        let cases: &[&[&str]] = &[
            &[],
            &[""],
            &["", "a"],
            &["a", ""],
            &["a", "  ", "\t"],
            &["  gzip,\t\t br  "],
            &["gzip,", " br"],
            &[" a  b ", "c", "", " d "],
        ];
        // The byte-wise definition the streamed form replaced.
        let reference = |lines: &[&str]| -> Option<Vec<u8>> {
            let mut out: Option<Vec<u8>> = None;
            for v in lines {
                let buf = out.get_or_insert_with(Vec::new);
                if !buf.is_empty() {
                    buf.extend_from_slice(b", ");
                }
                let mut last_space = true;
                for &b in v.as_bytes() {
                    if b == b' ' || b == b'\t' {
                        if !last_space {
                            buf.push(b' ');
                        }
                        last_space = true;
                    } else {
                        buf.push(b);
                        last_space = false;
                    }
                }
                if buf.last() == Some(&b' ') {
                    buf.pop();
                }
            }
            out
        };
        for lines in cases {
            let got = normalise(lines.iter().map(|l| l.as_bytes()));
            assert_eq!(got, reference(lines), "{lines:?}");
        }
    }

    #[test]
    fn values_of_any_length_are_keyed_exactly() {
        let names = vec!["accept-encoding".to_string()];
        let huge = format!("gzip, {}", "x".repeat(17_000));
        assert!(huge.len() > crate::request::MAX_HEADER_VALUE);
        let with = hs(&[("accept-encoding", &huge)]);
        let key = secondary_key(&names, &with);
        assert_ne!(key, secondary_key(&names, &hs(&[])));
        assert_ne!(
            key,
            secondary_key(&names, &hs(&[("accept-encoding", "gzip")]))
        );
        assert_eq!(key, secondary_key(&names, &with));
        let mut by_hand = Sha256::new();
        let v = normalise(std::iter::once(huge.as_bytes())).unwrap();
        by_hand.update(15u32.to_le_bytes());
        by_hand.update(b"accept-encoding");
        by_hand.update([1u8]);
        by_hand.update((v.len() as u32).to_le_bytes());
        by_hand.update(&v);
        assert_eq!(key, <[u8; 32]>::from(by_hand.finalize()));
    }

    #[test]
    fn absent_differs_from_empty() {
        let names = vec!["accept".to_string()];
        assert_ne!(
            secondary_key(&names, &hs(&[])),
            secondary_key(&names, &hs(&[("accept", "")]))
        );
        // No vary names: every request matches.
        assert_eq!(
            secondary_key(&[], &hs(&[("accept", "x")])),
            secondary_key(&[], &hs(&[]))
        );
    }
}
