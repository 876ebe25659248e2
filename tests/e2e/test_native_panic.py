"""A panic in the native module costs the request it happened in, not the
Envoy process (`src/native/guard.rs`): the module is built with
panic=unwind and every hook Envoy calls runs inside `catch_unwind`.

The panics are made on purpose by a test build of the module (feature
`panic-test`, `make native-panic-test`: target/panic-test/libmeshguard.so,
never the shipped module): a request header `x-meshguard-test-panic:
<hook>` makes that hook of its stream panic, with the worker's table
borrowed, as a bug deep in the pipeline would. Native runtime only."""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness

pytestmark = pytest.mark.skipif(
    harness.runtime() != "native",
    reason="native module only: in the wasm build a panic is a trap of the VM "
           "(test_failure_mode.py), and there is no test-panic wasm build")

HEADER = "x-meshguard-test-panic"
PANICS = "wasmcustom.meshguard.panics"


def panic_module():
    path = os.environ.get("MESHGUARD_NATIVE_PANIC") or os.path.join(
        harness.ROOT, "target", "panic-test", "libmeshguard.so")
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: build it with `make native-panic-test`")
    return path


@pytest.fixture
def panicky(monkeypatch):
    """Envoys started after this load the test-panic build of the module."""
    monkeypatch.setenv("MESHGUARD_NATIVE", panic_module())


def limited(capacity):
    return {"routes": [{"name": "api", "match": {"path_prefix": "/"},
                        "rate_limit": [{"name": "all", "capacity": capacity,
                                        "refill_tokens": 1, "refill_interval": "1h"}]}]}


def alive(e):
    assert e.proc.poll() is None, "Envoy exited"
    assert e.admin("/ready").strip() == "LIVE"


def test_a_panic_in_request_headers_answers_500_and_envoy_keeps_serving(panicky, envoy, upstream):
    e = envoy(limited(4))
    status, headers, body = e.request("/a", headers={HEADER: "request_headers"})
    assert status == 500
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "internal_error",
                                "error_description": "meshguard failed on this request"}
    assert upstream.hits == 0, "a failed request never goes upstream"
    alive(e)
    # The policies still work on the same Envoy: the limit counts exactly
    # (the panicking request took no token).
    assert [e.request(f"/b/{i}")[0] for i in range(5)] == [200, 200, 200, 200, 429]
    assert upstream.hits == 4
    stats = e.stats()
    assert stats[PANICS] == 1
    assert stats["wasmcustom.meshguard.ratelimit.api.all.allowed"] == 4
    assert stats["wasmcustom.meshguard.ratelimit.api.all.limited"] == 1
    log = e.log()
    assert "meshguard: panic in hook request_headers" in log, log[-3000:]
    assert "meshguard test panic in request_headers" in log
    # The message went to Envoy's log through the module's panic hook, not
    # through Rust's default one.
    assert "panicked at" not in log
    alive(e)


def test_a_grpc_call_gets_internal(panicky, envoy, upstream):
    e = envoy(limited(4))
    status, headers, _ = e.request("/pkg.Svc/Method", method="POST", body=b"",
                                   headers={HEADER: "request_headers",
                                            "content-type": "application/grpc"})
    assert status == 200
    assert headers["grpc-status"] == "13", headers
    assert "internal_error" in headers["grpc-message"]
    assert upstream.hits == 0
    assert e.stats()[PANICS] == 1


@pytest.mark.parametrize("hook", ["response_headers", "response_body", "filter_destroy"])
def test_a_panic_after_the_request_passed_lets_the_response_through(panicky, envoy, upstream, hook):
    e = envoy(limited(4))
    status, _, body = e.request("/a", headers={HEADER: hook})
    assert (status, body) == (200, b"ok")
    alive(e)
    assert [e.request(f"/b/{i}")[0] for i in range(4)] == [200, 200, 200, 429]
    stats = e.stats()
    assert stats[PANICS] == 1
    assert stats["wasmcustom.meshguard.ratelimit.api.all.allowed"] == 4
    assert f"meshguard: panic in hook {hook}" in e.log()
    alive(e)


def test_a_flood_of_panics_costs_only_those_requests(panicky, envoy, upstream):
    """An input that hits a bug, sent 60 times at once: 60 failed requests,
    the others served, Envoy up, the log not flooded (one line a second
    and worker, then a count)."""
    e = envoy(limited(1000), concurrency=2)

    def one(i):
        h = {HEADER: "request_headers"} if i % 2 == 0 else {}
        return i % 2, e.request(f"/x/{i}", headers=h)[0]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(120)))
    assert [s for odd, s in results if not odd] == [500] * 60
    assert [s for odd, s in results if odd] == [200] * 60
    alive(e)
    assert e.stats()[PANICS] == 60
    lines = e.log().count("meshguard: panic in hook request_headers")
    assert 1 <= lines < 60, lines
