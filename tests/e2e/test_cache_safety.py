"""Cache safety in a real Envoy: no response of one user reaches another, a
client cannot poison an entry, and what meshguard cannot read completely
is not stored. Real tokens (HMAC-minted for the fixture JWKS), one Envoy
(--concurrency 2) for the whole module; every test uses its own paths.

Routes: "vary" (/vary/, JWT from Authorization, `claims_to_headers` sub ->
x-user, Vary allowed on x-user), "keyed" (/keyed/, the same with
`key_headers: ["x-user"]`), "cookie" (/cookie/, JWT from a cookie or the
query), "big" (/big/, `key_headers: ["x-tenant"]`), "static" (/static/,
`default_ttl`), "c" (/c/, defaults)."""

import email.utils
import re
import sys
import threading
import time

import pytest

import harness
from jwt_support import ISSUER, JWKS, claims, mint_hs, wait_until

ALICE, BOB, CAROL = (mint_hs(claims(sub=u)) for u in ("alice", "bob", "carol"))


def provider(sources=None):
    p = {"issuer": ISSUER, "audiences": ["api"], "algorithms": ["HS256"],
         "jwks": {"inline": JWKS},
         "claims_to_headers": [{"claim": "sub", "header": "x-user"}]}
    if sources:
        p["from"] = sources
    return p


CONFIG = {
    "jwt_providers": {
        "bearer": provider(),
        "cookie": provider([{"cookie": "access_token"}, {"query": "access_token"}]),
    },
    "routes": [
        {"name": "vary", "match": {"path_prefix": "/vary/"}, "jwt": {"providers": ["bearer"]},
         "cache": {"vary_allowlist": ["x-user"]}},
        {"name": "keyed", "match": {"path_prefix": "/keyed/"}, "jwt": {"providers": ["bearer"]},
         "cache": {"key_headers": ["x-user"]}},
        {"name": "cookie", "match": {"path_prefix": "/cookie/"}, "jwt": {"providers": ["cookie"]},
         "cache": {}},
        {"name": "big", "match": {"path_prefix": "/big/"}, "cache": {"key_headers": ["x-tenant"]}},
        {"name": "static", "match": {"path_prefix": "/static/"}, "cache": {"default_ttl": "60s"}},
        {"name": "c", "match": {"path_prefix": "/c/"}, "cache": {}},
    ],
}

# The origin of each test, by path prefix (longest prefix wins).
ORIGINS = {}


def origin(prefix, fn):
    ORIGINS[prefix] = fn


def dispatch(method, path, headers):
    for prefix in sorted(ORIGINS, key=len, reverse=True):
        if path.startswith(prefix):
            return ORIGINS[prefix](method, path, headers)
    return 404, {"content-type": "text/plain"}, b"no origin for this path", 0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    up = harness.Upstream()
    up.behaviour = dispatch
    e = harness.Envoy(tmp_path_factory.mktemp("cache-safety"), CONFIG, up.port, concurrency=2)
    try:
        e.start()
        yield e, up
    finally:
        e.stop()
        up.stop()


@pytest.fixture(autouse=True)
def envoy_log_on_failure(request, mesh):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        e = mesh[0]
        sys.stderr.write(f"\n----- Envoy log ({e.log_path}) -----\n{e.log()[-20000:]}\n")


def get(e, path, headers=None, method="GET", body=None):
    """One request with exactly these headers (no implicit Accept-Encoding):
    (status, headers dict, body bytes)."""
    return e.request(path, method=method, headers=headers, body=body, exact_headers=True)


def cs(h):
    v = h.get("cache-status", "")
    member = [m.strip() for m in v.split(",") if m.strip().startswith("meshguard")]
    assert len(member) == 1, h
    return member[0]


def is_hit(h):
    return cs(h).startswith("meshguard; hit")


def detail(h):
    m = re.search(r"; detail=([a-z-]+)", cs(h))
    return m.group(1) if m else None


def upstream_requests(up, path):
    with up.lock:
        return [r for r in up.requests if r[1] == path]


