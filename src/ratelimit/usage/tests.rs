use super::*;
use crate::config::raw::RawRateLimit;
use crate::config::raw::RawUsage;
use crate::config::ConfigError;
use crate::host::fake::FakeHost;

fn path(p: &str) -> Vec<String> {
    p.split('.').map(str::to_string).collect()
}

/// The JSON reading of `doc` fed in chunks of every size.
fn json_all_chunkings(p: &str, doc: &str) -> Reading {
    let path = path(p);
    let mut first = None;
    for size in 1..=doc.len().max(1) {
        let mut scan = JsonScan::default();
        for chunk in doc.as_bytes().chunks(size) {
            scan.feed(&path, chunk);
        }
        let r = scan.finish(&path);
        match first {
            None => first = Some(r),
            Some(f) => assert_eq!(f, r, "chunks of {size}: {doc}"),
        }
    }
    first.unwrap_or(Reading::Malformed)
}

#[test]
fn parse_cost_accepts_non_negative_numbers_up_to_the_bound() {
    assert_eq!(parse_cost(b"42"), Some(42));
    assert_eq!(parse_cost(b" 7\t"), Some(7));
    assert_eq!(parse_cost(b"0"), Some(0));
    assert_eq!(parse_cost(b"007"), Some(7));
    assert_eq!(parse_cost(b"1000000000"), Some(MAX_COST));
    assert_eq!(parse_cost(b"1.2"), Some(2), "fractions round up");
    assert_eq!(parse_cost(b"3.0"), Some(3));
    assert_eq!(parse_cost(b"1e3"), Some(1000));
    assert_eq!(parse_cost(b"2.5E2"), Some(250));
    assert_eq!(parse_cost(b"2.51E2"), Some(251));
    assert_eq!(parse_cost(b"2.515E2"), Some(252));
    assert_eq!(parse_cost(b"0.000001"), Some(1));
    assert_eq!(parse_cost(b"0.0"), Some(0));
    assert_eq!(parse_cost(b"5e-400"), Some(1));
    assert_eq!(parse_cost(b"0e999999999999"), Some(0));
    assert_eq!(parse_cost(b"1000000000.0"), Some(MAX_COST));
    assert_eq!(parse_cost(b"999999999.5"), Some(MAX_COST));
    assert_eq!(parse_cost(b"1E9"), Some(MAX_COST));
    assert_eq!(parse_cost(b"10e8"), Some(MAX_COST));
    assert_eq!(parse_cost(b"0.1e1"), Some(1));
    assert_eq!(
        parse_cost(b"123456789012345678901234567890123456789e-30"),
        Some(123_456_790)
    );
    assert_eq!(
        parse_cost(b"1.0000000000000000000000000000000000001"),
        Some(2)
    );
    for bad in [
        &b"-1"[..],
        b"-0.5",
        b"+5",
        b".5",
        b"1000000001",
        b"99999999999999999999999",
        b"1e10",
        b"1000000000.1",
        b"1e",
        b"1.",
        b"1.e3",
        b"1e+",
        b"00000000000000000000000000000000000000001e99",
        b"1e400",
        b"inf",
        b"NaN",
        b"",
        b" ",
        b"12abc",
        b"0x10",
        b"\"5\"",
        b"5 5",
        b"\xff",
    ] {
        assert_eq!(parse_cost(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn json_scan_finds_the_dotted_path_in_any_chunking() {
    let doc =
        r#"{"id":"x","usage":{"prompt_tokens":3,"total_tokens":17},"n":[1,{"total_tokens":99}]}"#;
    assert_eq!(
        json_all_chunkings("usage.total_tokens", doc),
        Reading::Cost(17)
    );
    assert_eq!(
        json_all_chunkings("usage.prompt_tokens", doc),
        Reading::Cost(3)
    );
    assert_eq!(json_all_chunkings("n", doc), Reading::Invalid, "an array");
    assert_eq!(
        json_all_chunkings("usage", doc),
        Reading::Invalid,
        "an object"
    );
    assert_eq!(json_all_chunkings("id", doc), Reading::Invalid, "a string");
    assert_eq!(
        json_all_chunkings("total_tokens", doc),
        Reading::Missing,
        "only nested"
    );
    assert_eq!(json_all_chunkings("usage.none", doc), Reading::Missing);
    // Whitespace, escapes in strings, keys looking like the path inside strings.
    let doc = "{ \"a\" : \"usage\\\":{\\\"total_tokens\\\":5}\" ,\n \"usage\" :\t{ \"x\": [ {\"total_tokens\": 1} ], \"total_tokens\" : 12 } }";
    assert_eq!(
        json_all_chunkings("usage.total_tokens", doc),
        Reading::Cost(12)
    );
    // The same key in another object at the same depth does not count.
    let doc = r#"{"other":{"total_tokens":50},"usage":{"total_tokens":2}}"#;
    assert_eq!(
        json_all_chunkings("usage.total_tokens", doc),
        Reading::Cost(2)
    );
    // A number ending the document.
    assert_eq!(json_all_chunkings("a", "7"), Reading::Missing);
    assert_eq!(json_all_chunkings("a", r#"{"a":7}"#), Reading::Cost(7));
}

#[test]
fn json_scan_duplicates_charge_the_largest() {
    let doc = r#"{"usage":{"total_tokens":5,"total_tokens":40},"usage":{"total_tokens":9}}"#;
    assert_eq!(
        json_all_chunkings("usage.total_tokens", doc),
        Reading::Cost(40)
    );
}

#[test]
fn json_scan_fails_safe_on_bad_values_and_documents() {
    for (doc, want) in [
        (r#"{"u":-3}"#, Reading::Invalid),
        (r#"{"u":1.5}"#, Reading::Cost(2)),
        (r#"{"u":1e99}"#, Reading::Invalid),
        (r#"{"u":12345678901234567890}"#, Reading::Invalid),
        (r#"{"u":null}"#, Reading::Invalid),
        (r#"{"u":true}"#, Reading::Invalid),
        (r#"{"u":"5"}"#, Reading::Invalid),
        (r#"{"u":5"#, Reading::Malformed),
        (r#"{"u":5}}"#, Reading::Malformed),
        (r#"{"u":5]"#, Reading::Malformed),
        (r#"{"u":5} {"u":6}"#, Reading::Malformed),
        (r#"{"u":"5}"#, Reading::Malformed),
        ("", Reading::Malformed),
        ("not json", Reading::Malformed),
        ("\x1f\u{8b}\x08binary", Reading::Malformed),
        (r#"[{"u":5}]"#, Reading::Missing),
    ] {
        assert_eq!(json_all_chunkings("u", doc), want, "{doc}");
    }
    // Deep nesting is bounded by the body bound, not by recursion.
    let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let mut s = JsonScan::default();
    s.feed(&path("u"), deep.as_bytes());
    assert_eq!(s.finish(&path("u")), Reading::Missing);
}

fn sse_all_chunkings(p: &str, max: usize, stream: &str) -> Reading {
    let path = path(p);
    let mut first = None;
    for size in 1..=stream.len().max(1) {
        let mut scan = SseScan::default();
        for chunk in stream.as_bytes().chunks(size) {
            scan.feed(&path, max, chunk);
        }
        let r = scan.finish(&path, max);
        match first {
            None => first = Some(r),
            Some(f) => assert_eq!(f, r, "chunks of {size}: {stream:?}"),
        }
    }
    first.unwrap_or(Reading::Missing)
}

#[test]
fn sse_reads_the_last_event_carrying_the_path_across_chunks() {
    let stream = "event: delta\ndata: {\"choices\":[{\"text\":\"hi\"}]}\n\n\
                  : a comment\n\
                  data: {\"usage\":{\"total_tokens\":7}}\n\n\
                  data: {\"choices\":[],\n\
                  data: \"usage\":{\"total_tokens\":31}}\n\n\
                  data: [DONE]\n\n";
    assert_eq!(
        sse_all_chunkings("usage.total_tokens", 1024, stream),
        Reading::Cost(31),
        "multi-line data joined; [DONE] says nothing"
    );
    // CRLF and CR line ends, `data:` without a space.
    let crlf = "data:{\"usage\":{\"total_tokens\":4}}\r\n\r\ndata: {\"x\":1}\r\r";
    assert_eq!(
        sse_all_chunkings("usage.total_tokens", 1024, crlf),
        Reading::Cost(4)
    );
    // An unterminated last event still counts.
    let open = "data: {\"usage\":{\"total_tokens\":9}}";
    assert_eq!(
        sse_all_chunkings("usage.total_tokens", 1024, open),
        Reading::Cost(9)
    );
    assert_eq!(
        sse_all_chunkings("usage.total_tokens", 1024, "data: [DONE]\n\n"),
        Reading::Missing
    );
    // A later invalid value is not replaced by an earlier valid one.
    let neg = "data: {\"u\":5}\n\ndata: {\"u\":-5}\n\n";
    assert_eq!(sse_all_chunkings("u", 1024, neg), Reading::Invalid);
}

#[test]
fn sse_events_over_the_bound_are_skipped_and_counted() {
    let big = format!("data: {{\"pad\":\"{}\",\"u\":3}}\n\n", "x".repeat(200));
    assert_eq!(sse_all_chunkings("u", 64, &big), Reading::Oversize);
    // A small event after a big one is read.
    let then = format!("{big}data: {{\"u\":8}}\n\n");
    assert_eq!(sse_all_chunkings("u", 64, &then), Reading::Cost(8));
    // Many data lines adding up over the bound.
    let lines = format!("{}\n", "data: 1234567890\n".repeat(10));
    assert_eq!(sse_all_chunkings("u", 64, &lines), Reading::Oversize);
}

fn policy(json: &str) -> Result<UsagePolicy, ConfigError> {
    let raw: RawUsage = serde_json::from_str(json).expect("json");
    UsagePolicy::compile(&raw, "routes[0].rate_limit[0].usage")
}

#[test]
fn config_needs_exactly_one_source_and_valid_paths() {
    let p = policy(r#"{"header": "X-Usage-Tokens"}"#).expect("valid");
    assert_eq!(p.source, Source::Header("x-usage-tokens".into()));
    assert_eq!(p.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    let p = policy(r#"{"json": "usage.total_tokens", "max_body_bytes": 100}"#).expect("valid");
    assert_eq!(p.source, Source::Json(path("usage.total_tokens")));
    assert_eq!(p.max_body_bytes, 100);
    for (json, at, says) in [
        (r#"{}"#, "routes[0].rate_limit[0].usage", "exactly one"),
        (
            r#"{"header": "a", "json": "b"}"#,
            "routes[0].rate_limit[0].usage",
            "(found 2)",
        ),
        (
            r#"{"json": ""}"#,
            "routes[0].rate_limit[0].usage.json",
            "dotted path",
        ),
        (
            r#"{"json": "a..b"}"#,
            "routes[0].rate_limit[0].usage.json",
            "dotted path",
        ),
        (
            r#"{"sse_json": ".a"}"#,
            "routes[0].rate_limit[0].usage.sse_json",
            "dotted path",
        ),
        (
            r#"{"json": "a\"b"}"#,
            "routes[0].rate_limit[0].usage.json",
            "dotted path",
        ),
        (
            r#"{"json": "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q"}"#,
            "routes[0].rate_limit[0].usage.json",
            "1 to 16",
        ),
        (
            r#"{"header": "x y"}"#,
            "routes[0].rate_limit[0].usage.header",
            "header name",
        ),
        (
            r#"{"header": ""}"#,
            "routes[0].rate_limit[0].usage.header",
            "header name",
        ),
        (
            r#"{"header": "a", "max_body_bytes": 0}"#,
            "routes[0].rate_limit[0].usage.max_body_bytes",
            "from 1",
        ),
        (
            r#"{"header": "a", "max_body_bytes": 16777217}"#,
            "routes[0].rate_limit[0].usage.max_body_bytes",
            "from 1",
        ),
    ] {
        let e = policy(json).expect_err(json);
        assert_eq!(e.path, at, "{json}");
        assert!(e.to_string().contains(says), "{json}: {e}");
    }
    let e = serde_json::from_str::<RawUsage>(r#"{"headers": "x"}"#).expect_err("unknown");
    assert!(e.to_string().contains("unknown field"), "{e}");
}

fn limit(json: &str) -> LimitPolicy {
    let raw: RawRateLimit = serde_json::from_str(json).expect("json");
    LimitPolicy::compile(&raw, 0, "api", "p").expect("valid")
}

#[test]
fn json_bodies_over_the_bound_keep_the_estimate() {
    let l = limit(
        r#"{"name": "t", "capacity": 100, "refill_interval": "1m",
            "usage": {"json": "u", "max_body_bytes": 10}}"#,
    );
    let u = l.usage.as_ref().expect("usage");
    let mut m = Meter::new(u);
    m.on_body(u, br#"{"u":5,"#);
    assert!(m.wants_body());
    m.on_body(u, br#""pad":1}"#);
    assert!(!m.wants_body());
    assert_eq!(m.finish(u), Reading::Oversize);
    let mut m = Meter::new(u);
    m.on_body(u, br#"{"u":5}"#);
    assert_eq!(m.finish(u), Reading::Cost(5));
}

#[test]
fn header_meter_reads_the_value_once() {
    let l = limit(
        r#"{"name": "t", "capacity": 100, "refill_interval": "1m", "usage": {"header": "x-usage-tokens"}}"#,
    );
    let u = l.usage.as_ref().expect("usage");
    for (value, want) in [
        (Some(&b"12"[..]), Reading::Cost(12)),
        (Some(b"-12"), Reading::Invalid),
        (Some(b"1e12"), Reading::Invalid),
        (Some(b"2.2"), Reading::Cost(3)),
        (None, Reading::Missing),
    ] {
        let mut m = Meter::new(u);
        assert!(!m.wants_body());
        m.on_headers(u, |n| {
            assert_eq!(n, "x-usage-tokens");
            value.map(|v| v.to_vec())
        });
        m.on_body(u, b"ignored");
        assert_eq!(m.finish(u), want);
    }
}

fn req() -> Request {
    Request::default()
}

/// Takes `estimate` from a usage limit's bucket like `check_local` does,
/// then settles `reading`.
fn take_and_settle(
    h: &FakeHost,
    ls: &[LimitPolicy],
    m: &RouteUsageMetrics,
    header: Option<&str>,
) -> bool {
    let lim = super::super::Limiter {
        slots: 64,
        style: super::super::HeaderStyle::None,
        client_ip: ClientIpRule::default(),
        evictions: MetricId::NONE,
    };
    let super::super::LocalOutcome::Admitted(a) =
        super::super::check_local(h, &lim, "api", ls, &[], &req(), None)
    else {
        return false;
    };
    let mut u = Usage::begin(ls, &[], &a.taken, false, &[]).expect("usage limits");
    u.on_headers(ls, &[], |_| header.map(|v| v.as_bytes().to_vec()));
    assert!(settle(h, "api", ls, &[], m, &mut u).is_empty());
    true
}

#[test]
fn settlement_charges_debt_refunds_and_counts() {
    let h = FakeHost::new(1);
    let ls = vec![limit(
        r#"{"name": "t", "capacity": 100, "refill_interval": "100s", "usage": {"header": "x-usage-tokens"}}"#,
    )];
    let m = define_metrics(&h, "api", &ls, &[]);
    // 60 + 60 = 120 tokens: the second request passes on its estimate,
    // and leaves the bucket 20 tokens in debt.
    assert!(take_and_settle(&h, &ls, &m, Some("60")));
    assert!(take_and_settle(&h, &ls, &m, Some("60")));
    assert!(!take_and_settle(&h, &ls, &m, Some("1")), "in debt: refused");
    assert_eq!(
        h.metric("meshguard.ratelimit.api.t.usage_tokens"),
        Some(120)
    );
    assert_eq!(h.metric("meshguard.ratelimit.api.t.usage_settled"), Some(2));
    assert_eq!(
        h.metric("meshguard.ratelimit.api.t.usage_debt_tokens"),
        Some(20)
    );
    // 1 token per second: 20 s pay the debt, 1 more gives a token.
    h.advance(std::time::Duration::from_secs(20));
    assert!(!take_and_settle(&h, &ls, &m, Some("1")));
    h.advance(std::time::Duration::from_secs(1));
    // Cost 0 (below the estimate 1): refunded, so the next one passes too.
    assert!(take_and_settle(&h, &ls, &m, Some("0")));
    assert!(take_and_settle(&h, &ls, &m, Some("1")));
    assert!(!take_and_settle(&h, &ls, &m, Some("1")));
    // Unreadable costs keep the estimate and are counted.
    h.advance(std::time::Duration::from_secs(5));
    assert!(take_and_settle(&h, &ls, &m, Some("-4")));
    assert!(take_and_settle(&h, &ls, &m, None));
    assert_eq!(
        h.metric("meshguard.ratelimit.api.t.usage_settlement_failures"),
        Some(2)
    );
    assert_eq!(
        h.metric("meshguard.ratelimit.api.t.usage_tokens"),
        Some(123)
    );
}

#[test]
fn global_extras_are_reported_with_the_first_calls_descriptors() {
    let h = FakeHost::new(1);
    let global = vec![
        limit(
            r#"{"name": "g", "scope": "global", "key": [{"header": "x-api-key"}], "cost": 2, "usage": {"header": "x-usage-tokens"}}"#,
        ),
        limit(r#"{"name": "plain", "scope": "global"}"#),
    ];
    let m = define_metrics(&h, "api", &[], &global);
    assert!(m.global[1].is_none());
    let mut u = Usage::begin(&[], &global, &TakenList::default(), true, &[]).expect("usage");
    assert_eq!(u.pending.len(), 1);
    u.on_headers(&[], &global, |_| Some(b"9".to_vec()));
    let extra = settle(&h, "api", &[], &global, &m, &mut u);
    assert_eq!(extra, vec![(0, 7)]);
    let r = Request {
        headers: vec![("x-api-key".into(), b"k1".to_vec())].into(),
        ..Request::default()
    };
    let msg = report(
        "meshguard",
        "api",
        &global,
        &extra,
        &r,
        None,
        ClientIpRule::default(),
    );
    let want = proto::RateLimitRequest {
        domain: "meshguard".into(),
        descriptors: vec![proto::RateLimitDescriptor {
            entries: vec![
                proto::Entry {
                    key: "route".into(),
                    value: "api".into(),
                },
                proto::Entry {
                    key: "limit".into(),
                    value: "g".into(),
                },
                proto::Entry {
                    key: "header.x-api-key".into(),
                    value: "k1".into(),
                },
            ],
            hits_addend: Some(proto::UInt64Value { value: 7 }),
        }],
        hits_addend: 7,
    };
    assert_eq!(msg, want.encode());
    // Below the estimate: nothing to report (the protocol cannot refund).
    let mut u = Usage::begin(&[], &global, &TakenList::default(), true, &[]).expect("usage");
    u.on_headers(&[], &global, |_| Some(b"1".to_vec()));
    assert!(settle(&h, "api", &[], &global, &m, &mut u).is_empty());
    assert_eq!(h.metric("meshguard.ratelimit.api.g.usage_tokens"), Some(10));
}

#[test]
fn global_reports_never_add_more_than_the_service_said_was_left() {
    let h = FakeHost::new(1);
    let global = vec![limit(
        r#"{"name": "g", "scope": "global", "usage": {"json": "u"}}"#,
    )];
    let m = define_metrics(&h, "api", &[], &global);
    for (left, cost, want) in [
        (Some(5), 50, vec![(0, 5)]),
        (Some(0), 50, vec![]),
        (Some(100), 50, vec![(0, 49)]),
        (None, 50, vec![(0, 49)]),
    ] {
        let mut u =
            Usage::begin(&[], &global, &TakenList::default(), true, &[left]).expect("usage");
        u.on_body(&[], &global, format!("{{\"u\": {cost}}}").as_bytes());
        assert_eq!(
            settle(&h, "api", &[], &global, &m, &mut u),
            want,
            "{left:?}"
        );
    }
}
