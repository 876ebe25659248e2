//! JWT bearer verification (docs/configuration.md, "JWT": `jwt_providers` and route `jwt`).
//!
//! ```json
//! { "jwt_providers": {
//!     "corp": { "issuer": "https://auth.example.com", "audiences": ["orders"],
//!               "jwks": { "remote": { "cluster": "idp", "path": "/.well-known/jwks.json" } },
//!               "claims_to_headers": [ { "claim": "sub", "header": "x-user" } ] } },
//!   "routes": [ { "name": "orders", "match": { "path_prefix": "/orders" },
//!                 "jwt": { "providers": ["corp"],
//!                          "claims": [ { "claim": "scope", "contains": "orders:read" } ] } } ] }
//! ```
//!
//! # Behaviour
//!
//! 1. **Extraction.** For each provider of the route, in order, its `from`
//!    locations are searched in order (default: `Authorization` with the
//!    `Bearer ` scheme, matched case-insensitively); the first location that
//!    holds a non-empty value wins for that provider. No token anywhere:
//!    401 `WWW-Authenticate: Bearer realm="<route>"`, or pass-through with
//!    `allow_missing`.
//! 2. **Parsing.** Compact JWS only; at most 8 KiB ([`jose::MAX_TOKEN_BYTES`]);
//!    strict unpadded base64url; header and payload must be JSON objects;
//!    `alg` must be one of RS256/384/512, PS256/384/512, ES256, ES384, EdDSA
//!    (Ed25519), HS256/384/512 (`none` never); a non-empty `crit` is
//!    rejected (no extension is understood). `jku`, `x5u` and `jwk` header
//!    parameters are ignored: keys only ever come from the configuration.
//! 3. **Provider choice.** Among the route's providers that found this
//!    token, those whose `issuer` equals the token's `iss` are tried in
//!    order; no match is "issuer not accepted" (no signature work done).
//! 4. **Signature.** `alg` must be in the provider's `algorithms` (default:
//!    every asymmetric one; HS* only when listed; listing `none` is a config
//!    error). Candidate keys: same `kid` (or, without `kid`, every key; at
//!    most [`MAX_KEY_TRIES`]) whose type fits `alg` (RSA for RS/PS, EC P-256
//!    for ES256, P-384 for ES384, OKP Ed25519 for EdDSA, oct for HS*) and
//!    whose own `alg`, if any, equals it. So an RSA public key is never an
//!    HMAC secret. RS* use Envoy's native `verify_signature` when the host
//!    has it (see [`native`]), else pure Rust.
//! 5. **Claims.** `aud` (string or array) must contain one of `audiences`
//!    when set; `exp` required unless `require_exp: false` (and always when
//!    `max_lifetime` is set); `now < exp + clock_skew`, `nbf <= now + skew`,
//!    `iat <= now + skew`; `exp - iat` (or `exp - now` without `iat`) at most
//!    `max_lifetime`. Then the route's `claims` rules (`equals`, `one_of`,
//!    `contains` on arrays and space-separated strings; dotted paths, a
//!    top-level key containing dots wins): failing is 403
//!    `error="insufficient_scope"`.
//! 6. **Headers.** Every `claims_to_headers` header and `payload_header`
//!    of ANY provider is removed from EVERY request meshguard sees, in any
//!    spelling (`x_user` and `X-User` for `x-user`), on every route and on
//!    requests no route matches (the filter does it before routing, with
//!    [`JwtProviders::claim_headers`]). Then, for the accepted provider:
//!    the upstream gets exactly one token or none ([`extract::scrub`]):
//!    with `forward: false` (default) every token location of every
//!    provider of the route is removed (header removed, cookie dropped from
//!    `Cookie`, query parameter dropped from `:path`); with `forward: true`
//!    the verified location keeps only the verified value and every other
//!    location is removed. Present claims are set (strings as is,
//!    numbers/booleans as JSON text, arrays joined with `,`; values with
//!    control characters or over 4 KiB are not sent); `payload_header`
//!    gets the payload segment (base64url).
//! 7. **Several tokens.** With `reject_multiple_tokens: true` a request
//!    holding more than one distinct token (across the route's providers'
//!    locations, or twice in one) is refused: 400 `invalid_request`
//!    (RFC 6750 3.1). Otherwise the first valid one is used and the others
//!    removed as above.
//!
//! Denials never echo the token: 401 `Bearer realm="<route>",
//! error="invalid_token", error_description="<short fixed reason>"` with
//! body `{"error":"invalid_token","error_description":"..."}`; a missing
//! token has no `error` attribute (RFC 6750 3.1) and body
//! `{"error":"missing_token",...}`; 403 uses `insufficient_scope`.
//!
//! # JWKS
//!
//! `inline` / `inline_string`: parsed once at configuration; entries that
//! cannot be used are skipped with a warning naming the `kid`; zero usable
//! keys (for the allowed algorithms) is a config error. `remote`: fetched
//! by the filter on behalf of [`remote::RemoteJwks`] (one fetch per process,
//! shared data, refresh, backoff, unknown-`kid` refetch): `timeout` default
//! 5s, `cache_duration` default 10m, `authority` default the cluster name.
//!
//! # Speed
//!
//! Each worker keeps a [`TokenCache`] of verified tokens (the token maps to
//! its provider and claims), valid until `exp` and at most 5 minutes, 1024
//! entries; for a remote JWKS only while the verifying key is still in the
//! current set (a removed key stops cached tokens too). Route claim rules
//! and header operations are computed per request.
//!
//! # What the filter calls
//!
//! - At configuration: [`JwtProviders::compile`], [`RouteJwt::compile`]
//!   (done by `config`), and [`JwtMetrics::define`] once per JWT route.
//! - Per worker: one [`TokenCache`] (root context), shared with the HTTP
//!   contexts (e.g. `Rc<RefCell<TokenCache>>`).
//! - On each tick (e.g. every second) and after [`AuthOutcome::KeysPending`]:
//!   [`JwtProviders::poll`]; dispatch each returned [`FetchRequest`] as
//!   `GET` with `:authority`, `:path`, `timeout`; report each answer with
//!   [`JwtProviders::on_fetch_result`] (`Ok(body)` for 200, else
//!   `Err(FetchFailure::Status(s))` / `Err(FetchFailure::NoResponse)`).
//! - Per request: [`authenticate`], then [`JwtMetrics::record`]. On
//!   `KeysPending`, pause and call `authenticate` again when keys arrive
//!   (or deny with 503/401 at the filter's deadline).
//!
//! Metrics (counters, per route): `meshguard.jwt.<route>.allowed`,
//! `.denied`, `.cache_hit`, `.keys_pending`; and signature checks by where
//! they ran, `.signature_checks_native` (the host's `verify_signature`) and
//! `.signature_checks_wasm` (pure Rust: PS*, EdDSA, HS*, and RS*/ES* on a
//! host without the native path). A verified-token cache hit checks no
//! signature.

