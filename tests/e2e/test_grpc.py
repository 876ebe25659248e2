"""gRPC through a real Envoy with meshguard, HTTP/2 on both sides: a real
gRPC server and client (`grpcio`, see grpc_support.py). Calls pass
untouched without a policy; every refusal is a trailers-only gRPC status
the client reads exactly (RESOURCE_EXHAUSTED with retry information,
UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE, INVALID_ARGUMENT), in
gRPC-Web form for gRPC-Web; the breaker counts UNAVAILABLE in trailers and
in trailers-only responses, closes through probes, ignores cancelled
streams and counts broken statuses; streams are never held back."""

import base64
import http.client
import json
import time

import grpc
import pytest

from grpc_support import (OTHER_SERVICE, SERVICE, GrpcClient, GrpcServer, SlowStreamingOrigin,
                          TrailersOrigin)
from jwt_support import JWKS, claims, mint_hs

OK = grpc.StatusCode.OK


@pytest.fixture
def server():
    s = GrpcServer()
    yield s
    s.stop()


@pytest.fixture
def grpc_envoy(envoy, server):
    """Factory: grpc_envoy(config, **kw) -> (Envoy, GrpcClient): h2c
    downstream, HTTP/2 upstream to the gRPC server."""
    clients = []

    def make(config, concurrency=2, **kw):
        e = envoy(config, concurrency=concurrency, upstream_port=server.port,
                  downstream_http2=True, upstream_http2=True, route_timeout="30s", **kw)
        c = GrpcClient(e.listen_port)
        clients.append(c)
        return e, c

    yield make
    for c in clients:
        c.close()


def grpc_route(name, service=SERVICE, by_grpc_match=False, **policies):
    """A route for one service: by path prefix (the way any version of
    meshguard can match it), or with `match.grpc`."""
    match = {"grpc": {"service": service}} if by_grpc_match else {"path_prefix": f"/{service}/"}
    return {"name": name, "match": match, **policies}


def breaker(**over):
    b = {"consecutive_failures": 3, "open_duration": "1s", "max_open_duration": "10s",
         "half_open_requests": 1, "success_threshold": 2}
    b.update(over)
    return b


