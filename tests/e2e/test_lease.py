"""Leased global limits ("lease": N on a "scope": "global" limit) in real
Envoys against the test rate limit service (limitador on Redis,
tests/e2e/rls.py): two Envoy processes, each spending batches of hits it
obtained from the service (docs/configuration.md, "Leased global limits")."""

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness
import rls


def cfg(limits, mode="allow", timeout="500ms"):
    return {
        "rate_limit_service": {"cluster": "ratelimit", "domain": "meshguard",
                               "timeout": timeout, "failure_mode": mode},
        "rate_limit_headers": "both",
        "routes": [{"name": "g", "match": {"path_prefix": "/g/"}, "rate_limit": limits}],
    }


def fire(envoys, n, headers=None, workers=8):
    """n concurrent requests spread over the Envoys: their statuses."""
    def one(i):
        return envoys[i % len(envoys)].request("/g/x", headers=headers)[0]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(n)))


def stat(e, name):
    return e.stat(f"wasmcustom.meshguard.{name}")


def rls_calls(e):
    """gRPC calls this Envoy sent to the service (its cluster's requests)."""
    return e.stat("cluster.ratelimit.upstream_rq_total")


def test_two_replicas_with_leases_stay_within_the_bound_with_few_calls(envoy, upstream, rls_server):
    n, lease, sent = 60, 8, 150
    svc_a = rls_server([rls.limit("per-user", n, var="header.x-user")])
    svc_b = rls_server([rls.limit("per-user", n, var="header.x-user")])  # same Redis
    config = cfg([{"name": "per-user", "scope": "global", "lease": lease,
                   "key": [{"header": "x-user"}]}])
    a = envoy(config, concurrency=2, extra_clusters=rls.cluster(svc_a))
    b = envoy(config, concurrency=2, extra_clusters=rls.cluster(svc_b))

    statuses = fire([a, b], sent, headers={"x-user": "alice"})
    admitted = statuses.count(200)
    assert statuses.count(200) + statuses.count(429) == sent, statuses
    # The documented bound: at most replicas x lease over the limit; under
    # it by what the leases still hold (unspent, valid for the window).
    held = 2 * lease
    assert n - held <= admitted <= n + 2 * lease, (admitted, statuses)
    assert upstream.hits == admitted
    calls = rls_calls(a) + rls_calls(b)
    obtained = stat(a, "ratelimit.g.per-user.lease_obtained") + \
        stat(b, "ratelimit.g.per-user.lease_obtained")
    hits = stat(a, "ratelimit.g.per-user.lease_hits") + stat(b, "ratelimit.g.per-user.lease_hits")
    assert hits == admitted
    assert stat(a, "ratelimit.g.per-user.allowed") + stat(b, "ratelimit.g.per-user.allowed") == admitted
    # One call per batch, plus the refused batches at the end of the window
    # (halving down to one hit: log2(lease) + 1 per process at most).
    overhead = 2 * (int(math.log2(lease)) + 1)
    assert calls <= obtained + overhead + 2, (calls, obtained)
    assert calls <= math.ceil(admitted / 2), (calls, admitted)
    print(f"\nleased global limit: n={n} lease={lease} sent={sent} admitted={admitted} "
          f"rls_calls={calls} ({calls / sent:.3f} per request, {calls / max(admitted, 1):.3f} "
          f"per admitted; per-request limits make 1 per request) leases={obtained}")
    # No call per request once the window is spent: refused locally.
    before = calls
    assert fire([a, b], 20, headers={"x-user": "alice"}).count(200) == 0
    assert rls_calls(a) + rls_calls(b) == before

    # Another key has its own lease and count.
    assert a.request("/g/x", headers={"x-user": "bob"})[0] == 200


