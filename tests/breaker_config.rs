//! The breaker section through the whole configuration parser: errors name
//! the full JSON path, defaults apply, and the example of
//! docs/configuration.md ("Circuit breaker") compiles to what it shows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshguard::breaker::Scope;
use meshguard::plan::Config;

fn route_with(cb: &str) -> String {
    format!(
        r#"{{ "routes": [ {{ "name": "a" }}, {{ "name": "orders-api", "circuit_breaker": {cb} }} ] }}"#
    )
}

/// The first ```json block of the section of docs/configuration.md whose
/// heading names `routes[].circuit_breaker`.
fn documented_example() -> String {
    let path = format!("{}/docs/configuration.md", env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(&path).unwrap();
    let at = doc
        .lines()
        .position(|l| l.starts_with('#') && l.contains("`routes[].circuit_breaker`"))
        .expect("a heading naming `routes[].circuit_breaker`");
    let mut block = String::new();
    let mut inside = false;
    for line in doc.lines().skip(at + 1) {
        if !inside && line.starts_with('#') {
            break;
        }
        if inside && line.starts_with("```") {
            return block;
        }
        if inside {
            block.push_str(line);
            block.push('\n');
        }
        inside |= line.starts_with("```json");
    }
    panic!("no ```json block in the circuit breaker section of {path}");
}

#[test]
fn contract_example_compiles() {
    let doc = documented_example();
    let cfg = Config::from_bytes(doc.as_bytes()).unwrap();
    let p = cfg.routes[0].breaker.as_ref().unwrap();
    assert_eq!(p.consecutive_failures, 5);
    assert_eq!(p.slow_call_ns, Some(2_000_000_000));
    assert_eq!(p.open_duration_ns, 5_000_000_000);
    assert_eq!(p.max_open_duration_ns, 60_000_000_000);
    assert_eq!(p.half_open_requests, 1);
    assert_eq!(p.success_threshold, 1);
    assert_eq!(p.scope, Scope::Route);
    let ratio = p.ratio.as_ref().unwrap();
    assert_eq!(
        (ratio.failure_ratio, ratio.min_requests, ratio.window_ns),
        (0.5, 20, 10_000_000_000)
    );
    // Beside another route, it is that route's alone.
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let two = route_with(&v["routes"][0]["circuit_breaker"].to_string());
    let cfg = Config::from_bytes(two.as_bytes()).unwrap();
    assert!(cfg.routes[0].breaker.is_none());
    assert_eq!(
        cfg.routes[1].breaker.as_ref().unwrap().consecutive_failures,
        5
    );
}

#[test]
fn errors_carry_the_full_json_path() {
    let cases = [
        (
            r#"{ "consecutive_failures": 0 }"#,
            "invalid config at routes[1].circuit_breaker.consecutive_failures: expected an integer >= 1, got 0",
        ),
        (
            r#"{ "failure_statuses": ["5xx", 700] }"#,
            "invalid config at routes[1].circuit_breaker.failure_statuses[1]: expected a status code from 100 to 599 (e.g. 503 or \"503\") or a class \"1xx\" to \"5xx\", got 700",
        ),
        (
            r#"{ "grpc_failure_statuses": ["UNAVAILABLE", "NOPE"] }"#,
            "invalid config at routes[1].circuit_breaker.grpc_failure_statuses[1]: expected a gRPC status name such as \"UNAVAILABLE\" or a number from 0 to 16, got \"NOPE\"",
        ),
        (
            r#"{ "grpc_failure_statuses": [17] }"#,
            "invalid config at routes[1].circuit_breaker.grpc_failure_statuses[0]: expected a gRPC status name such as \"UNAVAILABLE\" or a number from 0 to 16, got 17",
        ),
        (
            r#"{ "scope": "cluster" }"#,
            "invalid config at routes[1].circuit_breaker.scope: expected \"route\" or \"upstream\", got \"cluster\"",
        ),
        (
            r#"{ "open_duration": "10s", "max_open_duration": "5s" }"#,
            "invalid config at routes[1].circuit_breaker.max_open_duration: expected a duration >= open_duration (10s), got \"5s\"",
        ),
    ];
    for (cb, want) in cases {
        let err = Config::from_bytes(route_with(cb).as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), want, "{cb}");
    }
}

#[test]
fn grpc_failure_statuses_take_names_and_numbers() {
    use meshguard::grpc::{Code, CodeSet};
    let doc = route_with(r#"{ "grpc_failure_statuses": ["internal", 14, "4"] }"#);
    let cfg = Config::from_bytes(doc.as_bytes()).unwrap();
    let set = cfg.routes[1]
        .breaker
        .as_ref()
        .unwrap()
        .grpc_failure_statuses;
    for c in [Code::INTERNAL, Code::UNAVAILABLE, Code::DEADLINE_EXCEEDED] {
        assert!(set.contains(c), "{c:?}");
    }
    assert!(!set.contains(Code::UNKNOWN) && !set.contains(Code::OK));
    // Empty: only upstream failures, broken responses and slow calls count.
    let doc = route_with(r#"{ "grpc_failure_statuses": [] }"#);
    let cfg = Config::from_bytes(doc.as_bytes()).unwrap();
    assert_eq!(
        cfg.routes[1]
            .breaker
            .as_ref()
            .unwrap()
            .grpc_failure_statuses,
        CodeSet::default()
    );
    // Default.
    let cfg = Config::from_bytes(route_with("{}").as_bytes()).unwrap();
    assert_eq!(
        cfg.routes[1]
            .breaker
            .as_ref()
            .unwrap()
            .grpc_failure_statuses,
        CodeSet::SERVER_FAILURES
    );
}

#[test]
fn unknown_keys_are_rejected_by_the_raw_types() {
    let err =
        Config::from_bytes(route_with(r#"{ "consecutive_failure": 3 }"#).as_bytes()).unwrap_err();
    assert!(err.to_string().contains("consecutive_failure"), "{err}");
}
