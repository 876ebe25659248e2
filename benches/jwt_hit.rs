//! Native driver of the JWT hot path: a repeated RS256 token answered from
//! the per-worker verified-token cache, as `pipeline::run` does it. For
//! instruction counting (`valgrind --tool=callgrind`), see bench/README.md.
//!
//!     cargo build --release --bench jwt_hit
//!     valgrind --tool=callgrind target/release/deps/jwt_hit-* 2000 [miss]
//!
//! `miss`: a host whose `verify_signature` answers "valid" at once, and
//! every request a distinct token (4096 signatures cycled through the full
//! 1024-entry cache: each request inserts and evicts): what a distinct
//! token costs meshguard itself around the native check (parsing, the
//! call's arguments, claims, the cache's bookkeeping).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshguard::host::fake::FakeHost;
use meshguard::host::{Host, HostError, MetricId, MetricKind, SetError, SharedValue};
use meshguard::plan::Config;

/// The in-memory host with a `verify_signature` that says "valid" without
/// looking (the `miss` mode measures meshguard's side of the call only).
struct InstantNative(FakeHost);

impl Host for InstantNative {
    fn now_nanos(&self) -> u64 {
        self.0.now_nanos()
    }
    fn shared_get(&self, key: &str) -> Result<SharedValue, HostError> {
        self.0.shared_get(key)
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        self.0.shared_set(key, value, cas)
    }
    fn random_bytes(&self, buf: &mut [u8]) -> Result<(), HostError> {
        self.0.random_bytes(buf)
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<MetricId, HostError> {
        self.0.define_metric(kind, name)
    }
    fn increment_metric(&self, id: MetricId, delta: i64) {
        self.0.increment_metric(id, delta)
    }
    fn record_metric(&self, id: MetricId, value: u64) {
        self.0.record_metric(id, value)
    }
    fn call_foreign(&self, _name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        std::hint::black_box(args);
        Ok(Some(vec![0x08, 1]))
    }
}
use meshguard::jwt::{self, AuthOutcome, TokenCache};
use meshguard::request::Request;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/jwks.json")).unwrap())
            .unwrap();
    let tokens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/tokens.json")).unwrap())
            .unwrap();
    let doc = serde_json::json!({
        "jwt_providers": {"bench": {"issuer": "https://issuer.test", "audiences": ["api"], "jwks": {"inline": jwks}}},
        "routes": [{"name": "bench", "match": {"path_prefix": "/"}, "jwt": {"providers": ["bench"]}}],
    });
    let cfg = Config::from_bytes(doc.to_string().as_bytes()).unwrap();
    let route = &cfg.routes[0];
    let rj = route.jwt.as_ref().unwrap();
    let token = tokens["valid_RS256"].as_str().unwrap();
    let mut headers: Vec<(String, Vec<u8>)> = [
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "5f0e6c1e-4a8b-4d53-9a7e-3a1f2b0c9d11"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    headers.push((
        "authorization".into(),
        format!("Bearer {token}").into_bytes(),
    ));
    let req = Request {
        method: "GET".into(),
        path: "/bench".into(),
        authority: "127.0.0.1:10000".into(),
        headers: headers.clone().into(),
        peer_ip: String::new(),
        norm_path: None,
    };
    let miss = std::env::args().nth(2).as_deref() == Some("miss");
    let host = InstantNative(FakeHost::new(1_700_000_000_000_000_000));
    let mut cache = TokenCache::default();
    // Distinct tokens: the signature's last 4 characters numbered (the
    // instant host accepts any signature).
    let requests: Vec<Request> = if miss {
        (0..4096)
            .map(|i| {
                let mut hs = headers.clone();
                if let Some((_, v)) = hs.iter_mut().find(|(k, _)| k == "authorization") {
                    // Not the last characters: the very last one of a
                    // base64url signature carries padding bits.
                    let at = v.len() - 8;
                    let digits: Vec<u8> = format!("{i:04}")
                        .bytes()
                        .map(|d| b'A' + (d - b'0'))
                        .collect();
                    v[at..at + 4].copy_from_slice(&digits);
                }
                Request {
                    headers: hs.into(),
                    ..req.clone()
                }
            })
            .collect()
    } else {
        vec![req]
    };
    let t0 = std::time::Instant::now();
    let mut allowed = 0;
    for i in 0..n {
        let req = &requests[i % requests.len()];
        match jwt::authenticate(&host, &cfg.jwt_providers, rj, &route.name, req, &mut cache) {
            AuthOutcome::Allowed { .. } => allowed += 1,
            other => panic!("{other:?}"),
        }
    }
    let el = t0.elapsed();
    println!(
        "{n} requests, {allowed} allowed, cache hits {}, {:.0} ns/request",
        cache.stats.hits,
        el.as_nanos() as f64 / n as f64
    );
}
