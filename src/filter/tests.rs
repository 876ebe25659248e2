//! Native tests of the filter against the fake proxy (`host::fake_stream`):
//! a root context and its streams driven through the same callbacks
//! `dispatch` routes Envoy's calls to.

use super::http::{Action, HttpStream};
use super::root::{self, Root};
use crate::host::fake::FakeHost;
use crate::host::fake_stream::{FakeProxy, Reply};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

const SEC: u64 = 1_000_000_000;
/// The fixture tokens are valid at this time.
const T0: u64 = 1_800_000_000 * SEC;
const ROOT: u32 = 1;
const ISS: &str = "https://issuer.test";
const TOKENS: &str = include_str!("../../tests/fixtures/jwt/tokens.json");
const JWKS: &str = include_str!("../../tests/fixtures/jwt/jwks.json");

fn tok(name: &str) -> String {
    let all: Value = serde_json::from_str(TOKENS).expect("tokens");
    all[name].as_str().expect("token").to_string()
}

fn bearer(name: &str) -> String {
    format!("Bearer {}", tok(name))
}

/// One worker VM: its root context, its streams, the fake proxy.
struct Vm {
    px: FakeProxy,
    root: Root,
    streams: HashMap<u32, HttpStream>,
}

impl Vm {
    fn new(config: Value) -> Vm {
        Vm::on(FakeHost::new(T0), config)
    }

    /// A worker of the process `host` belongs to.
    fn on(host: FakeHost, mut config: Value) -> Vm {
        // Counters straight to the host, so tests read them at once.
        config["metrics_flush_interval"] = json!("0s");
        Vm::on_proxy(FakeProxy::new(host), config)
    }

    /// A worker on `px`, the configuration as given.
    fn on_proxy(px: FakeProxy, config: Value) -> Vm {
        let mut root = Root::new(ROOT);
        px.enter(ROOT);
        assert!(root.on_configure(&px, config.to_string().as_bytes()));
        Vm {
            px,
            root,
            streams: HashMap::new(),
        }
    }

    /// A request's headers arrive on stream `id`.
    fn request(&mut self, id: u32, method: &str, path: &str, headers: &[(&str, &str)]) -> Action {
        let mut all = vec![
            (":method", method),
            (":path", path),
            (":authority", "api.test"),
        ];
        all.extend_from_slice(headers);
        self.px.open(id, &all);
        let mut s = self.root.new_stream(id);
        let a = s.on_request_headers(&self.px);
        self.streams.insert(id, s);
        a
    }

    fn get(&mut self, id: u32, path: &str, headers: &[(&str, &str)]) -> Action {
        self.request(id, "GET", path, headers)
    }

    /// The upstream's response headers for stream `id` (the stream ends
    /// with them when `eos` and the filter lets them through, as in
    /// `dispatch`).
    fn respond(&mut self, id: u32, headers: &[(&str, &str)], eos: bool) -> Action {
        self.px.set_response(id, headers);
        self.px.enter(id);
        let s = self.streams.get_mut(&id).expect("stream");
        let a = s.on_response_headers(&self.px, eos);
        if eos && a == Action::Continue {
            self.end(id, true);
        }
        a
    }

    fn body(&mut self, id: u32, chunk: &[u8], eos: bool) -> Action {
        self.px.set_body_chunk(id, chunk);
        self.px.enter(id);
        let s = self.streams.get_mut(&id).expect("stream");
        // As the native module does: the body only when the stream says
        // it reads it (a wrong "no" fails every cache fill and usage test).
        let a = match s.needs_response_body() {
            true => s.on_response_body(&self.px, chunk.len(), eos),
            false => Action::Continue,
        };
        if eos && a == Action::Continue {
            self.end(id, true);
        }
        a
    }

    fn trailers(&mut self, id: u32, trailers: &[(&str, &str)]) {
        self.px.set_trailers(id, trailers);
        self.px.enter(id);
        let s = self.streams.get_mut(&id).expect("stream");
        s.on_response_trailers(&self.px);
        self.end(id, true);
    }

    /// The stream ends: `seen` through the filter, else found deleted.
    fn end(&mut self, id: u32, seen: bool) {
        if !seen {
            self.px.delete(id);
        }
        if let Some(mut s) = self.streams.remove(&id) {
            s.on_end(&self.px, seen);
        }
    }

    /// Time passes, then the root's tick.
    fn tick_after(&mut self, d: Duration) {
        self.px.host.advance(d);
        self.px.enter(ROOT);
        self.root.on_tick(&self.px);
    }

    /// The answer of the rate limit service's call `token`.
    fn rls_answer(&mut self, token: u32, grpc_status: u32, body: &[u8]) {
        self.px.set_call_answer(&[], body, Some("boom"));
        self.px.enter(ROOT);
        root::on_rls_response(&self.px, self.root.worker(), token, grpc_status, body.len());
    }

    fn replies(&self, id: u32) -> Vec<Reply> {
        self.px.context(id).replies
    }

    /// The one local reply of stream `id`.
    fn reply(&self, id: u32) -> Reply {
        let r = self.replies(id);
        assert_eq!(r.len(), 1, "one local reply on stream {id}: {r:?}");
        r.into_iter().next().expect("reply")
    }

    fn resumed(&self, id: u32) -> u32 {
        self.px.context(id).resumed
    }

    fn metric(&self, name: &str) -> Option<i64> {
        self.px.host.metric(name)
    }
}

fn json_body(r: &Reply) -> Value {
    serde_json::from_slice(&r.body).expect("a JSON body")
}

/// Counters wait in the worker's batch where the host batches them
/// (proxy-wasm), and reach a host that does not (the native module) at
/// once, whatever `metrics_flush_interval` says.
#[test]
fn counters_are_batched_only_where_the_host_batches_them() {
    for batches in [true, false] {
        let px = FakeProxy::new(FakeHost::new(T0));
        px.batches.set(batches);
        let r = route(json!({ "rate_limit": [
            { "name": "all", "capacity": 5, "refill_interval": "5s" } ] }));
        let mut vm = Vm::on_proxy(
            px,
            json!({ "metrics_flush_interval": "100ms", "routes": [r] }),
        );
        assert_eq!(vm.get(1, "/", &[]), Action::Continue);
        let name = "meshguard.ratelimit.api.all.allowed";
        let empty = crate::host::Stream::metric_batch(&vm.px).is_empty();
        if batches {
            assert!(!empty, "the increment waits in the batch");
            assert_ne!(vm.metric(name), Some(1));
            crate::host::Stream::metric_batch(&vm.px).flush(&vm.px);
        } else {
            assert!(empty, "nothing batched");
        }
        assert_eq!(vm.metric(name), Some(1), "batches: {batches}");
    }
}

fn route(extra: Value) -> Value {
    let mut r = json!({ "name": "api", "match": { "path_prefix": "/" } });
    for (k, v) in extra.as_object().expect("object") {
        r[k] = v.clone();
    }
    r
}

// ------------------------------------------------------------------ JWT

fn remote_jwt_config() -> Value {
    json!({
        "jwt_providers": { "main": { "issuer": ISS, "audiences": ["api"],
            "jwks": { "remote": { "cluster": "idp", "authority": "auth.test", "path": "/jwks.json" } } } },
        "routes": [ route(json!({ "jwt": { "providers": ["main"] } })) ]
    })
}

fn inline_jwt_config(route_jwt: Value) -> Value {
    json!({
        "jwt_providers": { "main": { "issuer": ISS, "audiences": ["api"],
            "jwks": { "inline": serde_json::from_str::<Value>(JWKS).expect("jwks") } } },
        "routes": [ route(json!({ "jwt": route_jwt })) ]
    })
}

#[test]
fn a_request_waiting_for_remote_keys_is_paused_then_resumed_when_they_arrive() {
    let mut vm = Vm::new(remote_jwt_config());
    let auth = bearer("valid_RS256");
    assert_eq!(
        vm.get(7, "/orders", &[("authorization", &auth)]),
        Action::Pause
    );
    assert_eq!(vm.resumed(7), 0);
    // The tick fetches the keys (the root's call) ...
    vm.tick_after(Duration::from_millis(10));
    let calls = vm.px.http_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!((calls[0].target.as_str(), calls[0].owner), ("idp", ROOT));
    vm.tick_after(Duration::from_millis(10));
    assert_eq!(vm.resumed(7), 0, "still no keys: still paused");
    // ... they arrive; the next tick runs the request again and resumes it.
    vm.px
        .set_call_answer(&[(":status", "200")], JWKS.as_bytes(), None);
    vm.px.enter(ROOT);
    vm.root
        .on_http_call_response(&vm.px, calls[0].token, JWKS.len());
    vm.tick_after(Duration::from_millis(10));
    assert_eq!(vm.resumed(7), 1);
    assert!(vm.replies(7).is_empty());
    // Verified: the claims went to the upstream, the token did not.
    let ctx = vm.px.context(7);
    assert_eq!(ctx.request_header("authorization"), None);
    assert_eq!(vm.metric("meshguard.jwt.api.allowed"), Some(1));
    assert_eq!(vm.metric("meshguard.jwt.api.keys_pending"), Some(1));
    // Nothing left parked: later ticks resume nothing more.
    vm.tick_after(Duration::from_millis(10));
    assert_eq!(vm.resumed(7), 1);
}

