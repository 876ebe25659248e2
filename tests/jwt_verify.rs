//! Signature verification and token rejection, over the public API with
//! fixtures made by Python `cryptography` (tests/fixtures/jwt/gen.py).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod jwt_support;

use jwt_support::*;
use meshguard::jwt::verify::NativeState;
use meshguard::jwt::{AuthOutcome, TokenCache};
use serde_json::json;

fn all_algs() -> serde_json::Value {
    json!({ "algorithms": ALL_ALGS })
}

#[test]
fn every_algorithm_verifies() {
    let s = Setup::single(all_algs());
    let h = host();
    for alg in ALL_ALGS {
        let mut cache = TokenCache::default();
        let out = s.auth(&h, &bearer(&tok(&format!("valid_{alg}"))), &mut cache);
        let (claims, _) = allowed(&out);
        assert_eq!(claims["sub"], "user-1", "{alg}");
        assert_eq!(
            cache.stats.verify.signature_checks, 1,
            "{alg}: exactly one key tried"
        );
    }
}

#[test]
fn every_algorithm_rejects_a_tampered_signature() {
    let s = Setup::single(all_algs());
    let h = host();
    for alg in ALL_ALGS {
        let t = tok(&format!("valid_{alg}"));
        let (head, sig) = t.rsplit_once('.').unwrap();
        // Flip one bit of the first signature byte (the 2nd base64 char keeps padding bits valid).
        let mut sig: Vec<u8> = sig.bytes().collect();
        sig[0] = if sig[0] == b'A' { b'B' } else { b'A' };
        let bad = format!("{head}.{}", String::from_utf8(sig).unwrap());
        let out = s.auth(&h, &bearer(&bad), &mut TokenCache::default());
        assert_eq!(denial(&out), (401, "invalid signature".into()), "{alg}");
    }
}

#[test]
fn default_allowlist_is_asymmetric_only() {
    let s = Setup::single(json!({}));
    let h = host();
    for alg in ALL_ALGS {
        let out = s.auth(
            &h,
            &bearer(&tok(&format!("valid_{alg}"))),
            &mut TokenCache::default(),
        );
        if alg.starts_with("HS") {
            assert_eq!(denial(&out), (401, "algorithm not allowed".into()), "{alg}");
        } else {
            allowed(&out);
        }
    }
}

#[test]
fn allowlist_restricts_algorithms() {
    let s = Setup::single(json!({ "algorithms": ["ES256"] }));
    let h = host();
    allowed(&s.auth(&h, &bearer(&tok("valid_ES256")), &mut TokenCache::default()));
    let out = s.auth(&h, &bearer(&tok("valid_RS256")), &mut TokenCache::default());
    assert_eq!(denial(&out), (401, "algorithm not allowed".into()));
}

#[test]
fn rejection_reasons() {
    let all = all_algs();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("expired", json!({}), "token expired"),
        ("nbf_future", json!({}), "token not yet valid"),
        ("iat_future", json!({}), "token issued in the future"),
        ("bad_iss", json!({}), "issuer not accepted"),
        ("bad_aud", json!({}), "audience not accepted"),
        ("no_aud", json!({}), "audience not accepted"),
        ("tampered", json!({}), "invalid signature"),
        ("tampered_payload", json!({}), "invalid signature"),
        ("alg_none", all.clone(), "unsupported algorithm"),
        // HS256 keyed with the RSA public key bytes: RSA keys are never HMAC secrets.
        ("alg_confusion", all.clone(), "no matching key"),
        ("alg_confusion_der", all.clone(), "no matching key"),
        ("alg_confusion", json!({}), "algorithm not allowed"),
        ("crit", json!({}), "crit header parameter not supported"),
        ("unknown_kid", json!({}), "unknown key id"),
        ("wrong_key_kid", json!({}), "invalid signature"),
        ("es256_with_rsa_kid", json!({}), "no matching key"),
        ("no_exp", json!({}), "missing exp claim"),
        ("big_claims", json!({}), "token too large"),
        (
            "valid_RS256",
            json!({ "max_lifetime": "24h" }),
            "token lifetime exceeds max_lifetime",
        ),
        (
            "no_iat_far_exp",
            json!({ "max_lifetime": "24h" }),
            "token lifetime exceeds max_lifetime",
        ),
        (
            "valid_RS256",
            json!({ "audiences": ["other-api"] }),
            "audience not accepted",
        ),
        (
            "valid_RS256",
            json!({ "issuer": "https://issuer.test/" }),
            "issuer not accepted",
        ),
    ];
    let h = host();
    for (name, extra, want) in cases {
        let s = Setup::single(extra.clone());
        let out = s.auth(&h, &bearer(&tok(name)), &mut TokenCache::default());
        assert_eq!(denial(&out), (401, want.to_string()), "{name} with {extra}");
    }
}

