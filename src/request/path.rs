//! The path routes match and `path` key parts read: RFC 3986 normalised
//! (see docs/operations.md, "Threat model").
//!
//! An origin commonly treats `//admin/users`, `/%61dmin/users`,
//! `/x/../admin/users` and `/./admin/users` as `/admin/users`. Had meshguard
//! matched the raw `:path`, each spelling would skip a route's policy or
//! get a rate-limit bucket of its own. So, before any route is tried:
//!
//! 1. percent-encodings of unreserved characters (`A-Z a-z 0-9 - . _ ~`)
//!    are decoded; every other one is kept, its hex digits upper-cased
//!    (`%3a` and `%3A` are one spelling);
//! 2. a backslash is a `/` (as Envoy's `normalize_path` and several origins
//!    read it);
//! 3. runs of `/` are merged into one;
//! 4. dot segments are removed (RFC 3986 5.2.4), never above the root.
//!
//! What cannot be normalised without guessing is refused (400
//! `invalid_path`), never matched in one of its spellings:
//! - an encoded separator (`%2F`, `%5C`): decoding it would change the
//!   segments, keeping it lets an origin that decodes it see another path.
//!   With `"escaped_slashes": "keep"` it is kept (upper-cased) instead and
//!   the path stays distinct from its decoded form;
//! - a malformed percent-encoding (`%`, `%4`, `%zz`);
//! - a path whose meaning depends on the order of steps 3 and 4 (an empty
//!   segment before `..`, as in `/a//../b`: `/b` or `/a/b` depending on
//!   the origin).
//!
//! The query string is not part of it. A path that needs none of this
//! (the usual case) is not copied.

use crate::config::raw::RawPathNormalization;
use crate::config::{show_str, ConfigError};
use std::borrow::Cow;

/// The top-level `path_normalization` section: `None` when it is turned
/// off (`"enabled": false`), else what to do with escaped slashes.
pub fn compile(raw: Option<&RawPathNormalization>) -> Result<Option<EscapedSlashes>, ConfigError> {
    let Some(pn) = raw else {
        return Ok(Some(EscapedSlashes::Reject));
    };
    let slashes = match pn.escaped_slashes.as_deref() {
        None | Some("reject") => EscapedSlashes::Reject,
        Some("keep") => EscapedSlashes::Keep,
        Some(other) => {
            return Err(ConfigError::expected(
                "path_normalization.escaped_slashes",
                "\"reject\" or \"keep\"",
                show_str(other),
            ))
        }
    };
    Ok((pn.enabled != Some(false)).then_some(slashes))
}

/// What to do with `%2F` / `%5C` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Refuse the request (400).
    #[default]
    Reject,
    /// Keep the encoding (upper-cased): the path stays distinct.
    Keep,
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    EscapedSlash,
    BadEncoding,
    Ambiguous,
}

impl PathError {
    /// The short, fixed reason sent to the client.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::EscapedSlash => "the path contains an encoded \"/\" or \"\\\"",
            PathError::BadEncoding => "the path contains a malformed percent-encoding",
            PathError::Ambiguous => "the path has an empty segment before \"..\"",
        }
    }
}

/// Whether `path` (no query) may need any normalisation at all: a `%`, a
/// `\`, `//`, or a segment starting with `.`.
fn needs_work(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in path {
        if b == b'%' || b == b'\\' || (prev == b'/' && (b == b'/' || b == b'.')) {
            return true;
        }
        prev = b;
    }
    // A relative path ("." or "..", or one starting with them) too.
    path.first() == Some(&b'.')
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Normalises `path` (without its query); see the module docs.
pub fn normalize(path: &str, slashes: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if !needs_work(b) {
        return Ok(Cow::Borrowed(path));
    }
    // Steps 1 and 2.
    let mut dec: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEncoding);
                };
                let v = h * 16 + l;
                if is_unreserved(v) {
                    dec.push(v);
                } else if v == b'/' || v == b'\\' {
                    match slashes {
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                        EscapedSlashes::Keep => {
                            dec.extend_from_slice(if v == b'/' { b"%2F" } else { b"%5C" })
                        }
                    }
                } else {
                    // An upper-case hex digit of a nibble (never the fallback).
                    let hex_digit = |n: u8| {
                        char::from_digit(u32::from(n), 16)
                            .map_or(b'0', |d| d.to_ascii_uppercase() as u8)
                    };
                    dec.push(b'%');
                    dec.push(hex_digit(v >> 4));
                    dec.push(hex_digit(v & 15));
                }
                i += 3;
            }
            b'\\' => {
                dec.push(b'/');
                i += 1;
            }
            c => {
                dec.push(c);
                i += 1;
            }
        }
    }
    // Steps 3 and 4, in both orders: an origin may do either.
    let merged_first = remove_dot_segments(&merge_slashes(&dec));
    let dots_first = merge_slashes(&remove_dot_segments(&dec));
    if merged_first != dots_first {
        return Err(PathError::Ambiguous);
    }
    if merged_first == b {
        return Ok(Cow::Borrowed(path));
    }
    // Only ASCII was decoded and only ASCII removed: still UTF-8 when the
    // input was; lossy otherwise (cannot happen for a `&str`).
    Ok(Cow::Owned(match String::from_utf8(merged_first) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }))
}