#[test]
fn a_request_waiting_for_keys_past_its_deadline_gets_503() {
    let mut vm = Vm::new(remote_jwt_config());
    let auth = bearer("valid_RS256");
    assert_eq!(vm.get(3, "/", &[("authorization", &auth)]), Action::Pause);
    // The deadline starts at the first park: just before it, still waiting.
    vm.tick_after(Duration::from_nanos(super::pipeline::JWKS_WAIT_NS - 1));
    assert!(vm.replies(3).is_empty(), "not before the deadline");
    vm.tick_after(Duration::from_millis(1));
    let r = vm.reply(3);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(json_body(&r)["error"], "jwks_unavailable");
    assert_eq!(vm.resumed(3), 0, "answered, never let through");
    assert_eq!(vm.metric("meshguard.jwt.api.denied"), Some(1));
}

#[test]
fn jwt_refusals_are_401_403_and_400() {
    let mut vm = Vm::new(inline_jwt_config(json!({
        "providers": ["main"],
        "reject_multiple_tokens": true,
        "claims": [{ "claim": "scope", "contains": "orders:write" }]
    })));
    assert_eq!(vm.get(1, "/", &[]), Action::Pause);
    let r = vm.reply(1);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some(r#"Bearer realm="api""#)
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(json_body(&r)["error"], "missing_token");

    let auth = bearer("scope_read_only");
    assert_eq!(vm.get(2, "/", &[("authorization", &auth)]), Action::Pause);
    let r = vm.reply(2);
    assert_eq!(r.status, 403);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|h| h.contains("insufficient_scope")));

    // Two tokens (two header lines) on a route that refuses several.
    let mut vm = Vm::new(inline_jwt_config(json!({
        "providers": ["main"], "reject_multiple_tokens": true
    })));
    let auth = bearer("valid_RS256");
    let auth2 = bearer("valid_ES256");
    assert_eq!(
        vm.get(
            3,
            "/",
            &[("authorization", &auth), ("authorization", &auth2)]
        ),
        Action::Pause
    );
    let r = vm.reply(3);
    assert_eq!(r.status, 400);
    assert_eq!(json_body(&r)["error"], "invalid_request");

    let auth = bearer("valid_RS256");
    assert_eq!(
        vm.get(4, "/", &[("authorization", &auth)]),
        Action::Continue
    );
    assert!(vm.replies(4).is_empty());
}

// ------------------------------------------------------------ local limits

#[test]
fn local_limit_refusal_is_429_with_its_headers_and_admitted_responses_carry_them() {
    let mut vm = Vm::new(json!({ "routes": [ route(json!({ "rate_limit": [
        { "name": "all", "capacity": 1, "refill_interval": "10s" } ] })) ] }));
    assert_eq!(vm.get(1, "/", &[]), Action::Continue);
    assert!(vm.replies(1).is_empty());
    assert_eq!(vm.respond(1, &[(":status", "200")], true), Action::Continue);
    let ctx = vm.px.context(1);
    assert_eq!(
        ctx.response_header_values("ratelimit"),
        ["\"all\";r=0;t=10"]
    );
    assert_eq!(
        ctx.response_header_values("ratelimit-policy"),
        ["\"all\";q=1;w=10"]
    );

    assert_eq!(vm.get(2, "/", &[]), Action::Pause);
    let r = vm.reply(2);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("10"));
    assert_eq!(r.header("ratelimit").as_deref(), Some("\"all\";r=0;t=10"));
    let b = json_body(&r);
    assert_eq!(
        (b["error"].as_str(), b["limit"].as_str()),
        (Some("rate_limited"), Some("all"))
    );
    assert_eq!(vm.metric("meshguard.ratelimit.api.all.limited"), Some(1));
    assert_eq!(vm.metric("meshguard.ratelimit.api.all.allowed"), Some(1));
}

#[test]
fn refusals_to_grpc_and_grpc_web_calls_are_trailers_only_statuses() {
    let mut vm = Vm::new(json!({ "routes": [ route(json!({ "rate_limit": [
        { "name": "all", "capacity": 1, "refill_interval": "10s" } ] })) ] }));
    assert_eq!(vm.get(1, "/", &[]), Action::Continue);

    let grpc = [("content-type", "application/grpc")];
    assert_eq!(vm.request(2, "POST", "/pkg.Svc/Call", &grpc), Action::Pause);
    let r = vm.reply(2);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/grpc")
    );
    assert_eq!(
        r.header("grpc-status").as_deref(),
        Some("8"),
        "RESOURCE_EXHAUSTED"
    );
    assert_eq!(r.header("grpc-retry-pushback-ms").as_deref(), Some("10000"));
    assert!(r.body.is_empty(), "trailers-only");

    let web = [("content-type", "application/grpc-web+proto")];
    assert_eq!(vm.request(3, "POST", "/pkg.Svc/Call", &web), Action::Pause);
    let r = vm.reply(3);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/grpc-web+proto")
    );
    assert_eq!(r.header("grpc-status").as_deref(), Some("8"));
    // The status again as a gRPC-Web trailers frame (flag 0x80).
    assert_eq!(r.body.first(), Some(&0x80));
    assert!(
        r.body_text().contains("grpc-status:8"),
        "{:?}",
        r.body_text()
    );
}

// ---------------------------------------------------------- global limits

fn rls_config(failure_mode: &str) -> Value {
    json!({
        "rate_limit_service": { "cluster": "rls", "timeout": "50ms", "failure_mode": failure_mode },
        "routes": [ route(json!({ "rate_limit": [ { "name": "g", "scope": "global" } ] })) ]
    })
}

/// A `RateLimitResponse` with only its `overall_code` (1 OK, 2 OVER_LIMIT).
fn rls_body(code: u8) -> Vec<u8> {
    vec![0x08, code]
}

/// Sends a request on a route with global limits: it waits for the call.
fn start_global(vm: &mut Vm, id: u32) -> u32 {
    assert_eq!(vm.get(id, "/", &[]), Action::Pause);
    let calls = vm.px.grpc_calls();
    let call = calls.last().expect("a call to the rate limit service");
    assert_eq!(call.owner, ROOT, "the root owns the call");
    assert_eq!(
        call.target,
        "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
    );
    call.token
}

#[test]
fn the_rate_limit_services_ok_resumes_the_request_in_its_own_context() {
    let mut vm = Vm::new(rls_config("deny"));
    let t1 = start_global(&mut vm, 1);
    let t2 = start_global(&mut vm, 2);
    vm.rls_answer(t2, 0, &rls_body(1));
    assert_eq!((vm.resumed(1), vm.resumed(2)), (0, 1));
    assert!(vm.replies(2).is_empty());
    vm.rls_answer(t1, 0, &rls_body(1));
    assert_eq!((vm.resumed(1), vm.resumed(2)), (1, 1));
    assert_eq!(vm.metric("meshguard.ratelimit.api.g.allowed"), Some(2));
    assert_eq!(vm.metric("meshguard.rls.api.ok"), Some(2));
    // Answered: a late tick changes nothing.
    vm.tick_after(Duration::from_secs(1));
    assert_eq!((vm.resumed(1), vm.resumed(2)), (1, 1));
    assert!(vm.px.cancelled().is_empty());
}

#[test]
fn the_rate_limit_services_over_limit_is_429() {
    let mut vm = Vm::new(rls_config("allow"));
    let t = start_global(&mut vm, 1);
    vm.rls_answer(t, 0, &rls_body(2));
    let r = vm.reply(1);
    assert_eq!(r.status, 429);
    assert_eq!(json_body(&r)["limit"], "g");
    assert_eq!(vm.resumed(1), 0);
    assert_eq!(vm.metric("meshguard.rls.api.over_limit"), Some(1));
}

#[test]
fn rls_timeout_applies_the_failure_mode_and_cancels_the_call() {
    for (mode, denied) in [("allow", false), ("deny", true)] {
        let mut vm = Vm::new(rls_config(mode));
        let t = start_global(&mut vm, 1);
        // Not before the deadline (timeout + grace).
        vm.tick_after(Duration::from_millis(99));
        assert_eq!(vm.resumed(1), 0, "{mode}");
        assert!(vm.replies(1).is_empty(), "{mode}");
        vm.tick_after(Duration::from_millis(1));
        assert_eq!(vm.px.cancelled(), [t], "{mode}");
        assert_eq!(vm.metric("meshguard.rls.api.timeout"), Some(1), "{mode}");
        if denied {
            let r = vm.reply(1);
            assert_eq!(r.status, 503, "{mode}");
            assert_eq!(json_body(&r)["error"], "rate_limit_unavailable");
            assert_eq!(vm.resumed(1), 0, "{mode}");
            assert_eq!(vm.metric("meshguard.rls.api.failure_mode_denied"), Some(1));
        } else {
            assert!(vm.replies(1).is_empty(), "{mode}");
            assert_eq!(vm.resumed(1), 1, "{mode}");
            assert_eq!(vm.metric("meshguard.rls.api.failure_mode_allowed"), Some(1));
        }
        assert_eq!(vm.metric("meshguard.ratelimit.api.g.errors"), Some(1));
        // A late answer finds nobody waiting.
        vm.rls_answer(t, 0, &rls_body(2));
        assert_eq!(vm.replies(1).len(), usize::from(denied), "{mode}");
    }
}