#[test]
fn malformed_tokens_are_rejected_without_panicking() {
    let s = Setup::single(json!({}));
    let h = host();
    let valid = tok("valid_RS256");
    let parts: Vec<&str> = valid.split('.').collect();
    let cases = [
        ("abc".to_string(), "malformed token"),
        (format!("{}.{}", parts[0], parts[1]), "malformed token"),
        (format!("{valid}.x"), "malformed token"),
        (format!("{}.{}.", parts[0], parts[1]), "malformed signature"),
        (
            format!("{}x.{}.{}", parts[0], parts[1], parts[2]),
            "malformed token header",
        ),
        (
            format!("{}.{}!.{}", parts[0], parts[1], parts[2]),
            "malformed token payload",
        ),
        (
            format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
            "malformed signature",
        ),
        ("a".repeat(8 * 1024 + 1), "token too large"),
        ("é.é.é".to_string(), "malformed token header"),
    ];
    for (t, want) in cases {
        let out = s.auth(&h, &bearer(&t), &mut TokenCache::default());
        assert_eq!(denial(&out), (401, want.to_string()), "{t:.40}");
    }
}

#[test]
fn accepted_variations() {
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("crit_empty", json!({})),
        ("aud_array", json!({})),
        ("no_aud", json!({ "audiences": null })),
        ("no_kid_RS256", json!({})),
        ("no_kid_ES256", json!({})),
        ("no_exp", json!({ "require_exp": false })),
        ("short_lived", json!({ "max_lifetime": "2h" })),
        ("bad_aud", json!({ "audiences": ["other", "api"] })),
    ];
    let h = host();
    for (name, extra) in cases {
        let mut p = provider(extra.clone());
        if extra.get("audiences").is_some_and(|a| a.is_null()) {
            p.as_object_mut().unwrap().remove("audiences");
        }
        let s = Setup::new(json!({ "main": p }), json!({ "providers": ["main"] }));
        let out = s.auth(&h, &bearer(&tok(name)), &mut TokenCache::default());
        assert!(
            matches!(out, AuthOutcome::Allowed { .. }),
            "{name} with {extra}: {out:?}"
        );
    }
}

#[test]
fn token_without_kid_tries_only_compatible_keys() {
    // no_kid_RS256 is signed by rsa-2: rsa-1 is tried first, then rsa-2; the
    // EC, OKP and oct keys are never tried.
    let s = Setup::single(all_algs());
    let mut cache = TokenCache::default();
    allowed(&s.auth(&host(), &bearer(&tok("no_kid_RS256")), &mut cache));
    assert_eq!(cache.stats.verify.signature_checks, 2);
}

#[test]
fn clock_skew_applies_to_exp() {
    // short_lived: iat 1800000000, exp 1800003600.
    let exp = 1_800_003_600;
    let cases = [
        (json!({}), exp + 59, true),
        (json!({}), exp + 60, false),
        (json!({ "clock_skew": "0s" }), exp - 1, true),
        (json!({ "clock_skew": "0s" }), exp, false),
        (json!({ "clock_skew": "5m" }), exp + 299, true),
    ];
    for (extra, now, ok) in cases {
        let s = Setup::single(extra.clone());
        let h = host();
        h.set_now(now * SEC);
        let out = s.auth(&h, &bearer(&tok("short_lived")), &mut TokenCache::default());
        if ok {
            allowed(&out);
        } else {
            assert_eq!(
                denial(&out),
                (401, "token expired".into()),
                "{extra} at {now}"
            );
        }
    }
}

#[test]
fn rsa_falls_back_to_pure_rust_when_the_host_lacks_verify_signature() {
    let s = Setup::single(json!({}));
    let mut cache = TokenCache::default();
    assert_eq!(cache.native().rsa, NativeState::Unknown);
    allowed(&s.auth(&host(), &bearer(&tok("valid_RS256")), &mut cache));
    assert_eq!(cache.native().rsa, NativeState::Unavailable);
    assert_eq!(cache.stats.verify.native_calls, 0);
    allowed(&s.auth(&host(), &bearer(&tok("valid_RS512")), &mut cache));
}

