//! Proves the JWT crypto in wasm: run with wasm-bindgen-test in Node
//! (`CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
//! cargo test --target wasm32-unknown-unknown --test wasm_jwt`).
#![cfg(all(target_arch = "wasm32", target_os = "unknown"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshguard::host::fake::FakeHost;
use meshguard::jwt::{authenticate, AuthOutcome, TokenCache};
use meshguard::plan::Config;
use meshguard::request::Request;
use wasm_bindgen_test::wasm_bindgen_test;

const TOKENS: &str = include_str!("fixtures/jwt/tokens.json");
const JWKS: &str = include_str!("fixtures/jwt/jwks.json");

/// `Ok` when the token is allowed, else the denial's status (0 for
/// anything else) and the outcome as text.
type Verdict = Result<(), (u32, String)>;

fn check(name: &str) -> Verdict {
    let tokens: serde_json::Value = serde_json::from_str(TOKENS).unwrap();
    check_token(tokens[name].as_str().unwrap())
}

fn check_token(token: &str) -> Verdict {
    let doc = format!(
        r#"{{"jwt_providers":{{"main":{{"issuer":"https://issuer.test","audiences":["api"],
            "algorithms":["RS256","PS256","ES256","ES384","EdDSA","HS256"],"jwks":{{"inline":{JWKS}}}}}}},
            "routes":[{{"name":"api","jwt":{{"providers":["main"]}}}}]}}"#
    );
    let cfg = Config::from_bytes(doc.as_bytes()).unwrap();
    let req = Request {
        method: "GET".into(),
        path: "/".into(),
        headers: vec![(
            "authorization".into(),
            format!("Bearer {token}").into_bytes(),
        )]
        .into(),
        ..Default::default()
    };
    let host = FakeHost::new(1_800_000_000 * 1_000_000_000);
    let route = cfg.routes[0].jwt.as_ref().unwrap();
    let out = authenticate(
        &host,
        &cfg.jwt_providers,
        route,
        "api",
        &req,
        &mut TokenCache::default(),
    );
    match out {
        AuthOutcome::Allowed { .. } => Ok(()),
        AuthOutcome::Denied { status, .. } => Err((status, format!("{out:?}"))),
        AuthOutcome::KeysPending { .. } => Err((0, format!("{out:?}"))),
    }
}

fn assert_allowed(name: &str) {
    let out = check(name);
    assert!(out.is_ok(), "{name}: {out:?}");
}

#[wasm_bindgen_test]
fn rs256_verifies_in_wasm() {
    assert_allowed("valid_RS256");
}

#[wasm_bindgen_test]
fn ps256_verifies_in_wasm() {
    assert_allowed("valid_PS256");
}

#[wasm_bindgen_test]
fn es256_verifies_in_wasm() {
    assert_allowed("valid_ES256");
}

#[wasm_bindgen_test]
fn es384_verifies_in_wasm() {
    assert_allowed("valid_ES384");
}

/// The ES256 token with one signature byte changed: `ecdsa` (no host
/// `verify_signature` here) refuses it.
#[wasm_bindgen_test]
fn altered_es256_signature_is_rejected_in_wasm() {
    let tokens: serde_json::Value = serde_json::from_str(TOKENS).unwrap();
    let token = tokens["valid_ES256"].as_str().unwrap();
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut sig = sig.as_bytes().to_vec();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    let altered = format!("{head}.{}", String::from_utf8(sig).unwrap());
    assert!(matches!(check_token(&altered), Err((401, _))));
}

#[wasm_bindgen_test]
fn eddsa_verifies_in_wasm() {
    assert_allowed("valid_EdDSA");
}

#[wasm_bindgen_test]
fn hs256_verifies_in_wasm() {
    assert_allowed("valid_HS256");
}

#[wasm_bindgen_test]
fn tampered_rs256_is_rejected_in_wasm() {
    assert!(matches!(check("tampered"), Err((401, _))));
}

/// The big-number arithmetic on wasm's 32-bit limbs (the native tests run
/// the 64-bit ones): every RSA and EC key of the differential fixture
/// (RSA 2048..4096 bits, exponents 3 to 2^33 - 1; P-256, P-384; signed by
/// Python `cryptography`, with hand-made bad encodings) gives the
/// fixture's verdict in pure Rust, and a valid signature with one bit
/// flipped is refused.
#[wasm_bindgen_test]
fn differential_fixture_verdicts_hold_on_32_bit_limbs() {
    use meshguard::jwt::jose::{b64url_decode, Alg};
    use meshguard::jwt::jwk::parse_jwk;
    use meshguard::jwt::verify::{verify, NativePaths, NativeState, VerifyStats};
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/jwt/differential.json")).unwrap();
    let host = FakeHost::new(0);
    let mut native = NativePaths {
        rsa: NativeState::Unavailable,
        p256: NativeState::Unavailable,
        p384: NativeState::Unavailable,
    };
    let mut stats = VerifyStats::default();
    let (mut good, mut bad) = (0, 0);
    let keys = doc["rsa"].as_array().unwrap().iter();
    for k in keys.chain(doc["ec"].as_array().unwrap()) {
        let key = parse_jwk(k).unwrap();
        for c in k["cases"].as_array().unwrap() {
            let alg = Alg::from_name(c["alg"].as_str().unwrap()).unwrap();
            let msg = c["msg"].as_str().unwrap().as_bytes();
            let sig = b64url_decode(c["sig"].as_str().unwrap().as_bytes()).unwrap();
            let want = c["valid"].as_bool().unwrap();
            let what = format!("{} {} {}", k["kty"], c["alg"], c["what"]);
            let got = verify(&host, &mut native, &mut stats, alg, &key, msg, &sig);
            assert_eq!(got, want, "{what}");
            if want {
                good += 1;
                let mut flipped = sig.clone();
                flipped[sig.len() / 2] ^= 0x04;
                assert!(
                    !verify(&host, &mut native, &mut stats, alg, &key, msg, &flipped),
                    "{what}, one bit flipped"
                );
            } else {
                bad += 1;
            }
        }
    }
    assert_eq!(stats.native_calls, 0);
    assert!(good >= 50 && bad >= 50, "{good} good, {bad} bad");
}
