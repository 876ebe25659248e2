//! The server binary over real gRPC, with a real redis-server.

mod common;

use common::{Redis, Rls};
use meshguard_test_rls::grpc::{code, Client};
use meshguard_test_rls::proto::{
    Code, DescriptorStatus, RateLimitDescriptor, RateLimitRequest, RateLimitResponse, Unit,
};
use std::time::{Duration, Instant};

fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors,
        hits_addend: 0,
    }
}

fn one(domain: &str, entries: &[(&str, &str)]) -> RateLimitRequest {
    request(domain, vec![RateLimitDescriptor::of(entries)])
}

fn overall(r: &RateLimitResponse) -> Code {
    Code::try_from(r.overall_code).expect("a known code")
}

fn status_code(s: &DescriptorStatus) -> Code {
    Code::try_from(s.code).expect("a known code")
}

async fn call(client: &Client, req: &RateLimitRequest) -> RateLimitResponse {
    client
        .should_rate_limit(req)
        .await
        .expect("ShouldRateLimit")
}

/// The example of README.md: N per 60 s for route=r and limit=l, one counter
/// per client_ip.
const README_LIMITS: &str = r#"[
  {"name": "orders-per-client", "namespace": "meshguard", "max_value": 3, "seconds": 60,
   "conditions": ["descriptors[0].route == 'orders'", "descriptors[0].limit == 'per-client'"],
   "variables": ["descriptors[0].client_ip"]}
]"#;

const THREE_PER_MINUTE: &str = r#"[
  {"name": "three", "namespace": "t", "max_value": 3, "seconds": 60,
   "conditions": ["descriptors[0].k == 'v'"]}
]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_per_minute_then_over_limit() {
    let redis = Redis::start();
    let rls = Rls::start(THREE_PER_MINUTE, Some(&redis.url()), &[]);
    let client = rls.client().await;
    let req = one("t", &[("k", "v")]);
    for left in [2, 1, 0] {
        let r = call(&client, &req).await;
        assert_eq!(overall(&r), Code::Ok, "{r:?}");
        assert_eq!(r.statuses.len(), 1);
        let s = &r.statuses[0];
        assert_eq!(status_code(s), Code::Ok);
        assert_eq!(s.limit_remaining, left);
        let limit = s.current_limit.as_ref().expect("current_limit");
        assert_eq!(limit.name, "three");
        assert_eq!(limit.requests_per_unit, 3);
        assert_eq!(limit.unit, Unit::Minute as i32);
    }
    for _ in 0..2 {
        let r = call(&client, &req).await;
        assert_eq!(overall(&r), Code::OverLimit, "{r:?}");
        let s = &r.statuses[0];
        assert_eq!(status_code(s), Code::OverLimit);
        assert_eq!(s.limit_remaining, 0);
        assert_eq!(
            s.current_limit.as_ref().expect("current_limit").name,
            "three"
        );
        let reset = s
            .duration_until_reset
            .as_ref()
            .expect("duration_until_reset")
            .as_secs_f64();
        assert!(reset > 0.0 && reset <= 60.0, "reset in {reset} s");
    }
    // Another value of the condition's entry: no limit applies.
    let r = call(&client, &one("t", &[("k", "w")])).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses[0].current_limit, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_example_counts_per_client_ip() {
    let redis = Redis::start();
    let rls = Rls::start(README_LIMITS, Some(&redis.url()), &[]);
    let client = rls.client().await;
    let req = |ip: &str| {
        one(
            "meshguard",
            &[
                ("route", "orders"),
                ("limit", "per-client"),
                ("client_ip", ip),
            ],
        )
    };
    for _ in 0..3 {
        assert_eq!(overall(&call(&client, &req("10.0.0.1")).await), Code::Ok);
    }
    assert_eq!(
        overall(&call(&client, &req("10.0.0.1")).await),
        Code::OverLimit
    );
    // Another client has its own counter.
    let r = call(&client, &req("10.0.0.2")).await;
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses[0].limit_remaining, 2);
    // Without client_ip, or on another route or domain, the limit does not apply.
    for r in [
        one("meshguard", &[("route", "orders"), ("limit", "per-client")]),
        one(
            "meshguard",
            &[
                ("route", "other"),
                ("limit", "per-client"),
                ("client_ip", "10.0.0.1"),
            ],
        ),
        one(
            "other",
            &[
                ("route", "orders"),
                ("limit", "per-client"),
                ("client_ip", "10.0.0.1"),
            ],
        ),
    ] {
        let r = call(&client, &r).await;
        assert_eq!(overall(&r), Code::Ok, "{r:?}");
        assert_eq!(r.statuses[0].current_limit, None);
    }
}

