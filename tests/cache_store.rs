#![allow(clippy::type_complexity, clippy::field_reassign_with_default)]
//! Native integration tests of the response cache through its public API,
//! with the fake host (a clone is a second worker sharing the store).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshguard::cache::store::{chunk_key, Layout};
use meshguard::cache::CacheStoreConfig;
use meshguard::cache::{
    abandon, lookup, on_refetch, on_response_headers, on_upstream_failure, store, CacheMetrics,
    CachePolicy, CacheRoute, Lookup, ResponseDecision,
};
use meshguard::host::fake::FakeHost;
use meshguard::request::Request;
use std::time::Duration;

const T0: u64 = 1_700_000_000 * 1_000_000_000;

type Hs = Vec<(String, Vec<u8>)>;

fn hs(v: &[(&str, &str)]) -> Hs {
    v.iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request {
    req("GET", path, headers)
}

fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
    Request {
        method: method.into(),
        path: path.into(),
        authority: "api.example.com".into(),
        headers: hs(headers).into(),
        peer_ip: "10.0.0.1".into(),
        norm_path: None,
    }
}

struct World {
    host: FakeHost,
    policy: CachePolicy,
    store: CacheStoreConfig,
    metrics: CacheMetrics,
}

impl World {
    fn new() -> World {
        Self::with(CachePolicy::default(), 1 << 20, 64 * 1024)
    }
    fn with(policy: CachePolicy, max_bytes: u64, max_entry_bytes: u64) -> World {
        let host = FakeHost::new(T0);
        let metrics = CacheMetrics::define(&host, "api");
        World {
            host,
            policy,
            store: CacheStoreConfig {
                max_bytes,
                max_entry_bytes,
            },
            metrics,
        }
    }
    fn route(&self) -> CacheRoute<'_> {
        CacheRoute {
            name: "api",
            policy: &self.policy,
            store: &self.store,
            metrics: &self.metrics,
        }
    }
    fn metric(&self, what: &str) -> i64 {
        self.host
            .metric(&format!("meshguard.cache.api.{what}"))
            .unwrap_or(-1)
    }
}

/// What the client saw, and what the origin was asked.
#[derive(Debug)]
struct Seen {
    status: u32,
    headers: Hs,
    body: Vec<u8>,
    /// Request headers the cache added for upstream (None: origin not asked).
    upstream: Option<Hs>,
    waited: bool,
}

