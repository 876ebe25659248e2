//! `Cache-Control` parsing (RFC 9111 section 5.2), for requests and responses.
//!
//! Grammar: a comma-separated list of `name` or `name=value`, where value is
//! a token or a quoted-string (both forms accepted for every directive, as
//! 5.2 requires). Names are case-insensitive. All field lines are joined.
//!
//! Robustness rules (documented choices):
//! - Duplicates of a directive with a value: the FIRST occurrence wins
//!   (RFC 9111 4.2.1 allows "first occurrence" or "stale"); flags such as
//!   `no-store` are true if they appear anywhere (the most restrictive
//!   reading); field-name lists of `no-cache` / `private` are unioned.
//! - A response `max-age` / `s-maxage` whose value is not delta-seconds
//!   (e.g. `max-age=abc`, `max-age=-1`, missing) is recorded as
//!   [`Seconds::Invalid`] and makes the response stale (RFC 9111 4.2.1).
//! - A bad value on a request directive ignores that directive, except
//!   `max-stale` whose value is optional: `max-stale=abc` is ignored too.
//! - Delta-seconds larger than 2^31 saturate to 2^31 (RFC 9111 1.2.2).
//! - Unknown directives are ignored. At most [`MAX_DIRECTIVES`] are read.
//! - A `Cache-Control` that cannot be read completely fails closed: more
//!   than [`MAX_DIRECTIVES`] directives, a quoted string without its
//!   closing quote, or a field line longer than
//!   [`MAX_HEADER_VALUE`](crate::request::MAX_HEADER_VALUE) (never read).
//!   On a response it sets [`ResponseDirectives::unparsed`] and the
//!   response is not stored; on a request it counts as `no-store`.
//! - `Pragma: no-cache` counts as request `no-cache` only when the request
//!   has no `Cache-Control` at all (RFC 9111 5.4); it is ignored on responses.

use super::headers::{self, HeaderList, Headers};

/// Directives read from one message; the rest are ignored.
pub const MAX_DIRECTIVES: usize = 64;
/// RFC 9111 1.2.2: the largest delta-seconds a cache must handle.
pub const DELTA_MAX: u64 = 2_147_483_648;

/// A delta-seconds value that was present: valid, or not a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seconds {
    Value(u64),
    Invalid,
}

/// Response `Cache-Control`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    pub max_age: Option<Seconds>,
    pub s_maxage: Option<Seconds>,
    pub no_cache: bool,
    /// `no-cache="field, ..."` (lowercased); treated like plain no-cache.
    pub no_cache_fields: Vec<String>,
    pub no_store: bool,
    pub private: bool,
    /// `private="field, ..."` (lowercased); treated like plain private.
    pub private_fields: Vec<String>,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub no_transform: bool,
    pub immutable: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// The field could not be read completely (see the module docs): the
    /// response is not stored, whatever the directives read say.
    pub unparsed: bool,
}

/// Request `Cache-Control` (plus `Pragma: no-cache`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    pub max_age: Option<u64>,
    /// `Some(None)`: `max-stale` without a value (any staleness).
    pub max_stale: Option<Option<u64>>,
    pub min_fresh: Option<u64>,
    pub no_cache: bool,
    pub no_store: bool,
    pub only_if_cached: bool,
    pub stale_if_error: Option<u64>,
}

/// One parsed directive: lowercased name, unquoted value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub value: Option<String>,
}

/// Splits the `Cache-Control` field lines into directives.
pub fn parse_list<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Vec<Directive> {
    parse_list_checked(lines).0
}

