"""Hostile requests built to slip past meshguard, in a real Envoy whose
listener normalises nothing (no `normalize_path`, `merge_slashes`,
underscore headers allowed): meshguard itself must hold.

- F1: no unverified token reaches the upstream beside a verified one.
- F2: equivalent spellings of a path or of a client address are one.
- F3: a client's copy of a claim header never reaches the upstream.
- F4: a payload that is not Unicode text makes the token invalid."""

import json

from jwt_support import ISSUER, claims, jwk, mint_hs

B_ISSUER = "https://b.test"
HS_JWKS = {"keys": [jwk("hs-1")]}
# alg "none", iss of provider a, sub admin: never valid.
FORGED = "eyJhbGciOiJub25lIn0." + \
    "eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0Iiwic3ViIjoiYWRtaW4iLCJhdWQiOiJhcGkifQ."


def hs_provider(issuer, sources, **over):
    p = {"issuer": issuer, "algorithms": ["HS256"], "jwks": {"inline": HS_JWKS}, "from": sources}
    p.update(over)
    return p


def token_a(**over):
    return mint_hs(claims(**over))


def token_b(**over):
    return mint_hs(claims(iss=B_ISSUER, **over))


BEARER = {"header": "authorization", "prefix": "Bearer "}


def jwt_config():
    return {
        "jwt_providers": {
            "a": hs_provider(ISSUER, [BEARER, {"cookie": "access_token"}, {"query": "access_token"}],
                             claims_to_headers=[{"claim": "sub", "header": "x-user"}]),
            "b": hs_provider(B_ISSUER, [{"cookie": "session"}],
                             payload_header="x-jwt-payload"),
            "fwd": hs_provider(ISSUER, [BEARER, {"cookie": "access_token"}], forward=True),
        },
        "routes": [
            {"name": "ab", "match": {"path_prefix": "/ab/"}, "jwt": {"providers": ["a", "b"]}},
            {"name": "a", "match": {"path_prefix": "/a/"}, "jwt": {"providers": ["a"]}},
            {"name": "opt", "match": {"path_prefix": "/opt/"},
             "jwt": {"providers": ["a"], "allow_missing": True}},
            {"name": "fwd", "match": {"path_prefix": "/fwd/"}, "jwt": {"providers": ["fwd"]}},
            {"name": "open", "match": {"path_prefix": "/open/"},
             "rate_limit": [{"key": ["path"], "capacity": 1000, "refill_interval": "1s"}]},
        ],
    }


def upstream_saw(upstream):
    method, path, headers = upstream.requests[-1]
    return path, headers


def cookies_of(headers):
    c = headers.get("cookie")
    return {} if c is None else dict(p.strip().split("=", 1) for p in c.split(";"))


# ---------------------------------------------------------------- F1

def test_a_forged_token_beside_a_valid_one_never_reaches_the_upstream(envoy, upstream):
    e = envoy(jwt_config())
    # The forged bearer alone is refused.
    s, _, _ = e.request("/ab/x", headers={"authorization": f"Bearer {FORGED}"})
    assert s == 401
    # Beside b's valid session cookie: admitted, and neither the forged
    # header nor the session cookie goes upstream.
    s, _, body = e.request("/ab/x", headers={"authorization": f"Bearer {FORGED}",
                                             "cookie": f"session={token_b()}; theme=dark"})
    assert s == 200, body
    path, h = upstream_saw(upstream)
    assert "authorization" not in h, h
    assert cookies_of(h) == {"theme": "dark"}, h
    # One provider: a valid header beside a forged cookie and query token.
    s, _, body = e.request(f"/a/x?access_token={FORGED}&keep=1",
                           headers={"authorization": f"Bearer {token_a()}",
                                    "cookie": f"access_token={FORGED}"})
    assert s == 200, body
    path, h = upstream_saw(upstream)
    assert path == "/a/x?keep=1", path
    assert "authorization" not in h and "cookie" not in h, h
    # Same on a route where the token is optional.
    s, _, body = e.request("/opt/x", headers={"authorization": f"Bearer {token_a()}",
                                              "cookie": f"access_token={FORGED}; k=v"})
    assert s == 200, body
    path, h = upstream_saw(upstream)
    assert "authorization" not in h and cookies_of(h) == {"k": "v"}, h