def bearer(tok):
    return {"authorization": f"Bearer {tok}"}


def per_user(cache_control, vary=None):
    def answer(method, path, h):
        rh = {"content-type": "text/plain", "cache-control": cache_control}
        if vary:
            rh["vary"] = vary
        return 200, rh, f"for {h.get('x-user', '-')}".encode(), 0
    return answer


# ------------------------------------------------------------ 1. the forwarded identity

def test_vary_reads_the_identity_meshguard_forwards(mesh):
    e, up = mesh
    origin("/vary/", per_user("s-maxage=60", vary="x-user"))
    assert get(e, "/vary/1", bearer(ALICE))[2] == b"for alice"
    s, h, b = get(e, "/vary/1", bearer(BOB))
    assert (s, b) == (200, b"for bob"), cs(h)
    s, h, b = get(e, "/vary/1", bearer(ALICE))
    assert b == b"for alice" and is_hit(h), cs(h)
    s, h, b = get(e, "/vary/1", bearer(BOB))
    assert b == b"for bob" and is_hit(h), cs(h)
    # A client-sent x-user is replaced before the key is computed: alice
    # claiming to be carol stores under alice, carol gets her own.
    assert get(e, "/vary/2", {**bearer(ALICE), "x-user": "carol"})[2] == b"for alice"
    s, h, b = get(e, "/vary/2", {**bearer(CAROL), "x-user": "carol"})
    assert b == b"for carol", cs(h)
    assert len(upstream_requests(up, "/vary/1")) == 2


def test_key_headers_read_the_identity_meshguard_forwards(mesh):
    e, up = mesh
    origin("/keyed/", per_user("s-maxage=60"))
    assert get(e, "/keyed/1", bearer(ALICE))[2] == b"for alice"
    s, h, b = get(e, "/keyed/1", bearer(BOB))
    assert b == b"for bob", cs(h)
    assert get(e, "/keyed/2", {**bearer(ALICE), "x-user": "carol"})[2] == b"for alice"
    s, h, b = get(e, "/keyed/2", {**bearer(CAROL), "x-user": "carol"})
    assert b == b"for carol", cs(h)
    s, h, b = get(e, "/keyed/2", bearer(ALICE))
    assert b == b"for alice" and is_hit(h), cs(h)


# ------------------------------------------------------------ 2. tokens from any location

def test_a_token_in_a_cookie_or_the_query_is_a_credential(mesh):
    e, up = mesh
    origin("/cookie/", per_user("max-age=60"))
    s, h, b = get(e, "/cookie/inbox", {"cookie": f"theme=dark; access_token={ALICE}"})
    assert b == b"for alice" and detail(h) == "authorization", cs(h)
    s, h, b = get(e, "/cookie/inbox", {"cookie": f"access_token={BOB}"})
    assert (s, b) == (200, b"for bob"), cs(h)
    # The query token is removed from the forwarded path (forward: false):
    # both users' requests have the same key, still never shared.
    assert get(e, f"/cookie/q?access_token={ALICE}")[2] == b"for alice"
    s, h, b = get(e, f"/cookie/q?access_token={BOB}")
    assert b == b"for bob", cs(h)
    assert len(upstream_requests(up, "/cookie/q")) == 2
    # A response that says it may be shared is shared.
    origin("/cookie/pub", lambda m, p, h: (200, {"cache-control": "public, max-age=60"}, b"news", 0))
    get(e, "/cookie/pub", {"cookie": f"access_token={ALICE}"})
    s, h, b = get(e, "/cookie/pub", {"cookie": f"access_token={BOB}"})
    assert b == b"news" and is_hit(h), cs(h)


# ------------------------------------------------------------ 3. oversized inputs

