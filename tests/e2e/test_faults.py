"""Faults around a real Envoy loading meshguard: an upstream that resets
mid-body while its response is being cached, a JWKS endpoint that is slow,
answers 500, garbage or an oversized document (at startup and after good
keys), a rate limit service that answers malformed protobuf, the wrong
content type, or never, and the configuration reloaded 50 times under
load. Each: the defined outcome, no wasm trap or panic, and the policies
keep working afterwards. Loopback only."""

import json
import os
import socket
import threading
import time
from concurrent import futures

import grpc
import pytest

import harness
import vmcheck
from jwt_support import JWKS, claims, mint_hs, wait_until

HS = next(k for k in JWKS["keys"] if k["kid"] == "hs-1")


# ------------------------------------------------------------ upstream reset

class ResettingOrigin:
    """HTTP/1.1 origin on 127.0.0.1: in mode "reset" it sends the headers of
    a cacheable 20,000-byte response, 5,000 bytes of body, then a TCP RST;
    in mode "ok" the whole response."""

    BODY = bytes((i % 251) for i in range(20000))

    def __init__(self):
        self.mode = "reset"
        self.hits = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = c.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                _, buf = buf.split(b"\r\n\r\n", 1)
                self.hits += 1
                head = (b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                        b"cache-control: max-age=60\r\ncontent-length: %d\r\n\r\n" % len(self.BODY))
                if self.mode == "reset":
                    c.sendall(head + self.BODY[:5000])
                    time.sleep(0.2)
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    c.close()
                    return
                c.sendall(head + self.BODY)
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def stop(self):
        self.stopped = True
        self.sock.close()


def test_upstream_reset_mid_body_stores_nothing(tmp_path):
    origin = ResettingOrigin()
    cfg = {"cache_store": {"max_bytes": 1 << 20, "max_entry_bytes": 65536},
           "routes": [{"name": "c", "match": {"path_prefix": "/c"}, "cache": {"methods": ["GET"]}}]}
    e = harness.Envoy(tmp_path, cfg, origin.port, concurrency=2).start()
    try:
        vms = vmcheck.vm_stats(e)
        for i in range(3):
            # The client sees the error: a truncated body (Envoy resets the
            # downstream stream once the response has started).
            with pytest.raises(Exception):
                s, h, b = e.request("/c/x")
                assert len(b) == len(ResettingOrigin.BODY), (s, len(b))
        origin.mode = "ok"
        s, h, b = e.request("/c/x")
        assert s == 200 and b == ResettingOrigin.BODY
        # Nothing partial was stored: a clean miss, then a hit of the whole body.
        assert h["cache-status"].startswith("meshguard; fwd=uri-miss"), h["cache-status"]
        s, h, b = e.request("/c/x")
        assert s == 200 and b == ResettingOrigin.BODY and "; hit" in h["cache-status"], h
        assert origin.hits == 4
        vmcheck.assert_no_trap(e, vms)
    finally:
        e.stop()
        origin.stop()


# ------------------------------------------------------------ JWKS endpoint faults

class FaultyIdp:
    """A JWKS endpoint on 127.0.0.1 whose answer `mode` chooses: "good",
    "slow" (answers after 3 s), "500", "garbage" (not JSON), "oversized"
    (a valid JWKS of 400 KB, over meshguard's 256 KiB)."""

    def __init__(self, mode="good"):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        self.mode = mode
        self.fetches = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                mode = outer.mode
                outer.fetches.append((time.monotonic(), mode))
                status, body = 200, json.dumps({"keys": [HS]}).encode()
                if mode == "slow":
                    time.sleep(3)
                elif mode == "500":
                    status, body = 500, b'{"error":"boom"}'
                elif mode == "garbage":
                    body = b"\x00\xff<html>not json{{{"
                elif mode == "oversized":
                    body = json.dumps({"keys": [HS], "pad": "x" * 400_000}).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def jwt_provider(cluster, cache_duration="10m"):
    return {"issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ["HS256"],
            "jwks": {"remote": {"cluster": cluster, "path": "/jwks.json", "timeout": "1s",
                                "cache_duration": cache_duration}}}


