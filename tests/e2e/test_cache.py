"""RFC 9111 response cache in a real Envoy: freshness, request and response
directives, Authorization, HEAD, Vary, conditional requests, revalidation,
stale-while-revalidate / stale-if-error, invalidation, size limits, the
memory bound, request collapsing, Cache-Status and metrics.

Route "c" (/c/...) caches; route "plain" (/n/...) does not."""

import email.utils
import re
import http.client
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

STATUS_RE = re.compile(r"^meshguard; (hit|fwd=[a-z-]+)(; .*)?$")


@pytest.fixture(autouse=True)
def deep_accept_queue(upstream):
    """Several tests open many upstream connections at once: a listen backlog
    of 5 (socketserver's default) drops SYNs, and the retransmission lands
    after the cluster's 1 s connect timeout."""
    upstream.server.socket.listen(128)
    # Timeout tests make Envoy drop upstream connections mid-response: no
    # BrokenPipe tracebacks from the origin's threads.
    upstream.server.handle_error = lambda *a: None


def cfg(cache=None, store=None):
    c = {"routes": [
        {"name": "c", "match": {"path_prefix": "/c/"}, "cache": dict(cache or {})},
        {"name": "plain", "match": {"path_prefix": "/n/"}},
    ]}
    if store:
        c["cache_store"] = store
    return c


# A freshness lifetime for tests that expect a hit right after storing and
# a stale entry after sleeping SHORT + 1.1 s. Not 1: the origin's Date has
# one-second resolution, so a max-age=1 response whose Date is from the
# previous second is already stale on arrival (RFC 9111 4.2.3, apparent age).
SHORT = 3


def serve(upstream, cache_control=None, body=b"hello", status=200, delay=0, **extra):
    """The origin answers every request with the same response."""
    h = {"content-type": "text/plain"}
    if cache_control is not None:
        h["cache-control"] = cache_control
    h.update({k.replace("_", "-"): v for k, v in extra.items()})
    upstream.behaviour = lambda m, p, hd: (status, dict(h), body, delay)


def hits(upstream, path):
    with upstream.lock:
        return sum(1 for _, p, _ in upstream.requests if p == path)


def last_request(upstream, path):
    with upstream.lock:
        return [r for r in upstream.requests if r[1] == path][-1]


def cs(h):
    """The meshguard member of Cache-Status (it must be there)."""
    v = h.get("cache-status")
    assert v is not None, f"no Cache-Status in {h}"
    member = [m.strip() for m in v.split(",") if m.strip().startswith("meshguard")]
    assert len(member) == 1, v
    assert STATUS_RE.match(member[0]), member[0]
    return member[0]


def ttl(status):
    m = re.search(r"; ttl=(-?\d+)", status)
    assert m, status
    return int(m.group(1))


def is_hit(h):
    return cs(h).startswith("meshguard; hit")


def is_stored(h):
    return "; stored" in cs(h).split("; detail=")[0] and not is_hit(h)


def detail(h):
    m = re.search(r"; detail=([a-z-]+)", cs(h))
    return m.group(1) if m else None


def wait_until(pred, timeout=5):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


# ------------------------------------------------------------ freshness

def test_fresh_response_is_stored_and_served_from_cache(envoy, upstream):
    e = envoy(cfg())
    serve(upstream, "max-age=60", body=b"fresh body")
    s, h, b = e.request("/c/a")
    assert (s, b) == (200, b"fresh body")
    origin_date = h["date"]
    first = cs(h)
    assert first.startswith("meshguard; fwd=") and "miss" in first, first
    assert is_stored(h), first
    assert "fwd-status=200" in first or first == "meshguard; fwd=miss; stored"

    s, h, b = e.request("/c/a")
    assert (s, b) == (200, b"fresh body")
    assert is_hit(h), h
    assert cs(h) == f"meshguard; hit; ttl={ttl(cs(h))}"
    assert 58 <= ttl(cs(h)) <= 60
    age0 = int(h["age"])
    assert 0 <= age0 <= 1
    assert h["content-type"] == "text/plain"

    time.sleep(1.1)
    s, h, b = e.request("/c/a")
    assert (s, b) == (200, b"fresh body") and is_hit(h)
    assert int(h["age"]) > age0, (age0, h["age"])
    assert ttl(cs(h)) < 60 - age0
    assert int(h["content-length"]) == len(b"fresh body")
    assert h["date"] == origin_date  # the stored Date, with Age on top
    assert hits(upstream, "/c/a") == 1

    st = e.stats()
    assert st["wasmcustom.meshguard.cache.c.hit"] == 2
    assert st["wasmcustom.meshguard.cache.c.miss"] == 1
    assert st["wasmcustom.meshguard.cache.c.stored"] == 1


def test_expiry(envoy, upstream):
    e = envoy(cfg())
    serve(upstream, f"max-age={SHORT}")
    assert is_stored(e.request("/c/x")[1])
    assert is_hit(e.request("/c/x")[1])
    time.sleep(SHORT + 1.1)
    s, h, _ = e.request("/c/x")
    assert s == 200 and not is_hit(h) and is_stored(h), cs(h)
    assert hits(upstream, "/c/x") == 2
    assert is_hit(e.request("/c/x")[1])
    assert hits(upstream, "/c/x") == 2


def test_s_maxage_wins_over_max_age(envoy, upstream):
    e = envoy(cfg())
    serve(upstream, f"max-age=60, s-maxage={SHORT}")
    e.request("/c/short")
    assert is_hit(e.request("/c/short")[1])
    time.sleep(SHORT + 1.1)
    assert not is_hit(e.request("/c/short")[1])
    assert hits(upstream, "/c/short") == 2

    serve(upstream, "max-age=0, s-maxage=60")
    e.request("/c/long")
    s, h, _ = e.request("/c/long")
    assert is_hit(h) and ttl(cs(h)) >= 58
    assert hits(upstream, "/c/long") == 1