impl Seen {
    fn h(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
    fn cs(&self) -> String {
        self.h("cache-status").unwrap_or_default()
    }
}

/// Runs one request through the cache as the filter would, on worker `host`.
/// `origin` returns None for a failed upstream (reset / timeout).
fn exchange(
    w: &World,
    host: &FakeHost,
    r: &Request,
    origin: &dyn Fn(&Hs) -> Option<(u32, Hs, Vec<u8>)>,
) -> Seen {
    let route = w.route();
    let (mut ctx, added) = match lookup(host, &route, r) {
        Lookup::Hit(resp) | Lookup::OnlyIfCachedMiss(resp) => {
            return Seen {
                status: resp.status,
                headers: resp.headers.to_pairs(),
                body: resp.body,
                upstream: None,
                waited: false,
            }
        }
        Lookup::Wait { retry_after_ms } => {
            assert!((1..=25).contains(&retry_after_ms));
            return Seen {
                status: 0,
                headers: vec![],
                body: vec![],
                upstream: None,
                waited: true,
            };
        }
        Lookup::Miss { ctx } | Lookup::Bypass { ctx } => (ctx, vec![]),
        Lookup::Revalidate {
            add_request_headers,
            ctx,
            ..
        } => (ctx, add_request_headers),
    };
    let Some((status, mut headers, body)) = origin(&added) else {
        return match on_upstream_failure(host, &route, &mut ctx) {
            Some(resp) => Seen {
                status: resp.status,
                headers: resp.headers.to_pairs(),
                body: resp.body,
                upstream: Some(added),
                waited: false,
            },
            None => Seen {
                status: 503,
                headers: hs(&[("cache-status", &ctx.cache_status())]),
                body: vec![],
                upstream: Some(added),
                waited: false,
            },
        };
    };
    match on_response_headers(host, &route, &mut ctx, status, &headers) {
        ResponseDecision::Replace { response } => Seen {
            status: response.status,
            headers: response.headers.to_pairs(),
            body: response.body,
            upstream: Some(added),
            waited: false,
        },
        ResponseDecision::Store {
            max_body,
            cache_status,
        } => {
            if body.len() <= max_body {
                store(host, &route, &mut ctx, status, &headers, &body);
            } else {
                abandon(host, &route, &mut ctx);
            }
            headers.push(("cache-status".into(), cache_status.into_bytes()));
            Seen {
                status,
                headers,
                body,
                upstream: Some(added),
                waited: false,
            }
        }
        // The filter's full request: no condition at all.
        ResponseDecision::Refetch => {
            let answer = origin(&vec![]);
            let response = on_refetch(host, &route, &mut ctx, answer);
            Seen {
                status: response.status,
                headers: response.headers.to_pairs(),
                body: response.body,
                upstream: Some(added),
                waited: false,
            }
        }
        ResponseDecision::DontStore { cache_status } => {
            headers.push(("cache-status".into(), cache_status.into_bytes()));
            Seen {
                status,
                headers,
                body,
                upstream: Some(added),
                waited: false,
            }
        }
    }
}

fn ok(headers: &[(&str, &str)], body: &str) -> impl Fn(&Hs) -> Option<(u32, Hs, Vec<u8>)> {
    let h = hs(headers);
    let b = body.as_bytes().to_vec();
    move |_| Some((200, h.clone(), b.clone()))
}

fn never(_: &Hs) -> Option<(u32, Hs, Vec<u8>)> {
    panic!("the origin must not be asked")
}

#[test]
fn hit_after_store_with_age_and_cache_status() {
    let w = World::new();
    let r = get("/items/1", &[]);
    let first = exchange(
        &w,
        &w.host,
        &r,
        &ok(&[("cache-control", "max-age=60")], "one"),
    );
    assert!(first.upstream.is_some());
    assert_eq!(
        first.cs(),
        "meshguard; fwd=uri-miss; fwd-status=200; stored"
    );
    let hit = exchange(&w, &w.host, &r, &never);
    assert_eq!(hit.status, 200);
    assert_eq!(hit.body, b"one");
    assert_eq!(hit.h("age").as_deref(), Some("0"));
    assert_eq!(hit.cs(), "meshguard; hit; ttl=60");
    assert_eq!(
        (w.metric("hit"), w.metric("miss"), w.metric("stored")),
        (1, 1, 1)
    );
    assert_eq!(w.metric("bypass"), 0);
    assert_eq!(w.metric("evicted"), 0);
}

#[test]
fn metric_names_are_defined_once_per_route() {
    let w = World::new();
    let again = CacheMetrics::define(&w.host, "api");
    assert_eq!(again, w.metrics);
    let names = w.host.metric_names();
    for m in ["hit", "miss", "stored", "evicted", "bypass"] {
        assert!(names.contains(&format!("meshguard.cache.api.{m}")), "{m}");
    }
}

#[test]
fn age_grows_with_the_clock_and_entries_expire() {
    let w = World::new();
    let r = get("/a", &[]);
    exchange(
        &w,
        &w.host,
        &r,
        &ok(&[("cache-control", "max-age=60")], "v1"),
    );
    w.host.advance(Duration::from_secs(25));
    let hit = exchange(&w, &w.host, &r, &never);
    assert_eq!(hit.h("age").as_deref(), Some("25"));
    assert_eq!(hit.cs(), "meshguard; hit; ttl=35");
    // Clock going backwards: age never shrinks below what was observed at store time.
    w.host.set_now(T0 - 1_000_000_000_000);
    let back = exchange(&w, &w.host, &r, &never);
    assert_eq!(back.h("age").as_deref(), Some("0"));
    w.host.set_now(T0 + 61_000_000_000);
    let miss = exchange(
        &w,
        &w.host,
        &r,
        &ok(&[("cache-control", "max-age=60")], "v2"),
    );
    assert!(miss.upstream.is_some());
    assert_eq!(miss.cs(), "meshguard; fwd=stale; fwd-status=200; stored");
    assert_eq!(exchange(&w, &w.host, &r, &never).body, b"v2");
}

#[test]
fn upstream_age_and_date_count() {
    let w = World::new();
    let r = get("/aged", &[]);
    exchange(
        &w,
        &w.host,
        &r,
        &ok(&[("cache-control", "max-age=60"), ("age", "50")], "x"),
    );
    let hit = exchange(&w, &w.host, &r, &never);
    assert_eq!(hit.h("age").as_deref(), Some("50"));
    assert_eq!(hit.cs(), "meshguard; hit; ttl=10");
}

#[test]
fn no_store_and_private_are_not_stored() {
    let w = World::new();
    for (path, cc, detail) in [
        ("/ns", "no-store, max-age=60", "no-store"),
        ("/pv", "private, max-age=60", "private"),
    ] {
        let r = get(path, &[]);
        let s = exchange(&w, &w.host, &r, &ok(&[("cache-control", cc)], "x"));
        assert_eq!(
            s.cs(),
            format!("meshguard; fwd=uri-miss; fwd-status=200; detail={detail}")
        );
        assert!(exchange(&w, &w.host, &r, &ok(&[], "y")).upstream.is_some());
    }
    // Request no-store: not stored either.
    let r = get("/rq", &[("cache-control", "no-store")]);
    let s = exchange(
        &w,
        &w.host,
        &r,
        &ok(&[("cache-control", "max-age=60")], "x"),
    );
    assert!(s.cs().contains("detail=request-no-store"), "{}", s.cs());
    assert!(exchange(&w, &w.host, &get("/rq", &[]), &ok(&[], "y"))
        .upstream
        .is_some());
    assert_eq!(w.metric("stored"), 0);
}

#[test]
fn responses_without_freshness_are_not_stored_unless_default_ttl() {
    let w = World::new();
    let r = get("/plain", &[]);
    let s = exchange(&w, &w.host, &r, &ok(&[], "x"));
    assert!(s.cs().ends_with("detail=no-freshness"), "{}", s.cs());
    let mut p = CachePolicy::default();
    p.default_ttl_secs = Some(30);
    let w = World::with(p, 1 << 20, 64 * 1024);
    exchange(&w, &w.host, &r, &ok(&[], "x"));
    assert_eq!(
        exchange(&w, &w.host, &r, &never).cs(),
        "meshguard; hit; ttl=30"
    );
}

#[test]
fn authorization_rule_of_section_3_5() {
    let w = World::new();
    let auth = [("authorization", "Bearer abc")];
    let r = get("/me", &auth);
    let s = exchange(
        &w,
        &w.host,
        &r,
        &ok(&[("cache-control", "max-age=60")], "mine"),
    );
    assert!(s.cs().ends_with("detail=authorization"), "{}", s.cs());
    assert!(exchange(&w, &w.host, &r, &ok(&[], "y")).upstream.is_some());
    // public allows it; later authorized requests may be served.
    let r2 = get("/shared", &auth);
    exchange(
        &w,
        &w.host,
        &r2,
        &ok(&[("cache-control", "public, max-age=60")], "s"),
    );
    assert_eq!(exchange(&w, &w.host, &r2, &never).body, b"s");
    // An entry stored for anonymous requests is not served to an authorized one.
    let anon = get("/anon", &[]);
    exchange(
        &w,
        &w.host,
        &anon,
        &ok(&[("cache-control", "max-age=60")], "a"),
    );
    let authd = get("/anon", &auth);
    let s = exchange(
        &w,
        &w.host,
        &authd,
        &ok(&[("cache-control", "max-age=60")], "b"),
    );
    assert_eq!(s.body, b"b");
    assert!(s.cs().contains("fwd=request"), "{}", s.cs());
}

#[test]
fn vary_match_mismatch_and_star() {
    let w = World::new();
    let gz = get("/v", &[("accept-encoding", "gzip")]);
    let br = get("/v", &[("accept-encoding", "br")]);
    let resp = [("cache-control", "max-age=60"), ("vary", "Accept-Encoding")];
    exchange(&w, &w.host, &gz, &ok(&resp, "gzip-body"));
    let same = get("/v", &[("accept-encoding", " gzip ")]);
    assert_eq!(exchange(&w, &w.host, &same, &never).body, b"gzip-body");
    let s = exchange(&w, &w.host, &br, &ok(&resp, "br-body"));
    assert!(s.cs().starts_with("meshguard; fwd=vary-miss"), "{}", s.cs());
    // Both variants now coexist.
    assert_eq!(exchange(&w, &w.host, &br, &never).body, b"br-body");
    assert_eq!(exchange(&w, &w.host, &gz, &never).body, b"gzip-body");
    let star = get("/star", &[]);
    let s = exchange(
        &w,
        &w.host,
        &star,
        &ok(&[("cache-control", "max-age=60"), ("vary", "*")], "x"),
    );
    assert!(s.cs().ends_with("detail=vary-star"));
    let ck = get("/ck", &[]);
    let s = exchange(
        &w,
        &w.host,
        &ck,
        &ok(&[("cache-control", "max-age=60"), ("vary", "cookie")], "x"),
    );
    assert!(s.cs().ends_with("detail=vary-not-allowed"));
}

#[test]
fn conditional_requests_get_304_from_fresh_entries() {
    let w = World::new();
    let r = get("/e", &[]);
    let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
    exchange(
        &w,
        &w.host,
        &r,
        &ok(
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"v1\""),
                ("last-modified", lm),
                ("content-type", "text/plain"),
            ],
            "body",
        ),
    );
    let inm = exchange(
        &w,
        &w.host,
        &get("/e", &[("if-none-match", "\"v0\", W/\"v1\"")]),
        &never,
    );
    assert_eq!(inm.status, 304);
    assert!(inm.body.is_empty());
    assert_eq!(inm.h("etag").as_deref(), Some("\"v1\""));
    assert_eq!(inm.h("content-type"), None);
    assert!(inm.cs().starts_with("meshguard; hit"));
    let other = exchange(
        &w,
        &w.host,
        &get("/e", &[("if-none-match", "\"v2\"")]),
        &never,
    );
    assert_eq!(other.status, 200);
    let ims = exchange(
        &w,
        &w.host,
        &get("/e", &[("if-modified-since", lm)]),
        &never,
    );
    assert_eq!(ims.status, 304);
    let star = exchange(&w, &w.host, &get("/e", &[("if-none-match", "*")]), &never);
    assert_eq!(star.status, 304);
}