def test_jwks_endpoint_faults_at_startup_and_after_good_keys(tmp_path, upstream):
    faults = ["slow", "500", "garbage", "oversized"]
    idps = {f: FaultyIdp(f) for f in faults}
    flip = FaultyIdp("good")
    try:
        providers = {f"p_{f}": jwt_provider(f"idp_{f}") for f in faults}
        # The shortest cache_duration (10 s): refreshed at 85-90% of it, then
        # retried with backoff from 1 s after each failure.
        providers["flip"] = jwt_provider("idp_flip", cache_duration="10s")
        routes = [{"name": f"r_{f}", "match": {"path_prefix": f"/{f}"}, "jwt": {"providers": [f"p_{f}"]}}
                  for f in faults]
        routes.append({"name": "flip", "match": {"path_prefix": "/flip"}, "jwt": {"providers": ["flip"]}})
        clusters = [harness.static_cluster(f"idp_{f}", idps[f].port) for f in faults]
        clusters.append(harness.static_cluster("idp_flip", flip.port))
        e = harness.Envoy(tmp_path, {"jwt_providers": providers, "routes": routes}, upstream.port,
                          concurrency=2, extra_clusters=clusters).start()
        try:
            vms = vmcheck.vm_stats(e)
            tok = {"authorization": f"Bearer {mint_hs(claims())}"}
            # At startup: no keys ever; requests wait (at most 5 s), then 503.
            def first(f):
                t0 = time.monotonic()
                s, h, b = e.request(f"/{f}", headers=tok, timeout=15)
                return f, s, b, time.monotonic() - t0

            with futures.ThreadPoolExecutor(max_workers=len(faults)) as pool:
                for f, s, b, took in pool.map(first, faults):
                    assert s == 503 and json.loads(b)["error"] == "jwks_unavailable", (f, s, b)
                    assert took < 7, (f, took)
                    assert idps[f].fetches, f
            # After good keys: every fault keeps the last good keys.
            assert e.request("/flip", headers=tok)[0] == 200
            for f in ["500", "garbage", "oversized", "slow"]:
                n = len(flip.fetches)
                flip.mode = f
                assert wait_until(lambda: len(flip.fetches) > n, timeout=20), (f, flip.fetches)
                time.sleep(0.3)
                s, h, b = e.request("/flip", headers=tok)
                assert s == 200, (f, s, h, b)
            time.sleep(1.5)  # the slow fetch timed out meanwhile
            assert e.request("/flip", headers=tok)[0] == 200
            log = e.log()
            for why in ["JWKS body too large", "status 500", "JWKS is not valid JSON"]:
                assert why in log, why
            vmcheck.assert_no_trap(e, vms)
        finally:
            e.stop()
    finally:
        for i in idps.values():
            i.stop()
        flip.stop()


# ------------------------------------------------------------ RLS faults

RLS_METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


class FaultyRls:
    """A gRPC rate limit service (grpcio, generic handler: raw bytes in and
    out) whose answer `mode` chooses: "ok" (overall OK), "malformed"
    (bytes that are not a RateLimitResponse), "never" (no answer within
    any deadline)."""

    def __init__(self):
        self.mode = "ok"
        self.calls = 0
        outer = self

        def should_rate_limit(request, context):
            outer.calls += 1
            if outer.mode == "malformed":
                return b"\x08\x01\x12\xff\xff\xff\xff\x0f\x00"
            if outer.mode == "never":
                time.sleep(3)
            return b"\x08\x01"

        handler = grpc.method_handlers_generic_handler(
            "envoy.service.ratelimit.v3.RateLimitService",
            {"ShouldRateLimit": grpc.unary_unary_rpc_method_handler(should_rate_limit)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self):
        self.server.stop(0)


def wrong_content_type_service(tmp_path):
    """An Envoy answering every request (HTTP/2 included) with 200 text/html:
    a gRPC call to it gets a reply of the wrong content type."""
    port, admin = harness.free_port(), harness.free_port()
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "html", "enable_reuse_port": False,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "html", "codec_type": "AUTO",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": "<html>hello</html>"}},
                        "response_headers_to_add": [{"header": {"key": "content-type", "value": "text/html"},
                                                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}]},
    }
    e = harness.Envoy(tmp_path, "{}", 1, concurrency=1)
    e.doc = doc
    e.listen_port, e.admin_port = port, admin
    return e.start()


def rls_cfg(mode):
    return {"rate_limit_service": {"cluster": "ratelimit", "domain": "meshguard", "timeout": "200ms",
                                   "failure_mode": mode},
            "routes": [{"name": "g", "match": {"path_prefix": "/g/"},
                        "rate_limit": [{"name": "quota", "scope": "global"}]}]}


def test_rls_malformed_wrong_content_type_and_never(tmp_path, upstream):
    svc = FaultyRls()
    html = wrong_content_type_service(tmp_path)
    started = []
    try:
        def pair(port):
            c = [harness.static_cluster("ratelimit", port, http2=True)]
            a = harness.Envoy(tmp_path, rls_cfg("allow"), upstream.port, extra_clusters=c).start()
            started.append(a)
            d = harness.Envoy(tmp_path, rls_cfg("deny"), upstream.port, extra_clusters=c).start()
            started.append(d)
            return a, d

        allow, deny = pair(svc.port)
        vms = (vmcheck.vm_stats(allow), vmcheck.vm_stats(deny))
        outcomes = []
        for mode, want in [("ok", (200, 200)), ("malformed", (200, 503)), ("never", (200, 503)),
                           ("ok", (200, 200))]:
            svc.mode = mode
            t0 = time.monotonic()
            got = (allow.request("/g/x")[0], deny.request("/g/x")[0])
            took = time.monotonic() - t0
            outcomes.append((mode, got, round(took, 2)))
            assert got == want, (mode, got, want)
            assert took < 2.5, (mode, took)  # the 200 ms deadline, never the service's 3 s
        assert "not a RateLimitResponse" in allow.log(), allow.log()[-3000:]
        html_allow, html_deny = pair(html.listen_port)
        got = (html_allow.request("/g/x")[0], html_deny.request("/g/x")[0])
        outcomes.append(("wrong content type", got))
        assert got == (200, 503), got
        for e in started:
            errors = e.stat("wasmcustom.meshguard.rls.g.error")
            assert errors >= 1, (e.log()[-3000:])
        print("RLS faults:", outcomes)
        vmcheck.assert_no_trap(allow, vms[0])
        vmcheck.assert_no_trap(deny, vms[1])
        for e in (html_allow, html_deny):
            vmcheck.assert_no_trap(e)
    finally:
        for e in started:
            e.stop()
        html.stop()
        svc.stop()


