//! Native driver of the cache HIT hot path, for instruction counting.
//!
//! Stores one typical cacheable response (the bench upstream's body, ~8
//! response headers), then runs the HIT path N times exactly as the filter
//! does: `cache::lookup` for a GET with 6 typical request headers, then the
//! reply built as `send_cached` builds it (up to the buffer handed to the
//! host's `proxy_send_local_response`). Prints the host calls per hit by kind
//! and the time per hit.
//!
//! ```sh
//! cargo build --release --bench cache_hit
//! B=$(ls -t target/release/deps/cache_hit-* | grep -v '\.d$' | head -1)
//! $B 100000                                   # ns per hit (noisy)
//! $B 100000 purge-log                         # with a purge log to read
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg-cache.out $B 2000
//! callgrind_annotate /tmp/cg-cache.out | head -60
//! ```
//!
//! Callgrind counts the setup (one miss and one store) too: compare the
//! totals of two runs with different N to get the instructions per hit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshguard::cache::CacheStoreConfig;
use meshguard::cache::{self, CacheMetrics, CachePolicy, CacheRoute, Lookup, ResponseDecision};
use meshguard::host::fake::FakeHost;
use meshguard::host::{Host, HostError, MetricId, MetricKind, SetError, SharedValue};
use meshguard::request::Request;
use std::cell::Cell;
use std::hint::black_box;
use std::time::Instant;

const T0: u64 = 1_700_000_000 * 1_000_000_000;

/// Host calls by kind. `shared_get` is split: a read that returns a value
/// costs a callback into wasm to allocate it (~1.3 us in Envoy), a read of
/// an absent key does not.
#[derive(Default, Clone, Copy)]
struct Counts {
    now_nanos: u64,
    shared_get_value: u64,
    shared_get_absent: u64,
    shared_get_bytes: u64,
    shared_set: u64,
    random_bytes: u64,
    define_metric: u64,
    increment_metric: u64,
    record_metric: u64,
    call_foreign: u64,
}

