//! The breaker section through the whole configuration parser: errors name
//! the full JSON path, defaults apply, and the README example compiles.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshguard::breaker::Scope;
use meshguard::plan::Config;

fn route_with(cb: &str) -> String {
    format!(
        r#"{{ "routes": [ {{ "name": "a" }}, {{ "name": "orders-api", "circuit_breaker": {cb} }} ] }}"#
    )
}

#[test]
fn contract_example_compiles() {
    let doc = route_with(
        r#"{ "failure_statuses": ["5xx"], "consecutive_failures": 5,
             "failure_ratio": 0.5, "min_requests": 20, "window": "10s",
             "slow_call": "2s", "open_duration": "5s", "max_open_duration": "60s",
             "half_open_requests": 1, "success_threshold": 1, "scope": "route" }"#,
    );
    let cfg = Config::from_bytes(doc.as_bytes()).unwrap();
    assert!(cfg.routes[0].breaker.is_none());
    let p = cfg.routes[1].breaker.as_ref().unwrap();
    assert_eq!(p.consecutive_failures, 5);
    assert_eq!(p.slow_call_ns, Some(2_000_000_000));
    assert_eq!(p.scope, Scope::Route);
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
