"""Global rate limits ("scope": "global") in real Envoys, counted by a real
rate limit service: an Envoy RLS gRPC server built on Kuadrant's limitador
crate with its Redis storage, against a local redis-server (tests/rls-server,
tests/e2e/rls.py). Two Envoy processes stand for two replicas."""

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import yaml

import harness
import rls


def service(mode="allow", timeout="500ms", domain="meshguard"):
    return {"cluster": "ratelimit", "domain": domain, "timeout": timeout, "failure_mode": mode}


def cfg(limits, mode="allow", timeout="500ms", headers="both"):
    return {
        "rate_limit_service": service(mode, timeout),
        "rate_limit_headers": headers,
        "routes": [{"name": "g", "match": {"path_prefix": "/g/"}, "rate_limit": limits}],
    }


def fire(envoys, n, headers=None, path="/g/x"):
    """n concurrent requests spread over the Envoys: sorted statuses."""
    def one(i):
        return envoys[i % len(envoys)].request(path, headers=headers)

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, range(n)))


def stat(e, name):
    return e.stat(f"wasmcustom.meshguard.{name}")


# ------------------------------------------------------------ exact across replicas

def test_two_replicas_together_admit_exactly_n(envoy, upstream, rls_server):
    n = 12
    svc_a = rls_server([rls.limit("per-user", n, var="header.x-user")])
    svc_b = rls_server([rls.limit("per-user", n, var="header.x-user")])  # same Redis
    config = cfg([{"name": "per-user", "scope": "global", "key": [{"header": "x-user"}]}])
    a = envoy(config, concurrency=2, extra_clusters=rls.cluster(svc_a))
    b = envoy(config, concurrency=2, extra_clusters=rls.cluster(svc_b))

    res = fire([a, b], 40, headers={"x-user": "alice"})
    statuses = [s for s, _, _ in res]
    assert statuses.count(200) == n, statuses
    assert statuses.count(429) == 40 - n, statuses
    assert upstream.hits == n
    # Each replica admitted part of the N (the service counted for both).
    assert stat(a, "ratelimit.g.per-user.allowed") + stat(b, "ratelimit.g.per-user.allowed") == n
    assert stat(a, "rls.g.ok") + stat(b, "rls.g.ok") == n
    assert stat(a, "rls.g.over_limit") + stat(b, "rls.g.over_limit") == 40 - n

    # A 429 looks like a local one, with the service's numbers.
    s, h, body = next(r for r in res if r[0] == 429)
    assert 1 <= int(h["retry-after"]) <= 60, h
    assert h["ratelimit-policy"] == f'"per-user";q={n};w=60', h
    assert h["ratelimit"].startswith('"per-user";r=0;t='), h
    assert (h["x-ratelimit-limit"], h["x-ratelimit-remaining"]) == (str(n), "0")
    doc = json.loads(body)
    assert doc["error"] == "rate_limited" and doc["limit"] == "per-user" and doc["route"] == "g"
    # Admitted responses carry the remaining count the service reported.
    remaining = sorted(int(h["x-ratelimit-remaining"]) for s, h, _ in res if s == 200)
    assert remaining == list(range(n)), remaining

    # Another key has its own count, on either replica.
    assert a.request("/g/x", headers={"x-user": "bob"})[0] == 200
    assert b.request("/g/x", headers={"x-user": "bob"})[0] == 200


def test_cost_is_the_hits_addend(envoy, upstream, rls_server):
    svc = rls_server([rls.limit("heavy", 10)])
    e = envoy(cfg([{"name": "heavy", "scope": "global", "cost": 4}]),
              extra_clusters=rls.cluster(svc))
    assert [e.request("/g/x")[0] for _ in range(3)] == [200, 200, 429]


# ------------------------------------------------------------ local and global

def test_local_limits_run_first_and_shed_load_before_the_service(envoy, upstream, rls_server):
    svc = rls_server([rls.limit("quota", 100)])
    e = envoy(cfg([
        {"name": "burst", "capacity": 3, "refill_tokens": 1, "refill_interval": "1h"},
        {"name": "quota", "scope": "global"},
    ]), extra_clusters=rls.cluster(svc))
    statuses = [e.request("/g/x")[0] for _ in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]
    # Locally refused requests never cost a call to the service.
    assert stat(e, "rls.g.ok") == 3
    assert stat(e, "ratelimit.g.burst.limited") == 3
    s, h, b = e.request("/g/x")
    assert json.loads(b)["limit"] == "burst"