#[test]
fn stale_entries_are_revalidated_and_a_304_refreshes_them() {
    let w = World::new();
    let r = get("/r", &[]);
    exchange(
        &w,
        &w.host,
        &r,
        &ok(
            &[
                ("cache-control", "max-age=10"),
                ("etag", "\"v1\""),
                ("x-version", "1"),
            ],
            "payload",
        ),
    );
    w.host.advance(Duration::from_secs(20));
    let not_modified = |added: &Hs| {
        assert_eq!(added, &hs(&[("if-none-match", "\"v1\"")]));
        Some((
            304,
            hs(&[
                ("cache-control", "max-age=100"),
                ("etag", "\"v1\""),
                ("x-version", "2"),
            ]),
            vec![],
        ))
    };
    let s = exchange(&w, &w.host, &r, &not_modified);
    assert_eq!(s.status, 200);
    assert_eq!(s.body, b"payload");
    assert_eq!(s.h("x-version").as_deref(), Some("2"));
    assert_eq!(
        s.cs(),
        "meshguard; fwd=stale; fwd-status=304; stored; ttl=100"
    );
    w.host.advance(Duration::from_secs(50));
    let hit = exchange(&w, &w.host, &r, &never);
    assert_eq!(hit.cs(), "meshguard; hit; ttl=50");
    assert_eq!(hit.h("x-version").as_deref(), Some("2"));
    assert_eq!(hit.body, b"payload");
}

