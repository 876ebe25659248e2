"""RFC 9111 corner cases of the response cache in a real Envoy, with an
origin that writes its response byte for byte (repeated or malformed header
lines, Transfer-Encoding, a 304 with a body length): freshness at second
boundaries, invalid `Age`, 304 updates, byte-exact stored headers,
`must-understand`, `Set-Cookie` options, range requests, targeted cache
control (RFC 9213) and `Vary` normalisation.

Route "c" (/c/...) caches."""

import email.utils
import socket
import socketserver
import threading
import time

import pytest

from test_cache import cs, detail, is_hit, is_stored, ttl  # noqa: F401


class RawOrigin:
    """An HTTP/1.1 origin on 127.0.0.1. `behaviour(method, path, headers)`
    returns (status, [(name, value), ...], body, chunked): the header lines
    are written as given (repeats, odd values), `Date` first unless the
    list has one; `Content-Length` is added unless `chunked` (then the body
    is sent chunked with `Transfer-Encoding: chunked`) or the list has
    one."""

    def __init__(self):
        self.requests = []  # (method, path, {lower name: value})
        self.lock = threading.Lock()
        self.behaviour = lambda m, p, h: (200, [], b"ok", False)
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    method, path, _ = line.decode("latin-1").split(" ", 2)
                    hdrs = {}
                    while True:
                        h = self.rfile.readline().decode("latin-1").rstrip("\r\n")
                        if not h:
                            break
                        k, _, v = h.partition(":")
                        hdrs[k.strip().lower()] = v.strip()
                    n = int(hdrs.get("content-length") or 0)
                    if n:
                        self.rfile.read(n)
                    with outer.lock:
                        outer.requests.append((method, path, hdrs))
                    status, lines, body, chunked = outer.behaviour(method, path, hdrs)
                    names = {k.lower() for k, _ in lines}
                    out = [f"HTTP/1.1 {status} X"]
                    if "date" not in names:
                        out.append("date: " + email.utils.formatdate(time.time(), usegmt=True))
                    out += [f"{k}: {v}" for k, v in lines]
                    no_body = method == "HEAD" or status in (204, 304)
                    if chunked:
                        out.append("transfer-encoding: chunked")
                    elif "content-length" not in names and status not in (204, 304):
                        out.append(f"content-length: {len(body)}")
                    data = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
                    if not no_body:
                        if chunked:
                            for i in range(0, len(body), 5):
                                part = body[i:i + 5]
                                data += b"%x\r\n%s\r\n" % (len(part), part)
                            data += b"0\r\n\r\n"
                        else:
                            data += body
                    self.wfile.write(data)
                    self.wfile.flush()

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            request_queue_size = 128

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, lines, body=b"hello", status=200, chunked=False):
        self.behaviour = lambda m, p, h: (status, list(lines), body, chunked)

    def hits(self, path):
        with self.lock:
            return sum(1 for _, p, _ in self.requests if p == path)

    def last(self, path):
        with self.lock:
            return [r for r in self.requests if r[1] == path][-1]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin():
    o = RawOrigin()
    yield o
    o.stop()


def cfg(cache=None):
    return {"routes": [
        {"name": "c", "match": {"path_prefix": "/c/"}, "cache": dict(cache or {})},
        {"name": "plain", "match": {"path_prefix": "/n/"}},
    ]}


@pytest.fixture
def mg(envoy, origin):
    """An Envoy with route "c" caching in front of the raw origin."""
    return lambda cache=None: envoy(cfg(cache), upstream_port=origin.port)


