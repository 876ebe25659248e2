//! The cache's request and response sides together, over the fake host.

use super::key::*;
use super::lookup::*;
use super::metrics::*;
use super::policy::*;
use super::respond::*;
use super::response::*;
use super::store::*;
use super::*;
use crate::host::Host;
use crate::request::Request;
use sha2::{Digest, Sha256};

/// Headers as the API takes them.
fn h(v: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    v.iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// A 1 MiB store with 64 KiB entries.
fn store_1mib() -> CacheStoreConfig {
    CacheStoreConfig {
        max_bytes: 1 << 20,
        max_entry_bytes: 65536,
    }
}

/// Route "r" over `policy` and `store`, without metrics.
fn test_route<'a>(policy: &'a CachePolicy, store: &'a CacheStoreConfig) -> CacheRoute<'a> {
    CacheRoute {
        name: "r",
        policy,
        store,
        metrics: &CacheMetrics::NONE,
    }
}

/// A GET of `a/x` with these headers.
fn get(headers: &[(&str, &str)]) -> Request {
    Request {
        method: "GET".into(),
        path: "/x".into(),
        authority: "a".into(),
        headers: h(headers).into(),
        peer_ip: String::new(),
        norm_path: None,
    }
}

/// A miss for `r` (with `identity`) answered 200 with `response`:
/// `Ok` when it was stored, else `Err(Cache-Status)`.
fn fill_as(
    host: &impl Host,
    route: &CacheRoute,
    r: &Request,
    identity: Identity,
    response: &[(String, Vec<u8>)],
) -> Result<(), String> {
    let Lookup::Miss { mut ctx } = lookup_as(host, route, r, identity) else {
        panic!("expected a miss")
    };
    match on_response_headers(host, route, &mut ctx, 200, response) {
        ResponseDecision::Store { .. } => {
            assert!(store(host, route, &mut ctx, 200, response, b"body"));
            Ok(())
        }
        ResponseDecision::DontStore { cache_status } => Err(cache_status),
        other => panic!("{other:?}"),
    }
}

/// `r` at path `path`.
fn at(path: &str, r: Request) -> Request {
    Request {
        path: path.into(),
        ..r
    }
}

#[test]
fn key_paths_drop_fragments_and_optionally_queries() {
    assert_eq!(key_path("/a?b=1#f", false), "/a?b=1");
    assert_eq!(key_path("/a?b=1#f", true), "/a");
    assert_ne!(uri_hash("r", "h", "/a"), uri_hash("r", "h", "/b"));
    assert_ne!(uri_hash("r", "h", "/a"), uri_hash("s", "h", "/a"));
    assert_eq!(uri_hash("r", "H.com", "/a"), uri_hash("r", "h.com", "/a"));
}

#[test]
fn the_uri_hash_is_sha256_of_the_length_prefixed_parts() {
    let mut m = b"meshguard/v1/cache/uri\0GET\0".to_vec();
    for part in [&b"r"[..], b"a.com:80", b"/P?q"] {
        m.extend_from_slice(&(part.len() as u32).to_le_bytes());
        m.extend_from_slice(part);
    }
    let want: [u8; 32] = Sha256::digest(&m).into();
    assert_eq!(uri_hash("r", "A.Com:80", "/P?q"), want);
    assert_eq!(uri_hash_memo("r", "A.Com:80", "/P?q"), want);
}

#[test]
fn memoised_uri_hashes_are_the_hashes() {
    let long = "/".repeat(URI_MEMO_MAX_KEY);
    let cases = [
        ("r", "a.com", "/x"),
        ("r", "A.Com:8080", "/x?q=1"),
        ("route", "b", ""),
        ("r", "a.com", long.as_str()),
    ];
    for round in 0..3 {
        for (r, a, p) in cases {
            assert_eq!(uri_hash_memo(r, a, p), uri_hash(r, a, p), "{round} {r} {a}");
        }
        // Many keys: slots are shared and overwritten.
        for i in 0..(3 * URI_MEMO_SLOTS) {
            let p = format!("/p/{i}");
            assert_eq!(uri_hash_memo("r", "H", &p), uri_hash("r", "h", &p));
        }
    }
    assert_ne!(uri_hash_memo("r", "a", "/x"), uri_hash_memo("r", "a", "/y"));
    assert_ne!(uri_hash_memo("ra", "", "/x"), uri_hash_memo("r", "a", "/x"));
}

#[test]
fn without_key_headers_the_primary_key_is_the_uri_hash() {
    let uri = uri_hash("r", "a", "/x");
    let req = h(&[("x-tenant", "1")]);
    assert_eq!(primary_hash(&uri, &[], &req), uri);
    let tenant = primary_hash(&uri, &["x-tenant".to_string()], &req);
    assert_ne!(tenant, uri);
    assert_ne!(
        tenant,
        primary_hash(&uri, &["x-tenant".to_string()], &h(&[("x-tenant", "2")]))
    );
}

#[test]
fn a_hit_reads_the_store_once_and_copies_the_body_once() {
    use crate::host::fake::FakeHost;
    let host = FakeHost::new(1_700_000_000 * NS);
    let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
    let route = test_route(&policy, &store_cfg);
    let mut stored = h(&[
        ("cache-control", "max-age=60"),
        ("etag", "\"v1\""),
        ("age", "3"),
        ("cache-status", "origin; hit"),
    ]);
    // Not UTF-8: sent as the bytes stored.
    stored.push(("x-raw".into(), vec![b'o', 0xe9, 0xff]));
    let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(&[])) else {
        panic!("expected a miss")
    };
    on_response_headers(&host, &route, &mut ctx, 200, &stored);
    assert!(store(&host, &route, &mut ctx, 200, &stored, b"body"));
    host.advance(std::time::Duration::from_secs(2));
    let reads = std::cell::Cell::new(0);
    let counting = store::counting(&host, &reads);
    let Lookup::Hit(r) = lookup(&counting, &route, &get(&[("accept", "x")])) else {
        panic!("expected a hit")
    };
    assert_eq!(reads.get(), 1);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"body");
    let mut want = h(&[
        ("cache-control", "max-age=60"),
        ("etag", "\"v1\""),
        ("x-raw", ""),
        ("age", "5"),
        ("cache-status", "origin; hit, meshguard; hit; ttl=55"),
    ]);
    want[2].1 = vec![b'o', 0xe9, 0xff];
    assert_eq!(r.headers.to_pairs(), want);
    // Conditional: a 304 with the kept fields only.
    let Lookup::Hit(r) = lookup(&counting, &route, &get(&[("if-none-match", "\"v1\"")])) else {
        panic!("expected a hit")
    };
    assert_eq!((r.status, r.body.len()), (304, 0));
    assert_eq!(
        r.headers.to_pairs(),
        h(&[
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("age", "5"),
            ("cache-status", "origin; hit, meshguard; hit; ttl=55"),
        ])
    );
    // A validator that does not match: the full response.
    let Lookup::Hit(r) = lookup(&counting, &route, &get(&[("if-none-match", "\"v0\"")])) else {
        panic!("expected a hit")
    };
    assert_eq!((r.status, r.body.as_slice()), (200, &b"body"[..]));
    assert_eq!(r.headers.len(), 5);
}

