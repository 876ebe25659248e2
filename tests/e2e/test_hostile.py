"""Hostile requests and responses through a real Envoy loading meshguard
(`--concurrency 1`, so "the next request" runs on the very worker that
handled the hostile one). Every case has a defined outcome (asserted here,
listed in docs/operations.md, "Hostile input"), no wasm trap or panic (Envoy's
log and its V8 VM counters), and the next normal request succeeds.

Envoy's own limits come first (its HTTP codec and connection manager
apply them before any filter runs): more than 100 request
headers or request headers over `max_request_headers_kb` (60 KiB by
default) get Envoy's 431, invalid bytes in the request line its 400;
meshguard never sees those requests. To put meshguard itself in front of
60 KB values and a 64 KB token, these Envoys allow 96 KiB of request
headers, and the upstream cluster accepts up to 2,000 response headers."""

import http.client
import json
import socket
import time

import harness
import vmcheck
from jwt_support import JWKS, JwksServer, b64u, claims, mint_hs, HS_SECRET

ALGS = ["RS256", "ES256", "EdDSA", "HS256"]
# Python's client refuses responses of more than 100 headers by default.
http.client._MAXHEADERS = 5000


def provider(jwks):
    return {"issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ALGS,
            "jwks": jwks,
            "from": [{"header": "authorization", "prefix": "Bearer "}, {"cookie": "at"},
                     {"query": "at"}],
            "claims_to_headers": [{"claim": "sub", "header": "x-user"}]}


def config(extra_providers=None, extra_routes=()):
    providers = {"inline": provider({"inline": JWKS})}
    providers.update(extra_providers or {})
    return {
        "jwt_providers": providers,
        "routes": list(extra_routes) + [
            {"name": "jwt", "match": {"path_prefix": "/jwt"}, "jwt": {"providers": ["inline"]}},
            {"name": "rl", "match": {"path_prefix": "/rl"},
             "rate_limit": [{"name": "keyed", "capacity": 1000, "refill_tokens": 1000,
                             "refill_interval": "1s",
                             "key": [{"header": "x-client"}, {"cookie": "session"},
                                     {"query": "k"}, "client_ip"]}]},
            {"name": "cache", "match": {"path_prefix": "/cache"},
             "cache": {"methods": ["GET"], "vary_allowlist": ["accept"]}},
            {"name": "breaker", "match": {"path_prefix": "/breaker"},
             "circuit_breaker": {"consecutive_failures": 5}},
        ],
    }


def bigger_limits(doc):
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["max_request_headers_kb"] = 96
    up = doc["static_resources"]["clusters"][0]
    up["common_http_protocol_options"] = {"max_headers_count": 2000}
    return doc


def envoy_with_limits(tmp_path, upstream, cfg, **kw):
    e = harness.Envoy(tmp_path, cfg, upstream.port, concurrency=1, **kw)
    bigger_limits(e.doc)
    return e.start()


class Multi(list):
    """Response headers with repeats: [(name, value), ...]."""

    def items(self):
        return list(self)


