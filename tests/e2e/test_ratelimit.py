"""Rate limiting in a real Envoy: exactness across workers, keys, headers,
shadow mode, bounded memory, metrics."""

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import http.client

import harness


def route(limits, name="api", **extra):
    r = {"name": name, "match": {"path_prefix": "/"}, "rate_limit": limits}
    r.update(extra)
    return r


def limit(capacity, name="all", refill_tokens=1, refill_interval="1h", **kw):
    d = {"name": name, "capacity": capacity, "refill_tokens": refill_tokens,
         "refill_interval": refill_interval}
    d.update(kw)
    return d


def test_exact_across_four_workers(envoy, upstream):
    """capacity 50, no refill, 200 concurrent requests on 4 workers: exactly 50 pass."""
    e = envoy({"routes": [route([limit(50)])]}, concurrency=4)
    barrier = threading.Barrier(50)

    def one(i):
        if i < 50:
            barrier.wait(timeout=30)
        return e.request(f"/x/{i}")[0]

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(one, range(200)))
    assert statuses.count(200) == 50, statuses
    assert statuses.count(429) == 150
    assert upstream.hits == 50
    stats = e.stats()
    assert stats["wasmcustom.meshguard.ratelimit.api.all.allowed"] == 50
    assert stats["wasmcustom.meshguard.ratelimit.api.all.limited"] == 150
    # The connections really were spread over several workers.
    busy = [k for k, v in stats.items()
            if ".worker_" in k and k.endswith(".downstream_cx_total") and k.startswith("listener.") and v > 0]
    assert len(busy) >= 2, busy


def test_429_has_retry_after_ietf_headers_and_json_body(envoy, upstream):
    e = envoy({"routes": [route([limit(2, refill_tokens=1, refill_interval="30s")])]})
    s, h, _ = e.request("/a")
    assert s == 200
    assert h["ratelimit-policy"] == '"all";q=2;w=60'
    assert h["ratelimit"] == '"all";r=1;t=30'
    assert e.request("/a")[0] == 200
    s, h, body = e.request("/a")
    assert s == 429
    assert 1 <= int(h["retry-after"]) <= 30
    assert h["content-type"] == "application/json"
    assert h["ratelimit"].startswith('"all";r=0;')
    doc = json.loads(body)
    assert doc["error"] == "rate_limited" and doc["route"] == "api" and doc["limit"] == "all"
    assert upstream.hits == 2


def test_legacy_and_none_header_styles(envoy, upstream):
    e = envoy({"rate_limit_headers": "legacy", "routes": [route([limit(3)])]})
    s, h, _ = e.request("/")
    assert (h["x-ratelimit-limit"], h["x-ratelimit-remaining"]) == ("3", "2")
    assert int(h["x-ratelimit-reset"]) > 0
    assert "ratelimit" not in h
    e2 = envoy({"rate_limit_headers": "none", "routes": [route([limit(1)])]})
    s, h, _ = e2.request("/")
    assert s == 200 and not any(k.startswith(("ratelimit", "x-ratelimit")) for k in h)
    s, h, _ = e2.request("/")
    assert s == 429 and "retry-after" in h


def test_upstream_rate_limit_fields_are_kept_beside_ours(envoy, upstream):
    """RateLimit and RateLimit-Policy are lists (one member per policy): ours is added after the
    upstream's; the single-valued X-RateLimit-* fields replace the upstream's."""
    upstream.behaviour = lambda m, p, h: (200, {
        "ratelimit-policy": '"origin";q=100;w=60', "ratelimit": '"origin";r=99;t=60',
        "x-ratelimit-limit": "100", "x-ratelimit-remaining": "99", "x-ratelimit-reset": "60"}, b"ok", 0)
    e = envoy({"rate_limit_headers": "both", "routes": [route([limit(2, refill_interval="30s")])]})
    s, h, _ = e.request("/a")
    assert s == 200
    assert h["ratelimit-policy"] == '"origin";q=100;w=60, "all";q=2;w=60', h
    assert h["ratelimit"] == '"origin";r=99;t=60, "all";r=1;t=30', h
    assert (h["x-ratelimit-limit"], h["x-ratelimit-remaining"]) == ("2", "1"), h
    assert 0 < int(h["x-ratelimit-reset"]) <= 30, h


def test_keys_header_query_cookie_and_missing_parts(envoy, upstream):
    cfg = {"routes": [
        route([limit(1, key=[{"header": "x-api-key"}])], name="hdr", match={"path_prefix": "/h"}),
        route([limit(1, key=[{"query": "api_key"}])], name="qry", match={"path_prefix": "/q"}),
        route([limit(1, key=[{"cookie": "sid"}])], name="ck", match={"path_prefix": "/c"}),
    ]}
    e = envoy(cfg)
    assert e.request("/h", headers={"x-api-key": "a"})[0] == 200
    assert e.request("/h", headers={"x-api-key": "b"})[0] == 200
    assert e.request("/h", headers={"x-api-key": "a"})[0] == 429
    # No header at all: one shared bucket for everyone without one.
    assert e.request("/h")[0] == 200
    assert e.request("/h")[0] == 429
    assert e.request("/q?api_key=1")[0] == 200
    assert e.request("/q?api_key=2")[0] == 200
    assert e.request("/q?x=1&api_key=1")[0] == 429
    assert e.request("/c", headers={"cookie": "sid=s1"})[0] == 200
    assert e.request("/c", headers={"cookie": "a=b; sid=s1"})[0] == 429