#[test]
fn no_cache_responses_are_always_revalidated() {
    let w = World::new();
    let r = get("/nc", &[]);
    exchange(
        &w,
        &w.host,
        &r,
        &ok(&[("cache-control", "no-cache"), ("etag", "\"a\"")], "x"),
    );
    let s = exchange(&w, &w.host, &r, &|added: &Hs| {
        assert_eq!(added, &hs(&[("if-none-match", "\"a\"")]));
        Some((304, hs(&[("etag", "\"a\"")]), vec![]))
    });
    assert_eq!(s.body, b"x");
    assert!(s.cs().contains("fwd-status=304"));
}

#[test]
fn request_no_cache_and_pragma_go_upstream() {
    let w = World::new();
    let r = get("/p", &[]);
    exchange(
        &w,
        &w.host,
        &r,
        &ok(&[("cache-control", "max-age=60")], "x"),
    );
    for h in [
        ("cache-control", "no-cache"),
        ("pragma", "no-cache"),
        ("cache-control", "max-age=0"),
    ] {
        w.host.advance(Duration::from_secs(1));
        let s = exchange(
            &w,
            &w.host,
            &get("/p", &[h]),
            &ok(&[("cache-control", "max-age=60")], "y"),
        );
        assert!(s.upstream.is_some(), "{h:?}");
        assert!(s.cs().starts_with("meshguard; fwd=request"), "{}", s.cs());
    }
}

#[test]
fn unsafe_methods_invalidate_target_and_location() {
    let w = World::new();
    let cc = [("cache-control", "max-age=600")];
    for p in ["/orders", "/orders/7", "/other"] {
        exchange(&w, &w.host, &get(p, &[]), &ok(&cc, p));
        assert!(exchange(&w, &w.host, &get(p, &[]), &never)
            .upstream
            .is_none());
    }
    // A failed POST invalidates nothing.
    let fail = |_: &Hs| Some((500, hs(&[]), vec![]));
    exchange(&w, &w.host, &req("POST", "/orders", &[]), &fail);
    assert!(exchange(&w, &w.host, &get("/orders", &[]), &never)
        .upstream
        .is_none());
    let created = |_: &Hs| {
        Some((
            201,
            hs(&[("location", "https://api.example.com/orders/7")]),
            vec![],
        ))
    };
    let s = exchange(&w, &w.host, &req("POST", "/orders", &[]), &created);
    assert_eq!(s.cs(), "meshguard; fwd=method; fwd-status=201");
    assert_eq!(w.metric("bypass"), 2);
    assert!(exchange(&w, &w.host, &get("/orders", &[]), &ok(&cc, "new"))
        .upstream
        .is_some());
    assert!(
        exchange(&w, &w.host, &get("/orders/7", &[]), &ok(&cc, "new"))
            .upstream
            .is_some()
    );
    assert!(exchange(&w, &w.host, &get("/other", &[]), &never)
        .upstream
        .is_none());
    // Every variant of the URI goes.
    let v = [("cache-control", "max-age=600"), ("vary", "accept")];
    exchange(&w, &w.host, &get("/v", &[("accept", "a")]), &ok(&v, "a"));
    exchange(&w, &w.host, &get("/v", &[("accept", "b")]), &ok(&v, "b"));
    exchange(&w, &w.host, &req("DELETE", "/v", &[]), &|_| {
        Some((204, hs(&[]), vec![]))
    });
    assert!(
        exchange(&w, &w.host, &get("/v", &[("accept", "a")]), &ok(&v, "a"))
            .upstream
            .is_some()
    );
    assert!(
        exchange(&w, &w.host, &get("/v", &[("accept", "b")]), &ok(&v, "b"))
            .upstream
            .is_some()
    );
}

#[test]
fn stale_while_revalidate_serves_stale_while_one_request_revalidates() {
    let w = World::new();
    let r = get("/swr", &[]);
    exchange(
        &w,
        &w.host,
        &r,
        &ok(
            &[
                ("cache-control", "max-age=10, stale-while-revalidate=30"),
                ("etag", "\"1\""),
            ],
            "old",
        ),
    );
    w.host.advance(Duration::from_secs(15));
    let route = w.route();
    // Worker 1 gets to revalidate (holds the lock)...
    let Lookup::Revalidate { mut ctx, .. } = lookup(&w.host, &route, &r) else {
        panic!("expected revalidation");
    };
    assert!(ctx.holds_fill_lock());
    // ...while worker 2 is served the stale copy at once.
    let w2 = w.host.clone();
    let s = exchange(&w, &w2, &r, &never);
    assert_eq!(s.body, b"old");
    assert_eq!(
        s.cs(),
        "meshguard; hit; ttl=-5; detail=stale-while-revalidate"
    );
    let d = on_response_headers(
        &w.host,
        &route,
        &mut ctx,
        200,
        &hs(&[("cache-control", "max-age=10"), ("etag", "\"2\"")]),
    );
    let ResponseDecision::Store { .. } = d else {
        panic!("{d:?}")
    };
    assert!(store(
        &w.host,
        &route,
        &mut ctx,
        200,
        &hs(&[("cache-control", "max-age=10"), ("etag", "\"2\"")]),
        b"new"
    ));
    assert_eq!(exchange(&w, &w2, &r, &never).body, b"new");
    // Past the window: must revalidate.
    w.host.advance(Duration::from_secs(50));
    assert!(exchange(&w, &w.host, &r, &ok(&[], "x")).upstream.is_some());
}

