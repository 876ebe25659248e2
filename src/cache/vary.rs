//! `Vary` (RFC 9111 4.1): the secondary cache key.
//!
//! The stored entry keeps the header names its response varied on (lower
//! case, deduplicated, sorted) and a SHA-256 of the request's normalised
//! values for those names. Normalisation: each field line is trimmed and
//! runs of spaces / tabs collapse to one space; several field lines are
//! joined with `", "`; an absent header differs from an empty one. The
//! content-negotiation headers (`Accept`, `Accept-Charset`,
//! `Accept-Encoding`, `Accept-Language`) are compared as sets of members
//! ([`negotiation`]): whitespace anywhere, order, repeats and (but for
//! `Accept`) case do not make another variant.
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
    small_sort(&mut names);
    Ok(names)
}

/// Sorts a short list (at most a few dozen items) in place: an insertion
/// sort, ~100 bytes of wasm where `slice::sort` brings ~5 KB of driftsort
/// per element type.
fn small_sort<T: Ord>(v: &mut [T]) {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && v.get(j - 1) > v.get(j) {
            v.swap(j - 1, j);
            j -= 1;
        }
    }
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

/// Most list members of a content-negotiation header normalised as a set;
/// a value with more is keyed as written (whitespace collapsed only).
pub const MAX_NEGOTIATION_MEMBERS: usize = 64;

/// How a content-negotiation header's members are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Members {
    /// Case-insensitive tokens (`Accept-Language`, `Accept-Encoding`,
    /// `Accept-Charset`): lower-cased.
    CaseInsensitive,
    /// `Accept`: case kept (a media type parameter value may be
    /// case-sensitive).
    CaseKept,
}

/// The content-negotiation headers whose value is a set of members:
/// `Accept-Language: en-US, fr;q=0.5` and `accept-language: fr; q=0.5,en-us`
/// name the same preferences (the weights, not the order, rank them).
pub fn negotiation(name: &str) -> Option<Members> {
    match name {
        "accept-language" | "accept-encoding" | "accept-charset" => Some(Members::CaseInsensitive),
        "accept" => Some(Members::CaseKept),
        _ => None,
    }
}

impl Members {
    /// The normalised value of the field lines (`None`: absent): every
    /// member without whitespace (around `;` and `=` too), lower-cased for
    /// [`Members::CaseInsensitive`], empty members dropped, duplicates
    /// dropped, sorted, joined with `,`. Past
    /// [`MAX_NEGOTIATION_MEMBERS`] members: [`normalise`]'s value, marked
    /// so that it never equals a set.
    pub fn key<'a, I: Iterator<Item = &'a [u8]>>(self, values: impl Fn() -> I) -> Option<Vec<u8>> {
        let mut members: Vec<Vec<u8>> = Vec::new();
        let mut present = false;
        for line in values() {
            present = true;
            for m in line.split(|&b| b == b',') {
                let mut out: Vec<u8> = m
                    .iter()
                    .filter(|&&b| b != b' ' && b != b'\t')
                    .copied()
                    .collect();
                if out.is_empty() {
                    continue;
                }
                if self == Members::CaseInsensitive {
                    out.make_ascii_lowercase();
                }
                if members.len() == MAX_NEGOTIATION_MEMBERS {
                    let mut exact = b"\0".to_vec();
                    exact.extend(normalise(values())?);
                    return Some(exact);
                }
                members.push(out);
            }
        }
        if !present {
            return None;
        }
        small_sort(&mut members);
        members.dedup();
        let mut out = Vec::with_capacity(members.iter().map(|m| m.len() + 1).sum());
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(m);
        }
        Some(out)
    }
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
        if let Some(members) = negotiation(n) {
            match members.key(|| lines(request, n)) {
                Some(v) => {
                    h.update([1u8]);
                    h.update((v.len() as u32).to_le_bytes());
                    h.update(&v);
                }
                None => h.update([0u8]),
            }
            continue;
        }
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
        let names = vec!["x-variant".to_string()];
        let huge = format!("gzip, {}", "x".repeat(17_000));
        assert!(huge.len() > crate::request::MAX_HEADER_VALUE);
        let with = hs(&[("x-variant", &huge)]);
        let key = secondary_key(&names, &with);
        assert_ne!(key, secondary_key(&names, &hs(&[])));
        assert_ne!(key, secondary_key(&names, &hs(&[("x-variant", "gzip")])));
        assert_eq!(key, secondary_key(&names, &with));
        let mut by_hand = Sha256::new();
        let v = normalise(std::iter::once(huge.as_bytes())).unwrap();
        by_hand.update(9u32.to_le_bytes());
        by_hand.update(b"x-variant");
        by_hand.update([1u8]);
        by_hand.update((v.len() as u32).to_le_bytes());
        by_hand.update(&v);
        assert_eq!(key, <[u8; 32]>::from(by_hand.finalize()));
        // a negotiation header too: every byte of a long member counts
        let ae = vec!["accept-encoding".to_string()];
        let long = hs(&[("accept-encoding", &huge)]);
        let other = format!("gzip, {}y", "x".repeat(16_999));
        assert_ne!(
            secondary_key(&ae, &long),
            secondary_key(&ae, &hs(&[("accept-encoding", &other)]))
        );
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

    #[test]
    fn negotiation_headers_are_compared_as_sets() {
        let key = |name: &str, v: &[&str]| {
            let h: Vec<(String, Vec<u8>)> = v
                .iter()
                .map(|v| (name.to_string(), v.as_bytes().to_vec()))
                .collect();
            secondary_key(&[name.to_string()], &h)
        };
        let al = "accept-language";
        let base = key(al, &["en-US, fr;q=0.5"]);
        assert_eq!(base, key(al, &["fr; q=0.5,EN-us"]));
        assert_eq!(base, key(al, &["fr;q=0.5", "en-US"]));
        assert_eq!(base, key(al, &["en-US,, fr;q=0.5, en-us"]));
        assert_ne!(base, key(al, &["en-US, fr;q=0.6"]));
        assert_ne!(base, key(al, &["en-US"]));
        assert_ne!(key(al, &[""]), secondary_key(&[al.to_string()], &hs(&[])));
        assert_eq!(
            key("accept-encoding", &["gzip, br"]),
            key("accept-encoding", &["BR,gzip"])
        );
        // Accept keeps case (parameter values may be case-sensitive).
        assert_ne!(
            key("accept", &["text/html;level=A"]),
            key("accept", &["text/html;level=a"])
        );
        assert_eq!(
            key("accept", &["text/html, application/json"]),
            key("accept", &["application/json,text/html"])
        );
        // a value with too many members is keyed as written
        let many: Vec<String> = (0..70).map(|i| format!("l{i}")).collect();
        let mut rev = many.clone();
        rev.reverse();
        assert_ne!(key(al, &[&many.join(",")]), key(al, &[&rev.join(",")]));
        // other headers are keyed as written
        assert_ne!(key("x-tenant", &["a, b"]), key("x-tenant", &["b, a"]));
    }
}
