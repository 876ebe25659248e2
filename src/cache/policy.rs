//! The validated `cache` section of a route ([`CachePolicy`]).

use super::freshness::FreshnessConfig;
use super::headers::is_token;
pub use super::storable::SetCookie;
use crate::config::raw::RawCache;
use crate::config::{show_str, ConfigError};
use crate::jwt::claims::{ClaimRule, Claims};

/// Most entries in `vary_allowlist` and `key_headers`.
pub const MAX_HEADER_NAMES: usize = 32;
/// Largest `default_ttl` accepted (one year).
pub const MAX_DEFAULT_TTL_SECS: u64 = 366 * 86_400;

/// The claim rules a `PURGE` request's verified token must satisfy.
#[derive(Debug, Clone)]
pub struct PurgeRules(pub Vec<ClaimRule>);

impl PurgeRules {
    /// Whether these verified claims may purge (every rule holds).
    pub fn allow(&self, claims: &Claims) -> bool {
        !self.0.is_empty() && self.0.iter().all(|r| r.matches(claims))
    }
}

impl PartialEq for PurgeRules {
    fn eq(&self, other: &Self) -> bool {
        format!("{:?}", self.0) == format!("{:?}", other.0)
    }
}

impl Eq for PurgeRules {}

/// A route's cache settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    /// Cached methods: `GET` stores and serves, `HEAD` is served from
    /// stored GET responses (HEAD responses are never stored).
    pub cache_get: bool,
    pub cache_head: bool,
    /// Lower-case header names a response may `Vary` on.
    pub vary_allowlist: Vec<String>,
    /// Lower-case request header names whose values join the primary key.
    pub key_headers: Vec<String>,
    pub ignore_query: bool,
    /// Whole seconds; `None` when not configured.
    pub default_ttl_secs: Option<u64>,
    pub heuristic_freshness: bool,
    pub set_cookie: SetCookie,
    /// Lower-case targeted cache-control field names (RFC 9213), in order.
    pub targeted: Vec<String>,
    /// `stale_on_error` in whole seconds: a `stale-if-error` window of the
    /// route's own, also used when the circuit breaker is open.
    pub stale_on_error_secs: Option<u64>,
    /// `purge`: `PURGE` allowed to tokens satisfying these rules.
    pub purge: Option<PurgeRules>,
    /// `purge.prefix`: purge by path prefix.
    pub purge_prefix: bool,
    /// `purge.tag_header`, lower-cased: purge by tag.
    pub purge_tag_header: Option<String>,
}

impl CachePolicy {
    /// Whether lookups read the route's purge log ([`super::purge`]).
    pub fn reads_purge_log(&self) -> bool {
        self.purge_prefix || self.purge_tag_header.is_some()
    }
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            cache_get: true,
            cache_head: true,
            vary_allowlist: vec![
                "accept".into(),
                "accept-encoding".into(),
                "accept-language".into(),
            ],
            key_headers: Vec::new(),
            ignore_query: false,
            default_ttl_secs: None,
            heuristic_freshness: false,
            set_cookie: SetCookie::PublicOnly,
            targeted: vec!["cdn-cache-control".into()],
            stale_on_error_secs: None,
            purge: None,
            purge_prefix: false,
            purge_tag_header: None,
        }
    }
}