#[test]
fn a_token_is_a_credential_like_authorization() {
    use crate::host::fake::FakeHost;
    let host = FakeHost::new(1_700_000_000 * NS);
    let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
    let route = test_route(&policy, &store_cfg);
    let (anonymous, token) = (Identity::default(), Identity { token: true });
    let private = h(&[("cache-control", "max-age=60")]);
    // Not stored from a request with a token...
    let refused = fill_as(&host, &route, &get(&[]), token, &private);
    assert_eq!(
        refused,
        Err("meshguard; fwd=uri-miss; fwd-status=200; detail=authorization".into())
    );
    // ... and an anonymous entry is not served to one.
    assert_eq!(
        fill_as(&host, &route, &get(&[]), anonymous, &private),
        Ok(())
    );
    assert!(matches!(lookup(&host, &route, &get(&[])), Lookup::Hit(_)));
    match lookup_as(&host, &route, &get(&[]), token) {
        Lookup::Miss { ctx } => assert_eq!(
            ctx.cache_status(),
            "meshguard; fwd=request; detail=authorization"
        ),
        other => panic!("{other:?}"),
    }
    // A response that allows sharing is shared.
    let shared = h(&[("cache-control", "s-maxage=60")]);
    let r = at("/shared", get(&[]));
    assert_eq!(fill_as(&host, &route, &r, token, &shared), Ok(()));
    assert!(matches!(
        lookup_as(&host, &route, &r, token),
        Lookup::Hit(_)
    ));
}