def test_forward_true_sends_only_the_verified_token(envoy, upstream):
    e = envoy(jwt_config())
    good = token_a()
    s, _, body = e.request("/fwd/x", headers={"authorization": f"Bearer {good}",
                                              "cookie": f"access_token={FORGED}; k=v"})
    assert s == 200, body
    _, h = upstream_saw(upstream)
    assert h["authorization"] == f"Bearer {good}", h
    assert cookies_of(h) == {"k": "v"}, h
    # Two Authorization lines: Envoy joins them into one value, which is
    # no token: refused, nothing reaches the upstream.
    hits = upstream.hits
    s, _, _ = e.request("/fwd/x", headers=[("authorization", f"Bearer {good}"),
                                           ("authorization", f"Bearer {FORGED}")])
    assert s == 401
    assert upstream.hits == hits


def test_two_different_tokens_can_be_refused(envoy, upstream):
    c = jwt_config()
    c["routes"].insert(0, {"name": "strict", "match": {"path_prefix": "/strict/"},
                           "jwt": {"providers": ["a"], "reject_multiple_tokens": True}})
    e = envoy(c)
    hits = upstream.hits
    s, rh, body = e.request("/strict/x", headers={"authorization": f"Bearer {token_a()}",
                                                  "cookie": f"access_token={FORGED}"})
    assert s == 400, body
    assert 'error="invalid_request"' in rh["www-authenticate"]
    assert json.loads(body)["error"] == "invalid_request"
    assert upstream.hits == hits
    s, _, _ = e.request("/strict/x", headers={"authorization": f"Bearer {token_a()}"})
    assert s == 200


# ---------------------------------------------------------------- F3

def test_claim_headers_from_the_client_never_reach_the_upstream(envoy, upstream):
    e = envoy(jwt_config())
    spoof = [("x-user", "admin"), ("x_user", "admin"), ("X_User", "admin"),
             ("x-jwt-payload", "e30"), ("x_jwt_payload", "e30")]
    # A route without JWT, and a path no route matches.
    for path in ["/open/x", "/nowhere"]:
        s, _, body = e.request(path, headers=spoof)
        assert s == 200, body
        _, h = upstream_saw(upstream)
        leaked = {k for k in h if k.replace("_", "-") in ("x-user", "x-jwt-payload")}
        assert not leaked, (path, h)
    # A JWT route: the verified claim, and no underscore twin beside it.
    s, _, body = e.request("/a/x", headers=spoof + [("authorization", f"Bearer {token_a()}")])
    assert s == 200, body
    _, h = upstream_saw(upstream)
    assert h.get("x-user") == "user-1", h
    assert "x_user" not in h and "x-jwt-payload" not in h and "x_jwt_payload" not in h, h
    assert e.stat("wasmcustom.meshguard.claim_headers_removed") >= 3


# ---------------------------------------------------------------- F4

def test_a_lone_surrogate_in_a_claim_makes_the_token_invalid(envoy, upstream):
    e = envoy(jwt_config())
    tok = token_a(sub="\ud800admin")  # json.dumps writes it as \ud800
    assert "\\ud800" in json.dumps(claims(sub="\ud800admin"))
    s, rh, _ = e.request("/a/x", headers={"authorization": f"Bearer {tok}"})
    assert s == 401, rh
    assert 'error="invalid_token"' in rh["www-authenticate"]
    # A real pair (an emoji) is fine.
    emoji = token_a(sub="\U0001F600")
    s, _, _ = e.request("/a/x", headers={"authorization": f"Bearer {emoji}"})
    assert s == 200


# ---------------------------------------------------------------- F2: paths

def path_config(**top):
    c = {
        "jwt_providers": {"a": hs_provider(ISSUER, [BEARER])},
        "routes": [
            {"name": "admin", "match": {"path_prefix": "/admin"}, "jwt": {"providers": ["a"]}},
            {"name": "vhost", "match": {"hosts": ["api.example.com"]}, "jwt": {"providers": ["a"]}},
            {"name": "keyed", "match": {"path_prefix": "/p/"},
             "rate_limit": [{"key": ["path"], "capacity": 1, "refill_interval": "1h"}]},
            {"name": "all", "match": {}, "rate_limit": [{"key": ["path"], "capacity": 1000,
                                                         "refill_interval": "1s"}]},
        ],
    }
    c.update(top)
    return c


