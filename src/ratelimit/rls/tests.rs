use super::proto::*;
use super::*;
use crate::config::raw::RawRateLimit;
use prost::Message;

fn limits(json: &str) -> Vec<LimitPolicy> {
    let raw: Vec<RawRateLimit> = serde_json::from_str(json).expect("json");
    raw.iter()
        .enumerate()
        .map(|(i, r)| LimitPolicy::compile(r, i, "r", "p").expect("valid"))
        .collect()
}

fn req(headers: &[(&str, &str)]) -> Request {
    Request {
        method: "GET".into(),
        path: "/api/orders?x=1".into(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect(),
        peer_ip: "10.1.2.3".into(),
        ..Request::default()
    }
}

fn entries(d: &RateLimitDescriptor) -> Vec<(&str, &str)> {
    d.entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect()
}

#[test]
fn grpc_service_names_the_cluster_as_a_proto() {
    assert_eq!(
        grpc_service("ratelimit"),
        [&[0x0a, 11, 0x0a, 9][..], b"ratelimit"].concat()
    );
    // The longest accepted name keeps every byte ASCII (one-byte lengths).
    let long = "c".repeat(MAX_CLUSTER_NAME);
    assert!(grpc_service(&long).is_ascii());
}

#[test]
fn one_descriptor_per_limit_with_route_limit_and_key_parts() {
    let ls = limits(
        r#"[{"name": "per-key", "scope": "global",
              "key": ["client_ip", "method", {"header": "X-Api-Key"}, {"query": "x"},
                      {"constant": "gold"}]},
            {"name": "all", "scope": "global"}]"#,
    );
    let bytes = request("shop", "api", &ls, &req(&[("x-api-key", "k1")]), None, 0);
    let r = RateLimitRequest::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(r.domain, "shop");
    assert_eq!(r.hits_addend, 0, "cost 1 everywhere: the default addend");
    assert_eq!(r.descriptors.len(), 2);
    assert_eq!(
        entries(&r.descriptors[0]),
        [
            ("route", "api"),
            ("limit", "per-key"),
            ("client_ip", "10.1.2.3"),
            ("method", "GET"),
            ("header.x-api-key", "k1"),
            ("query.x", "1"),
            ("constant", "gold"),
        ]
    );
    assert_eq!(
        entries(&r.descriptors[1]),
        [("route", "api"), ("limit", "all")]
    );
    assert!(r.descriptors.iter().all(|d| d.hits_addend.is_none()));
}