#[test]
fn a_malformed_or_failed_rls_answer_applies_the_failure_mode() {
    // Malformed (no overall code), a gRPC error, a call that cannot be sent.
    let mut vm = Vm::new(rls_config("deny"));
    let t = start_global(&mut vm, 1);
    vm.rls_answer(t, 0, &[0x08]);
    assert_eq!(vm.reply(1).status, 503);
    let t = start_global(&mut vm, 2);
    vm.rls_answer(t, 14, &[]);
    assert_eq!(vm.reply(2).status, 503);
    assert_eq!(vm.metric("meshguard.rls.api.error"), Some(2));
    vm.px.refuse_calls(Some("no cluster"));
    assert_eq!(vm.get(3, "/", &[]), Action::Pause);
    assert_eq!(vm.reply(3).status, 503);

    let mut vm = Vm::new(rls_config("allow"));
    let t = start_global(&mut vm, 1);
    vm.rls_answer(t, 0, &[0x08]);
    assert!(vm.replies(1).is_empty());
    assert_eq!(vm.resumed(1), 1);
    vm.px.refuse_calls(Some("no cluster"));
    assert_eq!(vm.get(2, "/", &[]), Action::Continue, "let through at once");
    assert_eq!(vm.metric("meshguard.rls.api.failure_mode_allowed"), Some(2));
}

// ---------------------------------------------------------------- paths

#[test]
fn a_path_that_cannot_be_normalised_is_400_or_invalid_argument() {
    let mut vm = Vm::new(json!({ "routes": [ route(json!({ "rate_limit": [
        { "capacity": 5, "refill_interval": "1s" } ] })) ] }));
    assert_eq!(vm.get(1, "/a%2Fb", &[]), Action::Pause);
    let r = vm.reply(1);
    assert_eq!(r.status, 400);
    assert_eq!(json_body(&r)["error"], "invalid_path");
    assert_eq!(vm.metric("meshguard.path_rejected"), Some(1));
    let grpc = [("content-type", "application/grpc")];
    assert_eq!(vm.request(2, "POST", "/a%2Fb", &grpc), Action::Pause);
    let r = vm.reply(2);
    assert_eq!(
        (r.status, r.header("grpc-status").as_deref()),
        (200, Some("3"))
    );
    assert_eq!(vm.get(3, "/a/b", &[]), Action::Continue);
}

// -------------------------------------------------------------- breaker

fn breaker_config() -> Value {
    json!({ "routes": [ route(json!({ "circuit_breaker": {
        "consecutive_failures": 2, "open_duration": "5s" } })) ] })
}

#[test]
fn the_breaker_counts_upstream_failures_and_answers_503_when_open() {
    let mut vm = Vm::new(breaker_config());
    for id in 1..=2 {
        assert_eq!(vm.get(id, "/", &[]), Action::Continue);
        vm.respond(id, &[(":status", "502")], true);
    }
    assert_eq!(vm.get(3, "/", &[]), Action::Pause);
    let r = vm.reply(3);
    assert_eq!(r.status, 503);
    assert_eq!(json_body(&r)["error"], "circuit_open");
    // The open time (5 s, plus up to 20% jitter) in whole seconds.
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((5..=6).contains(&retry), "{retry}");
    assert_eq!(vm.metric("meshguard.breaker.api.trips"), Some(1));
    assert_eq!(vm.metric("meshguard.breaker.api.rejected"), Some(1));
    // A success in between resets the count: 200 responses never open it.
    let mut vm = Vm::new(breaker_config());
    for (id, status) in [(1, "502"), (2, "200"), (3, "502")] {
        vm.get(id, "/", &[]);
        vm.respond(id, &[(":status", status)], true);
    }
    assert_eq!(vm.get(4, "/", &[]), Action::Continue);
}

#[test]
fn a_grpc_status_in_the_trailers_decides_the_breaker_outcome() {
    let grpc = [("content-type", "application/grpc")];
    let ok_headers = [(":status", "200"), ("content-type", "application/grpc")];
    let mut vm = Vm::new(breaker_config());
    for id in 1..=2 {
        assert_eq!(
            vm.request(id, "POST", "/pkg.Svc/Call", &grpc),
            Action::Continue
        );
        // HTTP 200 without a grpc-status: the outcome waits for the trailers.
        vm.respond(id, &ok_headers, false);
        vm.body(id, b"\0\0\0\0\0", false);
        vm.trailers(id, &[("grpc-status", "14")]);
    }
    assert_eq!(vm.request(3, "POST", "/pkg.Svc/Call", &grpc), Action::Pause);
    let r = vm.reply(3);
    assert_eq!(
        (r.status, r.header("grpc-status").as_deref()),
        (200, Some("14"))
    );
    // OK in the trailers is a success; a gRPC stream that ends without
    // trailers is broken.
    let mut vm = Vm::new(breaker_config());
    vm.request(1, "POST", "/pkg.Svc/Call", &grpc);
    vm.respond(1, &ok_headers, false);
    vm.trailers(1, &[("grpc-status", "0")]);
    vm.request(2, "POST", "/pkg.Svc/Call", &grpc);
    vm.respond(2, &ok_headers, false);
    vm.body(2, b"", true);
    assert_eq!(
        vm.request(3, "POST", "/pkg.Svc/Call", &grpc),
        Action::Continue
    );
    vm.respond(3, &ok_headers, false);
    vm.body(3, b"", true);
    assert_eq!(vm.request(4, "POST", "/pkg.Svc/Call", &grpc), Action::Pause);
    assert_eq!(vm.reply(4).header("grpc-status").as_deref(), Some("14"));
}

#[test]
fn admitted_responses_get_the_rate_limit_headers_with_or_without_a_response_side() {
    // With a breaker the stream keeps its state for the response; without,
    // it keeps only the headers to add (`HttpStream::keep_response_headers`).
    for breaker in [true, false] {
        let mut r = route(json!({ "rate_limit": [
            { "name": "all", "capacity": 5, "refill_interval": "5s" } ] }));
        if breaker {
            r["circuit_breaker"] = json!({});
        }
        let mut vm = Vm::new(json!({ "rate_limit_headers": "both", "routes": [r] }));
        assert_eq!(vm.get(1, "/", &[]), Action::Continue);
        vm.respond(1, &[(":status", "200"), ("x-ratelimit-limit", "99")], true);
        let ctx = vm.px.context(1);
        assert_eq!(
            ctx.response_header_values("ratelimit"),
            ["\"all\";r=4;t=1"],
            "breaker: {breaker}"
        );
        assert_eq!(
            ctx.response_header_values("x-ratelimit-limit"),
            ["5"],
            "the single-valued legacy header replaces the upstream's (breaker: {breaker})"
        );
    }
}

// ---------------------------------------------------------------- cache

fn cache_config(max_entry_bytes: u64) -> Value {
    json!({
        "cache_store": { "max_bytes": 1_048_576, "max_entry_bytes": max_entry_bytes },
        "routes": [ route(json!({ "cache": {} })) ]
    })
}

const CACHEABLE: [(&str, &str); 3] = [
    (":status", "200"),
    ("cache-control", "max-age=60"),
    ("content-type", "text/plain"),
];

#[test]
fn a_response_is_copied_into_the_cache_as_it_streams_and_then_served() {
    let mut vm = Vm::new(cache_config(65_536));
    assert_eq!(vm.get(1, "/doc", &[]), Action::Continue);
    assert_eq!(vm.respond(1, &CACHEABLE, false), Action::Continue);
    assert_eq!(
        vm.px.context(1).response_header_values("cache-status"),
        ["meshguard; fwd=uri-miss; fwd-status=200; stored"]
    );
    vm.body(1, b"hello ", false);
    vm.body(1, b"world", true);
    assert_eq!(vm.metric("meshguard.cache.api.stored"), Some(1));
    // The next request is answered from the cache, body and headers.
    assert_eq!(vm.get(2, "/doc", &[]), Action::Pause);
    let r = vm.reply(2);
    assert_eq!((r.status, r.body_text().as_str()), (200, "hello world"));
    assert!(
        r.stored,
        "a hit is sent as the stored response, not a local reply"
    );
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    assert!(r.header("cache-status").is_some_and(|v| v.contains("hit")));
    assert_eq!(vm.metric("meshguard.cache.api.hit"), Some(1));
}

/// Only a stream that reads its response body says so: a cache fill
/// does until its body is stored; a rate-limited route never does.
#[test]
fn a_stream_needs_its_response_body_only_while_something_reads_it() {
    let mut vm = Vm::new(cache_config(65_536));
    vm.get(1, "/doc", &[]);
    vm.respond(1, &CACHEABLE, false);
    assert!(vm.streams[&1].needs_response_body());
    let mut vm = Vm::new(json!({ "routes": [ route(json!({ "rate_limit": [
        { "name": "all", "capacity": 5, "refill_interval": "10s" } ] })) ] }));
    vm.get(1, "/", &[]);
    vm.respond(1, &[(":status", "200")], false);
    assert!(!vm.streams[&1].needs_response_body());
}

