//! Shared helpers for the `jwt_*` integration tests: fixtures, config
//! builders, requests, and a host that emulates Envoy's `verify_signature`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshguard::host::fake::FakeHost;
use meshguard::host::{Host, HostError, MetricId, MetricKind, SetError, SharedValue};
use meshguard::jwt::{authenticate, AuthOutcome, HeaderOp, JwtProviders, RouteJwt, TokenCache};
use meshguard::plan::Config;
use meshguard::request::Request;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub const NOW_SECS: u64 = 1_800_000_000;
pub const SEC: u64 = 1_000_000_000;
pub const ISS: &str = "https://issuer.test";
pub const PARTNER: &str = "https://partner.test";
pub const ALL_ALGS: [&str; 12] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];

pub const TOKENS: &str = include_str!("../fixtures/jwt/tokens.json");
pub const JWKS: &str = include_str!("../fixtures/jwt/jwks.json");
pub const JWKS_PARTNER: &str = include_str!("../fixtures/jwt/jwks_partner.json");
pub const JWKS_MIXED: &str = include_str!("../fixtures/jwt/jwks_mixed.json");

pub fn tok(name: &str) -> String {
    let all: Value = serde_json::from_str(TOKENS).unwrap();
    all[name]
        .as_str()
        .unwrap_or_else(|| panic!("no fixture token {name}"))
        .to_string()
}

pub fn jwks() -> Value {
    serde_json::from_str(JWKS).unwrap()
}

/// JWKS with only the keys whose kid is listed.
pub fn jwks_only(kids: &[&str]) -> Value {
    let keys: Vec<Value> = jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .cloned()
        .collect();
    json!({ "keys": keys })
}

pub fn host() -> FakeHost {
    FakeHost::new(NOW_SECS * SEC)
}