fn merge_slashes(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    for &c in p {
        if !(c == b'/' && out.last() == Some(&b'/')) {
            out.push(c);
        }
    }
    out
}

/// RFC 3986 5.2.4 over segments: `.` dropped, `..` drops the segment
/// before it (never above the root); a path ending in a dot segment keeps
/// its trailing `/`.
fn remove_dot_segments(p: &[u8]) -> Vec<u8> {
    let absolute = p.first() == Some(&b'/');
    let body = if absolute {
        p.get(1..).unwrap_or_default()
    } else {
        p
    };
    let mut segs: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in body.split(|&c| c == b'/') {
        trailing_slash = false;
        match seg {
            b"." => trailing_slash = true,
            b".." => {
                segs.pop();
                trailing_slash = true;
            }
            s => segs.push(s),
        }
    }
    let mut out = Vec::with_capacity(p.len());
    if absolute {
        out.push(b'/');
    }
    for (i, s) in segs.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(s);
    }
    if trailing_slash && !segs.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p, EscapedSlashes::Reject).map(Cow::into_owned)
    }

    #[test]
    fn ordinary_paths_are_not_copied() {
        for p in ["/", "/api/orders", "/a.b/c-d_e~f", "/x/.well-known", "*"] {
            let got = normalize(p, EscapedSlashes::Reject).unwrap();
            assert!(matches!(got, Cow::Borrowed(_)), "{p}");
            assert_eq!(got, p);
        }
    }

    #[test]
    fn equivalent_spellings_normalise_to_one() {
        for p in [
            "/admin/users",
            "//admin/users",
            "/admin//users",
            "/%61dmin/users",
            "/%61%64%6D%69%6E/users",
            "/x/../admin/users",
            "/./admin/users",
            "/admin/./users",
            "/admin/users/x/..",
            "/../admin/users",
            "/../../admin/users",
            "/%2e%2e/admin/users",
            "/%2E/admin/users",
            "/x/%2e%2e/admin/users",
            "\\admin\\users",
            "/admin\\users",
            "/x\\..\\admin/users",
        ] {
            let want = if p.ends_with("..") {
                "/admin/users/"
            } else {
                "/admin/users"
            };
            assert_eq!(n(p).as_deref(), Ok(want), "{p}");
        }
    }

    #[test]
    fn reserved_encodings_are_kept_in_one_case() {
        assert_eq!(n("/a%3ab").as_deref(), Ok("/a%3Ab"));
        assert_eq!(n("/a%3Ab").as_deref(), Ok("/a%3Ab"));
        assert_eq!(n("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(n("/100%25").as_deref(), Ok("/100%25"));
        // An encoded "%" never decodes into an encoding.
        assert_eq!(n("/%2561dmin").as_deref(), Ok("/%2561dmin"));
    }

    #[test]
    fn dot_segments_at_the_end_keep_a_trailing_slash() {
        assert_eq!(n("/a/b/.").as_deref(), Ok("/a/b/"));
        assert_eq!(n("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(n("/..").as_deref(), Ok("/"));
        assert_eq!(n("/.").as_deref(), Ok("/"));
        assert_eq!(n("/a/.b").as_deref(), Ok("/a/.b"));
        assert_eq!(n("/a/..b/c").as_deref(), Ok("/a/..b/c"));
    }

    #[test]
    fn encoded_separators_are_refused_or_kept_distinct() {
        for p in ["/admin%2Fusers", "/admin%2fusers", "/a%5Cb", "/a%5cb"] {
            assert_eq!(n(p), Err(PathError::EscapedSlash), "{p}");
        }
        let keep = |p| normalize(p, EscapedSlashes::Keep).map(Cow::into_owned);
        assert_eq!(keep("/admin%2fusers").as_deref(), Ok("/admin%2Fusers"));
        assert_eq!(keep("/a%5cb").as_deref(), Ok("/a%5Cb"));
        // Kept encoded: never a separator for the dot-segment step.
        assert_eq!(keep("/a/..%2F..%2Fb").as_deref(), Ok("/a/..%2F..%2Fb"));
    }

    #[test]
    fn malformed_encodings_and_ambiguous_paths_are_refused() {
        for p in ["/a%", "/a%4", "/a%zz", "/a%g0/b", "/%%41"] {
            assert_eq!(n(p), Err(PathError::BadEncoding), "{p}");
        }
        for p in ["/a//../b", "/a/b//..", "/a/%2e//../b"] {
            assert_eq!(n(p), Err(PathError::Ambiguous), "{p}");
        }
        // Not ambiguous: an empty segment not followed by "..".
        assert_eq!(n("/a//b/../c").as_deref(), Ok("/a/c"));
    }

    #[test]
    fn multibyte_text_survives() {
        assert_eq!(n("/é//x").as_deref(), Ok("/é/x"));
    }
}
