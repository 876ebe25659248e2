//! May a response be stored (RFC 9111 section 3), and what is kept of it.
//!
//! A response to a GET is stored when ALL of these hold:
//! - the request has no `no-store`, the response has no `no-store`;
//! - the response's `Cache-Control` was read completely (see
//!   [`directives`](super::directives): fail closed);
//! - the response is not `private` (meshguard is a shared cache; a
//!   `private="field"` list is treated like plain `private`);
//! - the status is one meshguard understands and is not 206 (no range
//!   support), 304 (only used to refresh) or 1xx;
//! - the request had no condition or range (`If-Match`, `If-None-Match`,
//!   `If-Modified-Since`, `If-Unmodified-Since`, `If-Range`, `Range`), or
//!   the status is not one those fields produce (206, 304, 412, 416): the
//!   answer to one client's condition is not the resource for the others;
//! - the status is not an error whose cause may be a request header the key
//!   does not cover ([`may_be_caused_by_the_request`]: every 4xx and 5xx but
//!   404 and 410), unless the origin marks it shareable explicitly:
//!   `s-maxage`, or `public` with `max-age` or `Expires`. `default_ttl` and
//!   the heuristic never apply to such statuses. (An origin adding
//!   `max-age=60` to everything would otherwise let one client's oversized
//!   header, method-override header or unsatisfiable `Range` make an error
//!   every client receives for a minute: cache-poisoned denial of service.)
//! - the request had no `Authorization` and no token of the route's JWT
//!   providers (at any of their locations: header, cookie, query), or the
//!   response has `public`, `s-maxage` or `must-revalidate` (3.5; a token
//!   is a credential like `Authorization`, wherever the client put it);
//! - `Vary` is not `*` and names only headers in `vary_allowlist`;
//! - `Set-Cookie` is present only with `public` or `s-maxage` (and then
//!   the `Set-Cookie` lines are NOT kept: one client's cookie is never
//!   replayed to another);
//! - with `must-understand`, the status is one meshguard [`understood`]
//!   (RFC 9110's), and then a `no-store` beside it is ignored (5.2.2.3);
//! - there is a reason to keep it: a positive freshness lifetime, or
//!   validators with explicit freshness / `no-cache` so it can be
//!   revalidated (checked by the caller, which knows the lifetime).
//!
//! Hop-by-hop fields (`Connection` and the names it lists, `Keep-Alive`,
//! `TE`, `Transfer-Encoding`, `Upgrade`, `Proxy-*`, `Trailer`), any
//! pseudo-header and `Set-Cookie` are stripped before storing. `Age` is
//! kept: it is an input of the age calculation (the served `Age` is
//! recomputed on every hit).

use super::directives::ResponseDirectives;
use super::headers::{self, Headers};
use super::vary::{self, VaryError};

/// What is done with a response carrying `Set-Cookie` (`set_cookie`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetCookie {
    /// Stored only with `public` or `s-maxage`, without its `Set-Cookie`.
    #[default]
    PublicOnly,
    /// Stored by the usual rules, without its `Set-Cookie` lines.
    Strip,
    /// Stored with its `Set-Cookie` lines, which every hit sends: only
    /// for cookies that are the same for everyone.
    Store,
    /// Never stored.
    NoStore,
}

/// Why a response is not stored: the `detail` of Cache-Status.
pub type Refusal = &'static str;

/// Statuses a stored response may have (besides the check on freshness).
pub fn status_storable(status: u32) -> bool {
    (200..=599).contains(&status) && status != 206 && status != 304
}

/// Statuses whose caching rules meshguard implements: those RFC 9110
/// defines (other than 1xx, 206 and 304, which are never stored). A
/// response with `must-understand` and any other status is not stored.
pub fn understood(status: u32) -> bool {
    matches!(
        status,
        200..=205 | 300..=303 | 305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505
    )
}

/// Error statuses whose cause may be the request's header fields rather
/// than the resource the key names: every 4xx and 5xx except 404 (Not
/// Found) and 410 (Gone), which are about the URI itself. Such a response
/// is stored only when the origin says it may be shared explicitly
/// ([`explicitly_shareable`]), and gets no configured freshness.
pub fn may_be_caused_by_the_request(status: u32) -> bool {
    (400..=599).contains(&status) && status != 404 && status != 410
}

/// `s-maxage`, or `public` with an explicit lifetime (`max-age`, `Expires`).
pub fn explicitly_shareable(response: &Headers, cc: &ResponseDirectives) -> bool {
    cc.s_maxage.is_some()
        || (cc.public && (cc.max_age.is_some() || headers::has(response, "expires")))
}

/// Request fields that make it conditional or partial.
pub const CONDITIONS: [&str; 6] = [
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "range",
];

/// Statuses that answer a request's conditions or range rather than
/// represent the resource.
fn answers_a_condition(status: u32) -> bool {
    matches!(status, 206 | 304 | 412 | 416)
}