def test_a_refill_outlives_the_request_that_started_it(envoy, upstream, rls_server):
    """A refill is the process's, not the request's whose spend started it:
    when that request goes away (the client resets it) before the service
    answers, the answer is still recorded and the next requests spend it
    without another call. (Natively the refill is sent from the main
    thread, not on that request's stream: docs/native.md.)"""
    svc = rls_server([rls.limit("quota", 100)], delay_ms=400)
    e = envoy(cfg([{"name": "quota", "scope": "global", "lease": 4}], timeout="2s"),
              concurrency=1, extra_clusters=rls.cluster(svc))
    # No lease yet: the request sends the refill and waits for it; its
    # client gives up long before the answer (400 ms).
    with pytest.raises(OSError):
        e.request("/g/x", timeout=0.1)
    time.sleep(1.0)
    assert stat(e, "ratelimit.g.quota.lease_failed") == 0
    assert stat(e, "ratelimit.g.quota.lease_obtained") == 1
    assert rls_calls(e) == 1
    # The batch of 4 is there: spent without a call (the refill at half
    # a batch is sent by the second one and answered 400 ms later).
    assert [e.request("/g/x")[0] for _ in range(3)] == [200] * 3
    assert stat(e, "ratelimit.g.quota.lease_hits") == 3
    time.sleep(1.0)
    assert stat(e, "ratelimit.g.quota.lease_failed") == 0
    assert stat(e, "ratelimit.g.quota.lease_obtained") == 2
    assert rls_calls(e) == 2


def test_over_limit_from_the_service_stops_admission(envoy, upstream, rls_server):
    n = 5
    svc = rls_server([rls.limit("quota", n)])
    e = envoy(cfg([{"name": "quota", "scope": "global", "lease": 4}]),
              concurrency=2, extra_clusters=rls.cluster(svc))
    statuses = [e.request("/g/x")[0] for _ in range(12)]
    # Batches of 4 then 1 (the refused 4 halves down): exactly n here,
    # sequential requests on one process.
    assert statuses == [200] * n + [429] * (12 - n), statuses
    s, h, body = e.request("/g/x")
    assert s == 429 and 1 <= int(h["retry-after"]) <= 60, h
    assert json.loads(body)["limit"] == "quota"
    calls = rls_calls(e)
    for _ in range(5):
        assert e.request("/g/x")[0] == 429
    assert rls_calls(e) == calls, "denied locally until the reset, without calls"


@pytest.mark.parametrize("mode", ["allow", "deny"])
def test_service_down_with_no_lease_follows_failure_mode(envoy, upstream, mode):
    dead = harness.free_port()  # nothing listens there
    e = envoy(cfg([{"name": "quota", "scope": "global", "lease": 10}], mode=mode, timeout="200ms"),
              extra_clusters=rls.cluster(dead))
    t0 = time.time()
    s, h, b = e.request("/g/x")
    assert time.time() - t0 < 2, "never hangs"
    if mode == "allow":
        assert s == 200, (s, b)
        assert stat(e, "rls.g.failure_mode_allowed") >= 1
    else:
        assert s == 503 and h["retry-after"] == "1", (s, h, b)
        assert json.loads(b)["error"] == "rate_limit_unavailable"
        assert stat(e, "rls.g.failure_mode_denied") >= 1
    assert stat(e, "ratelimit.g.quota.lease_failed") >= 1
    assert stat(e, "ratelimit.g.quota.lease_obtained") == 0


def test_redis_stopped_spends_the_lease_left_then_follows_failure_mode(envoy, upstream, rls_server, redis):
    svc = rls_server([rls.limit("quota", 1000)])
    e = envoy(cfg([{"name": "quota", "scope": "global", "lease": 10}], mode="deny"),
              concurrency=1, extra_clusters=rls.cluster(svc))
    assert e.request("/g/x")[0] == 200  # obtains a batch of 10
    redis.stop()
    statuses = [e.request("/g/x")[0] for _ in range(15)]
    # The hits left are spent (the refill fails meanwhile), then deny.
    assert statuses.count(200) >= 4, statuses
    assert statuses[-1] == 503, statuses
    assert stat(e, "ratelimit.g.quota.lease_failed") >= 1
