"""JWT verification in a real Envoy (--concurrency 2 unless said otherwise):
every algorithm, every rejection with its status and WWW-Authenticate,
token locations, claims to headers (and anti-spoofing), per-user rate
limits, remote JWKS (startup wait, one fetch per process, rotation, IdP
outage, IdP never answering) and metrics. Tokens come from the committed
fixtures (tests/fixtures/jwt) or are HMAC-minted with the stdlib."""

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import harness
from jwt_support import (ALGS, JWKS, TOKENS, JwksServer, b64u, b64u_decode, claims, jwk, mint_hs,
                         payload_of, wait_until)

SOURCES = [{"header": "authorization", "prefix": "Bearer "},
           {"cookie": "access_token"},
           {"query": "access_token"}]


def provider(**over):
    p = {"issuer": "https://issuer.test", "audiences": ["api"], "algorithms": ALGS,
         "jwks": {"inline": JWKS}, "from": SOURCES,
         "claims_to_headers": [{"claim": "sub", "header": "x-user"},
                               {"claim": "org.id", "header": "x-org"}],
         "payload_header": "x-jwt-payload"}
    p.update(over)
    return p


def config():
    return {
        "jwt_providers": {
            "main": provider(),
            "fwd": provider(forward=True, claims_to_headers=[{"claim": "sub", "header": "x-user"}],
                            payload_header=None),
        },
        "routes": [
            {"name": "api", "match": {"path_prefix": "/api/"}, "jwt": {"providers": ["main"]}},
            {"name": "scoped", "match": {"path_prefix": "/scoped/"},
             "jwt": {"providers": ["main"],
                     "claims": [{"claim": "scope", "contains": "orders:write"},
                                {"claim": "email_verified", "equals": True}]}},
            {"name": "opt", "match": {"path_prefix": "/opt/"},
             "jwt": {"providers": ["main"], "allow_missing": True}},
            {"name": "fwd", "match": {"path_prefix": "/fwd/"}, "jwt": {"providers": ["fwd"]}},
            {"name": "rl", "match": {"path_prefix": "/rl/"}, "jwt": {"providers": ["main"]},
             "rate_limit": [{"name": "per-user", "key": [{"claim": "sub"}], "capacity": 2,
                             "refill_tokens": 1, "refill_interval": "1h"}]},
        ],
    }


def _clean(p):
    # payload_header=None means "not set" in the helper above.
    return {k: v for k, v in p.items() if v is not None}


def make_config():
    c = config()
    c["jwt_providers"] = {k: _clean(v) for k, v in c["jwt_providers"].items()}
    return c


def bearer(tok):
    return {"authorization": f"Bearer {tok}"}


def assert_no_token(tok, headers, body):
    assert tok not in body.decode(errors="replace")
    for k, v in headers.items():
        assert tok not in v, k
    # Not even a large piece of it (signature segment).
    sig = tok.split(".")[-1]
    if len(sig) > 16:
        assert sig not in body.decode(errors="replace")