def test_expires_and_date(envoy, upstream):
    e = envoy(cfg())
    now = time.time()
    # The origin sends its own Date (BaseHTTPRequestHandler); Expires is
    # relative to it.
    serve(upstream, None, expires=email.utils.formatdate(now + 60, usegmt=True))
    e.request("/c/exp60")
    s, h, _ = e.request("/c/exp60")
    assert is_hit(h) and 55 <= ttl(cs(h)) <= 61, cs(h)
    assert hits(upstream, "/c/exp60") == 1

    serve(upstream, None, expires=email.utils.formatdate(now - 60, usegmt=True))
    e.request("/c/past")
    assert not is_hit(e.request("/c/past")[1])
    assert hits(upstream, "/c/past") == 2

    serve(upstream, None, expires="0")  # invalid: already stale
    s, h, _ = e.request("/c/zero")
    assert not is_stored(h)
    e.request("/c/zero")
    assert hits(upstream, "/c/zero") == 2

    serve(upstream, None, expires=email.utils.formatdate(time.time() + 2, usegmt=True))
    e.request("/c/exp2")
    assert is_hit(e.request("/c/exp2")[1])
    time.sleep(3.1)
    assert not is_hit(e.request("/c/exp2")[1])
    assert hits(upstream, "/c/exp2") == 2

    # max-age wins over Expires.
    serve(upstream, "max-age=60", expires=email.utils.formatdate(now - 60, usegmt=True))
    e.request("/c/both")
    assert is_hit(e.request("/c/both")[1])


# ------------------------------------------------------------ response directives

@pytest.mark.parametrize("cc,why", [
    ("no-store, max-age=60", "no-store"),
    ("private, max-age=60", "private"),
    ('private="x-user", max-age=60', "private"),
])
def test_not_stored(envoy, upstream, cc, why):
    e = envoy(cfg())
    serve(upstream, cc)
    for _ in range(3):
        s, h, b = e.request("/c/ns")
        assert (s, b) == (200, b"hello")
        assert not is_hit(h) and not is_stored(h)
        assert detail(h) == why, cs(h)
    assert hits(upstream, "/c/ns") == 3


def test_no_cache_response_is_stored_but_revalidated(envoy, upstream):
    e = envoy(cfg())
    etag = '"v1"'

    def origin(m, p, h):
        if h.get("if-none-match") == etag:
            return 304, {"etag": etag, "cache-control": "no-cache"}, b"", 0
        return 200, {"etag": etag, "cache-control": "no-cache", "content-type": "text/plain"}, b"full body", 0

    upstream.behaviour = origin
    s, h, b = e.request("/c/nc")
    assert (s, b) == (200, b"full body") and is_stored(h)
    for i in range(2):
        s, h, b = e.request("/c/nc")
        assert (s, b) == (200, b"full body"), (s, h, b)
        assert last_request(upstream, "/c/nc")[2].get("if-none-match") == etag
        st = cs(h)
        assert "fwd=stale" in st and "fwd-status=304" in st, st
    assert hits(upstream, "/c/nc") == 3


def test_must_revalidate_never_serves_stale(envoy, upstream):
    e = envoy(cfg())
    serve(upstream, f"max-age={SHORT}, must-revalidate, stale-if-error=60, "
                    "stale-while-revalidate=60", body=b"v1")
    e.request("/c/mr")
    assert is_hit(e.request("/c/mr")[1])
    time.sleep(SHORT + 1.1)
    # max-stale does not override must-revalidate
    s, h, b = e.request("/c/mr", headers={"cache-control": "max-stale=100"})
    assert not is_hit(h) and hits(upstream, "/c/mr") == 2
    time.sleep(SHORT + 1.1)
    serve(upstream, "max-age=1", status=500, body=b"boom")
    s, h, b = e.request("/c/mr")
    assert (s, b) == (500, b"boom"), cs(h)  # no stale-if-error either


# ------------------------------------------------------------ request directives

def test_request_no_cache_and_pragma_go_upstream(envoy, upstream):
    e = envoy(cfg())
    serve(upstream, "max-age=60", etag='"e"')
    e.request("/c/r")
    assert is_hit(e.request("/c/r")[1])
    for hdrs in ({"cache-control": "no-cache"}, {"pragma": "no-cache"}):
        n = hits(upstream, "/c/r")
        s, h, b = e.request("/c/r", headers=hdrs)
        assert (s, b) == (200, b"hello") and not is_hit(h), (hdrs, cs(h))
        assert hits(upstream, "/c/r") == n + 1
        # forwarded with the stored validators
        assert last_request(upstream, "/c/r")[2].get("if-none-match") == '"e"'
    # Pragma is ignored when Cache-Control is present
    s, h, _ = e.request("/c/r", headers={"pragma": "no-cache", "cache-control": "max-stale=5"})
    assert is_hit(h), cs(h)


def test_request_no_store(envoy, upstream):
    e = envoy(cfg())
    serve(upstream, "max-age=60")
    s, h, _ = e.request("/c/rns", headers={"cache-control": "no-store"})
    assert not is_stored(h) and detail(h) == "request-no-store", cs(h)
    e.request("/c/rns")
    assert hits(upstream, "/c/rns") == 2
    # a request no-store may still be served a hit
    s, h, _ = e.request("/c/rns", headers={"cache-control": "no-store"})
    assert is_hit(h)
    assert hits(upstream, "/c/rns") == 2


