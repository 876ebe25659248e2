"""Circuit breaker in a real Envoy with 4 workers: trips, fails fast without
touching the upstream, probes, closes, re-opens for longer; connection
refused and timeouts trip it; 404s do not."""

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import harness


def cfg(**breaker):
    b = {"consecutive_failures": 3, "open_duration": "1s", "max_open_duration": "10s",
         "half_open_requests": 2, "success_threshold": 2}
    b.update(breaker)
    return {"routes": [{"name": "api", "match": {"path_prefix": "/"}, "circuit_breaker": b}]}


def set_status(upstream, status, delay=0):
    upstream.behaviour = lambda m, p, h: (status, {"content-type": "text/plain"}, b"x", delay)


def wait_until(pred, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_trip_open_probe_close_and_reopen_longer(envoy, upstream):
    # 2s open time: long enough that a slow machine stays inside it while
    # the test checks the OPEN state.
    e = envoy(cfg(open_duration="2s"), concurrency=4)
    set_status(upstream, 500)
    for _ in range(3):
        assert e.request("/")[0] == 500
    assert upstream.hits == 3

    # OPEN: fail fast, upstream untouched.
    for _ in range(10):
        s, h, body = e.request("/")
        assert s == 503
        assert 1 <= int(h["retry-after"]) <= 3
        doc = json.loads(body)
        assert doc == {"error": "circuit_open", "route": "api", "retry_after": int(h["retry-after"])}
    assert upstream.hits == 3
    stats = e.stats()
    assert stats["wasmcustom.meshguard.breaker.api.state"] == 1
    assert stats["wasmcustom.meshguard.breaker.api.trips"] == 1
    assert stats["wasmcustom.meshguard.breaker.api.rejected"] == 10

    # After the open time: exactly half_open_requests (2) probes reach the
    # upstream, across all workers, while the rest are refused.
    time.sleep(2.3)
    # Probes stay in flight long enough for every other request to arrive.
    set_status(upstream, 200, delay=1.5)
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(lambda i: e.request(f"/p{i}")[0], range(12)))
    assert statuses.count(200) == 2, statuses
    assert statuses.count(503) == 10, statuses
    assert upstream.hits == 5
    # success_threshold (2) successes closed it: everything passes again.
    set_status(upstream, 200)
    for _ in range(5):
        assert e.request("/")[0] == 200
    assert e.stat("wasmcustom.meshguard.breaker.api.state") == 0
    assert e.stat("wasmcustom.meshguard.breaker.api.probes") == 2

    # Trip again, then a failing probe re-opens for twice as long.
    set_status(upstream, 500)
    for _ in range(3):
        assert e.request("/")[0] == 500
    assert e.request("/")[0] == 503
    time.sleep(2.3)
    assert e.request("/")[0] == 500  # the probe fails
    s, h, _ = e.request("/")
    assert s == 503
    assert int(h["retry-after"]) >= 3, h  # 4s (doubled), plus up to 10% jitter
    assert e.stat("wasmcustom.meshguard.breaker.api.trips") >= 3
    log = e.log()
    assert "CLOSED -> OPEN" in log and "HALF_OPEN -> CLOSED" in log and "HALF_OPEN -> OPEN" in log


def test_404s_do_not_trip(envoy, upstream):
    e = envoy(cfg(), concurrency=4)
    set_status(upstream, 404)
    for _ in range(10):
        assert e.request("/")[0] == 404
    assert upstream.hits == 10
    assert e.stat("wasmcustom.meshguard.breaker.api.trips") == 0


def test_connection_refused_trips(envoy, upstream):
    dead = harness.free_port()  # nothing listens there
    e = envoy(cfg(failure_statuses=[]), concurrency=4, upstream_port=dead)
    for _ in range(3):
        s, h, body = e.request("/")
        assert s == 503 and b"circuit_open" not in body  # Envoy's own "upstream connect error"
    s, h, body = e.request("/")
    assert s == 503 and json.loads(body)["error"] == "circuit_open"
    assert e.stat("wasmcustom.meshguard.breaker.api.trips") == 1


def test_upstream_timeout_trips(envoy, upstream):
    e = envoy(cfg(failure_statuses=[]), concurrency=4, route_timeout="0.3s")
    set_status(upstream, 200, delay=1.0)
    for _ in range(3):
        assert e.request("/")[0] == 504
    s, _, body = e.request("/")
    assert s == 503 and json.loads(body)["error"] == "circuit_open"
    assert upstream.hits == 3


