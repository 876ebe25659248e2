//! Every kind of bad input gives one clear error naming the JSON path, what
//! is expected and what was found; good input compiles.

use super::*;
use crate::config::MAX_CONFIG_BYTES;

fn err(json: &str) -> ConfigError {
    match Config::from_bytes(json.as_bytes()) {
        Ok(_) => panic!("config should be refused: {json}"),
        Err(e) => e,
    }
}

fn ok(json: &str) -> Config {
    match Config::from_bytes(json.as_bytes()) {
        Ok(c) => c,
        Err(e) => panic!("config should load: {e}\n{json}"),
    }
}

#[test]
fn empty_documents_mean_pass_through() {
    for doc in ["", "  \n", "{}", r#"{"routes": []}"#] {
        assert!(ok(doc).routes.is_empty(), "{doc:?}");
    }
}

#[test]
fn schema_key_is_allowed_only_at_top_level() {
    ok(r#"{"$schema": "./meshguard.schema.json"}"#);
    let e = err(r#"{"routes": [{"name": "a", "$schema": "x"}]}"#);
    assert_eq!(e.path, "routes[0].$schema");
}

#[test]
fn the_contract_example_loads() {
    let c = ok(r#"{
      "jwt_providers": { "corp": { "issuer": "https://auth.example.com",
          "jwks": { "inline": { "keys": [ { "kty": "oct", "kid": "k1", "k": "YW4taG1hYy1zZWNyZXQtb2YtYXQtbGVhc3QtMzItYnl0ZXMh" } ] } },
          "algorithms": ["HS256"] } },
      "routes": [ { "name": "orders-api",
        "match": { "path_prefix": "/api/", "methods": ["GET", "POST"], "hosts": ["api.example.com", "*.example.com"],
                   "headers": [ { "name": "x-env", "exact": "prod" }, { "name": "x-debug", "present": true } ] },
        "jwt": { "providers": ["corp"] },
        "rate_limit": [ { "name": "per-user", "key": [ { "claim": "sub" } ], "capacity": 100,
                          "refill_tokens": 100, "refill_interval": "1m", "cost": 1, "shadow": false } ],
        "circuit_breaker": { "failure_statuses": ["5xx"], "consecutive_failures": 5 },
        "cache": { "methods": ["GET", "HEAD"] } } ],
      "rate_limit_headers": "both",
      "client_ip": { "xff_trusted_hops": 1 },
      "cache_store": { "max_bytes": 67108864, "max_entry_bytes": 1048576 },
      "max_rate_limit_keys": 10000
    }"#);
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.rate_limit_headers, HeaderStyle::Both);
    assert_eq!(c.xff_trusted_hops, 1);
    assert_eq!(c.max_rate_limit_keys, 10_000);
}

#[test]
fn errors_name_path_expectation_and_value() {
    // (document, path, words the message must contain)
    let cases: &[(&str, &str, &[&str])] = &[
        // wrong types
        (
            r#"{"routes": {}}"#,
            "routes",
            &["expected an array", "got map"],
        ),
        (
            r#"{"routes": [{"name": 7}]}"#,
            "routes[0].name",
            &["expected a string", "got integer `7`"],
        ),
        (
            r#"{"routes": [{"name": "a", "rate_limit": [{"capacity": "5", "refill_interval": "1s"}]}]}"#,
            "routes[0].rate_limit[0].capacity",
            &["expected an integer", "got string \"5\""],
        ),
        (
            r#"{"max_rate_limit_keys": true}"#,
            "max_rate_limit_keys",
            &["non-negative integer", "got boolean `true`"],
        ),
        (
            r#"{"rate_limit_headers": 1}"#,
            "rate_limit_headers",
            &["expected a string"],
        ),
        // zero and negative numbers
        (
            r#"{"routes": [{"name": "a", "rate_limit": [{"capacity": 0, "refill_interval": "1s"}]}]}"#,
            "routes[0].rate_limit[0].capacity",
            &["expected an integer from 1 to 1000000000, got 0"],
        ),
        (
            r#"{"routes": [{"name": "a", "rate_limit": [{"capacity": 5, "cost": -1, "refill_interval": "1s"}]}]}"#,
            "routes[0].rate_limit[0].cost",
            &["got -1"],
        ),
        (
            r#"{"max_rate_limit_keys": 0}"#,
            "max_rate_limit_keys",
            &["from 1 to", "got 0"],
        ),
        (
            r#"{"max_rate_limit_keys": -5}"#,
            "max_rate_limit_keys",
            &["non-negative integer", "-5"],
        ),
        (
            r#"{"cache_store": {"max_bytes": 10}}"#,
            "cache_store.max_bytes",
            &[">= 1024", "got 10"],
        ),
        (
            r#"{"cache_store": {"max_bytes": 2048, "max_entry_bytes": 4096}}"#,
            "cache_store.max_entry_bytes",
            &["at most cache_store.max_bytes (2048)", "got 4096"],
        ),
        (
            r#"{"client_ip": {"xff_trusted_hops": 100}}"#,
            "client_ip.xff_trusted_hops",
            &["0 to 64", "got 100"],
        ),
        // bad durations
        (
            r#"{"routes": [{"name": "a", "rate_limit": [{"capacity": 5, "refill_interval": "5 minutes"}]}]}"#,
            "routes[0].rate_limit[0].refill_interval",
            &[
                "expected a duration string like \"250ms\"",
                "got \"5 minutes\"",
            ],
        ),
        (
            r#"{"routes": [{"name": "a", "rate_limit": [{"capacity": 5, "refill_interval": 60}]}]}"#,
            "routes[0].rate_limit[0].refill_interval",
            &["duration string", "got integer `60`"],
        ),
        // bad enums
        (
            r#"{"rate_limit_headers": "draft"}"#,
            "rate_limit_headers",
            &["one of \"ietf\"", "got \"draft\""],
        ),
        // names
        (
            r#"{"routes": [{"name": ""}]}"#,
            "routes[0].name",
            &["1 to 64 characters", "got \"\""],
        ),
        (
            r#"{"routes": [{"name": "a.b"}]}"#,
            "routes[0].name",
            &["metric names", "got \"a.b\""],
        ),
        (
            r#"{"routes": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}"#,
            "routes[2].name",
            &["used only once", "\"a\""],
        ),
        (
            r#"{"routes": [{"match": {}}]}"#,
            "routes[0]",
            &["missing required key `name`"],
        ),
        // unknown provider referenced by a route
        (
            r#"{"routes": [{"name": "a", "jwt": {"providers": ["nobody"]}}]}"#,
            "routes[0].jwt.providers[0]",
            &["a provider in jwt_providers", "got \"nobody\""],
        ),
        // claim key parts need a jwt section
        (
            r#"{"routes": [{"name": "a", "rate_limit": [{"capacity": 5, "refill_interval": "1s", "key": [{"claim": "sub"}]}]}]}"#,
            "routes[0].rate_limit[0].key",
            &["\"jwt\" section"],
        ),
        // unknown keys, with their path
        (r#"{"rout": []}"#, "rout", &["unknown key `rout`", "routes"]),
        (
            r#"{"routes": [{"name": "a", "rate_limit": [{"capcity": 5}]}]}"#,
            "routes[0].rate_limit[0].capcity",
            &["unknown key `capcity`"],
        ),
        (
            r#"{"routes": [{"name": "a", "match": {"prefix": "/"}}]}"#,
            "routes[0].match.prefix",
            &["unknown key `prefix`"],
        ),
        // not JSON
        ("{routes: []}", "", &["expected JSON", "line 1 column 2"]),
        ("[1, 2", "", &["expected a JSON object"]),
        (r#"{"routes": []} trailing"#, "", &["expected JSON"]),
        ("[]", "", &["expected a JSON object", "got \"[]\""]),
        ("null", "", &["expected a JSON object"]),
        (
            r#"{"routes": [{"name": "a"}]"#,
            "",
            &["expected JSON", "EOF"],
        ),
    ];
    for (doc, path, words) in cases {
        let e = err(doc);
        assert_eq!(&e.path, path, "{doc}: {e}");
        let text = e.to_string();
        for w in *words {
            assert!(
                text.contains(w),
                "{doc}:\n  message {text:?}\n  lacks {w:?}"
            );
        }
        assert!(text.starts_with("invalid config"), "{text}");
    }
}

#[test]
fn rate_limit_grpc_status_names_a_code_for_a_route_with_limits() {
    let limit = r#""rate_limit": [{"capacity": 1, "refill_interval": "1s"}]"#;
    let route = |extra: &str| format!(r#"{{"routes": [{{"name": "r", {limit}{extra}}}]}}"#);
    assert_eq!(
        ok(&route("")).routes[0].rate_limit_grpc_status,
        crate::grpc::Code::RESOURCE_EXHAUSTED
    );
    for v in [r#""UNAVAILABLE""#, "14", r#""unavailable""#] {
        let cfg = ok(&route(&format!(r#", "rate_limit_grpc_status": {v}"#)));
        assert_eq!(
            cfg.routes[0].rate_limit_grpc_status,
            crate::grpc::Code::UNAVAILABLE
        );
    }
    for v in [r#""OK""#, "0", "17", r#""NOPE""#, "true"] {
        let e = err(&route(&format!(r#", "rate_limit_grpc_status": {v}"#)));
        assert_eq!(e.path, "routes[0].rate_limit_grpc_status", "{v}");
        assert!(e.msg.starts_with("expected a gRPC status name"), "{v}: {e}");
    }
    // Without limits it would do nothing: an error, not a silent no-op.
    let e = err(r#"{"routes": [{"name": "r", "rate_limit_grpc_status": "UNAVAILABLE"}]}"#);
    assert_eq!(e.path, "routes[0].rate_limit_grpc_status");
}

#[test]
fn non_utf8_bytes_are_refused_cleanly() {
    let e = Config::from_bytes(b"{\"routes\": [\xff\xfe]}").expect_err("must refuse");
    assert!(e.to_string().contains("invalid UTF-8 at byte 12"), "{e}");
}

#[test]
fn binary_garbage_is_refused_cleanly() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert!(Config::from_bytes(&garbage).is_err());
}

#[test]
fn a_one_megabyte_config_loads_and_a_huge_one_is_refused() {
    // ~1 MB: 900 routes with long header matchers.
    let mut routes = Vec::new();
    for i in 0..900 {
        routes.push(format!(
            r#"{{"name": "r{i}", "match": {{"path_prefix": "/r{i}/", "headers": [{{"name": "x-pad", "exact": "{}"}}]}},
               "rate_limit": [{{"capacity": 10, "refill_interval": "1s"}}]}}"#,
            "p".repeat(1000)
        ));
    }
    let doc = format!(r#"{{"routes": [{}]}}"#, routes.join(","));
    assert!(doc.len() > 1_000_000);
    assert_eq!(ok(&doc).routes.len(), 900);

    let huge = format!(
        r#"{{"routes": [], "pad": "{}"}}"#,
        "x".repeat(MAX_CONFIG_BYTES)
    );
    let e = err(&huge);
    assert!(e.msg.contains("at most 4194304 bytes"), "{e}");
}

#[test]
fn too_many_routes_is_an_error() {
    let routes: Vec<String> = (0..=MAX_ROUTES)
        .map(|i| format!(r#"{{"name": "r{i}"}}"#))
        .collect();
    let e = err(&format!(r#"{{"routes": [{}]}}"#, routes.join(",")));
    assert_eq!(e.path, "routes");
}

#[test]
fn deeply_nested_json_does_not_crash() {
    let doc = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(Config::from_bytes(doc.as_bytes()).is_err());
}

#[test]
fn global_limits_and_the_rate_limit_service() {
    let c = ok(r#"{
      "rate_limit_service": { "cluster": "ratelimit", "domain": "shop", "timeout": "50ms",
                              "failure_mode": "deny" },
      "routes": [ { "name": "api", "rate_limit": [
          { "name": "g", "scope": "global", "key": ["client_ip"], "cost": 2 },
          { "name": "burst", "scope": "local", "capacity": 5, "refill_interval": "1s" },
          { "name": "all", "capacity": 50, "refill_interval": "1m" } ] } ]
    }"#);
    let svc = c.rate_limit_service.as_ref().expect("service");
    assert_eq!(
        (
            svc.cluster.as_str(),
            svc.domain.as_str(),
            svc.timeout_ns,
            svc.deny_on_failure
        ),
        ("ratelimit", "shop", 50_000_000, true)
    );
    let r = &c.routes[0];
    let names = |ls: &[LimitPolicy]| ls.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&r.rate_limits), ["burst", "all"]);
    assert_eq!(names(&r.global_limits), ["g"]);
    assert_eq!(r.global_limits[0].cost, 2);
    // The RateLimit-Policy of local limits leaves global ones out.
    assert_eq!(
        &*r.rate_limits[0].policy_header,
        "\"burst\";q=5;w=1, \"all\";q=50;w=60"
    );
    // Defaults.
    let c = ok(r#"{"rate_limit_service": {"cluster": "rls"},
                   "routes": [{"name": "a", "rate_limit": [{"scope": "global"}]}]}"#);
    let svc = c.rate_limit_service.as_ref().expect("service");
    assert_eq!(
        (svc.domain.as_str(), svc.timeout_ns, svc.deny_on_failure),
        ("meshguard", 20_000_000, false)
    );
    assert!(c.routes[0].has_policy());
    // Istio's generated cluster names are accepted.
    let c = ok(
        r#"{"rate_limit_service": {"cluster": "outbound|8081||ratelimit.ratelimit.svc.cluster.local"}}"#,
    );
    assert!(c.rate_limit_service.is_some());
}

#[test]
fn global_limit_errors() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"{"routes": [{"name": "a", "rate_limit": [{"scope": "global"}]}]}"#,
            "routes[0].rate_limit[0].scope",
            "top-level \"rate_limit_service\"",
        ),
        (
            r#"{"rate_limit_service": {"cluster": "r"},
                "routes": [{"name": "a", "rate_limit": [{"scope": "global", "capacity": 5}]}]}"#,
            "routes[0].rate_limit[0].capacity",
            "expected no bucket settings on a global limit",
        ),
        (
            r#"{"rate_limit_service": {"cluster": "r"},
                "routes": [{"name": "a", "rate_limit": [{"scope": "global", "refill_interval": "1s"}]}]}"#,
            "routes[0].rate_limit[0].refill_interval",
            "rate limit service's own configuration",
        ),
        (
            r#"{"routes": [{"name": "a", "rate_limit": [{"scope": "planet", "capacity": 1, "refill_interval": "1s"}]}]}"#,
            "routes[0].rate_limit[0].scope",
            "expected \"local\" or \"global\", got \"planet\"",
        ),
        (
            r#"{"routes": [{"name": "a", "rate_limit": [{"refill_interval": "1s"}]}]}"#,
            "routes[0].rate_limit[0].capacity",
            "missing required key `capacity`",
        ),
        (
            r#"{"rate_limit_service": {}}"#,
            "rate_limit_service",
            "missing required key `cluster`",
        ),
        (
            r#"{"rate_limit_service": {"cluster": ""}}"#,
            "rate_limit_service.cluster",
            "printable ASCII",
        ),
        (
            r#"{"rate_limit_service": {"cluster": "r\u00e9gion"}}"#,
            "rate_limit_service.cluster",
            "printable ASCII",
        ),
        (
            r#"{"rate_limit_service": {"cluster": "r", "timeout": "0s"}}"#,
            "rate_limit_service.timeout",
            "from \"1ms\" to \"10s\"",
        ),
        (
            r#"{"rate_limit_service": {"cluster": "r", "timeout": "11s"}}"#,
            "rate_limit_service.timeout",
            "from \"1ms\" to \"10s\"",
        ),
        (
            r#"{"rate_limit_service": {"cluster": "r", "failure_mode": "open"}}"#,
            "rate_limit_service.failure_mode",
            "expected \"allow\" or \"deny\", got \"open\"",
        ),
        (
            r#"{"rate_limit_service": {"cluster": "r", "domain": ""}}"#,
            "rate_limit_service.domain",
            "non-empty",
        ),
        (
            r#"{"rate_limit_service": {"cluster": "r", "clustr": "x"}}"#,
            "rate_limit_service.clustr",
            "unknown key `clustr`",
        ),
    ];
    for (doc, path, words) in cases {
        let e = err(doc);
        assert_eq!(&e.path, path, "{doc}: {e}");
        assert!(e.msg.contains(words), "{doc}: {e}");
    }
}

#[test]
fn metrics_flush_interval_defaults_to_100ms_accepts_0s_and_refuses_the_rest() {
    assert_eq!(ok("{}").metrics_flush_interval_ns, 100_000_000);
    assert_eq!(
        ok(r#"{"metrics_flush_interval": "0s"}"#).metrics_flush_interval_ns,
        0,
        "0s: no batching"
    );
    assert_eq!(
        ok(r#"{"metrics_flush_interval": "1.5s"}"#).metrics_flush_interval_ns,
        1_500_000_000
    );
    assert_eq!(
        ok(r#"{"metrics_flush_interval": "10s"}"#).metrics_flush_interval_ns,
        10_000_000_000
    );
    let e = err(r#"{"metrics_flush_interval": "11s"}"#);
    assert_eq!(e.path, "metrics_flush_interval");
    assert!(
        e.to_string()
            .contains("from \"0s\" (every increment at once) to \"10s\"")
            && e.to_string().contains("got \"11s\""),
        "{e}"
    );
    for bad in [r#""soon""#, "100", r#""-1s""#] {
        let e = err(&format!(r#"{{"metrics_flush_interval": {bad}}}"#));
        assert_eq!(e.path, "metrics_flush_interval", "{bad}: {e}");
    }
}
