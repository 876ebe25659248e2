"""Usage-based cost (`rate_limit[].usage`, docs/usage-limits.md) in a real
Envoy: token budgets charged from a response header, a JSON body field and
the last server-sent event of a stream, for local limits (exact across
--concurrency 2 workers) and for a global limit counted by a real rate
limit service (tests/e2e/rls.py). The upstream here is this file's own: it
answers the cost in a header, in a JSON body, or streams SSE events with a
pause between them."""

import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import harness
import rls

BUDGET = 100
COST = 30  # what every answer of the upstream says it cost


class MeteredUpstream:
    """`/h/<n>`: header `x-usage-tokens: n`; `/j/<n>`: a JSON body with
    `usage.total_tokens` = n; `/s/<n>`: an SSE stream, chunked: a first
    event, then (after `gate` opens, or 50 ms without a gate) the usage
    event and `data: [DONE]`."""

    def __init__(self):
        self.hits = 0
        self.lock = threading.Lock()
        self.gate = None  # a threading.Event the next stream waits on
        self.gate_opened = None  # whether it opened before the stream went on
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_GET(self):
                with outer.lock:
                    outer.hits += 1
                kind, n = self.path.strip("/").split("/")[:2]
                n = int(n)
                if kind == "h":
                    self._send(200, {"x-usage-tokens": str(n), "content-type": "text/plain"}, b"ok")
                elif kind == "j":
                    body = json.dumps({"id": "cmpl-1", "choices": [{"text": "usage: none"}],
                                       "usage": {"prompt_tokens": 1, "total_tokens": n}}).encode()
                    self._send(200, {"content-type": "application/json"}, body)
                else:
                    self._stream(n)

            def _send(self, status, headers, body):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _chunk(self, data):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _stream(self, n):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                # The first event, split across two chunks.
                self._chunk(b'data: {"choices":[{"delta":')
                self._chunk(b'"hello"}]}\n\n')
                gate = outer.gate
                if gate is not None:
                    outer.gate_opened = gate.wait(20)
                else:
                    time.sleep(0.05)
                self._chunk(b'data: {"choices":[],"usage":{"total_tokens":%d}}\n\n' % n)
                self._chunk(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def metered():
    u = MeteredUpstream()
    yield u
    u.stop()


SOURCES = {
    "h": {"header": "x-usage-tokens"},
    "j": {"json": "usage.total_tokens"},
    "s": {"sse_json": "usage.total_tokens"},
}


def config(limit, extra=None):
    doc = {
        "metrics_flush_interval": "0s",
        "rate_limit_headers": "legacy",
        "routes": [{"name": "llm", "match": {"path_prefix": "/"}, "rate_limit": [limit]}],
    }
    doc.update(extra or {})
    return doc


def local_limit(source, **kw):
    return {"name": "tokens", "key": [{"header": "x-api-key"}], "capacity": BUDGET,
            # one token per 864 s: nothing refills during a test
            "refill_interval": "24h", "usage": SOURCES[source], **kw}


def stat(e, name):
    return e.stat(f"wasmcustom.meshguard.ratelimit.llm.tokens.{name}")


@pytest.mark.parametrize("source", ["h", "j", "s"])
def test_local_token_budget_is_exact_and_goes_into_debt(envoy, metered, source):
    e = envoy(config(local_limit(source)), concurrency=2, upstream_port=metered.port)
    key = {"x-api-key": "k1"}
    got = []
    for _ in range(7):
        s, h, body = e.request(f"/{source}/{COST}", headers=key)
        got.append(s)
        if s == 200 and source == "s":
            assert body.endswith(b"data: [DONE]\n\n"), body  # passed on whole
    # 100 tokens, 30 a request, 1 taken up front: the 4th request finds 10
    # tokens, passes on its estimate and leaves the bucket 20 in debt.
    assert got == [200] * 4 + [429] * 3, got
    assert metered.hits == 4
    assert stat(e, "usage_tokens") == 4 * COST
    assert stat(e, "usage_settled") == 4
    assert stat(e, "usage_debt_tokens") == 4 * COST - BUDGET
    assert stat(e, "usage_settlement_failures") == 0
    # In debt: the wait counts the 20 tokens owed (864 s each) plus one.
    s, h, _ = e.request(f"/{source}/{COST}", headers=key)
    assert s == 429 and int(h["retry-after"]) > 20 * 864, h
    # Another key has its own budget.
    assert e.request(f"/{source}/{COST}", headers={"x-api-key": "k2"})[0] == 200


def test_costs_below_the_estimate_are_given_back_and_bad_ones_keep_it(envoy, metered):
    e = envoy(config(local_limit("h", cost=10)), concurrency=2, upstream_port=metered.port)
    key = {"x-api-key": "k"}
    # Each costs 2 of its estimate 10: 8 back every time, 50 requests fit.
    assert all(e.request("/h/2", headers=key)[0] == 200 for _ in range(45))
    assert stat(e, "usage_tokens") == 90
    # A JSON body over max_body_bytes keeps the estimate, counted.
    e2 = envoy(config(local_limit("j", cost=25, usage={"json": "usage.total_tokens",
                                                          "max_body_bytes": 16})),
               concurrency=2, upstream_port=metered.port)
    assert [e2.request("/j/1", headers=key)[0] for _ in range(5)] == [200] * 4 + [429]
    assert stat(e2, "usage_settlement_failures") == 4
    assert stat(e2, "usage_tokens") == 100


def test_a_stream_reaches_the_client_event_by_event_and_settles_at_its_end(envoy, metered):
    e = envoy(config(local_limit("s")), concurrency=2, upstream_port=metered.port)
    metered.gate = threading.Event()
    conn = http.client.HTTPConnection("127.0.0.1", e.listen_port, timeout=30)
    try:
        conn.request("GET", f"/s/{COST}", headers={"x-api-key": "k1"})
        r = conn.getresponse()
        assert r.status == 200
        first = r.readline()
        # The first event arrived while the upstream is still waiting to
        # send the rest: nothing was held back, nothing settled yet.
        assert first == b'data: {"choices":[{"delta":"hello"}]}\n', first
        assert metered.gate_opened is None, "the upstream went on before the client read"
        assert stat(e, "usage_settled") == 0
        metered.gate.set()
        rest = r.read()
    finally:
        conn.close()
    assert metered.gate_opened is True
    assert rest == (b'\ndata: {"choices":[],"usage":{"total_tokens":30}}\n\n'
                    b"data: [DONE]\n\n"), rest
    assert stat(e, "usage_settled") == 1
    assert stat(e, "usage_tokens") == COST


# ------------------------------------------------------------ global limits

def rls_calls(svc):
    return [line for line in svc.log().splitlines() if "domain=" in line]


@pytest.mark.parametrize("source", ["h", "j", "s"])
def test_global_token_budget_is_reported_and_bounded(envoy, metered, tmp_path, redis, source):
    limits = [{"name": "tokens", "namespace": "meshguard", "max_value": BUDGET, "seconds": 3600,
               "conditions": ["descriptors[0].route == 'llm'", "descriptors[0].limit == 'tokens'"],
               "variables": ["descriptors[0]['header.x-api-key']"]}]
    with rls.RlsServer(tmp_path, limits, redis_url=redis.url) as svc:
        limit = {"name": "tokens", "scope": "global", "key": [{"header": "x-api-key"}],
                 "usage": SOURCES[source]}
        svc_cfg = {"rate_limit_service": {"cluster": "ratelimit", "timeout": "500ms"}}
        e = envoy(config(limit, svc_cfg), concurrency=2, upstream_port=metered.port,
                  extra_clusters=[harness.static_cluster("ratelimit", svc.port, http2=True)])
        got = []
        for i in range(7):
            s, _, _ = e.request(f"/{source}/{COST}", headers={"x-api-key": "k1"})
            got.append(s)
            # The report is not waited for by the client: wait for the
            # service to have it (one call, plus one report per admitted
            # request) before the next request.
            want = len(got) + got.count(200)
            end = time.time() + 10
            while len(rls_calls(svc)) < want and time.time() < end:
                time.sleep(0.02)
            assert len(rls_calls(svc)) == want, svc.log()
        # 1 + 29 per request: 30, 60, 90; the 4th finds 10 left, reports 9
        # (never more than the service said was left): the budget is
        # spent, the 5th is refused. Consumed: 120 = the budget plus the
        # overshoot of the request that spent it (30 - 10).
        assert got == [200] * 4 + [429] * 3, (got, svc.log())
        reports = [line for line in rls_calls(svc) if "+29]" in line or "+9]" in line]
        assert len(reports) == 4, svc.log()
        assert sum(1 for line in reports if "+9]" in line) == 1, svc.log()
        consumed = got.count(200) * COST
        assert BUDGET <= consumed <= BUDGET + COST - 1
        assert e.stat("wasmcustom.meshguard.ratelimit.llm.tokens.usage_tokens") == consumed
        # Another key: its own budget.
        assert e.request(f"/{source}/{COST}", headers={"x-api-key": "k2"})[0] == 200
