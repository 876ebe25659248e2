use super::proto::*;
use super::*;
use crate::config::raw::RawRateLimit;
use prost::Message;

/// What `prost` (an independent implementation) reads from bytes our
/// encoder wrote.
fn decode_request(bytes: &[u8]) -> RateLimitRequest {
    from_pb_request(mirror::RateLimitRequest::decode(bytes).expect("prost decodes"))
}

/// A response as `prost` (an independent implementation) writes it.
fn encode_response(r: &RateLimitResponse) -> Vec<u8> {
    pb_response(r).encode_to_vec()
}

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
    let bytes = request(
        "shop",
        "api",
        &ls,
        &req(&[("x-api-key", "k1")]),
        None,
        ClientIpRule::default(),
    );
    let r = decode_request(&bytes);
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
    let claims = crate::jwt::claims::Claims::from_value(&serde_json::json!({"org": {"id": 42}}))
        .expect("object");
    let r = decode_request(&request(
        "d",
        "api",
        &ls,
        &req(&[("x-user", &long)]),
        Some(&claims),
        ClientIpRule::default(),
    ));
    let e = entries(&r.descriptors[0]);
    assert_eq!(e[1], ("limit", "limit0"));
    assert_eq!(e[2].0, "header.x-user");
    assert_eq!(e[2].1.len(), 64, "SHA-256 hex of a value over 256 bytes");
    assert_eq!(e[3], ("claim.org.id", "42"));
    let r = decode_request(&request(
        "d",
        "api",
        &ls,
        &req(&[]),
        None,
        ClientIpRule::default(),
    ));
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
    let r = decode_request(&request(
        "d",
        "api",
        &same,
        &req(&[]),
        None,
        ClientIpRule::default(),
    ));
    assert_eq!(r.hits_addend, 5);
    assert!(r.descriptors.iter().all(|d| d.hits_addend.is_none()));
    let mixed = limits(r#"[{"scope": "global", "cost": 5}, {"name": "b", "scope": "global"}]"#);
    let r = decode_request(&request(
        "d",
        "api",
        &mixed,
        &req(&[]),
        None,
        ClientIpRule::default(),
    ));
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
    let v = decode(&encode_response(&r), 2).expect("decodes");
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
    let v = decode(&encode_response(&response(CODE_OVER_LIMIT, vec![])), 3).expect("decodes");
    assert!(v.statuses.iter().all(|s| s.over && s.limit.is_none()));
    assert_eq!(v.statuses.len(), 3);
    // A status count that does not match the descriptors is not trusted.
    let r = response(CODE_OK, vec![status(CODE_OVER_LIMIT, 1, 1, 0, None)]);
    let v = decode(&encode_response(&r), 2).expect("decodes");
    assert!(v.statuses.iter().all(|s| !s.over));
    // An empty answer is overall_code UNKNOWN: not a verdict.
    assert!(matches!(decode(&[], 1), Err(CallError::BadResponse(_))));
}