def assert_invalid(e, tok, path="/api/x", route="api", reason=None, headers=None):
    h = dict(headers or bearer(tok))
    hits = e._upstream.hits
    s, rh, body = e.request(path, headers=h)
    assert s == 401, (s, body)
    www = rh["www-authenticate"]
    m = re.fullmatch(r'Bearer realm="([^"]*)", error="invalid_token", error_description="([^"]*)"', www)
    assert m, www
    assert m.group(1) == route
    if reason is not None:
        assert m.group(2) == reason, www
    assert rh["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["error"] == "invalid_token"
    assert doc["error_description"] == m.group(2)
    assert_no_token(tok, rh, body)
    assert e._upstream.hits == hits, "a rejected request reached the upstream"
    return m.group(2)


def start(envoy, upstream, cfg=None, **kw):
    e = envoy(cfg or make_config(), **kw)
    e._upstream = upstream
    return e


def last_upstream(upstream):
    return upstream.requests[-1]


# ---------------------------------------------------------------- algorithms

def test_every_algorithm_is_accepted(envoy, upstream):
    e = start(envoy, upstream)
    for alg in ALGS:
        tok = TOKENS[f"valid_{alg}"]
        s, h, body = e.request(f"/api/{alg}", headers=bearer(tok))
        assert s == 200, (alg, s, h.get("www-authenticate"), body)
        method, path, hdrs = last_upstream(upstream)
        assert path == f"/api/{alg}"
        assert hdrs["x-user"] == "user-1"
    # RS* and ES* were checked by Envoy's native verify_signature (ES* after
    # each worker's self-test), PS*, EdDSA and HS* in wasm: one check each.
    native = [a for a in ALGS if a[:2] in ("RS", "ES")]
    assert len(native) == 5, ALGS
    assert e.stat("wasmcustom.meshguard.jwt.api.signature_checks_native") == len(native)
    assert e.stat("wasmcustom.meshguard.jwt.api.signature_checks_wasm") == len(ALGS) - len(native)
    # Tokens without kid are tried against the keys of the right type.
    for name in ("no_kid_RS256", "no_kid_ES256", "aud_array"):
        s, h, body = e.request("/api/nokid", headers=bearer(TOKENS[name]))
        assert s == 200, (name, s, h.get("www-authenticate"))
    assert upstream.hits == len(ALGS) + 3
    assert e.stat("wasmcustom.meshguard.jwt.api.allowed") == len(ALGS) + 3
    assert e.stat("wasmcustom.meshguard.jwt.api.denied") == 0
    log = e.log()
    for alg in ALGS:
        assert TOKENS[f"valid_{alg}"] not in log
        assert TOKENS[f"valid_{alg}"].split(".")[2] not in log
    # RS* went through Envoy's native verify_signature (a failed call is
    # logged once per worker, then falls back to wasm RSA).
    assert "foreign function is unavailable" not in log, log[-3000:]
    assert "does not verify" not in log, log[-3000:]


def bad_signature(tok):
    """`tok` with one character in the middle of its signature changed."""
    at = tok.rindex(".") + (len(tok) - tok.rindex(".")) // 2
    return tok[:at] + ("B" if tok[at] == "A" else "A") + tok[at + 1:]


def test_native_ecdsa_refuses_bad_signatures(envoy, upstream):
    """ES256 / ES384 through BoringSSL: a changed signature, one truncated,
    r and s swapped, and zeros are all refused; valid ones pass; each
    request costs one native check once the worker's self-test passed."""
    e = start(envoy, upstream)
    for alg, n in (("ES256", 32), ("ES384", 48)):
        tok = TOKENS[f"valid_{alg}"]
        head, sig = tok.rsplit(".", 1)
        raw = b64u_decode(sig)
        assert len(raw) == 2 * n
        for bad in (bad_signature(tok),
                    head + "." + b64u(raw[n:] + raw[:n]),
                    head + "." + b64u(bytes(2 * n)),
                    head + "." + b64u(raw[:-1])):
            assert_invalid(e, bad, reason="invalid signature")
        assert e.request("/api/x", headers=bearer(tok))[0] == 200
    # Per curve: 3 bad signatures and the good one went to the host; the
    # truncated one was refused by its size in wasm.
    assert e.stat("wasmcustom.meshguard.jwt.api.signature_checks_native") == 8
    assert e.stat("wasmcustom.meshguard.jwt.api.signature_checks_wasm") == 2
    log = e.log()
    assert "does not verify" not in log and "foreign function is unavailable" not in log, log[-3000:]


def test_default_allowlist_refuses_hmac(envoy, upstream):
    """Without "algorithms", HS* is not accepted even though an oct key exists."""
    cfg = make_config()
    del cfg["jwt_providers"]["main"]["algorithms"]
    e = start(envoy, upstream, cfg)
    assert e.request("/api/x", headers=bearer(TOKENS["valid_RS256"]))[0] == 200
    assert assert_invalid(e, TOKENS["valid_HS256"], reason="algorithm not allowed")
    # alg confusion is refused whatever the allowlist.
    assert_invalid(e, TOKENS["alg_confusion"])


# ---------------------------------------------------------------- rejections

def test_missing_token_is_401_without_error_attribute(envoy, upstream):
    e = start(envoy, upstream)
    for headers in ({}, {"authorization": "Basic dXNlcjpwYXNz"}, {"authorization": "Bearer "},
                    {"cookie": "other=1"}):
        s, h, body = e.request("/api/x", headers=headers)
        assert s == 401, headers
        assert h["www-authenticate"] == 'Bearer realm="api"', h["www-authenticate"]
        assert h["content-type"] == "application/json"
        assert json.loads(body)["error"] == "missing_token"
    assert upstream.hits == 0


REJECTIONS = [
    ("expired", "token expired"),
    ("nbf_future", "token not yet valid"),
    ("iat_future", "token issued in the future"),
    ("bad_iss", "issuer not accepted"),
    ("bad_aud", "audience not accepted"),
    ("no_aud", "audience not accepted"),
    ("no_exp", "missing exp claim"),
    ("tampered", "invalid signature"),
    ("tampered_payload", "invalid signature"),
    ("wrong_key_kid", "invalid signature"),
    ("alg_none", "unsupported algorithm"),
    ("alg_confusion", None),
    ("alg_confusion_der", None),
    ("es256_with_rsa_kid", None),
    ("unknown_kid", "unknown key id"),
    ("crit", "crit header parameter not supported"),
    ("big_claims", "token too large"),
]


def test_each_invalid_token_is_401_with_reason(envoy, upstream):
    e = start(envoy, upstream)
    seen = {}
    for name, reason in REJECTIONS:
        seen[name] = assert_invalid(e, TOKENS[name], reason=reason)
    # Algorithm confusion: the RSA public key is never an HMAC secret.
    assert seen["alg_confusion"] in ("no matching key", "invalid signature"), seen
    # Malformed tokens of every shape.
    for tok, reason in [("not-a-jwt", "malformed token"),
                        ("a.b", "malformed token"),
                        ("a.b.c.d", "malformed token"),
                        ("eyJhbGciOiJSUzI1NiJ9.!!!.sig", "malformed token payload"),
                        (TOKENS["valid_RS256"] + "=", None),
                        ("x" * 9000, "token too large")]:
        assert_invalid(e, tok, reason=reason)
    # Oversized: a real, validly signed token over 8 KiB.
    big = mint_hs(claims(pad="y" * 8500))
    assert len(big) > 8192
    assert_invalid(e, big, reason="token too large")
    assert upstream.hits == 0
    log = e.log()
    for name, _ in REJECTIONS:
        assert TOKENS[name] not in log, name
    assert big not in log


def mint_hs_text(header_text, payload_text):
    """An HS256 token over these exact JSON texts (a repeated member
    cannot be written from a dict): validly signed with the fixture key."""
    import hashlib
    import hmac
    from jwt_support import HS_SECRET
    si = b64u(header_text.encode()) + "." + b64u(payload_text.encode())
    return si + "." + b64u(hmac.new(HS_SECRET, si.encode(), hashlib.sha256).digest())


HS_HEADER = '{"alg":"HS256","typ":"JWT","kid":"hs-1"}'


def test_a_repeated_claim_or_header_parameter_is_401(envoy, upstream):
    """RFC 7515 4 / RFC 7519 4: a repeated name is refused, never read as
    the first or the last ({"sub":"alice","sub":"admin"}), at any depth and
    however spelled; the same token without the repeat passes."""
    e = start(envoy, upstream)
    body = json.dumps(claims(), separators=(",", ":"))
    assert body.startswith('{"iss":') and '"sub":"user-1"' in body
    good = mint_hs_text(HS_HEADER, body)
    assert e.request("/api/ok", headers=bearer(good))[0] == 200
    assert last_upstream(upstream)[2]["x-user"] == "user-1"
    repeated = [
        # sub twice, the other one first or last.
        (HS_HEADER, '{"sub":"admin",' + body[1:], "duplicate claim name"),
        (HS_HEADER, body[:-1] + ',"sub":"admin"}', "duplicate claim name"),
        # The escaped spelling is the same claim.
        (HS_HEADER, body[:-1] + ',"\\u0073ub":"admin"}', "duplicate claim name"),
        # exp twice: one far, one past.
        (HS_HEADER, body[:-1] + ',"exp":1}', "duplicate claim name"),
        # Nested: org.id is copied to x-org.
        (HS_HEADER, body.replace('"id":"acme"', '"id":"acme","id":"evil"'), "duplicate claim name"),
        # The header: kid, alg, any parameter.
        ('{"alg":"HS256","typ":"JWT","kid":"hs-1","kid":"hs-1"}', body, "duplicate header parameter"),
        ('{"alg":"HS256","alg":"HS256","kid":"hs-1"}', body, "duplicate header parameter"),
        ('{"alg":"HS256","typ":"JWT","typ":"JWT","kid":"hs-1"}', body, "duplicate header parameter"),
    ]
    for header, payload, reason in repeated:
        assert_invalid(e, mint_hs_text(header, payload), route="api", reason=reason)
    stats = e.stats()
    assert stats["wasmcustom.meshguard.jwt.api.allowed"] == 1
    assert stats["wasmcustom.meshguard.jwt.api.denied"] == len(repeated)
    assert upstream.hits == 1


def test_failed_claims_rule_is_403_insufficient_scope(envoy, upstream):
    e = start(envoy, upstream)
    tok = TOKENS["scope_read_only"]
    s, h, body = e.request("/scoped/x", headers=bearer(tok))
    assert s == 403
    assert re.fullmatch(r'Bearer realm="scoped", error="insufficient_scope", error_description="[^"]+"',
                        h["www-authenticate"]), h["www-authenticate"]
    assert h["content-type"] == "application/json"
    assert json.loads(body)["error"] == "insufficient_scope"
    assert_no_token(tok, h, body)
    # The same token is fine on a route without the rule; a full token passes the rule.
    assert e.request("/api/x", headers=bearer(tok))[0] == 200
    assert e.request("/scoped/x", headers=bearer(TOKENS["valid_ES256"]))[0] == 200
    assert upstream.hits == 2
    # Invalid beats scope: a bad token on the scoped route is 401.
    assert_invalid(e, TOKENS["expired"], path="/scoped/x", route="scoped", reason="token expired")


def test_allow_missing_passes_missing_but_rejects_invalid(envoy, upstream):
    e = start(envoy, upstream)
    s, h, _ = e.request("/opt/x", headers={"x-user": "admin", "x-org": "evil",
                                           "x-jwt-payload": "e30"})
    assert s == 200 and "www-authenticate" not in h
    _, _, hdrs = last_upstream(upstream)
    for spoofed in ("x-user", "x-org", "x-jwt-payload"):
        assert spoofed not in hdrs, (spoofed, hdrs)
    assert_invalid(e, TOKENS["tampered"], path="/opt/x", route="opt", reason="invalid signature")
    assert_invalid(e, "garbage", path="/opt/x", route="opt")
    s, _, _ = e.request("/opt/x", headers=bearer(TOKENS["valid_EdDSA"]))
    assert s == 200
    assert last_upstream(upstream)[2]["x-user"] == "user-1"
    assert upstream.hits == 2


# ---------------------------------------------------------------- extraction

def test_cookie_query_and_case_insensitive_scheme(envoy, upstream):
    e = start(envoy, upstream)
    tok = TOKENS["valid_ES384"]
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        s, _, _ = e.request("/api/h", headers={"authorization": f"{scheme} {tok}"})
        assert s == 200, scheme
        assert "authorization" not in last_upstream(upstream)[2]

    # Cookie: the token cookie is dropped upstream, the others are kept.
    s, _, _ = e.request("/api/c", headers={"cookie": f"theme=dark; access_token={tok}; lang=fr"})
    assert s == 200
    _, path, hdrs = last_upstream(upstream)
    assert tok not in hdrs.get("cookie", "")
    assert "theme=dark" in hdrs["cookie"] and "lang=fr" in hdrs["cookie"]
    assert hdrs["x-user"] == "user-1"
    s, _, _ = e.request("/api/c", headers={"cookie": f"access_token={tok}"})
    assert s == 200 and "cookie" not in last_upstream(upstream)[2]

    # Query: the parameter is dropped from :path, others are kept.
    s, _, _ = e.request(f"/api/q?a=1&access_token={tok}&b=2")
    assert s == 200
    _, path, hdrs = last_upstream(upstream)
    assert path == "/api/q?a=1&b=2", path
    s, _, _ = e.request(f"/api/q?access_token={tok}")
    assert s == 200 and last_upstream(upstream)[1] == "/api/q"

    # An invalid cookie / query token is rejected, not ignored.
    assert_invalid(e, TOKENS["expired"], headers={"cookie": f"access_token={TOKENS['expired']}"},
                   reason="token expired")
    hits = upstream.hits
    s, h, body = e.request(f"/api/q?access_token={TOKENS['tampered']}")
    assert s == 401 and 'error="invalid_token"' in h["www-authenticate"]
    assert_no_token(TOKENS["tampered"], h, body)
    assert upstream.hits == hits
    assert upstream.hits == 8


# ---------------------------------------------------------------- headers

def test_claims_to_headers_payload_header_and_spoofing(envoy, upstream):
    e = start(envoy, upstream)
    tok = TOKENS["valid_PS256"]
    spoof = {"x-user": "admin", "x-org": "evil", "x-jwt-payload": "e30"}
    s, _, _ = e.request("/api/x", headers={**bearer(tok), **spoof})
    assert s == 200
    _, _, hdrs = last_upstream(upstream)
    assert hdrs["x-user"] == "user-1"
    assert hdrs["x-org"] == "acme"  # nested claim org.id
    assert hdrs["x-jwt-payload"] == tok.split(".")[1]
    assert payload_of(tok)["sub"] == "user-1"
    assert "authorization" not in hdrs  # forward: false

    # Claim absent: the client's copy is removed, nothing is set.
    tok2 = mint_hs(claims(org=None, sub="nobody-org"))
    s, _, _ = e.request("/api/x", headers={**bearer(tok2), **spoof})
    assert s == 200
    _, _, hdrs = last_upstream(upstream)
    assert hdrs["x-user"] == "nobody-org"
    assert "x-org" not in hdrs, hdrs
    assert hdrs["x-jwt-payload"] == tok2.split(".")[1]

    # A claim with CR/LF is not turned into a header (and no header injection).
    s, _, _ = e.request("/api/x", headers={**bearer(TOKENS["claim_injection"]), **spoof})
    assert s == 200
    _, _, hdrs = last_upstream(upstream)
    assert "x-user" not in hdrs and "x-admin" not in hdrs, hdrs

    # A rejected request sends nothing upstream at all.
    hits = upstream.hits
    assert e.request("/api/x", headers=spoof)[0] == 401
    assert upstream.hits == hits == 3


def test_forward_true_keeps_the_token(envoy, upstream):
    e = start(envoy, upstream)
    tok = TOKENS["valid_RS512"]
    s, _, _ = e.request("/fwd/x", headers={**bearer(tok), "x-user": "admin", "x-jwt-payload": "e30"})
    assert s == 200
    _, _, hdrs = last_upstream(upstream)
    assert hdrs["authorization"] == f"Bearer {tok}"
    assert hdrs["x-user"] == "user-1"
    # payload_header is not configured on this provider: the client's copy passes
    # (only configured headers are owned by meshguard).
    s, _, _ = e.request(f"/fwd/q?access_token={tok}&z=1")
    assert s == 200
    assert last_upstream(upstream)[1] == f"/fwd/q?access_token={tok}&z=1"


# ---------------------------------------------------------------- rate limit

def test_rate_limit_keyed_by_sub(envoy, upstream):
    e = start(envoy, upstream)
    alice = mint_hs(claims(sub="alice"))
    alice2 = mint_hs(claims(sub="alice", iat=IAT_PLUS))  # another token, same user
    bob = mint_hs(claims(sub="bob"))
    assert e.request("/rl/1", headers=bearer(alice))[0] == 200
    assert e.request("/rl/2", headers=bearer(alice2))[0] == 200
    s, h, body = e.request("/rl/3", headers=bearer(alice))
    assert s == 429, s
    assert json.loads(body)["error"] == "rate_limited"
    assert_no_token(alice, h, body)
    # bob has his own bucket.
    assert e.request("/rl/4", headers=bearer(bob))[0] == 200
    assert e.request("/rl/5", headers=bearer(bob))[0] == 200
    assert e.request("/rl/6", headers=bearer(bob))[0] == 429
    # No token: 401 from JWT before the limiter (no shared "" bucket consumed).
    assert e.request("/rl/7")[0] == 401
    assert upstream.hits == 4
    assert e.stat("wasmcustom.meshguard.ratelimit.rl.per-user.allowed") == 4
    assert e.stat("wasmcustom.meshguard.ratelimit.rl.per-user.limited") == 2


IAT_PLUS = 1700000001


# ---------------------------------------------------------------- metrics

def test_metrics_and_token_cache(envoy, upstream):
    e = start(envoy, upstream)
    tok = TOKENS["valid_RS384"]
    n = 12
    for i in range(n):
        assert e.request(f"/api/{i}", headers=bearer(tok))[0] == 200
    for name in ("expired", "tampered", "unknown_kid"):
        assert e.request("/api/x", headers=bearer(TOKENS[name]))[0] == 401
    assert e.request("/api/x")[0] == 401
    stats = e.stats()
    assert stats["wasmcustom.meshguard.jwt.api.allowed"] == n
    assert stats["wasmcustom.meshguard.jwt.api.denied"] == 4
    # Per-worker cache: at most one miss per worker (2 workers).
    assert n - 2 <= stats["wasmcustom.meshguard.jwt.api.cache_hit"] <= n - 1, stats[
        "wasmcustom.meshguard.jwt.api.cache_hit"]
    assert stats.get("wasmcustom.meshguard.jwt.api.keys_pending", 0) == 0
    # Other routes' counters are untouched.
    assert stats["wasmcustom.meshguard.jwt.scoped.allowed"] == 0
    assert tok not in e.log()


# ---------------------------------------------------------------- remote JWKS

def remote_config(port_cluster="idp", cache_duration="10s", timeout=None):
    remote = {"cluster": port_cluster, "path": "/jwks.json", "cache_duration": cache_duration}
    if timeout:
        remote["timeout"] = timeout
    p = {"issuer": "https://issuer.test", "audiences": ["api"],
         "jwks": {"remote": remote},
         "claims_to_headers": [{"claim": "sub", "header": "x-user"}]}
    return {"jwt_providers": {"idp": p},
            "routes": [{"name": "api", "match": {"path_prefix": "/"}, "jwt": {"providers": ["idp"]}}]}


def rotated_jwks():
    # rsa-1's key material under a new kid: the fixture token "unknown_kid"
    # (kid rotated-9, signed by rsa-1) becomes valid; tokens naming "rsa-1" do not.
    k = jwk("rsa-1")
    k["kid"] = "rotated-9"
    return {"keys": [k]}


def test_remote_jwks_startup_requests_wait_for_keys(envoy, upstream):
    idp = JwksServer(JWKS, delay=1.0, delay_count=1)
    try:
        e = start(envoy, upstream, remote_config(),
                  extra_clusters=[harness.static_cluster("idp", idp.port)])
        tok = TOKENS["valid_ES256"]
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda i: e.request(f"/s{i}", headers=bearer(tok), timeout=15),
                                    range(8)))
        elapsed = time.monotonic() - t0
        statuses = [r[0] for r in results]
        assert statuses == [200] * 8, [(r[0], r[1].get("www-authenticate"), r[2]) for r in results]
        assert elapsed < 5, elapsed
        print(f"startup: 8 requests waiting for a JWKS served after 1 s took {elapsed:.2f}s")
        assert upstream.hits == 8
        assert idp.count == 1
        _, path, hdrs = idp.fetches[0]
        assert path == "/jwks.json"
        assert hdrs["host"] == "idp"  # authority defaults to the cluster name
        # Requests resumed after the wait got their header operations too.
        for _, _, uh in upstream.requests:
            assert uh.get("x-user") == "user-1" and "authorization" not in uh, uh
        stats = e.stats()
        assert stats["wasmcustom.meshguard.jwt.api.allowed"] == 8
        assert stats["wasmcustom.meshguard.jwt.api.denied"] == 0
        # The requests really waited (the IdP answered after 1 s).
        # Counted once per waiting request, not once per retry of it.
        assert 1 <= stats["wasmcustom.meshguard.jwt.api.keys_pending"] <= 8, stats[
            "wasmcustom.meshguard.jwt.api.keys_pending"]
        assert tok not in e.log()
    finally:
        idp.stop()


