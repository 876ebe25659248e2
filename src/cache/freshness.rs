//! Freshness lifetime, age, and whether a stored response may answer a
//! request (RFC 9111 sections 4.2 and 4.2.4, RFC 5861).
//!
//! All times are seconds (HTTP dates have one-second resolution) except the
//! host timestamps, which are nanoseconds since the epoch. Arithmetic is
//! saturating: a clock that goes backwards gives an age of zero growth,
//! never an underflow.

use super::directives::{RequestDirectives, ResponseDirectives, Seconds};
use super::headers::{self, Headers};
use super::httpdate;

/// Heuristic freshness cap when no `default_ttl` is configured (one day).
pub const HEURISTIC_CAP_SECS: u64 = 86_400;

/// How the freshness lifetime was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeSource {
    SMaxAge,
    MaxAge,
    Expires,
    Heuristic,
    DefaultTtl,
    /// No freshness information: lifetime 0.
    None,
}

/// The configured fallbacks for responses without explicit freshness.
#[derive(Debug, Clone, Copy, Default)]
pub struct FreshnessConfig {
    pub default_ttl_secs: Option<u64>,
    pub heuristic: bool,
}

/// Statuses that are heuristically cacheable (RFC 9110 15.1), minus 206
/// which meshguard does not store. Of these, 405, 414 and 501 get no
/// configured freshness all the same: their cause may be a request header
/// (`storable::may_be_caused_by_the_request`).
pub fn heuristically_cacheable(status: u32) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Freshness lifetime in seconds (RFC 9111 4.2.1), for a shared cache:
/// `s-maxage` > `max-age` > `Expires - Date` > heuristic > `default_ttl`.
/// An invalid `s-maxage` / `max-age` / `Expires` means "already stale" (0).
/// `response_time_secs` stands in for a missing or invalid `Date`.
pub fn lifetime(
    status: u32,
    headers: &Headers,
    cc: &ResponseDirectives,
    response_time_secs: u64,
    cfg: FreshnessConfig,
) -> (u64, LifetimeSource) {
    if let Some(explicit) = explicit_lifetime(headers, cc, response_time_secs) {
        return explicit;
    }
    // Last-Modified is only parsed when the heuristic may apply.
    let heuristic = if cfg.heuristic && (heuristically_cacheable(status) || cc.public) {
        heuristic_base(headers, response_time_secs)
    } else {
        None
    };
    configured_lifetime(status, cc.public, heuristic, cfg)
}

/// The lifetime the response's own fields give (`s-maxage`, `max-age`,
/// `Expires`), which no configuration changes; `None` when they say nothing.
pub fn explicit_lifetime(
    headers: &Headers,
    cc: &ResponseDirectives,
    response_time_secs: u64,
) -> Option<(u64, LifetimeSource)> {
    match cc.s_maxage {
        Some(Seconds::Value(n)) => return Some((n, LifetimeSource::SMaxAge)),
        Some(Seconds::Invalid) => return Some((0, LifetimeSource::SMaxAge)),
        None => {}
    }
    match cc.max_age {
        Some(Seconds::Value(n)) => return Some((n, LifetimeSource::MaxAge)),
        Some(Seconds::Invalid) => return Some((0, LifetimeSource::MaxAge)),
        None => {}
    }
    if headers::has(headers, "expires") {
        // Several Expires lines, or an unparseable one: stale (4.2.1).
        let expires = if headers::count(headers, "expires") == 1 {
            headers::first(headers, "expires").and_then(httpdate::parse)
        } else {
            None
        };
        let date = date_secs(headers).unwrap_or(response_time_secs);
        return Some((
            expires.map_or(0, |e| e.saturating_sub(date)),
            LifetimeSource::Expires,
        ));
    }
    None
}

/// The uncapped heuristic lifetime (10% of `Date - Last-Modified`), when
/// `Last-Modified` is valid.
pub fn heuristic_base(headers: &Headers, response_time_secs: u64) -> Option<u64> {
    let lm = headers::first(headers, "last-modified").and_then(httpdate::parse)?;
    let date = date_secs(headers).unwrap_or(response_time_secs);
    Some(date.saturating_sub(lm) / 10)
}