def test_an_oversized_varied_or_keyed_header_is_not_keyed_as_absent(mesh):
    e, up = mesh
    origin("/big/ae", lambda m, p, h: (
        200, {"cache-control": "max-age=60", "vary": "Accept-Encoding"},
        b"gzip body" if "gzip" in h.get("accept-encoding", "") else b"plain body", 0))
    huge = "gzip, " + "x" * 17000
    assert get(e, "/big/ae", {"accept-encoding": huge})[2] == b"gzip body"
    s, h, b = get(e, "/big/ae")
    assert b == b"plain body", cs(h)
    origin("/big/t", lambda m, p, h: (
        200, {"cache-control": "max-age=60"}, f"tenant of {len(h.get('x-tenant', ''))} bytes".encode(), 0))
    assert get(e, "/big/t", {"x-tenant": "t" * 17000})[2] == b"tenant of 17000 bytes"
    s, h, b = get(e, "/big/t")
    assert b == b"tenant of 0 bytes", cs(h)
    # The same huge value again is keyed exactly: it finds its own entry.
    s, h, b = get(e, "/big/t", {"x-tenant": "t" * 17000})
    assert b == b"tenant of 17000 bytes" and is_hit(h), cs(h)


# ------------------------------------------------------------ 4. Cache-Control that cannot be read

CC_SHAPES = {
    "huge": 'private, no-store, x="' + "y" * 17000 + '"',
    "many": ", ".join(f"x{i}" for i in range(64)) + ", private",
}


@pytest.mark.parametrize("shape", sorted(CC_SHAPES))
def test_a_cache_control_that_cannot_be_parsed_completely_is_not_stored(mesh, shape):
    e, up = mesh
    expires = email.utils.formatdate(time.time() + 3600, usegmt=True)
    path = f"/c/cc-{shape}"
    origin(path, lambda m, p, h: (
        200, {"cache-control": CC_SHAPES[shape], "expires": expires}, b"private data", 0))
    s, h, b = get(e, path)
    assert (s, b) == (200, b"private data")
    s, h, b = get(e, path)
    assert not is_hit(h), cs(h)
    assert len(upstream_requests(up, path)) == 2


# ------------------------------------------------------------ 5. revalidation validators

def test_a_revalidation_carries_only_meshguards_validators(mesh):
    e, up = mesh
    version = {"lm": email.utils.formatdate(time.time() - 3600, usegmt=True), "body": b"v1"}

    def answer(m, p, h):
        lm = version["lm"]
        fresh = {"cache-control": "max-age=60", "last-modified": lm}
        if h.get("if-none-match", "").strip() == "*":
            return 304, fresh, b"", 0
        ims = email.utils.parsedate_to_datetime(h["if-modified-since"]) if "if-modified-since" in h else None
        if ims is not None and ims >= email.utils.parsedate_to_datetime(lm):
            return 304, fresh, b"", 0
        return 200, {"cache-control": "max-age=1", "last-modified": lm}, version["body"], 0

    origin("/c/pin", answer)
    assert get(e, "/c/pin")[2] == b"v1"
    version.update(lm=email.utils.formatdate(time.time(), usegmt=True), body=b"v2")
    time.sleep(2.1)
    s, h, b = get(e, "/c/pin", {"if-none-match": "*"})
    _, _, sent = upstream_requests(up, "/c/pin")[-1]
    assert "if-none-match" not in sent, sent
    assert (s, b) == (200, b"v2"), (s, cs(h))
    s, h, b = get(e, "/c/pin")
    assert b == b"v2" and is_hit(h), cs(h)
    # The client's own conditional is answered from the revalidated entry.
    s, h, b = get(e, "/c/pin", {"if-none-match": "*"})
    assert (s, b) == (304, b"") and is_hit(h), cs(h)


# ------------------------------------------------------------ 6. errors caused by request headers

def error_origin(m, p, h):
    """An origin that adds max-age=60 to everything (s-maxage=60 on paths
    ending in -explicit), and fails on some request headers."""
    cc = "s-maxage=60" if p.endswith("-explicit") else "max-age=60"
    rh = {"cache-control": cc, "content-type": "text/plain"}
    if "if-match" in h:
        return 412, rh, b"precondition failed", 0
    if "range" in h:
        return 416, {**rh, "content-range": "bytes */4"}, b"", 0
    if "x-oversized" in h:
        return 400, rh, b"bad request", 0
    if "x-http-method-override" in h:
        return 405, rh, b"method not allowed", 0
    return 200, rh, b"fine", 0