def test_remote_jwks_one_fetch_per_process_with_four_workers(envoy, upstream):
    idp = JwksServer(JWKS, delay=0.5, delay_count=1)
    try:
        # cache_duration 60s: no scheduled refresh (at 85-90% of it) can
        # fall inside the test on a slow host; only the startup fetch counts.
        e = start(envoy, upstream, remote_config(cache_duration="60s"), concurrency=4,
                  extra_clusters=[harness.static_cluster("idp", idp.port)])
        toks = [TOKENS[f"valid_{a}"] for a in ("RS256", "PS384", "ES256", "EdDSA")]
        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(
                lambda i: e.request(f"/p{i}", headers=bearer(toks[i % 4]), timeout=15)[0], range(32)))
        assert statuses == [200] * 32, statuses
        # Every worker has served; ticks have run several times since.
        stats = e.stats()
        busy = [k for k, v in stats.items()
                if k.startswith("listener.") and ".worker_" in k and k.endswith(".downstream_cx_total")
                and v > 0]
        assert len(busy) >= 2, busy
        wait_until(lambda: False, timeout=2.5)  # bounded: let every worker tick a few times
        assert idp.count == 1, [f[1] for f in idp.fetches]
        # HMAC is not in the default allowlist.
        assert e.request("/h", headers=bearer(TOKENS["valid_HS256"]))[0] == 401
    finally:
        idp.stop()