/// The lifetime of a response without explicit freshness: the heuristic
/// (given `heuristic_base`) when configured, else `default_ttl`, for
/// statuses cacheable by default or `public` responses, never for errors
/// the request may have caused.
pub fn configured_lifetime(
    status: u32,
    public: bool,
    heuristic_base: Option<u64>,
    cfg: FreshnessConfig,
) -> (u64, LifetimeSource) {
    let allowed = (heuristically_cacheable(status) || public)
        && !super::storable::may_be_caused_by_the_request(status);
    if cfg.heuristic && allowed {
        if let Some(h) = heuristic_base {
            let cap = cfg.default_ttl_secs.unwrap_or(HEURISTIC_CAP_SECS);
            return (h.min(cap), LifetimeSource::Heuristic);
        }
    }
    if let Some(ttl) = cfg.default_ttl_secs {
        if allowed {
            return (ttl, LifetimeSource::DefaultTtl);
        }
    }
    (0, LifetimeSource::None)
}

/// The `Date` header in seconds, if present and valid.
pub fn date_secs(headers: &Headers) -> Option<u64> {
    headers::first(headers, "date").and_then(httpdate::parse)
}

/// The age given to a response whose `Age` cannot be read safely: 2^31 s,
/// the value RFC 9111 1.2.2 gives to an overflow. Such a response is
/// never fresh (and never within a `stale-*` window): it is only used
/// after validating it (RFC 9111 5.1, 4.2.4).
pub const UNKNOWN_AGE: u64 = super::directives::DELTA_MAX;

/// The `Age` header (RFC 9111 5.1): delta-seconds; missing is 0. Repeated
/// lines or a list (`Age: 0, 7200`, also what a proxy makes of two lines)
/// are accepted only when every member is the same valid number. Anything
/// else (negative, fractional, suffixed, parameterised, empty, repeated
/// with different values) is [`UNKNOWN_AGE`]: a stale response must not
/// look fresh because its `Age` was misread.
pub fn age_header(headers: &Headers) -> u64 {
    let mut age = None;
    for v in headers::all(headers, "age") {
        let Ok(s) = std::str::from_utf8(v) else {
            return UNKNOWN_AGE;
        };
        for member in s.split(',') {
            match super::directives::delta_seconds(member.trim_matches([' ', '\t'])) {
                Some(n) if age.is_none_or(|a| a == n) => age = Some(n),
                _ => return UNKNOWN_AGE,
            }
        }
    }
    age.unwrap_or(0)
}

/// Current age in seconds (RFC 9111 4.2.3):
/// ```text
/// apparent_age          = max(0, response_time - date_value)
/// response_delay        = response_time - request_time
/// corrected_age_value   = age_value + response_delay
/// corrected_initial_age = max(apparent_age, corrected_age_value)
/// resident_time         = now - response_time
/// current_age           = corrected_initial_age + resident_time
/// ```
/// Timestamps in nanoseconds; a backwards clock gives zero for any negative
/// difference.
pub fn current_age(
    headers: &Headers,
    request_time_ns: u64,
    response_time_ns: u64,
    now_ns: u64,
) -> u64 {
    age_at(
        initial_age(headers, request_time_ns, response_time_ns),
        response_time_ns,
        now_ns,
    )
}

/// `corrected_initial_age` of [`current_age`]: everything but the time
/// spent in the cache.
pub fn initial_age(headers: &Headers, request_time_ns: u64, response_time_ns: u64) -> u64 {
    let response_time = response_time_ns / 1_000_000_000;
    let date_value = date_secs(headers).unwrap_or(response_time);
    let apparent_age = response_time.saturating_sub(date_value);
    let response_delay = response_time_ns.saturating_sub(request_time_ns) / 1_000_000_000;
    let corrected_age_value = age_header(headers).saturating_add(response_delay);
    apparent_age.max(corrected_age_value)
}

/// [`current_age`] from its `corrected_initial_age`: adds the resident time,
/// counted in whole seconds of the clock (`now` and `response_time` each
/// rounded down): HTTP dates name whole seconds, so a response whose
/// `Date` + lifetime is second `x` is stale from the first instant the
/// clock shows `x`, whatever fraction of a second it was received at
/// (rounding the difference instead would serve it up to a second longer).
pub fn age_at(initial_age: u64, response_time_ns: u64, now_ns: u64) -> u64 {
    let resident_time = (now_ns / 1_000_000_000).saturating_sub(response_time_ns / 1_000_000_000);
    initial_age.saturating_add(resident_time)
}

