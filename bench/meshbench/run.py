"""Running the scenarios: start and check each proxy, measured runs (alone or
as twins loaded at the same moments), the rounds. (The memory and start-up
measurement of fresh proxies is `footprint`.)"""

import os
import shutil
import time

from . import noise, procs
from .bootstraps import proxy_bootstrap, static_cluster
from .common import GRPC_MESSAGE, RLS_CLUSTER, BenchError, log
from .drive import finish_load, run_load, start_load
from .scenarios import COMPARISONS, probe_status
from .tools import ensure_tool


def start_scenario(sc, args, ctx):
    """Starts the scenario's proxy, checks it does what it claims, warms it up."""
    boot_scenario(sc, ctx)
    if args.warmup > 0:
        run_load(ctx, sc, sc.envoy.listen_port, sc.script, args.warmup, args.threads, args.connections)


def boot_scenario(sc, ctx, wrapper=None, timeout=None):
    """Starts the scenario's proxy (under `wrapper`, e.g. valgrind, when given; ready within
    `timeout` s, else procs' default) and checks it does what it claims: its probes, the rate
    limit service's calls, the stats that must stay 0."""
    up = ctx["upstream"]
    clusters = []
    if sc.uses_rls:
        rls = ctx.get("rls")
        if rls is None:
            raise BenchError(f"the rate limit service did not start: {ctx.get('rls_error')}")
        clusters.append(static_cluster(RLS_CLUSTER, rls.port, http2=True))
    envoy = procs.envoy(ctx["envoy_bin"], ctx["workdir"], sc.name,
                        lambda lp, ap: proxy_bootstrap(lp, ap, up.listen_port, sc.filters, sc.route_extra, clusters,
                                                       h2=sc.grpc), wrapper=wrapper)
    sc.envoy = envoy
    if timeout is None:
        procs.start(envoy)
    else:
        procs.start(envoy, timeout=timeout)
    sc.load_times.append(envoy.load_time_s)
    mark = ctx["rls"].mark() if sc.uses_rls else None
    if not sc.grpc:
        probe_status(envoy, sc.first_headers(), 200, f"{sc.name}: request")
    if sc.probe:
        sc.probe(envoy, sc)
    if sc.uses_rls:
        seen = ctx["rls"].since(mark)
        if seen["ok"] < 1 or seen["ok"] != seen["calls"]:
            raise BenchError(f"the rate limit service did not see the probe as expected: {seen}")
    check_zero_stats(sc)


def bench_context(envoy_bin, workdir, wrk, scenarios, up, rls_hint="", **extra):
    """What every run needs beside its scenarios: the binaries, the upstream, h2load and the gRPC
    payload when a scenario speaks gRPC, the rate limit service when one uses it (its failure is
    kept in `rls_error`: those scenarios fail at start, the others run)."""
    ctx = {"envoy_bin": envoy_bin, "workdir": workdir, "wrk": wrk, "upstream": up, **extra}
    if any(sc.grpc for sc in scenarios):
        ctx["h2load"] = ensure_tool("h2load", "nghttp2-client")
        ctx["grpc_payload"] = os.path.join(workdir, "grpc-message.bin")
        with open(ctx["grpc_payload"], "wb") as f:
            f.write(GRPC_MESSAGE)
    if any(sc.uses_rls for sc in scenarios):
        try:
            ctx["rls"] = procs.BenchRls(workdir).start()
            log(f"bench: rate limit service (tests/rls-server, in memory) on port {ctx['rls'].port}")
        except BenchError as e:
            ctx["rls_error"] = f"{e}{rls_hint}"
            log(f"\n!!!!! THE RATE LIMIT SERVICE DID NOT START !!!!!\n{e}\n")
    return ctx


