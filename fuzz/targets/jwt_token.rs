//! A bearer token end to end: extraction (header, cookie, query), compact
//! JWS parsing (segments, base64url, JOSE header), claims payload, key
//! selection and signature verification (pure Rust: the fake host has no
//! `verify_signature`), time and audience checks, claims rules.
use meshguard::host::fake::FakeHost;
use meshguard::jwt::{self, TokenCache};
use meshguard::plan::Config;
use meshguard::request::Request;
use std::sync::OnceLock;

const JWKS: &str = include_str!("../../tests/fixtures/jwt/jwks.json");

fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        let doc = format!(
            r#"{{"jwt_providers": {{"p": {{"issuer": "https://issuer.test", "audiences": ["api"],
                 "algorithms": ["RS256","RS384","RS512","PS256","PS384","PS512","ES256","ES384","EdDSA","HS256","HS384","HS512"],
                 "jwks": {{"inline": {JWKS}}},
                 "from": [{{"header": "authorization", "prefix": "Bearer "}}, {{"cookie": "at"}}, {{"query": "at"}}],
                 "max_lifetime": "24h",
                 "claims_to_headers": [{{"claim": "sub", "header": "x-user"}}, {{"claim": "org.id", "header": "x-org"}}],
                 "payload_header": "x-jwt-payload"}}}},
               "routes": [{{"name": "r", "jwt": {{"providers": ["p"],
                 "claims": [{{"claim": "scope", "contains": "a"}}, {{"claim": "roles", "one_of": ["x"]}}]}}}}]}}"#
        );
        match Config::from_bytes(doc.as_bytes()) {
            Ok(c) => c,
            Err(e) => panic!("fuzz config: {e}"),
        }
    })
}

pub fn run(data: &[u8]) {
    let cfg = config();
    let host = FakeHost::new(1_700_000_000_000_000_000);
    let Some(route) = cfg.routes.first() else {
        return;
    };
    let Some(rj) = route.jwt.as_ref() else { return };
    let (where_, token) = data.split_first().unwrap_or((&0, data));
    let mut req = Request {
        method: "GET".into(),
        path: "/x".into(),
        authority: "h".into(),
        ..Default::default()
    };
    match where_ % 3 {
        0 => {
            let mut v = b"Bearer ".to_vec();
            v.extend_from_slice(token);
            req.headers.push("authorization", &v);
        }
        1 => {
            let mut v = b"a=b; at=".to_vec();
            v.extend_from_slice(token);
            req.headers.push("cookie", &v);
        }
        _ => req.path = format!("/x?at={}", String::from_utf8_lossy(token)),
    }
    let mut cache = TokenCache::default();
    let _ = jwt::authenticate(&host, &cfg.jwt_providers, rj, "r", &req, &mut cache);
    // Twice: the second time through the verified-token cache.
    let _ = jwt::authenticate(&host, &cfg.jwt_providers, rj, "r", &req, &mut cache);
    // And the parser alone, with every claims check.
    if let Ok(jws) = meshguard::jwt::jose::parse(token) {
        let p = meshguard::jwt::claims::TimePolicy {
            skew: 60,
            require_exp: false,
            max_lifetime: Some(86_400),
        };
        let _ = meshguard::jwt::claims::check_times(&jws.claims, &p, 1_700_000_000);
        let _ = meshguard::jwt::claims::audience_ok(&jws.claims, &["api".to_string()]);
    }
}