def test_request_max_age_min_fresh_max_stale(envoy, upstream):
    e = envoy(cfg())
    serve(upstream, f"max-age={SHORT}")
    e.request("/c/q")
    time.sleep(1.1)
    # max-age=0: the stored response (age >= 1) is too old
    s, h, _ = e.request("/c/q", headers={"cache-control": "max-age=0"})
    assert not is_hit(h) and cs(h).startswith("meshguard; fwd=request"), cs(h)
    assert hits(upstream, "/c/q") == 2
    # the refetched entry is young: max-age=30 accepts it
    s, h, _ = e.request("/c/q", headers={"cache-control": "max-age=30"})
    assert is_hit(h), cs(h)
    # min-fresh: needs more than the few seconds left
    s, h, _ = e.request("/c/q", headers={"cache-control": "min-fresh=30"})
    assert not is_hit(h), cs(h)
    assert hits(upstream, "/c/q") == 3
    s, h, _ = e.request("/c/q", headers={"cache-control": "min-fresh=1"})
    assert is_hit(h), cs(h)
    time.sleep(SHORT + 1.1)
    # stale now: max-stale accepts it, with a negative ttl
    s, h, b = e.request("/c/q", headers={"cache-control": "max-stale=60"})
    assert is_hit(h) and ttl(cs(h)) < 0 and b == b"hello", cs(h)
    s, h, b = e.request("/c/q", headers={"cache-control": "max-stale"})
    assert is_hit(h), cs(h)
    s, h, b = e.request("/c/q", headers={"cache-control": "max-stale=0"})
    assert not is_hit(h), cs(h)
    assert hits(upstream, "/c/q") == 4


def test_only_if_cached(envoy, upstream):
    e = envoy(cfg())
    serve(upstream, f"max-age={SHORT}")
    s, h, b = e.request("/c/oic", headers={"cache-control": "only-if-cached"})
    assert s == 504 and "only-if-cached" in cs(h)
    assert b == b"only-if-cached: no stored response\n"
    assert hits(upstream, "/c/oic") == 0
    s, h, _ = e.request("/c/oic")
    assert s == 200 and is_stored(h), cs(h)
    s, h, b = e.request("/c/oic", headers={"cache-control": "only-if-cached"})
    assert (s, b) == (200, b"hello") and is_hit(h)
    time.sleep(SHORT + 1.1)
    s, h, b = e.request("/c/oic", headers={"cache-control": "only-if-cached"})
    assert s == 504, cs(h)
    assert b == b"only-if-cached: the stored response would need validating with the origin\n"
    s, h, _ = e.request("/c/oic", headers={"cache-control": "only-if-cached, max-stale=60"})
    assert s == 200 and is_hit(h)
    assert hits(upstream, "/c/oic") == 1


# ------------------------------------------------------------ Authorization

def test_authorization(envoy, upstream):
    e = envoy(cfg())
    auth = {"authorization": "Bearer abc"}
    serve(upstream, "max-age=60")
    # not stored from an Authorization request
    s, h, _ = e.request("/c/auth1", headers=auth)
    assert not is_stored(h) and detail(h) == "authorization", cs(h)
    e.request("/c/auth1", headers=auth)
    assert hits(upstream, "/c/auth1") == 2
    # a stored plain entry is not served to an Authorization request
    e.request("/c/auth1")
    assert is_hit(e.request("/c/auth1")[1])
    s, h, _ = e.request("/c/auth1", headers=auth)
    assert not is_hit(h), cs(h)
    assert hits(upstream, "/c/auth1") == 4
    # public / s-maxage / must-revalidate allow it
    for i, cc in enumerate(["public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"]):
        serve(upstream, cc)
        path = f"/c/auth-ok{i}"
        s, h, _ = e.request(path, headers=auth)
        assert is_stored(h), (cc, cs(h))
        s, h, _ = e.request(path, headers=auth)
        assert is_hit(h), (cc, cs(h))
        assert hits(upstream, path) == 1


# ------------------------------------------------------------ HEAD

def test_head_served_from_stored_get(envoy, upstream):
    e = envoy(cfg())
    serve(upstream, "max-age=60", body=b"0123456789")
    e.request("/c/h")
    s, h, b = e.request("/c/h", method="HEAD")
    assert s == 200 and b == b"" and is_hit(h), cs(h)
    # The headers a GET would get (RFC 9110 9.3.2), not a chunked nothing.
    assert h.get("content-length") == "10" and h.get("content-type") == "text/plain", h
    assert "transfer-encoding" not in h, h
    # No body bytes follow the HEAD response on the connection: the next
    # response on it parses.
    conn = http.client.HTTPConnection("127.0.0.1", e.listen_port, timeout=10)
    try:
        for method, body in [("HEAD", b""), ("GET", b"0123456789"), ("HEAD", b""), ("GET", b"0123456789")]:
            conn.request(method, "/c/h")
            r = conn.getresponse()
            assert (r.status, r.read(), r.getheader("content-length")) == (200, body, "10")
    finally:
        conn.close()
    assert hits(upstream, "/c/h") == 1
    # HEAD on an uncached URI goes upstream and is not stored
    s, h, b = e.request("/c/h2", method="HEAD")
    assert s == 200 and not is_stored(h), cs(h)
    s, h, b = e.request("/c/h2")
    assert b == b"0123456789" and is_stored(h), cs(h)
    assert hits(upstream, "/c/h2") == 2


# ------------------------------------------------------------ Vary

def test_vary_on_allowed_header_keeps_variants(envoy, upstream):
    e = envoy(cfg())
    upstream.behaviour = lambda m, p, h: (
        200, {"cache-control": "max-age=60", "vary": "Accept", "content-type": "text/plain"},
        ("for " + h.get("accept", "-")).encode(), 0)
    assert e.request("/c/v", headers={"accept": "text/html"})[2] == b"for text/html"
    assert e.request("/c/v", headers={"accept": "application/json"})[2] == b"for application/json"
    s, h, b = e.request("/c/v", headers={"accept": "text/html"})
    assert b == b"for text/html" and is_hit(h)
    s, h, b = e.request("/c/v", headers={"accept": "application/json"})
    assert b == b"for application/json" and is_hit(h)
    s, h, b = e.request("/c/v", headers={"accept": "image/png"})
    assert b == b"for image/png" and "fwd=vary-miss" in cs(h), cs(h)
    assert hits(upstream, "/c/v") == 3