def check_outcome(sc, n, upstream, rls_seen):
    """A load run did what its scenario claims: the share of its `n` requests that reached the
    upstream (`upstream`), the stat that shows the filter acting, the stats that must stay 0, and
    the rate limit service's calls (`rls_seen`, None without one)."""
    if sc.expect_upstream == "none" and upstream > 0.01:
        raise BenchError(f"{sc.name}: {upstream:.1%} of requests reached the upstream")
    if sc.expect_upstream == "all" and upstream < 0.95:
        raise BenchError(f"{sc.name}: only {upstream:.1%} of requests reached the upstream")
    if sc.expect_stat:
        st = sc.envoy.stats_matching(sc.expect_stat)
        if not st or max(st.values()) == 0:
            raise BenchError(f"{sc.name}: stat /{sc.expect_stat}/ is 0 or missing: the filter did not act ({st})")
    check_zero_stats(sc)
    # Every completed request made one call, logged before its answer was sent: at least n calls
    # for our descriptor, each answered OK by our limit, and no other call. Leased limits call
    # once per batch: every call answered OK, none failed.
    if rls_seen is not None and ((rls_seen["ok"] < n and not sc.rls_batched) or rls_seen["ok"] != rls_seen["calls"]):
        raise BenchError(f"{sc.name}: the rate limit service logged {rls_seen['ok']} matching OK calls of "
                         f"{rls_seen['calls']} for {n} completed requests: {rls_seen['other']}")


def stop_run(scenarios, ctx):
    """Stops the scenarios' proxies, the upstream and the rate limit service (if it started)."""
    for sc in scenarios:
        if sc.envoy:
            sc.envoy.stop()
    ctx["upstream"].stop()
    if ctx.get("rls"):
        ctx["rls"].stop()


def finish_workdir(ok, keep, workdir, kept):
    """Ends every process the run started; removes its work directory after a run that went
    through (unless `keep`), else says where `kept` (what the directory holds) is."""
    procs.stop_all()
    if ok and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"bench: {kept} kept in {workdir}")


def check_zero_stats(sc):
    if sc.expect_zero:
        bad = {k: v for k, v in sc.envoy.stats_matching(sc.expect_zero).items() if v}
        if bad:
            raise BenchError(f"stats that must stay 0 are not: {bad} (failure-mode passes are not a measurement)")


UPSTREAM_STAT = "cluster.upstream.upstream_rq_total"  # the proxy's own count of requests sent upstream


def check_run(sc, res):
    """A load run's result fit to count: the proxy still running, requests completed, almost all
    of them 2xx/3xx and without socket errors. Returns the number of requests."""
    envoy = sc.envoy
    if envoy.proc.poll() is not None:
        raise BenchError(f"{sc.name}: Envoy exited during the run:\n{envoy.log()[-4000:]}")
    n = res["requests"]
    if n == 0:
        raise BenchError(f"{sc.name}: wrk completed no request")
    if res["non_2xx"] > 0.01 * n:
        raise BenchError(f"{sc.name}: {res['non_2xx']} of {n} responses were not 2xx/3xx; "
                         f"the scenario is misconfigured. Envoy log tail:\n{envoy.log()[-3000:]}")
    if res["socket_errors"] > 0.01 * n:
        raise BenchError(f"{sc.name}: {res['socket_errors']} socket errors for {n} requests")
    return n


def measure(sc, args, ctx, record=True):
    """One measured wrk run against the scenario's (running) proxy."""
    return measure_many([(sc, record)], args, ctx)[0]