def test_remote_jwks_rotation_unknown_kid_refetch(envoy, upstream):
    idp = JwksServer(JWKS)
    try:
        e = start(envoy, upstream, remote_config(),
                  extra_clusters=[harness.static_cluster("idp", idp.port)])
        old = TOKENS["valid_RS256"]
        new = TOKENS["unknown_kid"]  # kid rotated-9
        assert e.request("/a", headers=bearer(old), timeout=15)[0] == 200
        assert idp.count == 1
        # The IdP rotates (new kid only) before any token with the new kid
        # arrives: the refetch that token schedules may run on any worker's
        # next tick, within milliseconds, so rotating after it would race.
        idp.set_jwks(rotated_jwks())
        s, h, _ = e.request("/b", headers=bearer(new))
        assert s == 401 and 'error_description="unknown key id"' in h["www-authenticate"]
        t0 = time.monotonic()
        ok = wait_until(lambda: e.request("/c", headers=bearer(new))[0] == 200, timeout=8, interval=0.2)
        took = time.monotonic() - t0
        assert ok, (idp.count, e.log()[-3000:])
        assert idp.count == 2, idp.count  # exactly one refetch for the unknown kid
        assert "unknown kid, JWKS refetch scheduled" in e.log()
        # The old kid is gone from the set (every worker re-reads the shared
        # record within 1 s). Tokens never seen before are checked against
        # the new set, so they fail everywhere.
        wait_until(lambda: False, timeout=1.2)
        fresh_old = [TOKENS[f"valid_{a}"] for a in ("PS256", "RS384", "PS512")] * 2
        statuses = [e.request("/d", headers=bearer(t))[0] for t in fresh_old]
        assert statuses == [401] * 6, statuses
        # So does the token accepted (and cached) before the rotation: the
        # verified-token cache holds a token only while its key is in the set.
        for _ in range(6):
            s, h, _ = e.request("/e", headers=bearer(old))
            assert s == 401 and 'error_description="unknown key id"' in h["www-authenticate"], (s, h)
        assert idp.count == 2, idp.count  # the unknown-kid cooldown holds
        assert new not in e.log() and old not in e.log()
        print(f"rotation: new kid accepted {took:.2f}s after the IdP switched")
    finally:
        idp.stop()