#[test]
fn stale_if_error_serves_stale_on_5xx_and_failures() {
    let w = World::new();
    let r = get("/sie", &[]);
    exchange(
        &w,
        &w.host,
        &r,
        &ok(
            &[("cache-control", "max-age=10, stale-if-error=60")],
            "stale",
        ),
    );
    w.host.advance(Duration::from_secs(20));
    let s = exchange(&w, &w.host, &r, &|_| Some((503, hs(&[]), b"down".to_vec())));
    assert_eq!(s.status, 200);
    assert_eq!(s.body, b"stale");
    assert_eq!(
        s.cs(),
        "meshguard; fwd=stale; fwd-status=503; ttl=-10; detail=stale-if-error"
    );
    let s = exchange(&w, &w.host, &r, &|_| None);
    assert_eq!(s.body, b"stale");
    assert_eq!(
        s.cs(),
        "meshguard; fwd=stale; ttl=-10; detail=stale-if-error"
    );
    // 404 is not an error for stale-if-error: passed through (and stored? no freshness: no).
    // Past the window the error goes through.
    w.host.advance(Duration::from_secs(100));
    let s = exchange(&w, &w.host, &r, &|_| Some((503, hs(&[]), b"down".to_vec())));
    assert_eq!(s.status, 503);
    // must-revalidate forbids it.
    let r2 = get("/mr", &[]);
    exchange(
        &w,
        &w.host,
        &r2,
        &ok(
            &[(
                "cache-control",
                "max-age=10, stale-if-error=60, must-revalidate",
            )],
            "x",
        ),
    );
    w.host.advance(Duration::from_secs(20));
    assert_eq!(
        exchange(&w, &w.host, &r2, &|_| Some((502, hs(&[]), vec![]))).status,
        502
    );
}

#[test]
fn only_if_cached_gives_504_on_miss() {
    let w = World::new();
    let r = get("/oic", &[("cache-control", "only-if-cached")]);
    let s = exchange(&w, &w.host, &r, &never);
    assert_eq!(s.status, 504);
    assert_eq!(s.cs(), "meshguard; fwd=bypass; detail=only-if-cached");
    assert_eq!(s.body, b"only-if-cached: no stored response\n");
    exchange(
        &w,
        &w.host,
        &get("/oic", &[]),
        &ok(&[("cache-control", "max-age=5")], "x"),
    );
    assert_eq!(exchange(&w, &w.host, &r, &never).status, 200);
    w.host.advance(Duration::from_secs(10));
    let stale = exchange(&w, &w.host, &r, &never);
    assert_eq!(stale.status, 504);
    assert_eq!(
        stale.body,
        b"only-if-cached: the stored response would need validating with the origin\n"
    );
    let ms = get("/oic", &[("cache-control", "only-if-cached, max-stale")]);
    assert_eq!(exchange(&w, &w.host, &ms, &never).status, 200);
}

#[test]
fn head_is_served_from_get_and_never_stored() {
    let w = World::new();
    let h = req("HEAD", "/h", &[]);
    let s = exchange(&w, &w.host, &h, &ok(&[("cache-control", "max-age=60")], ""));
    assert!(s.cs().ends_with("detail=head"), "{}", s.cs());
    exchange(
        &w,
        &w.host,
        &get("/h", &[]),
        &ok(
            &[("cache-control", "max-age=60"), ("content-length", "4")],
            "body",
        ),
    );
    let s = exchange(&w, &w.host, &h, &never);
    assert_eq!(s.status, 200);
    // The body goes to Envoy's local reply, which answers a HEAD request
    // with the headers only and a Content-Length from it (without it
    // Envoy drops Content-Type and Content-Length; e2e-tested).
    assert_eq!(s.body, b"body");
    assert_eq!(s.h("content-length").as_deref(), Some("4"));
}

#[test]
fn methods_outside_the_policy_bypass() {
    let mut p = CachePolicy::default();
    p.cache_head = false;
    let w = World::with(p, 1 << 20, 64 * 1024);
    let s = exchange(&w, &w.host, &req("HEAD", "/x", &[]), &ok(&[], ""));
    assert_eq!(s.cs(), "meshguard; fwd=method; fwd-status=200");
    let s = exchange(&w, &w.host, &req("OPTIONS", "/x", &[]), &ok(&[], ""));
    assert_eq!(s.cs(), "meshguard; fwd=method; fwd-status=200");
}

#[test]
fn key_headers_and_ignore_query_shape_the_key() {
    let mut p = CachePolicy::default();
    p.key_headers = vec!["x-tenant".into()];
    p.ignore_query = true;
    let w = World::with(p, 1 << 20, 64 * 1024);
    let cc = [("cache-control", "max-age=60")];
    exchange(
        &w,
        &w.host,
        &get("/k?a=1", &[("x-tenant", "t1")]),
        &ok(&cc, "t1"),
    );
    assert_eq!(
        exchange(&w, &w.host, &get("/k?b=2", &[("x-tenant", "t1")]), &never).body,
        b"t1"
    );
    let s = exchange(
        &w,
        &w.host,
        &get("/k", &[("x-tenant", "t2")]),
        &ok(&cc, "t2"),
    );
    assert!(s.upstream.is_some());
    assert_eq!(
        exchange(&w, &w.host, &get("/k", &[("x-tenant", "t2")]), &never).body,
        b"t2"
    );
    let s = exchange(&w, &w.host, &get("/k", &[]), &ok(&cc, "none"));
    assert!(s.upstream.is_some());
}