pub mod cache;
pub mod claims;
pub mod extract;
pub mod jose;
pub mod jwk;
pub mod native;
pub mod remote;
pub mod rsassa;
pub mod verify;

pub use cache::TokenCache;
pub use remote::{FetchFailure, FetchRequest, RemoteJwks};

use crate::config::raw::{RawJwks, RawProvider, RawRouteJwt};
use crate::config::{show_str, valid_name, ConfigError, Duration, NAME_EXPECTED};
use crate::host::{Host, MetricId, MetricKind};
use crate::request::Request;
use claims::{ClaimRule, TimePolicy};
use extract::Source;
use jose::{Alg, AlgSet};
use jwk::KeySet;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A token without `kid` is tried against at most this many keys.
pub const MAX_KEY_TRIES: usize = 8;
/// Bounds on configuration lists.
pub const MAX_PROVIDERS: usize = 64;
pub const MAX_CLAIM_HEADERS: usize = 32;
/// Claim values longer than this are not forwarded as headers.
pub const MAX_CLAIM_HEADER_BYTES: usize = 4096;

const DEFAULT_SKEW: Duration = Duration::from_secs(60);
const MAX_SKEW: Duration = Duration::from_secs(3600);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(600);
const MIN_CACHE_DURATION: Duration = Duration::from_secs(10);