def test_remote_jwks_idp_down_keeps_last_good_keys(envoy, upstream):
    idp = JwksServer(JWKS)
    try:
        e = start(envoy, upstream, remote_config(),
                  extra_clusters=[harness.static_cluster("idp", idp.port)])
        tok = TOKENS["valid_PS512"]
        assert e.request("/a", headers=bearer(tok), timeout=15)[0] == 200
        assert idp.count == 1
        idp.stop()
        # Force a refetch (unknown kid) that now fails: connection refused.
        assert e.request("/b", headers=bearer(TOKENS["unknown_kid"]))[0] == 401
        assert wait_until(lambda: "JWKS fetch from cluster idp failed" in e.log(), timeout=8), \
            e.log()[-3000:]
        assert idp.count == 1  # the refetch really failed (nothing answered it)
        # The last good keys still work, on every worker, for new tokens too.
        statuses = [e.request(f"/c{i}", headers=bearer(TOKENS[f"valid_{a}"]))[0]
                    for i, a in enumerate(("RS256", "RS512", "ES384", "EdDSA") * 3)]
        assert statuses == [200] * 12, statuses
        assert e.request("/d", headers=bearer(TOKENS["tampered"]))[0] == 401
    finally:
        idp.stop()


def test_remote_jwks_never_answering_gives_503_after_deadline(envoy, upstream):
    dead_port = harness.free_port()  # nothing listens there
    e = start(envoy, upstream, remote_config(),
              extra_clusters=[harness.static_cluster("idp", dead_port)])
    tok = TOKENS["valid_RS256"]
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: (e.request(f"/x{i}", headers=bearer(tok), timeout=20),
                                           time.monotonic() - t0), range(4)))
    for (s, h, body), took in results:
        assert s == 503, (s, body)
        doc = json.loads(body)
        assert doc["error"] == "jwks_unavailable", doc
        assert h["content-type"] == "application/json"
        assert "retry-after" in h
        assert_no_token(tok, h, body)
        assert 4.0 <= took <= 8.0, took
    # A missing token needs no keys: still an immediate 401.
    s, h, _ = e.request("/y")
    assert s == 401 and h["www-authenticate"] == 'Bearer realm="api"'
    assert upstream.hits == 0
    stats = e.stats()
    # Each waiting request counts once in keys_pending (not once per 10 ms
    # retry), and the 503 counts as denied.
    assert stats["wasmcustom.meshguard.jwt.api.keys_pending"] == 4, stats
    assert stats["wasmcustom.meshguard.jwt.api.denied"] == 5, stats
    assert stats["wasmcustom.meshguard.jwt.api.allowed"] == 0
    assert "JWKS fetch from cluster idp failed" in e.log()
    assert tok not in e.log()


