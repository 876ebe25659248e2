//! `authenticate`: extraction, header operations, claim rules, several
//! providers, the verified-token cache and metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod jwt_support;

use base64::Engine;
use jwt_support::*;
use meshguard::jwt::{AuthOutcome, HeaderOp, JwtMetrics, TokenCache};
use serde_json::json;

fn rm(h: &str) -> HeaderOp<'_> {
    HeaderOp::Remove(h.into())
}
fn set<'a>(h: &'a str, v: &str) -> HeaderOp<'a> {
    HeaderOp::Set(h.into(), v.as_bytes().to_vec())
}

#[test]
fn missing_token_is_401_with_realm_only() {
    let s = Setup::single(json!({}));
    match s.auth(&host(), &req("/", &[]), &mut TokenCache::default()) {
        AuthOutcome::Denied {
            status,
            www_authenticate,
            body,
        } => {
            assert_eq!(status, 401);
            assert_eq!(www_authenticate, r#"Bearer realm="api""#);
            assert!(body.contains("missing_token"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_scheme_counts_as_missing() {
    let s = Setup::single(json!({}));
    let out = s.auth(
        &host(),
        &req("/", &[("authorization", "Basic dXNlcjpwdw==")]),
        &mut TokenCache::default(),
    );
    assert!(
        matches!(out, AuthOutcome::Denied { ref www_authenticate, .. } if www_authenticate == r#"Bearer realm="api""#)
    );
}

#[test]
fn allow_missing_passes_without_token_but_not_with_a_bad_one() {
    let s = Setup::new(
        json!({ "main": provider(json!({ "claims_to_headers": [{ "claim": "sub", "header": "x-user" }] })) }),
        json!({ "providers": ["main"], "allow_missing": true }),
    );
    let out = s.auth(
        &host(),
        &req("/", &[("x-user", "spoofed")]),
        &mut TokenCache::default(),
    );
    assert_eq!(
        out,
        AuthOutcome::Allowed {
            claims: None,
            provider: None,
            cache_hit: false,
            header_ops: vec![]
        }
    );
    let out = s.auth(
        &host(),
        &bearer(&tok("expired")),
        &mut TokenCache::default(),
    );
    assert_eq!(denial(&out), (401, "token expired".into()));
}

#[test]
fn extraction_follows_the_from_list_in_order() {
    let s = Setup::single(json!({ "from": [
        { "header": "x-token" },
        { "header": "authorization", "prefix": "JWT " },
        { "cookie": "at" },
        { "query": "access_token" }
    ] }));
    let good = tok("valid_ES256");
    let bad = tok("expired");
    type Case = (String, Vec<(String, String)>, bool);
    let cases: Vec<Case> = vec![
        ("/".into(), vec![("x-token".into(), good.clone())], true),
        (
            "/".into(),
            vec![("authorization".into(), format!("jwt {good}"))],
            true,
        ),
        (
            "/".into(),
            vec![("authorization".into(), format!("Bearer {good}"))],
            false,
        ),
        (
            "/".into(),
            vec![("cookie".into(), format!("a=1; at={good}"))],
            true,
        ),
        (format!("/x?a=1&access_token={good}"), vec![], true),
        // Earlier location wins, even when a later one holds a valid token.
        (
            format!("/x?access_token={good}"),
            vec![("cookie".into(), format!("at={bad}"))],
            false,
        ),
        (
            "/".into(),
            vec![
                ("cookie".into(), format!("at={good}")),
                ("x-token".into(), bad.clone()),
            ],
            false,
        ),
    ];
    for (path, headers, ok) in cases {
        let hs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let out = s.auth(&host(), &req(&path, &hs), &mut TokenCache::default());
        assert_eq!(
            matches!(out, AuthOutcome::Allowed { .. }),
            ok,
            "{path} {headers:?}: {out:?}"
        );
    }
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    let s = Setup::single(json!({}));
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = req(
            "/",
            &[("authorization", &format!("{scheme} {}", tok("valid_EdDSA")))],
        );
        allowed(&s.auth(&host(), &r, &mut TokenCache::default()));
    }
}

#[test]
fn claims_become_headers_and_spoofed_copies_are_removed() {
    let s = Setup::single(json!({
        "claims_to_headers": [
            { "claim": "sub", "header": "x-user" },
            { "claim": "org.id", "header": "X-Org" },
            { "claim": "org.tier", "header": "x-tier" },
            { "claim": "roles", "header": "x-roles" },
            { "claim": "email_verified", "header": "x-verified" },
            { "claim": "absent", "header": "x-absent" }
        ],
        "payload_header": "x-jwt-payload"
    }));
    let t = tok("valid_RS256");
    let r = req(
        "/",
        &[
            ("authorization", &format!("Bearer {t}")),
            ("x-user", "admin"),
            ("x-absent", "spoofed"),
            ("x-jwt-payload", "spoofed"),
        ],
    );
    let (_, ops) = allowed(&s.auth(&host(), &r, &mut TokenCache::default()));
    let payload = t.split('.').nth(1).unwrap();
    assert_eq!(
        ops,
        vec![
            rm("authorization"),
            set("x-user", "user-1"),
            set("x-org", "acme"),
            set("x-tier", "2"),
            set("x-roles", "admin,dev"),
            set("x-verified", "true"),
            set("x-jwt-payload", payload),
        ]
    );
    // The payload header decodes to the verified claims.
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
    assert_eq!(v["iss"], ISS);
}

#[test]
fn claim_values_with_control_characters_are_not_forwarded() {
    let s = Setup::single(json!({ "claims_to_headers": [{ "claim": "sub", "header": "x-user" }] }));
    let (_, ops) = allowed(&s.auth(
        &host(),
        &bearer(&tok("claim_injection")),
        &mut TokenCache::default(),
    ));
    assert_eq!(ops, vec![rm("authorization")]);
}

#[test]
fn forward_true_keeps_the_token() {
    let s = Setup::single(json!({ "forward": true }));
    let (_, ops) = allowed(&s.auth(
        &host(),
        &bearer(&tok("valid_RS256")),
        &mut TokenCache::default(),
    ));
    assert!(ops.is_empty(), "{ops:?}");
}

#[test]
fn token_removal_from_cookie_and_query() {
    let s = Setup::single(json!({ "from": [{ "cookie": "at" }, { "query": "access_token" }] }));
    let t = tok("valid_ES384");
    let (_, ops) = allowed(&s.auth(
        &host(),
        &req("/", &[("cookie", &format!("a=1; at={t}; b=2"))]),
        &mut TokenCache::default(),
    ));
    assert_eq!(ops, vec![set("cookie", "a=1; b=2")]);
    let (_, ops) = allowed(&s.auth(
        &host(),
        &req(&format!("/p?x=1&access_token={t}"), &[]),
        &mut TokenCache::default(),
    ));
    assert_eq!(ops, vec![set(":path", "/p?x=1")]);
}

#[test]
fn route_claim_rules() {
    let rules = |claims: serde_json::Value| {
        Setup::new(
            json!({ "main": provider(json!({})) }),
            json!({ "providers": ["main"], "claims": claims }),
        )
    };
    let cases = [
        (
            json!([{ "claim": "scope", "contains": "orders:write" }]),
            "valid_RS256",
            None,
        ),
        (
            json!([{ "claim": "scope", "contains": "orders:write" }]),
            "scope_read_only",
            Some("claim scope requirement not met"),
        ),
        (
            json!([{ "claim": "roles", "contains": "admin" }, { "claim": "org.id", "equals": "acme" }]),
            "valid_RS256",
            None,
        ),
        (
            json!([{ "claim": "roles", "contains": "admin" }]),
            "scope_read_only",
            Some("claim roles requirement not met"),
        ),
        (
            json!([{ "claim": "email_verified", "equals": true }]),
            "scope_read_only",
            Some("claim email_verified requirement not met"),
        ),
        (
            json!([{ "claim": "org.tier", "one_of": [1, 2] }]),
            "valid_RS256",
            None,
        ),
        (
            json!([{ "claim": "nope", "one_of": ["x"] }]),
            "valid_RS256",
            Some("claim nope requirement not met"),
        ),
    ];
    for (claims, name, want) in cases {
        let jwt = rules(claims.clone());
        let out = jwt.auth(&host(), &bearer(&tok(name)), &mut TokenCache::default());
        match want {
            None => {
                allowed(&out);
            }
            Some(reason) => {
                assert_eq!(denial(&out), (403, reason.to_string()), "{claims} {name}");
                match out {
                    AuthOutcome::Denied {
                        www_authenticate, ..
                    } => {
                        assert!(
                            www_authenticate.contains(r#"error="insufficient_scope""#),
                            "{www_authenticate}"
                        )
                    }
                    _ => unreachable!(),
                }
            }
        }
    }
}

fn two_providers() -> Setup {
    let partner_jwks: serde_json::Value = serde_json::from_str(JWKS_PARTNER).unwrap();
    Setup::new(
        json!({
            "corp": provider(json!({ "claims_to_headers": [{ "claim": "sub", "header": "x-user" }] })),
            "partner": { "issuer": PARTNER, "jwks": { "inline": partner_jwks },
                         "claims_to_headers": [{ "claim": "sub", "header": "x-partner-user" }] }
        }),
        json!({ "providers": ["corp", "partner"] }),
    )
}

#[test]
fn any_listed_provider_may_accept_chosen_by_issuer() {
    let s = two_providers();
    let partner_idx = s
        .providers()
        .names
        .iter()
        .position(|n| n == "partner")
        .unwrap();
    let mut cache = TokenCache::default();
    let out = s.auth(&host(), &bearer(&tok("partner_ES256")), &mut cache);
    match &out {
        AuthOutcome::Allowed {
            provider,
            header_ops,
            ..
        } => {
            assert_eq!(*provider, Some(partner_idx));
            assert_eq!(
                header_ops,
                &vec![rm("authorization"), set("x-partner-user", "p-7")]
            );
        }
        other => panic!("{other:?}"),
    }
    // Only the partner provider's key was tried: the issuer picked it.
    assert_eq!(cache.stats.verify.signature_checks, 1);
    allowed(&s.auth(&host(), &bearer(&tok("valid_RS256")), &mut cache));
    let out = s.auth(&host(), &bearer(&tok("bad_iss")), &mut cache);
    assert_eq!(denial(&out), (401, "issuer not accepted".into()));
}

#[test]
fn cache_hit_skips_signature_verification() {
    let s = Setup::single(json!({}));
    let h = host();
    let mut cache = TokenCache::default();
    let r = bearer(&tok("valid_PS512"));
    let first = s.auth(&h, &r, &mut cache);
    assert!(matches!(
        first,
        AuthOutcome::Allowed {
            cache_hit: false,
            ..
        }
    ));
    assert_eq!(cache.stats.verify.signature_checks, 1);
    for _ in 0..5 {
        let again = s.auth(&h, &r, &mut cache);
        assert!(
            matches!(
                again,
                AuthOutcome::Allowed {
                    cache_hit: true,
                    ..
                }
            ),
            "{again:?}"
        );
    }
    assert_eq!(cache.stats.verify.signature_checks, 1);
    assert_eq!((cache.stats.hits, cache.stats.misses), (5, 1));
    // Header operations are still computed on a hit.
    assert_eq!(
        allowed(&s.auth(&h, &r, &mut cache)).1,
        vec![rm("authorization")]
    );
}

#[test]
fn cached_tokens_still_face_each_routes_claim_rules_and_expiry() {
    let open = Setup::single(json!({}));
    let strict = Setup::new(
        json!({ "main": provider(json!({})) }),
        json!({ "providers": ["main"], "claims": [{ "claim": "roles", "contains": "admin" }] }),
    );
    let h = host();
    let mut cache = TokenCache::default();
    let r = bearer(&tok("scope_read_only"));
    allowed(&open.auth(&h, &r, &mut cache));
    assert_eq!(denial(&strict.auth(&h, &r, &mut cache)).0, 403);
    assert_eq!(cache.stats.hits, 1);

    // short_lived expires at 1800003600: the cache entry ends at exp.
    let r = bearer(&tok("short_lived"));
    h.set_now(1_800_003_000 * SEC);
    allowed(&open.auth(&h, &r, &mut cache));
    h.set_now(1_800_003_700 * SEC);
    assert_eq!(
        denial(&open.auth(&h, &r, &mut cache)),
        (401, "token expired".into())
    );
}

#[test]
fn a_cached_token_is_not_accepted_for_a_provider_the_route_does_not_list() {
    let s = two_providers();
    let partner_only = Setup::new(
        json!({
            "corp": provider(json!({})),
            "partner": { "issuer": PARTNER, "jwks": { "inline": serde_json::from_str::<serde_json::Value>(JWKS_PARTNER).unwrap() } }
        }),
        json!({ "providers": ["partner"] }),
    );
    let h = host();
    let mut cache = TokenCache::default();
    let r = bearer(&tok("valid_RS256"));
    allowed(&s.auth(&h, &r, &mut cache));
    assert_eq!(
        denial(&partner_only.auth(&h, &r, &mut cache)),
        (401, "issuer not accepted".into())
    );
}

#[test]
fn metrics_count_outcomes_per_route() {
    let s = Setup::single(json!({}));
    let h = host();
    let m = JwtMetrics::define(&h, "api");
    let mut cache = TokenCache::default();
    for r in [
        bearer(&tok("valid_ES256")),
        bearer(&tok("valid_ES256")),
        bearer(&tok("expired")),
        req("/", &[]),
    ] {
        let out = s.auth(&h, &r, &mut cache);
        m.record(&h, &out);
    }
    assert_eq!(h.metric("meshguard.jwt.api.allowed"), Some(2));
    assert_eq!(h.metric("meshguard.jwt.api.cache_hit"), Some(1));
    assert_eq!(h.metric("meshguard.jwt.api.denied"), Some(2));
    assert_eq!(h.metric("meshguard.jwt.api.keys_pending"), Some(0));
}

/// Issue: unverified tokens must never reach the upstream beside a
/// verified one (security F1).
#[test]
fn a_forged_token_in_another_location_never_reaches_the_upstream() {
    let partner_jwks: serde_json::Value = serde_json::from_str(JWKS_PARTNER).unwrap();
    let s = Setup::new(
        json!({
            "a": provider(json!({ "from": [
                { "header": "authorization", "prefix": "Bearer " },
                { "cookie": "access_token" }
            ] })),
            "b": { "issuer": PARTNER, "jwks": { "inline": partner_jwks },
                   "from": [{ "cookie": "session" }] }
        }),
        json!({ "providers": ["a", "b"] }),
    );
    let forged = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJhIiwic3ViIjoiYWRtaW4ifQ.";
    // A forged bearer beside b's valid session cookie: b accepts, and the
    // forged Authorization is removed with the cookie.
    let r = req(
        "/",
        &[
            ("authorization", &format!("Bearer {forged}")),
            (
                "cookie",
                &format!("session={}; theme=dark", tok("partner_ES256")),
            ),
        ],
    );
    let (_, ops) = allowed(&s.auth(&host(), &r, &mut TokenCache::default()));
    assert_eq!(ops, vec![rm("authorization"), set("cookie", "theme=dark")]);
    // A valid header beside a forged cookie of the same provider.
    let r = req(
        "/",
        &[
            ("authorization", &format!("Bearer {}", tok("valid_RS256"))),
            ("cookie", &format!("access_token={forged}")),
        ],
    );
    let (_, ops) = allowed(&s.auth(&host(), &r, &mut TokenCache::default()));
    assert_eq!(ops, vec![rm("authorization"), rm("cookie")]);
}

#[test]
fn forward_true_forwards_only_the_verified_token() {
    let s = Setup::single(json!({ "forward": true, "from": [
        { "header": "authorization", "prefix": "Bearer " },
        { "query": "access_token" }
    ] }));
    let good = tok("valid_RS256");
    let r = req(
        "/p?access_token=forged&x=1",
        &[
            ("authorization", &format!("Bearer {good}")),
            ("authorization", "Bearer forged"),
        ],
    );
    let (_, ops) = allowed(&s.auth(&host(), &r, &mut TokenCache::default()));
    assert_eq!(
        ops,
        vec![
            set("authorization", &format!("Bearer {good}")),
            set(":path", "/p?x=1"),
        ]
    );
}

#[test]
fn several_tokens_can_be_refused() {
    let s = Setup::new(
        json!({ "main": provider(json!({ "from": [
            { "header": "authorization", "prefix": "Bearer " },
            { "cookie": "access_token" }
        ] })) }),
        json!({ "providers": ["main"], "reject_multiple_tokens": true }),
    );
    let good = tok("valid_RS256");
    for r in [
        req(
            "/",
            &[
                ("authorization", &format!("Bearer {good}")),
                ("cookie", "access_token=other"),
            ],
        ),
        req(
            "/",
            &[
                ("authorization", &format!("Bearer {good}")),
                ("authorization", "Bearer other"),
            ],
        ),
        req(
            "/",
            &[("cookie", &format!("access_token={good}; access_token=x"))],
        ),
    ] {
        match s.auth(&host(), &r, &mut TokenCache::default()) {
            AuthOutcome::Denied {
                status,
                www_authenticate,
                ..
            } => {
                assert_eq!(status, 400);
                assert!(
                    www_authenticate.contains(r#"error="invalid_request""#),
                    "{www_authenticate}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    // The same token twice is one token.
    let r = req(
        "/",
        &[
            ("authorization", &format!("Bearer {good}")),
            ("cookie", &format!("access_token={good}")),
        ],
    );
    allowed(&s.auth(&host(), &r, &mut TokenCache::default()));
}

#[test]
fn injected_claim_headers_are_found_in_every_spelling() {
    let s = two_providers();
    let families = s.providers().claim_headers();
    assert_eq!(families, vec!["x-user", "x-partner-user"]);
    let r = req(
        "/",
        &[
            ("x-user", "a"),
            ("x_user", "b"),
            ("X-User", "c"),
            ("x_partner-user", "d"),
            ("x-users", "keep"),
            ("x-user", "again"),
        ],
    );
    assert_eq!(
        meshguard::jwt::injected_claim_headers(&families, &r),
        vec!["x-user", "x_user", "X-User", "x_partner-user"]
    );
    assert!(meshguard::jwt::injected_claim_headers(&families, &req("/", &[])).is_empty());
}
