//! Properties of the response cache shared by competing workers (clones of
//! one `FakeHost`), driven through the public cache API as the filter
//! drives it (lookup -> upstream -> on_response_headers -> store, or a
//! stream that ends without `store`, as an upstream reset does). A rival
//! worker's whole request lands between any two shared-data writes of
//! another (between the chunks of one entry too, see `prop_support`).
//!
//! - the store never holds more than its byte budget (`max_bytes`), and
//!   only keys of its fixed table;
//! - a hit is always exactly the origin's response for that request: never
//!   an entry whose `Vary` does not match (the origin's body names the
//!   `Accept` value it answered), never a partially written entry (the
//!   body's length and contents are checked whole).
//!
//! Case count: MESHGUARD_PROP_CASES (default 128).

#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod prop_support;

use meshguard::cache::store::Layout;
use meshguard::cache::CacheStoreConfig;
use meshguard::cache::{
    abandon, lookup, on_response_headers, store, CacheMetrics, CachePolicy, CacheRoute, Lookup,
    ResponseDecision,
};
use meshguard::host::fake::FakeHost;
use meshguard::host::Host;
use meshguard::request::Request;
use prop_support::{cases, Racing};
use proptest::prelude::*;
use std::cell::Cell;
use std::time::Duration;

const T0: u64 = 1_700_000_000_000_000_000;
const ACCEPTS: [Option<&str>; 4] = [None, Some("text/a"), Some("text/b"), Some("text/c")];

/// One request: path index, Accept choice, whether the upstream resets
/// before the body ends.
#[derive(Debug, Clone, Copy)]
struct Req {
    path: u8,
    accept: u8,
    reset: bool,
}

fn req_strategy() -> impl Strategy<Value = Req> {
    (0u8..6, 0u8..4, prop::bool::weighted(0.15)).prop_map(|(path, accept, reset)| Req {
        path,
        accept,
        reset,
    })
}

fn request(r: Req) -> Request {
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(a) = ACCEPTS[r.accept as usize] {
        headers.push(("accept".into(), a.as_bytes().to_vec()));
    }
    Request {
        method: "GET".into(),
        path: format!("/p{}", r.path),
        authority: "h".into(),
        headers: headers.into(),
        peer_ip: "127.0.0.1".into(),
        norm_path: None,
    }
}

/// The origin: even paths vary on Accept and name it in the body; odd
/// paths do not vary. Sizes from 10 bytes to several chunks.
fn origin(r: Req, size_salt: u64) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
    let varies = r.path % 2 == 0;
    let accept = if varies {
        ACCEPTS[r.accept as usize].unwrap_or("-")
    } else {
        "*"
    };
    let mut headers = vec![
        ("content-type".to_string(), b"text/plain".to_vec()),
        ("cache-control".to_string(), b"max-age=30".to_vec()),
    ];
    if varies {
        headers.push(("vary".to_string(), b"accept".to_vec()));
    }
    let mut body = format!("/p{}|{accept}|", r.path).into_bytes();
    let len = [10usize, 300, 1_500, 5_000][((r.path as u64 + size_salt) % 4) as usize];
    while body.len() < len {
        body.push(b'a' + (body.len() % 26) as u8);
    }
    (headers, body)
}

/// What a hit must be: the origin's response for this request, whole.
fn expected_body(r: Req, size_salt: u64) -> Vec<u8> {
    origin(r, size_salt).1
}

struct World {
    policy: CachePolicy,
    store: CacheStoreConfig,
    metrics: CacheMetrics,
    size_salt: u64,
    hits: Cell<u32>,
}

impl World {
    fn route(&self) -> CacheRoute<'_> {
        CacheRoute {
            name: "api",
            policy: &self.policy,
            store: &self.store,
            metrics: &self.metrics,
        }
    }

    /// One request as the filter runs it; a hit is checked.
    fn run(&self, host: &impl Host, r: Req) -> Result<(), String> {
        let req = request(r);
        let route = self.route();
        match lookup(host, &route, &req) {
            Lookup::Hit(resp) => {
                self.hits.set(self.hits.get() + 1);
                if resp.status != 200 || resp.body != expected_body(r, self.size_salt) {
                    return Err(format!(
                        "hit for {r:?} served {} {:?}...",
                        resp.status,
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(24)])
                    ));
                }
                Ok(())
            }
            Lookup::Miss { mut ctx } | Lookup::Revalidate { mut ctx, .. } => {
                let (headers, body) = origin(r, self.size_salt);
                match on_response_headers(host, &route, &mut ctx, 200, &headers) {
                    ResponseDecision::Store { max_body, .. } if !r.reset => {
                        if body.len() <= max_body {
                            store(host, &route, &mut ctx, 200, &headers, &body);
                        } else {
                            abandon(host, &route, &mut ctx);
                        }
                    }
                    // The upstream reset mid-body: the stream ends without
                    // `store`.
                    _ => abandon(host, &route, &mut ctx),
                }
                Ok(())
            }
            Lookup::Bypass { .. } | Lookup::Wait { .. } | Lookup::OnlyIfCachedMiss(_) => Ok(()),
        }
    }
}