def test_slow_calls_count_as_failures(envoy, upstream):
    e = envoy(cfg(slow_call="200ms"), concurrency=2)
    set_status(upstream, 200, delay=0.3)
    for _ in range(3):
        assert e.request("/")[0] == 200
    assert e.request("/")[0] == 503


def test_meshguard_own_replies_never_count(envoy, upstream):
    """429s from the rate limiter on the same route are not breaker failures."""
    c = cfg(consecutive_failures=1)
    c["routes"][0]["rate_limit"] = [{"name": "l", "capacity": 1, "refill_interval": "1h"}]
    e = envoy(c, concurrency=2)
    assert e.request("/")[0] == 200
    for _ in range(5):
        assert e.request("/")[0] == 429
    assert e.stat("wasmcustom.meshguard.breaker.api.trips") == 0


def test_upstream_scope_shares_one_breaker_across_routes(envoy, upstream):
    """scope "upstream": two routes to the same cluster trip one breaker."""
    b = {"consecutive_failures": 2, "open_duration": "10s", "scope": "upstream"}
    e = envoy({"routes": [
        {"name": "a", "match": {"path_prefix": "/a"}, "circuit_breaker": b},
        {"name": "b", "match": {"path_prefix": "/b"}, "circuit_breaker": b},
    ]}, concurrency=2)
    set_status(upstream, 503)
    assert e.request("/a")[0] == 503
    assert e.request("/b")[0] == 503
    s, _, body = e.request("/a")
    assert s == 503 and json.loads(body)["error"] == "circuit_open"
    s, _, body = e.request("/b")
    assert s == 503 and json.loads(body)["error"] == "circuit_open"
    assert upstream.hits == 2


def test_route_scope_keeps_routes_apart(envoy, upstream):
    b = {"consecutive_failures": 2, "open_duration": "10s"}
    e = envoy({"routes": [
        {"name": "a", "match": {"path_prefix": "/a"}, "circuit_breaker": b},
        {"name": "b", "match": {"path_prefix": "/b"}, "circuit_breaker": b},
    ]}, concurrency=2)
    set_status(upstream, 503)
    assert e.request("/a")[0] == 503
    assert e.request("/a")[0] == 503
    assert json.loads(e.request("/a")[2])["error"] == "circuit_open"
    s, _, body = e.request("/b")
    assert s == 503 and b"circuit_open" not in body  # b's own breaker is still closed


def test_a_probe_the_client_abandons_is_given_back(envoy, upstream):
    """A HALF_OPEN probe whose client hangs up before the response: its
    stream never reaches a response callback, so the filter learns of its
    end from the root's sweep (proxy_on_log is not exported) and gives the
    probe slot back within about a second. It counts as cancelled: the
    breaker stays HALF_OPEN and the next request is the probe that closes
    it. Without the give-back the slot would stay taken for 30 s (the lost
    probe rule), and every request until then would get 503."""
    e = envoy(cfg(consecutive_failures=1, open_duration="1s", half_open_requests=1,
                  success_threshold=1), concurrency=2)
    set_status(upstream, 500)
    assert e.request("/")[0] == 500
    assert e.request("/")[0] == 503
    time.sleep(1.3)

    # The probe: the upstream takes 3 s; the client leaves after 0.3 s.
    set_status(upstream, 200, delay=3)
    hits = upstream.hits
    with socket.create_connection(("127.0.0.1", e.listen_port), timeout=5) as s:
        s.sendall(b"GET /probe HTTP/1.1\r\nhost: t\r\n\r\n")
        assert wait_until(lambda: upstream.hits == hits + 1, timeout=5), "the probe never reached the upstream"
        time.sleep(0.3)
    # While the abandoned probe's slot is taken, others are refused.
    set_status(upstream, 200)
    statuses = []
    assert wait_until(lambda: statuses.append(e.request("/next")[0]) or statuses[-1] == 200, timeout=5), statuses
    assert set(statuses[:-1]) <= {503}, statuses
    assert e.stat("wasmcustom.meshguard.breaker.api.state") == 0
    assert e.stat("wasmcustom.meshguard.breaker.api.probes") == 2
    # The abandoned probe did not re-open it: one trip only.
    assert e.stat("wasmcustom.meshguard.breaker.api.trips") == 1
    # The check that found the stream gone counted it.
    assert e.stat("wasmcustom.meshguard.streams_reset") >= 1
    assert "HALF_OPEN -> CLOSED" in e.log() and "HALF_OPEN -> OPEN" not in e.log()