def wait_until(pred, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def h1(e, path, headers, body=b"\x00\x00\x00\x00\x00"):
    """An HTTP/1.1 POST (for what a gRPC library would not send)."""
    return e.request(path, method="POST", headers=headers, body=body)


def test_unary_and_streaming_pass_untouched_without_policy(grpc_envoy, server):
    # meshguard is configured (a route elsewhere), but no route matches.
    cfg = {"routes": [{"name": "web", "match": {"path_prefix": "/web/"},
                       "rate_limit": [{"capacity": 1, "refill_interval": "1h"}]}]}
    e, c = grpc_envoy(cfg)
    for i in range(3):
        r = c.unary(f"hello-{i}".encode())
        assert r.code == OK, r
        assert r.body == f"hello-{i}".encode()
        assert r.trailing.get("x-echo-trailer") == "1", r.trailing
    s = c.stream_all({"n": 4})
    assert s.code == OK and s.body == [b"msg-0", b"msg-1", b"msg-2", b"msg-3"], s
    s = c.stream_all({"n": 2, "fail": "ABORTED"})
    assert s.code == grpc.StatusCode.ABORTED and s.body == [b"msg-0", b"msg-1"], s
    assert server.calls == 5
    stats = e.stats()
    assert stats["http.ingress.downstream_cx_http2_total"] >= 1, "h2 downstream"
    assert stats["cluster.upstream.upstream_cx_http2_total"] >= 1, "h2 upstream"


def test_rate_limit_is_resource_exhausted_with_retry_info(grpc_envoy, server):
    per_method = {"name": "per-method", "key": ["grpc_service", "grpc_method"], "capacity": 2,
                  "refill_tokens": 1, "refill_interval": "1h"}
    cfg = {"routes": [
        grpc_route("echo", by_grpc_match=True, rate_limit=[per_method]),
        grpc_route("other", service=OTHER_SERVICE, by_grpc_match=True,
                   rate_limit_grpc_status="UNAVAILABLE",
                   rate_limit=[{"name": "all", "capacity": 1, "refill_interval": "1h"}]),
    ]}
    e, c = grpc_envoy(cfg)
    for _ in range(2):
        r = c.unary()
        assert r.code == OK, r
        assert r.initial.get("ratelimit-policy") == '"per-method";q=2;w=7200', r.initial
    r = c.unary()
    assert r.code == grpc.StatusCode.RESOURCE_EXHAUSTED, r
    assert r.details == "rate_limited (limit=per-method, retry_after=3600, route=echo)", r
    # Retry information travels as trailing metadata of the trailers-only reply.
    assert r.trailing.get("retry-after") == "3600", r.trailing
    assert r.trailing.get("ratelimit") == '"per-method";r=0;t=7200', r.trailing
    assert r.trailing.get("grpc-retry-pushback-ms") == "3600000", r.trailing
    assert "ratelimit-policy" in r.trailing
    # The key has the method: another method of the service has its own bucket.
    assert c.stream_all({"n": 1}).code == OK
    # The route chose UNAVAILABLE for its refusals.
    assert c.unary(service=OTHER_SERVICE).code == OK
    r = c.unary(service=OTHER_SERVICE)
    assert r.code == grpc.StatusCode.UNAVAILABLE and r.details.startswith("rate_limited"), r
    assert server.calls == 4
    assert e.stat("wasmcustom.meshguard.ratelimit.echo.per-method.limited") == 1


def test_jwt_refusals_are_unauthenticated_and_permission_denied(grpc_envoy, server):
    cfg = {
        "jwt_providers": {"main": {"issuer": "https://issuer.test", "audiences": ["api"],
                                   "algorithms": ["HS256"], "jwks": {"inline": JWKS}}},
        "routes": [grpc_route("auth", jwt={
            "providers": ["main"], "claims": [{"claim": "scope", "contains": "orders:write"}]})],
    }
    e, c = grpc_envoy(cfg)
    r = c.unary()
    assert r.code == grpc.StatusCode.UNAUTHENTICATED, r
    assert r.details == "missing_token: a bearer token is required", r
    assert r.trailing.get("www-authenticate") == 'Bearer realm="auth"', r.trailing
    r = c.unary(metadata=[("authorization", "Bearer abc.def.ghi")])
    assert r.code == grpc.StatusCode.UNAUTHENTICATED, r
    assert r.details.startswith("invalid_token"), r
    assert 'error="invalid_token"' in r.trailing.get("www-authenticate", ""), r.trailing
    weak = mint_hs(claims(scope="orders:read"))
    r = c.unary(metadata=[("authorization", f"Bearer {weak}")])
    assert r.code == grpc.StatusCode.PERMISSION_DENIED, r
    assert r.details.startswith("insufficient_scope"), r
    assert server.calls == 0
    good = mint_hs(claims())
    r = c.unary(metadata=[("authorization", f"Bearer {good}")])
    assert r.code == OK and r.body == b"hello", r
    s = c.stream_all({"n": 2}, metadata=[("authorization", f"Bearer {good}")])
    assert s.code == OK and len(s.body) == 2, s
    assert server.calls == 2


@pytest.mark.parametrize("mode", ["unavailable-trailers", "unavailable-trailers-only"])
def test_breaker_opens_on_unavailable_then_closes_through_probes(grpc_envoy, server, mode):
    e, c = grpc_envoy({"routes": [grpc_route("cb", circuit_breaker=breaker())]}, concurrency=2)
    # Answers about the call itself (NOT_FOUND) are not failures.
    server.mode = "not-found"
    for _ in range(4):
        assert c.unary().code == grpc.StatusCode.NOT_FOUND
    server.mode = mode
    for _ in range(2):
        r = c.unary()
        assert r.code == grpc.StatusCode.UNAVAILABLE and r.details.startswith("backend down"), r
    if mode == "unavailable-trailers":
        # A server-streaming call failing in its trailers, after messages.
        s = c.stream_all({"n": 2, "fail": "UNAVAILABLE"})
        assert s.code == grpc.StatusCode.UNAVAILABLE and s.body == [b"msg-0", b"msg-1"], s
    else:
        assert c.unary().code == grpc.StatusCode.UNAVAILABLE
    assert server.calls == 7
    # OPEN: refused by meshguard, the server untouched.
    r = c.unary()
    assert r.code == grpc.StatusCode.UNAVAILABLE, r
    assert r.details.startswith("circuit_open"), r
    assert 1 <= int(r.trailing["retry-after"]) <= 2, r.trailing
    assert server.calls == 7
    stats = e.stats()
    assert stats["wasmcustom.meshguard.breaker.cb.state"] == 1
    assert stats["wasmcustom.meshguard.breaker.cb.trips"] == 1
    # HALF_OPEN: two successful probes (success_threshold) close it.
    time.sleep(1.3)
    server.mode = "ok"
    for _ in range(2):
        assert c.unary().code == OK
    assert wait_until(lambda: e.stat("wasmcustom.meshguard.breaker.cb.state") == 0)
    assert e.stat("wasmcustom.meshguard.breaker.cb.probes") == 2
    for _ in range(3):
        assert c.unary().code == OK
    assert server.calls == 12
    log = e.log()
    assert "CLOSED -> OPEN" in log and "HALF_OPEN -> CLOSED" in log


def test_cancelled_streaming_calls_are_not_counted(grpc_envoy, server):
    e, c = grpc_envoy({"routes": [grpc_route(
        "cb", circuit_breaker=breaker(consecutive_failures=1, success_threshold=1))]})
    # Closed breaker, one failure trips it: cancelled calls must not.
    for _ in range(3):
        call = c.stream({"n": 50, "interval": 0.1})
        assert next(call) == b"msg-0"
        call.cancel()
    assert server.cancelled.wait(5)
    # The filter learns that the streams are gone at its next sweeps.
    time.sleep(2.5)
    assert c.unary().code == OK
    assert e.stat("wasmcustom.meshguard.breaker.cb.trips") == 0
    # A cancelled probe frees its slot without an outcome: the next call is
    # the probe that closes the breaker.
    server.mode = "unavailable-trailers-only"
    assert c.unary().code == grpc.StatusCode.UNAVAILABLE
    assert c.unary().details.startswith("circuit_open")
    time.sleep(1.3)
    server.mode = "ok"
    call = c.stream({"n": 50, "interval": 0.1})
    assert next(call) == b"msg-0"
    call.cancel()
    time.sleep(2.5)
    r = c.unary()
    assert r.code == OK, r
    assert wait_until(lambda: e.stat("wasmcustom.meshguard.breaker.cb.state") == 0)
    assert e.stat("wasmcustom.meshguard.breaker.cb.trips") == 1
    assert "HALF_OPEN -> OPEN" not in e.log()


def test_streams_are_delivered_incrementally(grpc_envoy, server):
    # Every policy with a response side on the route (breaker outcome at the
    # trailers, rate-limit headers, cache): the first message still reaches
    # the client while the server holds the stream open.
    route = grpc_route("all", circuit_breaker=breaker(),
                       rate_limit=[{"capacity": 100, "refill_interval": "1s"}],
                       cache={"default_ttl": "60s"})
    e, c = grpc_envoy({"routes": [route]})
    call = c.stream({"n": 3, "hold": True})
    assert next(call) == b"msg-0"
    server.release.set()
    assert list(call) == [b"msg-1", b"msg-2"]
    assert call.code() == OK
    assert server.held_until_release is True, "the first message arrived only after the server went on"
    # gRPC calls (POST) are never served from the cache.
    server.release.set()
    assert c.stream_all({"n": 1}).code == OK
    assert server.calls == 2


def test_cacheable_looking_http_stream_is_not_held_back(envoy, upstream):
    origin = SlowStreamingOrigin()
    try:
        e = envoy({"routes": [{"name": "events", "match": {"path_prefix": "/"},
                               "cache": {}, "circuit_breaker": {}}]},
                  upstream_port=origin.port, route_timeout="30s")
        conn = http.client.HTTPConnection("127.0.0.1", e.listen_port, timeout=20)
        conn.request("GET", "/events")
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("cache-control") == "public, max-age=60"
        seen = b""
        while b"first" not in seen:
            chunk = r.read1(65536)
            assert chunk, seen
            seen += chunk
        origin.release.set()
        seen += r.read()
        conn.close()
        assert origin.held_until_release is True, "the first event arrived only after the origin went on"
        assert seen == b"data: first\n\ndata: second\n\n"
    finally:
        origin.release.set()
        origin.stop()


def test_grpc_web_and_plain_refusals_from_http1(envoy, upstream):
    cfg = {"jwt_providers": {"main": {"issuer": "https://issuer.test", "jwks": {"inline": JWKS},
                                      "algorithms": ["HS256"]}},
           "routes": [grpc_route("auth", jwt={"providers": ["main"]})]}
    e = envoy(cfg, downstream_http2=True)
    path = f"/{SERVICE}/Unary"
    for ct in ["application/grpc-web+proto", "application/grpc-web-text", "application/grpc-web"]:
        s, h, body = h1(e, path, {"content-type": ct, "x-grpc-web": "1"})
        assert s == 200, (ct, s, h, body)
        assert h["content-type"] == ct
        assert h["grpc-status"] == "16" and h["grpc-message"] == "missing_token: a bearer token is required", h
        assert h["www-authenticate"] == 'Bearer realm="auth"'
        # The body is the same status as a gRPC-Web trailers frame.
        frame = base64.b64decode(body) if "-text" in ct else body
        block = b"grpc-status:16\r\ngrpc-message:missing_token: a bearer token is required\r\n"
        assert frame == b"\x80" + len(block).to_bytes(4, "big") + block, body
    # Plain gRPC (a client on HTTP/1.1 is not real gRPC, but the reply is):
    s, h, body = h1(e, path, {"content-type": "application/grpc+proto"})
    assert (s, h["content-type"], h["grpc-status"]) == (200, "application/grpc", "16"), h
    # A path meshguard refuses (an encoded slash) is INVALID_ARGUMENT.
    s, h, body = h1(e, f"/{SERVICE}%2FUnary", {"content-type": "application/grpc"})
    assert (s, h["grpc-status"]) == (200, "3"), (s, h)
    assert h["grpc-message"].startswith("invalid_path"), h
    # Not gRPC: the HTTP reply as before.
    s, h, body = h1(e, path, {"content-type": "application/json"}, b"{}")
    assert s == 401 and json.loads(body)["error"] == "missing_token"
    assert upstream.hits == 0


@pytest.mark.parametrize("headers,body", [
    ({"grpc-status": "banana"}, b""),
    ({"grpc-status": "99999999999999999999"}, b""),
    ({"grpc-status": ""}, b""),
    ({}, b"\x00\x00\x00\x00\x00"),  # a body, then the end: no trailers at all
], ids=["non-numeric", "huge", "empty", "missing-trailers"])
def test_broken_grpc_statuses_count_as_failures(envoy, upstream, headers, body):
    e = envoy({"routes": [grpc_route("cb", circuit_breaker=breaker())]})
    upstream.behaviour = lambda m, p, h: (200, {"content-type": "application/grpc", **headers}, body, 0)
    path = f"/{SERVICE}/Unary"
    for _ in range(3):
        s, h, _ = h1(e, path, {"content-type": "application/grpc"})
        assert s == 200 and "circuit_open" not in h.get("grpc-message", ""), h
    s, h, _ = h1(e, path, {"content-type": "application/grpc"})
    assert (s, h["grpc-status"]) == (200, "14") and h["grpc-message"].startswith("circuit_open"), h
    assert upstream.hits == 3
    assert e.stat("wasmcustom.meshguard.breaker.cb.trips") == 1
    assert "panicked" not in e.log()


@pytest.mark.parametrize("trailers,failure", [
    ([b"grpc-status: banana"], True),
    ([b"grpc-status: 4294967296"], True),
    ([b"grpc-status: 14", b"grpc-message: down"], True),
    ([b"x-other: 1"], True),  # trailers without a grpc-status
    ([b"grpc-status: 0"], False),
    ([b"grpc-status: 5"], False),  # NOT_FOUND: an answer, not a failure
], ids=["non-numeric", "huge", "unavailable", "no-status", "ok", "not-found"])
def test_grpc_status_in_trailers_decides(envoy, trailers, failure):
    origin = TrailersOrigin(trailers)
    try:
        e = envoy({"routes": [grpc_route("cb", circuit_breaker=breaker())]},
                  upstream_port=origin.port, upstream_http1_trailers=True)
        path = f"/{SERVICE}/Unary"
        for _ in range(3):
            s, h, _ = h1(e, path, {"content-type": "application/grpc"})
            assert s == 200 and "grpc-status" not in h, h  # the status is in the trailers
        s, h, _ = h1(e, path, {"content-type": "application/grpc"})
        if failure:
            assert h.get("grpc-status") == "14" and h["grpc-message"].startswith("circuit_open"), h
            assert origin.hits == 3
        else:
            assert s == 200 and "grpc-status" not in h, h
            assert origin.hits == 4
        assert e.stat("wasmcustom.meshguard.breaker.cb.trips") == (1 if failure else 0)
        assert "panicked" not in e.log()
    finally:
        origin.stop()


def test_grpc_web_outcomes_without_a_status_header_are_judged_as_http(envoy, upstream):
    # gRPC-Web carries its trailers in the body: a 200 without a grpc-status
    # header is not a broken response (and a trailers-only failure still counts).
    e = envoy({"routes": [grpc_route("cb", circuit_breaker=breaker())]})
    frame = b"\x80\x00\x00\x00\x10grpc-status:0\r\n"
    upstream.behaviour = lambda m, p, h: (200, {"content-type": "application/grpc-web+proto"}, frame, 0)
    path = f"/{SERVICE}/Unary"
    web = {"content-type": "application/grpc-web+proto"}
    for _ in range(4):
        s, h, body = h1(e, path, web)
        assert s == 200 and body == frame, (s, h, body)
    assert e.stat("wasmcustom.meshguard.breaker.cb.trips") == 0
    upstream.behaviour = lambda m, p, h: (
        200, {"content-type": "application/grpc-web+proto", "grpc-status": "14"}, b"", 0)
    for _ in range(3):
        assert h1(e, path, web)[1]["grpc-status"] == "14"
    s, h, body = h1(e, path, web)
    assert h["grpc-message"].startswith("circuit_open") and body.startswith(b"\x80"), (h, body)
    assert upstream.hits == 7