def test_client_ip_with_trusted_xff_hops(envoy, upstream):
    e = envoy({"client_ip": {"xff_trusted_hops": 1},
               "routes": [route([limit(1, key=["client_ip"])])]})
    assert e.request("/", headers={"x-forwarded-for": "203.0.113.1"})[0] == 200
    assert e.request("/", headers={"x-forwarded-for": "203.0.113.2"})[0] == 200
    assert e.request("/", headers={"x-forwarded-for": "198.51.100.9, 203.0.113.1"})[0] == 429


def test_cost_multiple_limits_and_unmatched_routes(envoy, upstream):
    cfg = {"routes": [
        {"name": "api", "match": {"path_prefix": "/api/"},
         "rate_limit": [limit(10, name="big", cost=4), limit(2, name="small")]},
    ]}
    e = envoy(cfg)
    assert e.request("/api/1")[0] == 200  # big 6, small 1
    assert e.request("/api/2")[0] == 200  # big 2, small 0
    s, h, body = e.request("/api/3")
    assert s == 429 and json.loads(body)["limit"] == "big"
    # Unmatched path: untouched, no headers.
    for _ in range(5):
        s, h, _ = e.request("/other")
        assert s == 200 and "ratelimit" not in h
    assert upstream.hits == 7


def test_refusal_by_a_later_limit_refunds_earlier_ones(envoy, upstream):
    cfg = {"routes": [route([limit(5, name="outer"), limit(1, name="inner", key=[{"header": "x-u"}])])]}
    e = envoy(cfg)
    assert e.request("/", headers={"x-u": "a"})[0] == 200
    for _ in range(4):
        assert e.request("/", headers={"x-u": "a"})[0] == 429
    # outer lost only one token: 4 more distinct users pass.
    for u in "bcde":
        assert e.request("/", headers={"x-u": u})[0] == 200
    assert e.request("/", headers={"x-u": "f"})[0] == 429


def test_shadow_mode_never_refuses_but_counts(envoy, upstream):
    e = envoy({"routes": [route([limit(2, name="trial", shadow=True)])]})
    statuses = [e.request("/")[0] for _ in range(5)]
    assert statuses == [200] * 5
    assert upstream.hits == 5
    assert e.stat("wasmcustom.meshguard.ratelimit.api.trial.shadow_limited") == 3
    assert "shadow rate limit api/trial would have refused" in e.log()


def test_refill_admits_again_after_interval(envoy, upstream):
    import time
    e = envoy({"routes": [route([limit(1, refill_tokens=1, refill_interval="2s")])]})
    assert e.request("/")[0] == 200
    assert e.request("/")[0] == 429
    time.sleep(2.1)
    assert e.request("/")[0] == 200


def test_prometheus_names(envoy, upstream):
    e = envoy({"routes": [route([limit(1)])]})
    e.request("/")
    e.request("/")
    time.sleep(harness.METRICS_SETTLE_S)
    prom = e.admin("/stats/prometheus")
    assert "meshguard_ratelimit_api_all_allowed" in prom
    line = [l for l in prom.splitlines() if l.startswith("meshguard_ratelimit_api_all_limited")]
    assert line and line[0].endswith(" 1"), line


def _flood(e, n, threads=8):
    """n requests with distinct random API keys over keep-alive connections."""
    per = n // threads
    statuses = []

    def worker(_):
        conn = http.client.HTTPConnection("127.0.0.1", e.listen_port, timeout=10)
        ok = 0
        for _ in range(per):
            conn.request("GET", "/", headers={"x-api-key": uuid.uuid4().hex})
            r = conn.getresponse()
            r.read()
            ok += r.status == 200
        conn.close()
        return ok

    with ThreadPoolExecutor(max_workers=threads) as pool:
        statuses = list(pool.map(worker, range(threads)))
    return sum(statuses)


def test_flood_of_distinct_keys_keeps_memory_bounded(envoy, upstream):
    """100k-style key flood: buckets are reused beyond max_rate_limit_keys, and
    Envoy's heap stops growing once the slot table is full."""
    e = envoy({"max_rate_limit_keys": 500,
               "routes": [route([limit(5, key=[{"header": "x-api-key"}])])]}, concurrency=2)
    n = 12000
    assert _flood(e, n) == n  # every fresh key has a full bucket
    after_first = e.allocated_bytes()
    assert _flood(e, n) == n
    assert _flood(e, n) == n
    after_third = e.allocated_bytes()
    evictions = e.stat("wasmcustom.meshguard.ratelimit.evictions")
    assert evictions >= 3 * n - 500, evictions
    # 24k more distinct keys in an unbounded store would cost several MB
    # (key + value + map node per key); the slot table costs nothing more.
    growth = after_third - after_first
    assert growth < 1_000_000, f"heap grew by {growth} bytes"