#[test]
fn missing_parts_are_empty_and_long_ones_hashed() {
    let ls = limits(r#"[{"scope": "global", "key": [{"header": "x-user"}, {"claim": "org.id"}]}]"#);
    let long = "u".repeat(300);
    let claims = serde_json::json!({"org": {"id": 42}});
    let r = RateLimitRequest::decode(
        request(
            "d",
            "api",
            &ls,
            &req(&[("x-user", &long)]),
            Some(&claims),
            0,
        )
        .as_slice(),
    )
    .expect("decodes");
    let e = entries(&r.descriptors[0]);
    assert_eq!(e[1], ("limit", "limit0"));
    assert_eq!(e[2].0, "header.x-user");
    assert_eq!(e[2].1.len(), 64, "SHA-256 hex of a value over 256 bytes");
    assert_eq!(e[3], ("claim.org.id", "42"));
    let r = RateLimitRequest::decode(request("d", "api", &ls, &req(&[]), None, 0).as_slice())
        .expect("decodes");
    let e = entries(&r.descriptors[0]);
    assert_eq!(
        e[2],
        ("header.x-user", ""),
        "a missing header never escapes"
    );
    assert_eq!(e[3], ("claim.org.id", ""));
}

#[test]
fn cost_becomes_the_hits_addend() {
    let same =
        limits(r#"[{"scope": "global", "cost": 5}, {"name": "b", "scope": "global", "cost": 5}]"#);
    let r = RateLimitRequest::decode(request("d", "api", &same, &req(&[]), None, 0).as_slice())
        .expect("decodes");
    assert_eq!(r.hits_addend, 5);
    assert!(r.descriptors.iter().all(|d| d.hits_addend.is_none()));
    let mixed = limits(r#"[{"scope": "global", "cost": 5}, {"name": "b", "scope": "global"}]"#);
    let r = RateLimitRequest::decode(request("d", "api", &mixed, &req(&[]), None, 0).as_slice())
        .expect("decodes");
    assert_eq!(r.hits_addend, 0);
    assert_eq!(r.descriptors[0].hits_addend, Some(UInt64Value { value: 5 }));
    assert_eq!(r.descriptors[1].hits_addend, Some(UInt64Value { value: 1 }));
}

fn status(
    code: i32,
    rpu: u32,
    unit: i32,
    remaining: u32,
    reset: Option<(i64, i32)>,
) -> DescriptorStatus {
    DescriptorStatus {
        code,
        current_limit: (rpu > 0).then_some(RateLimit {
            requests_per_unit: rpu,
            unit,
            name: String::new(),
        }),
        limit_remaining: remaining,
        duration_until_reset: reset.map(|(seconds, nanos)| ProtoDuration { seconds, nanos }),
    }
}

fn response(code: i32, statuses: Vec<DescriptorStatus>) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: code,
        statuses,
        response_headers_to_add: vec![],
        request_headers_to_add: vec![],
    }
}

#[test]
fn decodes_per_descriptor_statuses() {
    let r = response(
        CODE_OVER_LIMIT,
        vec![
            status(CODE_OK, 100, 2, 7, Some((30, 0))),
            status(CODE_OVER_LIMIT, 5, 1, 0, Some((0, 250_000_000))),
        ],
    );
    let v = decode(&r.encode_to_vec(), 2).expect("decodes");
    assert_eq!(
        v.statuses,
        vec![
            LimitStatus {
                over: false,
                limit: Some((100, 60)),
                remaining: 7,
                reset_secs: Some(30),
            },
            LimitStatus {
                over: true,
                limit: Some((5, 1)),
                remaining: 0,
                reset_secs: Some(1),
            },
        ]
    );
}

#[test]
fn without_statuses_the_overall_code_applies_to_every_limit() {
    let v = decode(&response(CODE_OVER_LIMIT, vec![]).encode_to_vec(), 3).expect("decodes");
    assert!(v.statuses.iter().all(|s| s.over && s.limit.is_none()));
    assert_eq!(v.statuses.len(), 3);
    // A status count that does not match the descriptors is not trusted.
    let r = response(CODE_OK, vec![status(CODE_OVER_LIMIT, 1, 1, 0, None)]);
    let v = decode(&r.encode_to_vec(), 2).expect("decodes");
    assert!(v.statuses.iter().all(|s| !s.over));
    // An empty answer is overall_code UNKNOWN: not a verdict.
    assert!(matches!(decode(&[], 1), Err(CallError::BadResponse(_))));
}

#[test]
fn remaining_without_a_current_limit_is_ignored() {
    let r = response(CODE_OK, vec![status(CODE_OK, 0, 0, 0, None)]);
    let v = decode(&r.encode_to_vec(), 1).expect("decodes");
    assert_eq!(v.statuses[0].limit, None);
}

#[test]
fn bad_answers_are_errors_not_panics() {
    for body in [
        &b"\xff\xff\xff\xff"[..],
        &b"\x0a\x05ab"[..],
        &[0x08, 0x80][..],
        b"not protobuf at all, just text that happens to be here",
    ] {
        assert!(
            matches!(decode(body, 1), Err(CallError::BadResponse(_))),
            "{body:?}"
        );
    }
    let big = vec![0u8; MAX_RESPONSE_BYTES + 1];
    assert!(matches!(decode(&big, 1), Err(CallError::BadResponse(_))));
    let unknown = response(7, vec![]);
    assert!(matches!(
        decode(&unknown.encode_to_vec(), 1),
        Err(CallError::BadResponse(m)) if m.contains("overall_code 7")
    ));
}

#[test]
fn service_headers_are_filtered() {
    let hv = |k: &str, v: &str| HeaderValue {
        key: k.into(),
        value: v.into(),
    };
    let r = RateLimitResponse {
        overall_code: CODE_OK,
        statuses: vec![],
        response_headers_to_add: vec![
            hv("X-RateLimit-Limit", "10"),
            hv(":status", "200"),
            hv("content-length", "0"),
            hv("x-evil", "a\r\nset-cookie: x"),
            hv("bad name", "v"),
            hv("", "v"),
        ],
        request_headers_to_add: vec![hv("x-ratelimit-done", "1"), hv("Host", "evil")],
    };
    let v = decode(&r.encode_to_vec(), 0).expect("decodes");
    assert_eq!(
        v.response_headers,
        vec![("x-ratelimit-limit".to_string(), "10".to_string())]
    );
    assert_eq!(
        v.request_headers,
        vec![("x-ratelimit-done".to_string(), "1".to_string())]
    );
}

#[test]
fn durations_round_up() {
    let d = |seconds, nanos| ProtoDuration { seconds, nanos };
    assert_eq!(d(3, 0).ceil_secs(), 3);
    assert_eq!(d(3, 1).ceil_secs(), 4);
    assert_eq!(d(-5, 0).ceil_secs(), 0);
    assert_eq!(d(i64::MAX, 1).ceil_secs(), i64::MAX as u64 + 1);
}