#[test]
fn a_varied_header_too_big_to_keep_is_never_keyed_as_absent() {
    use crate::host::fake::FakeHost;
    let host = FakeHost::new(1_700_000_000 * NS);
    let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
    let route = test_route(&policy, &store_cfg);
    let varies = h(&[("cache-control", "max-age=60"), ("vary", "accept-encoding")]);
    let plain = h(&[("cache-control", "max-age=60")]);
    let huge = format!("gzip, {}", "x".repeat(17_000));
    let many: Vec<(&str, &str)> = vec![("accept-encoding", "gzip"); MAX_KEPT_HEADERS + 1];
    for (name, attack) in [
        ("huge", vec![("accept-encoding", huge.as_str())]),
        ("many", many),
    ] {
        let r = at(&format!("/{name}"), get(&attack));
        let refused = fill_as(&host, &route, &r, Identity::default(), &varies);
        assert!(
            refused.is_err_and(|cs| cs.ends_with("detail=vary-request-too-big")),
            "{name}"
        );
        // A response that does not vary on it is stored as usual.
        assert_eq!(
            fill_as(&host, &route, &r, Identity::default(), &plain),
            Ok(()),
            "{name}"
        );
    }
}

#[test]
fn a_revalidation_replaces_the_clients_conditions_with_the_stored_validators() {
    use crate::host::fake::FakeHost;
    let host = FakeHost::new(1_700_000_000 * NS);
    let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
    let route = test_route(&policy, &store_cfg);
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    let stored = h(&[("cache-control", "max-age=1"), ("last-modified", lm)]);
    let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(&[])) else {
        panic!("expected a miss")
    };
    on_response_headers(&host, &route, &mut ctx, 200, &stored);
    assert!(store(&host, &route, &mut ctx, 200, &stored, b"v1"));
    host.advance(std::time::Duration::from_secs(5));
    let client = get(&[
        ("if-none-match", "*"),
        ("if-match", "\"x\""),
        ("if-unmodified-since", lm),
        ("if-range", "\"x\""),
        ("range", "bytes=0-1"),
    ]);
    let Lookup::Revalidate {
        remove_request_headers,
        add_request_headers,
        mut ctx,
    } = lookup(&host, &route, &client)
    else {
        panic!("expected a revalidation")
    };
    for n in [
        "if-none-match",
        "if-modified-since",
        "if-match",
        "if-unmodified-since",
        "if-range",
        "range",
    ] {
        assert!(remove_request_headers.contains(&n), "{n}");
    }
    assert_eq!(add_request_headers, h(&[("if-modified-since", lm)]));
    // The origin's 304 answers meshguard's validator; the client's
    // `If-None-Match: *` is then evaluated against the refreshed entry.
    let ResponseDecision::Replace { response } = on_response_headers(
        &host,
        &route,
        &mut ctx,
        304,
        &h(&[("cache-control", "max-age=60")]),
    ) else {
        panic!("expected the refreshed entry")
    };
    assert_eq!((response.status, response.body.len()), (304, 0));
}