def test_remote_jwks_hanging_idp_gives_503_not_a_hang(envoy, upstream):
    """The IdP accepts the connection and never answers (timeout 1s)."""
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    accepted = []
    stop = threading.Event()

    def accept_loop():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                accepted.append(c)
            except OSError:
                pass

    th = threading.Thread(target=accept_loop, daemon=True)
    th.start()
    try:
        e = start(envoy, upstream, remote_config(timeout="1s"),
                  extra_clusters=[harness.static_cluster("idp", srv.getsockname()[1])])
        t0 = time.monotonic()
        s, h, body = e.request("/x", headers=bearer(TOKENS["valid_RS256"]), timeout=20)
        took = time.monotonic() - t0
        assert s == 503 and json.loads(body)["error"] == "jwks_unavailable", (s, body)
        assert took <= 8.0, took
        assert accepted, "the IdP was never contacted"
    finally:
        stop.set()
        th.join(timeout=2)
        for c in accepted:
            c.close()
        srv.close()


def test_remote_jwks_request_with_body_waits_for_keys(envoy, upstream):
    """A POST whose body arrives while the request waits for keys must not
    reach the upstream before the token was checked."""
    idp = JwksServer(JWKS, delay=2.0, delay_count=1)
    try:
        e = start(envoy, upstream, remote_config(),
                  extra_clusters=[harness.static_cluster("idp", idp.port)])
        body = b'{"order": 1}'
        with ThreadPoolExecutor(max_workers=2) as pool:
            bad = pool.submit(e.request, "/bad", method="POST", body=body,
                              headers={**bearer(TOKENS["tampered"]), "content-type": "application/json"},
                              timeout=15)
            good = pool.submit(e.request, "/good", method="POST", body=body,
                               headers={**bearer(TOKENS["valid_RS256"]), "content-type": "application/json"},
                               timeout=15)
            s_bad, h_bad, b_bad = bad.result()
            s_good, _, _ = good.result()
        paths = [r[1] for r in upstream.requests]
        assert s_bad == 401, (s_bad, b_bad, paths)
        assert "/bad" not in paths, paths
        assert s_good == 200
        assert paths == ["/good"], paths
    finally:
        idp.stop()