/// What the storage rules need to know of the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// `Authorization` or a token (RFC 9111 3.5).
    pub authenticated: bool,
    /// Request `no-store`.
    pub no_store: bool,
    /// One of [`CONDITIONS`] present.
    pub conditional: bool,
}

/// Checks the rules above except freshness; `Ok(vary names)` when storable.
pub fn check(
    status: u32,
    response: &Headers,
    cc: &ResponseDirectives,
    request: RequestFacts,
    vary_allowlist: &[String],
    set_cookie: SetCookie,
) -> Result<Vec<String>, Refusal> {
    if request.no_store {
        return Err("request-no-store");
    }
    if cc.unparsed {
        return Err("cache-control-unparsed");
    }
    // must-understand (5.2.2.3): store only a status whose caching rules
    // meshguard implements; then the `no-store` next to it (for caches
    // that do not understand it) is ignored.
    if cc.must_understand && !understood(status) {
        return Err("must-understand");
    }
    if cc.no_store && !cc.must_understand {
        return Err("no-store");
    }
    if cc.private {
        return Err("private");
    }
    if !status_storable(status) {
        return Err("status");
    }
    if request.conditional && answers_a_condition(status) {
        return Err("conditional");
    }
    if may_be_caused_by_the_request(status) && !explicitly_shareable(response, cc) {
        return Err("error-status");
    }
    if request.authenticated && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Err("authorization");
    }
    if headers::has(response, "set-cookie") {
        let allowed = match set_cookie {
            SetCookie::PublicOnly => cc.public || cc.s_maxage.is_some(),
            SetCookie::Strip | SetCookie::Store => true,
            SetCookie::NoStore => false,
        };
        if !allowed {
            return Err("set-cookie");
        }
    }
    match vary::vary_names(response, vary_allowlist) {
        Ok(names) => Ok(names),
        Err(VaryError::Star) => Err("vary-star"),
        Err(VaryError::NotAllowed(_)) => Err("vary-not-allowed"),
        Err(VaryError::TooMany) => Err("vary-too-many"),
    }
}

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
];

