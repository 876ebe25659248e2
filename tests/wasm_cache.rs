//! The cache's pure core compiled to wasm (wasm32-unknown-unknown) and run
//! by wasm-bindgen-test in Node:
//! `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner cargo test --target wasm32-unknown-unknown --test wasm_cache`.
//! Natively this file compiles to nothing.
#![cfg(all(target_arch = "wasm32", target_os = "unknown"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshguard::cache::directives::{RequestDirectives, ResponseDirectives, Seconds};
use meshguard::cache::freshness::{self, FreshnessConfig, Usability};
use meshguard::cache::{etag, httpdate};
use wasm_bindgen_test::wasm_bindgen_test;

const S: u64 = 1_000_000_000;
const NOW: u64 = 1_700_000_000;

fn hs(v: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    v.iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

#[wasm_bindgen_test]
fn directive_parsing_in_wasm() {
    let h = hs(&[
        (
            "cache-control",
            "Max-Age=\"60\", no-cache=\"Set-Cookie, X-A\"",
        ),
        (
            "cache-control",
            "max-age=5, S-MAXAGE=oops, stale-if-error=9",
        ),
    ]);
    let d = ResponseDirectives::parse(&h);
    assert_eq!(d.max_age, Some(Seconds::Value(60)));
    assert_eq!(d.s_maxage, Some(Seconds::Invalid));
    assert_eq!(d.no_cache_fields, vec!["set-cookie", "x-a"]);
    assert_eq!(d.stale_if_error, Some(9));
    let r = RequestDirectives::parse(&hs(&[(
        "cache-control",
        "max-stale, min-fresh=99999999999999",
    )]));
    assert_eq!(r.max_stale, Some(None));
    assert_eq!(r.min_fresh, Some(2_147_483_648));
}

#[wasm_bindgen_test]
fn freshness_and_age_in_wasm() {
    let date = httpdate::format(NOW);
    let h = hs(&[
        ("date", &date),
        ("cache-control", "max-age=100, stale-while-revalidate=50"),
        ("age", "10"),
    ]);
    let cc = ResponseDirectives::parse(&h);
    let (life, _) = freshness::lifetime(200, &h, &cc, NOW, FreshnessConfig::default());
    assert_eq!(life, 100);
    let age = freshness::current_age(&h, NOW * S - 2 * S, NOW * S, NOW * S + 120 * S);
    assert_eq!(age, 132);
    assert_eq!(
        freshness::usability(life, age, &cc, &RequestDirectives::default()),
        Usability::StaleWhileRevalidate { ttl: -32 }
    );
    assert_eq!(
        httpdate::parse(b"Sun Nov  6 08:49:37 1994"),
        Some(784_111_777)
    );
    assert!(etag::answer_304(
        &hs(&[("if-none-match", "W/\"a\"")]),
        &hs(&[("etag", "\"a\"")]),
        0,
        NOW
    ));
}