def test_any_listed_provider_and_header_ownership(envoy, upstream):
    """Two providers on one route: a token of either is accepted; the
    headers of both are stripped from the client's request."""
    with open(harness.os.path.join(harness.ROOT, "tests/fixtures/jwt/jwks_partner.json")) as f:
        partner_jwks = json.load(f)
    cfg = make_config()
    cfg["jwt_providers"]["partner"] = {
        "issuer": "https://partner.test", "audiences": ["api"],
        "jwks": {"inline_string": json.dumps(partner_jwks)},
        "claims_to_headers": [{"claim": "sub", "header": "x-partner"}]}
    cfg["routes"].insert(0, {"name": "both", "match": {"path_prefix": "/both/"},
                             "jwt": {"providers": ["main", "partner"]}})
    e = start(envoy, upstream, cfg)
    spoof = {"x-user": "admin", "x-org": "evil", "x-partner": "evil", "x-jwt-payload": "e30"}
    s, _, _ = e.request("/both/1", headers={**bearer(TOKENS["partner_ES256"]), **spoof})
    assert s == 200
    _, _, hdrs = last_upstream(upstream)
    assert hdrs["x-partner"] == "p-7"
    for h in ("x-user", "x-org", "x-jwt-payload", "authorization"):
        assert h not in hdrs, (h, hdrs)
    s, _, _ = e.request("/both/2", headers={**bearer(TOKENS["valid_RS256"]), **spoof})
    assert s == 200
    _, _, hdrs = last_upstream(upstream)
    assert hdrs["x-user"] == "user-1" and "x-partner" not in hdrs, hdrs
    # The partner's token is not valid on a main-only route.
    assert_invalid(e, TOKENS["partner_ES256"], reason="issuer not accepted")
    assert upstream.hits == 2