/// What a stored response's header fields say about its freshness and
/// use, worked out once when it is stored, so that a hit parses no header
/// (no `Cache-Control`, no dates). Stored with the entry (see
/// [`entry`](super::entry)); [`Facts::of`] is the only way to build one
/// from a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// The lifetime from `s-maxage` / `max-age` / `Expires`, if they say.
    pub explicit_lifetime: Option<(u64, LifetimeSource)>,
    /// 10% of `Date - Last-Modified`, uncapped ([`heuristic_base`]).
    pub heuristic_base: Option<u64>,
    /// `corrected_initial_age` ([`initial_age`]).
    pub initial_age: u64,
    /// The response directives a stored response is judged by.
    pub max_age: Option<Seconds>,
    pub s_maxage: Option<Seconds>,
    pub no_cache: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl Facts {
    /// The facts of a response received at `response_time_ns` for a
    /// request sent at `request_time_ns`.
    pub fn of(headers: &Headers, request_time_ns: u64, response_time_ns: u64) -> Facts {
        let cc = ResponseDirectives::parse(headers);
        let response_time_secs = response_time_ns / 1_000_000_000;
        Facts {
            explicit_lifetime: explicit_lifetime(headers, &cc, response_time_secs),
            heuristic_base: heuristic_base(headers, response_time_secs),
            initial_age: initial_age(headers, request_time_ns, response_time_ns),
            max_age: cc.max_age,
            s_maxage: cc.s_maxage,
            no_cache: cc.no_cache,
            public: cc.public,
            must_revalidate: cc.must_revalidate,
            proxy_revalidate: cc.proxy_revalidate,
            stale_while_revalidate: cc.stale_while_revalidate,
            stale_if_error: cc.stale_if_error,
        }
    }

    /// [`lifetime`] under the route's configuration.
    pub fn lifetime(&self, status: u32, cfg: FreshnessConfig) -> (u64, LifetimeSource) {
        match self.explicit_lifetime {
            Some(explicit) => explicit,
            None => configured_lifetime(status, self.public, self.heuristic_base, cfg),
        }
    }

    /// The directives [`usability`], [`stale_if_error_allows`] and the
    /// authorization rule read (the others are those of a stored response:
    /// no `no-store`, no `private`).
    pub fn directives(&self) -> ResponseDirectives {
        ResponseDirectives {
            max_age: self.max_age,
            s_maxage: self.s_maxage,
            no_cache: self.no_cache,
            public: self.public,
            must_revalidate: self.must_revalidate,
            proxy_revalidate: self.proxy_revalidate,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            ..ResponseDirectives::default()
        }
    }
}

/// What a stored response can do for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usability {
    /// Fresh enough: serve it. `ttl` = lifetime - age (> 0).
    Fresh { ttl: i64 },
    /// Stale but the request's `max-stale` accepts it: serve it.
    StaleAllowed { ttl: i64 },
    /// Stale within `stale-while-revalidate`: serve it while one request
    /// revalidates.
    StaleWhileRevalidate { ttl: i64 },
    /// Must be validated (or refetched) upstream before use.
    MustValidate { ttl: i64 },
}

impl Usability {
    pub fn ttl(self) -> i64 {
        match self {
            Usability::Fresh { ttl }
            | Usability::StaleAllowed { ttl }
            | Usability::StaleWhileRevalidate { ttl }
            | Usability::MustValidate { ttl } => ttl,
        }
    }
}

/// Decides whether a stored response with freshness `lifetime` and current
/// `age` may satisfy a request (RFC 9111 4.2.4 and 5.2.1, RFC 5861 3).
pub fn usability(
    lifetime: u64,
    age: u64,
    resp: &ResponseDirectives,
    req: &RequestDirectives,
) -> Usability {
    let ttl =
        (lifetime.min(i64::MAX as u64) as i64).saturating_sub(age.min(i64::MAX as u64) as i64);
    if resp.no_cache || req.no_cache {
        return Usability::MustValidate { ttl };
    }
    if let Some(max_age) = req.max_age {
        if age > max_age {
            return Usability::MustValidate { ttl };
        }
    }
    if ttl > 0 {
        if let Some(min_fresh) = req.min_fresh {
            if (ttl as u64) < min_fresh {
                return Usability::MustValidate { ttl };
            }
        }
        return Usability::Fresh { ttl };
    }
    if resp.forbids_stale() {
        return Usability::MustValidate { ttl };
    }
    let stale_by = ttl.unsigned_abs();
    if let Some(max_stale) = req.max_stale {
        if max_stale.is_none_or(|m| stale_by <= m) {
            return Usability::StaleAllowed { ttl };
        }
    }
    if let Some(swr) = resp.stale_while_revalidate {
        if stale_by <= swr {
            return Usability::StaleWhileRevalidate { ttl };
        }
    }
    Usability::MustValidate { ttl }
}