/// [`parse_list`], and whether the lines were read completely: false when
/// a directive past the [`MAX_DIRECTIVES`] kept was left unread, or a
/// quoted string has no closing quote.
pub fn parse_list_checked<'a>(lines: impl Iterator<Item = &'a [u8]>) -> (Vec<Directive>, bool) {
    let mut out = Vec::new();
    let mut complete = true;
    for line in lines {
        let mut i = 0;
        let b = line;
        // The byte at `i`, `None` past the end.
        let at = |i: usize| b.get(i).copied();
        while i < b.len() {
            if out.len() == MAX_DIRECTIVES {
                // Anything but separators left is a directive not read.
                let rest = b.get(i..).unwrap_or_default();
                if rest.iter().any(|&c| !matches!(c, b',' | b' ' | b'\t')) {
                    complete = false;
                }
                break;
            }
            // skip separators and whitespace
            while matches!(at(i), Some(b',' | b' ' | b'\t')) {
                i += 1;
            }
            let start = i;
            while at(i).is_some_and(|c| c != b',' && c != b'=') {
                i += 1;
            }
            let name = String::from_utf8_lossy(b.get(start..i).unwrap_or_default())
                .trim()
                .to_ascii_lowercase();
            let mut value = None;
            if at(i) == Some(b'=') {
                i += 1;
                while matches!(at(i), Some(b' ' | b'\t')) {
                    i += 1;
                }
                if at(i) == Some(b'"') {
                    i += 1;
                    let mut v = Vec::new();
                    while let Some(c) = at(i).filter(|&c| c != b'"') {
                        // A backslash quotes the next byte (if any).
                        let c = match (c, at(i + 1)) {
                            (b'\\', Some(next)) => {
                                i += 1;
                                next
                            }
                            _ => c,
                        };
                        v.push(c);
                        i += 1;
                    }
                    if i >= b.len() {
                        complete = false; // no closing quote
                    }
                    i += 1; // closing quote (or end)
                    while at(i).is_some_and(|c| c != b',') {
                        i += 1; // junk after the quoted string is ignored
                    }
                    value = Some(String::from_utf8_lossy(&v).into_owned());
                } else {
                    let vs = i;
                    while at(i).is_some_and(|c| c != b',') {
                        i += 1;
                    }
                    let raw = b.get(vs..i).unwrap_or_default();
                    value = Some(String::from_utf8_lossy(raw).trim().to_string());
                }
            }
            if !name.is_empty() {
                out.push(Directive { name, value });
            }
        }
    }
    (out, complete)
}

/// Parses delta-seconds: digits only, saturating at [`DELTA_MAX`].
pub fn delta_seconds(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n: u64 = 0;
    for b in v.bytes() {
        n = n.saturating_mul(10).saturating_add((b - b'0') as u64);
        if n > DELTA_MAX {
            return Some(DELTA_MAX);
        }
    }
    Some(n)
}

fn field_list(v: &Option<String>, into: &mut Vec<String>) {
    if let Some(v) = v {
        for f in v.split(',') {
            let f = f.trim().to_ascii_lowercase();
            if !f.is_empty() && !into.contains(&f) && into.len() < MAX_DIRECTIVES {
                into.push(f);
            }
        }
    }
}

fn seconds(v: &Option<String>) -> Seconds {
    match v.as_deref().and_then(delta_seconds) {
        Some(n) => Seconds::Value(n),
        None => Seconds::Invalid,
    }
}

impl ResponseDirectives {
    pub fn parse(headers: &Headers) -> ResponseDirectives {
        let mut d = ResponseDirectives::default();
        let (list, complete) = read_all(headers);
        d.unparsed = !complete;
        for Directive { name, value } in list {
            match name.as_str() {
                "max-age" if d.max_age.is_none() => d.max_age = Some(seconds(&value)),
                "s-maxage" if d.s_maxage.is_none() => d.s_maxage = Some(seconds(&value)),
                "no-cache" => {
                    d.no_cache = true;
                    field_list(&value, &mut d.no_cache_fields);
                }
                "no-store" => d.no_store = true,
                "private" => {
                    d.private = true;
                    field_list(&value, &mut d.private_fields);
                }
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "must-understand" => d.must_understand = true,
                "no-transform" => d.no_transform = true,
                "immutable" => d.immutable = true,
                "stale-while-revalidate" if d.stale_while_revalidate.is_none() => {
                    d.stale_while_revalidate = value.as_deref().and_then(delta_seconds)
                }
                "stale-if-error" if d.stale_if_error.is_none() => {
                    d.stale_if_error = value.as_deref().and_then(delta_seconds)
                }
                _ => {}
            }
        }
        d
    }

