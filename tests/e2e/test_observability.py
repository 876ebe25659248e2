"""Decisions visible to the mesh, in a real Envoy: the filter state line
`wasm.meshguard` read by an access log (route, decision, reason for a 200,
a 401, a 429, a 503 and a cache hit), verified claims read by Envoy's RBAC
filter placed after meshguard, `Proxy-Status` on every reply meshguard
generates, and the request's trace id on the calls meshguard makes (RLS,
JWKS), checked at the receiving servers. The access-log format is the one
shipped in examples/observability/."""

import json
import os
import re
import threading
import time
from concurrent import futures

import grpc
import pytest

import harness
from jwt_support import ALGS, JWKS, JwksServer, claims, mint_hs, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples", "observability")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def access_log_format():
    with open(os.path.join(EXAMPLES, "access-log-format.txt")) as f:
        return f.read().strip("\n") + "\n"


def access_log(path):
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": {"text_format_source": {"inline_string": access_log_format()}},
        },
    }


def with_access_log(doc, path):
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"] = [access_log(path)]
    return doc


def provider():
    return {"issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ALGS,
            "jwks": {"inline": JWKS}}


def config(**observability):
    c = {
        "jwt_providers": {"main": provider()},
        "observability": {"filter_state": True, "claims": ["role", "roles", "scope", "org"],
                          **observability},
        "routes": [
            {"name": "api", "match": {"path_prefix": "/api/"}, "jwt": {"providers": ["main"]},
             "rate_limit": [{"name": "per-user", "key": [{"claim": "sub"}], "capacity": 2,
                             "refill_tokens": 1, "refill_interval": "1h"}]},
            {"name": "admin", "match": {"path_prefix": "/admin/"}, "jwt": {"providers": ["main"]}},
            {"name": "catalog", "match": {"path_prefix": "/catalog/"},
             "cache": {"default_ttl": "60s"}},
            {"name": "flaky", "match": {"path_prefix": "/flaky/"},
             "circuit_breaker": {"consecutive_failures": 2, "open_duration": "30s"}},
        ],
    }
    return c


# RBAC after meshguard: /admin/ only for a verified `role` claim "admin";
# everything else allowed.
RBAC = {
    "name": "envoy.filters.http.rbac",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {
            "action": "ALLOW",
            "policies": {
                "admins": {
                    "permissions": [{"url_path": {"path": {"prefix": "/admin/"}}}],
                    "principals": [{"filter_state": {
                        "key": "wasm.meshguard.claim.role",
                        "string_match": {"exact": "admin"}}}],
                },
                "rest": {
                    "permissions": [{"not_rule": {"url_path": {"path": {"prefix": "/admin/"}}}}],
                    "principals": [{"any": True}],
                },
            },
        },
    },
}


def start(tmp_path, upstream, cfg, filters_after=(), extra_clusters=(), concurrency=2):
    log_path = str(tmp_path / f"access-{harness.free_port()}.log")
    e = harness.EnvoyProcess(
        tmp_path,
        lambda listen, admin: with_access_log(
            harness.bootstrap(cfg, upstream.port, listen, admin, filters_after=filters_after,
                              extra_clusters=extra_clusters), log_path),
        concurrency=concurrency, extra_args=["--file-flush-interval-msec", "100"])
    e.access_log_path = log_path
    e.start()
    return e