/// Two servers on one Redis, many concurrent calls: exactly N admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sharing_redis_admit_exactly_n() {
    const N: usize = 5;
    const CALLS: usize = 60;
    let redis = Redis::start();
    let limits = r#"[{"name": "five", "namespace": "shared", "max_value": 5, "seconds": 60,
                      "variables": ["descriptors[0].key"]}]"#;
    let a = Rls::start(limits, Some(&redis.url()), &[]);
    let b = Rls::start(limits, Some(&redis.url()), &[]);
    for round in 0..3 {
        let key = format!("round-{round}");
        let mut clients = Vec::new();
        for i in 0..6 {
            // Several connections to each server.
            clients.push(if i % 2 == 0 {
                a.client().await
            } else {
                b.client().await
            });
        }
        let mut tasks = Vec::new();
        for i in 0..CALLS {
            let client = clients[i % clients.len()].clone();
            let req = one("shared", &[("key", &key)]);
            tasks.push(tokio::spawn(async move { call(&client, &req).await }));
        }
        let mut admitted = 0;
        for t in tasks {
            let r = t.await.expect("task");
            if overall(&r) == Code::Ok {
                admitted += 1;
            }
        }
        assert_eq!(
            admitted, N,
            "round {round}: {admitted} of {CALLS} admitted, limit {N}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_follow_descriptor_order() {
    let redis = Redis::start();
    let limits = r#"[
      {"name": "one", "namespace": "o", "max_value": 1, "seconds": 60,
       "conditions": ["descriptors[0].d == 'one'"]},
      {"name": "ten", "namespace": "o", "max_value": 10, "seconds": 3600,
       "conditions": ["descriptors[0].d == 'ten'"]}
    ]"#;
    let rls = Rls::start(limits, Some(&redis.url()), &[]);
    let client = rls.client().await;
    let req = request(
        "o",
        vec![
            RateLimitDescriptor::of(&[("d", "ten")]),
            RateLimitDescriptor::of(&[("d", "none")]),
            RateLimitDescriptor::of(&[("d", "one")]),
        ],
    );
    let first = call(&client, &req).await;
    assert_eq!(overall(&first), Code::Ok, "{first:?}");
    let second = call(&client, &req).await;
    assert_eq!(overall(&second), Code::OverLimit, "{second:?}");
    for (r, last) in [(&first, Code::Ok), (&second, Code::OverLimit)] {
        assert_eq!(r.statuses.len(), 3);
        let codes: Vec<Code> = r.statuses.iter().map(status_code).collect();
        assert_eq!(codes, vec![Code::Ok, Code::Ok, last]);
        let ten = r.statuses[0].current_limit.as_ref().expect("ten");
        assert_eq!((ten.name.as_str(), ten.unit), ("ten", Unit::Hour as i32));
        assert_eq!(r.statuses[1].current_limit, None);
        assert_eq!(
            r.statuses[2].current_limit.as_ref().expect("one").name,
            "one"
        );
    }
    // Each descriptor is counted on its own: "ten" took both hits.
    assert_eq!(first.statuses[0].limit_remaining, 9);
    assert_eq!(second.statuses[0].limit_remaining, 8);
    // An empty request is OK.
    let r = call(&client, &request("o", vec![])).await;
    assert_eq!(overall(&r), Code::Ok);
    assert!(r.statuses.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_addend_from_request_and_descriptor() {
    let redis = Redis::start();
    let limits = r#"[{"name": "ten", "namespace": "h", "max_value": 10, "seconds": 60,
                      "conditions": ["descriptors[0].k == 'v'"]}]"#;
    let rls = Rls::start(limits, Some(&redis.url()), &[]);
    let client = rls.client().await;
    let mut req = one("h", &[("k", "v")]);
    req.hits_addend = 4;
    let r = call(&client, &req).await;
    assert_eq!(r.statuses[0].limit_remaining, 6, "{r:?}");
    // The descriptor's own hits_addend wins over the request's.
    req.descriptors[0] = RateLimitDescriptor::of(&[("k", "v")]).with_hits(5);
    let r = call(&client, &req).await;
    assert_eq!((overall(&r), r.statuses[0].limit_remaining), (Code::Ok, 1));
    // 4 more do not fit in the 1 left: refused, and not counted.
    req.descriptors[0] = RateLimitDescriptor::of(&[("k", "v")]);
    let r = call(&client, &req).await;
    assert_eq!(
        (overall(&r), r.statuses[0].limit_remaining),
        (Code::OverLimit, 0)
    );
    req.hits_addend = 0;
    let r = call(&client, &req).await;
    assert_eq!((overall(&r), r.statuses[0].limit_remaining), (Code::Ok, 0));
    let r = call(&client, &req).await;
    assert_eq!(overall(&r), Code::OverLimit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_window_starts_when_the_last_one_ends() {
    let redis = Redis::start();
    let limits = r#"[{"name": "one-per-second", "namespace": "w", "max_value": 1, "seconds": 1}]"#;
    let rls = Rls::start(limits, Some(&redis.url()), &[]);
    let client = rls.client().await;
    let req = one("w", &[("any", "thing")]);
    for _ in 0..2 {
        let r = call(&client, &req).await;
        assert_eq!(
            (overall(&r), r.statuses[0].limit_remaining),
            (Code::Ok, 0),
            "{r:?}"
        );
        let limit = r.statuses[0].current_limit.as_ref().expect("limit");
        assert_eq!(limit.unit, Unit::Second as i32);
        let reset = r.statuses[0].duration_until_reset.as_ref().expect("reset");
        assert!(reset.as_secs_f64() <= 1.0, "{reset:?}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted() {
    let mut redis = Redis::start();
    let rls = Rls::start(THREE_PER_MINUTE, Some(&redis.url()), &[]);
    let client = rls.client().await;
    let req = one("t", &[("k", "v")]);
    assert_eq!(overall(&call(&client, &req).await), Code::Ok);

    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let err = client
            .should_rate_limit(&req)
            .await
            .expect_err("Redis is down");
        let took = started.elapsed();
        assert_eq!(err.code, code::UNAVAILABLE, "{err}");
        assert!(!err.message.starts_with("client:"), "{err}");
        assert!(took < Duration::from_secs(1), "UNAVAILABLE after {took:?}");
    }

    redis.restart();
    // The very first call works: a call that finds the connection refused
    // tries once more on the new connection its failure started.
    let r = call(&client, &req).await;
    // A new, empty Redis: the count starts again.
    assert_eq!(overall(&r), Code::Ok);
    assert_eq!(r.statuses[0].limit_remaining, 2);
    assert!(rls.log().contains("UNAVAILABLE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_gives_unavailable_in_time() {
    let redis = Redis::start();
    let rls = Rls::start(THREE_PER_MINUTE, Some(&redis.url()), &[]);
    let client = rls.client().await;
    let req = one("t", &[("k", "v")]);
    assert_eq!(overall(&call(&client, &req).await), Code::Ok);

    redis.pause(true);
    for _ in 0..2 {
        let started = Instant::now();
        let err = client
            .should_rate_limit(&req)
            .await
            .expect_err("Redis hangs");
        let took = started.elapsed();
        assert_eq!(err.code, code::UNAVAILABLE, "{err}");
        assert!(took < Duration::from_secs(1), "UNAVAILABLE after {took:?}");
    }
    redis.pause(false);
    let started = Instant::now();
    loop {
        match client.should_rate_limit(&req).await {
            // Answered, whatever the answer: the calls that timed out were
            // sent, and Redis ran them when it resumed, so they count.
            Ok(r) => {
                assert_eq!(r.statuses.len(), 1, "{r:?}");
                break;
            }
            Err(e) => {
                assert_eq!(e.code, code::UNAVAILABLE, "{e}");
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "still {e} {:?} after Redis resumed",
                    started.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!(
        "calls succeed again {:?} after Redis resumed",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_status_not_a_crash() {
    let rls = Rls::start(THREE_PER_MINUTE, None, &[]);
    let client = rls.client().await;
    let bodies: [&[u8]; 5] = [
        b"",
        b"\0\0\0",
        b"\0\0\0\0\x09short",
        b"\0\0\0\0\x04\xff\xff\xff\xff",
        // A field 1 (domain) that claims 100 bytes.
        b"\0\0\0\0\x02\x0a\x64",
    ];
    for body in bodies {
        let err = client
            .call_raw(bytes::Bytes::from_static(body))
            .await
            .expect_err("malformed");
        assert_eq!(err.code, code::INVALID_ARGUMENT, "{body:?}: {err}");
    }
    let err = client
        .call_raw(bytes::Bytes::from_static(b"\x01\0\0\0\0"))
        .await
        .expect_err("compressed");
    assert_eq!(err.code, code::UNIMPLEMENTED, "{err}");
    // Still serving, on the same connection.
    assert_eq!(
        overall(&call(&client, &one("t", &[("k", "v")])).await),
        Code::Ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_without_redis() {
    let rls = Rls::start(THREE_PER_MINUTE, None, &[]);
    let client = rls.client().await;
    let req = one("t", &[("k", "v")]);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = client.clone();
        let req = req.clone();
        tasks.push(tokio::spawn(async move { call(&client, &req).await }));
    }
    let mut admitted = 0;
    for t in tasks {
        if overall(&t.await.expect("task")) == Code::Ok {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3);
    let r = call(&client, &req).await;
    assert_eq!(
        (overall(&r), r.statuses[0].limit_remaining),
        (Code::OverLimit, 0)
    );
    assert!(r.statuses[0].duration_until_reset.is_some());
    assert!(rls.log().contains("OVER_LIMIT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_ms_delays_each_answer() {
    let rls = Rls::start(THREE_PER_MINUTE, None, &["--delay-ms", "300"]);
    let client = rls.client().await;
    let started = Instant::now();
    call(&client, &one("t", &[("k", "v")])).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
}

#[test]
fn bad_limits_file_fails_at_start() {
    let dir = common::workdir("bad-limits");
    let path = dir.join("limits.json");
    std::fs::write(
        &path,
        r#"[{"namespace": "a", "max_value": 1, "seconds": 1, "conditions": ["42"]}]"#,
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshguard-test-rls"))
        .args(["--listen", "127.0.0.1:0", "--limits"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a boolean"), "{stderr}");
    assert!(out.stdout.is_empty());
}