/// A stream is idle (the native module then skips its response hooks)
/// only when its request went on and nothing is left for the response:
/// not with RateLimit headers to add, not while a cache entry fills, not
/// when it was refused.
#[test]
fn a_stream_is_idle_only_when_the_response_has_nothing_to_do() {
    let limit = |headers: &str| {
        json!({ "rate_limit_headers": headers, "routes": [ route(json!({ "rate_limit": [
            { "name": "all", "capacity": 1, "refill_interval": "10s" } ] })) ] })
    };
    let mut vm = Vm::new(limit("none"));
    assert_eq!(vm.get(1, "/", &[]), Action::Continue);
    assert!(vm.streams[&1].is_idle());
    assert_eq!(vm.get(2, "/", &[]), Action::Pause);
    assert!(!vm.streams[&2].is_idle(), "a refusal is a local reply");
    let mut vm = Vm::new(limit("ietf"));
    vm.get(1, "/", &[]);
    assert!(!vm.streams[&1].is_idle(), "RateLimit headers to add");
    let mut vm = Vm::new(cache_config(65_536));
    vm.get(1, "/doc", &[]);
    assert!(!vm.streams[&1].is_idle(), "a cache miss fills");
}

#[test]
fn a_body_too_big_abandons_the_capture_and_stores_nothing() {
    let host = FakeHost::new(T0);
    let mut vm = Vm::on(host.clone(), cache_config(1_024));
    let mut other = Vm::on(host, cache_config(1_024));
    vm.get(1, "/big", &[]);
    assert_eq!(
        other.get(1, "/big", &[]),
        Action::Pause,
        "waits for the fill"
    );
    vm.respond(1, &CACHEABLE, false);
    vm.body(1, &[b'x'; 600], false);
    other.tick_after(Duration::from_millis(30));
    assert_eq!(other.resumed(1), 0, "the fill goes on");
    vm.body(1, &[b'y'; 600], false);
    // Too big: the fill is given up at once, and the waiting request goes
    // upstream without waiting for the end of this response.
    other.tick_after(Duration::from_millis(30));
    assert_eq!(other.resumed(1), 1);
    vm.body(1, b"end", true);
    assert_eq!(vm.metric("meshguard.cache.api.stored"), Some(0));
    // Nothing stored, the lock released: the next request goes upstream at
    // once (no wait behind a fill).
    assert_eq!(vm.get(2, "/big", &[]), Action::Continue);
    assert!(vm.replies(2).is_empty());
}

#[test]
fn a_stream_reset_mid_body_stores_nothing_and_releases_the_fill() {
    let mut vm = Vm::new(cache_config(65_536));
    vm.get(1, "/doc", &[]);
    vm.respond(1, &CACHEABLE, false);
    vm.body(1, b"hello ", false);
    vm.end(1, false);
    assert_eq!(vm.metric("meshguard.cache.api.stored"), Some(0));
    assert_eq!(
        vm.get(2, "/doc", &[]),
        Action::Continue,
        "a miss, not a wait"
    );
    assert!(vm.replies(2).is_empty());
}

#[test]
fn a_request_waits_behind_another_workers_fill_then_gets_the_stored_response() {
    let host = FakeHost::new(T0);
    let mut a = Vm::on(host.clone(), cache_config(65_536));
    let mut b = Vm::on(host.clone(), cache_config(65_536));
    assert_eq!(a.get(1, "/doc", &[]), Action::Continue, "A fills");
    assert_eq!(b.get(1, "/doc", &[]), Action::Pause, "B waits for A's fill");
    a.respond(1, &CACHEABLE, false);
    a.body(1, b"filled", true);
    // The cache said when to look again (at most 25 ms): not at the next
    // 10 ms tick.
    b.tick_after(Duration::from_millis(10));
    assert!(b.replies(1).is_empty(), "not before the cache's retry time");
    b.tick_after(Duration::from_millis(20));
    let r = b.reply(1);
    assert_eq!((r.status, r.body_text().as_str()), (200, "filled"));
    assert_eq!(b.resumed(1), 0, "answered, not let through");
}

#[test]
fn a_request_waiting_behind_a_fill_that_never_ends_goes_upstream_at_its_deadline() {
    let host = FakeHost::new(T0);
    let mut a = Vm::on(host.clone(), cache_config(65_536));
    let mut b = Vm::on(host.clone(), cache_config(65_536));
    a.get(1, "/doc", &[]);
    assert_eq!(b.get(1, "/doc", &[]), Action::Pause);
    let mut waited = Duration::ZERO;
    while b.resumed(1) == 0 && waited < Duration::from_secs(10) {
        b.tick_after(Duration::from_millis(10));
        waited += Duration::from_millis(10);
    }
    assert_eq!(b.resumed(1), 1);
    assert!(b.replies(1).is_empty());
    // The fill lock (5 s) expired first: B took it over and goes upstream
    // as a miss, not past the 6 s wait.
    assert!(waited <= Duration::from_nanos(super::pipeline::CACHE_WAIT_NS));
}

// ---------------------------------------------------------- observability