@pytest.mark.parametrize("vary,why", [("X-Custom", "vary-not-allowed"), ("*", "vary-star")])
def test_vary_not_stored(envoy, upstream, vary, why):
    e = envoy(cfg())
    serve(upstream, "max-age=60", vary=vary)
    for _ in range(2):
        s, h, _ = e.request("/c/vn", headers={"x-custom": "1"})
        assert not is_stored(h) and detail(h) == why, cs(h)
    assert hits(upstream, "/c/vn") == 2


# ------------------------------------------------------------ conditional requests

def test_client_conditionals_answered_304_from_fresh_entry(envoy, upstream):
    e = envoy(cfg())
    lm = email.utils.formatdate(time.time() - 3600, usegmt=True)
    serve(upstream, "max-age=60", etag='"abc"', last_modified=lm)
    e.request("/c/cond")
    for inm in ['"abc"', 'W/"abc"', '"zzz", "abc"', "*"]:
        s, h, b = e.request("/c/cond", headers={"if-none-match": inm})
        assert s == 304 and b == b"" and is_hit(h), (inm, s, cs(h))
        assert h.get("etag") == '"abc"'
    s, h, b = e.request("/c/cond", headers={"if-none-match": '"other"'})
    assert (s, b) == (200, b"hello") and is_hit(h)
    s, h, b = e.request("/c/cond", headers={"if-modified-since": email.utils.formatdate(time.time(), usegmt=True)})
    assert s == 304 and is_hit(h)
    s, h, b = e.request("/c/cond", headers={"if-modified-since": email.utils.formatdate(time.time() - 7200, usegmt=True)})
    assert (s, b) == (200, b"hello")
    # If-None-Match wins over If-Modified-Since
    s, h, b = e.request("/c/cond", headers={"if-none-match": '"other"',
                                            "if-modified-since": email.utils.formatdate(time.time(), usegmt=True)})
    assert s == 200
    assert hits(upstream, "/c/cond") == 1


def test_stale_entry_revalidated_with_validators(envoy, upstream):
    e = envoy(cfg())
    lm = email.utils.formatdate(time.time() - 3600, usegmt=True)

    def origin(m, p, h):
        if h.get("if-none-match") == '"r1"':
            return 304, {"etag": '"r1"', "cache-control": "max-age=60", "x-fresh": "yes"}, b"", 0
        return 200, {"etag": '"r1"', "last-modified": lm, "cache-control": "max-age=1",
                     "content-type": "text/plain"}, b"the representation", 0

    upstream.behaviour = origin
    e.request("/c/rv")
    time.sleep(2.1)
    s, h, b = e.request("/c/rv")
    assert (s, b) == (200, b"the representation"), (s, h)
    _, _, req = last_request(upstream, "/c/rv")
    assert req.get("if-none-match") == '"r1"' and req.get("if-modified-since") == lm, req
    st = cs(h)
    assert "fwd=stale" in st and "fwd-status=304" in st, st
    assert h.get("x-fresh") == "yes"  # headers updated from the 304
    # the refreshed entry (max-age=60 from the 304) serves hits
    s, h, b = e.request("/c/rv")
    assert b == b"the representation" and is_hit(h) and ttl(cs(h)) >= 58, cs(h)
    assert hits(upstream, "/c/rv") == 2
    # origin says the representation changed: new 200 replaces it
    upstream.behaviour = lambda m, p, h: (200, {"etag": '"r2"', "cache-control": "max-age=60"}, b"new", 0)
    s, h, b = e.request("/c/rv", headers={"cache-control": "no-cache"})
    assert b == b"new" and is_stored(h)
    assert e.request("/c/rv")[2] == b"new"


def test_stale_while_revalidate(envoy, upstream):
    e = envoy(cfg(), concurrency=4)
    serve(upstream, "max-age=1, stale-while-revalidate=30", body=b"v1")
    e.request("/c/swr")
    time.sleep(2.1)
    serve(upstream, "max-age=60", body=b"v2", delay=1.0)
    results = {}
    t = threading.Thread(target=lambda: results.setdefault("first", e.request("/c/swr")))
    t.start()
    assert wait_until(lambda: hits(upstream, "/c/swr") == 2)
    t0 = time.time()
    s, h, b = e.request("/c/swr")
    took = time.time() - t0
    assert (s, b) == (200, b"v1"), (s, b, h)
    assert is_hit(h) and detail(h) == "stale-while-revalidate" and ttl(cs(h)) < 0, cs(h)
    assert took < 0.5, took
    t.join()
    assert results["first"][2] == b"v2"
    s, h, b = e.request("/c/swr")
    assert b == b"v2" and is_hit(h)
    assert hits(upstream, "/c/swr") == 2


def test_stale_if_error_on_5xx(envoy, upstream):
    e = envoy(cfg())
    serve(upstream, "max-age=1, stale-if-error=60", body=b"good")
    e.request("/c/sie")
    time.sleep(2.1)
    serve(upstream, None, status=500, body=b"boom")
    s, h, b = e.request("/c/sie")
    assert (s, b) == (200, b"good"), (s, b, h)
    st = cs(h)
    assert "fwd=stale" in st and "fwd-status=500" in st and "detail=stale-if-error" in st, st
    serve(upstream, None, status=404, body=b"gone")  # not an error status
    assert e.request("/c/sie")[0] == 404
    # without stale-if-error the 500 goes through
    serve(upstream, "max-age=1", body=b"good")
    e.request("/c/nosie")
    time.sleep(2.1)
    serve(upstream, None, status=503, body=b"boom")
    s, h, b = e.request("/c/nosie")
    assert (s, b) == (503, b"boom") and cs(h)