fn budget(host: &FakeHost, layout: &Layout, max_bytes: u64) -> Result<(), TestCaseError> {
    let keys = layout.all_keys();
    let mut bytes = 0u64;
    for k in &keys {
        if let Some(v) = host.raw(k) {
            bytes += v.len() as u64;
        }
    }
    prop_assert!(
        host.shared_len() <= keys.len(),
        "{} keys in shared data, the table has {}",
        host.shared_len(),
        keys.len()
    );
    prop_assert!(
        bytes <= max_bytes,
        "{bytes} bytes stored, budget {max_bytes}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(128)))]

    #[test]
    fn the_cache_stays_in_budget_and_serves_only_whole_matching_entries(
        max_bytes in prop_oneof![Just(4_096u64), Just(16_384), Just(65_536)],
        size_salt in 0u64..4,
        steps in proptest::collection::vec(
            (0usize..3, req_strategy(), req_strategy(),
             proptest::collection::vec(any::<bool>(), 0..12), 0u64..40),
            1..40),
    ) {
        let store_host = FakeHost::new(T0);
        let workers: Vec<FakeHost> = (0..3).map(|_| store_host.clone()).collect();
        let policy = CachePolicy {
            vary_allowlist: vec!["accept".to_string()],
            ..CachePolicy::default()
        };
        let w = World {
            policy,
            store: CacheStoreConfig { max_bytes, max_entry_bytes: 8_192 },
            metrics: CacheMetrics::define(&store_host, "api"),
            size_salt,
            hits: Cell::new(0),
        };
        let layout = Layout::new(&w.store);
        let rival_error: std::cell::RefCell<Option<String>> = std::cell::RefCell::new(None);
        for (worker, mine, theirs, plan, advance_s) in &steps {
            store_host.advance(Duration::from_secs(*advance_s));
            let me = Racing::new(workers[*worker].clone());
            let rival = workers[(*worker + 1) % 3].clone();
            let (ww, err, theirs) = (&w, &rival_error, *theirs);
            me.race(plan, move || {
                if let Err(e) = ww.run(&rival, theirs) {
                    err.borrow_mut().get_or_insert(e);
                }
            });
            let mine_result = w.run(&me, *mine);
            me.calm();
            if let Err(e) = mine_result {
                prop_assert!(false, "{}", e);
            }
            if let Some(e) = rival_error.borrow_mut().take() {
                prop_assert!(false, "rival: {}", e);
            }
            budget(&store_host, &layout, max_bytes)?;
        }
    }
}

/// The hit check can fail: a response stored for one Accept value and
/// served for another is caught.
#[test]
fn a_hit_for_another_variant_is_caught() {
    let host = FakeHost::new(T0);
    let policy = CachePolicy {
        vary_allowlist: vec!["accept".to_string()],
        ..CachePolicy::default()
    };
    let w = World {
        policy,
        store: CacheStoreConfig {
            max_bytes: 65_536,
            max_entry_bytes: 8_192,
        },
        metrics: CacheMetrics::define(&host, "api"),
        size_salt: 0,
        hits: Cell::new(0),
    };
    let a = Req {
        path: 0,
        accept: 1,
        reset: false,
    };
    w.run(&host, a).unwrap();
    w.run(&host, a).unwrap();
    assert_eq!(w.hits.get(), 1, "the second request is a hit");
    // The same stored entry, judged as the answer for another Accept.
    let Lookup::Hit(resp) = lookup(&host, &w.route(), &request(a)) else {
        panic!("expected a hit");
    };
    let other = Req { accept: 2, ..a };
    assert_ne!(resp.body, expected_body(other, 0));
}
