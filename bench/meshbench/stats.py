"""Statistics of a run: medians over rounds, overheads, the head-to-head
differences, and the issue's targets judged on them."""

import statistics

from .common import fmt
from .scenarios import COMPARISONS


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(scenarios, by_name):
    """Per scenario that ran: medians over its rounds, its overheads (paired and of medians). The
    passthrough row keeps only its twin runs with plain requests."""
    summary = {}
    # The passthrough row: its twin runs with plain requests (all of them if none was plain).
    pt_sc = by_name["passthrough"]
    pt_sc.rounds = [r for r in pt_sc.rounds if r.get("plain", True)] or pt_sc.rounds
    pt = pt_sc.rounds
    pt_cpu = median([r["cpu_us_per_req"] for r in pt]) if pt else None
    # gRPC scenarios are compared with the gRPC passthrough (same protocol, same calls).
    gpt = by_name.get("grpc-passthrough")
    gpt_cpu = median([r["cpu_us_per_req"] for r in gpt.rounds]) if gpt and gpt.rounds else None
    for sc in scenarios:
        if sc.error or not sc.rounds:
            continue
        cpu = median([r["cpu_us_per_req"] for r in sc.rounds])
        base_cpu = gpt_cpu if sc.grpc else pt_cpu
        summary[sc.name] = {
            "cpu_us_per_req": cpu,
            "cpu_us_per_req_min": min(r["cpu_us_per_req"] for r in sc.rounds),
            "paired_overhead_us": median(sc.paired) if sc.paired else (
                0.0 if sc.name in ("passthrough", "grpc-passthrough") else None),
            "paired_rps_ratio": median(sc.paired_rps) if sc.paired_rps else None,
            "overhead_us": None if base_cpu is None else cpu - base_cpu,
            "rps": median([r["rps"] for r in sc.rounds]),
            "p50_ms": median([r["p50_ms"] for r in sc.rounds]),
            "p99_ms": median([r["p99_ms"] for r in sc.rounds]),
            "upstream_fraction": median([r["upstream_fraction"] for r in sc.rounds]),
            "load_time_ms": median(sc.load_times) * 1000 if sc.load_times else None,
        }
        if sc.uses_rls:
            summary[sc.name].update({
                "rls_calls_per_req": median([r.get("rls_calls_per_req") for r in sc.rounds]),
                "rls_cpu_us_per_req": median([r.get("rls_cpu_us_per_req") for r in sc.rounds]),
            })
    return summary


def head_to_head(comparisons):
    """The head-to-head table: per comparison that ran, the median of b minus a and its range."""
    comp = {}
    for a, b, label in COMPARISONS:
        runs = comparisons.get((a, b))
        if runs:
            diffs = [r["diff_us"] for r in runs]
            comp[f"{b} - {a}"] = {"a": a, "b": b, "label": label, "diff_us": median(diffs),
                                  "min": min(diffs), "max": max(diffs), "n": len(diffs),
                                  "a_us": median([r["a_us"] for r in runs]),
                                  "b_us": median([r["b_us"] for r in runs])}
    return comp


def best_overhead(s):
    """The paired overhead when measured (less sensitive to machine drift), else the difference of medians."""
    if s is None:
        return None
    return s["paired_overhead_us"] if s.get("paired_overhead_us") is not None else s["overhead_us"]


# The issue's reference: a wasm filter reading one header cost ~12 us of CPU per request on its host
# (Envoy 1.40 / V8); its absolute budgets (+3 us, +5 us) are read against that.
ISSUE_TRIVIAL_US = 12


