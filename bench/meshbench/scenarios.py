"""The scenarios: what each proxy runs (filters, requests), the probe that
checks it does what it claims before it is measured, the --diag variants, and
the head-to-head comparisons behind the targets."""

import json
import os

from .bootstraps import (dm_filter, native_cache, native_global_ratelimit, native_jwt_authn, native_local_ratelimit,
                         wasm_filter)
from .common import (AUDIENCE, GRPC_HEADERS, GRPC_MESSAGE, GRPC_PATH, GRPC_STREAMS, ISSUER, NATIVE_RATE_LIMITS,
                     PATH, RLS_CLUSTER, RLS_DOMAIN, RLS_TIMEOUT, TRIVIAL_DM, BenchError)


class Scenario:
    def __init__(self, name, desc, filters, headers=None, tokens=None, group=None,
                 probe=None, expect_upstream=None, expect_stat=None, expect_zero=None,
                 route_extra=None, uses_rls=False, grpc=False, rls_batched=False):
        self.name, self.desc, self.filters = name, desc, filters
        self.grpc = grpc                # gRPC calls over HTTP/2 both sides (h2load), not wrk's GETs
        self.route_extra = route_extra  # more fields of the proxy's route action (native rate_limits)
        self.uses_rls = uses_rls        # needs the `ratelimit` cluster; every request must call the service
        self.rls_batched = rls_batched  # ... unless leased: calls per batch of hits, all answered OK
        self.expect_zero = expect_zero  # regex of stats that must stay 0 (failure-mode passes, errors)
        self.headers = headers or {}
        self.tokens = tokens            # rotate these as Bearer tokens (distinct-token scenarios)
        self.token_cursor = 1           # the next token a wrk run sends (the probe sent the first)
        self.group = group
        self.probe = probe              # extra check: f(envoy) raising BenchError
        self.expect_upstream = expect_upstream or ("none" if group == "cache" else "all")
        self.expect_stat = expect_stat  # regex of a stat that must be > 0 after the run
        self.rounds = []
        self.load_times = []
        self.error = None
        self.envoy = None
        self.paired = []  # per round: this scenario's CPU/req minus its passthrough twin's (or the run before)
        self.paired_rps = []  # per round: this scenario's req/s / its passthrough twin's

    def first_headers(self):
        h = dict(self.headers)
        if self.tokens:
            h["Authorization"] = "Bearer " + self.tokens[0]
        return h


def probe_status(envoy, headers, want, what):
    """A GET of the bench path with `headers` must answer `want`; its headers."""
    status, hdrs, body = envoy.request(PATH, headers=headers or {})
    if status != want:
        raise BenchError(f"{what}: expected {want}, got {status} {hdrs} {body[:300]!r}")
    return hdrs


def grpc_probe(envoy, sc):
    """A gRPC scenario answers the bench call with grpc-status 0 (meshguard's: with its limit's
    RateLimit-Policy, so the limit is active)."""
    # Sent over HTTP/1.1, which the h2 listeners also speak: a probe, not the load.
    status, hdrs, body = envoy.request(GRPC_PATH, "POST", headers=dict(GRPC_HEADERS), body=GRPC_MESSAGE)
    if status != 200 or hdrs.get("grpc-status") != "0":
        raise BenchError(f"{sc.name}: the gRPC call did not succeed: {status} {hdrs} {body[:300]!r}")
    if sc.name.startswith("mg-") and "ratelimit-policy" not in hdrs:
        raise BenchError(f"{sc.name}: no RateLimit-Policy header, is the limit active? {hdrs}")


def jwt_probe(envoy, sc):
    probe_status(envoy, {}, 401, "request without a token")
    bad = dict(sc.first_headers())
    bad["Authorization"] = bad["Authorization"][:-6] + ("AAAAAA" if not bad["Authorization"].endswith("AAAAAA") else "BBBBBB")
    probe_status(envoy, bad, 401, "request with a forged signature")