/// Whether a stale response may be served because the origin failed
/// (RFC 5861 4): within the response's or the request's `stale-if-error`
/// window, or the route's `stale_on_error` (`configured`), and never when
/// the response forbids serving stale.
pub fn stale_if_error_allows(
    lifetime: u64,
    age: u64,
    resp: &ResponseDirectives,
    req: &RequestDirectives,
    configured: Option<u64>,
) -> bool {
    if resp.forbids_stale() || resp.no_cache {
        return false;
    }
    let stale_by = age.saturating_sub(lifetime);
    let window = [resp.stale_if_error, req.stale_if_error, configured]
        .into_iter()
        .flatten()
        .max();
    window.is_some_and(|w| stale_by <= w)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const NOW: u64 = 1_700_000_000; // seconds

    fn hs(v: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        v.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }
    fn rcc(v: &str) -> ResponseDirectives {
        ResponseDirectives::parse(&hs(&[("cache-control", v)]))
    }
    fn qcc(v: &str) -> RequestDirectives {
        RequestDirectives::parse(&hs(&[("cache-control", v)]))
    }
    fn life(h: &[(&str, &str)], cfg: FreshnessConfig) -> (u64, LifetimeSource) {
        let h = hs(h);
        let cc = ResponseDirectives::parse(&h);
        lifetime(200, &h, &cc, NOW, cfg)
    }

    #[test]
    fn lifetime_precedence() {
        let d = httpdate::format(NOW);
        let e = httpdate::format(NOW + 500);
        let none = FreshnessConfig::default();
        assert_eq!(
            life(&[("cache-control", "max-age=10, s-maxage=20")], none).0,
            20
        );
        assert_eq!(
            life(&[("cache-control", "max-age=10"), ("expires", &e)], none),
            (10, LifetimeSource::MaxAge)
        );
        assert_eq!(
            life(&[("date", &d), ("expires", &e)], none),
            (500, LifetimeSource::Expires)
        );
        assert_eq!(
            life(&[("expires", "0")], none),
            (0, LifetimeSource::Expires)
        );
        assert_eq!(
            life(&[("expires", &e), ("expires", &e)], none),
            (0, LifetimeSource::Expires)
        );
        assert_eq!(life(&[("cache-control", "max-age=oops")], none).0, 0);
        assert_eq!(life(&[], none), (0, LifetimeSource::None));
    }

    #[test]
    fn stored_facts_give_the_same_lifetime_and_age_as_the_headers() {
        let d = httpdate::format(NOW);
        let e = httpdate::format(NOW + 500);
        let lm = httpdate::format(NOW - 1000);
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![("cache-control", "max-age=10, s-maxage=20")],
            vec![("cache-control", "max-age=oops")],
            vec![("cache-control", "s-maxage=-1, public")],
            vec![("date", &d), ("expires", &e)],
            vec![("expires", &e), ("expires", &e)],
            vec![("expires", "0"), ("last-modified", &lm)],
            vec![("date", &d), ("last-modified", &lm)],
            vec![
                ("date", &d),
                ("last-modified", &lm),
                ("cache-control", "public"),
            ],
            vec![("last-modified", "garbage"), ("age", "12")],
            vec![("date", &lm), ("age", "x"), ("cache-control", "no-cache")],
        ];
        let cfgs = [
            FreshnessConfig::default(),
            FreshnessConfig {
                default_ttl_secs: Some(30),
                heuristic: false,
            },
            FreshnessConfig {
                default_ttl_secs: None,
                heuristic: true,
            },
            FreshnessConfig {
                default_ttl_secs: Some(60),
                heuristic: true,
            },
        ];
        let (req, resp) = (NOW * S - 3 * S, NOW * S);
        for h in &cases {
            let h = hs(h);
            let cc = ResponseDirectives::parse(&h);
            let f = Facts::of(&h, req, resp);
            for status in [200, 302, 404, 500] {
                for cfg in cfgs {
                    assert_eq!(
                        f.lifetime(status, cfg),
                        lifetime(status, &h, &cc, NOW, cfg),
                        "{h:?} {status} {cfg:?}"
                    );
                }
            }
            for now in [resp - 100 * S, resp, resp + 7 * S, resp + 86_400 * S] {
                assert_eq!(
                    age_at(f.initial_age, resp, now),
                    current_age(&h, req, resp, now),
                    "{h:?}"
                );
            }
            let d = f.directives();
            assert_eq!(
                (
                    d.no_cache,
                    d.public,
                    d.forbids_stale(),
                    d.has_explicit_max_age()
                ),
                (
                    cc.no_cache,
                    cc.public,
                    cc.forbids_stale(),
                    cc.has_explicit_max_age()
                )
            );
            assert_eq!(
                (d.stale_while_revalidate, d.stale_if_error),
                (cc.stale_while_revalidate, cc.stale_if_error)
            );
        }
    }

    #[test]
    fn heuristic_is_ten_percent_capped_and_opt_in() {
        let d = httpdate::format(NOW);
        let lm = httpdate::format(NOW - 1000);
        let old = httpdate::format(NOW - 100 * 86_400);
        let h = [("date", d.as_str()), ("last-modified", lm.as_str())];
        let on = FreshnessConfig {
            default_ttl_secs: None,
            heuristic: true,
        };
        assert_eq!(life(&h, on), (100, LifetimeSource::Heuristic));
        assert_eq!(life(&h, FreshnessConfig::default()).0, 0);
        let h2 = [("date", d.as_str()), ("last-modified", old.as_str())];
        assert_eq!(life(&h2, on).0, HEURISTIC_CAP_SECS);
        let capped = FreshnessConfig {
            default_ttl_secs: Some(60),
            heuristic: true,
        };
        assert_eq!(life(&h2, capped).0, 60);
    }

    #[test]
    fn default_ttl_only_without_explicit_freshness() {
        let cfg = FreshnessConfig {
            default_ttl_secs: Some(30),
            heuristic: false,
        };
        assert_eq!(life(&[], cfg), (30, LifetimeSource::DefaultTtl));
        assert_eq!(life(&[("cache-control", "max-age=5")], cfg).0, 5);
        let h = hs(&[]);
        // 302 is not heuristically cacheable: default_ttl does not apply.
        assert_eq!(
            lifetime(302, &h, &ResponseDirectives::default(), NOW, cfg).0,
            0
        );
    }

    #[test]
    fn age_arithmetic() {
        let d = httpdate::format(NOW);
        // Received 2s after the request, Date = response time, Age: 5.
        let h = hs(&[("date", &d), ("age", "5")]);
        let resp = NOW * S;
        let req = resp - 2 * S;
        assert_eq!(current_age(&h, req, resp, resp), 7);
        assert_eq!(current_age(&h, req, resp, resp + 10 * S), 17);
        // Clock went backwards: no negative resident time.
        assert_eq!(current_age(&h, req, resp, resp - 100 * S), 7);
        // Date far in the past dominates (apparent age).
        let old = httpdate::format(NOW - 50);
        assert_eq!(current_age(&hs(&[("date", &old)]), resp, resp, resp), 50);
        // Date in the future is 0 apparent age; a bad Age is unknown.
        let fut = httpdate::format(NOW + 50);
        assert_eq!(current_age(&hs(&[("date", &fut)]), resp, resp, resp), 0);
        assert_eq!(
            current_age(&hs(&[("date", &fut), ("age", "x")]), resp, resp, resp),
            UNKNOWN_AGE
        );
    }

    #[test]
    fn resident_time_counts_clock_seconds() {
        let d = httpdate::format(NOW);
        let h = hs(&[("date", &d)]);
        // Received at NOW.8, asked at (NOW+1).4: the clock shows NOW+1.
        let resp = NOW * S + 800_000_000;
        let now = (NOW + 1) * S + 400_000_000;
        assert_eq!(current_age(&h, resp, resp, now), 1);
        assert_eq!(current_age(&h, resp, resp, NOW * S + 999_999_999), 0);
        let cc = rcc("max-age=1, must-revalidate");
        let age = current_age(&h, resp, resp, now);
        assert_eq!(
            usability(1, age, &cc, &qcc("")),
            Usability::MustValidate { ttl: 0 }
        );
    }

    #[test]
    fn invalid_age_values_are_unknown() {
        let age = |v: &[&str]| {
            let h: Vec<(String, Vec<u8>)> = v
                .iter()
                .map(|v| ("age".to_string(), v.as_bytes().to_vec()))
                .collect();
            age_header(&h)
        };
        assert_eq!(age(&[]), 0);
        assert_eq!(age(&["7200"]), 7200);
        assert_eq!(age(&[" 60 "]), 60);
        assert_eq!(age(&["60", "60"]), 60);
        assert_eq!(age(&["60, 60"]), 60);
        for bad in [
            &["0", "7200"][..],
            &["7200", "0"],
            &["0, 7200"],
            &["-7200"],
            &["7200.0"],
            &["7200a"],
            &["a7200"],
            &["7200;x=1"],
            &[""],
            &["1,"],
        ] {
            assert_eq!(age(bad), UNKNOWN_AGE, "{bad:?}");
        }
        let r = rcc("max-age=3600, stale-if-error=86400");
        assert!(!stale_if_error_allows(
            3600,
            UNKNOWN_AGE,
            &r,
            &qcc(""),
            None
        ));
        assert_eq!(
            usability(3600, UNKNOWN_AGE, &r, &qcc("")),
            Usability::MustValidate {
                ttl: 3600 - UNKNOWN_AGE as i64
            }
        );
    }

    #[test]
    fn request_constraints() {
        let r = rcc("max-age=100");
        assert_eq!(
            usability(100, 10, &r, &qcc("")),
            Usability::Fresh { ttl: 90 }
        );
        assert_eq!(
            usability(100, 10, &r, &qcc("max-age=5")),
            Usability::MustValidate { ttl: 90 }
        );
        assert_eq!(
            usability(100, 95, &r, &qcc("min-fresh=10")),
            Usability::MustValidate { ttl: 5 }
        );
        assert_eq!(
            usability(100, 10, &r, &qcc("no-cache")),
            Usability::MustValidate { ttl: 90 }
        );
        assert_eq!(
            usability(100, 120, &r, &qcc("max-stale")),
            Usability::StaleAllowed { ttl: -20 }
        );
        assert_eq!(
            usability(100, 120, &r, &qcc("max-stale=30")),
            Usability::StaleAllowed { ttl: -20 }
        );
        assert_eq!(
            usability(100, 120, &r, &qcc("max-stale=10")),
            Usability::MustValidate { ttl: -20 }
        );
        assert_eq!(
            usability(100, 100, &r, &qcc("")),
            Usability::MustValidate { ttl: 0 }
        );
    }

    #[test]
    fn revalidation_directives_forbid_stale() {
        for cc in [
            "max-age=1, must-revalidate",
            "max-age=1, proxy-revalidate",
            "s-maxage=1",
        ] {
            let r = rcc(&format!(
                "{cc}, stale-while-revalidate=100, stale-if-error=100"
            ));
            assert_eq!(
                usability(1, 5, &r, &qcc("max-stale")),
                Usability::MustValidate { ttl: -4 }
            );
            assert!(!stale_if_error_allows(1, 5, &r, &qcc(""), None));
        }
        let nc = rcc("no-cache, max-age=100");
        assert_eq!(
            usability(100, 1, &nc, &qcc("")),
            Usability::MustValidate { ttl: 99 }
        );
    }

    #[test]
    fn stale_windows() {
        let r = rcc("max-age=10, stale-while-revalidate=20, stale-if-error=60");
        assert_eq!(
            usability(10, 25, &r, &qcc("")),
            Usability::StaleWhileRevalidate { ttl: -15 }
        );
        assert_eq!(
            usability(10, 31, &r, &qcc("")),
            Usability::MustValidate { ttl: -21 }
        );
        assert!(stale_if_error_allows(10, 70, &r, &qcc(""), None));
        assert!(!stale_if_error_allows(10, 71, &r, &qcc(""), None));
        assert!(stale_if_error_allows(
            10,
            100,
            &rcc("max-age=10"),
            &qcc("stale-if-error=90"),
            None
        ));
        assert!(!stale_if_error_allows(
            10,
            100,
            &rcc("max-age=10"),
            &qcc(""),
            None
        ));
        // the route's stale_on_error is a window of its own
        let plain = rcc("max-age=10");
        assert!(stale_if_error_allows(10, 100, &plain, &qcc(""), Some(90)));
        assert!(!stale_if_error_allows(10, 101, &plain, &qcc(""), Some(90)));
        let strict = rcc("max-age=10, must-revalidate");
        assert!(!stale_if_error_allows(10, 11, &strict, &qcc(""), Some(90)));
    }
}