/// Headers that are never stored (hop-by-hop, per-hop, recomputed), and
/// `Set-Cookie` unless `keep_cookies` (`set_cookie: "store"`). Names are
/// lower-cased; values are kept byte for byte.
pub fn strip_for_storage(response: &Headers, keep_cookies: bool) -> Vec<(String, Vec<u8>)> {
    let mut listed: Vec<String> = Vec::new();
    for v in headers::all(response, "connection") {
        for n in String::from_utf8_lossy(v).split(',') {
            let n = n.trim().to_ascii_lowercase();
            if !n.is_empty() && listed.len() < 32 {
                listed.push(n);
            }
        }
    }
    response
        .iter()
        .filter(|(n, _)| {
            let n = n.to_ascii_lowercase();
            !(n.starts_with(':')
                || n.starts_with("proxy-")
                || HOP_BY_HOP.contains(&n.as_str())
                || listed.contains(&n)
                || (n == "set-cookie" && !keep_cookies))
        })
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect()
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
        vec!["accept-encoding".into()]
    }
    fn chk(status: u32, h: &[(&str, &str)], auth: bool) -> Result<Vec<String>, Refusal> {
        chk_req(
            status,
            h,
            RequestFacts {
                authenticated: auth,
                ..RequestFacts::default()
            },
        )
    }
    fn chk_req(status: u32, h: &[(&str, &str)], req: RequestFacts) -> Result<Vec<String>, Refusal> {
        let h = hs(h);
        check(
            status,
            &h,
            &ResponseDirectives::parse(&h),
            req,
            &allow(),
            SetCookie::PublicOnly,
        )
    }

    #[test]
    fn refusals() {
        assert_eq!(
            chk(200, &[("cache-control", "no-store")], false),
            Err("no-store")
        );
        assert_eq!(
            chk(200, &[("cache-control", "private, max-age=9")], false),
            Err("private")
        );
        assert_eq!(
            chk(200, &[("cache-control", "private=\"x\"")], false),
            Err("private")
        );
        assert_eq!(chk(206, &[], false), Err("status"));
        assert_eq!(chk(304, &[], false), Err("status"));
        assert_eq!(chk(101, &[], false), Err("status"));
        assert_eq!(chk(200, &[("vary", "*")], false), Err("vary-star"));
        assert_eq!(
            chk(200, &[("vary", "cookie")], false),
            Err("vary-not-allowed")
        );
        assert_eq!(chk(200, &[("set-cookie", "a=b")], false), Err("set-cookie"));
        let many: Vec<String> = (0..65).map(|i| format!("x{i}")).collect();
        assert_eq!(
            chk(200, &[("cache-control", &many.join(","))], false),
            Err("cache-control-unparsed")
        );
        let no_store = RequestFacts {
            no_store: true,
            ..RequestFacts::default()
        };
        assert_eq!(chk_req(200, &[], no_store), Err("request-no-store"));
    }

    #[test]
    fn errors_the_request_may_cause_need_an_explicit_mark() {
        let max_age = [("cache-control", "max-age=60")];
        for status in [400, 403, 405, 412, 413, 414, 416, 429, 431, 500, 501, 503] {
            assert!(may_be_caused_by_the_request(status), "{status}");
            assert_eq!(
                chk(status, &max_age, false),
                Err("error-status"),
                "{status}"
            );
            assert_eq!(
                chk(
                    status,
                    &[("cache-control", "public"), ("expires", "0")],
                    false
                ),
                Ok(vec![]),
                "{status}"
            );
            for cc in ["s-maxage=60", "public, max-age=60"] {
                assert_eq!(
                    chk(status, &[("cache-control", cc)], false),
                    Ok(vec![]),
                    "{status} {cc}"
                );
            }
            // `public` alone gives no lifetime: it is not explicit enough.
            assert_eq!(
                chk(status, &[("cache-control", "public")], false),
                Err("error-status")
            );
        }
        for status in [200, 203, 204, 301, 308, 404, 410] {
            assert!(!may_be_caused_by_the_request(status), "{status}");
            assert_eq!(chk(status, &max_age, false), Ok(vec![]), "{status}");
        }
    }

    #[test]
    fn answers_to_conditions_and_ranges_are_not_the_resource() {
        let conditional = RequestFacts {
            conditional: true,
            ..RequestFacts::default()
        };
        for status in [412, 416] {
            assert_eq!(
                chk_req(status, &[("cache-control", "s-maxage=60")], conditional),
                Err("conditional")
            );
            // Explicitly shareable, for a request without conditions.
            assert!(chk(status, &[("cache-control", "s-maxage=60")], false).is_ok());
        }
        for status in [200, 404] {
            assert!(chk_req(status, &[("cache-control", "max-age=60")], conditional).is_ok());
        }
    }

    #[test]
    fn authorization_rule_of_3_5() {
        assert_eq!(
            chk(200, &[("cache-control", "max-age=9")], true),
            Err("authorization")
        );
        for cc in [
            "public, max-age=9",
            "s-maxage=9",
            "max-age=9, must-revalidate",
        ] {
            assert!(chk(200, &[("cache-control", cc)], true).is_ok(), "{cc}");
        }
    }

    #[test]
    fn accepted_with_vary_names() {
        assert_eq!(
            chk(200, &[("vary", "Accept-Encoding")], false),
            Ok(vec!["accept-encoding".to_string()])
        );
        assert!(chk(
            200,
            &[("set-cookie", "a=b"), ("cache-control", "public")],
            false
        )
        .is_ok());
    }

    #[test]
    fn hop_by_hop_and_listed_fields_are_stripped() {
        let h = hs(&[
            ("Connection", "X-Private, close"),
            ("x-private", "1"),
            ("keep-alive", "5"),
            ("transfer-encoding", "chunked"),
            ("proxy-authenticate", "x"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("set-cookie", "a=b"),
            ("content-type", "text/plain"),
            ("ETag", "\"1\""),
        ]);
        let kept = strip_for_storage(&h, false);
        let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["content-type", "etag"]);
        let kept = strip_for_storage(&h, true);
        let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["set-cookie", "content-type", "etag"]);
    }

    #[test]
    fn set_cookie_options() {
        let h = hs(&[("set-cookie", "a=b"), ("cache-control", "max-age=60")]);
        let cc = ResponseDirectives::parse(&h);
        let req = RequestFacts::default();
        let run = |sc| check(200, &h, &cc, req, &allow(), sc);
        assert_eq!(run(SetCookie::PublicOnly), Err("set-cookie"));
        assert_eq!(run(SetCookie::NoStore), Err("set-cookie"));
        assert!(run(SetCookie::Strip).is_ok() && run(SetCookie::Store).is_ok());
        let p = hs(&[
            ("set-cookie", "a=b"),
            ("cache-control", "public, max-age=60"),
        ]);
        let pcc = ResponseDirectives::parse(&p);
        assert!(check(200, &p, &pcc, req, &allow(), SetCookie::PublicOnly).is_ok());
        assert_eq!(
            check(200, &p, &pcc, req, &allow(), SetCookie::NoStore),
            Err("set-cookie")
        );
    }

    #[test]
    fn must_understand() {
        let known = [("cache-control", "must-understand, no-store, max-age=60")];
        assert!(chk(200, &known, false).is_ok());
        assert!(chk(404, &known, false).is_ok());
        for status in [299, 420, 599] {
            let h = [("cache-control", "must-understand, s-maxage=60, public")];
            assert_eq!(chk(status, &h, false), Err("must-understand"), "{status}");
            // without must-understand, the usual rules
            assert!(chk(status, &[("cache-control", "s-maxage=60")], false).is_ok());
        }
        assert!(understood(200) && understood(308) && understood(451 - 30));
        assert!(!understood(299) && !understood(451) && !understood(599));
    }
}
