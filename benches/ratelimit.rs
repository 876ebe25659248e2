//! Native driver of the local rate-limit hot path (a request one bucket
//! admits), for instruction counting:
//!
//! ```sh
//! cargo build --release --bench ratelimit
//! B=$(ls -t target/release/deps/ratelimit-* | grep -v '\.d$' | head -1)
//! $B 100000                       # host calls, allocations and ns per request
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg-rl.out $B 2000 plain
//! callgrind_annotate /tmp/cg-rl.out | head -60
//! ```
//!
//! Arguments: `[N] [plain|keyed|plain-proposed|keyed-proposed|plain-values|keyed-values|host-only|host-only-keyed|all]`
//! (default 100000, all); `-proposed`: with the filter-layer change
//! proposed for `pipeline.rs` (`admitted_headers` instead of `admitted`
//! and a clone of its headers); `-values`: with the further change (the
//! stream keeps `HeaderValues` and writes the headers from them);
//! `host-only[-keyed]`: the same host calls without meshguard's logic (the
//! in-memory host's own cost, to subtract). The route is
//! compiled from JSON by the real configuration code, its metrics defined as
//! the root context does, and each request runs what the filter runs:
//! `check_local`, `admitted`, the headers moved into the stream's response
//! headers (`apply_decision`), then one `set_response_header` host call per
//! header (`on_response_headers`). The fake clock advances 1 µs per request.
//! Host calls are counted per kind by a wrapper around the in-memory host;
//! allocations by a counting global allocator. For per-request instruction
//! counts, subtract a run of N from a run of 2N (start-up cancels out).
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use meshguard::host::fake::FakeHost;
use meshguard::host::{Host, HostError, MetricId, MetricKind, OneClock, SetError, SharedValue};
use meshguard::plan::Config;
use meshguard::ratelimit::{self, Limiter, LocalOutcome};
use meshguard::request::Request;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counts allocations (and reallocations) of the whole process.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Host calls per kind.
#[derive(Default, Clone, Copy, Debug)]
struct Calls {
    clock: u64,
    shared_get: u64,
    shared_set: u64,
    increment_metric: u64,
    record_metric: u64,
    other: u64,
    /// Emulated `set_response_header` calls of the filter.
    set_response_header: u64,
}

/// The in-memory host, counting every call by kind.
struct CountingHost {
    inner: FakeHost,
    calls: Cell<Calls>,
}

impl CountingHost {
    fn count(&self, f: impl FnOnce(&mut Calls)) {
        let mut c = self.calls.get();
        f(&mut c);
        self.calls.set(c);
    }
}

impl Host for CountingHost {
    fn now_nanos(&self) -> u64 {
        self.count(|c| c.clock += 1);
        self.inner.now_nanos()
    }
    fn shared_get(&self, key: &str) -> Result<SharedValue, HostError> {
        self.count(|c| c.shared_get += 1);
        self.inner.shared_get(key)
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        self.count(|c| c.shared_set += 1);
        self.inner.shared_set(key, value, cas)
    }
    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        self.count(|c| c.other += 1);
        self.inner.random_bytes(buf)
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<MetricId, HostError> {
        self.count(|c| c.other += 1);
        self.inner.define_metric(kind, name)
    }
    fn increment_metric(&self, id: MetricId, delta: i64) {
        self.count(|c| c.increment_metric += 1);
        self.inner.increment_metric(id, delta)
    }
    fn record_metric(&self, id: MetricId, value: u64) {
        self.count(|c| c.record_metric += 1);
        self.inner.record_metric(id, value)
    }
}