def raw_response_headers(e, path, headers=()):
    """The response's header lines exactly as Envoy sends them (repeats kept)."""
    s = socket.create_connection(("127.0.0.1", e.listen_port), timeout=10)
    try:
        req = f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{e.listen_port}\r\nconnection: close\r\n"
        req += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        s.sendall(req.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    return int(head[0].split(" ")[1]), [tuple(x.split(": ", 1)) for x in head[1:]]


def at_fraction(lo, hi):
    """Sleeps until the wall clock's fraction of a second is in [lo, hi)."""
    while not (lo <= time.time() % 1 < hi):
        time.sleep(0.005)


# ------------------------------------------------------------ 1. stale at second boundaries

@pytest.mark.parametrize("cc", [
    "max-age=1, must-revalidate",
    "max-age=1, proxy-revalidate",
    "max-age=3600, s-maxage=1",
    "max-age=1",
])
def test_stale_by_the_clock_second_is_validated(mg, origin, cc):
    """Date names the second the origin answered in; Date + max-age is the
    end of freshness, whatever fraction of a second the cache received the
    response at. A response received at x.8 s with max-age=1 is stale at
    (x+1).4 s by every clock that shows whole seconds."""
    e = mg()
    origin.serve([("cache-control", cc), ("etag", '"v1"')])
    at_fraction(0.75, 0.82)
    assert is_stored(e.request("/c/b")[1])
    at_fraction(0.3, 0.45)  # the next second, less than a second later
    s, h, _ = e.request("/c/b")
    assert not is_hit(h), cs(h)
    assert origin.hits("/c/b") == 2
    assert origin.last("/c/b")[2].get("if-none-match") == '"v1"'


def test_no_cache_response_is_validated_on_every_use(mg, origin):
    e = mg()
    origin.serve([("cache-control", "no-cache, max-age=3600"), ("etag", '"n"')])
    e.request("/c/nc")
    for _ in range(2):
        s, h, _ = e.request("/c/nc")
        assert not is_hit(h)
    assert origin.hits("/c/nc") == 3


def test_age_of_the_origin_counts_at_second_boundaries(mg, origin):
    e = mg()
    origin.serve([("cache-control", "max-age=3600"), ("age", "3599")])
    at_fraction(0.75, 0.82)
    e.request("/c/age")
    at_fraction(0.3, 0.45)
    assert not is_hit(e.request("/c/age")[1])
    assert origin.hits("/c/age") == 2


# ------------------------------------------------------------ 2. invalid Age

@pytest.mark.parametrize("ages", [
    [("age", "0"), ("age", "7200")],
    [("age", "7200"), ("age", "0")],
    [("age", "0, 7200")],
    [("age", "-7200")],
    [("age", "7200.0")],
    [("age", "7200a")],
    [("age", "a7200")],
    [("age", "7200;x=1")],
    [("age", "")],
])
def test_an_invalid_age_never_makes_a_response_fresh(mg, origin, ages):
    e = mg()
    origin.serve([("cache-control", "max-age=3600")] + ages)
    e.request("/c/age")
    s, h, _ = e.request("/c/age")
    assert s == 200 and not is_hit(h), cs(h)
    assert origin.hits("/c/age") == 2


def test_a_valid_age_is_still_used(mg, origin):
    e = mg()
    origin.serve([("cache-control", "max-age=3600"), ("age", "600"), ("age", "600")])
    e.request("/c/age")
    s, h, _ = e.request("/c/age")
    assert is_hit(h) and ttl(cs(h)) <= 3000, cs(h)


# ------------------------------------------------------------ 3. 304 handling

def test_304_headers_update_the_stored_response(mg, origin):
    e = mg()
    origin.serve([("cache-control", "max-age=1"), ("etag", '"a"'), ("x-version", "1"),
                  ("content-type", "text/plain")], body=b"twelve bytes")
    e.request("/c/u")
    time.sleep(2.1)
    origin.serve([("cache-control", "max-age=3600"), ("etag", '"a"'), ("x-version", "2"),
                  ("content-length", "999"), ("content-type", "text/html")], status=304)
    s, h, b = e.request("/c/u")
    assert (s, b) == (200, b"twelve bytes"), (s, h)
    assert h["x-version"] == "2" and h["content-type"] == "text/html", h
    s, h, b = e.request("/c/u")
    assert is_hit(h) and b == b"twelve bytes", cs(h)
    assert (h["x-version"], h["cache-control"], h["content-length"]) == ("2", "max-age=3600", "12")
    assert origin.hits("/c/u") == 2


def test_a_stored_set_cookie_response_is_revalidated_when_stale(mg, origin):
    e = mg({"set_cookie": "strip"})
    origin.serve([("cache-control", "max-age=1"), ("etag", '"sc"'), ("set-cookie", "a=b")])
    assert is_stored(e.request("/c/sc")[1])
    time.sleep(2.1)
    origin.serve([("cache-control", "max-age=60"), ("etag", '"sc"')], status=304)
    s, h, b = e.request("/c/sc")
    assert (s, b) == (200, b"hello") and "fwd-status=304" in cs(h), cs(h)
    assert origin.last("/c/sc")[2].get("if-none-match") == '"sc"'


# ------------------------------------------------------------ 4. byte-exact headers

def test_stored_headers_are_sent_byte_for_byte(mg, origin):
    e = mg()
    lines = [("cache-control", "max-age=3600,s-maxage=600"), ("x-odd", "a,b ,  c"),
             ("x-rep", "1"), ("x-rep", "2"), ("link", "</a>; rel=preload")]
    origin.serve(lines)
    s, first = raw_response_headers(e, "/c/exact")
    s, hit = raw_response_headers(e, "/c/exact")
    assert s == 200
    got = [(k.lower(), v) for k, v in hit if k.lower() in {"cache-control", "x-odd", "x-rep", "link"}]
    assert got == lines, hit
    assert any(k.lower() == "cache-status" and "hit" in v for k, v in hit), hit


# ------------------------------------------------------------ 5. must-understand

@pytest.mark.parametrize("status", [299, 420, 599])
def test_must_understand_with_an_unknown_status_is_not_stored(mg, origin, status):
    e = mg()
    origin.serve([("cache-control", "must-understand, no-store, s-maxage=60, public")],
                 status=status)
    # no-store is what a cache that does not understand the status obeys
    e.request("/c/mu")
    e.request("/c/mu")
    assert origin.hits("/c/mu") == 2
    origin.serve([("cache-control", "must-understand, s-maxage=60, public")], status=status)
    s, h, _ = e.request("/c/mu2")
    assert not is_stored(h), cs(h)
    e.request("/c/mu2")
    assert origin.hits("/c/mu2") == 2


def test_must_understand_with_a_known_status_overrides_no_store(mg, origin):
    e = mg()
    origin.serve([("cache-control", "must-understand, no-store, max-age=60")])
    assert is_stored(e.request("/c/mk")[1])
    assert is_hit(e.request("/c/mk")[1])


# ------------------------------------------------------------ 6. Transfer-Encoding

def test_a_chunked_response_is_stored_and_served_without_transfer_encoding(mg, origin):
    e = mg()
    origin.serve([("cache-control", "max-age=60")], body=b"0123456789abc", chunked=True)
    s, h, b = e.request("/c/te")
    assert (s, b) == (200, b"0123456789abc") and is_stored(h), (s, h)
    s, hit = raw_response_headers(e, "/c/te")
    assert s == 200 and any(k.lower() == "cache-status" and "hit" in v for k, v in hit), hit
    s, h, b = e.request("/c/te")
    assert (s, b) == (200, b"0123456789abc") and is_hit(h), (s, h)
    s, h, b = e.request("/c/te", method="HEAD")
    assert s == 200 and is_hit(h), (s, h)


def test_an_invalid_transfer_encoding_is_treated_as_on_a_route_without_cache(mg, origin):
    """`Transfer-Encoding: identity` next to Content-Length is invalid
    HTTP/1.1 (RFC 9112 6.1): Envoy's codec refuses it (502) on every route,
    before any filter sees a response. The cache route answers exactly as
    the plain one."""
    e = mg()
    origin.serve([("cache-control", "max-age=60"), ("transfer-encoding", "identity")],
                 body=b"0123456789abc")
    plain = e.request("/n/te")
    cached = e.request("/c/te")
    assert plain[0] == cached[0], (plain, cached)
    if cached[0] == 200:
        assert is_hit(e.request("/c/te")[1])


def test_a_revalidated_chunked_response_is_no_502(mg, origin):
    e = mg()
    origin.serve([("cache-control", "max-age=1"), ("etag", '"t"')], body=b"chunky body",
                 chunked=True)
    e.request("/c/tr")
    time.sleep(2.1)
    origin.serve([("cache-control", "max-age=60"), ("etag", '"t"'),
                  ("transfer-encoding", "chunked")], status=304)
    s, h, b = e.request("/c/tr")
    assert (s, b) == (200, b"chunky body"), (s, h, b)
    s, h, b = e.request("/c/tr")
    assert (s, b) == (200, b"chunky body") and is_hit(h)


# ------------------------------------------------------------ 7. Set-Cookie options

@pytest.mark.parametrize("mode,stored,replayed", [
    (None, False, False),
    ("public_only", False, False),
    ("strip", True, False),
    ("store", True, True),
    ("no_store", False, False),
])
def test_set_cookie_options(mg, origin, mode, stored, replayed):
    e = mg({"set_cookie": mode} if mode else {})
    origin.serve([("cache-control", "max-age=60"), ("set-cookie", "lang=en")])
    s, h, _ = e.request("/c/sc")
    assert h.get("set-cookie") == "lang=en"  # the origin's own answer always has it
    assert is_stored(h) == stored, cs(h)
    if not stored:
        assert detail(h) == "set-cookie", cs(h)
    s, h, _ = e.request("/c/sc")
    assert is_hit(h) == stored, cs(h)
    if stored:
        assert (h.get("set-cookie") == "lang=en") == replayed, h
    # public: stored by every mode but no_store, the cookie kept only by "store"
    origin.serve([("cache-control", "public, max-age=60"), ("set-cookie", "lang=en")])
    e.request("/c/scp")
    s, h, _ = e.request("/c/scp")
    assert is_hit(h) == (mode != "no_store"), cs(h)
    if is_hit(h):
        assert (h.get("set-cookie") == "lang=en") == (mode == "store"), h


# ------------------------------------------------------------ 8. ranges

BODY = b"0123456789abcdefghij"


@pytest.mark.parametrize("rng,status,part,content_range", [
    ("bytes=0-4", 206, BODY[0:5], "bytes 0-4/20"),
    ("bytes=15-", 206, BODY[15:], "bytes 15-19/20"),
    ("bytes=-3", 206, BODY[-3:], "bytes 17-19/20"),
    ("bytes=10-999", 206, BODY[10:], "bytes 10-19/20"),
    ("bytes=20-", 416, b"", "bytes */20"),
    ("bytes=0-1,5-6", 200, BODY, None),
    ("bytes=x-y", 200, BODY, None),
])
def test_range_requests_are_answered_from_a_stored_response(mg, origin, rng, status, part,
                                                           content_range):
    e = mg()
    origin.serve([("cache-control", "max-age=60"), ("etag", '"r1"'),
                  ("content-type", "application/octet-stream")], body=BODY)
    assert is_stored(e.request("/c/r")[1])
    s, h, b = e.request("/c/r", headers={"range": rng})
    assert (s, b) == (status, part), (s, h, b)
    assert is_hit(h), cs(h)
    assert h.get("content-range") == content_range, h
    if status != 416:
        assert int(h["content-length"]) == len(part)
    assert origin.hits("/c/r") == 1


def test_if_range(mg, origin):
    e = mg()
    origin.serve([("cache-control", "max-age=60"), ("etag", '"r1"')], body=BODY)
    e.request("/c/ir")
    s, h, b = e.request("/c/ir", headers={"range": "bytes=0-1", "if-range": '"r1"'})
    assert (s, b) == (206, b"01"), (s, h)
    s, h, b = e.request("/c/ir", headers={"range": "bytes=0-1", "if-range": '"old"'})
    assert (s, b) == (200, BODY), (s, h)
    s, h, b = e.request("/c/ir", headers={"range": "bytes=0-1", "if-range": 'W/"r1"'})
    assert (s, b) == (200, BODY), (s, h)
    assert origin.hits("/c/ir") == 1


def test_a_range_request_that_misses_is_not_stored(mg, origin):
    e = mg()

    def behaviour(m, p, h):
        if "range" in h:
            return 206, [("cache-control", "max-age=60"), ("content-range", "bytes 0-1/20")], \
                BODY[:2], False
        return 200, [("cache-control", "max-age=60")], BODY, False

    origin.behaviour = behaviour
    s, h, b = e.request("/c/rm", headers={"range": "bytes=0-1"})
    assert (s, b) == (206, b"01") and not is_stored(h), cs(h)
    s, h, b = e.request("/c/rm")
    assert (s, b) == (200, BODY) and not is_hit(h)
    s, h, b = e.request("/c/rm", headers={"range": "bytes=-2"})
    assert (s, b) == (206, b"ij") and is_hit(h), (s, h)


# ------------------------------------------------------------ 9. targeted cache control

def test_cdn_cache_control_wins_over_cache_control(mg, origin):
    e = mg()
    origin.serve([("cache-control", "no-store"), ("cdn-cache-control", "max-age=60")])
    assert is_stored(e.request("/c/t1")[1])
    s, h, _ = e.request("/c/t1")
    assert is_hit(h) and 55 <= ttl(cs(h)) <= 60, cs(h)
    assert h["cache-control"] == "no-store" and h["cdn-cache-control"] == "max-age=60"
    origin.serve([("cache-control", "max-age=60"), ("cdn-cache-control", "no-store")])
    e.request("/c/t2")
    assert not is_hit(e.request("/c/t2")[1])
    assert origin.hits("/c/t2") == 2


def test_configured_targeted_fields_in_order(mg, origin):
    e = mg({"targeted_cache_control": ["Meshguard-Cache-Control", "Surrogate-Control"]})
    origin.serve([("cache-control", "max-age=60"), ("surrogate-control", "no-store"),
                  ("meshguard-cache-control", "max-age=30")])
    e.request("/c/t3")
    s, h, _ = e.request("/c/t3")
    assert is_hit(h) and ttl(cs(h)) <= 30, cs(h)
    origin.serve([("cache-control", "max-age=60"), ("surrogate-control", "no-store"),
                  ("cdn-cache-control", "max-age=60")])
    e.request("/c/t4")
    assert not is_hit(e.request("/c/t4")[1])  # CDN-Cache-Control is not in this list
    origin.serve([("cache-control", "no-store"), ("meshguard-cache-control", "max-age=1")])
    e.request("/c/t5")
    time.sleep(2.1)
    assert not is_hit(e.request("/c/t5")[1])


# ------------------------------------------------------------ 10. Vary normalisation

def test_equivalent_negotiation_headers_share_an_entry(mg, origin):
    e = mg()
    origin.serve([("cache-control", "max-age=60"), ("vary", "Accept-Language, Accept-Encoding")])
    e.request("/c/v", headers={"accept-language": "en-US, fr;q=0.5", "accept-encoding": "gzip, br"})
    for al, ae in [("fr;q=0.5,en-US", "br,gzip"), ("EN-us,  fr ; q=0.5", "gzip,br"),
                   ("en-US, fr;q=0.5", "  gzip , br ")]:
        s, h, _ = e.request("/c/v", headers={"accept-language": al, "accept-encoding": ae})
        assert is_hit(h), (al, ae, cs(h))
    s, h, _ = e.request("/c/v", headers={"accept-language": "de", "accept-encoding": "gzip, br"})
    assert not is_hit(h)
    assert origin.hits("/c/v") == 2


# ------------------------------------------------------------ 11. stale while the breaker is open

def breaker_cfg(cache):
    return {"routes": [
        {"name": "c", "match": {"path_prefix": "/c/"}, "cache": cache,
         "circuit_breaker": {"consecutive_failures": 2, "open_duration": "30s",
                             "max_open_duration": "60s", "half_open_requests": 1,
                             "success_threshold": 1}},
    ]}


def test_stale_served_while_the_circuit_is_open(envoy, origin):
    e = envoy(breaker_cfg({"stale_on_error": "60s"}), upstream_port=origin.port)
    paths = {
        "/c/sie": "max-age=1, stale-if-error=60",
        "/c/cfg": "max-age=1",  # the route's stale_on_error allows it
        "/c/strict": "max-age=1, must-revalidate, stale-if-error=60",
    }
    failing = threading.Event()

    def behaviour(m, p, h):
        if failing.is_set():
            return 500, [("content-type", "text/plain")], b"down", False
        return 200, [("cache-control", paths.get(p, "max-age=60"))], b"stored " + p.encode(), False

    origin.behaviour = behaviour
    for p in paths:
        assert is_stored(e.request(p)[1])
    time.sleep(2.1)
    failing.set()
    for _ in range(2):
        assert e.request("/c/trip")[0] == 500
    before = len(origin.requests)
    # OPEN: the upstream is not asked; stale entries answer instead of 503
    for p in ("/c/sie", "/c/cfg"):
        s, h, b = e.request(p)
        assert (s, b) == (200, b"stored " + p.encode()), (s, h, b)
        assert "detail=circuit-open" in cs(h) and ttl(cs(h)) < 0, cs(h)
        assert cs(h).startswith("meshguard; fwd=stale"), cs(h)
    s, h, b = e.request("/c/strict")
    assert s == 503 and b"circuit_open" in b, (s, b)
    s, h, b = e.request("/c/nothing")
    assert s == 503 and b"circuit_open" in b, (s, b)
    assert len(origin.requests) == before


def test_without_a_window_the_open_circuit_still_answers_503(envoy, origin):
    e = envoy(breaker_cfg({}), upstream_port=origin.port)
    origin.serve([("cache-control", "max-age=1")])
    e.request("/c/x")
    time.sleep(2.1)
    origin.serve([], status=503)
    for _ in range(2):
        e.request("/c/trip")
    s, h, b = e.request("/c/x")
    assert s == 503 and b"circuit_open" in b, (s, h, b)


# ------------------------------------------------------------ 12. purge

def purge_cfg():
    from jwt_support import ISSUER, JWKS
    return {
        "jwt_providers": {"bearer": {"issuer": ISSUER, "audiences": ["api"],
                                     "algorithms": ["HS256"], "jwks": {"inline": JWKS}}},
        "routes": [
            {"name": "c", "match": {"path_prefix": "/c/"},
             "jwt": {"providers": ["bearer"], "allow_missing": True},
             "cache": {"ignore_query": True,
                       "purge": {"claims": [{"claim": "scope", "contains": "cache:purge"}]}}},
            {"name": "nopurge", "match": {"path_prefix": "/n/"}, "cache": {}},
        ],
    }


def test_purge_needs_a_token_with_the_claim_and_drops_every_variant(envoy, origin):
    from jwt_support import claims, mint_hs
    admin = mint_hs(claims(sub="ops", scope="read cache:purge"))
    user = mint_hs(claims(sub="bob", scope="read"))
    e = envoy(purge_cfg(), upstream_port=origin.port)
    origin.serve([("cache-control", "max-age=600"), ("vary", "accept-language")])
    for lang in ("en", "fr"):
        e.request("/c/p?x=1", headers={"accept-language": lang})
        assert is_hit(e.request("/c/p", headers={"accept-language": lang})[1])
    e.request("/c/other")
    # no token, a token without the claim, a bad token: refused, nothing dropped
    for hdrs in ({}, {"authorization": f"Bearer {user}"}):
        s, h, b = e.request("/c/p", method="PURGE", headers=hdrs)
        assert s == 403 and b"forbidden" in b, (s, b)
    s, _, _ = e.request("/c/p", method="PURGE", headers={"authorization": "Bearer x.y.z"})
    assert s == 401
    assert is_hit(e.request("/c/p", headers={"accept-language": "en"})[1])
    before = len(origin.requests)
    s, h, b = e.request("/c/p?y=2", method="PURGE", headers={"authorization": f"Bearer {admin}"})
    assert (s, b) == (200, b'{"purged":2}'), (s, b)
    assert len(origin.requests) == before  # answered by meshguard, never forwarded
    for lang in ("en", "fr"):
        assert not is_hit(e.request("/c/p", headers={"accept-language": lang})[1])
    assert is_hit(e.request("/c/other")[1])  # only that URI
    st = e.stats()
    assert st["wasmcustom.meshguard.cache.c.purged"] == 2
    assert st["wasmcustom.meshguard.cache.c.purge_denied"] == 2
    # a route without purge: PURGE is an unsafe method like any other
    e.request("/n/q")
    s, _, _ = e.request("/n/q", method="PURGE")
    assert s == 200 and origin.last("/n/q")[0] == "PURGE"


def test_purge_by_prefix_and_by_tag_with_the_claim(envoy, origin):
    from jwt_support import claims, mint_hs
    admin = mint_hs(claims(sub="ops", scope="read cache:purge"))
    user = mint_hs(claims(sub="bob", scope="read"))
    c = purge_cfg()
    c["routes"][0]["cache"]["purge"].update({"prefix": True, "tag_header": "Surrogate-Key"})
    e = envoy(c, upstream_port=origin.port)
    fills = {"/c/cat/a": "p1 all", "/c/cat/b": "p2, all", "/c/other": "p1", "/c/catalog": "p3"}
    for path, tags in fills.items():
        origin.serve([("cache-control", "max-age=600"), ("surrogate-key", tags)])
        # a client's own Surrogate-Key is never a tag of the stored response
        e.request(path, headers={"surrogate-key": "evil"})
        assert is_hit(e.request(path)[1]), path
    admin_h = {"authorization": f"Bearer {admin}"}
    # the claim is needed: no token, a token without it
    for hdrs in ({}, {"authorization": f"Bearer {user}"}):
        s, _, b = e.request("/c/", method="PURGE", headers={**hdrs, "meshguard-purge-tag": "p1"})
        assert s == 403, (s, b)
        s, _, b = e.request("/c/cat/", method="PURGE", headers={**hdrs, "meshguard-purge": "prefix"})
        assert s == 403, (s, b)
    assert all(is_hit(e.request(p)[1]) for p in fills)
    s, _, b = e.request("/c/", method="PURGE", headers={**admin_h, "meshguard-purge-tag": "evil"})
    assert (s, b) == (200, b'{"purged_tags":["evil"]}'), (s, b)
    assert all(is_hit(e.request(p)[1]) for p in fills)
    # by tag: every response listing it, on any path
    before = len(origin.requests)
    s, _, b = e.request("/c/", method="PURGE", headers={**admin_h, "meshguard-purge-tag": "p1"})
    assert (s, b) == (200, b'{"purged_tags":["p1"]}'), (s, b)
    assert len(origin.requests) == before  # answered by meshguard
    assert [is_hit(e.request(p)[1]) for p in fills] == [False, True, False, True]
    # by prefix: /c/cat/ but not /c/catalog
    s, _, b = e.request("/c/cat/", method="PURGE", headers={**admin_h, "meshguard-purge": "prefix"})
    assert (s, b) == (200, b'{"purged_prefix":"/c/cat/"}'), (s, b)
    assert not is_hit(e.request("/c/cat/b")[1])
    assert is_hit(e.request("/c/catalog")[1])
    # stored again after the purge: served
    assert is_hit(e.request("/c/cat/b")[1])
    # malformed: 400, nothing purged
    s, _, b = e.request("/c/", method="PURGE", headers={**admin_h, "meshguard-purge": "all"})
    assert s == 400 and b"bad_request" in b, (s, b)
    st = e.stats()
    assert st["wasmcustom.meshguard.cache.c.purged_tag"] == 2
    assert st["wasmcustom.meshguard.cache.c.purged_prefix"] == 1
    assert st["wasmcustom.meshguard.cache.c.purge_denied"] == 4
