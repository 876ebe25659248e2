"""Footprint: what a proxy costs before it serves a request (issue #22).

For each variant (passthrough, the trivial wasm filter, meshguard with
various configurations) and each `--concurrency` (2 and 8 by default): a
fresh Envoy is started, its configuration load time is taken (process
start to the admin's /ready), its VmRSS right after ready, then after a
short load, and its VmHWM (the peak, which includes V8's compilation).
Rounds alternate the order of the variants, so every variant sees the
machine at the same moments; the report uses medians.

Used by the benchmark (`bench/bench.py`: the footprint table and the
footprint targets) and by `bench/footprint.py`, which compares two or more
meshguard modules (e.g. two wasm-opt settings) the same way.
"""

import json
import os
import time

from . import procs
from .bootstraps import proxy_bootstrap, wasm_filter
from .common import AUDIENCE, ISSUER, PATH, BenchError, log
from .drive import run_wrk, write_static_lua
from .stats import median

ROUTE_COUNTS = (10, 100, 1000)
JWKS_SIZES = (1, 10, 100)  # RSA-2048 keys in the provider's inline JWKS


class Variant:
    def __init__(self, name, desc, filters, headers=None, group="reference"):
        self.name, self.desc, self.filters, self.headers, self.group = name, desc, filters, headers or {}, group
        self.script = None
        self.runs = {}  # concurrency -> [{"load_ms", "rss_ready_kb", "rss_loaded_kb", "hwm_kb"}]