/// What the filter does with an admitted request's headers: moves them into
/// the stream's response headers, then sets each on the upstream response.
fn respond(host: &CountingHost, response_headers: &[(&'static str, String)]) {
    for (name, value) in response_headers {
        black_box((name, value.as_bytes()));
        host.count(|c| c.set_response_header += 1);
    }
}

/// How the filter takes an admitted request's headers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// As `pipeline.rs` does today: `admitted` builds a `Decision`, and
    /// `apply_decision` clones its headers into the stream's list.
    Today,
    /// The proposed change: `admitted_headers` appends them to the stream's
    /// list directly.
    Proposed,
    /// The further change: the stream keeps `HeaderValues` (numbers) and
    /// writes the headers from them at response time (no allocation).
    Values,
    /// No rate limiting: only the host calls the admitted path makes (same
    /// key, a value of the same size), to subtract the in-memory host's own
    /// cost from the others.
    HostOnly,
}

/// The host calls of one admitted request, without meshguard's logic.
#[inline(never)]
fn host_only(host: &CountingHost, key: &str, value: &[u8], metric: MetricId) -> usize {
    let clock = OneClock::new(host);
    black_box(clock.now_nanos());
    let (v, cas) = host.shared_get(key).expect("get");
    black_box(v);
    host.shared_set(key, value, cas).expect("set");
    host.increment_metric(metric, 1);
    host.count(|c| c.set_response_header += 2);
    2
}

/// One request through the rate-limit stage as `pipeline::run` runs it.
#[inline(never)]
fn one_request(
    host: &CountingHost,
    limiter: &Limiter,
    route: &meshguard::plan::Route,
    metrics: &[ratelimit::LimitMetrics],
    req: &Request,
    filter: Filter,
) -> usize {
    // `pipeline::run`: one clock reading for the whole pass.
    let clock = OneClock::new(host);
    let mut response_headers: Vec<(&'static str, String)> = Vec::new();
    match ratelimit::check_local(
        &clock,
        limiter,
        &route.name,
        &route.rate_limits,
        metrics,
        req,
        None,
    ) {
        LocalOutcome::Admitted(a) if filter == Filter::Today => {
            let d = ratelimit::admitted(limiter.style, &route.rate_limits, &a);
            // `apply_decision`
            response_headers.extend(d.headers.iter().cloned());
            assert!(d.allowed);
        }
        LocalOutcome::Admitted(a) if filter == Filter::Values => {
            let values = a.header_values(limiter.style);
            drop(a);
            // `on_response_headers`
            let mut n = 0;
            if let Some(v) = values {
                v.for_each(&route.rate_limits, |name, value| {
                    black_box((name, value));
                    host.count(|c| c.set_response_header += 1);
                    n += 1;
                });
            }
            respond(host, &response_headers);
            return n;
        }
        LocalOutcome::Admitted(a) => {
            ratelimit::admitted_headers(
                limiter.style,
                &route.rate_limits,
                &a,
                &mut response_headers,
            );
        }
        LocalOutcome::Refused(d) => panic!("refused: {d:?}"),
    }
    // `on_response_headers`
    respond(host, &response_headers);
    response_headers.len()
}

fn run(label: &str, limits_json: &str, req: &Request, n: u64, filter: Filter) {
    let cfg = format!(
        r#"{{"routes": [{{"name": "bench", "match": {{"path_prefix": "/"}}, "rate_limit": {limits_json}}}]}}"#
    );
    let config = Config::from_bytes(cfg.as_bytes()).expect("config");
    let host = CountingHost {
        inner: FakeHost::new(1_700_000_000_000_000_000),
        calls: Cell::new(Calls::default()),
    };
    // As `Runtime::new` does.
    let evictions = host
        .define_metric(MetricKind::Counter, "meshguard.ratelimit.evictions")
        .unwrap_or(MetricId::NONE);
    let metrics: Vec<Vec<ratelimit::LimitMetrics>> = config
        .routes
        .iter()
        .map(|r| ratelimit::define_metrics(&host, &r.name, &r.rate_limits))
        .collect();
    let limiter = Limiter {
        slots: config.max_rate_limit_keys,
        style: config.rate_limit_headers,
        client_ip: meshguard::request::ClientIpRule::hops(config.xff_trusted_hops),
        evictions,
    };
    let route = &config.routes[0];
    // Warm up (creates the bucket), then count.
    one_request(&host, &limiter, route, &metrics[0], req, filter);
    // For `HostOnly`: the bucket's slot and a value of its size.
    let slot_key = (0..limiter.slots)
        .map(meshguard::ratelimit::store::slot_key)
        .find(|k| host.inner.raw(k).is_some())
        .expect("the bucket's slot");
    let value = host.inner.raw(&slot_key).expect("value");
    let allowed_id = metrics[0][0].allowed.expect("metric");
    host.calls.set(Calls::default());
    let allocs0 = ALLOCS.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let mut headers = 0;
    for _ in 0..n {
        host.inner
            .set_now(host.inner.now_nanos().wrapping_add(1_000));
        headers += if filter == Filter::HostOnly {
            host_only(&host, &slot_key, &value, allowed_id)
        } else {
            one_request(&host, &limiter, route, &metrics[0], req, filter)
        };
    }
    let elapsed = t0.elapsed();
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs0;
    let c = host.calls.get();
    let per = |x: u64| x as f64 / n as f64;
    println!(
        "{label}: {n} requests, {:.1} ns/req, {:.2} allocations/req, {:.2} headers/req",
        elapsed.as_nanos() as f64 / n as f64,
        per(allocs),
        per(headers as u64),
    );
    println!(
        "  host calls/req: clock {:.2}, shared_get {:.2}, shared_set {:.2}, increment_metric {:.2}, record_metric {:.2}, other {:.2}, set_response_header {:.2}",
        per(c.clock),
        per(c.shared_get),
        per(c.shared_set),
        per(c.increment_metric),
        per(c.record_metric),
        per(c.other),
        per(c.set_response_header),
    );
    let allowed = host
        .inner
        .metric("meshguard.ratelimit.bench.all.allowed")
        .unwrap_or(0);
    assert_eq!(allowed as u64, n + 1, "every request counted as allowed");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let which = args.get(2).map(String::as_str).unwrap_or("all");
    let plain = r#"[{"name": "all", "capacity": 1000000000, "refill_tokens": 1000000000, "refill_interval": "1s"}]"#;
    let keyed = r#"[{"name": "all", "key": [{"header": "x-api-key"}], "capacity": 1000000000, "refill_tokens": 1000000000, "refill_interval": "1s"}]"#;
    let h = |n: &str, v: &str| (n.to_string(), v.as_bytes().to_vec());
    let req = Request {
        method: "GET".into(),
        path: "/api/items?page=2".into(),
        authority: "shop.example".into(),
        headers: vec![
            h("user-agent", "wrk/4.2.0"),
            h("accept", "application/json"),
            h("accept-encoding", "gzip, deflate, br"),
            h("x-request-id", "7f1c1d9e-3a51-4c2e-9f4b-0d6f7f0e9a21"),
            h("x-api-key", "key-0123456789abcdef"),
            h("x-forwarded-proto", "http"),
        ]
        .into(),
        peer_ip: "127.0.0.1".into(),
        norm_path: None,
    };
    let runs = [
        ("plain", plain, Filter::Today),
        ("keyed", keyed, Filter::Today),
        ("plain-proposed", plain, Filter::Proposed),
        ("keyed-proposed", keyed, Filter::Proposed),
        ("plain-values", plain, Filter::Values),
        ("keyed-values", keyed, Filter::Values),
        ("host-only", plain, Filter::HostOnly),
        ("host-only-keyed", keyed, Filter::HostOnly),
    ];
    for (label, limits, filter) in runs {
        if which == "all" || which == label {
            run(label, limits, &req, n, filter);
        }
    }
}