#[test]
fn rsa_uses_native_verify_signature_when_available() {
    let s = Setup::single(json!({}));
    let h = NativeHost::new();
    let mut cache = TokenCache::default();
    for name in ["valid_RS256", "valid_RS384", "valid_RS512"] {
        allowed(&s.auth(&h, &bearer(&tok(name)), &mut cache));
    }
    assert_eq!(h.calls(), 3);
    assert_eq!(cache.native().rsa, NativeState::Available);
    // A bad signature is rejected by the native answer, without a pure-Rust retry.
    let out = s.auth(&h, &bearer(&tok("tampered")), &mut cache);
    assert_eq!(denial(&out), (401, "invalid signature".into()));
    assert_eq!(h.calls(), 4);
    // PSS never goes native (Envoy's function is PKCS#1 v1.5 only).
    allowed(&s.auth(&h, &bearer(&tok("valid_PS256")), &mut cache));
    assert_eq!(h.calls(), 4);
}

/// `token` with one character of its signature changed (mid-signature, so
/// every base64url bit of it is significant).
fn with_bad_signature(token: &str) -> String {
    let dot = token.rfind('.').unwrap();
    let at = dot + (token.len() - dot) / 2;
    let c = token.as_bytes()[at];
    let mut t = token.to_string();
    t.replace_range(at..=at, if c == b'A' { "B" } else { "A" });
    t
}

#[test]
fn ecdsa_uses_native_verify_signature_after_its_self_test() {
    let s = Setup::single(all_algs());
    let h = NativeHost::new();
    let mut cache = TokenCache::default();
    allowed(&s.auth(&h, &bearer(&tok("valid_ES256")), &mut cache));
    // The self-test (good signature, altered message), then the token.
    assert_eq!(h.calls(), 3);
    assert_eq!(cache.native().p256, NativeState::Available);
    assert_eq!(cache.native().p384, NativeState::Unknown);
    allowed(&s.auth(&h, &bearer(&tok("valid_ES384")), &mut cache));
    assert_eq!(h.calls(), 6);
    assert_eq!(cache.native().p384, NativeState::Available);
    assert_eq!(cache.stats.verify.native_calls, 2);
    // Later tokens: one call each, bad signatures refused by the host's
    // answer alone.
    for name in ["valid_ES256", "valid_ES384"] {
        let out = s.auth(&h, &bearer(&with_bad_signature(&tok(name))), &mut cache);
        assert_eq!(denial(&out), (401, "invalid signature".into()), "{name}");
    }
    assert_eq!(h.calls(), 8);
    assert_eq!(cache.stats.verify.native_calls, 4);
}

#[test]
fn ecdsa_stays_in_wasm_when_the_host_cannot_verify_it() {
    // A host whose function knows RSA only says `false` to the self-test:
    // ES tokens are still verified (in wasm), RSA still goes native.
    let s = Setup::single(all_algs());
    let h = NativeHost::with(NativeKind::RsaOnly);
    let mut cache = TokenCache::default();
    for name in ["valid_ES256", "valid_ES384", "valid_ES256"] {
        allowed(&s.auth(&h, &bearer(&tok(name)), &mut cache));
    }
    assert_eq!(h.calls(), 2 + 2, "one self-test per curve, nothing after");
    assert_eq!(cache.native().p256, NativeState::Unavailable);
    assert_eq!(cache.native().p384, NativeState::Unavailable);
    let out = s.auth(
        &h,
        &bearer(&with_bad_signature(&tok("valid_ES256"))),
        &mut cache,
    );
    assert_eq!(denial(&out), (401, "invalid signature".into()));
    allowed(&s.auth(&h, &bearer(&tok("valid_RS256")), &mut cache));
    assert_eq!(cache.native().rsa, NativeState::Available);
}

