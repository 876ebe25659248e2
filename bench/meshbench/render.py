"""The report: bench/results.md (every table of the run) and the short
latest-run block of docs/performance.md."""

from .common import fmt
from .docblock import BLOCK_END, BLOCK_START
from .footprint import footprint_table, growth_lines
from .noise import NOISY_PCT, is_noisy
from .procs import PIN
from .scenarios import DIAG_REPEAT
from .stats import best_overhead, median


def targets_table(targets, title):
    """The targets as markdown lines (a blank line after)."""
    L = [f"| {title} | holds | detail |", "|---|---|---|"]
    for t in targets:
        h = {True: "yes", False: "**NO**", None: "n/a"}[t["holds"]]
        L.append(f"| {t['target']} | {h} | {t['detail']} |")
    L.append("")
    return L


def foreign_cpu_line(extra):
    """The header line on the machine's other work during the measured runs (None: not measured)."""
    f = extra.get("foreign_cpu_pct")
    if not f:
        return None
    return (f"- other processes' CPU during measured runs: median {f['median']:.1f}%, max {f['max']:.1f}% "
            f"of one CPU ({f['runs']} runs)")


def noisy_warning(extra):
    """The loud line of a run that shared the machine (None: it did not, or not measured): other work
    on the machine inflates every CPU figure, the overheads with them, and nothing else in the report
    shows it; a reader must not compare such figures with an idle run's."""
    f = extra.get("foreign_cpu_pct")
    if not is_noisy(f):
        return None
    return (f"**WARNING: this run shared the machine with other work (other processes used up to "
            f"{f['max']:.0f}% of one CPU during the measured runs, median {f['median']:.0f}%; threshold "
            f"{NOISY_PCT}%): its CPU figures are inflated. Rerun on an idle machine.**")