#[test]
fn configured_freshness_never_applies_to_a_request_with_credentials() {
    use crate::host::fake::FakeHost;
    let host = FakeHost::new(1_700_000_000 * NS);
    let policy = CachePolicy {
        default_ttl_secs: Some(60),
        heuristic_freshness: true,
        ..CachePolicy::default()
    };
    let store_cfg = store_1mib();
    let route = test_route(&policy, &store_cfg);
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    let (anonymous, token) = (Identity::default(), Identity { token: true });
    let cookie = get(&[("cookie", "session=victim")]);
    let basic = get(&[("authorization", "Basic x")]);
    let must_revalidate = h(&[("cache-control", "must-revalidate")]);
    // (request, identity, response, why not stored): 3.5 refuses first
    // when it applies (not with must-revalidate).
    let cases = [
        (&cookie, anonymous, h(&[]), "credentials"),
        (
            &cookie,
            anonymous,
            h(&[("last-modified", lm)]),
            "credentials",
        ),
        (&cookie, anonymous, must_revalidate.clone(), "credentials"),
        (&basic, anonymous, h(&[]), "authorization"),
        (&basic, anonymous, must_revalidate.clone(), "credentials"),
        (
            &get(&[]),
            token,
            h(&[("last-modified", lm)]),
            "authorization",
        ),
        (&get(&[]), token, must_revalidate, "credentials"),
    ];
    for (i, (r, identity, response, why)) in cases.into_iter().enumerate() {
        let r = at(&format!("/{i}"), r.clone());
        let refused = fill_as(&host, &route, &r, identity, &response);
        assert!(
            refused
                .as_ref()
                .is_err_and(|cs| cs.ends_with(&format!("detail={why}"))),
            "{i}: {refused:?}"
        );
        // `public` allows it (and then 3.5 too).
        let public = h(&[("cache-control", "public")]);
        assert_eq!(
            fill_as(
                &host,
                &route,
                &at(&format!("/public/{i}"), r),
                identity,
                &public
            ),
            Ok(()),
            "{i}"
        );
    }
    // Without credentials, default_ttl applies.
    assert_eq!(
        fill_as(&host, &route, &at("/anonymous", get(&[])), anonymous, &[]),
        Ok(())
    );
}

#[test]
fn a_fill_overlapping_an_invalidation_is_not_stored() {
    use crate::host::fake::FakeHost;
    let host = FakeHost::new(1_700_000_000 * NS);
    let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
    let route = test_route(&policy, &store_cfg);
    let cc = h(&[("cache-control", "max-age=60")]);
    let unsafe_request = |host: &FakeHost| {
        let post = Request {
            method: "POST".into(),
            ..get(&[])
        };
        let Lookup::Bypass { mut ctx } = lookup(host, &route, &post) else {
            panic!("expected a bypass")
        };
        on_response_headers(host, &route, &mut ctx, 200, &[]);
    };
    // The GET is looked up, the POST's 2xx invalidates, the GET's
    // response arrives: not stored.
    let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(&[])) else {
        panic!("expected a miss")
    };
    host.advance(std::time::Duration::from_millis(100));
    unsafe_request(&host);
    host.advance(std::time::Duration::from_millis(100));
    on_response_headers(&host, &route, &mut ctx, 200, &cc);
    assert!(!store(
        &host,
        &route,
        &mut ctx,
        200,
        &cc,
        b"before the POST"
    ));
    // A GET looked up after the invalidation stores.
    host.advance(std::time::Duration::from_millis(1));
    let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(&[])) else {
        panic!("expected a miss")
    };
    on_response_headers(&host, &route, &mut ctx, 200, &cc);
    assert!(store(&host, &route, &mut ctx, 200, &cc, b"after the POST"));
    // An invalidation recorded between the check and the write: the
    // check after the write drops the entry.
    let r = Request {
        path: "/race".into(),
        ..get(&[])
    };
    let Lookup::Miss { mut ctx } = lookup(&host, &route, &r) else {
        panic!("expected a miss")
    };
    on_response_headers(&host, &route, &mut ctx, 200, &cc);
    let inv_reads = std::cell::Cell::new(0);
    let uri = ctx.uri;
    let racing = store::Spy {
        host: &host,
        before_get: |key: &str| {
            if key.starts_with("meshguard/v1/cache/inv/") {
                inv_reads.set(inv_reads.get() + 1);
                if inv_reads.get() == 2 {
                    // Another worker, between recording and dropping.
                    Store::new(&host, &store_cfg).record_invalidation(&uri);
                }
            }
        },
    };
    assert!(!store(&racing, &route, &mut ctx, 200, &cc, b"raced"));
    assert_eq!(inv_reads.get(), 2);
    assert!(matches!(lookup(&host, &route, &r), Lookup::Miss { .. }));
}

#[test]
fn location_on_same_host_only() {
    assert_eq!(same_host_path(b"/x", "a.com").as_deref(), Some("/x"));
    assert_eq!(
        same_host_path(b"https://A.com:443/y?q", "a.com").as_deref(),
        Some("/y?q")
    );
    assert_eq!(
        same_host_path(b"http://a.com", "a.com:8080").as_deref(),
        Some("/")
    );
    assert_eq!(same_host_path(b"https://b.com/y", "a.com"), None);
    assert_eq!(same_host_path(b"//b.com/y", "a.com"), None);
    assert_eq!(same_host_path(b"rel/y", "a.com"), None);
}