#[test]
fn a_host_that_accepts_everything_is_not_trusted_with_ecdsa() {
    let s = Setup::single(all_algs());
    let h = NativeHost::with(NativeKind::AlwaysTrue);
    let mut cache = TokenCache::default();
    for name in ["valid_ES256", "valid_ES384"] {
        let out = s.auth(&h, &bearer(&with_bad_signature(&tok(name))), &mut cache);
        assert_eq!(denial(&out), (401, "invalid signature".into()), "{name}");
        allowed(&s.auth(&h, &bearer(&tok(name)), &mut cache));
    }
    assert_eq!(cache.native().p256, NativeState::Unavailable);
    assert_eq!(cache.native().p384, NativeState::Unavailable);
    assert_eq!(cache.stats.verify.native_calls, 0);
}

#[test]
fn ecdsa_falls_back_to_wasm_when_the_host_lacks_verify_signature() {
    let s = Setup::single(all_algs());
    let mut cache = TokenCache::default();
    allowed(&s.auth(&host(), &bearer(&tok("valid_ES256")), &mut cache));
    allowed(&s.auth(&host(), &bearer(&tok("valid_ES384")), &mut cache));
    assert_eq!(cache.native().p256, NativeState::Unavailable);
    assert_eq!(cache.native().p384, NativeState::Unavailable);
    assert_eq!(cache.stats.verify.native_calls, 0);
}

#[test]
fn denials_follow_rfc6750_and_never_echo_the_token() {
    let s = Setup::single(json!({}));
    let t = tok("expired");
    match s.auth(&host(), &bearer(&t), &mut TokenCache::default()) {
        AuthOutcome::Denied {
            status,
            www_authenticate,
            body,
        } => {
            assert_eq!(status, 401);
            assert_eq!(
                www_authenticate,
                r#"Bearer realm="api", error="invalid_token", error_description="token expired""#
            );
            assert_eq!(
                body,
                r#"{"error":"invalid_token","error_description":"token expired"}"#
            );
            for part in t.split('.') {
                assert!(!body.contains(part) && !www_authenticate.contains(part));
            }
        }
        other => panic!("{other:?}"),
    }
}

/// The pure-Rust ECDSA path (hosts without `verify_signature`) refuses the
/// degenerate and out-of-range signatures an attacker builds by hand:
/// r = 0, s = 0, r or s equal to or above the group order n. A high-s
/// signature (n - s: the same signature, negated) is valid ECDSA and valid
/// JWS (RFC 7518 does not ask for low s), and Envoy's native check accepts
/// it too: both paths agree, and the verified-token cache keys by the
/// token's bytes, so the twin is simply another token.
#[test]
fn pure_rust_ecdsa_refuses_degenerate_and_out_of_range_signatures() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let orders: [(&str, &str); 2] = [
        (
            "valid_ES256",
            "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551",
        ),
        (
            "valid_ES384",
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        ),
    ];
    let s = Setup::single(all_algs());
    for (name, n_hex) in orders {
        let n: Vec<u8> = (0..n_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&n_hex[i..i + 2], 16).unwrap())
            .collect();
        let w = n.len();
        let good = tok(name);
        let dot = good.rfind('.').unwrap();
        let sig = b64.decode(&good[dot + 1..]).unwrap();
        assert_eq!(sig.len(), 2 * w);
        let (r, sv) = sig.split_at(w);
        let with = |r: &[u8], s: &[u8]| format!("{}.{}", &good[..dot], b64.encode([r, s].concat()));
        let zero = vec![0u8; w];
        let ones = vec![0xffu8; w];
        // n - s, big-endian.
        let mut high = vec![0u8; w];
        let mut borrow = 0i16;
        for i in (0..w).rev() {
            let d = n[i] as i16 - sv[i] as i16 - borrow;
            borrow = i16::from(d < 0);
            high[i] = d.rem_euclid(256) as u8;
        }
        let refused: [(&str, String); 6] = [
            ("r = 0", with(&zero, sv)),
            ("s = 0", with(r, &zero)),
            ("r = s = 0", with(&zero, &zero)),
            ("r = n", with(&n, sv)),
            ("s = n", with(r, &n)),
            ("r, s > n", with(&ones, &ones)),
        ];
        for (what, t) in refused {
            // No host function: the pure-Rust path decides.
            let out = s.auth(&host(), &bearer(&t), &mut TokenCache::default());
            assert_eq!(denial(&out).0, 401, "{name}: {what}");
        }
        let mut cache = TokenCache::default();
        allowed(&s.auth(&host(), &bearer(&with(r, &high)), &mut cache));
        assert_eq!(
            cache.stats.verify.native_calls, 0,
            "{name}: decided in Rust"
        );
    }
}
