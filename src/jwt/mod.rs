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

pub(crate) mod authenticate;
pub mod cache;
pub mod claims;
pub(crate) mod ecdsa;
pub mod extract;
pub(crate) mod headers;
pub mod jose;
pub mod jwk;
pub(crate) mod metrics;
pub(crate) mod montgomery;
pub mod native;
pub(crate) mod policy;
pub mod remote;
pub(crate) mod rsassa;
pub mod verify;

pub use authenticate::{authenticate, AuthOutcome, MAX_KEY_TRIES};
pub use cache::TokenCache;
pub use headers::{
    claim_header_value, header_family, in_header_family, injected_claim_headers, HeaderOp,
    MAX_CLAIM_HEADER_BYTES,
};
pub use metrics::JwtMetrics;
pub use policy::{JwtProviders, Keys, Provider, RouteJwt, MAX_CLAIM_HEADERS, MAX_PROVIDERS};
pub use remote::{FetchFailure, FetchRequest, RemoteJwks};