#[test]
fn a_mismatched_304_is_refetched_unless_the_client_asked_for_it() {
    use crate::cache::on_refetch;
    use crate::host::fake::FakeHost;
    let host = FakeHost::new(1_700_000_000 * NS);
    let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
    let metrics = CacheMetrics::define(&host, "r");
    let route = CacheRoute {
        name: "r",
        policy: &policy,
        store: &store_cfg,
        metrics: &metrics,
    };
    let stored = h(&[("cache-control", "max-age=1"), ("etag", "\"v1\"")]);
    let fresh = h(&[
        (":status", "200"),
        ("cache-control", "max-age=60"),
        ("etag", "\"v2\""),
        ("content-length", "4"),
    ]);
    // (client's headers, 304 from the origin, the full request's answer)
    let v2 = h(&[("etag", "\"v2\"")]);
    let lm = h(&[("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT")]);
    type Case<'a> = (
        Vec<(&'a str, &'a str)>,
        Vec<(String, Vec<u8>)>,
        Option<refetch::FullResponse>,
        u32,
    );
    let cases: Vec<Case> = vec![
        (
            vec![],
            v2.clone(),
            Some((200, fresh.clone(), b"new!".to_vec())),
            200,
        ),
        (
            vec![],
            lm.clone(),
            Some((200, fresh.clone(), b"new!".to_vec())),
            200,
        ),
        (vec![], v2.clone(), None, 502),
        (
            vec![],
            v2.clone(),
            Some((200, fresh.clone(), vec![b'x'; 2 << 20])),
            502,
        ),
        (vec![("if-none-match", "\"v2\"")], v2.clone(), None, 304),
        // the client's condition fails on the 304 but holds for the full
        // response? it cannot: the 304 had no ETag, the full one has v2.
        (
            vec![("if-none-match", "\"v2\"")],
            lm.clone(),
            Some((200, fresh.clone(), b"new!".to_vec())),
            304,
        ),
    ];
    for (i, (client, answer304, full, want)) in cases.into_iter().enumerate() {
        let at = |mut r: Request| {
            r.authority = format!("a{i}");
            r
        };
        host.advance(std::time::Duration::from_secs(100));
        let Lookup::Miss { mut ctx } = lookup(&host, &route, &at(get(&[]))) else {
            panic!("expected a miss")
        };
        let stored = [
            stored.clone(),
            h(&[("last-modified", "Mon, 01 Jan 2029 00:00:00 GMT")]),
        ]
        .concat();
        assert!(matches!(
            on_response_headers(&host, &route, &mut ctx, 200, &stored),
            ResponseDecision::Store { .. }
        ));
        assert!(store(&host, &route, &mut ctx, 200, &stored, b"body"));
        host.advance(std::time::Duration::from_secs(5));
        let Lookup::Revalidate { mut ctx, .. } = lookup(&host, &route, &at(get(&client))) else {
            panic!("expected a revalidation")
        };
        let refetched = host.metric("meshguard.cache.r.refetched").unwrap_or(0);
        let failed = host.metric("meshguard.cache.r.refetch_failed").unwrap_or(0);
        match on_response_headers(&host, &route, &mut ctx, 304, &answer304) {
            ResponseDecision::Refetch => {
                let full_ok = full.as_ref().is_some_and(|f| f.2.len() < 1 << 20);
                let r = on_refetch(&host, &route, &mut ctx, full);
                assert_eq!(r.status, want, "{client:?}");
                if full_ok {
                    assert_eq!(
                        host.metric("meshguard.cache.r.refetched").unwrap_or(0),
                        refetched + 1
                    );
                    if want == 200 {
                        assert_eq!(r.body, b"new!");
                        assert_eq!(
                            r.header("cache-status"),
                            Some(&b"meshguard; fwd=stale; fwd-status=200; stored; detail=validator-mismatch"[..])
                        );
                        // stored: the next request is a hit with the new body
                        let Lookup::Hit(hit) = lookup(&host, &route, &at(get(&[]))) else {
                            panic!("expected a hit")
                        };
                        assert_eq!(hit.body, b"new!");
                    }
                } else {
                    assert_eq!(
                        host.metric("meshguard.cache.r.refetch_failed").unwrap_or(0),
                        failed + 1
                    );
                    assert_eq!(
                        r.header("cache-status"),
                        Some(&b"meshguard; fwd=stale; fwd-status=304; detail=validator-mismatch-refetch-failed"[..])
                    );
                    assert_eq!(r.header("retry-after"), Some(&b"0"[..]));
                }
            }
            ResponseDecision::DontStore { cache_status } => {
                assert_eq!(want, 304);
                assert!(cache_status.ends_with("detail=validator-mismatch"));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_refetch_sends_no_condition_and_no_range() {
    let fwd = h(&[
        (":method", "GET"),
        (":path", "/p"),
        (":authority", "a"),
        ("if-none-match", "\"v1\""),
        ("If-Modified-Since", "x"),
        ("range", "bytes=0-1"),
        ("if-range", "\"v1\""),
        ("x-envoy-attempt-count", "1"),
        ("content-length", "0"),
        ("x-user", "alice"),
    ]);
    let r = crate::cache::refetch_request(&fwd).unwrap();
    let names: Vec<&str> = r.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, [":method", ":path", ":authority", "x-user"]);
    assert!(crate::cache::refetch_request(&fwd[1..]).is_none());
    let bad = [fwd.clone(), vec![("x-bin".to_string(), vec![0xff])]].concat();
    assert!(crate::cache::refetch_request(&bad).is_none());
}

#[test]
fn a_request_forced_revalidation_reports_fwd_request() {
    use crate::host::fake::FakeHost;
    let host = FakeHost::new(1_700_000_000 * NS);
    let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
    let route = test_route(&policy, &store_cfg);
    let stored = h(&[
        ("cache-control", "max-age=60, stale-if-error=60"),
        ("etag", "\"v1\""),
    ]);
    let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(&[])) else {
        panic!("expected a miss")
    };
    on_response_headers(&host, &route, &mut ctx, 200, &stored);
    assert!(store(&host, &route, &mut ctx, 200, &stored, b"body"));
    let no_cache = get(&[("cache-control", "no-cache")]);
    // Fresh entry, origin 304: fwd=request, not fwd=stale.
    let Lookup::Revalidate { mut ctx, .. } = lookup(&host, &route, &no_cache) else {
        panic!("expected a revalidation")
    };
    let ResponseDecision::Replace { response } =
        on_response_headers(&host, &route, &mut ctx, 304, &h(&[("etag", "\"v1\"")]))
    else {
        panic!("expected the refreshed entry")
    };
    assert_eq!(
        response.header("cache-status"),
        Some(&b"meshguard; fwd=request; fwd-status=304; stored; ttl=60"[..])
    );
    // Fresh entry, origin 503 within stale-if-error: fwd=request too.
    let Lookup::Revalidate { mut ctx, .. } = lookup(&host, &route, &no_cache) else {
        panic!("expected a revalidation")
    };
    let ResponseDecision::Replace { response } =
        on_response_headers(&host, &route, &mut ctx, 503, &[])
    else {
        panic!("expected the stored entry")
    };
    assert_eq!(
        response.header("cache-status"),
        Some(&b"meshguard; fwd=request; fwd-status=503; ttl=60; detail=stale-if-error"[..])
    );
}

#[test]
fn a_too_big_body_lets_waiters_go_upstream_together() {
    use crate::host::fake::FakeHost;
    let host = FakeHost::new(1_700_000_000 * NS);
    let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
    let route = test_route(&policy, &store_cfg);
    let get = |path: &str| Request {
        method: "GET".into(),
        path: path.into(),
        authority: "a".into(),
        headers: Default::default(),
        peer_ip: String::new(),
        norm_path: None,
    };
    let miss = |path: &str| match lookup(&host, &route, &get(path)) {
        Lookup::Miss { ctx } => Some(ctx),
        Lookup::Wait { .. } => None,
        other => panic!("{other:?}"),
    };
    let cc = vec![("cache-control".to_string(), b"max-age=60".to_vec())];
    for (path, too_big) in [("/big", true), ("/reset", false)] {
        let mut first = miss(path).expect("the first request misses");
        assert!(first.holds_fill_lock());
        assert!(matches!(
            on_response_headers(&host, &route, &mut first, 200, &cc),
            ResponseDecision::Store { .. }
        ));
        assert!(miss(path).is_none(), "others wait for the filler");
        if too_big {
            abandon_too_big(&host, &route, &mut first);
            // Everyone goes upstream at once, no one takes the lock.
            for _ in 0..3 {
                assert!(!miss(path).expect("no waiting").holds_fill_lock());
            }
        } else {
            abandon(&host, &route, &mut first);
            // A reset says nothing about the response: the next one fills.
            assert!(miss(path).expect("no waiting").holds_fill_lock());
            assert!(miss(path).is_none());
        }
    }
}

#[test]
fn origin_failures_let_waiters_go_upstream_together() {
    use crate::host::fake::FakeHost;
    let host = FakeHost::new(1_700_000_000 * NS);
    let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
    let route = test_route(&policy, &store_cfg);
    let get = |path: &str| Request {
        method: "GET".into(),
        path: path.into(),
        authority: "a".into(),
        headers: Default::default(),
        peer_ip: String::new(),
        norm_path: None,
    };
    let cc = vec![(
        "cache-control".to_string(),
        b"max-age=1, stale-if-error=60".to_vec(),
    )];
    for (path, failure) in [("/reset", None), ("/503", Some(503))] {
        let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(path)) else {
            panic!("expected a miss")
        };
        on_response_headers(&host, &route, &mut ctx, 200, &cc);
        assert!(store(&host, &route, &mut ctx, 200, &cc, b"good"));
        host.advance(std::time::Duration::from_secs(5));
        let Lookup::Miss { mut ctx } = lookup(&host, &route, &get(path)) else {
            panic!("expected a stale miss")
        };
        assert!(ctx.holds_fill_lock());
        assert!(matches!(
            lookup(&host, &route, &get(path)),
            Lookup::Wait { .. }
        ));
        let stale = match failure {
            None => on_upstream_failure(&host, &route, &mut ctx),
            Some(st) => match on_response_headers(&host, &route, &mut ctx, st, &[]) {
                ResponseDecision::Replace { response } => Some(response),
                other => panic!("{other:?}"),
            },
        };
        assert_eq!(stale.map(|r| r.body), Some(b"good".to_vec()));
        for _ in 0..3 {
            match lookup(&host, &route, &get(path)) {
                Lookup::Miss { ctx } => assert!(!ctx.holds_fill_lock()),
                other => panic!("{path}: {other:?}"),
            }
        }
    }
}