#[test]
fn set_cookie_needs_public_and_is_never_replayed() {
    let w = World::new();
    let s = exchange(
        &w,
        &w.host,
        &get("/c1", &[]),
        &ok(
            &[("cache-control", "max-age=60"), ("set-cookie", "sid=1")],
            "x",
        ),
    );
    assert!(s.cs().ends_with("detail=set-cookie"));
    exchange(
        &w,
        &w.host,
        &get("/c2", &[]),
        &ok(
            &[
                ("cache-control", "public, max-age=60"),
                ("set-cookie", "sid=1"),
            ],
            "x",
        ),
    );
    let hit = exchange(&w, &w.host, &get("/c2", &[]), &never);
    assert_eq!(hit.h("set-cookie"), None);
}

#[test]
fn hop_by_hop_headers_are_not_replayed() {
    let w = World::new();
    exchange(
        &w,
        &w.host,
        &get("/hop", &[]),
        &ok(
            &[
                ("cache-control", "max-age=60"),
                ("connection", "x-secret"),
                ("x-secret", "1"),
                ("keep-alive", "5"),
                ("x-ok", "1"),
            ],
            "x",
        ),
    );
    let hit = exchange(&w, &w.host, &get("/hop", &[]), &never);
    assert_eq!(hit.h("x-secret"), None);
    assert_eq!(hit.h("keep-alive"), None);
    assert_eq!(hit.h("x-ok").as_deref(), Some("1"));
}

#[test]
fn too_big_bodies_are_not_stored() {
    let w = World::with(CachePolicy::default(), 1 << 20, 2048);
    let big = "x".repeat(4096);
    let s = exchange(
        &w,
        &w.host,
        &get("/big", &[]),
        &ok(&[("cache-control", "max-age=60")], &big),
    );
    // No content-length: the headers promise "stored" but the body overflowed.
    assert!(s.upstream.is_some());
    assert!(exchange(&w, &w.host, &get("/big", &[]), &ok(&[], "x"))
        .upstream
        .is_some());
    let cl = big.len().to_string();
    let s = exchange(
        &w,
        &w.host,
        &get("/big2", &[]),
        &ok(
            &[("cache-control", "max-age=60"), ("content-length", &cl)],
            &big,
        ),
    );
    assert!(s.cs().ends_with("detail=too-big"), "{}", s.cs());
    assert_eq!(w.metric("stored"), 0);
}

fn shared_bytes(w: &World) -> (u64, usize) {
    let layout = Layout::new(&w.store);
    let mut sum = 0u64;
    for k in layout.all_keys() {
        sum += w.host.raw(&k).map_or(0, |v| v.len() as u64);
    }
    (sum, layout.all_keys().len())
}

#[test]
fn memory_stays_within_max_bytes_under_10x_load() {
    let max = 64 * 1024;
    let w = World::with(CachePolicy::default(), max, 8 * 1024);
    let cc = [("cache-control", "max-age=600")];
    let mut written = 0u64;
    let mut i = 0;
    while written < 10 * max {
        let body = format!("{i:06}").repeat(50 + (i % 200)); // 300 B to 1.5 KB
        written += body.len() as u64;
        exchange(
            &w,
            &w.host,
            &get(&format!("/fill/{i}"), &[]),
            &ok(&cc, &body),
        );
        i += 1;
        let (bytes, _) = shared_bytes(&w);
        assert!(bytes <= max, "after {i} entries: {bytes} > {max}");
    }
    let (bytes, keys) = shared_bytes(&w);
    assert!(bytes <= max);
    assert!(w.host.shared_len() <= keys, "{} keys", w.host.shared_len());
    assert!(w.metric("evicted") > 0);
    assert!(w.metric("stored") as usize >= i - 1);
    // Recent entries are still served, and the store keeps working.
    let last = exchange(&w, &w.host, &get(&format!("/fill/{}", i - 1), &[]), &never);
    assert_eq!(last.status, 200);
    exchange(&w, &w.host, &get("/after", &[]), &ok(&cc, "after"));
    assert_eq!(
        exchange(&w, &w.host, &get("/after", &[]), &never).body,
        b"after"
    );
    assert!(shared_bytes(&w).0 <= max);
}

#[test]
fn corrupt_entries_are_dropped() {
    let w = World::new();
    let r = get("/corrupt", &[]);
    exchange(
        &w,
        &w.host,
        &r,
        &ok(&[("cache-control", "max-age=60")], "x"),
    );
    let layout = Layout::new(&w.store);
    let mut hit_key = None;
    for s in 0..layout.slots {
        if w.host.raw(&chunk_key(s)).is_some() {
            hit_key = Some(chunk_key(s));
        }
    }
    let k = hit_key.expect("one chunk written");
    let mut v = w.host.raw(&k).unwrap();
    let last = v.len() - 1;
    v[last] ^= 0xff; // body byte: checksum mismatch
    w.host.put_raw(&k, &v);
    let s = exchange(
        &w,
        &w.host,
        &r,
        &ok(&[("cache-control", "max-age=60")], "fresh"),
    );
    assert!(s.upstream.is_some());
    assert_eq!(exchange(&w, &w.host, &r, &never).body, b"fresh");
    // Stale format (unknown version byte) too.
    let mut v = w.host.raw(&k).unwrap();
    v[0] = 0xEE;
    w.host.put_raw(&k, &v);
    assert!(exchange(
        &w,
        &w.host,
        &r,
        &ok(&[("cache-control", "max-age=60")], "again")
    )
    .upstream
    .is_some());
    assert_eq!(exchange(&w, &w.host, &r, &never).body, b"again");
}