def test_stale_if_error_when_origin_fails(envoy, upstream):
    e = envoy(cfg(), route_timeout="0.5s")
    serve(upstream, "max-age=1, stale-if-error=60", body=b"good")
    e.request("/c/sie-t")
    e.request("/c/sie-r")
    time.sleep(2.1)
    # upstream timeout
    serve(upstream, "max-age=1", body=b"late", delay=1.0)
    s, h, b = e.request("/c/sie-t")
    assert (s, b) == (200, b"good"), (s, b, h)
    assert "detail=stale-if-error" in cs(h)

    # origin unreachable: resets open connections, refuses new ones
    def reset(m, p, h):
        raise ConnectionResetError("gone")

    upstream.behaviour = reset
    upstream.server.shutdown()
    upstream.server.server_close()
    s, h, b = e.request("/c/sie-r")
    assert (s, b) == (200, b"good"), (s, b, h)
    assert "detail=stale-if-error" in cs(h)
    # nothing stored: Envoy's own 503, still with Cache-Status
    s, h, b = e.request("/c/never")
    assert s == 503 and cs(h), h


# ------------------------------------------------------------ invalidation

@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_unsafe_methods_invalidate(envoy, upstream, method):
    e = envoy(cfg())
    serve(upstream, "max-age=60")
    e.request("/c/inv")
    e.request("/c/other")
    assert is_hit(e.request("/c/inv")[1])
    s, h, _ = e.request("/c/inv", method=method, body=b"x")
    assert s == 200 and "fwd=method" in cs(h), cs(h)
    s, h, _ = e.request("/c/inv")
    assert not is_hit(h) and is_stored(h), cs(h)
    assert hits(upstream, "/c/inv") == 3  # GET, unsafe, GET
    assert is_hit(e.request("/c/other")[1])  # other URIs untouched
    # an error answer does not invalidate
    serve(upstream, "max-age=60", status=403)
    e.request("/c/inv", method=method, body=b"x")
    assert is_hit(e.request("/c/inv")[1])


# ------------------------------------------------------------ Set-Cookie

def test_set_cookie(envoy, upstream):
    e = envoy(cfg())
    serve(upstream, "max-age=60", set_cookie="sid=secret")
    s, h, _ = e.request("/c/sc")
    assert h.get("set-cookie") == "sid=secret" and detail(h) == "set-cookie", cs(h)
    e.request("/c/sc")
    assert hits(upstream, "/c/sc") == 2
    serve(upstream, "public, max-age=60", set_cookie="sid=secret")
    s, h, _ = e.request("/c/scp")
    assert is_stored(h) and h.get("set-cookie") == "sid=secret"  # the origin's own answer keeps it
    s, h, _ = e.request("/c/scp")
    assert is_hit(h) and "set-cookie" not in h, h
    assert hits(upstream, "/c/scp") == 1


# ------------------------------------------------------------ size limits and memory

def test_larger_than_max_entry_bytes_passes_through(envoy, upstream):
    e = envoy(cfg(store={"max_bytes": 1048576, "max_entry_bytes": 8192}))
    big = bytes(range(256)) * 100  # 25600 bytes
    serve(upstream, "max-age=60", body=big)
    for _ in range(2):
        s, h, b = e.request("/c/big")
        assert s == 200 and b == big and detail(h) == "too-big", cs(h)
    assert hits(upstream, "/c/big") == 2
    small = b"s" * 4000
    serve(upstream, "max-age=60", body=small)
    e.request("/c/small")
    s, h, b = e.request("/c/small")
    assert b == small and is_hit(h)


def fill(e, upstream, n, size, prefix):
    body = b"m" * size
    serve(upstream, "max-age=300", body=body)
    with ThreadPoolExecutor(max_workers=8) as pool:
        res = list(pool.map(lambda i: e.request(f"/c/{prefix}{i}"), range(n)))
    assert all(s == 200 and len(b) == size for s, _, b in res)


def growth(envoy, upstream, max_bytes, n, size):
    e = envoy(cfg(store={"max_bytes": max_bytes, "max_entry_bytes": 65536}), concurrency=2)
    fill(e, upstream, 40, size, "warm")  # warm up wasm heaps and connection pools
    before = e.allocated_bytes()
    fill(e, upstream, n, size, "m")
    after = e.allocated_bytes()
    return e, after - before


def test_memory_stays_bounded(envoy, upstream):
    max_bytes = 256 * 1024
    size = 8 * 1024
    n = 10 * max_bytes // size  # 320 distinct entries, 2.5 MiB of bodies
    e, bounded = growth(envoy, upstream, max_bytes, n, size)
    # a hit still works afterwards
    serve(upstream, "max-age=300", body=b"after")
    e.request("/c/after")
    s, h, b = e.request("/c/after")
    assert b == b"after" and is_hit(h), cs(h)
    assert e.stat("wasmcustom.meshguard.cache.c.evicted") > 0
    e.stop()

    # the same load with a budget that holds everything
    _, unbounded = growth(envoy, upstream, 64 * 1024 * 1024, n, size)
    print(f"allocated growth: bounded={bounded} unbounded={unbounded} budget={max_bytes}")
    assert unbounded > 2 * 1024 * 1024, unbounded  # the load would need ~2.5 MiB
    assert bounded < 2 * max_bytes, bounded


# ------------------------------------------------------------ request collapsing

