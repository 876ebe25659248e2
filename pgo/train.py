"""The training run of the native module's profile-guided build (`make native`).

`make native` builds the module twice: first instrumented (rustc
`-Cprofile-generate`), then, after this script has driven that build through
a real Envoy, optimised with the counts it wrote (`-Cprofile-use`). The
counts tell the compiler which branches and functions a request runs, so it
lays the request path out densely and moves the rest aside: fewer
instruction-cache lines per request, which is where the native module's time
over Envoy's own filters went (docs/native.md, "Profile-guided build").

What runs here is what should be fast, in proportions like a busy proxy's:
requests on a route without policy, rate-limited routes (allowed and
refused, with and without rate-limit headers), JWT (a repeated token of
every algorithm, distinct tokens, refused tokens), the cache (HITs, MISSes,
stores, `Vary`), the circuit breaker (closed, tripping, open) and all four
together. A path trained rarely is not slower than without a profile by
design, but the compiler may keep it out of line: keep this workload
representative when a hot path is added.

Usage (the Makefile does this): MESHGUARD_NATIVE=<instrumented .so>
LLVM_PROFILE_FILE=<dir>/%p-%m.profraw ENVOY_BIN=... python pgo/train.py
Exits non-zero, saying why, when a request does not get the answer its
policy gives: a profile of a broken run would be a profile of errors.
"""

import http.client
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

import harness  # noqa: E402
from jwt_support import ALGS, JWKS, TOKENS, claims, mint_hs  # noqa: E402

# Requests per phase: a few seconds of Envoy time in all; the proportions,
# not the totals, shape the profile.
HOT = 3000
WARM = 400
COLD = 60

SOURCES = [{"header": "authorization", "prefix": "Bearer "}, {"cookie": "access_token"}]


def document(headers):
    provider = {"issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ALGS,
                "jwks": {"inline": JWKS}, "from": SOURCES,
                "claims_to_headers": [{"claim": "sub", "header": "x-user"},
                                      {"claim": "org.id", "header": "x-org"}]}
    jwt = {"providers": ["main"]}
    roomy = {"name": "per-ip", "key": ["client_ip"], "capacity": 1000000000,
             "refill_tokens": 1000000000, "refill_interval": "1s"}
    tight = {"name": "tight", "key": [{"header": "x-tenant"}], "capacity": 2,
             "refill_tokens": 1, "refill_interval": "1h"}
    per_user = {"name": "per-user", "key": [{"claim": "sub"}], "capacity": 1000000000,
                "refill_tokens": 1000000000, "refill_interval": "1s"}
    breaker = {"consecutive_failures": 3, "open_duration": "1h"}
    cache = {"methods": ["GET", "HEAD"], "vary_allowlist": ["accept"]}
    return {
        "jwt_providers": {"main": provider},
        "rate_limit_headers": headers,
        "routes": [
            {"name": "open", "match": {"path_prefix": "/open/"}},
            {"name": "rl", "match": {"path_prefix": "/rl/"}, "rate_limit": [roomy]},
            {"name": "tight", "match": {"path_prefix": "/tight/"}, "rate_limit": [tight]},
            {"name": "api", "match": {"path_prefix": "/api/"}, "jwt": jwt},
            {"name": "scoped", "match": {"path_prefix": "/scoped/"},
             "jwt": {"providers": ["main"], "claims": [{"claim": "scope", "contains": "orders:write"}]}},
            {"name": "cache", "match": {"path_prefix": "/cache/"}, "cache": cache},
            {"name": "breaker", "match": {"path_prefix": "/breaker/"}, "circuit_breaker": breaker},
            {"name": "all", "match": {"path_prefix": "/all/"}, "jwt": jwt, "rate_limit": [per_user],
             "circuit_breaker": {"consecutive_failures": 1000, "open_duration": "1s"}, "cache": cache},
        ],
    }


def upstream_behaviour(method, path, headers):
    if path.startswith("/breaker/"):
        return 503, {"content-type": "text/plain"}, b"down", 0
    if path.startswith("/cache/") or path.startswith("/all/"):
        return 200, {"content-type": "text/plain", "cache-control": "max-age=3600",
                     "vary": "accept"}, b"cached body " * 20, 0
    return 200, {"content-type": "text/plain"}, b"ok", 0


class Client:
    """Keep-alive requests to one Envoy; a closed connection is reopened."""

    def __init__(self, port):
        self.port, self.conn = port, None

    def get(self, path, headers=None, method="GET"):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.request(method, path, headers=headers or {})
                r = self.conn.getresponse()
                r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def expect(client, n, path, status, headers=None, method="GET"):
    for i in range(n):
        p = path(i) if callable(path) else path
        h = headers(i) if callable(headers) else headers
        got = client.get(p, h, method)
        if got not in (status if isinstance(status, tuple) else (status,)):
            raise SystemExit(f"pgo/train.py: {method} {p} answered {got}, expected {status}")


def bearer(token):
    return {"authorization": f"Bearer {token}"}


def phase(workdir, upstream, headers, full):
    envoy = harness.Envoy(workdir, document(headers), upstream.port, concurrency=1)
    envoy.start()
    try:
        c = Client(envoy.listen_port)
        expect(c, HOT, "/open/x", 200)
        expect(c, HOT, lambda i: f"/rl/{i % 7}", 200)
        if not full:
            return
        expect(c, WARM, "/tight/x", (200, 429), {"x-tenant": "t1"})
        expect(c, HOT, "/api/orders", 200, bearer(TOKENS["valid_RS256"]))
        for alg in ALGS:
            expect(c, COLD, "/api/orders", 200, bearer(TOKENS[f"valid_{alg}"]))
        expect(c, WARM, "/api/orders", 200,
               lambda i: bearer(mint_hs(claims(sub=f"user-{i}"))))
        expect(c, COLD, "/scoped/x", 200, bearer(TOKENS["valid_ES256"]))
        expect(c, COLD, "/scoped/x", 403, bearer(TOKENS["scope_read_only"]))
        for bad in ("tampered", "expired", "unknown_kid", "alg_none"):
            expect(c, COLD, "/api/orders", 401, bearer(TOKENS[bad]))
        expect(c, COLD, "/api/orders", 401)
        expect(c, HOT, "/cache/page", 200, {"accept": "text/plain"})
        expect(c, WARM, lambda i: f"/cache/item/{i}", 200, {"accept": "text/html"})
        expect(c, COLD, "/cache/page", 200, {"accept": "text/plain"}, method="HEAD")
        expect(c, COLD, lambda i: f"/cache/nostore/{i}", 200, {"cache-control": "no-cache"})
        expect(c, WARM, "/breaker/x", (503,))
        expect(c, HOT, lambda i: f"/all/{i % 50}", 200, bearer(TOKENS["valid_RS256"]))
        c.close()
    finally:
        envoy.stop()


def main():
    for name in ("MESHGUARD_NATIVE", "LLVM_PROFILE_FILE"):
        if not os.environ.get(name):
            raise SystemExit(f"pgo/train.py: {name} is not set (run it through `make native`)")
    os.environ["MESHGUARD_RUNTIME"] = "native"
    harness.envoy_bin()
    upstream = harness.Upstream()
    upstream.behaviour = upstream_behaviour
    try:
        with tempfile.TemporaryDirectory(prefix="meshguard-pgo-") as workdir:
            phase(workdir, upstream, "ietf", full=True)
            phase(workdir, upstream, "none", full=False)
    finally:
        upstream.stop()
    print(f"pgo/train.py: trained, {upstream.hits} requests reached the upstream")


if __name__ == "__main__":
    main()