# The IETF headers of meshguard's bench rate limit on a first request (a bucket of 10^9 refilled
# every second), which the floor filter (trivial-rl-floor, op `rl_headers`) sends verbatim: both
# probes check them, so the floor stays the same bytes as what it is the floor of.
RL_HEADERS = {"ratelimit-policy": '"all";q=1000000000;w=1', "ratelimit": '"all";r=999999999;t=1'}


def rl_floor_probe(envoy, sc):
    hdrs = probe_status(envoy, sc.first_headers(), 200, "request")
    got = {k: hdrs.get(k) for k in RL_HEADERS}
    if got != RL_HEADERS:
        raise BenchError(f"{sc.name}: the floor filter must send {RL_HEADERS}, sent {got}")


def hit_floor_probe(envoy, sc):
    hdrs = probe_status(envoy, sc.first_headers(), 200, "request")
    if "hit" not in hdrs.get("cache-status", "") or "age" not in hdrs:
        raise BenchError(f"{sc.name}: the floor must answer like meshguard's hit (Age, Cache-Status): {hdrs}")


def mg_cache_probe(envoy, sc):
    probe_status(envoy, sc.first_headers(), 200, "first request")
    hdrs = probe_status(envoy, sc.first_headers(), 200, "second request")
    if "hit" not in hdrs.get("cache-status", "").lower():
        raise BenchError(f"meshguard cache: second response is not a hit: {hdrs}")


def native_cache_probe(envoy, sc):
    probe_status(envoy, sc.first_headers(), 200, "first request")
    hdrs = probe_status(envoy, sc.first_headers(), 200, "second request")
    if "age" not in hdrs:
        raise BenchError(f"native cache: second response has no Age header (not a hit): {hdrs}")


def mg_ratelimit_probe(envoy, sc):
    hdrs = probe_status(envoy, sc.first_headers(), 200, "request")
    if "ratelimit-policy" not in hdrs:
        raise BenchError(f"meshguard rate limit: no RateLimit-Policy header, is the limit active? {hdrs}")
    if sc.name == "mg-ratelimit":
        got = {k: hdrs.get(k) for k in RL_HEADERS}
        if got != RL_HEADERS:
            raise BenchError(f"meshguard rate limit: headers {got}, the floor (trivial-rl-floor) sends "
                             f"{RL_HEADERS}: update RL_HEADERS and the trivial filter's `rl_headers`")


def legacy_headers_probe(envoy, sc):
    hdrs = probe_status(envoy, sc.first_headers(), 200, "request")
    if "x-ratelimit-limit" not in hdrs:
        raise BenchError(f"{sc.name}: no X-RateLimit-Limit header, is the limit active? {hdrs}")


def mg_global_probe(envoy, sc):
    """The service answered and its limit matched: meshguard builds RateLimit-Policy from the
    service's current_limit, so a `"all"` policy means a real answer, not a failure-mode pass."""
    hdrs = probe_status(envoy, sc.first_headers(), 200, "request")
    if '"all"' not in hdrs.get("ratelimit-policy", ""):
        raise BenchError(f"meshguard global limit: no RateLimit-Policy for \"all\" (did the service "
                         f"answer and match?) {hdrs}")


DIAG_OPS = ("all_headers", "status", "flags", "metric", "shared", "remove_auth", "time", "add_resp_header")
DIAG_REPEAT = 50  # host calls of one kind per request: one call's price = (overhead - trivial's) / 50


def diag_scenarios(trivial_wasm):
    """The trivial filter plus DIAG_REPEAT host calls of one kind per request (--diag): prices host calls."""
    return [Scenario(f"diag-{op}", f"trivial filter + {DIAG_REPEAT} x {op.replace('_', ' ')}",
                     [wasm_filter("trivial", trivial_wasm, "trivial", f"hdr,{op}*{DIAG_REPEAT}")],
                     headers={"x-api-key": "k1"}, group="diag") for op in DIAG_OPS]