def test_stampede_collapses_to_one_origin_request(envoy, upstream):
    e = envoy(cfg(), concurrency=4)
    serve(upstream, "max-age=60", body=b"collapsed", delay=0.3)
    barrier = threading.Barrier(50)

    def one(_):
        barrier.wait()
        return e.request("/c/stampede")

    with ThreadPoolExecutor(max_workers=50) as pool:
        res = list(pool.map(one, range(50)))
    assert [s for s, _, _ in res] == [200] * 50
    assert {b for _, _, b in res} == {b"collapsed"}
    for _, h, _ in res:
        cs(h)
    assert hits(upstream, "/c/stampede") == 1
    assert sum(1 for _, h, _ in res if is_hit(h)) == 49


# ------------------------------------------------------------ Cache-Status and metrics

def test_cache_status_on_every_cache_route_response_only(envoy, upstream):
    e = envoy(cfg())
    for status, cc in [(200, "max-age=60"), (404, None), (500, None), (302, "no-store"), (204, "max-age=60")]:
        serve(upstream, cc, status=status, body=b"" if status == 204 else b"x")
        for _ in range(2):
            s, h, _ = e.request(f"/c/st{status}")
            assert s == status
            cs(h)
        s, h, _ = e.request(f"/n/st{status}")
        assert s == status and "cache-status" not in h, h
    s, h, _ = e.request("/c/st200", method="POST", body=b"y")
    cs(h)
    s, h, _ = e.request("/c/st200", method="OPTIONS")
    cs(h)
    assert hits(upstream, "/n/st200") == 1
    # an upstream Cache-Status member is kept, meshguard's appended
    serve(upstream, "max-age=60", cache_status="origin-cdn; hit")
    s, h, _ = e.request("/c/chain")
    assert h["cache-status"].startswith("origin-cdn; hit, meshguard"), h["cache-status"]
    s, h, _ = e.request("/c/chain")
    assert h["cache-status"].startswith("origin-cdn; hit, meshguard; hit"), h["cache-status"]


def test_metrics(envoy, upstream):
    e = envoy(cfg())
    serve(upstream, "max-age=60")
    for i in range(3):
        e.request(f"/c/m{i}")
    for i in range(3):
        for _ in range(2):
            e.request(f"/c/m{i}")
    e.request("/c/m0", method="POST")
    st = e.stats()
    assert st["wasmcustom.meshguard.cache.c.miss"] == 3
    assert st["wasmcustom.meshguard.cache.c.stored"] == 3
    assert st["wasmcustom.meshguard.cache.c.hit"] == 6
    assert st["wasmcustom.meshguard.cache.c.bypass"] == 1
    assert not any(k.startswith("wasmcustom.meshguard.cache.plain.") for k in st)


# ------------------------------------------------------------ keys and config

def test_query_key_headers_and_ignore_query(envoy, upstream):
    e = envoy({"routes": [
        {"name": "c", "match": {"path_prefix": "/c/"}, "cache": {"key_headers": ["x-tenant"]}},
        {"name": "iq", "match": {"path_prefix": "/iq/"}, "cache": {"ignore_query": True}},
    ]})
    upstream.behaviour = lambda m, p, h: (
        200, {"cache-control": "max-age=60"}, f"{p} {h.get('x-tenant', '-')}".encode(), 0)
    for _ in range(2):
        assert e.request("/c/k?a=1")[2] == b"/c/k?a=1 -"
        assert e.request("/c/k?a=2")[2] == b"/c/k?a=2 -"
        assert e.request("/c/k?a=1", headers={"x-tenant": "t1"})[2] == b"/c/k?a=1 t1"
        assert e.request("/c/k?a=1", headers={"x-tenant": "t2"})[2] == b"/c/k?a=1 t2"
    assert upstream.hits == 4
    assert e.request("/iq/k?a=1")[2] == b"/iq/k?a=1 -"
    s, h, b = e.request("/iq/k?a=2")
    assert b == b"/iq/k?a=1 -" and is_hit(h)


def test_default_ttl_and_heuristic_freshness(envoy, upstream):
    e = envoy({"routes": [
        {"name": "d", "match": {"path_prefix": "/d/"}, "cache": {"default_ttl": "60s"}},
        {"name": "h", "match": {"path_prefix": "/h/"}, "cache": {"heuristic_freshness": True}},
        {"name": "c", "match": {"path_prefix": "/c/"}, "cache": {}},
    ]})
    serve(upstream, None, last_modified=email.utils.formatdate(time.time() - 100 * 86400, usegmt=True))
    for p in ("/d/x", "/h/x", "/c/x"):
        e.request(p)
    s, h, _ = e.request("/d/x")
    assert is_hit(h) and 55 <= ttl(cs(h)) <= 60, cs(h)
    s, h, _ = e.request("/h/x")
    assert is_hit(h) and 86000 <= ttl(cs(h)) <= 86400, cs(h)  # capped at one day
    s, h, _ = e.request("/c/x")
    assert not is_hit(h) and detail(h) == "no-freshness", cs(h)


def test_age_from_origin_and_empty_bodies(envoy, upstream):
    e = envoy(cfg())
    serve(upstream, "max-age=60", age="50")
    e.request("/c/aged")
    s, h, _ = e.request("/c/aged")
    assert is_hit(h) and int(h["age"]) >= 50 and ttl(cs(h)) <= 10, (h["age"], cs(h))
    serve(upstream, "max-age=60", status=204, body=b"")
    e.request("/c/204")
    s, h, b = e.request("/c/204")
    assert (s, b) == (204, b"") and is_hit(h), cs(h)
    serve(upstream, "max-age=60", body=b"")
    e.request("/c/empty")
    s, h, b = e.request("/c/empty")
    assert (s, b) == (200, b"") and is_hit(h), cs(h)
    serve(upstream, "max-age=60", status=404, body=b"nope")
    e.request("/c/404")
    s, h, b = e.request("/c/404")
    assert (s, b) == (404, b"nope") and is_hit(h), cs(h)