def test_global_refusal_gives_local_tokens_back(envoy, upstream, rls_server):
    svc = rls_server([rls.limit("quota", 2, var="header.x-user")])
    e = envoy(cfg([
        {"name": "burst", "capacity": 3, "refill_tokens": 1, "refill_interval": "1h"},
        {"name": "quota", "scope": "global", "key": [{"header": "x-user"}]},
    ]), extra_clusters=rls.cluster(svc))

    def who(user):
        s, _, b = e.request("/g/x", headers={"x-user": user})
        return s, json.loads(b)["limit"] if s == 429 else None

    # alice: two admitted, then refused by the service; the local tokens of
    # the refused requests come back...
    assert [who("alice") for _ in range(4)] == [
        (200, None), (200, None), (429, "quota"), (429, "quota")]
    # ...so one local token is left for bob (without refunds there would be none).
    assert who("bob") == (200, None)
    assert who("bob") == (429, "burst")


def test_shadow_global_limit_never_refuses(envoy, upstream, rls_server):
    svc = rls_server([rls.limit("trial", 2)])
    e = envoy(cfg([{"name": "trial", "scope": "global", "shadow": True}]),
              extra_clusters=rls.cluster(svc))
    assert [e.request("/g/x")[0] for _ in range(5)] == [200] * 5
    assert stat(e, "ratelimit.g.trial.shadow_limited") == 3
    assert "ratelimit" not in e.request("/g/x")[1]


# ------------------------------------------------------------ failures

def test_redis_stopped_follows_failure_mode(envoy, upstream, rls_server, redis):
    svc = rls_server([rls.limit("quota", 1000)])
    limits = [{"name": "quota", "scope": "global"}]
    allow = envoy(cfg(limits, mode="allow"), extra_clusters=rls.cluster(svc))
    deny = envoy(cfg(limits, mode="deny"), extra_clusters=rls.cluster(svc))
    assert allow.request("/g/x")[0] == 200 and deny.request("/g/x")[0] == 200

    redis.stop()
    s, h, b = allow.request("/g/x")
    assert s == 200, (s, b)
    s, h, b = deny.request("/g/x")
    assert s == 503 and h["retry-after"] == "1", (s, h, b)
    assert json.loads(b) == {"error": "rate_limit_unavailable", "route": "g", "retry_after": 1}
    assert stat(allow, "rls.g.error") == 1 and stat(allow, "rls.g.failure_mode_allowed") == 1
    assert stat(deny, "rls.g.error") == 1 and stat(deny, "rls.g.failure_mode_denied") == 1
    assert stat(allow, "ratelimit.g.quota.errors") == 1
    assert re.search(r"rate limit service call to cluster ratelimit failed after \d+ ms with gRPC status 14", allow.log())

    redis.start()
    assert harness_wait(lambda: deny.request("/g/x")[0] == 200), deny.log()[-3000:]


def harness_wait(cond, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.2)
    return False


def test_slow_service_hits_the_deadline(envoy, upstream, rls_server):
    svc = rls_server([rls.limit("quota", 1000)], delay_ms=3000)
    allow = envoy(cfg([{"name": "quota", "scope": "global"}], mode="allow", timeout="200ms"),
                  extra_clusters=rls.cluster(svc))
    deny = envoy(cfg([{"name": "quota", "scope": "global"}], mode="deny", timeout="200ms"),
                 extra_clusters=rls.cluster(svc))
    t0 = time.time()
    assert allow.request("/g/x")[0] == 200
    assert deny.request("/g/x")[0] == 503
    # Answered by the deadline, not by the service (which takes 3 s each).
    assert time.time() - t0 < 2.5
    assert stat(allow, "rls.g.timeout") == 1 and stat(deny, "rls.g.timeout") == 1
    assert stat(allow, "rls.g.error") == 0


def test_no_healthy_host_never_hangs(envoy, upstream):
    dead = harness.free_port()  # nothing listens there
    e = envoy(cfg([{"name": "quota", "scope": "global"}], mode="deny", timeout="5s"),
              extra_clusters=rls.cluster(dead))
    t0 = time.time()
    s, h, b = e.request("/g/x")
    assert s == 503 and json.loads(b)["error"] == "rate_limit_unavailable"
    assert time.time() - t0 < 4, "answered long before the 5 s timeout"
    assert stat(e, "rls.g.error") == 1


def test_unknown_cluster_applies_failure_mode(envoy, upstream):
    config = cfg([{"name": "quota", "scope": "global"}], mode="allow")
    config["rate_limit_service"]["cluster"] = "no-such-cluster"
    e = envoy(config)
    assert [e.request("/g/x")[0] for _ in range(8)] == [200] * 8
    assert stat(e, "rls.g.error") == 8 and stat(e, "rls.g.failure_mode_allowed") == 8
    # Warnings are rate-limited (one per second and worker), not one per request.
    assert 1 <= e.log().count("could not be sent") < 8