def log_lines(e, n, timeout=15):
    """The access log's lines once it has at least `n` (Envoy writes the
    file on a timer, every 10 s by default: `--file-flush-interval-msec`)."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        if os.path.exists(e.access_log_path):
            with open(e.access_log_path) as f:
                lines = [l for l in f.read().splitlines() if l]
            if len(lines) >= n:
                return lines
        time.sleep(0.1)
    raise AssertionError(f"{len(lines)} access log lines, wanted {n}: {lines}")


def fields(line):
    """The `meshguard="..."` part of a line as a dict."""
    m = re.search(r'meshguard="([^"]*)"', line)
    assert m, line
    return dict(kv.split("=", 1) for kv in m.group(1).split())


def bearer(tok):
    return {"authorization": f"Bearer {tok}"}


@pytest.fixture
def envoys():
    started = []
    yield started
    for e in started:
        e.stop()


def test_access_log_shows_route_decision_and_reason(tmp_path, upstream, envoys):
    upstream.behaviour = lambda m, path, h: (
        (500, {}, b"boom", 0) if path.startswith("/flaky/")
        else (200, {"content-type": "text/plain", "cache-control": "max-age=60"}, b"ok", 0))
    e = start(tmp_path, upstream, config())
    envoys.append(e)
    tok = mint_hs(claims(sub="alice"))
    sent = []

    def req(path, headers=None):
        r = e.request(path, headers={"x-request-id": f"obs-{len(sent)}", **(headers or {})})
        sent.append((path, r))
        return r

    assert req("/api/a", bearer(tok))[0] == 200
    assert req("/api/b")[0] == 401
    assert req("/api/c", bearer(tok))[0] == 200
    status, hdrs, _ = req("/api/d", bearer(tok))
    assert status == 429
    assert req("/catalog/x")[0] == 200
    status, hdrs, _ = req("/catalog/x")
    assert status == 200 and "hit" in hdrs["cache-status"]
    assert req("/flaky/1")[0] == 500
    assert req("/flaky/2")[0] == 500
    status, hdrs, _ = req("/flaky/3")
    assert status == 503 and hdrs["retry-after"]

    lines = log_lines(e, len(sent))
    by_id = {re.search(r"id=(obs-\d+)", l).group(1): l for l in lines if "id=obs-" in l}
    got = [fields(by_id[f"obs-{i}"]) for i in range(len(sent))]
    for g in got:
        print(g)
    ok, missing, ok2, limited, miss, hit, fail1, fail2, opened = got
    assert ok["route"] == "api" and ok["decision"] == "allowed" and ok["reason"] == "-"
    assert ok["provider"] == "main" and ok["sub"] == "alice"
    assert ok["limit"] == "per-user" and ok["remaining"] == "1"
    assert ok2["remaining"] == "0"
    assert missing["route"] == "api" and missing["decision"] == "denied"
    assert missing["policy"] == "jwt" and missing["reason"] == "missing_token"
    assert limited["decision"] == "limited" and limited["policy"] == "ratelimit"
    assert limited["reason"] == "rate_limited" and limited["detail"] == "per-user"
    assert miss["route"] == "catalog" and miss["decision"] == "allowed"
    assert miss["cache"].startswith("fwd=uri-miss;") and miss["cache"].endswith(";stored")
    assert hit["decision"] == "cached" and hit["policy"] == "cache" and hit["reason"] == "hit"
    assert fail1["breaker"] == "closed" and fail1["decision"] == "allowed"
    assert opened["route"] == "flaky" and opened["decision"] == "unavailable"
    assert opened["policy"] == "breaker" and opened["reason"] == "circuit_open"
    assert opened["breaker"] == "open"
    # The status Envoy logged is the one the client got.
    for (path, r), g in zip(sent, got):
        line = by_id[f"obs-{sent.index((path, r))}"]
        assert line.startswith(f"{r[0]} "), line


def test_proxy_status_on_every_reply_meshguard_generates(tmp_path, upstream, envoys):
    upstream.behaviour = lambda m, path, h: (
        (500, {}, b"boom", 0) if path.startswith("/flaky/")
        else (200, {"content-type": "text/plain", "cache-control": "max-age=60"}, b"ok", 0))
    e = start(tmp_path, upstream, config())
    envoys.append(e)
    tok = mint_hs(claims(sub="bob"))
    s, h, _ = e.request("/api/x")
    assert s == 401
    assert h["proxy-status"] == 'meshguard; error=http_request_denied; details="jwt missing_token a bearer token is required"'
    s, h, _ = e.request("/api/x", headers=bearer("not.a.token"))
    assert s == 401 and h["proxy-status"].startswith("meshguard; error=http_request_denied; details=\"jwt invalid_token")
    for _ in range(2):
        s, h, _ = e.request("/api/x", headers=bearer(tok))
        assert s == 200 and "proxy-status" not in h  # the upstream's answer: not ours
    s, h, _ = e.request("/api/x", headers=bearer(tok))
    assert s == 429
    assert h["proxy-status"] == 'meshguard; error=http_request_denied; details="ratelimit rate_limited per-user"'
    e.request("/catalog/y")
    s, h, _ = e.request("/catalog/y")
    assert s == 200 and h["proxy-status"] == 'meshguard; details="cache hit"'
    e.request("/flaky/1")
    e.request("/flaky/2")
    s, h, _ = e.request("/flaky/3")
    assert s == 503
    assert h["proxy-status"] == 'meshguard; error=destination_unavailable; details="breaker circuit_open"'
    s, h, _ = e.request("/api/%2Fx")
    assert s == 400
    assert h["proxy-status"] == 'meshguard; error=http_request_error; details="path invalid_path"'


def test_proxy_status_off(tmp_path, upstream, envoys):
    e = start(tmp_path, upstream, config(proxy_status=False))
    envoys.append(e)
    s, h, _ = e.request("/api/x")
    assert s == 401 and "proxy-status" not in h


def test_rbac_after_meshguard_matches_a_verified_claim(tmp_path, upstream, envoys):
    e = start(tmp_path, upstream, config(), filters_after=[RBAC])
    envoys.append(e)
    admin = mint_hs(claims(sub="root", role="admin"))
    dev = mint_hs(claims(sub="dev", role="dev"))
    s, _, _ = e.request("/admin/panel", headers=bearer(admin))
    assert s == 200
    s, _, body = e.request("/admin/panel", headers=bearer(dev))
    assert s == 403 and b"RBAC" in body
    # A client cannot bring its own claim: no token, no claim (meshguard 401s
    # first), and a forged token never reaches RBAC.
    s, _, _ = e.request("/admin/panel", headers={"x-role": "admin"})
    assert s == 401
    # Other routes are untouched by the policy.
    s, _, _ = e.request("/catalog/z")
    assert s == 200
    assert [p for _, p, _ in upstream.requests] == ["/admin/panel", "/catalog/z"]
    assert e.stat("http.ingress.rbac.denied") == 1


def test_claims_exported_faithfully(tmp_path, upstream, envoys):
    """Arrays and objects as JSON, `scope` as a list, strings as text."""
    e = harness.EnvoyProcess(
        tmp_path,
        lambda listen, admin: with_access_log(
            harness.bootstrap(config(), upstream.port, listen, admin), str(tmp_path / "c.log")),
        concurrency=1, extra_args=["--file-flush-interval-msec", "100"])
    fmt = ("id=%REQ(X-REQUEST-ID)% role=%FILTER_STATE(wasm.meshguard.claim.role:PLAIN)% "
           "roles=%FILTER_STATE(wasm.meshguard.claim.roles:PLAIN)% "
           "scope=%FILTER_STATE(wasm.meshguard.claim.scope:PLAIN)% "
           "org=%FILTER_STATE(wasm.meshguard.claim.org:PLAIN)%\n")
    hcm = e.doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"][0]["typed_config"]["log_format"]["text_format_source"]["inline_string"] = fmt
    e.access_log_path = str(tmp_path / "c.log")
    e.start()
    envoys.append(e)
    tok = mint_hs(claims(sub="carol", role="admin", roles=["admin", "dev"],
                         scope="orders:read orders:write", org={"id": "acme", "tier": 2}))
    assert e.request("/admin/x", headers={**bearer(tok), "x-request-id": "c1"})[0] == 200
    line = log_lines(e, 1)[0]
    assert 'role=admin ' in line, line
    assert 'roles=["admin","dev"] ' in line, line
    assert 'scope=["orders:read","orders:write"] ' in line, line
    assert json.loads(line.split("org=", 1)[1]) == {"id": "acme", "tier": 2}, line


def test_filter_state_off_publishes_nothing(tmp_path, upstream, envoys):
    e = start(tmp_path, upstream, config(filter_state=False, claims=[]))
    envoys.append(e)
    assert e.request("/api/x", headers={"x-request-id": "off-1"})[0] == 401
    line = log_lines(e, 1)[0]
    assert 'meshguard="-"' in line, line


# ------------------------------------------------------------------ tracing

class FakeRls:
    """A rate limit service on 127.0.0.1 (grpcio, generic handler): answers
    OK to every call and keeps each call's invocation metadata."""

    def __init__(self):
        self.metadata = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        outer = self

        def should_rate_limit(request, context):
            with outer.lock:
                outer.metadata.append(dict(context.invocation_metadata()))
            return b"\x08\x01"  # RateLimitResponse{overall_code: OK}

        handler = grpc.method_handlers_generic_handler(
            "envoy.service.ratelimit.v3.RateLimitService",
            {"ShouldRateLimit": grpc.unary_unary_rpc_method_handler(
                should_rate_limit, request_deserializer=None, response_serializer=None)})
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self):
        self.server.stop(0)