    /// Explicit freshness: s-maxage or max-age present (valid or not).
    pub fn has_explicit_max_age(&self) -> bool {
        self.max_age.is_some() || self.s_maxage.is_some()
    }

    /// A shared cache may never serve this response stale (must-revalidate,
    /// proxy-revalidate, or s-maxage which implies proxy-revalidate).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

/// The directives of every `Cache-Control` line, and whether all of them
/// were read (no line too long to read, [`parse_list_checked`]).
/// One pass over the fields (a request's are read on every lookup).
fn read_all<H: HeaderList + ?Sized>(headers: &H) -> (Vec<Directive>, bool) {
    let unread = std::cell::Cell::new(false);
    let lines = headers
        .fields()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"cache-control"))
        .filter_map(|(_, v)| {
            if v.len() > crate::request::MAX_HEADER_VALUE {
                unread.set(true);
                return None;
            }
            Some(v)
        });
    let (list, complete) = parse_list_checked(lines);
    (list, complete && !unread.get())
}

impl RequestDirectives {
    pub fn parse(headers: &(impl HeaderList + ?Sized)) -> RequestDirectives {
        let mut d = RequestDirectives::default();
        if !headers::has(headers, "cache-control") {
            // RFC 9111 5.4: Pragma only when Cache-Control is absent.
            d.no_cache = headers::all(headers, "pragma").any(|v| {
                parse_list(std::iter::once(v))
                    .iter()
                    .any(|x| x.name == "no-cache")
            });
            return d;
        }
        let (list, complete) = read_all(headers);
        // What cannot be read may have said no-store: never store for it.
        d.no_store = !complete;
        for Directive { name, value } in list {
            let n = value.as_deref().and_then(delta_seconds);
            match name.as_str() {
                "max-age" if d.max_age.is_none() => d.max_age = n,
                "max-stale" if d.max_stale.is_none() => {
                    d.max_stale = match (&value, n) {
                        (None, _) => Some(None),
                        (Some(_), Some(n)) => Some(Some(n)),
                        (Some(_), None) => None,
                    }
                }
                "min-fresh" if d.min_fresh.is_none() => d.min_fresh = n,
                "no-cache" => d.no_cache = true,
                "no-store" => d.no_store = true,
                "only-if-cached" => d.only_if_cached = true,
                "stale-if-error" if d.stale_if_error.is_none() => d.stale_if_error = n,
                _ => {}
            }
        }
        d
    }
}

/// RFC 9213: the first of `targets` (lower-case field names) the response
/// carries with a value that can be read completely and names at least
/// one directive; `None` when none does (then `Cache-Control` rules). A
/// targeted field that cannot be read is ignored, as if absent (9213 2.1).
pub fn targeted_field<'a>(response: &Headers, targets: &'a [String]) -> Option<&'a str> {
    targets
        .iter()
        .find(|t| {
            let mut lines = headers::all(response, t).peekable();
            if lines.peek().is_none() || headers::count(response, t) > MAX_DIRECTIVES {
                return false;
            }
            let (list, complete) = parse_list_checked(lines);
            complete
                && !list.is_empty()
                && headers::all(response, t).count() == headers::count(response, t)
        })
        .map(String::as_str)
}

/// The response as a cache obeying the targeted field `field` reads it:
/// that field's lines in place of `Cache-Control`, and no `Expires` (the
/// targeted field replaces both). Only for the cache's decisions: what is
/// stored and sent are the origin's fields, untouched.
pub fn controlled_by(response: &Headers, field: &str) -> Vec<(String, Vec<u8>)> {
    response
        .iter()
        .filter(|(n, _)| {
            !n.eq_ignore_ascii_case("cache-control") && !n.eq_ignore_ascii_case("expires")
        })
        .map(|(n, v)| {
            if n.eq_ignore_ascii_case(field) {
                ("cache-control".to_string(), v.clone())
            } else {
                (n.clone(), v.clone())
            }
        })
        .collect()
}