# Head-to-head comparisons behind the targets: the two proxies run at the same time on the same CPU
# (twins), so the difference is not blurred by the machine's drift between runs. (a, b, label):
# the result is b minus a.
COMPARISONS = [
    ("trivial-wasm", "mg-nopolicy", "meshguard no-policy route vs trivial wasm filter"),
    ("mg-nopolicy", "mg-ratelimit", "rate limit (one bucket) vs no-policy route"),
    ("mg-nopolicy", "mg-ratelimit-key", "rate limit keyed by header vs no-policy route"),
    ("mg-routes-first", "mg-routes-last", "1,000 routes matched by header: the last route vs the first (route index)"),
    ("mg-nopolicy", "mg-nopolicy-token", "no-policy route: requests with the ~700-byte token vs without"),
    ("mg-nopolicy-token", "mg-jwt-rs256", "JWT RS256 repeated token vs no-policy route, same requests"),
    ("mg-nopolicy", "mg-breaker", "circuit breaker CLOSED vs no-policy route"),
    ("trivial-wasm", "trivial-breaker-floor", "breaker floor: a healthy breaker's host calls, over the trivial filter"),
    ("trivial-breaker-floor", "mg-breaker", "circuit breaker CLOSED: meshguard vs the floor of its host calls"),
    ("mg-nopolicy", "mg-ratelimit-noheaders", "rate limit without rate-limit headers vs no-policy route"),
    ("trivial-wasm", "trivial-rl-floor", "rate-limit floor: the host calls of an exact bucket + IETF headers, over the trivial filter"),
    ("trivial-wasm", "trivial-rl-floor-noheaders", "rate-limit floor without headers: the host calls of an exact bucket, over the trivial filter"),
    ("trivial-rl-floor", "mg-ratelimit", "rate limit (IETF headers): meshguard vs the floor of its host calls"),
    ("trivial-rl-floor-noheaders", "mg-ratelimit-noheaders", "rate limit without headers: meshguard vs the floor of its host calls"),
    ("native-ratelimit", "mg-ratelimit-noheaders", "local rate limit, no headers: meshguard vs native"),
    ("native-ratelimit-headers", "mg-ratelimit-legacy", "local rate limit, X-RateLimit-* headers: meshguard vs native"),
    ("native-ratelimit-key", "mg-ratelimit-key", "local rate limit keyed by header: meshguard vs native"),
    ("native-jwt-rs256-distinct", "mg-jwt-rs256-distinct", "distinct RS256 tokens: meshguard vs jwt_authn"),
    ("native-jwt-es256-distinct", "mg-jwt-es256-distinct", "distinct ES256 tokens: meshguard vs jwt_authn"),
    ("native-cache-hit", "mg-cache-hit", "cache HIT: meshguard vs native cache filter"),
    ("native-cache-hit", "trivial-reply", "cache HIT floor: a wasm filter that only answers vs native cache filter"),
    ("native-cache-hit", "trivial-hit-floor", "cache HIT floor with a hit's host calls and headers vs native cache filter"),
    ("trivial-reply", "mg-cache-hit", "cache HIT: meshguard vs the wasm floor"),
    ("trivial-reply", "trivial-hit-floor", "cache HIT: a hit's host calls and headers (no lookup) over answering only"),
    ("trivial-hit-floor", "mg-cache-hit", "cache HIT: meshguard vs the floor of its host calls and headers"),
    ("grpc-passthrough", "mg-grpc-ratelimit", "gRPC over HTTP/2: meshguard rate limit vs passthrough"),
    ("mg-ratelimit", "mg-ratelimit-global-lease", "leased global limit (lease 1000) vs local limit (one bucket)"),
    # The native build (Envoy dynamic module, MESHGUARD_NATIVE) vs Envoy's filters and vs wasm.
    ("native-ratelimit", "dm-ratelimit-noheaders", "local rate limit, no headers: meshguard native module vs native"),
    ("mg-ratelimit-noheaders", "dm-ratelimit-noheaders", "rate limit, no headers: meshguard native module vs wasm"),
    ("native-jwt-rs256-cache", "dm-jwt-rs256", "JWT RS256 repeated token: meshguard native module vs jwt_authn with cache"),
    ("mg-jwt-rs256", "dm-jwt-rs256", "JWT RS256 repeated token: meshguard native module vs wasm"),
    ("native-cache-hit", "dm-cache-hit", "cache HIT: meshguard native module vs native cache filter"),
    ("mg-cache-hit", "dm-cache-hit", "cache HIT: meshguard native module vs wasm"),
    # The floor of a dynamic module (#24): what any module costs, and a rate limit's minimal work.
    ("passthrough", "dm-trivial", "no-op dynamic module vs no HTTP filter"),
    ("native-ratelimit", "dm-trivial", "no-op dynamic module vs local_ratelimit"),
    ("native-ratelimit", "dm-rl-floor", "dynamic-module rate-limit floor vs local_ratelimit"),
    ("dm-trivial", "dm-rl-floor", "dynamic-module rate-limit floor vs the no-op module"),
    ("dm-rl-floor", "dm-ratelimit-noheaders", "rate limit, no headers: meshguard native module vs its floor"),
    ("dm-trivial", "dm-ratelimit-noheaders", "rate limit, no headers: meshguard native module vs the no-op module"),
    ("dm-trivial", "dm-nopolicy", "no-policy route: meshguard native module vs the no-op module"),
    ("dm-nopolicy", "dm-ratelimit-noheaders", "rate limit, no headers, vs no-policy route: meshguard native module"),
    ("native-jwt-rs256-distinct", "dm-jwt-rs256-distinct", "distinct RS256 tokens: meshguard native module vs jwt_authn"),
    ("native-jwt-es256-distinct", "dm-jwt-es256-distinct", "distinct ES256 tokens: meshguard native module vs jwt_authn"),
    ("dm-ratelimit-noheaders", "dmb-ratelimit-noheaders", "rate limit, no headers: native module B vs A (MESHGUARD_NATIVE_B)"),
    ("dm-cache-hit", "dmb-cache-hit", "cache HIT: native module B vs A (MESHGUARD_NATIVE_B)"),
    ("dm-nopolicy", "dmb-nopolicy", "no-policy route: native module B vs A (MESHGUARD_NATIVE_B)"),
    ("dm-jwt-rs256", "dmb-jwt-rs256", "JWT RS256 repeated token: native module B vs A (MESHGUARD_NATIVE_B)"),
]