/// A provider object with the fixture JWKS inline; `extra` overrides fields.
pub fn provider(extra: Value) -> Value {
    let mut p = json!({ "issuer": ISS, "audiences": ["api"], "jwks": { "inline": jwks() } });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

pub struct Setup {
    pub cfg: Config,
}

impl Setup {
    /// Builds a full config: `providers` object and one route `api` with `route_jwt`.
    pub fn new(providers: Value, route_jwt: Value) -> Setup {
        let doc = json!({
            "jwt_providers": providers,
            "routes": [ { "name": "api", "jwt": route_jwt } ]
        });
        let cfg = Config::from_bytes(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        Setup { cfg }
    }

    /// One provider `main` (see [`provider`]) on route `api`.
    pub fn single(extra: Value) -> Setup {
        Setup::new(
            json!({ "main": provider(extra) }),
            json!({ "providers": ["main"] }),
        )
    }

    pub fn providers(&self) -> &JwtProviders {
        &self.cfg.jwt_providers
    }

    pub fn route(&self) -> &RouteJwt {
        self.cfg.routes[0].jwt.as_ref().unwrap()
    }

    pub fn auth(&self, host: &impl Host, req: &Request, cache: &mut TokenCache) -> AuthOutcome<'_> {
        authenticate(host, self.providers(), self.route(), "api", req, cache)
    }
}

pub fn config_error(doc: Value) -> String {
    match Config::from_bytes(doc.to_string().as_bytes()) {
        Ok(_) => panic!("config accepted: {doc}"),
        Err(e) => e.to_string(),
    }
}

pub fn req(path: &str, headers: &[(&str, &str)]) -> Request {
    Request {
        method: "GET".into(),
        path: path.into(),
        authority: "api.test".into(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect(),
        peer_ip: "10.0.0.1".into(),
        norm_path: None,
    }
}

pub fn bearer(token: &str) -> Request {
    req("/", &[("authorization", &format!("Bearer {token}"))])
}

/// The `error_description` of a 401/403, or panics.
pub fn denial(o: &AuthOutcome) -> (u32, String) {
    match o {
        AuthOutcome::Denied { status, body, .. } => {
            let b: Value = serde_json::from_str(body).unwrap();
            (
                *status,
                b["error_description"].as_str().unwrap_or("").to_string(),
            )
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

pub fn allowed<'a>(
    o: &AuthOutcome<'a>,
) -> (Arc<meshguard::jwt::claims::Claims>, Vec<HeaderOp<'a>>) {
    match o {
        AuthOutcome::Allowed {
            claims: Some(c),
            header_ops,
            ..
        } => (c.clone(), header_ops.clone()),
        other => panic!("expected allowed with claims, got {other:?}"),
    }
}

/// A host that implements Envoy's `verify_signature` with an independent
/// protobuf reader and `rsa`'s PKCS#1 v1.5 verification, counting calls.
#[derive(Clone, Default)]
pub struct NativeHost {
    pub inner: FakeHost,
    pub calls: Arc<AtomicU64>,
    pub kind: NativeKind,
}

/// What the emulated `verify_signature` can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NativeKind {
    /// Like Envoy with BoringSSL: RSA PKCS#1 v1.5 and ECDSA (DER signature).
    #[default]
    RsaAndEcdsa,
    /// A host whose function imports RSA keys only: any other key is
    /// `result: false` with an error, as for a bad signature.
    RsaOnly,
    /// A broken host that answers `true` to everything.
    AlwaysTrue,
}

impl NativeHost {
    pub fn new() -> Self {
        Self::with(NativeKind::RsaAndEcdsa)
    }
    pub fn with(kind: NativeKind) -> Self {
        NativeHost {
            inner: host(),
            calls: Arc::default(),
            kind,
        }
    }
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

fn read_fields(mut b: &[u8]) -> Vec<(u64, Vec<u8>)> {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                return v;
            }
        }
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let tag = varint(&mut b);
        assert_eq!(tag & 7, 2, "only length-delimited fields expected");
        let len = varint(&mut b) as usize;
        out.push((tag >> 3, b[..len].to_vec()));
        b = &b[len..];
    }
    out
}

impl Host for NativeHost {
    fn now_nanos(&self) -> u64 {
        self.inner.now_nanos()
    }
    fn shared_get(&self, key: &str) -> Result<SharedValue, HostError> {
        self.inner.shared_get(key)
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        self.inner.shared_set(key, value, cas)
    }
    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        self.inner.random_bytes(buf)
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<MetricId, HostError> {
        self.inner.define_metric(kind, name)
    }
    fn increment_metric(&self, id: MetricId, delta: i64) {
        self.inner.increment_metric(id, delta)
    }
    fn record_metric(&self, id: MetricId, value: u64) {
        self.inner.record_metric(id, value)
    }
    fn call_foreign(&self, name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        use rsa::pkcs8::DecodePublicKey;
        assert_eq!(name, "verify_signature");
        self.calls.fetch_add(1, Ordering::SeqCst);
        let f = read_fields(args);
        let get = |n: u64| {
            f.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let hash = String::from_utf8(get(1)).unwrap();
        let (spki, sig, text) = (get(2), get(3), get(4));
        let ok = match self.kind {
            NativeKind::AlwaysTrue => true,
            _ => match rsa::RsaPublicKey::from_public_key_der(&spki) {
                Ok(key) => verify_rsa(&key, &hash, &sig, &text),
                Err(_) if self.kind == NativeKind::RsaOnly => false,
                Err(_) => verify_ecdsa(&spki, &hash, &sig, &text),
            },
        };
        // VerifySignatureResult { result = 1 (bool), error = 2 (string) }
        let mut out = vec![0x08, u8::from(ok)];
        if !ok {
            out.extend_from_slice(&[0x12, 3, b'b', b'a', b'd']);
        }
        Ok(Some(out))
    }
}

fn verify_rsa(key: &rsa::RsaPublicKey, hash: &str, sig: &[u8], text: &[u8]) -> bool {
    use sha2::Digest;
    match hash {
        "sha256" => key.verify(
            rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
            &sha2::Sha256::digest(text),
            sig,
        ),
        "sha384" => key.verify(
            rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
            &sha2::Sha384::digest(text),
            sig,
        ),
        "sha512" => key.verify(
            rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
            &sha2::Sha512::digest(text),
            sig,
        ),
        other => panic!("unexpected hash {other}"),
    }
    .is_ok()
}

/// ECDSA as BoringSSL's `EVP_DigestVerify` does it: the key from a DER
/// SubjectPublicKeyInfo, the signature DER-encoded, decoded here by the
/// curve crates' own parsers (strict DER). A hash that does not match the
/// curve is accepted by BoringSSL too, but meshguard never sends one.
fn verify_ecdsa(spki: &[u8], hash: &str, sig: &[u8], text: &[u8]) -> bool {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(spki) {
        assert_eq!(hash, "sha256", "ES256 is P-256 with SHA-256");
        return match p256::ecdsa::Signature::from_der(sig) {
            Ok(s) => key.verify(text, &s).is_ok(),
            Err(_) => false,
        };
    }
    if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_der(spki) {
        assert_eq!(hash, "sha384", "ES384 is P-384 with SHA-384");
        return match p384::ecdsa::Signature::from_der(sig) {
            Ok(s) => key.verify(text, &s).is_ok(),
            Err(_) => false,
        };
    }
    panic!("verify_signature got a key that is neither RSA nor P-256/P-384");
}