/// [`controlled_by`] the first [`targeted_field`] present, if any.
pub fn as_targeted(response: &Headers, targets: &[String]) -> Option<Vec<(String, Vec<u8>)>> {
    targeted_field(response, targets).map(|f| controlled_by(response, f))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn h(lines: &[&str]) -> Vec<(String, Vec<u8>)> {
        lines
            .iter()
            .map(|l| ("cache-control".to_string(), l.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn names_are_case_insensitive_and_values_may_be_quoted() {
        let d = ResponseDirectives::parse(&h(&["Max-Age=\"60\", PUBLIC, S-MaxAge=30"]));
        assert_eq!(d.max_age, Some(Seconds::Value(60)));
        assert_eq!(d.s_maxage, Some(Seconds::Value(30)));
        assert!(d.public);
    }

    #[test]
    fn quoted_field_lists_keep_commas_inside_quotes() {
        let d = ResponseDirectives::parse(&h(&[
            "no-cache=\"Set-Cookie, X-Foo\", private=\"x-bar\", max-age=5",
        ]));
        assert!(d.no_cache && d.private);
        assert_eq!(d.no_cache_fields, vec!["set-cookie", "x-foo"]);
        assert_eq!(d.private_fields, vec!["x-bar"]);
        assert_eq!(d.max_age, Some(Seconds::Value(5)));
    }

    #[test]
    fn escapes_in_quoted_strings() {
        let l = parse_list(std::iter::once(&b"a=\"x\\\"y\", b"[..]));
        assert_eq!(l[0].value.as_deref(), Some("x\"y"));
        assert_eq!(l[1].name, "b");
        // A backslash as the last byte is kept as is; the quote never closed.
        let (l, complete) = parse_list_checked(std::iter::once(&b"a=\"x\\"[..]));
        assert_eq!(l[0].value.as_deref(), Some("x\\"));
        assert!(!complete);
        let (l, complete) = parse_list_checked(std::iter::once(&b"a=\""[..]));
        assert_eq!(l[0].value.as_deref(), Some(""));
        assert!(!complete);
    }

    #[test]
    fn duplicates_first_value_wins_and_flags_accumulate() {
        let d = ResponseDirectives::parse(&h(&["max-age=10", "max-age=99, no-store"]));
        assert_eq!(d.max_age, Some(Seconds::Value(10)));
        assert!(d.no_store);
        let r = RequestDirectives::parse(&h(&["max-age=3, max-age=1"]));
        assert_eq!(r.max_age, Some(3));
    }

    #[test]
    fn bad_numbers_are_invalid_on_responses_and_ignored_on_requests() {
        for v in [
            "max-age=abc",
            "max-age=-1",
            "max-age=",
            "max-age",
            "max-age=1.5",
        ] {
            let d = ResponseDirectives::parse(&h(&[v]));
            assert_eq!(d.max_age, Some(Seconds::Invalid), "{v}");
        }
        let r = RequestDirectives::parse(&h(&["max-age=x, min-fresh=-2, max-stale=zz"]));
        assert_eq!(r, RequestDirectives::default());
    }

    #[test]
    fn huge_values_saturate() {
        let d = ResponseDirectives::parse(&h(&["max-age=99999999999999999999999"]));
        assert_eq!(d.max_age, Some(Seconds::Value(DELTA_MAX)));
    }

    #[test]
    fn max_stale_with_and_without_value() {
        assert_eq!(
            RequestDirectives::parse(&h(&["max-stale"])).max_stale,
            Some(None)
        );
        assert_eq!(
            RequestDirectives::parse(&h(&["max-stale=30"])).max_stale,
            Some(Some(30))
        );
    }

    #[test]
    fn pragma_only_without_cache_control() {
        let p = vec![("pragma".to_string(), b"no-cache".to_vec())];
        assert!(RequestDirectives::parse(&p).no_cache);
        let mut both = p.clone();
        both.push(("cache-control".to_string(), b"max-age=5".to_vec()));
        assert!(!RequestDirectives::parse(&both).no_cache);
    }

    #[test]
    fn request_flags() {
        let r = RequestDirectives::parse(&h(&[
            "No-Store, only-if-cached, min-fresh=5, stale-if-error=9",
        ]));
        assert!(r.no_store && r.only_if_cached);
        assert_eq!(r.min_fresh, Some(5));
        assert_eq!(r.stale_if_error, Some(9));
    }

    #[test]
    fn what_cannot_be_read_completely_fails_closed() {
        let junk: Vec<String> = (0..MAX_DIRECTIVES).map(|i| format!("x{i}")).collect();
        let huge = format!("private, no-store, x=\"{}\"", "y".repeat(17_000));
        let unreadable = [
            format!("{}, private", junk.join(", ")),
            huge.clone(),
            "max-age=60, x=\"no closing quote, private".to_string(),
        ];
        for cc in &unreadable {
            assert!(
                ResponseDirectives::parse(&h(&[cc])).unparsed,
                "{}",
                &cc[..40]
            );
            assert!(
                RequestDirectives::parse(&h(&[cc])).no_store,
                "{}",
                &cc[..40]
            );
        }
        // Two lines, one unreadable: the whole field is.
        let d = ResponseDirectives::parse(&h(&["max-age=60", &huge]));
        assert!(d.unparsed && d.max_age == Some(Seconds::Value(60)));
        // Exactly the kept number, trailing separators, quoted commas: read.
        for cc in [
            junk.join(", "),
            format!("{}, ,  ", junk.join(",")),
            "max-age=5, x=\"a, b\", public".to_string(),
        ] {
            assert!(!ResponseDirectives::parse(&h(&[&cc])).unparsed, "{cc}");
            assert!(!RequestDirectives::parse(&h(&[&cc])).no_store, "{cc}");
        }
        assert!(!ResponseDirectives::parse(&h(&[])).unparsed);
    }

    #[test]
    fn stale_extensions_and_forbidding_stale() {
        let d = ResponseDirectives::parse(&h(&[
            "max-age=1, stale-while-revalidate=30, stale-if-error=60",
        ]));
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert_eq!(d.stale_if_error, Some(60));
        assert!(!d.forbids_stale());
        assert!(ResponseDirectives::parse(&h(&["s-maxage=1"])).forbids_stale());
        assert!(ResponseDirectives::parse(&h(&["proxy-revalidate"])).forbids_stale());
    }

    #[test]
    fn targeted_fields_replace_cache_control_and_expires() {
        let t = vec![
            "meshguard-cache-control".to_string(),
            "cdn-cache-control".to_string(),
        ];
        let r = h2(&[
            ("cache-control", "no-store"),
            ("expires", "0"),
            ("CDN-Cache-Control", "max-age=60"),
            ("x", "y"),
        ]);
        let v = as_targeted(&r, &t).unwrap();
        let d = ResponseDirectives::parse(&v);
        assert!(!d.no_store && d.max_age == Some(Seconds::Value(60)));
        assert!(!headers::has(&v, "expires") && headers::has(&v, "x"));
        // the first listed field present wins
        let mut r2 = r.clone();
        r2.push(("meshguard-cache-control".into(), b"no-store".to_vec()));
        let d = ResponseDirectives::parse(&as_targeted(&r2, &t).unwrap());
        assert!(d.no_store);
        // an unreadable or empty targeted field is ignored
        let bad = h2(&[
            ("cdn-cache-control", "max-age=\"60"),
            ("cache-control", "no-store"),
        ]);
        assert_eq!(as_targeted(&bad, &t), None);
        assert_eq!(as_targeted(&h2(&[("cdn-cache-control", " , ")]), &t), None);
        assert_eq!(
            as_targeted(&h2(&[("cache-control", "max-age=1")]), &t),
            None
        );
        assert_eq!(as_targeted(&r, &[]), None);
    }

    fn h2(v: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        v.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }
}