# Distinct-token scenarios must measure signature checks, not the verified-token cache: each wrk
# thread cycles more tokens than the cache holds (FIFO), so no request may be a cache hit, and every
# check must have gone to Envoy's native verify_signature.
DISTINCT_ZERO = r"^wasmcustom\.meshguard\.jwt\.bench\.(cache_hit|signature_checks_wasm)$"


def build_scenarios(mg_wasm, trivial_wasm, tokens_fixture, fixture_jwks, distinct):
    """`distinct`: {"RS256": (jwk, tokens), "ES256": (jwk, tokens)}."""
    jwks = {"keys": [k for k in fixture_jwks["keys"] if k["kty"] in ("RSA", "EC")] + [j for j, _ in distinct.values()]}
    route = {"name": "bench", "match": {"path_prefix": "/"}}
    rl = [{"name": "all", "capacity": 1000000000, "refill_tokens": 1000000000, "refill_interval": "1s"}]
    rl_key = [dict(rl[0], name="per-key", key=[{"header": "x-api-key"}])]
    provider = {"bench": {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"inline": jwks}}}
    breaker = {"consecutive_failures": 5, "open_duration": "5s"}
    cache = {"methods": ["GET", "HEAD"]}
    # Route selection at scale: 1,000 routes told apart by a header, each with a limit.
    many_routes = {"routes": [{"name": f"t{i}", "match": {"headers": [{"name": "x-tenant", "exact": f"t{i}"}]},
                               "rate_limit": rl} for i in range(1000)]}

    def mg(doc):
        return [wasm_filter("meshguard", mg_wasm, "meshguard", json.dumps(doc))]

    def mg_route(**policies):
        doc = {"routes": [dict(route, **policies)]}
        if "jwt" in policies:
            doc["jwt_providers"] = provider
        return mg(doc)

    mg_global = mg({"rate_limit_service": {"cluster": RLS_CLUSTER, "domain": RLS_DOMAIN, "timeout": RLS_TIMEOUT,
                                           "failure_mode": "allow"},
                    "routes": [dict(route, rate_limit=[{"name": "all", "scope": "global"}])]})
    mg_global_lease = mg({"rate_limit_service": {"cluster": RLS_CLUSTER, "domain": RLS_DOMAIN,
                                                 "timeout": RLS_TIMEOUT, "failure_mode": "allow"},
                          "routes": [dict(route, rate_limit=[{"name": "all", "scope": "global",
                                                              "lease": 1000}])]})
    rs = {"Authorization": "Bearer " + tokens_fixture["valid_RS256"]}
    es = {"Authorization": "Bearer " + tokens_fixture["valid_ES256"]}
    jwt = {"providers": ["bench"]}
    S = Scenario
    # meshguard as an Envoy dynamic module (`make native`), when built: same documents.
    native_so = os.environ.get("MESHGUARD_NATIVE", "")
    dm_scenarios = [] if not os.path.exists(native_so) else [
        S("dm-ratelimit-noheaders", "meshguard native module, rate limit, one bucket, all pass, no headers",
          [dm_filter(native_so, json.dumps({"rate_limit_headers": "none", "routes": [dict(route, rate_limit=rl)]}))],
          group="ratelimit", expect_stat=r"^wasmcustom\.meshguard\.ratelimit\.bench\.all\.allowed$"),
        S("dm-jwt-rs256", "meshguard native module, JWT RS256, one repeated token",
          [dm_filter(native_so, json.dumps({"jwt_providers": provider, "routes": [dict(route, jwt=jwt)]}))],
          headers=rs, group="jwt-rs256", probe=jwt_probe),
        S("dm-cache-hit", "meshguard native module, cache, every request a HIT",
          [dm_filter(native_so, json.dumps({"routes": [dict(route, cache=cache)]}))],
          group="cache", probe=mg_cache_probe, expect_upstream="none"),
        S("dm-nopolicy", "meshguard native module, one route, no policy",
          [dm_filter(native_so, json.dumps({"routes": [route]}))], group="ratelimit"),
        # The floor of any dynamic module (bench/trivial-dm): no-op hooks; then a rate limit's minimal work.
        S("dm-trivial", "reference dynamic module (bench/trivial-dm), every hook a no-op returning Continue",
          [dm_filter(TRIVIAL_DM, "")], group="ratelimit"),
        S("dm-rl-floor", "reference dynamic module doing a rate limit's minimal work (every request header "
          "read through the ABI, one atomic compare-and-swap, one counter increment)",
          [dm_filter(TRIVIAL_DM, "rl_floor")], group="ratelimit",
          expect_stat=r"^wasmcustom\.trivial\.allowed$"),
        # Distinct tokens (issue #24): every check a signature check through the module's native
        # crypto (src/native/crypto.rs), none a verified-token cache hit, none the pure Rust fallback.
        *[S(f"dm-jwt-{alg.lower()}-distinct", f"meshguard native module, JWT {alg}, {len(toks)} distinct tokens "
            "cycled", [dm_filter(native_so, json.dumps({"jwt_providers": provider,
                                                         "routes": [dict(route, jwt=jwt)]}))],
            tokens=toks, group="jwt-distinct", probe=jwt_probe,
            expect_stat=r"^wasmcustom\.meshguard\.jwt\.bench\.signature_checks_native$",
            expect_zero=DISTINCT_ZERO)
          for alg, (_, toks) in distinct.items()],
    ]
    # A/B of a change to the native module: MESHGUARD_NATIVE_B names another build, measured as twins
    # against MESHGUARD_NATIVE's (comparisons "... B vs A").
    native_b = os.environ.get("MESHGUARD_NATIVE_B", "")
    if dm_scenarios and os.path.exists(native_b):
        dm_scenarios += [
            S("dmb-ratelimit-noheaders", "MESHGUARD_NATIVE_B's native module, rate limit, one bucket, all pass, "
              "no headers", [dm_filter(native_b, json.dumps({"rate_limit_headers": "none",
                                                              "routes": [dict(route, rate_limit=rl)]}))],
              group="ratelimit", expect_stat=r"^wasmcustom\.meshguard\.ratelimit\.bench\.all\.allowed$"),
            S("dmb-cache-hit", "MESHGUARD_NATIVE_B's native module, cache, every request a HIT",
              [dm_filter(native_b, json.dumps({"routes": [dict(route, cache=cache)]}))],
              group="cache", probe=mg_cache_probe, expect_upstream="none"),
            S("dmb-nopolicy", "MESHGUARD_NATIVE_B's native module, one route, no policy",
              [dm_filter(native_b, json.dumps({"routes": [route]}))], group="ratelimit"),
            S("dmb-jwt-rs256", "MESHGUARD_NATIVE_B's native module, JWT RS256, one repeated token",
              [dm_filter(native_b, json.dumps({"jwt_providers": provider, "routes": [dict(route, jwt=jwt)]}))],
              headers=rs, group="jwt-rs256", probe=jwt_probe),
        ]
    return dm_scenarios + [
        S("passthrough", "no HTTP filter but the router", []),
        S("trivial-wasm", "reference wasm filter reading one header", [
            wasm_filter("trivial", trivial_wasm, "trivial", "")], headers={"x-api-key": "k1"}),
        S("trivial-reply", "reference wasm filter answering every request itself (the floor of a wasm cache hit)",
          [wasm_filter("trivial", trivial_wasm, "trivial", "reply")], headers={"x-api-key": "k1"},
          group="cache", expect_upstream="none"),
        S("trivial-rl-floor", "reference wasm filter making the host calls of an exact shared bucket with "
          "IETF headers (all request headers, clock, shared-data get, compare-and-swap set, the two headers "
          "meshguard sends), same requests as meshguard's: "
          "the floor of the rate-limit target", [wasm_filter("trivial", trivial_wasm, "trivial",
                                                              "all_headers,shared,time,rl_headers")],
          probe=rl_floor_probe),
        S("trivial-rl-floor-noheaders", "reference wasm filter making the host calls of an exact shared bucket "
          "(all request headers, clock, shared-data get, compare-and-swap set)", [wasm_filter("trivial", trivial_wasm, "trivial",
                                                                        "all_headers,shared,time")]),
        S("trivial-breaker-floor", "reference wasm filter making the host calls of a healthy breaker (all "
          "request headers, two shared-data reads of a key never written, the response's :status)",
          [wasm_filter("trivial", trivial_wasm, "trivial", "all_headers,shared_absent*2,status")]),
        S("mg-nopolicy", "meshguard, one route, no policy", mg_route()),
        S("mg-nopolicy-token", "meshguard, one route, no policy, requests carrying the RS256 token "
          "(the baseline of the JWT target: same request bytes)", mg_route(), headers=rs),
        S("mg-ratelimit", "meshguard rate limit, one bucket, all pass", mg_route(rate_limit=rl),
          group="ratelimit", probe=mg_ratelimit_probe),
        S("native-ratelimit", "local_ratelimit, all pass", [native_local_ratelimit()],
          group="ratelimit", expect_stat=r"http_local_rate_limit\.ok$"),
        S("mg-ratelimit-noheaders", "meshguard rate limit, one bucket, all pass, rate_limit_headers none "
          "(like local_ratelimit's default)", mg({"rate_limit_headers": "none", "routes": [dict(route, rate_limit=rl)]}),
          group="ratelimit", expect_stat=r"^wasmcustom\.meshguard\.ratelimit\.bench\.all\.allowed$"),
        S("mg-ratelimit-legacy", "meshguard rate limit, one bucket, all pass, X-RateLimit-* headers",
          mg({"rate_limit_headers": "legacy", "routes": [dict(route, rate_limit=rl)]}), group="ratelimit",
          probe=legacy_headers_probe),
        S("native-ratelimit-headers", "local_ratelimit, all pass, X-RateLimit-* headers (DRAFT_VERSION_03)",
          [native_local_ratelimit(headers=True)], group="ratelimit", expect_stat=r"http_local_rate_limit\.ok$",
          probe=legacy_headers_probe),
        S("mg-routes-first", "meshguard, 1,000 routes matched by an x-tenant header, request for the first",
          mg(many_routes), headers={"x-tenant": "t0"}, group="ratelimit",
          expect_stat=r"^wasmcustom\.meshguard\.ratelimit\.t0\.all\.allowed$"),
        S("mg-routes-last", "meshguard, 1,000 routes matched by an x-tenant header, request for the last",
          mg(many_routes), headers={"x-tenant": "t999"}, group="ratelimit",
          expect_stat=r"^wasmcustom\.meshguard\.ratelimit\.t999\.all\.allowed$"),
        S("mg-ratelimit-key", "meshguard rate limit keyed by x-api-key", mg_route(rate_limit=rl_key),
          headers={"x-api-key": "k1"}, group="ratelimit", probe=mg_ratelimit_probe),
        S("native-ratelimit-key", "local_ratelimit keyed by x-api-key (a bucket per value), all pass",
          [native_local_ratelimit(key_header="x-api-key")], headers={"x-api-key": "k1"}, group="ratelimit",
          expect_stat=r"http_local_rate_limit\.ok$"),
        S("mg-ratelimit-global", "meshguard global limit: one RLS call per request, all pass", mg_global,
          group="ratelimit-global", probe=mg_global_probe, uses_rls=True,
          expect_stat=r"^wasmcustom\.meshguard\.rls\.bench\.ok$",
          expect_zero=(r"^wasmcustom\.meshguard\.(rls\.bench\.(error|timeout|over_limit|failure_mode_\w+)"
                       r"|ratelimit\.bench\.all\.errors)$")),
        S("mg-ratelimit-global-lease", "meshguard leased global limit (lease 1000): one RLS call per batch "
          "of hits, spent through shared data, all pass", mg_global_lease,
          group="ratelimit-global", probe=mg_global_probe, uses_rls=True, rls_batched=True,
          expect_stat=r"^wasmcustom\.meshguard\.ratelimit\.bench\.all\.lease_hits$",
          expect_zero=(r"^wasmcustom\.meshguard\.(rls\.bench\.(error|timeout|over_limit|failure_mode_\w+)"
                       r"|ratelimit\.bench\.all\.(errors|lease_failed))$")),
        S("native-ratelimit-global", "ratelimit filter on the same RLS, same descriptor, all pass",
          [native_global_ratelimit()], group="ratelimit-global", uses_rls=True,
          route_extra={"rate_limits": NATIVE_RATE_LIMITS},
          expect_stat=r"^cluster\.upstream\.ratelimit\.ok$",
          expect_zero=r"^cluster\.upstream\.ratelimit\.(error|failure_mode_allowed|over_limit)$"),
        S("mg-jwt-rs256", "meshguard JWT RS256, one repeated token", mg_route(jwt=jwt),
          headers=rs, group="jwt-rs256", probe=jwt_probe),
        S("native-jwt-rs256", "jwt_authn RS256, repeated token, no cache", [native_jwt_authn(jwks, False)],
          headers=rs, group="jwt-rs256", probe=jwt_probe, expect_stat=r"jwt_authn\.allowed$"),
        S("native-jwt-rs256-cache", "jwt_authn RS256, repeated token, jwt_cache_config",
          [native_jwt_authn(jwks, True)], headers=rs, group="jwt-rs256", probe=jwt_probe,
          expect_stat=r"jwt_authn\.jwt_cache_hit$"),
        S("mg-jwt-es256", "meshguard JWT ES256, one repeated token", mg_route(jwt=jwt),
          headers=es, group="jwt-es256", probe=jwt_probe),
        S("native-jwt-es256", "jwt_authn ES256, repeated token, no cache", [native_jwt_authn(jwks, False)],
          headers=es, group="jwt-es256", probe=jwt_probe),
        S("native-jwt-es256-cache", "jwt_authn ES256, repeated token, jwt_cache_config",
          [native_jwt_authn(jwks, True)], headers=es, group="jwt-es256", probe=jwt_probe),
        *[sc for alg, (_, toks) in distinct.items() for sc in (
            S(f"mg-jwt-{alg.lower()}-distinct", f"meshguard JWT {alg}, {len(toks)} distinct tokens cycled",
              mg_route(jwt=jwt), tokens=toks, group="jwt-distinct", probe=jwt_probe,
              expect_stat=r"^wasmcustom\.meshguard\.jwt\.bench\.signature_checks_native$",
              expect_zero=DISTINCT_ZERO),
            S(f"native-jwt-{alg.lower()}-distinct", f"jwt_authn {alg}, {len(toks)} distinct tokens, no cache",
              [native_jwt_authn(jwks, False)], tokens=toks, group="jwt-distinct", probe=jwt_probe))],
        S("trivial-hit-floor", "reference wasm filter doing a cache hit's host calls without a lookup (read "
          "every request header, the clock, a 558-byte shared-data value; answer with the 8 headers and body "
          "meshguard's hit sends): the floor of meshguard's hit", [wasm_filter("trivial", trivial_wasm, "trivial",
                                                                             "hit_floor")],
          group="cache", probe=hit_floor_probe, expect_upstream="none"),
        S("mg-cache-hit", "meshguard cache, every request a HIT", mg_route(cache=cache),
          group="cache", probe=mg_cache_probe, expect_upstream="none"),
        S("native-cache-hit", "cache filter (SimpleHttpCache), every request a HIT", [native_cache()],
          group="cache", probe=native_cache_probe, expect_upstream="none"),
        S("mg-breaker", "meshguard circuit breaker, CLOSED", mg_route(circuit_breaker=breaker)),
        S("grpc-passthrough", f"gRPC unary calls over HTTP/2 both sides (h2load, {GRPC_STREAMS} streams per "
          "connection), no HTTP filter but the router", [], grpc=True, probe=grpc_probe),
        S("mg-grpc-ratelimit", "gRPC unary calls over HTTP/2 both sides, meshguard rate limit (route "
          "`match.grpc`, one bucket), all pass",
          mg({"routes": [{"name": "bench", "match": {"grpc": {"service": "bench.v1.Bench"}}, "rate_limit": rl}]}),
          grpc=True, probe=grpc_probe, expect_stat=r"^wasmcustom\.meshguard\.ratelimit\.bench\.all\.allowed$"),
        S("mg-jwt-rl-breaker", "meshguard JWT RS256 (repeated) + rate limit + breaker (no cache: every request goes upstream)",
          mg_route(jwt=jwt, rate_limit=rl, circuit_breaker=breaker),
          headers=rs, probe=jwt_probe),
        S("mg-all4", "meshguard JWT RS256 (repeated) + rate limit + breaker + cache",
          mg_route(jwt=jwt, rate_limit=rl, circuit_breaker=breaker, cache=cache),
          headers=rs, probe=jwt_probe, expect_upstream="any"),
    ]