def test_rls_call_carries_the_request_trace(tmp_path, upstream, envoys):
    rls = FakeRls()
    try:
        cfg = {"rate_limit_service": {"cluster": "ratelimit", "domain": "meshguard",
                                      "timeout": "2s", "failure_mode": "deny"},
               "routes": [{"name": "g", "match": {"path_prefix": "/g/"},
                           "rate_limit": [{"name": "all", "scope": "global"}]}]}
        e = start(tmp_path, upstream, cfg,
                  extra_clusters=[harness.static_cluster("ratelimit", rls.port, http2=True)])
        envoys.append(e)
        s, _, body = e.request("/g/1", headers={"traceparent": TRACEPARENT,
                                               "x-b3-traceid": TRACE_ID, "x-request-id": "t-1"})
        assert s == 200, body
        assert len(rls.metadata) == 1
        md = rls.metadata[0]
        assert md.get("traceparent") == TRACEPARENT, md
        assert md.get("x-b3-traceid") == TRACE_ID and md.get("x-request-id") == "t-1", md
        # A request without trace headers: none invented.
        assert e.request("/g/2")[0] == 200
        assert "traceparent" not in rls.metadata[1]
    finally:
        rls.stop()


def test_jwks_fetch_carries_the_waiting_request_trace(tmp_path, upstream, envoys):
    # The startup fetch answers late and fails; the request that meanwhile
    # waits for keys gets the next fetch, and that fetch carries its trace.
    idp = JwksServer(JWKS, fail_first=1, delay=2.0, delay_count=1)
    try:
        p = {"issuer": "https://issuer.test", "audiences": ["api"],
             "jwks": {"remote": {"cluster": "idp", "path": "/jwks.json"}}}
        cfg = {"jwt_providers": {"idp": p},
               "routes": [{"name": "api", "match": {"path_prefix": "/"},
                           "jwt": {"providers": ["idp"]}}]}
        e = start(tmp_path, upstream, cfg, concurrency=1,
                  extra_clusters=[harness.static_cluster("idp", idp.port)])
        envoys.append(e)
        from jwt_support import TOKENS
        s, _, body = e.request("/x", headers={**bearer(TOKENS["valid_ES256"]),
                                              "traceparent": TRACEPARENT}, timeout=15)
        assert s == 200, body
        assert idp.count >= 2
        traced = [h for _, _, h in idp.fetches if h.get("traceparent") == TRACEPARENT]
        assert traced, [h for _, _, h in idp.fetches]
    finally:
        idp.stop()