/// The filter state line of stream `id` as `key -> value`.
fn verdict_of(vm: &Vm, id: u32) -> HashMap<String, String> {
    let line = vm
        .px
        .context(id)
        .filter_state(super::state::FILTER_STATE_KEY)
        .unwrap_or_else(|| panic!("no filter state on stream {id}"));
    line.split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn observed_config() -> Value {
    let mut c = inline_jwt_config(json!({ "providers": ["main"] }));
    c["observability"] = json!({ "filter_state": true,
        "claims": ["sub", "scope", "roles", "org", "org.id", "missing"] });
    c["routes"][0]["rate_limit"] = json!([{ "name": "per-user", "key": [{ "claim": "sub" }],
        "capacity": 1, "refill_tokens": 1, "refill_interval": "1h" }]);
    c
}

#[test]
fn an_allowed_request_publishes_its_verdict_and_verified_claims() {
    let mut vm = Vm::new(observed_config());
    let auth = bearer("valid_RS256");
    assert_eq!(
        vm.get(1, "/", &[("authorization", &auth)]),
        Action::Continue
    );
    let v = verdict_of(&vm, 1);
    assert_eq!(v["route"], "api");
    assert_eq!(v["decision"], "allowed");
    assert_eq!((v["policy"].as_str(), v["reason"].as_str()), ("-", "-"));
    assert_eq!(
        (v["provider"].as_str(), v["sub"].as_str()),
        ("main", "user-1")
    );
    assert_eq!(
        (v["limit"].as_str(), v["remaining"].as_str()),
        ("per-user", "0")
    );
    let ctx = vm.px.context(1);
    let claim = |n: &str| ctx.filter_state(&format!("meshguard.claim.{n}"));
    assert_eq!(claim("sub").as_deref(), Some("user-1"));
    // `scope` as a list; arrays and objects as their JSON.
    assert_eq!(
        claim("scope").as_deref(),
        Some(r#"["orders:read","orders:write"]"#)
    );
    assert_eq!(claim("roles").as_deref(), Some(r#"["admin","dev"]"#));
    let org: Value = serde_json::from_str(&claim("org").expect("org")).expect("json");
    assert_eq!(org, json!({ "id": "acme", "tier": 2 }));
    assert_eq!(claim("org.id").as_deref(), Some("acme"));
    assert_eq!(claim("missing"), None);
    // The upstream's response is not meshguard's: no Proxy-Status on it.
    vm.respond(1, &[(":status", "200")], true);
    assert!(vm
        .px
        .context(1)
        .response_header_values("proxy-status")
        .is_empty());
}

#[test]
fn refusals_carry_proxy_status_and_publish_their_reason() {
    let mut vm = Vm::new(observed_config());
    // No token: 401 by the JWT policy.
    vm.get(1, "/", &[]);
    let r = vm.reply(1);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("proxy-status").as_deref(),
        Some(
            r#"meshguard; error=http_request_denied; details="jwt missing_token a bearer token is required""#
        )
    );
    let v = verdict_of(&vm, 1);
    assert_eq!(
        (
            v["decision"].as_str(),
            v["policy"].as_str(),
            v["reason"].as_str()
        ),
        ("denied", "jwt", "missing_token")
    );
    // No claims published for a refused request.
    assert!(vm
        .px
        .context(1)
        .filter_state("meshguard.claim.sub")
        .is_none());
    // The limit's one token, then 429.
    let auth = bearer("valid_RS256");
    vm.get(2, "/", &[("authorization", &auth)]);
    vm.get(3, "/", &[("authorization", &auth)]);
    let r = vm.reply(3);
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("proxy-status").as_deref(),
        Some(r#"meshguard; error=http_request_denied; details="ratelimit rate_limited per-user""#)
    );
    let v = verdict_of(&vm, 3);
    assert_eq!(
        (
            v["decision"].as_str(),
            v["reason"].as_str(),
            v["detail"].as_str()
        ),
        ("limited", "rate_limited", "per-user")
    );
    assert_eq!(v["sub"], "user-1");
}

#[test]
fn an_open_breaker_and_a_cache_hit_are_published() {
    let mut vm = Vm::new(
        json!({ "observability": { "filter_state": true }, "routes": [
        { "name": "flaky", "match": { "path_prefix": "/flaky/" },
          "circuit_breaker": { "consecutive_failures": 1, "open_duration": "30s" } },
        { "name": "catalog", "match": { "path_prefix": "/catalog/" },
          "cache": { "default_ttl": "60s" } }
    ] }),
    );
    vm.get(1, "/flaky/a", &[]);
    assert_eq!(verdict_of(&vm, 1)["breaker"], "closed");
    vm.respond(1, &[(":status", "500")], true);
    vm.get(2, "/flaky/b", &[]);
    let r = vm.reply(2);
    assert_eq!(r.status, 503);
    assert!(!r.stored, "a refusal is a local reply");
    assert_eq!(
        r.header("proxy-status").as_deref(),
        Some(r#"meshguard; error=destination_unavailable; details="breaker circuit_open""#)
    );
    let v = verdict_of(&vm, 2);
    assert_eq!(
        (
            v["route"].as_str(),
            v["decision"].as_str(),
            v["breaker"].as_str()
        ),
        ("flaky", "unavailable", "open")
    );
    // Cache: the miss is published with its Cache-Status once the response
    // is known, the hit as meshguard's own reply.
    vm.get(3, "/catalog/x", &[]);
    vm.respond(
        3,
        &[(":status", "200"), ("cache-control", "max-age=60")],
        true,
    );
    let miss = verdict_of(&vm, 3);
    assert_eq!(miss["decision"], "allowed");
    assert!(miss["cache"].starts_with("fwd=uri-miss;"), "{miss:?}");
    assert!(miss["cache"].ends_with(";stored"), "{miss:?}");
    vm.get(4, "/catalog/x", &[]);
    let r = vm.reply(4);
    assert_eq!(r.status, 200);
    assert!(r.stored);
    assert_eq!(
        r.header("proxy-status").as_deref(),
        Some(r#"meshguard; details="cache hit""#)
    );
    let hit = verdict_of(&vm, 4);
    assert_eq!(
        (
            hit["decision"].as_str(),
            hit["policy"].as_str(),
            hit["reason"].as_str()
        ),
        ("cached", "cache", "hit")
    );
}

#[test]
fn observability_off_publishes_nothing_and_adds_no_proxy_status() {
    let mut c = observed_config();
    c["observability"] = json!({ "filter_state": false, "proxy_status": false });
    let mut vm = Vm::new(c);
    let auth = bearer("valid_RS256");
    vm.get(1, "/", &[("authorization", &auth)]);
    vm.get(2, "/", &[("authorization", &auth)]);
    assert_eq!(vm.reply(2).status, 429);
    assert_eq!(vm.reply(2).header("proxy-status"), None);
    for id in [1, 2] {
        assert!(vm.px.context(id).filter_state.is_empty(), "stream {id}");
    }
}

#[test]
fn the_rls_call_carries_the_requests_trace_headers() {
    let mut vm = Vm::new(rls_config("deny"));
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    vm.get(
        1,
        "/",
        &[
            ("traceparent", tp),
            ("x-b3-sampled", "1"),
            ("x-other", "no"),
        ],
    );
    let calls = vm.px.grpc_calls();
    let call = calls.last().expect("a call");
    assert_eq!(
        call.headers,
        vec![
            ("traceparent".to_string(), tp.to_string()),
            ("x-b3-sampled".to_string(), "1".to_string())
        ]
    );
    // Switched off: nothing copied.
    let mut c = rls_config("deny");
    c["observability"] = json!({ "trace_propagation": false });
    let mut vm = Vm::new(c);
    vm.get(1, "/", &[("traceparent", tp)]);
    assert!(vm
        .px
        .grpc_calls()
        .last()
        .expect("a call")
        .headers
        .is_empty());
}

#[test]
fn a_jwks_fetch_for_a_waiting_request_carries_its_trace() {
    let mut vm = Vm::new(remote_jwt_config());
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let auth = bearer("valid_RS256");
    vm.get(7, "/", &[("authorization", &auth), ("traceparent", tp)]);
    vm.tick_after(Duration::from_millis(10));
    let calls = vm.px.http_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0]
            .headers
            .contains(&("traceparent".to_string(), tp.to_string())),
        "{:?}",
        calls[0].headers
    );
    assert_eq!(vm.metric("meshguard.jwks.fetches"), Some(1));
    // The IdP answers 503: a failed fetch.
    vm.px.set_call_answer(&[(":status", "503")], b"", None);
    vm.px.enter(ROOT);
    vm.root.on_http_call_response(&vm.px, calls[0].token, 0);
    assert_eq!(vm.metric("meshguard.jwks.fetch_failures"), Some(1));
}

#[test]
fn the_filter_state_line_is_off_by_default_and_claims_are_published_when_listed() {
    let mut c = inline_jwt_config(json!({ "providers": ["main"] }));
    c["observability"] = json!({ "claims": ["sub"] });
    let mut vm = Vm::new(c);
    let auth = bearer("valid_RS256");
    vm.get(1, "/", &[("authorization", &auth)]);
    let ctx = vm.px.context(1);
    assert_eq!(ctx.filter_state(super::state::FILTER_STATE_KEY), None);
    assert_eq!(
        ctx.filter_state("meshguard.claim.sub").as_deref(),
        Some("user-1")
    );
    // Proxy-Status is on by default.
    vm.get(2, "/", &[]);
    assert!(vm.reply(2).header("proxy-status").is_some());
}

#[test]
fn the_verdict_line_keeps_one_field_per_value_whatever_a_claim_holds() {
    let v = super::state::Verdict {
        decision: "allowed",
        jwt: Some(("p".into(), Some("a b\"c\\d\u{e9}".into()))),
        ..Default::default()
    };
    assert_eq!(
        v.line("r"),
        "route=r decision=allowed policy=- reason=- provider=p sub=a_b_c_d_"
    );
    let d = super::state::Verdict {
        decision: "denied",
        policy: "jwt",
        reason: "invalid_token",
        detail: "bad \"sig\"".into(),
        ..Default::default()
    };
    assert_eq!(
        d.proxy_status(401),
        r#"meshguard; error=http_request_denied; details="jwt invalid_token bad \"sig\"""#
    );
    // No policy nor reason: dashes; no error for a hit; a back-slash
    // escaped, anything outside printable ASCII replaced.
    let e = super::state::Verdict {
        decision: "cached",
        detail: "a\\b\u{e9}\n".into(),
        ..Default::default()
    };
    assert_eq!(e.proxy_status(200), r#"meshguard; details="- - a\\b??""#);
    let u = super::state::Verdict {
        decision: "unavailable",
        policy: "breaker",
        reason: "circuit_open",
        ..Default::default()
    };
    assert_eq!(
        u.proxy_status(503),
        r#"meshguard; error=destination_unavailable; details="breaker circuit_open""#
    );
}

// ---------------------------------------------------------- leased global limits

fn lease_config(failure_mode: &str, lease: u64) -> Value {
    json!({
        "rate_limit_service": { "cluster": "rls", "timeout": "50ms", "failure_mode": failure_mode },
        "routes": [ route(json!({ "rate_limit": [
            { "name": "g", "scope": "global", "lease": lease, "key": [ { "header": "x-user" } ] }
        ] })) ]
    })
}

/// A `RateLimitResponse` with one descriptor status: `code` (1 OK, 2
/// OVER_LIMIT), a limit of `per_minute` a minute, `remaining`, and
/// `duration_until_reset` = `reset_secs`.
fn lease_body(code: u8, per_minute: u8, remaining: u8, reset_secs: u8) -> Vec<u8> {
    let mut st = vec![0x08, code, 0x12, 4, 0x08, per_minute, 0x10, 2];
    st.extend([0x18, remaining, 0x22, 2, 0x08, reset_secs]);
    let mut b = vec![0x08, code, 0x12, st.len() as u8];
    b.extend(st);
    b
}

/// The `hits_addend` (field 3) at the end of a `RateLimitRequest`.
fn hits_addend(message: &[u8]) -> u8 {
    match message {
        [.., 0x18, n] => *n,
        _ => 1,
    }
}

#[test]
fn a_leased_limit_spends_its_batch_across_workers_with_one_refill_in_flight() {
    let host = FakeHost::new(T0);
    let mut a = Vm::on(host.clone(), lease_config("deny", 4));
    let mut b = Vm::on(host, lease_config("deny", 4));
    let alice = [("x-user", "alice")];
    // No lease yet: the request waits for the first batch (4 hits).
    assert_eq!(a.get(1, "/", &alice), Action::Pause);
    let calls = a.px.grpc_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].owner, ROOT, "the root owns the refill");
    assert_eq!(hits_addend(&calls[0].message), 4);
    let message = String::from_utf8_lossy(&calls[0].message).into_owned();
    assert!(message.contains("header.x-user") && message.contains("alice"));
    a.rls_answer(calls[0].token, 0, &lease_body(1, 10, 6, 30));
    assert_eq!(a.resumed(1), 1, "resumed as soon as the lease came");
    // 3 left: spent without any call until half is gone (2 left) ...
    assert_eq!(a.get(2, "/", &alice), Action::Continue);
    assert_eq!(a.px.grpc_calls().len(), 2, "a refill at half the batch");
    // (asking for what keeps the process within the lease: 4 - 2)
    assert_eq!(hits_addend(&a.px.grpc_calls()[1].message), 2);
    assert_eq!(a.get(3, "/", &alice), Action::Continue);
    // ... and the other worker spends the same lease, sending nothing.
    assert_eq!(b.get(10, "/", &alice), Action::Continue);
    assert!(
        b.px.grpc_calls().is_empty(),
        "one refill in flight per process"
    );
    // Nothing left: waits for the refill in flight.
    assert_eq!(b.get(11, "/", &alice), Action::Pause);
    assert!(b.px.grpc_calls().is_empty());
    // Another user has a lease of its own.
    assert_eq!(b.get(12, "/", &[("x-user", "bob")]), Action::Pause);
    assert_eq!(b.px.grpc_calls().len(), 1);
    // The service refuses the batch of 2: the next refill asks for 1 ...
    let refill = a.px.grpc_calls()[1].token;
    a.rls_answer(refill, 0, &lease_body(2, 10, 0, 5));
    b.tick_after(Duration::from_millis(10));
    assert!(b.replies(11).is_empty());
    let calls = b.px.grpc_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(hits_addend(&calls[1].message), 1);
    // ... refused for one request: denied until the reset it gave.
    b.rls_answer(calls[1].token, 0, &lease_body(2, 10, 0, 5));
    let r = b.reply(11);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("5"));
    assert_eq!(json_body(&r)["limit"], "g");
    assert_eq!(a.get(4, "/", &alice), Action::Pause);
    assert_eq!(a.reply(4).status, 429);
    assert_eq!(a.px.grpc_calls().len(), 2, "no call while denied");
    assert_eq!(
        a.metric("meshguard.ratelimit.api.g.lease_obtained"),
        Some(1)
    );
    assert_eq!(a.metric("meshguard.ratelimit.api.g.lease_hits"), Some(4));
    assert_eq!(a.metric("meshguard.ratelimit.api.g.limited"), Some(2));
    assert_eq!(a.metric("meshguard.ratelimit.api.g.allowed"), Some(4));
    // After the reset: a new lease is asked for.
    a.px.host.advance(Duration::from_secs(5));
    assert_eq!(a.get(5, "/", &alice), Action::Pause);
    assert_eq!(a.px.grpc_calls().len(), 3);
}

#[test]
fn a_lease_that_never_comes_applies_the_failure_mode() {
    for (mode, denied) in [("allow", false), ("deny", true)] {
        let mut vm = Vm::new(lease_config(mode, 10));
        assert_eq!(vm.get(1, "/", &[]), Action::Pause, "{mode}");
        let t = vm.px.grpc_calls()[0].token;
        vm.tick_after(Duration::from_millis(99));
        assert!(vm.replies(1).is_empty() && vm.resumed(1) == 0, "{mode}");
        vm.tick_after(Duration::from_millis(60));
        assert_eq!(vm.px.cancelled(), [t], "{mode}");
        assert_eq!(vm.metric("meshguard.ratelimit.api.g.lease_failed"), Some(1));
        if denied {
            assert_eq!(vm.reply(1).status, 503, "{mode}");
            assert_eq!(vm.metric("meshguard.rls.api.failure_mode_denied"), Some(1));
        } else {
            assert_eq!(vm.resumed(1), 1, "{mode}");
            assert_eq!(vm.metric("meshguard.rls.api.failure_mode_allowed"), Some(1));
        }
        // Backing off after the failure: the next request gets the
        // failure mode at once, without a call.
        let a = vm.get(2, "/", &[]);
        assert_eq!(vm.px.grpc_calls().len(), 1, "{mode}");
        if denied {
            assert_eq!(vm.reply(2).status, 503);
        } else {
            assert_eq!(a, Action::Continue);
        }
        // A late answer is dropped.
        vm.rls_answer(t, 0, &lease_body(1, 10, 9, 30));
        assert_eq!(
            vm.metric("meshguard.ratelimit.api.g.lease_obtained"),
            Some(0)
        );
    }
}

#[test]
fn a_lease_slot_holding_garbage_grants_nothing() {
    let host = FakeHost::new(T0);
    let id = crate::ratelimit::lease::identity("api", "g", &["".into()]);
    let key = crate::ratelimit::lease::slot_key(&id, 10_000);
    let mut value = crate::ratelimit::lease::encode(
        &id,
        &crate::ratelimit::lease::LeaseState {
            tokens: 1_000,
            window_end_ns: u64::MAX,
            ..Default::default()
        },
    );
    value.truncate(40);
    crate::host::Host::shared_set(&host, &key, &value, None).unwrap();
    let mut vm = Vm::on(host, lease_config("allow", 10));
    assert_eq!(vm.get(1, "/", &[]), Action::Pause, "a refill first");
    assert_eq!(vm.px.grpc_calls().len(), 1);
}

#[test]
fn a_per_request_limit_refusing_gives_the_leased_hits_back() {
    let host = FakeHost::new(T0);
    let mut vm = Vm::on(
        host.clone(),
        json!({
            "rate_limit_service": { "cluster": "rls", "timeout": "50ms" },
            "routes": [ route(json!({ "rate_limit": [
                { "name": "leased", "scope": "global", "lease": 4 },
                { "name": "each", "scope": "global" }
            ] })) ]
        }),
    );
    assert_eq!(vm.get(1, "/", &[]), Action::Pause);
    let refill = vm.px.grpc_calls()[0].clone();
    assert_eq!(hits_addend(&refill.message), 4);
    vm.rls_answer(refill.token, 0, &lease_body(1, 10, 6, 30));
    // The lease spent, the per-request call carries only the other limit.
    let calls = vm.px.grpc_calls();
    assert_eq!(calls.len(), 2);
    let message = String::from_utf8_lossy(&calls[1].message).into_owned();
    assert!(
        message.contains("each") && !message.contains("leased"),
        "{message}"
    );
    let id = crate::ratelimit::lease::identity("api", "leased", &[]);
    let tokens = |h: &FakeHost| crate::ratelimit::lease::peek(h, 10_000, &id).map(|s| s.tokens);
    assert_eq!(tokens(&host), Some(3));
    vm.rls_answer(calls[1].token, 0, &rls_body(2));
    assert_eq!(vm.reply(1).status, 429);
    assert_eq!(json_body(&vm.reply(1))["limit"], "each");
    assert_eq!(tokens(&host), Some(4), "the refused request's hit is back");
}

// ------------------------------------------------------- usage-based cost

fn usage_config(usage: Value) -> Value {
    json!({
        "routes": [ route(json!({ "rate_limit": [ {
            "name": "tokens", "key": [ { "header": "x-api-key" } ],
            "capacity": 100, "refill_interval": "100s", "usage": usage } ] })) ]
    })
}

#[test]
fn usage_from_sse_settles_at_the_end_of_a_stream_passed_through_unchanged() {
    let mut vm = Vm::new(usage_config(json!({ "sse_json": "usage.total_tokens" })));
    let key = [("x-api-key", "k1")];
    assert_eq!(vm.get(1, "/v1/chat", &key), Action::Continue);
    assert_eq!(
        vm.respond(
            1,
            &[(":status", "200"), ("content-type", "text/event-stream")],
            false
        ),
        Action::Continue
    );
    // Events split across chunks, every chunk let through at once.
    for chunk in [
        &b"data: {\"choices\":[{\"delta\":\"he"[..],
        b"llo\"}]}\n\ndata: {\"usage\":{\"total_",
        b"tokens\":70}}\n",
        b"\ndata: [DONE]\n\n",
    ] {
        assert_eq!(vm.body(1, chunk, false), Action::Continue);
        assert_eq!(
            vm.metric("meshguard.ratelimit.api.tokens.usage_settled"),
            Some(0)
        );
    }
    assert_eq!(vm.body(1, b"", true), Action::Continue);
    assert_eq!(
        vm.metric("meshguard.ratelimit.api.tokens.usage_settled"),
        Some(1)
    );
    assert_eq!(
        vm.metric("meshguard.ratelimit.api.tokens.usage_tokens"),
        Some(70)
    );
    // 30 tokens left: a request costing 40 passes on its estimate and goes
    // 10 into debt; the next one waits.
    assert_eq!(vm.get(2, "/v1/chat", &key), Action::Continue);
    vm.respond(2, &[(":status", "200")], false);
    vm.body(2, b"data: {\"usage\":{\"total_tokens\":40}}\n\n", true);
    assert_eq!(
        vm.metric("meshguard.ratelimit.api.tokens.usage_debt_tokens"),
        Some(10)
    );
    assert_eq!(vm.get(3, "/v1/chat", &key), Action::Pause);
    let r = vm.reply(3);
    assert_eq!(r.status, 429);
    // 10 tokens of debt + 1: 11 s at one token a second.
    assert_eq!(r.header("retry-after").as_deref(), Some("11"));
    // Another key has its own budget.
    assert_eq!(
        vm.get(4, "/v1/chat", &[("x-api-key", "k2")]),
        Action::Continue
    );
}

#[test]
fn usage_from_a_header_or_json_and_what_keeps_the_estimate() {
    let mut vm = Vm::new(usage_config(json!({ "header": "x-usage-tokens" })));
    assert_eq!(vm.get(1, "/", &[]), Action::Continue);
    vm.respond(1, &[(":status", "200"), ("x-usage-tokens", "99")], false);
    // Settled at the headers already: the body is not read.
    assert_eq!(
        vm.metric("meshguard.ratelimit.api.tokens.usage_tokens"),
        Some(99)
    );
    vm.body(1, b"{}", true);
    assert_eq!(vm.get(2, "/", &[]), Action::Continue);
    vm.respond(2, &[(":status", "200"), ("x-usage-tokens", "-5")], true);
    assert_eq!(
        vm.metric("meshguard.ratelimit.api.tokens.usage_settlement_failures"),
        Some(1)
    );
    // 100 - 99 - 1 = 0 left.
    assert_eq!(vm.get(3, "/", &[]), Action::Pause);
    assert_eq!(vm.reply(3).status, 429);

    let mut vm = Vm::new(usage_config(
        json!({ "json": "usage.total_tokens", "max_body_bytes": 64 }),
    ));
    assert_eq!(vm.get(1, "/", &[]), Action::Continue);
    vm.respond(1, &[(":status", "200")], false);
    vm.body(1, b"{\"usage\":{\"total_to", false);
    vm.body(1, b"kens\":50}}", true);
    assert_eq!(
        vm.metric("meshguard.ratelimit.api.tokens.usage_tokens"),
        Some(50)
    );
    // Over the bound: the estimate stands, counted.
    assert_eq!(vm.get(2, "/", &[]), Action::Continue);
    vm.respond(2, &[(":status", "200")], false);
    vm.body(2, &[b' '; 100], false);
    vm.body(2, b"{\"usage\":{\"total_tokens\":50}}", true);
    assert_eq!(
        vm.metric("meshguard.ratelimit.api.tokens.usage_tokens"),
        Some(51)
    );
    // A client gone mid-body: settled at the end of the stream, estimate.
    assert_eq!(vm.get(3, "/", &[]), Action::Continue);
    vm.respond(3, &[(":status", "200")], false);
    vm.body(3, b"{\"usage\":", false);
    vm.end(3, false);
    assert_eq!(
        vm.metric("meshguard.ratelimit.api.tokens.usage_settlement_failures"),
        Some(2)
    );
    assert_eq!(
        vm.metric("meshguard.ratelimit.api.tokens.usage_tokens"),
        Some(52)
    );
}

#[test]
fn usage_of_a_global_limit_is_reported_to_the_service_at_the_end() {
    let mut vm = Vm::new(json!({
        "rate_limit_service": { "cluster": "rls", "timeout": "50ms" },
        "routes": [ route(json!({ "rate_limit": [ { "name": "g", "scope": "global",
            "usage": { "header": "x-usage-tokens" } } ] })) ]
    }));
    let t = start_global(&mut vm, 1);
    vm.rls_answer(t, 0, &rls_body(1));
    assert_eq!(vm.resumed(1), 1);
    assert_eq!(vm.px.grpc_calls().len(), 1);
    vm.respond(1, &[(":status", "200"), ("x-usage-tokens", "12")], true);
    let calls = vm.px.grpc_calls();
    assert_eq!(calls.len(), 2, "the report");
    let report = &calls[1];
    assert_eq!(report.owner, ROOT);
    let want = crate::ratelimit::rls::proto::RateLimitRequest {
        domain: "meshguard".into(),
        descriptors: vec![crate::ratelimit::rls::proto::RateLimitDescriptor {
            entries: vec![
                crate::ratelimit::rls::proto::Entry {
                    key: "route".into(),
                    value: "api".into(),
                },
                crate::ratelimit::rls::proto::Entry {
                    key: "limit".into(),
                    value: "g".into(),
                },
            ],
            hits_addend: Some(crate::ratelimit::rls::proto::UInt64Value { value: 11 }),
        }],
        hits_addend: 11,
    };
    assert_eq!(report.message, want.encode());
    // Its answer is ignored: nothing is resumed or answered.
    vm.rls_answer(report.token, 0, &rls_body(2));
    assert_eq!(vm.resumed(1), 1);
    assert!(vm.replies(1).is_empty());
    assert_eq!(
        vm.metric("meshguard.ratelimit.api.g.usage_tokens"),
        Some(12)
    );
}

// ------------------------------------------------------------ cache (#20)

impl Vm {
    /// The answer of the HTTP call `token` stream `id` sent (delivered to
    /// the root context, as Envoy does).
    fn stream_call_answer(&mut self, id: u32, token: u32, headers: &[(&str, &str)], body: &[u8]) {
        assert!(self.streams.contains_key(&id));
        self.px.set_call_answer(headers, body, None);
        self.px.enter(ROOT);
        self.root.on_http_call_response(&self.px, token, body.len());
    }
}

fn stored_then_stale(vm: &mut Vm, path: &str, headers: &[(&str, &str)]) {
    assert_eq!(vm.get(100, path, &[]), Action::Continue);
    vm.respond(100, headers, false);
    vm.body(100, b"old", true);
    vm.tick_after(Duration::from_secs(5));
}

#[test]
fn a_mismatched_304_is_resolved_by_a_full_request_to_the_routes_cluster() {
    let mut vm = Vm::new(cache_config(65_536));
    let v1 = [
        (":status", "200"),
        ("cache-control", "max-age=1"),
        ("etag", "\"v1\""),
    ];
    stored_then_stale(&mut vm, "/doc", &v1);
    assert_eq!(vm.get(1, "/doc", &[("x-user", "alice")]), Action::Continue);
    assert_eq!(
        vm.px.context(1).request_header("if-none-match").as_deref(),
        Some("\"v1\"")
    );
    vm.px.with_context(1, |c| {
        c.properties
            .insert("xds.cluster_name".into(), b"backend".to_vec())
    });
    // The origin answers the cache's validator with a 304 for another
    // representation: the response pauses and the request goes again.
    assert_eq!(
        vm.respond(1, &[(":status", "304"), ("etag", "\"v2\"")], true),
        Action::Pause
    );
    let calls = vm.px.http_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!((call.target.as_str(), call.owner), ("backend", 1));
    let names: Vec<&str> = call.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert!(!names.contains(&"if-none-match"), "{names:?}");
    assert!(call.headers.contains(&("x-user".into(), "alice".into())));
    assert!(call.headers.contains(&(":path".into(), "/doc".into())));
    assert!(vm.replies(1).is_empty());
    // Another token is not the refetch's answer.
    vm.stream_call_answer(1, call.token + 7, &[(":status", "500")], b"");
    assert!(vm.replies(1).is_empty());
    vm.stream_call_answer(
        1,
        call.token,
        &[
            (":status", "200"),
            ("etag", "\"v2\""),
            ("cache-control", "max-age=60"),
        ],
        b"new",
    );
    let r = vm.reply(1);
    assert_eq!((r.status, r.body_text().as_str()), (200, "new"));
    assert_eq!(
        r.header("cache-status").as_deref(),
        Some("meshguard; fwd=stale; fwd-status=200; stored; detail=validator-mismatch")
    );
    assert_eq!(vm.metric("meshguard.cache.api.refetched"), Some(1));
    // Stored: the next request is a hit with the new body.
    assert_eq!(vm.get(2, "/doc", &[]), Action::Pause);
    assert_eq!(vm.reply(2).body_text(), "new");

    // No answer (the call failed, or the host refused it): a 502 saying so.
    for refuse in [false, true] {
        let path = if refuse { "/b" } else { "/a" };
        stored_then_stale(&mut vm, path, &v1);
        vm.get(3, path, &[]);
        vm.px.with_context(3, |c| {
            c.properties
                .insert("xds.cluster_name".into(), b"backend".to_vec())
        });
        vm.px.refuse_calls(refuse.then_some("no"));
        assert_eq!(
            vm.respond(3, &[(":status", "304"), ("etag", "\"v2\"")], true),
            Action::Pause
        );
        if !refuse {
            let token = vm.px.http_calls().last().expect("call").token;
            vm.stream_call_answer(3, token, &[], b"");
        }
        let r = vm.reply(3);
        assert_eq!(r.status, 502, "refused: {refuse}");
        assert_eq!(
            r.header("cache-status").as_deref(),
            Some("meshguard; fwd=stale; fwd-status=304; detail=validator-mismatch-refetch-failed")
        );
        vm.px.refuse_calls(None);
        vm.end(3, false);
    }
    assert_eq!(vm.metric("meshguard.cache.api.refetch_failed"), Some(2));
}

fn purge_config() -> Value {
    let mut c = inline_jwt_config(json!({ "providers": ["main"], "allow_missing": true }));
    c["observability"] = json!({ "filter_state": true });
    c["routes"][0]["cache"] =
        json!({ "purge": { "claims": [ { "claim": "scope", "contains": "orders:write" } ] } });
    c
}

#[test]
fn purge_is_answered_by_meshguard_allowed_with_the_claim_else_denied() {
    let mut vm = Vm::new(purge_config());
    assert_eq!(vm.get(1, "/doc", &[]), Action::Continue);
    vm.respond(1, &CACHEABLE, false);
    vm.body(1, b"x", true);
    assert_eq!(vm.metric("meshguard.cache.api.stored"), Some(1));
    // Without a token, or with one lacking the claim: 403, nothing dropped.
    let read_only = bearer("scope_read_only");
    for (id, auth) in [(2, None), (3, Some(read_only.as_str()))] {
        let h: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        assert_eq!(vm.request(id, "PURGE", "/doc", &h), Action::Pause);
        let r = vm.reply(id);
        assert_eq!(r.status, 403, "{auth:?}");
        assert_eq!(json_body(&r)["error"], "forbidden");
        assert_eq!(verdict_of(&vm, id)["reason"], "purge_denied");
    }
    assert_eq!(vm.metric("meshguard.cache.api.purge_denied"), Some(2));
    assert_eq!(vm.metric("meshguard.cache.api.purged").unwrap_or(0), 0);
    assert_eq!(vm.get(4, "/doc", &[]), Action::Pause, "still a hit");
    // With the claim: 200 {"purged": 1}, and the next GET is a miss.
    let writer = bearer("valid_RS256");
    assert_eq!(
        vm.request(5, "PURGE", "/doc", &[("authorization", &writer)]),
        Action::Pause
    );
    let r = vm.reply(5);
    assert_eq!(r.status, 200);
    assert_eq!(json_body(&r)["purged"], 1);
    assert_eq!(
        (
            verdict_of(&vm, 5)["decision"].as_str(),
            verdict_of(&vm, 5)["reason"].as_str()
        ),
        ("purged", "purged")
    );
    assert_eq!(vm.metric("meshguard.cache.api.purged"), Some(1));
    assert_eq!(vm.get(6, "/doc", &[]), Action::Continue);
    assert!(vm.replies(6).is_empty());
}

fn stale_on_open_config() -> Value {
    json!({ "observability": { "filter_state": true }, "routes": [ route(json!({
        "circuit_breaker": { "consecutive_failures": 1, "open_duration": "30s" },
        "cache": {} })) ] })
}

#[test]
fn an_open_breaker_serves_a_stale_entry_stale_if_error_allows_else_503() {
    let mut vm = Vm::new(stale_on_open_config());
    stored_then_stale(
        &mut vm,
        "/ok",
        &[
            (":status", "200"),
            ("cache-control", "max-age=1, stale-if-error=60"),
        ],
    );
    stored_then_stale(
        &mut vm,
        "/no",
        &[(":status", "200"), ("cache-control", "max-age=1")],
    );
    // One failure opens the breaker.
    vm.get(1, "/fail", &[]);
    vm.respond(1, &[(":status", "502")], true);
    assert_eq!(vm.get(2, "/ok", &[]), Action::Pause);
    let r = vm.reply(2);
    assert_eq!((r.status, r.body_text().as_str()), (200, "old"));
    let cs = r.header("cache-status").unwrap_or_default();
    assert!(cs.starts_with("meshguard; fwd=stale;"), "{cs}");
    assert!(cs.ends_with("detail=circuit-open"), "{cs}");
    assert!(cs.contains("ttl=-"), "{cs}");
    let v = verdict_of(&vm, 2);
    assert_eq!(
        (
            v["decision"].as_str(),
            v["reason"].as_str(),
            v["breaker"].as_str()
        ),
        ("cached", "stale_circuit_open", "open")
    );
    // Not allowed to be served stale: the breaker's 503.
    assert_eq!(vm.get(3, "/no", &[]), Action::Pause);
    let r = vm.reply(3);
    assert_eq!(r.status, 503);
    assert_eq!(json_body(&r)["error"], "circuit_open");
    assert_eq!(verdict_of(&vm, 3)["reason"], "circuit_open");
    assert_eq!(vm.metric("meshguard.breaker.api.rejected"), Some(2));
}

fn purge_by_config() -> Value {
    let mut c = purge_config();
    c["routes"][0]["cache"]["purge"]["prefix"] = json!(true);
    c["routes"][0]["cache"]["purge"]["tag_header"] = json!("Surrogate-Key");
    c
}

/// Stores `path` with these extra response headers (stream `id`).
fn fill(vm: &mut Vm, id: u32, path: &str, extra: &[(&str, &str)], req: &[(&str, &str)]) {
    assert_eq!(vm.get(id, path, req), Action::Continue, "{path} is a miss");
    let mut h = CACHEABLE.to_vec();
    h.extend_from_slice(extra);
    vm.respond(id, &h, false);
    vm.body(id, path.as_bytes(), true);
}

fn is_hit(vm: &mut Vm, id: u32, path: &str) -> bool {
    let a = vm.get(id, path, &[]);
    if a == Action::Continue {
        vm.end(id, false);
    }
    a == Action::Pause
}

#[test]
fn purge_by_prefix_and_by_tag_hide_what_was_stored_before() {
    let mut vm = Vm::new(purge_by_config());
    let writer = bearer("valid_RS256");
    let auth = [("authorization", writer.as_str())];
    // A client's request header is never a tag: only the origin's response.
    fill(
        &mut vm,
        1,
        "/cat/a",
        &[("surrogate-key", "p1 all")],
        &[("surrogate-key", "evil")],
    );
    fill(&mut vm, 2, "/cat/b", &[("surrogate-key", "p2, all")], &[]);
    fill(&mut vm, 3, "/other", &[("surrogate-key", "p1")], &[]);
    fill(&mut vm, 4, "/cat", &[], &[]);
    for p in ["/cat/a", "/cat/b", "/other", "/cat"] {
        assert!(is_hit(&mut vm, 10, p), "{p}");
    }
    // The tag purge needs the claim too.
    let h = [("meshguard-purge-tag", "evil")];
    assert_eq!(vm.request(11, "PURGE", "/", &h), Action::Pause);
    assert_eq!(vm.reply(11).status, 403);
    let mut h = auth.to_vec();
    h.push(("meshguard-purge-tag", "evil"));
    assert_eq!(vm.request(12, "PURGE", "/", &h), Action::Pause);
    assert_eq!(json_body(&vm.reply(12))["purged_tags"], json!(["evil"]));
    assert!(is_hit(&mut vm, 13, "/cat/a"), "a request header is no tag");
    // Tags are echoed as JSON strings, escaped.
    let mut h = auth.to_vec();
    h.push(("meshguard-purge-tag", "q\"uo\\te\u{1}"));
    vm.request(30, "PURGE", "/", &h);
    assert_eq!(
        json_body(&vm.reply(30))["purged_tags"],
        json!(["q\"uo\\te\u{1}"])
    );
    let mut h = auth.to_vec();
    h.push(("meshguard-purge-tag", "p1"));
    vm.request(14, "PURGE", "/", &h);
    assert_eq!(vm.reply(14).status, 200);
    assert_eq!(vm.metric("meshguard.cache.api.purged_tag"), Some(3));
    assert!(!is_hit(&mut vm, 15, "/cat/a"));
    assert!(!is_hit(&mut vm, 16, "/other"));
    assert!(is_hit(&mut vm, 17, "/cat/b"));
    // By prefix: the path is the prefix, on the request's host.
    let mut h = auth.to_vec();
    h.push(("meshguard-purge", "prefix"));
    vm.request(18, "PURGE", "/cat/", &h);
    let r = vm.reply(18);
    assert_eq!(json_body(&r)["purged_prefix"], "/cat/");
    assert_eq!(vm.metric("meshguard.cache.api.purged_prefix"), Some(1));
    assert!(!is_hit(&mut vm, 19, "/cat/b"));
    assert!(is_hit(&mut vm, 20, "/cat"), "/cat is not under /cat/");
    // Stored after the purge: served again.
    vm.tick_after(Duration::from_millis(1));
    fill(&mut vm, 21, "/cat/b", &[("surrogate-key", "p2")], &[]);
    assert!(is_hit(&mut vm, 22, "/cat/b"));
    // Malformed or not offered: 400, nothing recorded.
    for (id, extra) in [
        (23, ("meshguard-purge", "everything")),
        (24, ("meshguard-purge-tag", " , ")),
    ] {
        let mut h = auth.to_vec();
        h.push(extra);
        vm.request(id, "PURGE", "/", &h);
        assert_eq!(vm.reply(id).status, 400, "{extra:?}");
    }
    let many: String = (0..17).map(|i| format!("t{i} ")).collect();
    let mut h = auth.to_vec();
    h.push(("meshguard-purge-tag", &many));
    vm.request(25, "PURGE", "/", &h);
    assert_eq!(vm.reply(25).status, 400);
    let mut vm = Vm::new(purge_config());
    let mut h = auth.to_vec();
    h.push(("meshguard-purge", "prefix"));
    vm.request(26, "PURGE", "/", &h);
    assert_eq!(vm.reply(26).status, 400, "prefix not configured");
}