#[test]
fn remaining_without_a_current_limit_is_ignored() {
    let r = response(CODE_OK, vec![status(CODE_OK, 0, 0, 0, None)]);
    let v = decode(&encode_response(&r), 1).expect("decodes");
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
        decode(&encode_response(&unknown), 1),
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
    let v = decode(&encode_response(&r), 0).expect("decodes");
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

// ------------------------------------------------------------------------
// The hand-written codec (proto.rs), cross-checked against `prost`.

/// The same messages declared for `prost` (a dev-dependency only). The
/// response side also declares fields a newer service may send and
/// proto.rs does not (`raw_body`, `dynamic_metadata`, `quota`, fields of
/// every wire type up to the largest field number), to check they are
/// skipped.
mod mirror {
    use std::collections::BTreeMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitRequest {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(message, repeated, tag = "2")]
        pub descriptors: Vec<RateLimitDescriptor>,
        #[prost(uint32, tag = "3")]
        pub hits_addend: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitDescriptor {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<Entry>,
        #[prost(message, optional, tag = "3")]
        pub hits_addend: Option<UInt64Value>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UInt64Value {
        #[prost(uint64, tag = "1")]
        pub value: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GrpcService {
        #[prost(message, optional, tag = "1")]
        pub envoy_grpc: Option<EnvoyGrpc>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EnvoyGrpc {
        #[prost(string, tag = "1")]
        pub cluster_name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitResponse {
        #[prost(int32, tag = "1")]
        pub overall_code: i32,
        #[prost(message, repeated, tag = "2")]
        pub statuses: Vec<DescriptorStatus>,
        #[prost(message, repeated, tag = "3")]
        pub response_headers_to_add: Vec<HeaderValue>,
        #[prost(message, repeated, tag = "4")]
        pub request_headers_to_add: Vec<HeaderValue>,
        // Not read by meshguard:
        #[prost(bytes = "vec", tag = "5")]
        pub raw_body: Vec<u8>,
        #[prost(message, optional, tag = "6")]
        pub dynamic_metadata: Option<Struct>,
        #[prost(bytes = "vec", tag = "7")]
        pub quota: Vec<u8>,
        #[prost(uint64, repeated, tag = "15")]
        pub packed: Vec<u64>,
        #[prost(sint64, tag = "16")]
        pub zigzag: i64,
        #[prost(fixed64, tag = "100")]
        pub fixed64: u64,
        #[prost(sfixed32, tag = "101")]
        pub fixed32: i32,
        #[prost(double, tag = "102")]
        pub double: f64,
        #[prost(string, tag = "536870911")]
        pub last: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DescriptorStatus {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(message, optional, tag = "2")]
        pub current_limit: Option<RateLimit>,
        #[prost(uint32, tag = "3")]
        pub limit_remaining: u32,
        #[prost(message, optional, tag = "4")]
        pub duration_until_reset: Option<Duration>,
        // Not read by meshguard:
        #[prost(message, optional, tag = "5")]
        pub quota: Option<Quota>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimit {
        #[prost(uint32, tag = "1")]
        pub requests_per_unit: u32,
        #[prost(int32, tag = "2")]
        pub unit: i32,
        #[prost(string, tag = "3")]
        pub name: String,
        // Not read by meshguard:
        #[prost(fixed32, tag = "9")]
        pub extra: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
        // Not read by meshguard:
        #[prost(string, tag = "3")]
        pub extra: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HeaderValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
        // Not read by meshguard:
        #[prost(bytes = "vec", tag = "3")]
        pub raw_value: Vec<u8>,
    }

    /// `RateLimitResponse.Quota`-like.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Quota {
        #[prost(uint32, tag = "1")]
        pub requests: u32,
        #[prost(message, optional, tag = "2")]
        pub valid_until: Option<Duration>,
        #[prost(string, tag = "3")]
        pub id: String,
    }

    /// `google.protobuf.Struct`-like.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Struct {
        #[prost(btree_map = "string, string", tag = "1")]
        pub fields: BTreeMap<String, String>,
    }

    /// The response declared with only the fields proto.rs declares: how
    /// prost reads what a newer service sends (the other fields skipped,
    /// unchecked, as proto.rs skips them).
    pub mod known {
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct RateLimitResponse {
            #[prost(int32, tag = "1")]
            pub overall_code: i32,
            #[prost(message, repeated, tag = "2")]
            pub statuses: Vec<DescriptorStatus>,
            #[prost(message, repeated, tag = "3")]
            pub response_headers_to_add: Vec<HeaderValue>,
            #[prost(message, repeated, tag = "4")]
            pub request_headers_to_add: Vec<HeaderValue>,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct DescriptorStatus {
            #[prost(int32, tag = "1")]
            pub code: i32,
            #[prost(message, optional, tag = "2")]
            pub current_limit: Option<RateLimit>,
            #[prost(uint32, tag = "3")]
            pub limit_remaining: u32,
            #[prost(message, optional, tag = "4")]
            pub duration_until_reset: Option<Duration>,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct RateLimit {
            #[prost(uint32, tag = "1")]
            pub requests_per_unit: u32,
            #[prost(int32, tag = "2")]
            pub unit: i32,
            #[prost(string, tag = "3")]
            pub name: String,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Duration {
            #[prost(int64, tag = "1")]
            pub seconds: i64,
            #[prost(int32, tag = "2")]
            pub nanos: i32,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct HeaderValue {
            #[prost(string, tag = "1")]
            pub key: String,
            #[prost(string, tag = "2")]
            pub value: String,
        }
    }
}

fn from_pb_request(m: mirror::RateLimitRequest) -> RateLimitRequest {
    RateLimitRequest {
        domain: m.domain,
        descriptors: m
            .descriptors
            .into_iter()
            .map(|d| RateLimitDescriptor {
                entries: d
                    .entries
                    .into_iter()
                    .map(|e| Entry {
                        key: e.key,
                        value: e.value,
                    })
                    .collect(),
                hits_addend: d.hits_addend.map(|h| UInt64Value { value: h.value }),
            })
            .collect(),
        hits_addend: m.hits_addend,
    }
}

fn pb_request(r: &RateLimitRequest) -> mirror::RateLimitRequest {
    mirror::RateLimitRequest {
        domain: r.domain.clone(),
        descriptors: r
            .descriptors
            .iter()
            .map(|d| mirror::RateLimitDescriptor {
                entries: d
                    .entries
                    .iter()
                    .map(|e| mirror::Entry {
                        key: e.key.clone(),
                        value: e.value.clone(),
                    })
                    .collect(),
                hits_addend: d
                    .hits_addend
                    .as_ref()
                    .map(|h| mirror::UInt64Value { value: h.value }),
            })
            .collect(),
        hits_addend: r.hits_addend,
    }
}

fn from_pb_response(m: mirror::known::RateLimitResponse) -> RateLimitResponse {
    let headers = |hs: Vec<mirror::known::HeaderValue>| {
        hs.into_iter()
            .map(|h| HeaderValue {
                key: h.key,
                value: h.value,
            })
            .collect()
    };
    RateLimitResponse {
        overall_code: m.overall_code,
        statuses: m
            .statuses
            .into_iter()
            .map(|s| DescriptorStatus {
                code: s.code,
                current_limit: s.current_limit.map(|l| RateLimit {
                    requests_per_unit: l.requests_per_unit,
                    unit: l.unit,
                    name: l.name,
                }),
                limit_remaining: s.limit_remaining,
                duration_until_reset: s.duration_until_reset.map(|d| ProtoDuration {
                    seconds: d.seconds,
                    nanos: d.nanos,
                }),
            })
            .collect(),
        response_headers_to_add: headers(m.response_headers_to_add),
        request_headers_to_add: headers(m.request_headers_to_add),
    }
}

/// The mirror of a response, the fields proto.rs does not declare left
/// empty (so not written).
fn pb_response(r: &RateLimitResponse) -> mirror::RateLimitResponse {
    let headers = |hs: &[HeaderValue]| {
        hs.iter()
            .map(|h| mirror::HeaderValue {
                key: h.key.clone(),
                value: h.value.clone(),
                ..Default::default()
            })
            .collect()
    };
    mirror::RateLimitResponse {
        overall_code: r.overall_code,
        statuses: r
            .statuses
            .iter()
            .map(|s| mirror::DescriptorStatus {
                code: s.code,
                current_limit: s.current_limit.as_ref().map(|l| mirror::RateLimit {
                    requests_per_unit: l.requests_per_unit,
                    unit: l.unit,
                    name: l.name.clone(),
                    ..Default::default()
                }),
                limit_remaining: s.limit_remaining,
                duration_until_reset: s.duration_until_reset.as_ref().map(|d| mirror::Duration {
                    seconds: d.seconds,
                    nanos: d.nanos,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        response_headers_to_add: headers(&r.response_headers_to_add),
        request_headers_to_add: headers(&r.request_headers_to_add),
        ..Default::default()
    }
}

/// Deterministic pseudo-random values (SplitMix64), biased towards the
/// edges of each type.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn u64(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => [1, 127, 128, 16_383, 16_384, u64::MAX][self.below(6)],
            2 => self.next() >> self.below(64),
            _ => self.next() & 0xff,
        }
    }

    fn i64(&mut self) -> i64 {
        match self.below(4) {
            0 => [0, 1, -1, i64::MIN, i64::MAX][self.below(5)],
            _ => self.u64() as i64,
        }
    }

    fn i32(&mut self) -> i32 {
        match self.below(4) {
            0 => [0, 1, 2, -1, -2, i32::MIN, i32::MAX][self.below(7)],
            _ => self.u64() as i32,
        }
    }

    fn u32(&mut self) -> u32 {
        self.u64() as u32
    }

    fn string(&mut self) -> String {
        const PIECES: [&str; 8] = ["", "a", "x-rate", "é", "日本", "\u{0}", "\u{10ffff}", " "];
        match self.below(5) {
            0 => String::new(),
            // Long enough for a two-byte length.
            1 => "v".repeat(100 + self.below(200)),
            _ => (0..self.below(6))
                .map(|_| PIECES[self.below(PIECES.len())])
                .collect(),
        }
    }

    fn bytes(&mut self) -> Vec<u8> {
        (0..self.below(20)).map(|_| self.next() as u8).collect()
    }

    fn list<T>(&mut self, max: usize, mut f: impl FnMut(&mut Rng) -> T) -> Vec<T> {
        (0..self.below(max + 1)).map(|_| f(self)).collect()
    }
}

fn gen_request(g: &mut Rng) -> RateLimitRequest {
    RateLimitRequest {
        domain: g.string(),
        descriptors: g.list(4, |g| RateLimitDescriptor {
            entries: g.list(5, |g| Entry {
                key: g.string(),
                value: g.string(),
            }),
            hits_addend: g.chance(2).then(|| UInt64Value { value: g.u64() }),
        }),
        hits_addend: g.u32(),
    }
}

fn gen_response(g: &mut Rng) -> RateLimitResponse {
    let header = |g: &mut Rng| HeaderValue {
        key: g.string(),
        value: g.string(),
    };
    RateLimitResponse {
        overall_code: g.i32(),
        statuses: g.list(4, |g| DescriptorStatus {
            code: g.i32(),
            current_limit: g.chance(2).then(|| RateLimit {
                requests_per_unit: g.u32(),
                unit: g.i32(),
                name: g.string(),
            }),
            limit_remaining: g.u32(),
            duration_until_reset: g.chance(2).then(|| ProtoDuration {
                seconds: g.i64(),
                nanos: g.i32(),
            }),
        }),
        response_headers_to_add: g.list(3, header),
        request_headers_to_add: g.list(3, header),
    }
}

/// A generated response, and its mirror with some of the fields proto.rs
/// does not declare filled in (a newer service).
fn gen_newer_response(g: &mut Rng) -> (RateLimitResponse, mirror::RateLimitResponse) {
    let r = gen_response(g);
    let mut m = pb_response(&r);
    if g.chance(2) {
        m.raw_body = g.bytes();
        m.quota = g.bytes();
        m.dynamic_metadata = g.chance(2).then(|| mirror::Struct {
            fields: (0..g.below(3)).map(|_| (g.string(), g.string())).collect(),
        });
        m.packed = g.list(3, Rng::u64);
        m.zigzag = g.i64();
        m.fixed64 = g.u64();
        m.fixed32 = g.i32();
        m.double = g.i64() as f64;
        m.last = g.string();
        for s in &mut m.statuses {
            s.quota = g.chance(2).then(|| mirror::Quota {
                requests: g.u32(),
                valid_until: g.chance(2).then(|| mirror::Duration {
                    seconds: g.i64(),
                    nanos: g.i32(),
                    extra: g.string(),
                }),
                id: g.string(),
            });
            if let Some(l) = &mut s.current_limit {
                l.extra = g.u32();
            }
            if let Some(d) = &mut s.duration_until_reset {
                d.extra = g.string();
            }
        }
        for h in &mut m.response_headers_to_add {
            h.raw_value = g.bytes();
        }
    }
    (r, m)
}

/// What prost reads from bytes, as proto.rs's types.
fn prost_decode(bytes: &[u8]) -> Result<RateLimitResponse, prost::DecodeError> {
    mirror::known::RateLimitResponse::decode(bytes).map(from_pb_response)
}

/// Decodes `bytes` with both codecs and checks they agree: the same
/// message, or both an error. The one known difference: prost skips
/// unknown groups (wire types 3 and 4, proto2 only), proto.rs refuses them.
fn agree(bytes: &[u8]) -> Result<RateLimitResponse, DecodeError> {
    let ours = RateLimitResponse::decode(bytes);
    match (&ours, prost_decode(bytes)) {
        (Ok(a), Ok(b)) => assert_eq!(*a, b, "{bytes:02x?}"),
        (Err(_), Err(_)) => {}
        (Ok(a), Err(e)) => panic!("prost refuses ({e}) what we read ({a:?}): {bytes:02x?}"),
        (Err(e), Ok(_)) => assert!(
            e.to_string().contains("group"),
            "we refuse ({e}) what prost reads: {bytes:02x?}"
        ),
    }
    ours
}

#[test]
fn requests_encode_like_prost() {
    let mut g = Rng(1);
    for _ in 0..2000 {
        let r = gen_request(&mut g);
        let bytes = r.encode();
        assert_eq!(bytes, pb_request(&r).encode_to_vec(), "{r:?}");
        assert_eq!(decode_request(&bytes), r);
    }
    // proto3 defaults are left out; a present wrapper is written even when
    // it holds 0, an empty descriptor is still one (empty) record.
    assert_eq!(RateLimitRequest::default().encode(), b"");
    let r = RateLimitRequest {
        domain: String::new(),
        descriptors: vec![
            RateLimitDescriptor::default(),
            RateLimitDescriptor {
                entries: vec![Entry::default()],
                hits_addend: Some(UInt64Value { value: 0 }),
            },
        ],
        hits_addend: 0,
    };
    assert_eq!(r.encode(), [0x12, 0, 0x12, 4, 0x0a, 0, 0x1a, 0]);
    // Largest values: 5- and 10-byte varints.
    let r = RateLimitRequest {
        domain: "d".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![],
            hits_addend: Some(UInt64Value { value: u64::MAX }),
        }],
        hits_addend: u32::MAX,
    };
    assert_eq!(
        r.encode(),
        [
            &[0x0a, 1, b'd', 0x12, 13, 0x1a, 11, 0x08][..],
            &[0xff; 9],
            &[0x01, 0x18, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ]
        .concat()
    );
    assert_eq!(decode_request(&r.encode()), r);
}

#[test]
fn grpc_service_encodes_like_prost() {
    let ours = |name: Option<&str>| {
        GrpcService {
            envoy_grpc: name.map(|n| EnvoyGrpc {
                cluster_name: n.into(),
            }),
        }
        .encode()
    };
    let theirs = |name: Option<&str>| {
        mirror::GrpcService {
            envoy_grpc: name.map(|n| mirror::EnvoyGrpc {
                cluster_name: n.into(),
            }),
        }
        .encode_to_vec()
    };
    assert_eq!(
        ours(Some("ratelimit")),
        [&[0x0a, 11, 0x0a, 9][..], b"ratelimit"].concat()
    );
    let long = "c".repeat(200);
    for name in [None, Some(""), Some("ratelimit"), Some(long.as_str())] {
        assert_eq!(ours(name), theirs(name), "{name:?}");
    }
    assert_eq!(ours(Some("")), [0x0a, 0]);
    assert_eq!(ours(None), b"");
}

#[test]
fn responses_written_by_prost_decode_the_same() {
    let mut g = Rng(2);
    for _ in 0..2000 {
        let r = gen_response(&mut g);
        let bytes = encode_response(&r);
        assert_eq!(RateLimitResponse::decode(&bytes), Ok(r.clone()));
        assert_eq!(agree(&bytes), Ok(r));
    }
}

#[test]
fn a_response_with_every_field_set_decodes() {
    let hv = |k: &str, v: &str| HeaderValue {
        key: k.into(),
        value: v.into(),
    };
    let r = RateLimitResponse {
        overall_code: CODE_OVER_LIMIT,
        statuses: vec![
            DescriptorStatus {
                code: CODE_OVER_LIMIT,
                current_limit: Some(RateLimit {
                    requests_per_unit: u32::MAX,
                    unit: 7,
                    name: "per-user".into(),
                }),
                limit_remaining: 12,
                duration_until_reset: Some(ProtoDuration {
                    seconds: i64::MAX,
                    nanos: 999_999_999,
                }),
            },
            // Negative numbers: 10-byte varints.
            DescriptorStatus {
                code: -1,
                current_limit: Some(RateLimit {
                    requests_per_unit: 1,
                    unit: i32::MIN,
                    name: "日本".into(),
                }),
                limit_remaining: 0,
                duration_until_reset: Some(ProtoDuration {
                    seconds: -5,
                    nanos: -1,
                }),
            },
            // Present but empty messages stay present.
            DescriptorStatus {
                code: 0,
                current_limit: Some(RateLimit::default()),
                limit_remaining: 0,
                duration_until_reset: Some(ProtoDuration::default()),
            },
            DescriptorStatus::default(),
        ],
        response_headers_to_add: vec![hv("x-a", "1"), hv("", ""), hv("x-b", "é")],
        request_headers_to_add: vec![hv("x-c", &"v".repeat(300))],
    };
    let bytes = encode_response(&r);
    assert_eq!(agree(&bytes), Ok(r.clone()));
    // A newer service's fields, at every level, are skipped.
    let mut m = pb_response(&r);
    m.raw_body = b"{\"over\": true}".to_vec();
    m.quota = vec![0x08, 0x05, 0x1a, 0x02, b'i', b'd'];
    m.dynamic_metadata = Some(mirror::Struct {
        fields: [("k".to_string(), "v".to_string())].into_iter().collect(),
    });
    m.packed = vec![1, u64::MAX, 300];
    m.zigzag = -3;
    m.fixed64 = u64::MAX;
    m.fixed32 = -7;
    m.double = 1.5;
    m.last = "field 536870911".into();
    m.statuses[0].quota = Some(mirror::Quota {
        requests: 3,
        valid_until: Some(mirror::Duration {
            seconds: 9,
            nanos: 1,
            extra: "x".into(),
        }),
        id: "q".into(),
    });
    if let Some(l) = &mut m.statuses[1].current_limit {
        l.extra = 0xdead_beef;
    }
    if let Some(d) = &mut m.statuses[0].duration_until_reset {
        d.extra = "later".into();
    }
    m.response_headers_to_add[0].raw_value = vec![0xff, 0x00];
    let newer = m.encode_to_vec();
    assert!(newer.len() > bytes.len() + 50);
    assert_eq!(agree(&newer), Ok(r));
}

#[test]
fn newer_responses_decode_to_their_known_fields() {
    let mut g = Rng(3);
    for _ in 0..2000 {
        let (r, m) = gen_newer_response(&mut g);
        assert_eq!(agree(&m.encode_to_vec()), Ok(r));
    }
}

#[test]
fn repeated_fields_keep_the_last_value_and_messages_merge() {
    // Concatenated messages are one merged message (proto3): the last
    // scalar wins, a message field seen twice is merged field by field,
    // repeated fields append.
    let mut g = Rng(4);
    for _ in 0..1000 {
        let (a, b) = (gen_newer_response(&mut g).1, gen_newer_response(&mut g).1);
        let both = [a.encode_to_vec(), b.encode_to_vec()].concat();
        agree(&both).expect("decodes");
    }
    let one = |code: i32, l: RateLimit| {
        encode_response(&RateLimitResponse {
            overall_code: code,
            statuses: vec![],
            response_headers_to_add: vec![],
            request_headers_to_add: vec![],
        })
        .into_iter()
        .chain(pb_status_field(l))
        .collect::<Vec<u8>>()
    };
    // Status 1 twice is two statuses; overall_code twice keeps the last.
    let bytes = [
        one(
            CODE_OK,
            RateLimit {
                requests_per_unit: 10,
                unit: 1,
                name: String::new(),
            },
        ),
        one(
            CODE_OVER_LIMIT,
            RateLimit {
                requests_per_unit: 0,
                unit: 2,
                name: "n".into(),
            },
        ),
    ]
    .concat();
    let r = agree(&bytes).expect("decodes");
    assert_eq!(r.overall_code, CODE_OVER_LIMIT);
    assert_eq!(r.statuses.len(), 2);
    // One status whose current_limit comes in two pieces is merged.
    let status = [
        &[0x12, 2, 0x08, 10][..], // current_limit { requests_per_unit: 10 }
        &[0x12, 5, 0x10, 2, 0x1a, 1, b'n'],
        &[0x08, 5, 0x08, 2], // code 5, then code 2
    ]
    .concat();
    let bytes = [&[0x08, 1, 0x12, status.len() as u8][..], &status].concat();
    let r = agree(&bytes).expect("decodes");
    assert_eq!(
        r.statuses,
        [DescriptorStatus {
            code: 2,
            current_limit: Some(RateLimit {
                requests_per_unit: 10,
                unit: 2,
                name: "n".into(),
            }),
            limit_remaining: 0,
            duration_until_reset: None,
        }]
    );
}

/// Field 2 (`statuses`) holding one status with `current_limit` = `l`.
fn pb_status_field(l: RateLimit) -> Vec<u8> {
    encode_response(&RateLimitResponse {
        statuses: vec![DescriptorStatus {
            current_limit: Some(l),
            ..DescriptorStatus::default()
        }],
        ..RateLimitResponse::default()
    })
}

#[test]
fn edge_values_decode() {
    let ok = |bytes: &[u8]| agree(bytes).expect("decodes");
    assert_eq!(ok(&[]), RateLimitResponse::default());
    // -1 is ten bytes; a 10th byte of 1 is bit 63.
    let minus_one = [&[0x08][..], &[0xff; 9], &[0x01]].concat();
    assert_eq!(ok(&minus_one).overall_code, -1);
    // int32 keeps the low 32 bits of a longer varint.
    assert_eq!(ok(&[0x08, 0x81, 0x80, 0x80, 0x80, 0x10]).overall_code, 1);
    // Non-minimal varints (padding with 0x80) are still numbers.
    assert_eq!(ok(&[0x08, 0x82, 0x80, 0x00]).overall_code, 2);
    assert_eq!(ok(&[0x88, 0x00, 0x02]).overall_code, 2);
    let zero = [&[0x08][..], &[0x80; 9], &[0x00]].concat();
    assert_eq!(ok(&zero).overall_code, 0);
    // Unknown fields of every wire type, up to the largest field number.
    let unknown = [
        &[0x48, 0xff, 0x01][..],                  // 9: varint
        &[0x49, 1, 2, 3, 4, 5, 6, 7, 8],          // 9: fixed64
        &[0x4a, 3, 0xff, 0xfe, 0xfd],             // 9: bytes, not UTF-8
        &[0x4d, 1, 2, 3, 4],                      // 9: fixed32
        &[0xfa, 0xff, 0xff, 0xff, 0x0f, 1, b'x'], // 536870911: bytes
        &[0x08, 0x01],
    ]
    .concat();
    assert_eq!(ok(&unknown).overall_code, CODE_OK);
}

#[test]
fn malformed_responses_are_errors() {
    let long_varint = [&[0x08][..], &[0x80; 10], &[0x01]].concat();
    let over_64_bits = [&[0x08][..], &[0xff; 9], &[0x02]].concat();
    let huge_length = [&[0x12][..], &[0xff; 9], &[0x01]].concat();
    let cases: [(&str, &[u8]); 25] = [
        ("truncated varint", &[0x08]),
        ("truncated varint", &[0x08, 0x80]),
        ("truncated key", &[0x80]),
        ("varint over 10 bytes", &long_varint),
        ("varint over 64 bits", &over_64_bits),
        ("key over 32 bits", &[0x80, 0x80, 0x80, 0x80, 0x10]),
        ("length past the end", &[0x12, 0x05, 0x08]),
        ("length past the end", &huge_length),
        ("unknown length past the end", &[0x4a, 0x02, 0x00]),
        ("truncated length", &[0x12]),
        ("truncated fixed64", &[0x49, 1, 2, 3, 4, 5, 6, 7]),
        ("truncated fixed32", &[0x4d, 1, 2, 3]),
        ("wire type 3", &[0x0b]),
        ("wire type 4", &[0x0c]),
        ("wire type 6", &[0x0e]),
        ("wire type 7", &[0x0f]),
        ("unknown field, wire type 6", &[0x4e, 0x00]),
        ("unknown field, wire type 7", &[0x4f, 0x00]),
        ("field number 0", &[0x00, 0x00]),
        ("field number 0, bytes", &[0x02, 0x00]),
        ("int32 as bytes", &[0x0a, 0x00]),
        ("message as varint", &[0x10, 0x01]),
        (
            "header key not UTF-8",
            &[0x1a, 0x04, 0x0a, 0x02, 0xc3, 0x28],
        ),
        (
            "nested name not UTF-8",
            &[0x12, 0x05, 0x12, 0x03, 0x1a, 0x01, 0xff],
        ),
        (
            "nested field past its message",
            &[0x12, 0x02, 0x12, 0x03, 0x08, 0x01, 0x08],
        ),
    ];
    for (what, bytes) in cases {
        let e = RateLimitResponse::decode(bytes).expect_err(what);
        assert!(!e.to_string().is_empty());
        assert!(prost_decode(bytes).is_err(), "prost reads {what}");
    }
    // Groups in unknown fields: prost skips them (proto2), we refuse them.
    for bytes in [&[0x4b, 0x4c][..], &[0x4c]] {
        let e = agree(bytes).expect_err("a group");
        assert!(e.to_string().contains("group"), "{e}");
    }
    // The caller's message.
    assert!(matches!(
        decode(&[0x0f], 1),
        Err(CallError::BadResponse(m)) if m.starts_with("not a RateLimitResponse: wire type")
    ));
}

#[test]
fn every_truncation_is_an_error() {
    // One top-level field: any strict non-empty prefix cuts it.
    let r = RateLimitResponse {
        statuses: vec![status(CODE_OVER_LIMIT, 100, 2, 7, Some((30, 5)))],
        ..RateLimitResponse::default()
    };
    let mut m = pb_response(&r);
    m.statuses[0].current_limit.as_mut().expect("set").name = "per-user".into();
    m.statuses[0].quota = Some(mirror::Quota {
        requests: 1,
        valid_until: None,
        id: "q".into(),
    });
    let bytes = m.encode_to_vec();
    for n in 1..bytes.len() {
        assert!(agree(&bytes[..n]).is_err(), "{n} of {} bytes", bytes.len());
    }
    // Any message: a prefix either ends between top-level fields (and
    // reads as prost reads it) or is an error.
    let mut g = Rng(5);
    for _ in 0..200 {
        let bytes = gen_newer_response(&mut g).1.encode_to_vec();
        for n in 0..bytes.len() {
            let _ = agree(&bytes[..n]);
        }
    }
}

#[test]
fn mangled_bytes_never_panic_and_read_as_prost_reads_them() {
    let mut g = Rng(6);
    let mut read = 0;
    for i in 0..30_000 {
        let mut bytes = if i % 10 == 0 {
            g.bytes()
        } else {
            gen_newer_response(&mut g).1.encode_to_vec()
        };
        for _ in 0..=g.below(3) {
            let at = g.below(bytes.len() + 1);
            match g.below(5) {
                0 if at < bytes.len() => bytes[at] ^= 1 << g.below(8),
                1 if at < bytes.len() => bytes[at] = g.next() as u8,
                2 => bytes.insert(at, g.next() as u8),
                3 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.truncate(at),
            }
        }
        read += usize::from(agree(&bytes).is_ok());
    }
    // Both outcomes are exercised.
    assert!((3_000..27_000).contains(&read), "{read} read");
}