def measure_many(items, args, ctx):
    """Measured wrk runs against several running proxies at the same time, one wrk each, the
    connections and threads split between them: `items` is [(scenario, record)]. Proxies measured
    together share the same CPU at the same moments, so their difference is free of the machine's
    drift (which, on these shared 2-core machines, is larger than most differences we look for).
    An item may carry a third element, the wrk script to load it with instead of its own (a
    passthrough twin sent the same requests as the scenario it is paired with)."""
    scripts = [it[2] if len(it) > 2 and it[2] else it[0].script for it in items]
    items = [(it[0], it[1]) for it in items]
    n_items = len(items)
    threads = max(1, args.threads // n_items)
    conns = max(threads, args.connections // n_items)
    pre = []
    for sc, _ in items:
        envoy = sc.envoy
        if envoy.proc.poll() is not None:
            raise BenchError(f"{sc.name}: Envoy exited (code {envoy.proc.returncode}):\n{envoy.log()[-4000:]}")
        rls = ctx.get("rls") if sc.uses_rls else None
        if rls is not None and not rls.alive():
            raise BenchError("the rate limit service exited:\n" + rls.server.log()[-3000:])
        pre.append({"rls": rls, "up": envoy.stat_now(UPSTREAM_STAT), "rls_mark": rls.mark() if rls else None})
    window = noise.snapshot()
    for (sc, _), p in zip(items, pre):
        p["cpu"] = sc.envoy.cpu_us()
    procs = [start_load(ctx, sc, sc.envoy.listen_port, script, args.duration, threads, conns, sc.token_cursor)
             for (sc, _), script in zip(items, scripts)]
    results = [finish_load(sc, proc, args.duration) for (sc, _), proc in zip(items, procs)]
    for (sc, _), res in zip(items, results):
        if res["token_cursor"] is not None:
            sc.token_cursor = res["token_cursor"]
    for (sc, _), p in zip(items, pre):
        p["cpu_after"] = sc.envoy.cpu_us()
    foreign = record_foreign_cpu(window, [sc for sc, _ in items], ctx)
    out = []
    for (sc, record), p, res in zip(items, pre, results):
        envoy, rls = sc.envoy, p["rls"]
        rls_seen = rls.since(p["rls_mark"]) if rls else None
        up_after = envoy.stat_now(UPSTREAM_STAT)
        n = check_run(sc, res)
        res["cpu_us_per_req"] = (p["cpu_after"] - p["cpu"]) / n
        res["upstream_fraction"] = (up_after - p["up"]) / n
        res["measured_with"] = [o.name for o, _ in items if o is not sc]
        res["foreign_cpu_pct"] = foreign
        check_outcome(sc, n, res["upstream_fraction"], rls_seen)
        if rls_seen is not None:
            if rls_seen["other"]:
                log(f"bench: {sc.name}: the rate limit service also logged: {rls_seen['other']}")
            res["rls_calls"] = rls_seen["calls"]
            res["rls_answers_dropped"] = rls_seen["dropped"]
            res["rls_calls_per_req"] = rls_seen["calls"] / n
            res["rls_cpu_us_per_req"] = rls_seen["cpu_us"] / n
        try:  # meshguard's own counters (e.g. JWT cache hits), for the JSON report
            res["wasm_stats"] = {k: v for k, v in envoy.stats_matching("^wasmcustom\\.").items() if v}
        except OSError:
            res["wasm_stats"] = {}
        if record:
            sc.rounds.append(res)
        out.append(res)
    return out


def record_foreign_cpu(before, scenarios, ctx):
    """Other processes' CPU (% of one CPU) during the window that started at snapshot `before` and
    ends now, kept in ctx["foreign_cpu_pct"] (one value per window, for the report's summary) and
    said at once when above noise.NOISY_PCT: a busy machine inflates every CPU figure of the window,
    and whoever watches the run can stop the other work or the run."""
    pct = noise.foreign_pct(before, noise.snapshot())
    ctx.setdefault("foreign_cpu_pct", []).append(pct)
    if pct > noise.NOISY_PCT:
        log(f"bench: WARNING: other processes used {pct:.0f}% of one CPU while "
            f"{' + '.join(sc.name for sc in scenarios)} ran (> {noise.NOISY_PCT}%): "
            "its CPU figures are inflated")
    return pct


def run_rounds(scenarios, by_name, args, ctx):
    """Starts every scenario's proxy, one after the other (so load times do not disturb each other),
    then runs the rounds: each scenario with its passthrough twin (or as --pairing says), then the
    head-to-head comparisons. Returns {(a, b): [twin runs of a and b]}; a scenario that fails gets
    its `error` and is left out of the later rounds."""
    comparisons = {}  # (a, b) -> twin runs of a and b at the same time
    started = time.monotonic()
    for sc in scenarios:
        try:
            start_scenario(sc, args, ctx)
            log(f"bench: {sc.name:28s} ready in {sc.envoy.load_time_s * 1000:6.0f} ms")
        except BenchError as e:
            sc.error = str(e)
            log(f"\n!!!!! SCENARIO {sc.name} FAILED TO START !!!!!\n{e}\n")
            if sc.envoy:
                sc.envoy.stop()
    pt_sc = by_name["passthrough"]
    grpc_pt = by_name.get("grpc-passthrough")
    for rnd in range(args.rounds):
        # Rotate the order each round so no scenario always runs first or last.
        k = rnd * max(1, len(scenarios) // max(1, args.rounds)) % len(scenarios)
        for sc in scenarios[k:] + scenarios[:k]:
            if sc.error:
                continue
            try:
                base = None
                if args.pairing == "twin" and (sc is pt_sc or sc is grpc_pt):
                    continue  # measured as every other scenario's twin
                # The twin speaks the scenario's protocol: gRPC scenarios have their own.
                twin_sc = grpc_pt if sc.grpc and grpc_pt is not None else pt_sc
                if args.pairing == "twin" and not twin_sc.error:
                    # The twin gets the scenario's own requests (its headers, its tokens):
                    # the overhead is what the filter adds to the same traffic, not what a
                    # larger request costs Envoy. Only plain-request twin runs make up the
                    # passthrough row.
                    base, r = measure_many([(twin_sc, True, sc.script), (sc, True)], args, ctx)
                    base["plain"] = not sc.headers and not sc.tokens
                else:
                    if args.pairing == "before" and sc is not twin_sc and not twin_sc.error:
                        base = measure(twin_sc, args, ctx, record=False)
                    r = measure(sc, args, ctx)
                if base is not None:
                    sc.paired.append(r["cpu_us_per_req"] - base["cpu_us_per_req"])
                    sc.paired_rps.append(r["rps"] / base["rps"])
                log(f"round {rnd + 1}/{args.rounds} {sc.name:28s} {r['cpu_us_per_req']:7.1f} us/req "
                    f"{r['rps']:8.0f} req/s  non-2xx {r['non_2xx']}  upstream {r['upstream_fraction']:.0%}"
                    + ("" if base is None else f"  paired overhead {sc.paired[-1]:6.1f} us"))
            except BenchError as e:
                sc.error = str(e)
                log(f"\n!!!!! SCENARIO {sc.name} FAILED !!!!!\n{e}\n")
        if args.pairing == "twin":
            for a, b, _ in COMPARISONS:
                sa, sb = by_name.get(a), by_name.get(b)
                if not sa or not sb or sa.error or sb.error:
                    continue
                pair = [(sa, False), (sb, False)] if rnd % 2 == 0 else [(sb, False), (sa, False)]
                try:
                    res = dict(zip((pair[0][0].name, pair[1][0].name), measure_many(pair, args, ctx)))
                except BenchError as e:
                    log(f"bench: comparison {a} / {b} failed: {e}")
                    continue
                d = res[b]["cpu_us_per_req"] - res[a]["cpu_us_per_req"]
                comparisons.setdefault((a, b), []).append(
                    {"diff_us": d, "a_us": res[a]["cpu_us_per_req"], "b_us": res[b]["cpu_us_per_req"],
                     "rps_ratio": res[b]["rps"] / res[a]["rps"]})
                log(f"round {rnd + 1}/{args.rounds} twins {b} - {a}: {d:+.1f} us/req")
        log(f"bench: round {rnd + 1} done after {time.monotonic() - started:.0f}s")
    return comparisons
