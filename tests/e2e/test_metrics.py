"""meshguard's counters in a real Envoy: batched per worker and flushed by
the root context's tick (top-level `metrics_flush_interval`, default 100 ms),
exact once flushed, across workers; "0s" sends every increment at once."""

import time
from concurrent.futures import ThreadPoolExecutor


ALLOWED = "wasmcustom.meshguard.ratelimit.api.all.allowed"
LIMITED = "wasmcustom.meshguard.ratelimit.api.all.limited"
JWT_DENIED = "wasmcustom.meshguard.jwt.api.denied"


def config(capacity, **top):
    doc = {"routes": [{"name": "api", "match": {"path_prefix": "/"},
                       "rate_limit": [{"name": "all", "capacity": capacity, "refill_tokens": 1,
                                       "refill_interval": "1h"}]}]}
    doc.update(top)
    return doc


def flood(e, n, threads=8):
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda i: e.request(f"/m/{i}")[0], range(n)))


def test_default_batching_is_exact_across_workers_once_flushed(envoy, upstream):
    e = envoy(config(30), concurrency=4)
    statuses = flood(e, 100)
    assert statuses.count(200) == 30 and statuses.count(429) == 70, statuses
    # stats() waits for the flush (harness.METRICS_SETTLE_S): nothing lost,
    # nothing counted twice, whichever of the 4 workers served the request.
    s = e.stats()
    assert (s.get(ALLOWED), s.get(LIMITED)) == (30, 70), {k: v for k, v in s.items() if "meshguard" in k}
    # A second burst adds to the flushed sums.
    flood(e, 10)
    s = e.stats()
    assert (s.get(ALLOWED), s.get(LIMITED)) == (30, 80)


def test_zero_interval_counts_every_request_before_its_response(envoy, upstream):
    e = envoy(config(3, metrics_flush_interval="0s"), concurrency=2)
    for i in range(5):
        e.request(f"/z/{i}")
        # No wait at all: the increment reached Envoy before the response did.
        s = e.stats(settle=False)
        assert s.get(ALLOWED, 0) + s.get(LIMITED, 0) == i + 1, (i, s.get(ALLOWED), s.get(LIMITED))
    assert (e.stat(ALLOWED, settle=False), e.stat(LIMITED, settle=False)) == (3, 2)


def test_a_long_interval_holds_counts_until_the_tick_then_flushes_them_all(envoy, upstream):
    interval = 5.0
    spawned = time.time()  # the configuration (and its first tick's timer) comes after this
    e = envoy(config(2, metrics_flush_interval="5s"), concurrency=2)
    statuses = [e.request(f"/l/{i}")[0] for i in range(6)]
    assert statuses == [200, 200, 429, 429, 429, 429]
    early = e.stats(settle=False)
    read_at = time.time()
    if read_at - spawned < interval - 0.2:
        # No tick can have fired yet: the counters have not moved.
        assert early.get(ALLOWED, 0) == 0 and early.get(LIMITED, 0) == 0, (early.get(ALLOWED), early.get(LIMITED))
    deadline = spawned + 2 * interval + 3
    while time.time() < deadline:
        s = e.stats(settle=False)
        if s.get(ALLOWED, 0) + s.get(LIMITED, 0) >= 6:
            break
        time.sleep(0.2)
    assert (s.get(ALLOWED), s.get(LIMITED)) == (2, 4), "counts never flushed (or wrong)"


def test_other_features_counters_are_batched_too(envoy, upstream):
    jwks = {"keys": [{"kty": "oct", "kid": "k1", "k": "YW4taG1hYy1zZWNyZXQtb2YtYXQtbGVhc3QtMzItYnl0ZXMh"}]}
    doc = {"jwt_providers": {"p": {"issuer": "https://issuer.test", "algorithms": ["HS256"],
                                   "jwks": {"inline": jwks}}},
           "routes": [{"name": "api", "match": {"path_prefix": "/"}, "jwt": {"providers": ["p"]}}],
           "metrics_flush_interval": "5s"}
    spawned = time.time()
    e = envoy(doc, concurrency=1)
    assert [e.request("/")[0] for _ in range(3)] == [401] * 3
    if time.time() - spawned < 4.8:
        assert e.stat(JWT_DENIED, settle=False) == 0
    end = spawned + 13
    while e.stat(JWT_DENIED, settle=False) < 3 and time.time() < end:
        time.sleep(0.2)
    assert e.stat(JWT_DENIED, settle=False) == 3