def test_equivalent_paths_cannot_skip_a_routes_policy(envoy, upstream):
    e = envoy(path_config())
    hits = upstream.hits
    for p in ["/admin/users", "//admin/users", "/%61dmin/users", "/x/../admin/users",
              "/./admin/users", "/%2e%2e/admin/users", "/admin/./users",
              "/x/%2E%2E/admin/users"]:
        # (A backslash in the path: Envoy's codec answers 400 itself.)
        s, _, body = e.request(p)
        assert s == 401, (p, s, body)
    assert upstream.hits == hits
    # A fully qualified host name is the same host.
    for host in ["api.example.com", "API.example.com.", "api.example.com.:80"]:
        s, _, _ = e.request("/v", headers={"host": host})
        assert s == 401, host
    # What cannot be normalised without guessing is refused, not matched.
    for p in ["/admin%2Fusers", "/x%2f..%2fadmin", "/a%5Cb", "/bad%zz", "/a//../admin"]:
        s, rh, body = e.request(p)
        assert s == 400, (p, s, body)
        assert json.loads(body)["error"] == "invalid_path"
    assert upstream.hits == hits
    assert e.stat("wasmcustom.meshguard.path_rejected") == 5
    # The upstream gets the path as sent: meshguard normalises for itself.
    s, _, _ = e.request("/open//a/./b?q=%2F")
    assert s == 200
    assert upstream.requests[-1][1] == "/open//a/./b?q=%2F"


def test_case_insensitive_routes_when_asked(envoy, upstream):
    c = path_config()
    c["routes"].insert(0, {"name": "ci", "match": {"path_prefix": "/Internal/", "case_sensitive": False},
                           "rate_limit": [{"key": ["path"], "capacity": 1, "refill_interval": "1h"}]})
    e = envoy(c)
    assert e.request("/INTERNAL/x")[0] == 200
    # One bucket for every case spelling of the path on such a route.
    assert e.request("/internal/X")[0] == 429
    assert e.request("/Internal/y")[0] == 200
    # Routes without the option stay case-sensitive.
    assert e.request("/ADMIN/x")[0] == 200


def test_equivalent_paths_share_one_bucket(envoy, upstream):
    e = envoy(path_config())
    assert e.request("/p/a")[0] == 200
    for p in ["/p/%61", "/p//a", "/p/x/../a", "/p/./a"]:
        assert e.request(p)[0] == 429, p
    assert e.request("/p/b")[0] == 200


def test_normalisation_can_be_turned_off_and_slashes_kept(envoy, upstream):
    e = envoy(path_config(path_normalization={"escaped_slashes": "keep"}))
    s, _, _ = e.request("/p/a%2fb")
    assert s == 200
    assert e.request("/p/a%2Fb")[0] == 429, "one spelling of an encoded slash"
    assert e.request("/p/a/b")[0] == 200, "kept distinct from the decoded path"
    off = envoy(path_config(path_normalization={"enabled": False}))
    assert off.request("//admin/users")[0] == 200, "off: the raw path is matched"


# ---------------------------------------------------------------- F2: addresses

def ip_config(prefix=None):
    ip = {"xff_trusted_hops": 1}
    if prefix:
        ip["ipv6_prefix"] = prefix
    return {"client_ip": ip,
            "routes": [{"name": "ip", "rate_limit": [{"key": ["client_ip"], "capacity": 1,
                                                      "refill_interval": "1h"}]}]}


def test_spellings_of_one_client_address_share_one_bucket(envoy, upstream):
    e = envoy(ip_config())

    def status(xff):
        return e.request("/", headers={"x-forwarded-for": xff})[0]

    groups = [["::1", "0:0:0:0:0:0:0:1", "[::1]", "[::1]:443"],
              ["1.2.3.4", "::ffff:1.2.3.4", "1.2.3.4:80", "[::ffff:1.2.3.4]"],
              # Not addresses: one shared identity, never one per spelling.
              ["001.002.003.004", "1.2.3.4.5", "localhost", "fe80::1%eth0"]]
    for g in groups:
        assert status(g[0]) == 200, g[0]
        for other in g[1:]:
            assert status(other) == 429, other
    assert status("5.6.7.8") == 200


def test_ipv6_clients_can_be_limited_by_prefix(envoy, upstream):
    e = envoy(ip_config(prefix=64))

    def status(xff):
        return e.request("/", headers={"x-forwarded-for": xff})[0]

    assert status("2001:db8:1:2::1") == 200
    assert status("2001:db8:1:2:ffff::9") == 429
    assert status("2001:db8:1:3::1") == 200