def rsa_jwks(count):
    """`count` fresh RSA-2048 public keys as JWKs (kid jwks-<i>)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from .tokens import int_b64url
    keys = []
    for i in range(count):
        pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers()
        keys.append({"kty": "RSA", "kid": f"jwks-{i}", "use": "sig", "alg": "RS256",
                     "n": int_b64url(pub.n), "e": int_b64url(pub.e)})
    return keys


def mg_doc_nopolicy():
    return {"routes": [{"name": "bench", "match": {"path_prefix": "/"}}]}


RL = [{"name": "all", "capacity": 1000000000, "refill_tokens": 1000000000, "refill_interval": "1s"}]
BREAKER = {"consecutive_failures": 5, "open_duration": "5s"}


def mg_doc_all4(jwks):
    return {"jwt_providers": {"bench": {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"inline": {"keys": jwks}}}},
            "routes": [{"name": "bench", "match": {"path_prefix": "/"}, "jwt": {"providers": ["bench"]},
                        "rate_limit": RL, "circuit_breaker": BREAKER, "cache": {"methods": ["GET", "HEAD"]}}]}


def mg_doc_routes(n):
    """`n` routes told apart by an x-tenant header, each with a rate limit (the requests go to the first)."""
    return {"routes": [{"name": f"t{i}", "match": {"headers": [{"name": "x-tenant", "exact": f"t{i}"}]},
                        "rate_limit": RL} for i in range(n)]}


def mg_doc_jwks(jwks):
    return {"jwt_providers": {"bench": {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"inline": {"keys": jwks}}}},
            "routes": [{"name": "bench", "match": {"path_prefix": "/"}, "jwt": {"providers": ["bench"]}}]}


def mg_filter(wasm, doc):
    return [wasm_filter("meshguard", wasm, "meshguard", json.dumps(doc))]


def reference_variants(trivial_wasm):
    return [Variant("passthrough", "no HTTP filter but the router", []),
            Variant("trivial-wasm", "reference wasm filter reading one header",
                    [wasm_filter("trivial", trivial_wasm, "trivial", "")], headers={"x-api-key": "k1"})]


def meshguard_variants(mg_wasm, fixture_jwks, rs_token, label="mg", scale=True, jwks_sizes=JWKS_SIZES,
                       route_counts=ROUTE_COUNTS):
    """meshguard's footprint variants: no policy, all four policies, and (`scale`) the route count and
    JWKS size series. `rs_token`: a token the fixture JWKS verifies (the JWT variants' requests)."""
    base_jwks = [k for k in fixture_jwks["keys"] if k["kty"] in ("RSA", "EC")]
    rs = {"Authorization": "Bearer " + rs_token}
    out = [Variant(f"{label}-nopolicy", "meshguard, one route, no policy", mg_filter(mg_wasm, mg_doc_nopolicy()),
                   group="meshguard"),
           Variant(f"{label}-all4", "meshguard JWT RS256 + rate limit + breaker + cache",
                   mg_filter(mg_wasm, mg_doc_all4(base_jwks)), headers=rs, group="meshguard")]
    if not scale:
        return out
    for n in route_counts:
        out.append(Variant(f"{label}-routes-{n}", f"meshguard, {n:,} routes matched by header, each rate limited",
                           mg_filter(mg_wasm, mg_doc_routes(n)), headers={"x-tenant": "t0"}, group="routes"))
    if jwks_sizes:
        extra = rsa_jwks(max(jwks_sizes))
        for n in jwks_sizes:
            jwks = base_jwks + extra[:n]
            size = len(json.dumps({"keys": jwks}))
            out.append(Variant(f"{label}-jwks-{n}", f"meshguard JWT, inline JWKS of {len(jwks)} keys "
                               f"({size:,} bytes)", mg_filter(mg_wasm, mg_doc_jwks(jwks)), headers=rs,
                               group="jwks"))
    return out


def vm_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/{pid}/status")


def measure_once(v, concurrency, ctx, load_s):
    """One fresh proxy of variant `v`: load time, RSS at ready, RSS after `load_s` of wrk, peak RSS."""
    up = ctx["upstream"]
    envoy = procs.envoy(ctx["envoy_bin"], ctx["workdir"], f"fp-{v.name}-c{concurrency}",
                        lambda lp, ap: proxy_bootstrap(lp, ap, up.listen_port, v.filters), concurrency=concurrency)
    try:
        procs.start(envoy)
        pid = envoy.proc.pid
        ready = vm_kb(pid, "VmRSS")
        status, _, body = envoy.request(PATH, headers=v.headers)
        if status != 200:
            raise BenchError(f"footprint {v.name}: expected 200, got {status} {body[:200]!r}")
        if load_s > 0:
            res = run_wrk(ctx["wrk"], envoy.listen_port, v.script, load_s, 2, 16)
            if res["non_2xx"] > 0.01 * res["requests"]:
                raise BenchError(f"footprint {v.name}: {res['non_2xx']} of {res['requests']} responses not 2xx")
        time.sleep(0.2)
        return {"load_ms": envoy.load_time_s * 1000, "rss_ready_kb": ready,
                "rss_loaded_kb": vm_kb(pid, "VmRSS"), "hwm_kb": vm_kb(pid, "VmHWM")}
    finally:
        envoy.stop()


def run_footprint(variants, ctx, concurrencies=(2, 8), rounds=3, load_s=1):
    """Every variant at every concurrency, `rounds` times, the order rotated each round."""
    for v in variants:
        if v.script is None:
            v.script = write_static_lua(os.path.join(ctx["workdir"], f"fp-{v.name}.lua"), v.headers)
    for rnd in range(rounds):
        for conc in concurrencies:
            k = rnd % len(variants)
            order = variants[k:] + variants[:k]
            if rnd % 2:
                order.reverse()
            for v in order:
                r = measure_once(v, conc, ctx, load_s)
                v.runs.setdefault(conc, []).append(r)
                log(f"footprint round {rnd + 1}/{rounds} c{conc} {v.name:24s} ready {r['load_ms']:6.0f} ms  "
                    f"RSS {r['rss_ready_kb'] / 1024:6.1f} MiB -> {r['rss_loaded_kb'] / 1024:6.1f} MiB after load, "
                    f"peak {r['hwm_kb'] / 1024:6.1f} MiB")
    return summarize_footprint(variants)


def summarize_footprint(variants):
    """{name: {"desc", "group", "c<N>": {median of each figure, "n"}}}."""
    out = {}
    for v in variants:
        row = {"desc": v.desc, "group": v.group}
        for conc, runs in v.runs.items():
            row[f"c{conc}"] = {k: median([r[k] for r in runs]) for k in runs[0]}
            row[f"c{conc}"]["n"] = len(runs)
            row[f"c{conc}"]["load_ms_all"] = [round(r["load_ms"]) for r in runs]
        out[v.name] = row
    return out


def mib(kb):
    return "-" if kb is None else f"{kb / 1024:.1f}"


def footprint_table(fp, concurrencies):
    """Markdown lines: one row per variant, RSS (ready, after load, peak) and load time per concurrency."""
    head = "| variant | what |"
    sep = "|---|---|"
    for c in concurrencies:
        head += f" c{c} RSS ready MiB | c{c} RSS after load MiB | c{c} peak MiB | c{c} load ms |"
        sep += "---:|---:|---:|---:|"
    L = [head, sep]
    for name, row in fp.items():
        line = f"| {name} | {row['desc']} |"
        for c in concurrencies:
            m = row.get(f"c{c}")
            line += (" - | - | - | - |" if m is None else
                     f" {mib(m['rss_ready_kb'])} | {mib(m['rss_loaded_kb'])} | {mib(m['hwm_kb'])} | "
                     f"{m['load_ms']:.0f} |")
        L.append(line)
    L.append("")
    return L


def growth_lines(fp, concurrency=2):
    """How RSS (after load) grows with the route count and the JWKS size, over meshguard no-policy."""
    base = (fp.get("mg-nopolicy") or {}).get(f"c{concurrency}")
    if not base:
        return []
    parts = []
    for group, what in (("routes", "routes"), ("jwks", "JWKS")):
        rows = [(n, r[f"c{concurrency}"]) for n, r in fp.items() if r["group"] == group and f"c{concurrency}" in r]
        if rows:
            parts.append(f"{what}: " + ", ".join(
                f"{n.split('-', 1)[1]} {(m['rss_loaded_kb'] - base['rss_loaded_kb']) / 1024:+.1f} MiB / "
                f"{m['load_ms']:.0f} ms" for n, m in rows))
    if not parts:
        return []
    return [f"RSS growth over mg-nopolicy (`--concurrency {concurrency}`, after load) and load time: "
            + "; ".join(parts) + ".", ""]


def footprint_targets(fp, wasm_size, concurrencies):
    """The issue-22 targets, measured in this run."""
    t = []

    def row(label, value, limit, detail):
        t.append({"target": label, "measured": value, "limit": limit,
                  "holds": None if value is None or limit is None else value <= limit, "detail": detail})

    for c in concurrencies:
        triv = (fp.get("trivial-wasm") or {}).get(f"c{c}")
        for name, budget in (("mg-nopolicy", 10), ("mg-all4", 16)):
            m = (fp.get(name) or {}).get(f"c{c}")
            if not triv or not m:
                continue
            d = (m["rss_loaded_kb"] - triv["rss_loaded_kb"]) / 1024
            row(f"`--concurrency {c}` RSS: {name} <= trivial wasm filter + {budget} MiB", d, budget,
                f"{name} {mib(m['rss_loaded_kb'])} MiB vs trivial {mib(triv['rss_loaded_kb'])} MiB after load: "
                f"{d:+.1f} MiB (median of {m['n']})")
        m = (fp.get("mg-nopolicy") or {}).get(f"c{c}")
        if triv and m:
            ratio = m["load_ms"] / triv["load_ms"]
            row(f"`--concurrency {c}` configuration load: mg-nopolicy <= 2x trivial wasm filter", ratio, 2.0,
                f"{m['load_ms']:.0f} ms vs {triv['load_ms']:.0f} ms: {ratio:.2f}x")
    row("module <= 600 KB after wasm-opt", wasm_size / 1000, 600, f"{wasm_size:,} bytes")
    return t