def evaluate(summary, comp=None):
    """The issue's targets. Each uses the head-to-head twin comparison when it ran (b - a measured at
    the same moments on the same CPU), else the paired overheads of separate runs."""
    comp = comp or {}

    def ov(name):
        return best_overhead(summary.get(name))

    def cpu(name):
        s = summary.get(name)
        return None if s is None else s["cpu_us_per_req"]

    def rps(name):
        s = summary.get(name)
        return None if s is None else s["rps"]

    def twin(a, b):
        c = comp.get(f"{b} - {a}")
        return None if c is None else c["diff_us"]

    def twin_note(a, b):
        c = comp.get(f"{b} - {a}")
        return "" if c is None else f" [twins: {c['min']:+.1f}..{c['max']:+.1f} over {c['n']} rounds]"

    def check(label, value, limit, ok, detail):
        return {"target": label, "measured": value, "limit": limit,
                "holds": None if value is None or limit is None else ok(value, limit), "detail": detail}

    nop, triv = ov("mg-nopolicy"), ov("trivial-wasm")
    t = []
    d = twin("trivial-wasm", "mg-nopolicy")
    if d is not None and triv is not None:
        t.append(check("no-policy overhead <= 1.2x trivial wasm filter overhead", d, 0.2 * triv,
                       lambda v, l: v <= l,
                       f"no-policy minus trivial {d:+.1f} us (twins){twin_note('trivial-wasm', 'mg-nopolicy')}; "
                       f"allowed +{0.2 * triv:.1f} us (0.2 x trivial's {triv:.1f} us overhead)"))
    else:
        t.append(check("no-policy overhead <= 1.2x trivial wasm filter overhead", nop,
                       None if triv is None else 1.2 * triv, lambda v, l: v <= l,
                       f"mg-nopolicy {fmt(nop)} us vs trivial {fmt(triv)} us"
                       + ("" if not nop or not triv else f" (ratio {nop / triv:.2f}x)")))
    for name, base, label, extra in (
            ("mg-ratelimit", "mg-nopolicy", "rate limit (default: IETF RateLimit headers)", 3),
            ("mg-ratelimit-noheaders", "mg-nopolicy", "rate limit without headers (local_ratelimit's default)", 3),
            ("mg-jwt-rs256", "mg-nopolicy-token", "JWT RS256 repeated", 5)):
        d = twin(base, name)
        if d is not None:
            # The budgets are absolute microseconds on the issue's host, where a wasm filter
            # reading one header cost ~12 us; shown also scaled to this host's trivial filter
            # (for information: the verdict is on the absolute figure).
            scaled = ("" if not triv else
                      f"; scaled to this host (trivial filter {triv:.1f} us vs the issue's ~{ISSUE_TRIVIAL_US} us): "
                      f"+{extra * triv / ISSUE_TRIVIAL_US:.1f} us, "
                      f"{'within' if d <= extra * triv / ISSUE_TRIVIAL_US else 'over'}")
            floor = {"mg-ratelimit": "trivial-rl-floor",
                     "mg-ratelimit-noheaders": "trivial-rl-floor-noheaders"}.get(name)
            f_over, mg_over = twin("trivial-wasm", floor), twin(floor, name)
            floor_note = ("" if f_over is None or mg_over is None else
                          f"; the floor of its host calls ({floor}) costs {f_over:+.1f} us over the trivial "
                          f"filter, meshguard {mg_over:+.1f} us over that floor")
            t.append(check(f"{label} overhead <= no-policy + {extra} us", d, extra, lambda v, l: v <= l,
                           f"{name} minus {base} {d:+.1f} us (twins){twin_note(base, name)}{scaled}{floor_note}"))
        else:
            o = ov(name)
            t.append(check(f"{label} overhead <= no-policy + {extra} us", o, None if nop is None else nop + extra,
                           lambda v, l: v <= l, f"{name} {fmt(o)} us vs no-policy {fmt(nop)} us"))
    md, nd = ov("mg-jwt-rs256-distinct"), ov("native-jwt-rs256-distinct")
    d = twin("native-jwt-rs256-distinct", "mg-jwt-rs256-distinct")
    if d is not None and nd is not None:
        t.append(check("distinct RS256 overhead <= 1.5x native jwt_authn (no cache)", d, 0.5 * nd,
                       lambda v, l: v <= l,
                       f"meshguard minus native {d:+.1f} us (twins){twin_note('native-jwt-rs256-distinct', 'mg-jwt-rs256-distinct')}; "
                       f"allowed +{0.5 * nd:.1f} us (0.5 x native's {nd:.1f} us overhead); ratio "
                       f"{(nd + d) / nd:.2f}x"))
    else:
        t.append(check("distinct RS256 overhead <= 1.5x native jwt_authn (no cache)", md,
                       None if nd is None else 1.5 * nd, lambda v, l: v <= l,
                       f"meshguard {fmt(md)} us vs native {fmt(nd)} us"
                       + ("" if not md or not nd else f" (ratio {md / nd:.2f}x)")))
    mc, nc = cpu("mg-cache-hit"), cpu("native-cache-hit")
    d = twin("native-cache-hit", "mg-cache-hit")
    if d is not None:
        c = comp["mg-cache-hit - native-cache-hit"]
        t.append(check("cache HIT CPU/request <= native cache HIT", d, 0.0, lambda v, l: v <= l,
                       f"meshguard minus native {d:+.1f} us/req (twins){twin_note('native-cache-hit', 'mg-cache-hit')}; "
                       f"{c['b_us']:.1f} vs {c['a_us']:.1f} us/req ({c['b_us'] / c['a_us']:.2f}x)"
                       + ("" if twin("native-cache-hit", "trivial-reply") is None else
                          f"; a wasm filter that only answers (trivial-reply) costs "
                          f"{twin('native-cache-hit', 'trivial-reply'):+.1f} us/req over native, meshguard "
                          f"{twin('trivial-reply', 'mg-cache-hit'):+.1f} us/req over that floor"
                          if twin("trivial-reply", "mg-cache-hit") is not None else "")
                       + ("" if twin("trivial-hit-floor", "mg-cache-hit") is None else
                          f"; a filter making a hit's host calls and sending its headers without any lookup "
                          f"(trivial-hit-floor) {twin('native-cache-hit', 'trivial-hit-floor'):+.1f} us/req over "
                          f"native, meshguard {twin('trivial-hit-floor', 'mg-cache-hit'):+.1f} us/req over it"
                          if twin("native-cache-hit", "trivial-hit-floor") is not None else "")))
    else:
        mo, no = ov("mg-cache-hit"), ov("native-cache-hit")
        t.append(check("cache HIT CPU/request <= native cache HIT", mo, no, lambda v, l: v <= l,
                       f"meshguard {fmt(mc)} us/req vs native {fmt(nc)} us/req"
                       + ("" if not mc or not nc else f" (ratio {mc / nc:.2f}x)")
                       + f"; overheads {fmt(mo)} vs {fmt(no)} us"))
    d = twin("mg-routes-first", "mg-routes-last")
    if d is not None:
        t.append(check("1,000th route costs <= the first + 1 us", d, 1.0, lambda v, l: v <= l,
                       f"last minus first {d:+.1f} us (twins){twin_note('mg-routes-first', 'mg-routes-last')}"))
    pt = rps("passthrough")
    # The issue's target: JWT + rate limit + breaker on one route, every
    # request going upstream. (all-four adds the cache: every request is a
    # hit, faster than passthrough; shown for reference.)
    for name, label in (("mg-jwt-rl-breaker", "JWT + rate limit + breaker"),
                        ("mg-all4", "all four (cache hits)")):
        r = rps(name)
        ratio = (summary.get(name) or {}).get("paired_rps_ratio")
        if ratio is not None:  # req/s over its passthrough twin's, same moments, same CPU
            triv_ratio = (summary.get("trivial-wasm") or {}).get("paired_rps_ratio")
            t.append(check(f"{label} requests/s >= 80% of passthrough", ratio, 0.8, lambda v, l: v >= l,
                           f"{name} {ratio:.0%} of its passthrough twin's req/s (median over rounds)"
                           + ("" if triv_ratio is None else
                              f"; the trivial wasm filter alone: {triv_ratio:.0%}")))
            continue
        t.append(check(f"{label} requests/s >= 80% of passthrough", r,
                       None if pt is None else 0.8 * pt, lambda v, l: v >= l,
                       f"{name} {fmt(r, 0)} req/s vs passthrough {fmt(pt, 0)} req/s"
                       + ("" if not r or not pt else f" ({r / pt:.0%})")))
    t += native_module_targets(ov, twin, twin_note, check)
    return t