#[test]
fn fill_lock_makes_concurrent_misses_wait() {
    let w = World::new();
    let r = get("/lock", &[]);
    let route = w.route();
    let Lookup::Miss { mut ctx } = lookup(&w.host, &route, &r) else {
        panic!("first is a miss");
    };
    assert!(ctx.holds_fill_lock());
    let w2 = w.host.clone();
    assert!(exchange(&w, &w2, &r, &never).waited);
    let headers = hs(&[("cache-control", "max-age=60")]);
    let ResponseDecision::Store { .. } =
        on_response_headers(&w.host, &route, &mut ctx, 200, &headers)
    else {
        panic!("storable");
    };
    assert!(store(&w.host, &route, &mut ctx, 200, &headers, b"filled"));
    assert!(!ctx.holds_fill_lock());
    assert_eq!(exchange(&w, &w2, &r, &never).body, b"filled");
}

#[test]
fn fill_lock_expires_so_waiters_go_upstream_after_the_deadline() {
    let w = World::new();
    let r = get("/lock2", &[]);
    let route = w.route();
    let Lookup::Miss { ctx } = lookup(&w.host, &route, &r) else {
        panic!("first is a miss");
    };
    assert!(ctx.holds_fill_lock());
    drop(ctx); // the first request vanished without releasing
    let w2 = w.host.clone();
    assert!(exchange(&w, &w2, &r, &never).waited);
    w.host.advance(Duration::from_millis(5_001));
    let s = exchange(&w, &w2, &r, &ok(&[("cache-control", "max-age=60")], "w2"));
    assert!(s.upstream.is_some());
    assert_eq!(exchange(&w, &w.host, &r, &never).body, b"w2");
}

#[test]
fn abandon_releases_the_lock_at_once() {
    let w = World::new();
    let r = get("/ab", &[]);
    let route = w.route();
    let Lookup::Miss { mut ctx } = lookup(&w.host, &route, &r) else {
        panic!("miss");
    };
    abandon(&w.host, &route, &mut ctx);
    let Lookup::Miss { ctx } = lookup(&w.host.clone(), &route, &r) else {
        panic!("second worker goes upstream");
    };
    assert!(ctx.holds_fill_lock());
}

#[test]
fn broken_shared_data_degrades_to_pass_through() {
    let w = World::new();
    w.host.set_broken(true);
    let r = get("/broken", &[]);
    let s = exchange(
        &w,
        &w.host,
        &r,
        &ok(&[("cache-control", "max-age=60")], "x"),
    );
    assert_eq!(s.status, 200);
    assert!(exchange(&w, &w.host, &r, &ok(&[], "y")).upstream.is_some());
    w.host.set_broken(false);
}

#[test]
fn upstream_cache_status_is_kept_before_ours() {
    let w = World::new();
    exchange(
        &w,
        &w.host,
        &get("/cs", &[]),
        &ok(
            &[
                ("cache-control", "max-age=60"),
                ("cache-status", "origin; hit"),
            ],
            "x",
        ),
    );
    let hit = exchange(&w, &w.host, &get("/cs", &[]), &never);
    assert_eq!(hit.cs(), "origin; hit, meshguard; hit; ttl=60");
}

#[test]
fn client_validators_are_answered_after_a_revalidation() {
    let w = World::new();
    let r = get("/cv", &[]);
    exchange(
        &w,
        &w.host,
        &r,
        &ok(
            &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
            "body",
        ),
    );
    w.host.advance(Duration::from_secs(20));
    let cond = get("/cv", &[("if-none-match", "\"v1\"")]);
    let s = exchange(&w, &w.host, &cond, &|added: &Hs| {
        // The cache's own validators replace the client's.
        assert_eq!(added, &hs(&[("if-none-match", "\"v1\"")]));
        Some((
            304,
            hs(&[("cache-control", "max-age=10"), ("etag", "\"v1\"")]),
            vec![],
        ))
    });
    assert_eq!(s.status, 304);
    assert!(s.body.is_empty());
    // A 304 naming another representation is not merged, and an
    // unconditional client never gets it: the full request's answer is
    // sent (and stored), or a 502 when the origin answers it with a 304.
    w.host.advance(Duration::from_secs(20));
    let s = exchange(&w, &w.host, &r, &|_| {
        Some((304, hs(&[("etag", "\"other\"")]), vec![]))
    });
    assert_eq!(s.status, 502);
    assert_eq!(s.h("retry-after").as_deref(), Some("0"));
    assert_eq!(
        s.cs(),
        "meshguard; fwd=stale; fwd-status=304; detail=validator-mismatch-refetch-failed"
    );
    assert!(exchange(&w, &w.host, &r, &ok(&[], "x")).upstream.is_some());
    let v1 = &ok(&[("cache-control", "max-age=10"), ("etag", "\"v1\"")], "v1");
    exchange(&w, &w.host, &r, v1);
    w.host.advance(Duration::from_secs(20));
    let s = exchange(&w, &w.host, &r, &|added: &Hs| {
        Some(if added.is_empty() {
            (
                200,
                hs(&[("etag", "\"other\""), ("cache-control", "max-age=10")]),
                b"other".to_vec(),
            )
        } else {
            (304, hs(&[("etag", "\"other\"")]), vec![])
        })
    });
    assert_eq!((s.status, s.body.as_slice()), (200, &b"other"[..]));
    assert_eq!(
        s.cs(),
        "meshguard; fwd=stale; fwd-status=200; stored; detail=validator-mismatch"
    );
    let s = exchange(&w, &w.host, &r, &ok(&[], "never"));
    assert!(s.upstream.is_none());
    assert_eq!(s.body, b"other");
}

