//! Configuration validation of `jwt_providers` and route `jwt`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod jwt_support;

use jwt_support::*;
use meshguard::jwt::jwk::KeyMaterial;
use meshguard::jwt::Keys;
use serde_json::{json, Value};

fn doc(provider: Value) -> Value {
    json!({ "jwt_providers": { "main": provider }, "routes": [ { "name": "api", "jwt": { "providers": ["main"] } } ] })
}

#[test]
fn invalid_provider_configs_name_the_path() {
    let remote = |r: Value| json!({ "issuer": ISS, "jwks": { "remote": r } });
    let cases: Vec<(Value, &str)> = vec![
        (provider(json!({ "algorithms": ["RS256", "none"] })), "jwt_providers.main.algorithms[1]: expected a signing algorithm (\"none\" is never accepted"),
        (provider(json!({ "algorithms": ["RS257"] })), "jwt_providers.main.algorithms[0]: expected one of RS256"),
        (provider(json!({ "algorithms": [] })), "jwt_providers.main.algorithms: expected a non-empty array"),
        (provider(json!({ "issuer": "" })), "jwt_providers.main.issuer"),
        (provider(json!({ "audiences": [] })), "jwt_providers.main.audiences"),
        (provider(json!({ "jwks": { "inline": { "keys": [] } } })), "jwt_providers.main.jwks.inline: expected at least one key usable"),
        (provider(json!({ "jwks": { "inline": { "nokeys": 1 } } })), "jwt_providers.main.jwks.inline"),
        // Only an HMAC key, but HS* not allowed: nothing could ever verify.
        (provider(json!({ "jwks": { "inline": jwks_only(&["hs-1"]) } })), "jwt_providers.main.jwks.inline: expected at least one key usable"),
        (provider(json!({ "jwks": { "inline_string": "{not json" } })), "jwt_providers.main.jwks.inline_string: expected JWKS JSON text"),
        (provider(json!({ "jwks": { "inline_string": "{\"keys\":[{\"kty\":\"oct\",\"k\":\"AA\",\"\\u006b\":\"AB\"}]}" } })), "jwt_providers.main.jwks.inline_string: expected JWKS JSON text, got invalid JSON (keys[0]: duplicate member \"k\" at line 1 column 39)"),
        (provider(json!({ "jwks": { "inline": jwks(), "inline_string": "{}" } })), "jwt_providers.main.jwks: expected exactly one of"),
        (provider(json!({ "jwks": {} })), "jwt_providers.main.jwks: expected exactly one of"),
        (remote(json!({ "cluster": "", "path": "/j" })), "jwt_providers.main.jwks.remote.cluster"),
        (remote(json!({ "cluster": "idp", "path": "j" })), "jwt_providers.main.jwks.remote.path"),
        (remote(json!({ "cluster": "idp", "path": "/j", "timeout": "2m" })), "jwt_providers.main.jwks.remote.timeout"),
        (remote(json!({ "cluster": "idp", "path": "/j", "cache_duration": "1s" })), "jwt_providers.main.jwks.remote.cache_duration"),
        (provider(json!({ "from": [] })), "jwt_providers.main.from"),
        (provider(json!({ "from": [{ "header": "a", "query": "b" }] })), "jwt_providers.main.from[0]"),
        (provider(json!({ "clock_skew": "2h" })), "jwt_providers.main.clock_skew"),
        (provider(json!({ "max_lifetime": "0s" })), "jwt_providers.main.max_lifetime"),
        (provider(json!({ "claims_to_headers": [{ "claim": "sub", "header": "x user" }] })), "jwt_providers.main.claims_to_headers[0].header"),
        (provider(json!({ "claims_to_headers": [{ "claim": "sub", "header": ":path" }] })), "jwt_providers.main.claims_to_headers[0].header"),
        (provider(json!({ "claims_to_headers": [{ "claim": "a..b", "header": "x-a" }] })), "jwt_providers.main.claims_to_headers[0].claim"),
        (provider(json!({ "claims_to_headers": [{ "claim": "a", "header": "x-a" }, { "claim": "b", "header": "X-A" }] })), "jwt_providers.main.claims_to_headers[1].header"),
        (provider(json!({ "payload_header": "" })), "jwt_providers.main.payload_header"),
    ];
    for (p, want) in cases {
        let e = config_error(doc(p.clone()));
        assert!(e.contains(want), "{p}\n got: {e}\nwant: {want}");
    }
}

#[test]
fn invalid_route_jwt_configs() {
    let base = |route_jwt: Value| json!({ "jwt_providers": { "main": provider(json!({})) }, "routes": [ { "name": "api", "jwt": route_jwt } ] });
    let cases = [
        (
            json!({ "providers": [] }),
            "routes[0].jwt.providers: expected a non-empty array",
        ),
        (
            json!({ "providers": ["nope"] }),
            "routes[0].jwt.providers[0]",
        ),
        (
            json!({ "providers": ["main", "main"] }),
            "routes[0].jwt.providers[1]: expected a provider listed only once",
        ),
        (
            json!({ "providers": ["main"], "claims": [{ "claim": "a" }] }),
            "routes[0].jwt.claims[0]",
        ),
        (
            json!({ "providers": ["main"], "claims": [{ "claim": "a", "one_of": [] }] }),
            "routes[0].jwt.claims[0].one_of",
        ),
    ];
    for (r, want) in cases {
        let e = config_error(base(r.clone()));
        assert!(e.contains(want), "{r}\n got: {e}");
    }
    let e = config_error(json!({ "jwt_providers": { "bad name": provider(json!({})) } }));
    assert!(e.contains("jwt_providers"), "{e}");
}

#[test]
fn bad_jwks_entries_are_skipped_and_good_ones_kept() {
    let mixed: Value = serde_json::from_str(JWKS_MIXED).unwrap();
    let s = Setup::single(json!({ "jwks": { "inline": mixed } }));
    match &s.providers().providers[0].keys {
        Keys::Inline(ks) => {
            assert_eq!(ks.keys.len(), 1);
            assert_eq!(ks.keys[0].kid.as_deref(), Some("rsa-1"));
            assert!(matches!(ks.keys[0].material, KeyMaterial::Rsa { .. }));
        }
        other => panic!("{other:?}"),
    }
    allowed(&s.auth(
        &host(),
        &bearer(&tok("valid_RS256")),
        &mut Default::default(),
    ));
}

#[test]
fn inline_string_jwks_works() {
    let s = Setup::single(json!({ "jwks": { "inline_string": JWKS } }));
    allowed(&s.auth(
        &host(),
        &bearer(&tok("valid_ES384")),
        &mut Default::default(),
    ));
}

#[test]
fn hmac_only_when_listed() {
    let s = Setup::single(
        json!({ "algorithms": ["HS256"], "jwks": { "inline": jwks_only(&["hs-1"]) } }),
    );
    allowed(&s.auth(
        &host(),
        &bearer(&tok("valid_HS256")),
        &mut Default::default(),
    ));
    let out = s.auth(
        &host(),
        &bearer(&tok("valid_HS512")),
        &mut Default::default(),
    );
    assert_eq!(denial(&out), (401, "algorithm not allowed".into()));
}