fn header_names(list: &[String], path: &str) -> Result<Vec<String>, ConfigError> {
    if list.len() > MAX_HEADER_NAMES {
        return Err(ConfigError::expected(
            path,
            &format!("at most {MAX_HEADER_NAMES} header names"),
            list.len(),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, n) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if !is_token(n) || n.len() > 128 {
            return Err(ConfigError::expected(
                p,
                "a header name (an HTTP token)",
                show_str(n),
            ));
        }
        let lower = n.to_ascii_lowercase();
        if out.contains(&lower) {
            return Err(ConfigError::expected(
                p,
                "a header name listed once",
                show_str(n),
            ));
        }
        out.push(lower);
    }
    Ok(out)
}

impl CachePolicy {
    /// Validates a route's `cache` section; `path` is its JSON path.
    pub fn compile(raw: &RawCache, path: &str) -> Result<CachePolicy, ConfigError> {
        let mut p = CachePolicy::default();
        if let Some(methods) = &raw.methods {
            if methods.is_empty() {
                return Err(ConfigError::expected(
                    format!("{path}.methods"),
                    "a non-empty list of \"GET\" and/or \"HEAD\"",
                    "[]",
                ));
            }
            p.cache_get = false;
            p.cache_head = false;
            for (i, m) in methods.iter().enumerate() {
                let slot = match m.as_str() {
                    "GET" => &mut p.cache_get,
                    "HEAD" => &mut p.cache_head,
                    _ => {
                        return Err(ConfigError::expected(
                            format!("{path}.methods[{i}]"),
                            "\"GET\" or \"HEAD\" (only safe methods are cached)",
                            show_str(m),
                        ))
                    }
                };
                if *slot {
                    return Err(ConfigError::expected(
                        format!("{path}.methods[{i}]"),
                        "a method listed once",
                        show_str(m),
                    ));
                }
                *slot = true;
            }
        }
        if let Some(v) = &raw.vary_allowlist {
            p.vary_allowlist = header_names(v, &format!("{path}.vary_allowlist"))?;
        }
        if let Some(k) = &raw.key_headers {
            p.key_headers = header_names(k, &format!("{path}.key_headers"))?;
        }
        p.ignore_query = raw.ignore_query;
        if let Some(ttl) = raw.default_ttl {
            let secs = ttl.as_nanos() / 1_000_000_000;
            if !(1..=MAX_DEFAULT_TTL_SECS).contains(&secs) {
                return Err(ConfigError::expected(
                    format!("{path}.default_ttl"),
                    "a duration from \"1s\" to \"8784h\"",
                    format!("{}ns", ttl.as_nanos()),
                ));
            }
            p.default_ttl_secs = Some(secs);
        }
        p.heuristic_freshness = raw.heuristic_freshness;
        if let Some(sc) = &raw.set_cookie {
            p.set_cookie = match sc.as_str() {
                "public_only" => SetCookie::PublicOnly,
                "strip" => SetCookie::Strip,
                "store" => SetCookie::Store,
                "no_store" => SetCookie::NoStore,
                _ => {
                    return Err(ConfigError::expected(
                        format!("{path}.set_cookie"),
                        "\"public_only\", \"strip\", \"store\" or \"no_store\"",
                        show_str(sc),
                    ))
                }
            };
        }
        if let Some(d) = raw.stale_on_error {
            let secs = d.as_nanos() / 1_000_000_000;
            if !(1..=MAX_DEFAULT_TTL_SECS).contains(&secs) {
                return Err(ConfigError::expected(
                    format!("{path}.stale_on_error"),
                    "a duration from \"1s\" to \"8784h\"",
                    format!("{}ns", d.as_nanos()),
                ));
            }
            p.stale_on_error_secs = Some(secs);
        }
        if let Some(purge) = &raw.purge {
            let at = format!("{path}.purge.claims");
            if purge.claims.is_empty() {
                return Err(ConfigError::expected(
                    at,
                    "at least one claim rule (who may purge)",
                    "[]",
                ));
            }
            let rules = purge
                .claims
                .iter()
                .enumerate()
                .map(|(i, r)| ClaimRule::compile(r, &format!("{at}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            p.purge = Some(PurgeRules(rules));
            p.purge_prefix = purge.prefix;
            if let Some(h) = &purge.tag_header {
                let at = format!("{path}.purge.tag_header");
                p.purge_tag_header = header_names(std::slice::from_ref(h), &at)
                    .map_err(|_| {
                        ConfigError::expected(&at, "a header name (an HTTP token)", show_str(h))
                    })?
                    .pop();
            }
        }
        if let Some(t) = &raw.targeted_cache_control {
            p.targeted = header_names(t, &format!("{path}.targeted_cache_control"))?;
            if let Some(i) = p.targeted.iter().position(|n| n == "cache-control") {
                return Err(ConfigError::expected(
                    format!("{path}.targeted_cache_control[{i}]"),
                    "a targeted field (not Cache-Control itself)",
                    "\"cache-control\"",
                ));
            }
        }
        Ok(p)
    }

    pub fn freshness(&self) -> FreshnessConfig {
        FreshnessConfig {
            default_ttl_secs: self.default_ttl_secs,
            heuristic: self.heuristic_freshness,
        }
    }

    /// Whether this method is looked up in the cache at all.
    pub fn caches_method(&self, method: &str) -> bool {
        match method {
            "GET" => self.cache_get,
            "HEAD" => self.cache_head,
            _ => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::Duration;

    fn raw() -> RawCache {
        RawCache {
            methods: None,
            vary_allowlist: None,
            key_headers: None,
            ignore_query: false,
            default_ttl: None,
            heuristic_freshness: false,
            set_cookie: None,
            targeted_cache_control: None,
            stale_on_error: None,
            purge: None,
        }
    }

    #[test]
    fn purge_tag_header_is_a_header_name_lower_cased() {
        let with = |h: &str| {
            let mut r = raw();
            r.purge = Some(
                serde_json::from_value(serde_json::json!({
                "claims": [{ "claim": "scope", "contains": "x" }],
                "prefix": true, "tag_header": h }))
                .unwrap(),
            );
            CachePolicy::compile(&r, "routes[0].cache")
        };
        let p = with("Surrogate-Key").unwrap();
        assert_eq!(p.purge_tag_header.as_deref(), Some("surrogate-key"));
        assert!(p.purge_prefix && p.reads_purge_log());
        for bad in ["", "a b", "x:y"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("routes[0].cache.purge.tag_header"), "{e}");
        }
        assert!(!CachePolicy::compile(&raw(), "r").unwrap().reads_purge_log());
    }

    #[test]
    fn defaults() {
        let p = CachePolicy::compile(&raw(), "routes[0].cache");
        assert_eq!(p, Ok(CachePolicy::default()));
    }

    #[test]
    fn methods_are_a_subset_of_get_and_head() {
        let mut r = raw();
        r.methods = Some(vec!["GET".into()]);
        let p = CachePolicy::compile(&r, "c").unwrap_or_default();
        assert!(p.cache_get && !p.cache_head);
        r.methods = Some(vec!["GET".into(), "POST".into()]);
        let e = CachePolicy::compile(&r, "routes[2].cache").err();
        assert_eq!(e.map(|e| e.to_string()), Some(
            "invalid config at routes[2].cache.methods[1]: expected \"GET\" or \"HEAD\" (only safe methods are cached), got \"POST\"".to_string()
        ));
        r.methods = Some(vec![]);
        assert!(CachePolicy::compile(&r, "c").is_err());
        r.methods = Some(vec!["get".into()]);
        assert!(CachePolicy::compile(&r, "c").is_err());
        r.methods = Some(vec!["GET".into(), "GET".into()]);
        assert!(CachePolicy::compile(&r, "c").is_err());
    }

    #[test]
    fn header_lists_are_lowercased_and_validated() {
        let mut r = raw();
        r.vary_allowlist = Some(vec!["Accept".into(), "X-Tenant".into()]);
        r.key_headers = Some(vec!["X-Api-Version".into()]);
        let p = CachePolicy::compile(&r, "c").unwrap_or_default();
        assert_eq!(p.vary_allowlist, vec!["accept", "x-tenant"]);
        assert_eq!(p.key_headers, vec!["x-api-version"]);
        r.key_headers = Some(vec!["bad header".into()]);
        let e = CachePolicy::compile(&r, "c").err().map(|e| e.path);
        assert_eq!(e.as_deref(), Some("c.key_headers[0]"));
        r.key_headers = Some(vec!["a".into(), "A".into()]);
        assert!(CachePolicy::compile(&r, "c").is_err());
    }

    #[test]
    fn set_cookie_and_targeted_fields() {
        let mut r = raw();
        r.set_cookie = Some("strip".into());
        r.targeted_cache_control = Some(vec!["Surrogate-Control".into()]);
        let p = CachePolicy::compile(&r, "c").unwrap_or_default();
        assert_eq!(p.set_cookie, SetCookie::Strip);
        assert_eq!(p.targeted, vec!["surrogate-control"]);
        r.set_cookie = Some("keep".into());
        let e = CachePolicy::compile(&r, "c").err().map(|e| e.path);
        assert_eq!(e.as_deref(), Some("c.set_cookie"));
        r.set_cookie = None;
        r.targeted_cache_control = Some(vec!["x-a".into(), "Cache-Control".into()]);
        let e = CachePolicy::compile(&r, "c").err().map(|e| e.path);
        assert_eq!(e.as_deref(), Some("c.targeted_cache_control[1]"));
        r.targeted_cache_control = None;
        r.stale_on_error = Some(Duration::from_secs(300));
        let p = CachePolicy::compile(&r, "c").unwrap_or_default();
        assert_eq!(p.stale_on_error_secs, Some(300));
        r.stale_on_error = Some(Duration::from_millis(10));
        let e = CachePolicy::compile(&r, "c").err().map(|e| e.path);
        assert_eq!(e.as_deref(), Some("c.stale_on_error"));
        assert_eq!(
            CachePolicy::default().targeted,
            vec!["cdn-cache-control".to_string()]
        );
    }

    #[test]
    fn default_ttl_bounds() {
        let mut r = raw();
        r.default_ttl = Some(Duration::from_secs(30));
        r.heuristic_freshness = true;
        r.ignore_query = true;
        let p = CachePolicy::compile(&r, "c").unwrap_or_default();
        assert_eq!(p.default_ttl_secs, Some(30));
        assert!(p.heuristic_freshness && p.ignore_query);
        r.default_ttl = Some(Duration::from_millis(500));
        assert_eq!(
            CachePolicy::compile(&r, "c")
                .err()
                .map(|e| e.path)
                .as_deref(),
            Some("c.default_ttl")
        );
    }
}