def test_location_of_unsafe_response_is_invalidated(envoy, upstream):
    e = envoy(cfg())
    serve(upstream, "max-age=60")
    for p in ("/c/list", "/c/item", "/c/third"):
        e.request(p)
        assert is_hit(e.request(p)[1])
    upstream.behaviour = lambda m, p, h: (201, {"location": "/c/item",
                                                "content-location": "http://127.0.0.1/c/third"}, b"", 0)
    e.request("/c/list", method="POST", body=b"{}")
    serve(upstream, "max-age=60")
    # Location (relative) and Content-Location (absolute, same host) too
    for p, n in (("/c/list", 3), ("/c/item", 2), ("/c/third", 2)):  # /c/list: GET, POST, GET
        assert not is_hit(e.request(p)[1]), p
        assert hits(upstream, p) == n, p


def test_multi_chunk_body_round_trips(envoy, upstream):
    e = envoy(cfg())
    import random
    body = bytes(random.Random(7).getrandbits(8) for _ in range(300_000))
    serve(upstream, "max-age=60", body=body, content_type="application/octet-stream")
    s, h, b = e.request("/c/blob")
    assert b == body and is_stored(h)
    s, h, b = e.request("/c/blob")
    assert s == 200 and is_hit(h) and b == body
    assert h["content-type"] == "application/octet-stream"


# ------------------------------------------------------------ locks

def test_uncacheable_key_is_not_serialised(envoy, upstream):
    e = envoy(cfg(), concurrency=4)
    serve(upstream, "no-store", body=b"ns", delay=0.3)
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=16) as pool:
        res = list(pool.map(lambda i: e.request("/c/pass"), range(16)))
    took = time.time() - t0
    assert all(s == 200 and b == b"ns" for s, _, b in res), [(s, b, h) for s, h, b in res if (s, b) != (200, b"ns")]
    assert all(detail(h) == "no-store" for _, h, _ in res), [cs(h) for _, h, _ in res]
    assert hits(upstream, "/c/pass") == 16
    # at most one wait behind the first, never one by one (16 x 0.3 s)
    assert took < 2.5, took


def test_client_abort_releases_the_fill_lock(envoy, upstream):
    e = envoy(cfg(), concurrency=4)
    first = threading.Event()

    def origin(m, p, h):
        if not first.is_set():
            first.set()
            return 200, {"cache-control": "max-age=60"}, b"slow", 3.0
        return 200, {"cache-control": "max-age=60"}, b"fast", 0

    upstream.behaviour = origin
    t = threading.Thread(target=lambda: pytest.raises(Exception, e.request, "/c/abort", timeout=0.5))
    t.start()
    assert first.wait(5)
    t0 = time.time()
    s, h, b = e.request("/c/abort")
    took = time.time() - t0
    t.join()
    assert (s, b) == (200, b"fast"), (s, b, cs(h))
    assert took < 2.0, took


def test_validator_mismatch_is_resolved_with_a_full_request(envoy, upstream):
    """A revalidation answered 304 for another representation (RFC 9111
    4.3.4) never reaches an unconditional client: meshguard sends the
    request again without conditions and answers with the full response."""
    e = envoy(cfg())
    version = ["a"]
    broken = [False]

    def origin(m, p, h):
        v = version[0]
        if "if-none-match" in h or "if-modified-since" in h or broken[0]:
            return 304, {"etag": f'"{v}"', "cache-control": f"max-age={SHORT}"}, b"", 0
        return 200, {"etag": f'"{v}"', "cache-control": f"max-age={SHORT}",
                     "last-modified": email.utils.formatdate(time.time() - 3600, usegmt=True)}, \
            f"body-{v}".encode(), 0

    upstream.behaviour = origin
    s, h, b = e.request("/c/vm", headers={"x-who": "alice"})
    assert (s, b) == (200, b"body-a") and is_stored(h), (s, h)
    version[0] = "b"
    time.sleep(SHORT + 1.1)
    n = hits(upstream, "/c/vm")
    s, h, b = e.request("/c/vm", headers={"x-who": "alice"})
    assert (s, b) == (200, b"body-b"), (s, b, h)
    assert h.get("etag") == '"b"', h
    assert cs(h) == "meshguard; fwd=stale; fwd-status=200; stored; detail=validator-mismatch", cs(h)
    # two upstream requests: the revalidation, then the full one without
    # any condition but with the client's other headers
    assert hits(upstream, "/c/vm") == n + 2
    _, _, full = last_request(upstream, "/c/vm")
    full = {k.lower(): v for k, v in full.items()}
    assert "if-none-match" not in full and "if-modified-since" not in full, full
    assert full.get("x-who") == "alice", full
    # the full response was stored: a hit
    s, h, b = e.request("/c/vm")
    assert (s, b) == (200, b"body-b") and cs(h).startswith("meshguard; hit"), (s, h)
    assert hits(upstream, "/c/vm") == n + 2
    # a client whose own If-None-Match the 304 answers gets that 304
    version[0] = "c"
    time.sleep(SHORT + 1.1)
    s, h, b = e.request("/c/vm", headers={"if-none-match": '"c"'})
    assert (s, b) == (304, b"") and detail(h) == "validator-mismatch", (s, h)
    # an origin that answers 304 even to the unconditional request: a clear
    # 502, counted, never a 304 to an unconditional client
    e.request("/c/vm")  # a miss (the entry was dropped): stores "c"
    version[0] = "d"
    broken[0] = True
    time.sleep(SHORT + 1.1)
    s, h, b = e.request("/c/vm")
    assert s == 502 and h.get("retry-after") == "0", (s, b, h)
    assert detail(h) == "validator-mismatch-refetch-failed", cs(h)
    stats = e.stats()
    assert stats.get("wasmcustom.meshguard.cache.c.refetched", 0) >= 1, stats
    assert stats.get("wasmcustom.meshguard.cache.c.refetch_failed") == 1, stats