pub(crate) const HEADER_EXPECTED: &str =
    "a header name of 1 to 128 token characters (letters, digits, -, _ ...), not a pseudo-header";

/// HTTP header field-name (RFC 9110 token), bounded; no pseudo-headers.
pub(crate) fn valid_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 128
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header name as the family of its spellings: lower case, `_` as `-`
/// (Envoy lets `x_user` through by default and many frameworks read it as
/// `x-user`).
pub fn header_family(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' => '-',
            b => b.to_ascii_lowercase() as char,
        })
        .collect()
}

/// Whether header `name` is a spelling of `family` ([`header_family`]).
pub fn in_header_family(name: &[u8], family: &str) -> bool {
    name.len() == family.len()
        && name.iter().zip(family.bytes()).all(|(&a, f)| {
            let a = if a == b'_' {
                b'-'
            } else {
                a.to_ascii_lowercase()
            };
            a == f
        })
}

/// The names of the request's headers that are a spelling of one of
/// `families` (from [`JwtProviders::claim_headers`]), once each, as sent:
/// a client's attempt to set a header meshguard sets from verified
/// claims. The filter removes them from every request.
pub fn injected_claim_headers(families: &[String], req: &Request) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (name, _) in req.headers.raw_iter() {
        if families.iter().any(|f| in_header_family(name, f))
            && !out.iter().any(|o| o.as_bytes() == name)
        {
            out.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    out
}

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
            let v: Value = serde_json::from_str(s).map_err(|e| {
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
        Ok(RouteJwt {
            providers: idx,
            allow_missing: raw.allow_missing,
            rules,
            reject_multiple_tokens: raw.reject_multiple_tokens,
        })
    }
}

/// A change to the request headers, applied in order. `Set` replaces every
/// value of the header (`:path` included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    Remove(String),
    Set(String, Vec<u8>),
}

/// The verdict of [`authenticate`].
#[derive(Debug, Clone, PartialEq)]
pub enum AuthOutcome {
    /// Continue upstream after applying `header_ops`. `claims` is `None`
    /// only when the token was missing and the route allows that.
    Allowed {
        claims: Option<Arc<claims::Claims>>,
        provider: Option<usize>,
        cache_hit: bool,
        header_ops: Vec<HeaderOp>,
    },
    /// Reply locally with `status` (401 or 403), `WWW-Authenticate` and a
    /// JSON body (`content-type: application/json`).
    Denied {
        status: u32,
        www_authenticate: String,
        body: String,
    },
    /// A remote provider has no keys yet: pause, make sure
    /// [`JwtProviders::poll`] runs, and retry.
    KeysPending { provider: usize },
}

/// Per-route counters; see the module docs for names.
#[derive(Debug, Clone, Copy)]
pub struct JwtMetrics {
    pub allowed: MetricId,
    pub denied: MetricId,
    pub cache_hit: MetricId,
    pub keys_pending: MetricId,
    pub checks_native: MetricId,
    pub checks_wasm: MetricId,
}

impl JwtMetrics {
    /// Defines the counters (configuration time); a failure leaves a no-op metric.
    pub fn define(host: &impl Host, route: &str) -> JwtMetrics {
        let d = |s: &str| {
            host.define_metric(MetricKind::Counter, &format!("meshguard.jwt.{route}.{s}"))
                .unwrap_or(MetricId::NONE)
        };
        JwtMetrics {
            allowed: d("allowed"),
            denied: d("denied"),
            cache_hit: d("cache_hit"),
            keys_pending: d("keys_pending"),
            checks_native: d("signature_checks_native"),
            checks_wasm: d("signature_checks_wasm"),
        }
    }

    /// Counts one request's signature checks (none on a cache hit: no host
    /// call then).
    pub fn record_checks(&self, host: &impl Host, checks: verify::VerifyStats) {
        let native = checks.native_calls.min(checks.signature_checks);
        if native > 0 {
            host.increment_metric(self.checks_native, native as i64);
        }
        if checks.signature_checks > native {
            host.increment_metric(self.checks_wasm, (checks.signature_checks - native) as i64);
        }
    }