#[test]
fn a_mismatched_304_reaches_only_clients_whose_conditions_it_answers() {
    let w = World::new();
    let stored = &ok(
        &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
        "body",
    );
    let mismatch = |added: &Hs| {
        let h = hs(&[("etag", "\"v2\""), ("cache-control", "no-store")]);
        Some(match added.is_empty() {
            true => (200, h, b"v2".to_vec()),
            false => (304, h, vec![]),
        })
    };
    for (client, want) in [
        (vec![("if-none-match", "\"v2\"")], 304),
        (vec![("if-none-match", "W/\"v2\", \"x\"")], 304),
        (vec![("if-none-match", "\"v1\"")], 200),
        (vec![], 200),
    ] {
        let r = get("/mm", &client);
        exchange(&w, &w.host, &get("/mm", &[]), stored);
        w.host.advance(Duration::from_secs(20));
        let s = exchange(&w, &w.host, &r, &mismatch);
        assert_eq!(s.status, want, "{client:?}");
        assert!(s.cs().ends_with("detail=validator-mismatch"), "{}", s.cs());
        if want == 200 {
            assert_eq!(s.body, b"v2");
        }
        // The entry was dropped either way.
        assert!(exchange(&w, &w.host, &get("/mm", &[]), stored)
            .upstream
            .is_some());
        w.host.advance(Duration::from_secs(20));
    }
}

#[test]
fn a_second_worker_sees_the_first_workers_entries() {
    let w = World::new();
    let other = w.host.clone();
    exchange(
        &w,
        &w.host,
        &get("/shared", &[]),
        &ok(&[("cache-control", "max-age=60")], "one"),
    );
    let s = exchange(&w, &other, &get("/shared", &[]), &never);
    assert_eq!(s.body, b"one");
    assert_eq!(w.metric("hit"), 1);
}

#[test]
fn heuristic_freshness_uses_last_modified() {
    let mut p = CachePolicy::default();
    p.heuristic_freshness = true;
    let w = World::with(p, 1 << 20, 64 * 1024);
    let now_s = T0 / 1_000_000_000;
    let date = meshguard::cache::httpdate::format(now_s);
    let lm = meshguard::cache::httpdate::format(now_s - 1000);
    exchange(
        &w,
        &w.host,
        &get("/h", &[]),
        &ok(&[("date", &date), ("last-modified", &lm)], "x"),
    );
    assert_eq!(
        exchange(&w, &w.host, &get("/h", &[]), &never).cs(),
        "meshguard; hit; ttl=100"
    );
}

#[test]
fn uncacheable_responses_do_not_serialize_later_requests() {
    let w = World::new();
    let r = get("/private", &[]);
    let route = w.route();
    let Lookup::Miss { mut ctx } = lookup(&w.host, &route, &r) else {
        panic!("miss");
    };
    assert!(ctx.holds_fill_lock());
    let w2 = w.host.clone();
    assert!(exchange(&w, &w2, &r, &never).waited);
    let d = on_response_headers(
        &w.host,
        &route,
        &mut ctx,
        200,
        &hs(&[("cache-control", "private")]),
    );
    assert!(matches!(d, ResponseDecision::DontStore { .. }));
    // Two concurrent requests now both go upstream, neither waits nor locks.
    let Lookup::Miss { ctx: a } = lookup(&w2, &route, &r) else {
        panic!("no wait after a pass");
    };
    let Lookup::Miss { ctx: b } = lookup(&w.host, &route, &r) else {
        panic!("no wait after a pass");
    };
    assert!(!a.holds_fill_lock() && !b.holds_fill_lock());
    // After the pass period, collapsing resumes.
    w.host.advance(Duration::from_secs(6));
    let Lookup::Miss { ctx } = lookup(&w.host, &route, &r) else {
        panic!("miss");
    };
    assert!(ctx.holds_fill_lock());
}

#[test]
fn head_revalidation_takes_no_lock_and_refreshes_from_a_304() {
    let w = World::new();
    exchange(
        &w,
        &w.host,
        &get("/hr", &[]),
        &ok(
            &[("cache-control", "max-age=10"), ("etag", "\"1\"")],
            "body",
        ),
    );
    w.host.advance(Duration::from_secs(20));
    let route = w.route();
    let Lookup::Revalidate { mut ctx, .. } = lookup(&w.host, &route, &req("HEAD", "/hr", &[]))
    else {
        panic!("revalidate");
    };
    assert!(!ctx.holds_fill_lock());
    let d = on_response_headers(
        &w.host,
        &route,
        &mut ctx,
        304,
        &hs(&[("cache-control", "max-age=60"), ("etag", "\"1\"")]),
    );
    let ResponseDecision::Replace { response } = d else {
        panic!("{d:?}")
    };
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"body", "for Envoy's Content-Length");
    assert_eq!(
        exchange(&w, &w.host, &get("/hr", &[]), &never).body,
        b"body"
    );
}