# ------------------------------------------------------------ responses without Content-Length

class ChunkedOrigin:
    """An origin that streams its body in chunks without Content-Length."""

    def __init__(self, body, cache_control="max-age=60", delay=0):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        self.hits = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.hits += 1
                time.sleep(delay)
                self.send_response(200)
                self.send_header("cache-control", cache_control)
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for i in range(0, len(body), 4096):
                    part = body[i:i + 4096]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

        class Server(ThreadingHTTPServer):
            request_queue_size = 128
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_chunked_responses_stored_within_and_passed_beyond_the_limit(envoy):
    small = bytes(i % 251 for i in range(6000))
    big = bytes(i % 241 for i in range(40000))
    for body, stored in ((small, True), (big, False)):
        o = ChunkedOrigin(body)
        try:
            e = envoy(cfg(store={"max_bytes": 1048576, "max_entry_bytes": 16384}), upstream_port=o.port)
            s, h, b = e.request("/c/chunked")
            assert s == 200 and b == body
            cs(h)
            s, h, b = e.request("/c/chunked")
            assert s == 200 and b == body
            assert is_hit(h) == stored, cs(h)
            assert o.hits == (1 if stored else 2)
            e.stop()
        finally:
            o.stop()


def test_request_no_cache_revalidation_reports_fwd_request(envoy, upstream):
    e = envoy(cfg())

    def origin(m, p, h):
        if h.get("if-none-match") == '"e1"':
            return 304, {"etag": '"e1"', "cache-control": "max-age=60"}, b"", 0
        return 200, {"etag": '"e1"', "cache-control": "max-age=60", "content-type": "text/plain"}, b"rep", 0

    upstream.behaviour = origin
    e.request("/c/fr")
    s, h, b = e.request("/c/fr", headers={"cache-control": "no-cache"})
    assert (s, b) == (200, b"rep")
    assert last_request(upstream, "/c/fr")[2].get("if-none-match") == '"e1"'
    # the stored response was fresh: the request's directives sent it upstream
    assert cs(h).startswith("meshguard; fwd=request; fwd-status=304"), cs(h)
    # a stale one is reported as fwd=stale
    upstream.behaviour = lambda m, p, h: (
        (304, {"etag": '"e1"', "cache-control": "max-age=60"}, b"", 0) if h.get("if-none-match")
        else (200, {"etag": '"e1"', "cache-control": "max-age=1"}, b"rep", 0))
    e.request("/c/fr2")
    time.sleep(2.1)
    s, h, b = e.request("/c/fr2")
    assert b == b"rep" and cs(h).startswith("meshguard; fwd=stale; fwd-status=304"), cs(h)


def test_stampede_on_a_too_big_chunked_response_is_not_serialised(envoy):
    big = bytes(i % 241 for i in range(40000))
    o = ChunkedOrigin(big, delay=0.4)
    try:
        e = envoy(cfg(store={"max_bytes": 1048576, "max_entry_bytes": 16384}),
                  concurrency=4, upstream_port=o.port)
        barrier = threading.Barrier(12)

        def one(_):
            barrier.wait()
            return e.request("/c/bigstampede")

        t0 = time.time()
        with ThreadPoolExecutor(max_workers=12) as pool:
            res = list(pool.map(one, range(12)))
        took = time.time() - t0
        assert all(s == 200 and b == big for s, _, b in res)
        for _, h, _ in res:
            cs(h)
        # the first response shows the key is not storable: the others go
        # upstream together, not one after another (12 x 0.4 s)
        assert took < 3.0, took
        assert o.hits == 12
    finally:
        o.stop()


def test_concurrent_revalidation_collapses(envoy, upstream):
    e = envoy(cfg(), concurrency=4)
    serve(upstream, "max-age=1", etag='"k"', body=b"kept")
    e.request("/c/crv")
    time.sleep(2.1)
    upstream.behaviour = lambda m, p, h: (
        (304, {"etag": '"k"', "cache-control": "max-age=60"}, b"", 0.3) if h.get("if-none-match") == '"k"'
        else (200, {"cache-control": "max-age=60"}, b"wrong", 0))
    barrier = threading.Barrier(20)

    def one(_):
        barrier.wait()
        return e.request("/c/crv")

    with ThreadPoolExecutor(max_workers=20) as pool:
        res = list(pool.map(one, range(20)))
    assert all(s == 200 and b == b"kept" for s, _, b in res), [(s, b) for s, _, b in res]
    statuses = [cs(h) for _, h, _ in res]
    assert hits(upstream, "/c/crv") == 2, statuses


def test_stale_if_error_during_an_outage_is_served_to_concurrent_requests(envoy, upstream):
    e = envoy(cfg(), concurrency=4, route_timeout="0.5s")
    serve(upstream, "max-age=1, stale-if-error=60", body=b"good")
    e.request("/c/outage")
    time.sleep(2.1)
    serve(upstream, "max-age=60", body=b"late", delay=1.0)  # every request times out
    barrier = threading.Barrier(12)

    def one(_):
        barrier.wait()
        return e.request("/c/outage")

    t0 = time.time()
    with ThreadPoolExecutor(max_workers=12) as pool:
        res = list(pool.map(one, range(12)))
    took = time.time() - t0
    assert [(s, b) for s, _, b in res] == [(200, b"good")] * 12, [(s, b, h) for s, h, b in res]
    for _, h, _ in res:
        assert "detail=stale-if-error" in cs(h), cs(h)
    # not one timeout after another (12 x 0.5 s)
    assert took < 3.0, took