    pub fn record(&self, host: &impl Host, outcome: &AuthOutcome) {
        match outcome {
            AuthOutcome::Allowed { cache_hit, .. } => {
                host.increment_metric(self.allowed, 1);
                if *cache_hit {
                    host.increment_metric(self.cache_hit, 1);
                }
            }
            AuthOutcome::Denied { .. } => host.increment_metric(self.denied, 1),
            AuthOutcome::KeysPending { .. } => host.increment_metric(self.keys_pending, 1),
        }
    }
}

/// A token found in the request, with the `(provider, source index)`
/// pairs that found it.
type Candidate<'r> = (std::borrow::Cow<'r, [u8]>, Vec<(usize, usize)>);

/// Why one token failed.
enum Failure {
    Invalid(&'static str),
    Pending(usize),
}

fn quote_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

fn deny_missing(route: &str) -> AuthOutcome {
    AuthOutcome::Denied {
        status: 401,
        www_authenticate: format!("Bearer realm=\"{}\"", quote_safe(route)),
        body: serde_json::json!({"error": "missing_token", "error_description": "a bearer token is required"})
            .to_string(),
    }
}

fn deny(route: &str, status: u32, error: &str, reason: &str) -> AuthOutcome {
    AuthOutcome::Denied {
        status,
        www_authenticate: format!(
            "Bearer realm=\"{}\", error=\"{error}\", error_description=\"{}\"",
            quote_safe(route),
            quote_safe(reason)
        ),
        body: serde_json::json!({"error": error, "error_description": reason}).to_string(),
    }
}

/// Renders a claim as a header value; `None` when it should not be sent.
pub fn claim_header_value(v: &Value) -> Option<Vec<u8>> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(_) | Value::Bool(_) => v.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => v.to_string(),
        Value::Null => return None,
    };
    if s.len() > MAX_CLAIM_HEADER_BYTES || s.chars().any(|c| c.is_control() && c != '\t') {
        return None;
    }
    Some(s.into_bytes())
}

/// Checks the request against the route's JWT requirements (see module docs).
pub fn authenticate(
    host: &impl Host,
    providers: &JwtProviders,
    route: &RouteJwt,
    route_name: &str,
    req: &Request,
    cache: &mut TokenCache,
) -> AuthOutcome {
    let now = host.now_nanos();
    let mut ops: Vec<HeaderOp> = Vec::new();

    // 1. Extraction: (token, [(provider, source index)]).
    let mut candidates: Vec<Candidate> = Vec::new();
    for &p in &route.providers {
        let Some(prov) = providers.providers.get(p) else {
            continue;
        };
        for (si, s) in prov.sources.iter().enumerate() {
            if let Some(tok) = s.find(req) {
                match candidates.iter_mut().find(|(t, _)| *t == tok) {
                    Some((_, holders)) => holders.push((p, si)),
                    None => candidates.push((tok, vec![(p, si)])),
                }
                break;
            }
        }
    }
    if candidates.is_empty() {
        if route.allow_missing {
            return AuthOutcome::Allowed {
                claims: None,
                provider: None,
                cache_hit: false,
                header_ops: ops,
            };
        }
        return deny_missing(route_name);
    }
    if route.reject_multiple_tokens && carries_several_tokens(providers, route, req) {
        return deny(
            route_name,
            400,
            "invalid_request",
            "more than one token in the request",
        );
    }

    let mut invalid: Option<&'static str> = None;
    let mut pending: Option<usize> = None;
    let mut scope_failure: Option<String> = None;
    for (tok, holders) in &candidates {
        let (v, cache_hit) = match check_token(host, providers, tok, holders, cache, now) {
            Ok(x) => x,
            Err(Failure::Invalid(r)) => {
                invalid.get_or_insert(r);
                continue;
            }
            Err(Failure::Pending(p)) => {
                pending.get_or_insert(p);
                continue;
            }
        };
        if let Some(rule) = route.rules.iter().find(|r| !r.matches(&v.claims)) {
            scope_failure
                .get_or_insert_with(|| format!("claim {} requirement not met", rule.claim));
            continue;
        }
        let Some(prov) = providers.providers.get(v.provider) else {
            continue;
        };
        // The upstream gets the verified token (`forward: true`) or none,
        // never a token from another location nobody verified.
        let verified_at = holders
            .iter()
            .find(|(p, _)| *p == v.provider)
            .and_then(|(_, si)| prov.sources.get(*si));
        let kept = verified_at.filter(|_| prov.forward);
        let sources: Vec<&Source> = route
            .providers
            .iter()
            .filter_map(|&p| providers.providers.get(p))
            .flat_map(|p| p.sources.iter())
            .collect();
        ops.extend(extract::scrub(&sources, kept, req));
        for (claim, header) in &prov.claims_to_headers {
            if let Some(val) = claims::lookup(&v.claims, claim).and_then(claim_header_value) {
                ops.push(HeaderOp::Set(header.clone(), val));
            }
        }
        if let Some(h) = &prov.payload_header {
            ops.push(HeaderOp::Set(h.clone(), v.payload_b64.as_bytes().to_vec()));
        }
        return AuthOutcome::Allowed {
            claims: Some(v.claims),
            provider: Some(v.provider),
            cache_hit,
            header_ops: ops,
        };
    }
    if let Some(why) = scope_failure {
        return deny(route_name, 403, "insufficient_scope", &why);
    }
    if let Some(p) = pending {
        return AuthOutcome::KeysPending { provider: p };
    }
    deny(
        route_name,
        401,
        "invalid_token",
        invalid.unwrap_or("invalid token"),
    )
}