impl Counts {
    fn rows(&self) -> [(&'static str, u64); 10] {
        [
            ("now_nanos", self.now_nanos),
            ("shared_get (value returned)", self.shared_get_value),
            ("shared_get (absent key)", self.shared_get_absent),
            ("  bytes returned by shared_get", self.shared_get_bytes),
            ("shared_set", self.shared_set),
            ("random_bytes", self.random_bytes),
            ("define_metric", self.define_metric),
            ("increment_metric", self.increment_metric),
            ("record_metric", self.record_metric),
            ("call_foreign", self.call_foreign),
        ]
    }
}

/// The fake host, counting every call.
struct Counting {
    inner: FakeHost,
    c: Cell<Counts>,
}

impl Counting {
    fn bump(&self, f: impl FnOnce(&mut Counts)) {
        let mut c = self.c.get();
        f(&mut c);
        self.c.set(c);
    }
    fn take(&self) -> Counts {
        self.c.replace(Counts::default())
    }
}

impl Host for Counting {
    fn now_nanos(&self) -> u64 {
        self.bump(|c| c.now_nanos += 1);
        self.inner.now_nanos()
    }
    fn shared_get(&self, key: &str) -> Result<SharedValue, HostError> {
        let r = self.inner.shared_get(key);
        let len = match &r {
            Ok((Some(v), _)) => Some(v.len() as u64),
            _ => None,
        };
        self.bump(|c| match len {
            Some(n) => {
                c.shared_get_value += 1;
                c.shared_get_bytes += n;
            }
            None => c.shared_get_absent += 1,
        });
        r
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        self.bump(|c| c.shared_set += 1);
        self.inner.shared_set(key, value, cas)
    }
    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        self.bump(|c| c.random_bytes += 1);
        self.inner.random_bytes(buf)
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<MetricId, HostError> {
        self.bump(|c| c.define_metric += 1);
        self.inner.define_metric(kind, name)
    }
    fn increment_metric(&self, id: MetricId, delta: i64) {
        self.bump(|c| c.increment_metric += 1);
        self.inner.increment_metric(id, delta)
    }
    fn record_metric(&self, id: MetricId, value: u64) {
        self.bump(|c| c.record_metric += 1);
        self.inner.record_metric(id, value)
    }
    fn call_foreign(&self, name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        self.bump(|c| c.call_foreign += 1);
        self.inner.call_foreign(name, args)
    }
}

type Hs = Vec<(String, Vec<u8>)>;

fn hs(v: &[(&str, &str)]) -> Hs {
    v.iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// A GET as the filter reads it (pseudo-headers moved into fields).
fn request() -> Request {
    Request {
        method: "GET".into(),
        path: "/catalog/item?id=42".into(),
        authority: "bench.local:10000".into(),
        headers: hs(&[
            ("user-agent", "wrk/4.2.0"),
            ("accept", "*/*"),
            ("accept-encoding", "gzip, deflate, br"),
            ("accept-language", "en-US,en;q=0.9"),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "0b7e4c1e-5a39-4c4f-9a83-2d6f3b6f9e51"),
        ])
        .into(),
        peer_ip: "127.0.0.1".into(),
        norm_path: None,
    }
}

/// The upstream response as Envoy hands it to the filter.
fn response() -> (u32, Hs, Vec<u8>) {
    let body = b"hello from the bench upstream\n".to_vec();
    let len = body.len().to_string();
    let headers = hs(&[
        (":status", "200"),
        ("content-type", "text/plain"),
        ("content-length", &len),
        ("cache-control", "public, max-age=600"),
        ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ("etag", "\"5f3a-1c2b3d4e\""),
        ("last-modified", "Mon, 13 Nov 2023 10:00:00 GMT"),
        ("server", "envoy"),
        ("x-envoy-upstream-service-time", "1"),
    ]);
    (200, headers, body)
}

/// What the filter's `send_cached` + `StreamState::reply_map` +
/// `adapter::send_local_reply_map` do with a response before the host
/// call: the stored headers, already in the host's map format, finished
/// into one buffer. Returns the serialized size (kept alive).
fn send_like_the_filter(resp: &cache::CachedResponse) -> usize {
    // pipeline::send_cached, then StreamState::reply_map (no extra response
    // headers on a plain cache route) and adapter::send_local_reply_map:
    // the headers are already in the host's format.
    let serialized = resp.headers.finish();
    black_box(&resp.body);
    black_box(serialized).len()
}

fn main() {
    // `cargo bench` passes `--bench` (and `-- --quick` its own flags):
    // N is the first argument that is a number.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let n: u64 = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(if quick { 10_000 } else { 100_000 });
    // `purge-log`: the route purges by tag and its purge log holds a record
    // newer than the entry for a tag it does not carry (the hit reads the
    // log and the entry's tags).
    let purge_log = args.iter().any(|a| a == "purge-log");
    let host = Counting {
        inner: FakeHost::new(T0),
        c: Cell::new(Counts::default()),
    };
    let mut policy = CachePolicy::default();
    if purge_log {
        policy.purge_tag_header = Some("surrogate-key".into());
    }
    let store_cfg = CacheStoreConfig {
        max_bytes: 64 << 20,
        max_entry_bytes: 1 << 20,
    };
    let metrics = CacheMetrics::define(&host, "bench");
    let route = CacheRoute {
        name: "bench",
        policy: &policy,
        store: &store_cfg,
        metrics: &metrics,
    };
    let req = request();

    // Fill: miss, response headers, store.
    let Lookup::Miss { mut ctx } = cache::lookup(&host, &route, &req) else {
        panic!("the first request must miss");
    };
    let (status, mut headers, body) = response();
    if purge_log {
        headers.extend(hs(&[("surrogate-key", "product-42 catalog")]));
    }
    let ResponseDecision::Store { .. } =
        cache::on_response_headers(&host, &route, &mut ctx, status, &headers)
    else {
        panic!("the response must be storable");
    };
    assert!(cache::store(
        &host, &route, &mut ctx, status, &headers, &body
    ));
    if purge_log {
        let mut purge = request();
        purge.method = "PURGE".into();
        purge.headers = hs(&[("meshguard-purge-tag", "other-tag")]).into();
        assert!(matches!(
            cache::purge_request(&host, &route, &purge),
            cache::PurgeOutcome::Tags(_)
        ));
    }
    let fill = host.take();

    // One hit, checked.
    let Lookup::Hit(resp) = cache::lookup(&host, &route, &req) else {
        panic!("the second request must hit");
    };
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, body);
    assert_eq!(
        resp.header("cache-status"),
        Some(&b"meshguard; hit; ttl=600"[..])
    );
    send_like_the_filter(&resp);
    host.take();

    let start = Instant::now();
    let mut sent = 0usize;
    for _ in 0..n {
        match cache::lookup(&host, &route, black_box(&req)) {
            Lookup::Hit(resp) => sent += send_like_the_filter(&resp),
            other => panic!("expected a hit, got {other:?}"),
        }
    }
    let elapsed = start.elapsed();
    let hits = host.take();
    black_box(sent);

    println!("cache HIT driver: {n} hits (purge log: {purge_log})");
    println!("host calls during the fill (miss + store), for reference:");
    for (k, v) in fill.rows() {
        if v > 0 {
            println!("  {k:<32} {v}");
        }
    }
    println!("host calls per hit:");
    for (k, v) in hits.rows() {
        if v > 0 {
            println!("  {k:<32} {:.2}", v as f64 / n.max(1) as f64);
        }
    }
    println!(
        "time: {:.0} ns per hit (wall clock, noisy; use callgrind)",
        elapsed.as_nanos() as f64 / n.max(1) as f64
    );
}