# ------------------------------------------------------------ reloads under load

def ecds_resource(cfg):
    wasm = harness.wasm_filter(json.dumps(cfg))
    return {"resources": [{"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                           "name": "meshguard", "typed_config": wasm["typed_config"]}]}


def write_atomically(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def reload_cfg(gen):
    return {"routes": [
        {"name": "api", "match": {"path_prefix": "/api"},
         "rate_limit": [{"name": "all", "capacity": 5, "refill_tokens": 1, "refill_interval": "1h"}]},
        {"name": "flaky", "match": {"path_prefix": "/flaky"},
         "circuit_breaker": {"consecutive_failures": 2, "open_duration": "1h"}},
        {"name": "open", "match": {"path_prefix": "/open"},
         "rate_limit": [{"name": "per-client", "key": [{"header": "x-client"}], "capacity": 1000000,
                         "refill_tokens": 1000000, "refill_interval": "1s"}]},
        {"name": f"gen{gen}", "match": {"path_prefix": f"/gen{gen}/"},
         "rate_limit": [{"name": f"g{gen}", "capacity": 1000, "refill_tokens": 1, "refill_interval": "1h"}]},
    ]}


def test_fifty_reloads_under_load(tmp_path, upstream):
    ecds_dir = tmp_path / "ecds"
    ecds_dir.mkdir()
    ecds = str(ecds_dir / "meshguard.json")
    write_atomically(ecds, ecds_resource(reload_cfg(0)))
    e = harness.Envoy(tmp_path, "{}", upstream.port, concurrency=2)
    hcm = e.doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0] = {"name": "meshguard", "config_discovery": {
        "config_source": {"path_config_source": {"path": ecds, "watched_directory": {"path": str(ecds_dir)}},
                          "resource_api_version": "V3"},
        "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"]}}
    e.doc["node"] = {"id": "meshguard-test", "cluster": "meshguard-test"}
    e.start()
    try:
        upstream.behaviour = lambda m, p, h: (500 if p.startswith("/flaky") else 200, {}, b"x", 0)
        assert wait_until(lambda: e.request("/api/0")[0] == 200, timeout=20), e.log()[-3000:]
        assert [e.request("/api/1")[0], e.request("/api/2")[0]] == [200, 200]  # 2 tokens left
        assert [e.request("/flaky")[0] for _ in range(2)] == [500, 500]
        assert json.loads(e.request("/flaky")[2])["error"] == "circuit_open"
        vms = vmcheck.vm_stats(e)

        stop = threading.Event()
        results = []

        def load(i):
            while not stop.is_set():
                try:
                    results.append(e.request(f"/open/{i}", headers={"x-client": f"c{len(results) % 50}"})[0])
                except Exception as ex:  # noqa: BLE001 - every failure is a finding
                    results.append(repr(ex))

        threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        for gen in range(1, 51):
            write_atomically(ecds, ecds_resource(reload_cfg(gen)))
            # Each generation is live before the next: its new route's limit
            # shows in the answer's RateLimit-Policy.
            assert wait_until(lambda: f'"g{gen}"' in e.request(f"/gen{gen}/x")[1].get("ratelimit-policy", ""),
                              timeout=10), (gen, e.log()[-3000:])
        stop.set()
        for t in threads:
            t.join(timeout=10)
        bad = [r for r in results if r != 200]
        assert len(results) > 100 and not bad, (len(results), bad[:10])
        # State of the unchanged routes survived 50 reloads.
        assert [e.request("/api/3")[0], e.request("/api/4")[0], e.request("/api/5")[0]] == [200, 200, 429]
        assert json.loads(e.request("/flaky")[2])["error"] == "circuit_open"
        created = vmcheck.vm_stats(e)["wasm.envoy.wasm.runtime.v8.created"] - vms["wasm.envoy.wasm.runtime.v8.created"]
        assert created <= 50, created
        assert vmcheck.vm_stats(e)["wasm.envoy.wasm.runtime.v8.active"] == vms["wasm.envoy.wasm.runtime.v8.active"]
        vmcheck.assert_no_trap(e)
        print(f"50 reloads under load: {len(results)} requests, all 200; VMs created {created}")
    finally:
        e.stop()