def test_clock_skew_and_cached_token_expiry(envoy, upstream):
    cfg = make_config()
    cfg["jwt_providers"]["strict"] = _clean(provider(clock_skew="0s", payload_header=None))
    cfg["routes"].insert(0, {"name": "strict", "match": {"path_prefix": "/strict/"},
                             "jwt": {"providers": ["strict"]}})
    e = start(envoy, upstream, cfg)
    now = int(time.time())
    # Default skew 60s: just expired / not yet valid by 30s is accepted; 120s is not.
    assert e.request("/api/1", headers=bearer(mint_hs(claims(exp=now - 30))))[0] == 200
    assert_invalid(e, mint_hs(claims(exp=now - 120)), reason="token expired")
    assert e.request("/api/2", headers=bearer(mint_hs(claims(nbf=now + 30))))[0] == 200
    assert_invalid(e, mint_hs(claims(nbf=now + 120)), reason="token not yet valid")
    # No skew: a token valid for 2 more seconds passes (and is cached on
    # each worker), then is refused once expired, cache or not.
    short = mint_hs(claims(exp=now + 3, sub="short"))
    for _ in range(4):
        assert e.request("/strict/a", headers=bearer(short))[0] == 200
    assert wait_until(lambda: time.time() >= now + 3.2, timeout=5)
    statuses = [e.request("/strict/b", headers=bearer(short))[0] for _ in range(6)]
    assert statuses == [401] * 6, statuses
    assert upstream.hits == 6


def test_remote_jwks_startup_retries_after_idp_error(envoy, upstream):
    """The IdP fails the first fetch (500): the filter retries after its
    backoff and the first requests still succeed within the wait deadline."""
    idp = JwksServer(JWKS, fail_first=1)
    try:
        e = start(envoy, upstream, remote_config(),
                  extra_clusters=[harness.static_cluster("idp", idp.port)])
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            statuses = list(pool.map(
                lambda i: e.request(f"/r{i}", headers=bearer(TOKENS["valid_ES384"]), timeout=15)[0],
                range(4)))
        took = time.monotonic() - t0
        assert statuses == [200] * 4, (statuses, idp.count)
        assert idp.count == 2, idp.count
        assert "HTTP status 500" in e.log()
        print(f"startup after one IdP error: {took:.2f}s")
    finally:
        idp.stop()