/// Whether the request carries more than one distinct token across every
/// location of the route's providers (several values in one location
/// count).
fn carries_several_tokens(providers: &JwtProviders, route: &RouteJwt, req: &Request) -> bool {
    let mut first: Option<std::borrow::Cow<'_, [u8]>> = None;
    for prov in route
        .providers
        .iter()
        .filter_map(|&p| providers.providers.get(p))
    {
        for s in &prov.sources {
            for t in s.find_all(req) {
                match &first {
                    None => first = Some(t),
                    Some(f) if *f != t => return true,
                    Some(_) => {}
                }
            }
        }
    }
    false
}

/// Verifies one token for the providers that found it (cache first).
fn check_token(
    host: &impl Host,
    providers: &JwtProviders,
    tok: &[u8],
    holders: &[(usize, usize)],
    cache: &mut TokenCache,
    now: u64,
) -> Result<(cache::Verified, bool), Failure> {
    if tok.len() > jose::MAX_TOKEN_BYTES {
        return Err(Failure::Invalid("token too large"));
    }
    if let Some(v) = cache.get(tok, now) {
        if holders.iter().any(|(p, _)| *p == v.provider) {
            match key_still_trusted(host, providers, &v) {
                KeyTrust::Same => {
                    cache.stats.hits += 1;
                    return Ok((v, true));
                }
                KeyTrust::Moved(to) => {
                    cache.rebind(tok, to);
                    cache.stats.hits += 1;
                    return Ok((v, true));
                }
                // Verified again below, against the current keys.
                KeyTrust::Gone => cache.forget(tok),
            }
        }
    }
    cache.stats.misses += 1;
    let mut jws = jose::parse(tok).map_err(Failure::Invalid)?;
    let iss = jws
        .claims
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut first: Option<Failure> = None;
    let mut matched = false;
    for &(p, _) in holders {
        let Some(prov) = providers.providers.get(p) else {
            continue;
        };
        if Some(prov.issuer.as_str()) != iss.as_deref() {
            continue;
        }
        matched = true;
        match check_with_provider(host, prov, &jws, cache, now) {
            Ok((exp, key)) => {
                let v = cache::Verified {
                    key,
                    provider: p,
                    claims: Arc::new(std::mem::take(&mut jws.claims)),
                    payload_b64: Arc::from(jws.payload_b64),
                };
                cache.insert(tok, v.clone(), exp, now);
                return Ok((v, false));
            }
            Err(f) => {
                // An invalid verdict beats "pending" from another provider.
                match (&first, &f) {
                    (None, _) | (Some(Failure::Pending(_)), Failure::Invalid(_)) => first = Some(f),
                    _ => {}
                }
            }
        }
    }
    if !matched {
        return Err(Failure::Invalid("issuer not accepted"));
    }
    Err(first.unwrap_or(Failure::Invalid("invalid token")))
}