/// A worker's host that lets another worker act (`between`, once) right
/// after this worker read the store and before it reads the fill lock.
fn acts_before_lock_read<'a>(
    host: &'a crate::host::fake::FakeHost,
    between: &'a std::cell::RefCell<Option<impl FnOnce()>>,
) -> store::Spy<'a, impl Fn(&str) + 'a> {
    store::Spy {
        host,
        before_get: move |key: &str| {
            if key.starts_with("meshguard/v1/cache/lock/") {
                if let Some(act) = between.borrow_mut().take() {
                    act();
                }
            }
        },
    }
}

/// Stores "kept" (max-age=1, ETag "k") for `get(&[])` and lets it go
/// stale: the next lookup revalidates.
fn store_stale_kept(host: &crate::host::fake::FakeHost, route: &CacheRoute) {
    let first = h(&[("cache-control", "max-age=1"), ("etag", "\"k\"")]);
    let Lookup::Miss { mut ctx } = lookup(host, route, &get(&[])) else {
        panic!("expected a miss")
    };
    on_response_headers(host, route, &mut ctx, 200, &first);
    assert!(store(host, route, &mut ctx, 200, &first, b"kept"));
    host.advance(std::time::Duration::from_secs(3));
}

#[test]
fn a_request_that_locks_after_a_revalidation_completed_is_a_hit() {
    use crate::host::fake::FakeHost;
    let host = FakeHost::new(1_700_000_000 * NS);
    let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
    let route = test_route(&policy, &store_cfg);
    store_stale_kept(&host, &route);
    // Worker B revalidates; worker A reads the stale entry, then B's 304
    // lands (entry refreshed, lock released) before A reaches the lock.
    let Lookup::Revalidate { ctx: b_ctx, .. } = lookup(&host, &route, &get(&[])) else {
        panic!("expected a revalidation")
    };
    assert!(b_ctx.holds_fill_lock());
    let b_ctx = std::cell::RefCell::new(b_ctx);
    let not_modified = h(&[("cache-control", "max-age=60"), ("etag", "\"k\"")]);
    let between = std::cell::RefCell::new(Some(|| {
        let mut b = b_ctx.borrow_mut();
        let d = on_response_headers(&host, &route, &mut b, 304, &not_modified);
        assert!(matches!(d, ResponseDecision::Replace { .. }), "{d:?}");
    }));
    let worker_a = acts_before_lock_read(&host, &between);
    match lookup(&worker_a, &route, &get(&[])) {
        Lookup::Hit(r) => assert_eq!((r.status, r.body), (200, b"kept".to_vec())),
        other => panic!("A must not revalidate again: {other:?}"),
    }
    assert!(between.borrow().is_none(), "B acted");
    // A released the lock it took: once stale again, the next request
    // takes it (and does not wait for A).
    host.advance(std::time::Duration::from_secs(61));
    match lookup(&host, &route, &get(&[])) {
        Lookup::Revalidate { ctx, .. } => assert!(ctx.holds_fill_lock()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_request_that_locks_after_a_fill_completed_is_a_hit() {
    use crate::host::fake::FakeHost;
    let host = FakeHost::new(1_700_000_000 * NS);
    let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
    let route = test_route(&policy, &store_cfg);
    let cc = h(&[("cache-control", "max-age=60")]);
    let Lookup::Miss { ctx: b_ctx } = lookup(&host, &route, &get(&[])) else {
        panic!("expected a miss")
    };
    assert!(b_ctx.holds_fill_lock());
    let b_ctx = std::cell::RefCell::new(b_ctx);
    let between = std::cell::RefCell::new(Some(|| {
        let mut b = b_ctx.borrow_mut();
        on_response_headers(&host, &route, &mut b, 200, &cc);
        assert!(store(&host, &route, &mut b, 200, &cc, b"filled"));
    }));
    let worker_a = acts_before_lock_read(&host, &between);
    match lookup(&worker_a, &route, &get(&[])) {
        Lookup::Hit(r) => assert_eq!(r.body, b"filled"),
        other => panic!("A must not fetch again: {other:?}"),
    }
    assert!(between.borrow().is_none(), "B acted");
    // A key nobody locked before is not read twice: a plain miss.
    match lookup(
        &host,
        &route,
        &Request {
            path: "/other".into(),
            ..get(&[])
        },
    ) {
        Lookup::Miss { ctx } => assert!(ctx.holds_fill_lock()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn cache_status_strings() {
    assert_eq!(hit_status(42, None), b"meshguard; hit; ttl=42");
    assert_eq!(
        hit_status(-3, Some("stale-while-revalidate")),
        b"meshguard; hit; ttl=-3; detail=stale-while-revalidate"
    );
    assert_eq!(
        fwd_status("uri-miss", Some(200), true, None, None),
        "meshguard; fwd=uri-miss; fwd-status=200; stored"
    );
    assert_eq!(
        fwd_status("stale", Some(503), false, Some("stale-if-error"), Some(-5)),
        "meshguard; fwd=stale; fwd-status=503; ttl=-5; detail=stale-if-error"
    );
}

#[test]
fn a_request_losing_the_lock_race_twice_waits_instead_of_revalidating_unlocked() {
    use crate::host::fake::FakeHost;
    let host = FakeHost::new(1_700_000_000 * NS);
    let (policy, store_cfg) = (CachePolicy::default(), store_1mib());
    let route = test_route(&policy, &store_cfg);
    store_stale_kept(&host, &route);
    // Other workers take and release the lock between each of this
    // request's two attempts: it must not go upstream without the lock (a
    // second revalidation of the same key).
    host.force_cas_failures(2);
    match lookup(&host, &route, &get(&[])) {
        Lookup::Wait { retry_after_ms } => assert_eq!(retry_after_ms, 1),
        other => panic!("expected to wait: {other:?}"),
    }
    // Looking again once the race is over, it takes the lock.
    match lookup(&host, &route, &get(&[])) {
        Lookup::Revalidate { ctx, .. } => assert!(ctx.holds_fill_lock()),
        other => panic!("{other:?}"),
    }
    // A first fill losing the race twice waits too.
    host.force_cas_failures(2);
    let other = Request {
        path: "/other".into(),
        ..get(&[])
    };
    assert!(matches!(lookup(&host, &route, &other), Lookup::Wait { .. }));
}