@pytest.mark.parametrize("status,hdrs", [
    (412, {"if-match": '"nope"'}),
    (416, {"range": "bytes=999999-"}),
    (400, {"x-oversized": "z" * 4000}),
    (405, {"x-http-method-override": "DELETE"}),
])
def test_errors_caused_by_unkeyed_request_headers_are_not_stored(mesh, status, hdrs):
    e, up = mesh
    origin("/c/err-", error_origin)
    path = f"/c/err-{status}"
    assert get(e, path, hdrs)[0] == status
    s, h, b = get(e, path)
    assert (s, b) == (200, b"fine"), (s, cs(h))


def test_an_error_the_origin_marks_shareable_explicitly_is_stored(mesh):
    e, up = mesh
    origin("/c/err-", error_origin)
    assert get(e, "/c/err-405-explicit", {"x-http-method-override": "DELETE"})[0] == 405
    s, h, b = get(e, "/c/err-405-explicit")
    assert s == 405 and is_hit(h), cs(h)


# ------------------------------------------------------------ 7. default_ttl and credentials

def static_origin(m, p, h):
    who = re.search(r"session=(\w+)", h.get("cookie", ""))
    return 200, {"content-type": "text/html"}, f"page of {who.group(1) if who else 'nobody'}".encode(), 0


@pytest.mark.parametrize("path", ["/static/account", "/static/%2e%2e/account"])
def test_default_ttl_never_applies_to_a_request_with_credentials(mesh, path):
    e, up = mesh
    origin("/static/", static_origin)
    assert get(e, path, {"cookie": "session=victim"})[2] == b"page of victim"
    s, h, b = get(e, path)
    assert b == b"page of nobody", h.get("cache-status")
    # Anonymous responses of the route still get default_ttl. (The
    # `%2e%2e` spelling is `/account` once normalised: not on the route.)
    get(e, "/static/app.js")
    s, h, b = get(e, "/static/app.js")
    assert b == b"page of nobody" and is_hit(h), h.get("cache-status")


# ------------------------------------------------------------ 8. conditionals and invalidation

def test_an_if_modified_since_in_the_future_is_ignored(mesh):
    e, up = mesh
    lm = email.utils.formatdate(time.time() - 3600, usegmt=True)
    origin("/c/ims", lambda m, p, h: (200, {"cache-control": "max-age=60", "last-modified": lm}, b"full", 0))
    get(e, "/c/ims")
    future = email.utils.formatdate(time.time() + 86400, usegmt=True)
    s, h, b = get(e, "/c/ims", {"if-modified-since": future})
    assert (s, b) == (200, b"full") and is_hit(h), (s, cs(h))
    now = email.utils.formatdate(time.time(), usegmt=True)
    s, h, b = get(e, "/c/ims", {"if-modified-since": now})
    assert s == 304 and is_hit(h), (s, cs(h))


def test_a_fill_overlapping_an_invalidation_is_not_stored(mesh):
    e, up = mesh
    version = {"n": 0}

    def answer(m, p, h):
        if m != "GET":
            version["n"] += 1
            return 200, {}, b"updated", 0
        # The representation as of the request's arrival, sent late.
        return 200, {"cache-control": "max-age=60"}, f"v{version['n']}".encode(), 1.5

    origin("/c/slow", answer)
    got = {}
    t = threading.Thread(target=lambda: got.update(r=get(e, "/c/slow")))
    t.start()
    assert wait_until(lambda: len(upstream_requests(up, "/c/slow")) == 1, timeout=5)
    s, h, _ = get(e, "/c/slow", method="POST", body=b"x")
    assert s == 200, s
    t.join(10)
    assert got["r"][2] == b"v0"
    s, h, b = get(e, "/c/slow")
    assert b == b"v1" and not is_hit(h), cs(h)