def native_module_targets(ov, twin, twin_note, check):
    """#24: the native module (dm-*) against Envoy's own filters, twins of the same run; rows only
    when the native module's scenarios ran (MESHGUARD_NATIVE)."""
    t = []

    def floors(base):
        """What the reference dynamic module costs over `base` (the ABI's floor)."""
        parts = [f"{n} {twin(base, n):+.1f} us" for n in ("dm-trivial", "dm-rl-floor")
                 if twin(base, n) is not None]
        return "" if not parts else "; over the same base, the reference module (bench/trivial-dm): " + ", ".join(parts)

    for a, b, label, extra in (
            ("native-ratelimit", "dm-ratelimit-noheaders", "native module: rate limit overhead <= local_ratelimit + 1 us", 1.0),
            ("native-jwt-rs256-cache", "dm-jwt-rs256", "native module: JWT RS256 repeated <= jwt_authn with jwt_cache_config", 0.0),
            ("native-cache-hit", "dm-cache-hit", "native module: cache HIT CPU/request <= native cache HIT", 0.0)):
        d = twin(a, b)
        if d is None:
            continue
        detail = f"{b} minus {a} {d:+.1f} us (twins){twin_note(a, b)}"
        if b == "dm-ratelimit-noheaders":
            detail += floors(a)
            over = twin("dm-rl-floor", b)
            if over is not None:
                detail += f"; meshguard {over:+.1f} us over dm-rl-floor"
        t.append(check(label, d, extra, lambda v, l: v <= l, detail))
    d, nd = twin("native-jwt-rs256-distinct", "dm-jwt-rs256-distinct"), ov("native-jwt-rs256-distinct")
    if d is not None and nd is not None:
        t.append(check("native module: distinct RS256 tokens <= native jwt_authn (no cache)", d, 0.0,
                       lambda v, l: v <= l,
                       f"dm minus native {d:+.1f} us (twins)"
                       f"{twin_note('native-jwt-rs256-distinct', 'dm-jwt-rs256-distinct')}; "
                       f"native's overhead {nd:.1f} us; ratio {(nd + d) / nd:.2f}x"))
    return t