def raw(port, data, timeout=10):
    """Sends raw bytes; returns the status code Envoy answered (0: none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        try:
            while b"\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except socket.timeout:
            pass
    line = buf.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[1].isdigit() else 0


def get(port, target, headers=()):
    lines = [b"GET " + target + b" HTTP/1.1", b"host: h", b"connection: close"]
    lines += [n + b": " + v for n, v in headers]
    return raw(port, b"\r\n".join(lines) + b"\r\n\r\n")


class Checked:
    """Runs cases on one Envoy: each outcome asserted, then a normal request
    on the same worker must succeed, and no trap may have happened."""

    def __init__(self, e, upstream):
        self.e = e
        self.upstream = upstream
        self.vms = vmcheck.vm_stats(e)
        self.outcomes = []

    def case(self, name, got, want):
        ok = got == want or (isinstance(want, tuple) and not isinstance(got, tuple) and got in want)
        self.outcomes.append((name, got, want, ok))
        s = self.e.request("/normal")[0]
        assert s == 200, f"after {name}: the next normal request got {s}"
        vmcheck.assert_no_trap(self.e, self.vms)

    def report(self):
        """Prints the matrix; fails on any outcome other than the defined one
        (all cases run first, so one run shows every difference)."""
        for n, g, w, ok in self.outcomes:
            print(f"hostile: {'ok ' if ok else 'BAD'} {n} -> {g} (defined: {w})")
        bad = [(n, g, w) for n, g, w, ok in self.outcomes if not ok]
        assert not bad, f"outcomes other than the defined ones: {bad}"


def test_hostile_request_headers_path_query_and_cookies(tmp_path, upstream):
    e = envoy_with_limits(tmp_path, upstream, config())
    try:
        c = Checked(e, upstream)
        p = e.listen_port
        many = [(b"x-h%d" % i, b"v") for i in range(150)]
        c.case("150 request headers (Envoy's limit is 100)", get(p, b"/rl/a", many), 431)
        c.case("95 request headers", get(p, b"/rl/a", many[:95]), 200)
        c.case("95 headers on a JWT route, no token", get(p, b"/jwt", many[:95]), 401)
        big = b"v" * (60 * 1024)
        c.case("60 KB x-client (rate limit key)", get(p, b"/rl/a", [(b"x-client", big)]), 200)
        c.case("60 KB cookie (rate limit key)", get(p, b"/rl/a", [(b"cookie", b"session=" + big)]), 200)
        c.case("60 KB accept on a cache route", get(p, b"/cache/a", [(b"accept", big)]), 200)
        c.case("60 KB value, 97 KB in total (over max_request_headers_kb)",
               get(p, b"/rl/a", [(b"x-a", big), (b"x-b", big[:37 * 1024])]), 431)
        bad = b"\xff\xfe\xc3\x28\x80"
        c.case("invalid UTF-8 in a header value", get(p, b"/rl/a", [(b"x-client", bad)]), 200)
        c.case("invalid UTF-8 in a cookie", get(p, b"/rl/a", [(b"cookie", b"session=" + bad)]), 200)
        c.case("invalid UTF-8 in the query (raw)", get(p, b"/rl/a?k=" + bad), 400)
        c.case("percent-encoded invalid UTF-8 and NUL in the query",
               get(p, b"/rl/a?k=%ff%fe%00%c3%28&at=%00"), 200)
        c.case("invalid UTF-8 in the path (raw)", get(p, b"/rl/\xff\xfe"), 400)
        c.case("control byte in the path", get(p, b"/rl/\x01a"), 400)
        c.case("control byte (0x01) in a header value", get(p, b"/rl/a", [(b"x-client", b"a\x01b")]), 400)
        c.case("DEL (0x7f) in a header value", get(p, b"/rl/a", [(b"x-client", b"a\x7fb")]), 400)
        c.case("obs-text (0x80-0xff) in a header value", get(p, b"/rl/a", [(b"x-client", b"a\xa0\xff")]), 200)
        c.case("cookie made of separators", get(p, b"/rl/a", [(b"cookie", b";;;=;=;session;==")]), 200)
        c.case("invalid UTF-8 bearer token", get(p, b"/jwt", [(b"authorization", b"Bearer \xff.\xfe.\x80")]), 401)
        c.case("token cookie with invalid UTF-8", get(p, b"/jwt", [(b"cookie", b"at=\xff\xfe")]), 401)
        c.case("x-forwarded-for garbage", get(p, b"/rl/a", [(b"x-forwarded-for", b"\xff, ::::, 999.1.1.1,,")]), 200)
        c.case("1,000 query parameters", get(p, b"/rl/a?" + b"&".join(b"k%d=%d" % (i, i) for i in range(1000))), 200)
        c.report()
    finally:
        e.stop()


def hs_token(payload_json_bytes, kid="hs-1"):
    """An HS256 token over an arbitrary payload (bytes of JSON text)."""
    import hashlib
    import hmac
    h = b64u(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    si = h + "." + b64u(payload_json_bytes)
    return si + "." + b64u(hmac.new(HS_SECRET, si.encode(), hashlib.sha256).digest())


def test_hostile_tokens(tmp_path, upstream):
    e = envoy_with_limits(tmp_path, upstream, config())
    try:
        c = Checked(e, upstream)
        p = e.listen_port

        def bearer(tok):
            return get(p, b"/jwt", [(b"authorization", b"Bearer " + tok.encode())])

        good = mint_hs(claims())
        c.case("a valid token", bearer(good), 200)
        c.case("64 KB bearer token", bearer("a" * (64 * 1024)), 401)
        c.case("64 KB token of three segments", bearer("a" * 30000 + "." + "b" * 30000 + "." + "c" * 5000), 401)
        base = claims()
        # A claim nested deeper than the parser's 128 levels cannot be checked
        # for repeated members: the token fails closed (401); 100 levels pass.
        within = json.dumps(base)[:-1] + ', "deep": ' + "[" * 100 + "]" * 100 + "}"
        c.case("payload with a claim nested 100 deep", bearer(hs_token(within.encode())), 200)
        nested = json.dumps(base)[:-1] + ', "deep": ' + "[" * 2000 + "]" * 2000 + "}"
        c.case("payload with a claim nested 2,000 deep", bearer(hs_token(nested.encode())), 401)
        nested_obj = json.dumps(base)[:-1] + ', "deep": ' + '{"a":' * 800 + "1" + "}" * 800 + "}"
        c.case("payload with 800 nested objects", bearer(hs_token(nested_obj.encode())), 401)
        c.case("payload nested 3,000 deep (over 8 KiB: too large)",
               bearer(hs_token((json.dumps(base)[:-1] + ', "deep": ' + "[" * 3000 + "]" * 3000 + "}").encode())), 401)
        c.case("payload that is 2,000 nested arrays, not an object",
               bearer(hs_token(("[" * 2000 + "]" * 2000).encode())), 401)
        deep_sub = json.dumps({**base, "sub": None})[:-1]
        deep_sub = deep_sub.replace('"sub": null', '"sub": ' + "[" * 2000 + "]" * 2000) + "}"
        hits = len(upstream.requests)
        c.case("sub (forwarded as x-user) is 2,000 nested arrays", bearer(hs_token(deep_sub.encode())), 401)
        forwarded = [r for r in upstream.requests[hits:] if r[1] == "/jwt"]
        assert not forwarded, forwarded[:1]
        for name, exp in [("exp = 10^30", "1000000000000000000000000000000"),
                          ("exp = 2^64", "18446744073709551616"),
                          ("exp = 1e400 (not a finite double)", "1e400"),
                          ("exp = -2^63 - 1", "-9223372036854775809")]:
            doc = json.dumps({**base, "exp": 0})[:-1].replace('"exp": 0', '"exp": ' + exp) + "}"
            c.case(name, bearer(hs_token(doc.encode())), 200 if exp[0] == "1" and exp != "1e400" else 401)
        for name, nbf in [("nbf = 10^30", "1000000000000000000000000000000"),
                          ("nbf = -10^30", "-1000000000000000000000000000000")]:
            doc = json.dumps({**base, "nbf": 0})[:-1].replace('"nbf": 0', '"nbf": ' + nbf) + "}"
            c.case(name, bearer(hs_token(doc.encode())), 401 if nbf[0] == "1" else 200)
        c.case("iat = 10^30", bearer(hs_token((json.dumps({**base, "iat": 0})[:-1].replace(
            '"iat": 0', '"iat": 1000000000000000000000000000000') + "}").encode())), 401)
        c.case("a valid token again", bearer(good), 200)
        c.report()
    finally:
        e.stop()


def test_hostile_jwks_documents(tmp_path, upstream):
    hs = next(k for k in JWKS["keys"] if k["kid"] == "hs-1")
    # 10,000 keys: the usable one first, then 9,999 RSA keys too short to use.
    many = {"keys": [hs] + [{"kty": "RSA", "kid": f"k{i}", "n": "AQAB", "e": "AQAB"}
                            for i in range(9999)]}
    many_text = json.dumps(many)
    # Past the 256 KiB limit of a JWKS body, so the 10,000 small entries
    # must be small: use the RSA stubs (~45 bytes each, ~450 KB in all).
    huge = {"keys": [hs], "pad": "x" * (10 * 1024 * 1024)}
    small_many = {"keys": [hs] + [{"kty": "x"}] * 9999}  # 10,000 keys in 130 KB
    idp_many = JwksServer(many)
    idp_small_many = JwksServer(small_many)
    idp_huge = JwksServer(huge)
    try:
        def remote(port_cluster):
            return provider({"remote": {"cluster": port_cluster, "path": "/jwks.json",
                                        "cache_duration": "10m"}})

        cfg = config(
            extra_providers={"many": remote("idp_many"), "small_many": remote("idp_small_many"),
                             "huge": remote("idp_huge")},
            extra_routes=[{"name": "many", "match": {"path_prefix": "/many"}, "jwt": {"providers": ["many"]}},
                          {"name": "small_many", "match": {"path_prefix": "/smallmany"},
                           "jwt": {"providers": ["small_many"]}},
                          {"name": "huge", "match": {"path_prefix": "/huge"}, "jwt": {"providers": ["huge"]}}])
        e = envoy_with_limits(tmp_path, upstream, cfg, extra_clusters=[
            harness.static_cluster("idp_many", idp_many.port),
            harness.static_cluster("idp_small_many", idp_small_many.port),
            harness.static_cluster("idp_huge", idp_huge.port)])
        try:
            c = Checked(e, upstream)
            tok = mint_hs(claims())
            h = [(b"authorization", b"Bearer " + tok.encode())]
            print(f"JWKS sizes: 10,000 RSA stubs {len(many_text)} bytes, "
                  f"10,000 tiny {len(json.dumps(small_many))} bytes, huge {len(json.dumps(huge))} bytes")
            t0 = time.monotonic()
            c.case(f"JWKS of 10,000 keys, {len(many_text) // 1024} KiB (over 256 KiB)",
                   get(e.listen_port, b"/many", h), 503)
            c.case("JWKS of 10,000 entries in 137 KiB (1 usable, 9,999 unusable)",
                   get(e.listen_port, b"/smallmany", h), 200)
            c.case("JWKS of 10 MB", get(e.listen_port, b"/huge", h), 503)
            assert time.monotonic() - t0 < 20
            assert idp_many.count >= 1 and idp_huge.count >= 1 and idp_small_many.count >= 1
            log = e.log()
            assert "JWKS fetch from cluster idp_many failed (JWKS body too large)" in log
            assert "JWKS fetch from cluster idp_huge failed (JWKS body too large)" in log
            skipped = log.count("jwt provider small_many: skipping JWKS key")
            print(f"JWKS of 10,000 entries: {skipped} 'skipping JWKS key' warning lines")
            assert skipped >= 1
            c.report()
        finally:
            e.stop()
    finally:
        idp_many.stop()
        idp_small_many.stop()
        idp_huge.stop()


def test_hostile_responses(tmp_path, upstream):
    e = envoy_with_limits(tmp_path, upstream, config())
    try:
        c = Checked(e, upstream)
        answers = {
            "/cache/maxage-huge": Multi([("cache-control", "max-age=99999999999999999999999")]),
            "/cache/maxage-2p63": Multi([("cache-control", "max-age=9223372036854775808")]),
            "/cache/vary-star": Multi([("cache-control", "max-age=60"), ("vary", "*")]),
            "/cache/vary-200": Multi([("cache-control", "max-age=60"),
                                      ("vary", ", ".join(f"x-h{i}" for i in range(200)))]),
            "/cache/cookies": Multi([("cache-control", "max-age=60")] +
                                    [("set-cookie", f"c{i}=v{i}; Path=/") for i in range(1000)]),
            "/cache/cookies-public": Multi([("cache-control", "public, max-age=60")] +
                                           [("set-cookie", f"c{i}=v{i}") for i in range(1000)]),
            "/cache/date-9999": Multi([("cache-control", "max-age=60"),
                                       ("date", "Fri, 31 Dec 9999 23:59:59 GMT")]),
            "/cache/expires-9999": Multi([("date", "Sun, 06 Dec 2026 00:00:00 GMT"),
                                          ("expires", "Fri, 31 Dec 9999 23:59:59 GMT")]),
            "/cache/age-huge": Multi([("cache-control", "max-age=60"), ("age", "99999999999999999999999")]),
            "/cache/many-headers": Multi([("cache-control", "max-age=60")] +
                                         [(f"x-r{i}", "v") for i in range(300)]),
            "/breaker/cookies": Multi([("set-cookie", f"c{i}=v") for i in range(1000)]),
        }

        def behaviour(method, path, headers):
            return 200, answers.get(path, Multi([("content-type", "text/plain")])), b"body", 0

        upstream.behaviour = behaviour

        def twice(path):
            s1, h1, _ = e.request(path)
            s2, h2, _ = e.request(path)
            return s1, h1.get("cache-status", ""), s2, h2.get("cache-status", "")

        for path, want_stored in [("/cache/maxage-huge", True), ("/cache/maxage-2p63", True),
                                  ("/cache/vary-star", False), ("/cache/vary-200", False),
                                  ("/cache/cookies", False), ("/cache/cookies-public", True),
                                  ("/cache/date-9999", True), ("/cache/expires-9999", True),
                                  ("/cache/age-huge", False), ("/cache/many-headers", False)]:
            s1, cs1, s2, cs2 = twice(path)
            hit = "; hit" in cs2
            c.case(f"response {path}: served from the cache={want_stored} ({cs1} / {cs2})",
                   (s1, s2, hit), (200, 200, want_stored))
        s, h, _ = e.request("/breaker/cookies")
        c.case("1,000 Set-Cookie through a breaker route", (s, h.get("set-cookie", "").count("=v")), (200, 1000))
        c.report()
    finally:
        e.stop()


def test_the_trap_check_sees_a_real_trap(tmp_path, upstream):
    """The no-trap checks above can fail: a module whose request callback
    traps leaves the lines `vmcheck` looks for."""
    from test_failure_mode import envoy_with
    e = envoy_with(tmp_path, upstream, fail_open=False)
    try:
        assert e.request("/")[0] == 503
        lines = wait_for_lines(e)
        assert lines, e.log()[-3000:]
        print("a trap as Envoy logs it:", lines[0])
    finally:
        e.stop()


def wait_for_lines(e, timeout=5):
    end = time.time() + timeout
    while time.time() < end:
        lines = vmcheck.trap_lines(e.log())
        if lines:
            return lines
        time.sleep(0.1)
    return []