def test_many_concurrent_requests_all_get_an_answer(envoy, upstream, rls_server):
    """Requests paused for the service are always resumed, even when they
    pile up on both workers."""
    svc = rls_server([rls.limit("quota", 150)], delay_ms=20)
    e = envoy(cfg([{"name": "quota", "scope": "global"}]), concurrency=2,
              extra_clusters=rls.cluster(svc))
    res = fire([e], 200)
    statuses = [s for s, _, _ in res]
    assert statuses.count(200) == 150 and statuses.count(429) == 50, statuses


# ------------------------------------------------------------ the documented example

def test_documented_limitador_limits_match_meshguard_descriptors(envoy, upstream, rls_server):
    """envoy/rls/limitador-limits.yaml (the Limitador example of docs/configuration.md) counts
    what examples/global-ratelimit.json sends."""
    with open(os.path.join(harness.ROOT, "envoy/rls/limitador-limits.yaml")) as f:
        limits = yaml.safe_load(f)
    with open(os.path.join(harness.ROOT, "examples/global-ratelimit.json")) as f:
        config = json.load(f)
    config["rate_limit_service"]["timeout"] = "500ms"
    svc = rls_server(limits)
    e = envoy(config, extra_clusters=rls.cluster(svc))
    s, h, _ = e.request("/api/x", headers={"x-api-key": "k1"})
    assert s == 200, h
    # The service matched the per-key limit (it reports its size)...
    assert h["ratelimit-policy"] == '"instance-burst";q=200;w=1, "per-key";q=1000;w=60', h
    # ...and answers every request (the shadow per-ip limit is counted too).
    assert e.request("/api/x", headers={"x-api-key": "k1"})[0] == 200
    assert stat(e, "rls.public-api.ok") == 2
    assert stat(e, "ratelimit.public-api.per-ip.allowed") == 2


# ------------------------------------------------------------ resumed requests

def test_requests_resumed_after_waiting_for_jwks_still_ask_the_service(envoy, upstream, rls_server):
    """Requests parked until the remote JWKS arrives are resumed by the
    worker's timer, which then sends their rate limit call: the answer comes
    back to the root context and must still reach each stream."""
    from jwt_support import JWKS, TOKENS, JwksServer

    idp = JwksServer(JWKS, delay=1.0, delay_count=1)
    try:
        svc = rls_server([rls.limit("per-user", 3, var="claim.sub")])
        config = cfg([{"name": "per-user", "scope": "global", "key": [{"claim": "sub"}]}])
        config["jwt_providers"] = {"idp": {
            "issuer": "https://issuer.test", "audiences": ["api"],
            "jwks": {"remote": {"cluster": "idp", "path": "/jwks.json"}}}}
        config["routes"][0]["jwt"] = {"providers": ["idp"]}
        e = envoy(config, extra_clusters=rls.cluster(svc) + [harness.static_cluster("idp", idp.port)])
        auth = {"authorization": "Bearer " + TOKENS["valid_ES256"]}
        res = fire([e], 5, headers=auth)
        statuses = sorted(s for s, _, _ in res)
        assert statuses == [200, 200, 200, 429, 429], [(s, b) for s, _, b in res]
        assert stat(e, "jwt.g.keys_pending") >= 1, "the requests did wait for the keys"
        assert stat(e, "rls.g.ok") + stat(e, "rls.g.over_limit") == 5
        assert "claim.sub=user-1" in svc.log(), svc.log()[-2000:]
    finally:
        idp.stop()


def test_clients_leaving_during_the_call_leave_nothing_behind(envoy, upstream, rls_server):
    """A client that disconnects while its request waits for the service:
    the answer arrives for a stream that is gone and is dropped; the
    worker keeps serving."""
    import socket

    svc = rls_server([rls.limit("quota", 1000)], delay_ms=400)
    e = envoy(cfg([{"name": "quota", "scope": "global"}], timeout="2s"),
              extra_clusters=rls.cluster(svc))
    for _ in range(6):
        with socket.create_connection(("127.0.0.1", e.listen_port)) as c:
            c.sendall(b"GET /g/x HTTP/1.1\r\nhost: t\r\n\r\n")
            time.sleep(0.05)
    time.sleep(0.6)  # the six answers arrive after their clients left
    assert e.request("/g/x")[0] == 200
    assert upstream.hits == 1, "the abandoned requests never went upstream"
    assert stat(e, "rls.g.ok") == 1
    assert "panicked" not in e.log() and "Function: proxy_on" not in e.log()
