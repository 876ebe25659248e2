//! The compiled JWT configuration: providers (issuer, audiences,
//! algorithms, keys inline or remote, token locations, claims to headers)
//! and each route's requirements, from the raw `jwt_providers` and route
//! `jwt` sections (`docs/configuration.md`).

use super::claims::{ClaimRule, TimePolicy};
use super::extract::Source;
use super::headers::{header_family, valid_header_name, HEADER_EXPECTED};
use super::jose::{Alg, AlgSet};
use super::jwk::KeySet;
use super::remote::{FetchFailure, FetchRequest, RemoteJwks};
use super::{claims, extract};
use crate::config::raw::{RawJwks, RawProvider, RawRouteJwt};
use crate::config::{show_str, valid_name, ConfigError, Duration, NAME_EXPECTED};
use crate::host::Host;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Bounds on configuration lists.
pub const MAX_PROVIDERS: usize = 64;
pub const MAX_CLAIM_HEADERS: usize = 32;
const DEFAULT_SKEW: Duration = Duration::from_secs(60);
const MAX_SKEW: Duration = Duration::from_secs(3600);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(600);
const MIN_CACHE_DURATION: Duration = Duration::from_secs(10);

/// Where a provider's keys come from.
#[derive(Debug)]
pub enum Keys {
    Inline(Arc<KeySet>),
    Remote(RemoteJwks),
}

/// One compiled provider.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    pub audiences: Option<Vec<String>>,
    pub algorithms: AlgSet,
    pub keys: Keys,
    pub sources: Vec<Source>,
    pub times: TimePolicy,
    pub forward: bool,
    /// `(claim path, lower-case header)`.
    pub claims_to_headers: Vec<(String, String)>,
    pub payload_header: Option<String>,
}

/// All configured providers; index = position in `names` (sorted by name).
#[derive(Debug, Default)]
pub struct JwtProviders {
    pub names: Vec<String>,
    pub providers: Vec<Provider>,
}

impl JwtProviders {
    pub fn compile(raw: &BTreeMap<String, RawProvider>) -> Result<JwtProviders, ConfigError> {
        if raw.len() > MAX_PROVIDERS {
            return Err(ConfigError::expected(
                "jwt_providers",
                &format!("at most {MAX_PROVIDERS} providers"),
                raw.len(),
            ));
        }
        let mut out = JwtProviders::default();
        for (i, (name, p)) in raw.iter().enumerate() {
            if !valid_name(name) {
                return Err(ConfigError::expected(
                    "jwt_providers",
                    NAME_EXPECTED,
                    show_str(name),
                ));
            }
            out.providers.push(compile_provider(
                i,
                name,
                p,
                &format!("jwt_providers.{name}"),
            )?);
            out.names.push(name.clone());
        }
        Ok(out)
    }