/// Whether a cached token's verifying key is still in its provider's keys.
enum KeyTrust {
    /// Inline keys, or the same key set as when it was verified.
    Same,
    /// The JWKS was refetched and still holds the key (here).
    Moved(cache::KeyRef),
    /// The key left the JWKS: verify the token again.
    Gone,
}

fn key_still_trusted(host: &impl Host, providers: &JwtProviders, v: &cache::Verified) -> KeyTrust {
    let Some(was) = &v.key else {
        return KeyTrust::Same;
    };
    let Some(Keys::Remote(r)) = providers.providers.get(v.provider).map(|p| &p.keys) else {
        return KeyTrust::Same;
    };
    let Some(now) = r.keys(host) else {
        return KeyTrust::Same;
    };
    if Arc::ptr_eq(&now, &was.set) {
        return KeyTrust::Same;
    }
    let Some(old) = was.set.keys.get(was.index) else {
        return KeyTrust::Gone;
    };
    match now.keys.iter().position(|k| k.same_key(old)) {
        Some(index) => KeyTrust::Moved(cache::KeyRef { set: now, index }),
        None => KeyTrust::Gone,
    }
}

/// Checks a parsed token against one provider: `(exp, the verifying key
/// when it came from a remote JWKS)`.
fn check_with_provider(
    host: &impl Host,
    prov: &Provider,
    jws: &jose::Jws<'_>,
    cache: &mut TokenCache,
    now: u64,
) -> Result<(Option<i64>, Option<cache::KeyRef>), Failure> {
    if !prov.algorithms.contains(jws.alg) {
        return Err(Failure::Invalid("algorithm not allowed"));
    }
    let keys = match &prov.keys {
        Keys::Inline(k) => k.clone(),
        Keys::Remote(r) => match r.keys(host) {
            Some(k) => k,
            None => return Err(Failure::Pending(r.provider_index)),
        },
    };
    let mut tried = 0;
    let mut ok = None;
    for key in keys
        .candidates(jws.alg, jws.kid.as_deref())
        .take(MAX_KEY_TRIES)
    {
        tried += 1;
        if verify::verify(
            host,
            &mut cache.native,
            &mut cache.stats.verify,
            jws.alg,
            key,
            jws.signing_input,
            &jws.signature,
        ) {
            ok = Some(key);
            break;
        }
    }
    if tried == 0 {
        return Err(Failure::Invalid(match jws.kid.as_deref() {
            Some(kid) if !keys.has_kid(kid) => {
                if let Keys::Remote(r) = &prov.keys {
                    r.request_refresh(host);
                }
                "unknown key id"
            }
            _ => "no matching key",
        }));
    }
    let Some(verified_by) = ok else {
        return Err(Failure::Invalid("invalid signature"));
    };
    let key = match &prov.keys {
        Keys::Inline(_) => None,
        Keys::Remote(_) => keys
            .keys
            .iter()
            .position(|k| std::ptr::eq(k, verified_by))
            .map(|index| cache::KeyRef {
                set: keys.clone(),
                index,
            }),
    };
    if let Some(aud) = &prov.audiences {
        if !claims::audience_ok(&jws.claims, aud) {
            return Err(Failure::Invalid("audience not accepted"));
        }
    }
    let now_secs = i64::try_from(now / 1_000_000_000).unwrap_or(i64::MAX);
    let exp = claims::check_times(&jws.claims, &prov.times, now_secs).map_err(Failure::Invalid)?;
    Ok((exp, key))
}