# ------------------------------------------------- dashboard and alert rules

def queried_metrics():
    """Every metric selector the Grafana dashboard and the alert rules
    query: (where, kind, text), kind "regex" for `{__name__=~"..."}`,
    "name" for a bare metric name."""
    import yaml
    exprs = []
    with open(os.path.join(EXAMPLES, "grafana-dashboard.json")) as f:
        dash = json.load(f)
    for p in dash["panels"]:
        for t in p["targets"]:
            exprs.append((f"dashboard panel {p['title']!r}", t["expr"]))
    with open(os.path.join(EXAMPLES, "prometheus-alerts.yaml")) as f:
        rules = yaml.safe_load(f)
    for g in rules["groups"]:
        for r in g["rules"]:
            exprs.append((f"alert {r['alert']}", r["expr"]))
    out = []
    for where, e in exprs:
        regexes = re.findall(r'__name__=~"([^"]+)"', e)
        out += [(where, "regex", rx) for rx in regexes]
        bare = re.sub(r'\{[^}]*\}', "", e)
        out += [(where, "name", n) for n in re.findall(r"\bmeshguard_[a-z0-9_]+\b", bare)]
        assert regexes or re.search(r"\bmeshguard_", bare), (where, e)
    return out


def test_every_metric_the_dashboard_and_alerts_query_exists(tmp_path, upstream, envoys):
    upstream.behaviour = lambda m, path, h: (
        (500, {}, b"boom", 0) if path.startswith("/flaky/")
        else (200, {"content-type": "text/plain", "cache-control": "max-age=60"}, b"ok", 0))
    rls = FakeRls()
    idp = JwksServer(JWKS)
    try:
        cfg = config()
        cfg["jwt_providers"]["remote"] = {
            "issuer": "https://issuer.test", "audiences": ["api"],
            "jwks": {"remote": {"cluster": "idp", "path": "/jwks.json"}}}
        cfg["rate_limit_service"] = {"cluster": "ratelimit", "timeout": "2s"}
        cfg["routes"].append({"name": "global", "match": {"path_prefix": "/g/"},
                              "jwt": {"providers": ["remote"]},
                              "rate_limit": [{"name": "all", "scope": "global"}]})
        e = start(tmp_path, upstream, cfg, extra_clusters=[
            harness.static_cluster("ratelimit", rls.port, http2=True),
            harness.static_cluster("idp", idp.port)])
        envoys.append(e)
        tok = mint_hs(claims(sub="dash"))
        from jwt_support import TOKENS
        for path, h in [("/api/1", bearer(tok)), ("/api/2", {}), ("/catalog/a", {}),
                        ("/catalog/a", {}), ("/flaky/1", {}), ("/api/%2F", {}),
                        ("/g/1", bearer(TOKENS["valid_ES256"]))]:
            e.request(path, headers=h)
        wait_until(lambda: idp.count >= 1, 5)
        text = e.admin("/stats/prometheus")
        text = text.decode() if isinstance(text, bytes) else text
        names = set(re.findall(r"^(meshguard_[a-z0-9_]+)[{ ]", text, re.M))
        assert "meshguard_ratelimit_api_per_user_allowed" in names, sorted(names)
        selectors = queried_metrics()
        assert len(selectors) >= 15
        missing = []
        for where, kind, s in selectors:
            if kind == "name":
                ok = s in names
            else:
                ok = any(re.fullmatch(s, n) for n in names)
            if not ok:
                missing.append((where, s))
        assert not missing, (missing, sorted(names))
    finally:
        rls.stop()
        idp.stop()