    /// Number of providers.
    pub fn len(&self) -> usize {
        self.providers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Every header name a provider sets (`claims_to_headers`,
    /// `payload_header`), lower case with `_` written as `-`
    /// ([`header_family`]), once each. A client's copies of these, in any
    /// spelling, are removed from every request.
    pub fn claim_headers(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.providers {
            let names = p
                .claims_to_headers
                .iter()
                .map(|(_, h)| h)
                .chain(p.payload_header.iter());
            for h in names {
                let f = header_family(h);
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        }
        out
    }

    /// The remote JWKS of a provider, if it has one.
    pub fn remote(&self, provider: usize) -> Option<&RemoteJwks> {
        match &self.providers.get(provider)?.keys {
            Keys::Remote(r) => Some(r),
            Keys::Inline(_) => None,
        }
    }

    /// Fetches this worker must dispatch now (remote providers only). Cheap
    /// when nothing is due: one shared-data read per remote provider.
    pub fn poll(&self, host: &impl Host) -> Vec<FetchRequest> {
        (0..self.providers.len())
            .filter_map(|i| self.remote(i)?.poll(host))
            .collect()
    }

    /// Reports the answer to a [`FetchRequest`]; true when new keys were stored.
    pub fn on_fetch_result(
        &self,
        host: &impl Host,
        provider: usize,
        result: Result<&[u8], FetchFailure>,
    ) -> bool {
        match self.remote(provider) {
            Some(r) => r.on_fetch_result(host, result),
            None => false,
        }
    }
}

fn duration_or(d: Option<Duration>, default: Duration) -> Duration {
    d.unwrap_or(default)
}

fn compile_provider(
    index: usize,
    name: &str,
    p: &RawProvider,
    path: &str,
) -> Result<Provider, ConfigError> {
    if p.issuer.is_empty() {
        return Err(ConfigError::expected(
            format!("{path}.issuer"),
            "a non-empty issuer",
            "\"\"",
        ));
    }
    if let Some(a) = &p.audiences {
        if a.is_empty() || a.iter().any(String::is_empty) {
            return Err(ConfigError::expected(
                format!("{path}.audiences"),
                "a non-empty array of non-empty strings (or no \"audiences\" at all)",
                format!("{a:?}"),
            ));
        }
    }
    let algorithms = match &p.algorithms {
        None => AlgSet::asymmetric(),
        Some(list) => {
            if list.is_empty() {
                return Err(ConfigError::expected(
                    format!("{path}.algorithms"),
                    "a non-empty array",
                    "[]",
                ));
            }
            let mut s = AlgSet::default();
            for (i, a) in list.iter().enumerate() {
                let at = format!("{path}.algorithms[{i}]");
                if a.eq_ignore_ascii_case("none") {
                    return Err(ConfigError::expected(
                        at,
                        "a signing algorithm (\"none\" is never accepted: unsigned tokens prove nothing)",
                        show_str(a),
                    ));
                }
                s.insert(Alg::from_name(a).ok_or_else(|| {
                    ConfigError::expected(
                        at,
                        "one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512",
                        show_str(a),
                    )
                })?);
            }
            s
        }
    };
    let keys = compile_jwks(index, name, &p.jwks, algorithms, &format!("{path}.jwks"))?;
    let sources = match &p.from {
        None => Source::default_list(),
        Some(list) => {
            if list.is_empty() || list.len() > extract::MAX_SOURCES {
                return Err(ConfigError::expected(
                    format!("{path}.from"),
                    &format!("1 to {} token locations", extract::MAX_SOURCES),
                    list.len(),
                ));
            }
            list.iter()
                .enumerate()
                .map(|(i, s)| Source::compile(s, &format!("{path}.from[{i}]")))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let skew = duration_or(p.clock_skew, DEFAULT_SKEW);
    if skew > MAX_SKEW {
        return Err(ConfigError::expected(
            format!("{path}.clock_skew"),
            "at most \"1h\"",
            format!("{:?}", skew.as_std()),
        ));
    }
    if p.max_lifetime.is_some_and(|d| d.ceil_secs() == 0) {
        return Err(ConfigError::expected(
            format!("{path}.max_lifetime"),
            "a duration of at least 1s",
            "0",
        ));
    }
    let mut claims_to_headers = Vec::new();
    if let Some(list) = &p.claims_to_headers {
        if list.len() > MAX_CLAIM_HEADERS {
            return Err(ConfigError::expected(
                format!("{path}.claims_to_headers"),
                &format!("at most {MAX_CLAIM_HEADERS} entries"),
                list.len(),
            ));
        }
        for (i, c) in list.iter().enumerate() {
            let at = format!("{path}.claims_to_headers[{i}]");
            claims::check_claim_path(&c.claim, &format!("{at}.claim"))?;
            let h = header_name(&c.header, &format!("{at}.header"))?;
            if claims_to_headers.iter().any(|(_, x)| *x == h) {
                return Err(ConfigError::expected(
                    format!("{at}.header"),
                    "a header used only once",
                    show_str(&h),
                ));
            }
            claims_to_headers.push((c.claim.clone(), h));
        }
    }
    let payload_header = match &p.payload_header {
        Some(h) => Some(header_name(h, &format!("{path}.payload_header"))?),
        None => None,
    };
    Ok(Provider {
        name: name.to_string(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        algorithms,
        keys,
        sources,
        times: TimePolicy {
            skew: skew.as_nanos() / 1_000_000_000,
            require_exp: p.require_exp.unwrap_or(true),
            max_lifetime: p.max_lifetime.map(|d| d.as_nanos() / 1_000_000_000),
        },
        forward: p.forward.unwrap_or(false),
        claims_to_headers,
        payload_header,
    })
}

fn header_name(h: &str, path: &str) -> Result<String, ConfigError> {
    if !valid_header_name(h) {
        return Err(ConfigError::expected(path, HEADER_EXPECTED, show_str(h)));
    }
    Ok(h.to_ascii_lowercase())
}

fn compile_jwks(
    index: usize,
    name: &str,
    j: &RawJwks,
    algorithms: AlgSet,
    path: &str,
) -> Result<Keys, ConfigError> {
    let one = "exactly one of \"inline\", \"inline_string\", \"remote\"";
    let (value, at) = match (&j.inline, &j.inline_string, &j.remote) {
        (Some(v), None, None) => (v.clone(), format!("{path}.inline")),
        (None, Some(s), None) => {
            let at = format!("{path}.inline_string");
            // A member named twice is refused, as in the document itself.
            let v: Value = crate::config::json::parse(s).map_err(|e| {
                ConfigError::expected(&at, "JWKS JSON text", format!("invalid JSON ({e})"))
            })?;
            (v, at)
        }
        (None, None, Some(r)) => {
            if r.cluster.is_empty() {
                return Err(ConfigError::expected(
                    format!("{path}.remote.cluster"),
                    "a cluster name",
                    "\"\"",
                ));
            }
            if !r.path.starts_with('/') {
                return Err(ConfigError::expected(
                    format!("{path}.remote.path"),
                    "a path starting with \"/\"",
                    show_str(&r.path),
                ));
            }
            let timeout = duration_or(r.timeout, DEFAULT_TIMEOUT);
            if timeout.as_nanos() == 0 || timeout > MAX_TIMEOUT {
                return Err(ConfigError::expected(
                    format!("{path}.remote.timeout"),
                    "a duration from \"1ms\" to \"60s\"",
                    format!("{:?}", timeout.as_std()),
                ));
            }
            let cache = duration_or(r.cache_duration, DEFAULT_CACHE_DURATION);
            if cache < MIN_CACHE_DURATION {
                return Err(ConfigError::expected(
                    format!("{path}.remote.cache_duration"),
                    "at least \"10s\"",
                    format!("{:?}", cache.as_std()),
                ));
            }
            let authority = r.authority.clone().unwrap_or_else(|| r.cluster.clone());
            return Ok(Keys::Remote(RemoteJwks::new(
                index,
                name,
                &r.cluster,
                &authority,
                &r.path,
                timeout.as_nanos(),
                cache.as_nanos(),
            )));
        }
        _ => return Err(ConfigError::new(path, format!("expected {one}"))),
    };
    let ks = KeySet::from_value(&value, name)
        .map_err(|e| ConfigError::expected(&at, e, "something else"))?;
    let usable = ks
        .keys
        .iter()
        .any(|k| algorithms.iter().any(|a| k.supports(a)));
    if !usable {
        return Err(ConfigError::new(
            at,
            "expected at least one key usable with the provider's algorithms (unusable entries are skipped; see the warnings)",
        ));
    }
    Ok(Keys::Inline(Arc::new(ks)))
}

/// A route's JWT requirements.
#[derive(Debug)]
pub struct RouteJwt {
    pub providers: Vec<usize>,
    /// Every token location of those providers, in their order: the
    /// locations a request's other tokens are scrubbed from
    /// ([`super::extract::scrub`]), listed once at configuration time.
    pub sources: Vec<Source>,
    pub allow_missing: bool,
    pub rules: Vec<ClaimRule>,
    /// `reject_multiple_tokens`.
    pub reject_multiple_tokens: bool,
}

impl RouteJwt {
    pub fn compile(
        raw: &RawRouteJwt,
        providers: &JwtProviders,
        path: &str,
    ) -> Result<RouteJwt, ConfigError> {
        if raw.providers.is_empty() {
            return Err(ConfigError::expected(
                format!("{path}.providers"),
                "a non-empty array of provider names",
                "[]",
            ));
        }
        let mut idx = Vec::new();
        for (i, p) in raw.providers.iter().enumerate() {
            let at = format!("{path}.providers[{i}]");
            let k = providers.names.iter().position(|n| n == p).ok_or_else(|| {
                ConfigError::expected(&at, "the name of a provider in jwt_providers", show_str(p))
            })?;
            if idx.contains(&k) {
                return Err(ConfigError::expected(
                    at,
                    "a provider listed only once",
                    show_str(p),
                ));
            }
            idx.push(k);
        }
        let rules = raw
            .claims
            .iter()
            .enumerate()
            .map(|(i, r)| ClaimRule::compile(r, &format!("{path}.claims[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let sources = idx
            .iter()
            .filter_map(|&k| providers.providers.get(k))
            .flat_map(|p| p.sources.iter().cloned())
            .collect();
        Ok(RouteJwt {
            providers: idx,
            sources,
            allow_missing: raw.allow_missing,
            rules,
            reject_multiple_tokens: raw.reject_multiple_tokens,
        })
    }
}