def render(info, args, summary, scenarios, targets, extra, comp=None):
    L = []
    L.append("# meshguard benchmark results\n")
    L.append(f"- date: {info['date']}; git {info['git']}")
    L.append(f"- machine: {info['nproc']} CPUs, {info['cpu_model']}, Linux {info['kernel']}")
    L.append(f"- Envoy {info['envoy_version']}, proxy `--concurrency 1`, V8 runtime; one shared upstream "
             f"Envoy (direct_response 200)")
    L.append(f"- load: wrk -t{args.threads} -c{args.connections}, {args.duration}s per scenario per round, "
             f"{args.rounds} interleaved round(s); each proxy warmed up {args.warmup}s after start and kept "
             f"running across rounds; medians over rounds")
    if PIN["proxy"]:
        L.append(f"- CPUs: proxies under test on CPU {','.join(map(str, sorted(PIN['proxy'])))}; wrk, the upstream "
                 f"and the rate limit service on CPU {','.join(map(str, sorted(PIN['others'])))}")
    if args.pairing == "twin":
        L.append("- pairing: every scenario runs at the same time as a passthrough proxy (its twin), each with "
                 "its own wrk (half the threads and connections) sending the same requests (the scenario's "
                 "headers and tokens), both proxies on the same CPU; the passthrough row is the median of the "
                 "twin runs with plain requests")
    if extra.get("rls_bin"):
        L.append(f"- rate limit service (global scenarios): tests/rls-server {extra['rls_bin']['kind']}, "
                 f"limitador counting in memory, on 127.0.0.1, shared by both global scenarios")
    if extra.get("note"):
        L.append(f"- note: {extra['note']}")
    if foreign_cpu_line(extra):
        L.append(foreign_cpu_line(extra))
    L.append(f"- meshguard.wasm: {extra['wasm_size']:,} bytes (sha256 {extra['wasm_sha256'][:12]}); "
             f"trivial filter: {extra['trivial_size']:,} bytes")
    L.append("")
    if noisy_warning(extra):
        L.extend([noisy_warning(extra), ""])
    L.append("CPU/req = proxy Envoy utime+stime / requests completed (median over rounds). Overhead = median "
             "CPU/req minus median passthrough CPU/req. Paired overhead = median over rounds of (CPU/req minus "
             + ("its passthrough twin's, measured at the same moments on the same CPU" if args.pairing == "twin"
                else "a passthrough run made just before it") +
             "), with its range: the estimate the targets use, since it cancels most of the machine's drift. Upstream = share of requests that reached the upstream.\n")
    names = {sc.name for sc in scenarios}
    L.append("| scenario | what | CPU us/req | overhead us/req | paired overhead us/req [range] | min CPU us/req | req/s | p50 ms | p99 ms | upstream | per-round CPU us/req |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for sc in scenarios:
        s = summary.get(sc.name)
        if s is None and not sc.error:
            continue  # not loaded (--footprint-only)
        if s is None:
            L.append(f"| {sc.name} | {sc.desc} | FAILED | | | | | | | | {(sc.error or '').splitlines()[0][:100]} |")
            continue
        per = ", ".join(f"{r['cpu_us_per_req']:.1f}" for r in sc.rounds)
        paired = "-" if not sc.paired else (f"{fmt(s['paired_overhead_us'])} "
                                            f"[{min(sc.paired):.0f}..{max(sc.paired):.0f}]")
        L.append(f"| {sc.name} | {sc.desc} | {fmt(s['cpu_us_per_req'])} | {fmt(s['overhead_us'])} | {paired} | "
                 f"{fmt(s['cpu_us_per_req_min'])} | "
                 f"{fmt(s['rps'], 0)} | {fmt(s['p50_ms'], 2)} | {fmt(s['p99_ms'], 2)} | "
                 f"{s['upstream_fraction']:.0%} | {per} |")
    L.append("")
    L.append("## meshguard vs native\n")
    L.append("Overheads are the paired overheads (when measured); CPU/req is the median absolute cost. "
             "Ratios are meshguard / native (overhead ratio only when the native overhead is above 0.5 us).\n")
    L.append("| comparison | meshguard overhead us | native overhead us | meshguard / native | "
             "meshguard CPU us/req | native CPU us/req | CPU/req meshguard / native |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    pairs = [("rate limit", "mg-ratelimit", "native-ratelimit"),
             ("rate limit keyed by header", "mg-ratelimit-key", "native-ratelimit-key"),
             ("global rate limit (same RLS) vs ratelimit filter", "mg-ratelimit-global", "native-ratelimit-global"),
             ("leased global rate limit (same RLS) vs ratelimit filter", "mg-ratelimit-global-lease",
              "native-ratelimit-global"),
             ("JWT RS256 repeated vs jwt_authn no cache", "mg-jwt-rs256", "native-jwt-rs256"),
             ("JWT RS256 repeated vs jwt_authn + cache", "mg-jwt-rs256", "native-jwt-rs256-cache"),
             ("JWT ES256 repeated vs jwt_authn no cache", "mg-jwt-es256", "native-jwt-es256"),
             ("JWT ES256 repeated vs jwt_authn + cache", "mg-jwt-es256", "native-jwt-es256-cache"),
             ("JWT RS256 distinct tokens vs jwt_authn no cache", "mg-jwt-rs256-distinct", "native-jwt-rs256-distinct"),
             ("JWT ES256 distinct tokens vs jwt_authn no cache", "mg-jwt-es256-distinct", "native-jwt-es256-distinct"),
             ("cache HIT", "mg-cache-hit", "native-cache-hit")]

    def cpu(s):
        return None if s is None else s["cpu_us_per_req"]

    for label, a, b in pairs:
        sa, sb = summary.get(a), summary.get(b)
        if a not in names or b not in names:
            continue  # not run (--only)
        if not sa or not sb:
            L.append(f"| {label} | {fmt(best_overhead(sa))} | {fmt(best_overhead(sb))} | - | "
                     f"{fmt(cpu(sa))} | {fmt(cpu(sb))} | - |")
            continue
        oa, ob = best_overhead(sa), best_overhead(sb)
        ratio = oa / ob if ob is not None and oa is not None and ob > 0.5 else None
        L.append(f"| {label} | {fmt(oa)} | {fmt(ob)} | "
                 f"{'-' if ratio is None else f'{ratio:.2f}x'} | {fmt(cpu(sa))} | {fmt(cpu(sb))} | "
                 f"{cpu(sa) / cpu(sb):.2f}x |")
    L.append("")
    rls_rows = [sc for sc in scenarios if sc.uses_rls and summary.get(sc.name)]
    if rls_rows:
        L.append("## Global rate limits: the rate limit service\n")
        kind = (extra.get("rls_bin") or {}).get("kind", "?")
        L.append(f"Both scenarios call the same service (tests/rls-server, limitador counting in memory, {kind}), "
                 "which logs one line per call; a run fails unless it logged at least one matching OK "
                 "call per completed request and nothing else, and unless the proxy's error / timeout / "
                 "failure-mode stats stay 0. The service's own CPU is not in the proxy's CPU/req.\n")
        L.append("| scenario | RLS calls / request | RLS CPU us/req | proxy CPU us/req | req/s | p50 ms | p99 ms |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        pt = summary.get("passthrough")
        if pt:
            L.append(f"| passthrough (no call) | 0 | - | {fmt(pt['cpu_us_per_req'])} | {fmt(pt['rps'], 0)} | "
                     f"{fmt(pt['p50_ms'], 2)} | {fmt(pt['p99_ms'], 2)} |")
        for sc in rls_rows:
            s = summary[sc.name]
            L.append(f"| {sc.name} | {fmt(s.get('rls_calls_per_req'), 3)} | {fmt(s.get('rls_cpu_us_per_req'))} | "
                     f"{fmt(s['cpu_us_per_req'])} | {fmt(s['rps'], 0)} | {fmt(s['p50_ms'], 2)} | "
                     f"{fmt(s['p99_ms'], 2)} |")
        L.append("")
    diag = [sc for sc in scenarios if sc.group == "diag" and summary.get(sc.name)]
    if diag and summary.get("trivial-wasm"):
        L.append(f"## Host call prices (--diag: trivial filter + {DIAG_REPEAT} calls of one kind per request, "
                 "minus trivial, divided by the count)\n")
        L.append("| host call | us per call |")
        L.append("|---|---:|")
        base = best_overhead(summary["trivial-wasm"])
        for sc in diag:
            what = sc.desc.replace(f"trivial filter + {DIAG_REPEAT} x ", "")
            L.append(f"| {what} | {(best_overhead(summary[sc.name]) - base) / DIAG_REPEAT:.2f} |")
        L.append("")
    if comp:
        L.append("## Head to head (twins: both proxies loaded at the same moments on the same CPU)\n")
        L.append("| comparison | b minus a, us/req (median) | range | rounds | a us/req | b us/req |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for c in comp.values():
            L.append(f"| {c['label']} (a = {c['a']}, b = {c['b']}) | {c['diff_us']:+.1f} | "
                     f"{c['min']:+.1f}..{c['max']:+.1f} | {c['n']} | {c['a_us']:.1f} | {c['b_us']:.1f} |")
        L.append("")
    L.append("## Targets (ratios measured in this run)\n")
    L.extend(targets_table(targets, "target"))
    L.append("## Resources\n")
    L.append(f"- wasm module size: meshguard {extra['wasm_size']:,} bytes; trivial filter {extra['trivial_size']:,} bytes")
    fp = extra.get("footprint") or {}
    if fp:
        concs = extra.get("footprint_concurrency") or [2]
        L.append("")
        L.append("Footprint: every variant started afresh at each `--concurrency`, rounds alternating the order "
                 "(medians). Load = process start to the admin's /ready; RSS at ready, after 1 s of wrk, and "
                 "the peak (VmHWM: includes V8's compilation of the module).\n")
        L.extend(footprint_table(fp, concs))
        L.extend(growth_lines(fp, concs[0]))
    L.append("")
    L.append("| config load time (`--concurrency 1`, process start to /ready) | ms |")
    L.append("|---|---:|")
    for sc in scenarios:
        if sc.load_times and sc.name in ("passthrough", "trivial-wasm", "mg-nopolicy", "mg-jwt-rs256-distinct",
                                         "mg-all4", "native-jwt-rs256"):
            L.append(f"| {sc.name} | {median(sc.load_times) * 1000:.0f} |")
    L.append("")
    return "\n".join(L)


def render_latest_block(info, args, summary, scenarios, targets, extra, comp):
    """The "latest run" block of docs/performance.md: machine, versions, every
    scenario's figures, the head-to-head twins and the targets (the whole
    record is bench/results.md)."""
    L = [BLOCK_START, ""]
    L.append(f"Latest full run: {info['date']}, git {info['git']}; {info['nproc']} CPUs ({info['cpu_model']}), "
             f"Linux {info['kernel']}; Envoy {info['envoy_version']} (V8), proxy `--concurrency 1`; "
             f"wrk -t{args.threads} -c{args.connections}, {args.rounds} rounds of {args.duration} s; "
             f"meshguard.wasm {extra['wasm_size']:,} bytes. Overhead = CPU per request minus the passthrough "
             "twin's, measured at the same moments on the same CPU (median over rounds, range in brackets).")
    L.append("")
    if noisy_warning(extra):
        L.extend([noisy_warning(extra), ""])
    L.append("| scenario | what | CPU us/req | overhead us/req [range] | req/s | p99 ms |")
    L.append("|---|---|---:|---:|---:|---:|")
    for sc in scenarios:
        s = summary.get(sc.name)
        if s is None:
            continue
        paired = "-" if not sc.paired else (f"{fmt(s['paired_overhead_us'])} "
                                            f"[{min(sc.paired):.0f}..{max(sc.paired):.0f}]")
        L.append(f"| {sc.name} | {sc.desc} | {fmt(s['cpu_us_per_req'])} | {paired} | {fmt(s['rps'], 0)} | "
                 f"{fmt(s['p99_ms'], 2)} |")
    L.append("")
    if comp:
        L.append("| head to head (twins) | b minus a, us/req [range] |")
        L.append("|---|---:|")
        for c in comp.values():
            L.append(f"| {c['label']} | {c['diff_us']:+.1f} [{c['min']:+.1f}..{c['max']:+.1f}] |")
        L.append("")
    loads = [(sc.name, median(sc.load_times) * 1000) for sc in scenarios
             if getattr(sc, "load_times", None) and sc.name in ("passthrough", "trivial-wasm", "mg-nopolicy", "mg-all4")]
    line = "Resources: module " + f"{extra['wasm_size']:,} bytes"
    if extra.get("trivial_size"):
        line += f" (trivial filter {extra['trivial_size']:,})"
    if loads:
        line += "; config load at `--concurrency 1` (start to /ready): " + ", ".join(
            f"{n} {ms:.0f} ms" for n, ms in loads)
    L.append(line + ".")
    L.append("")
    fp = extra.get("footprint") or {}
    if fp:
        concs = extra.get("footprint_concurrency") or [2]
        L.append("Footprint (fresh proxies, medians of alternating rounds; RSS in MiB, load = start to /ready):")
        L.append("")
        L.extend(footprint_table(fp, concs))
        L.extend(growth_lines(fp, concs[0]))
    L.extend(targets_table(targets, "target (issues #8, #22, #24)"))
    L.append(BLOCK_END)
    return "\n".join(L)
