"""Side-by-side benchmark: meshguard vs Envoy's native filters vs no filter.

One shared upstream Envoy (direct_response 200, cacheable), and for every
scenario a proxy Envoy (--concurrency 1) in front of it, loaded with wrk.
Per scenario and round: proxy CPU time (utime+stime from /proc/<pid>/stat)
per completed request, and requests/s. Rounds are interleaved; the report
uses medians, and overhead = scenario minus passthrough of the same run
(also paired: minus a passthrough proxy loaded at the same time on the
same CPU, its "twin", which cancels the machine's drift).

    ENVOY_BIN=... MESHGUARD_WASM=... python3 bench/bench.py [--quick]

See bench/README.md.
"""

import argparse
import json
import os
import shutil
import tempfile
import time

from . import noise, procs
from .bootstraps import upstream_bootstrap
from .common import FIXTURES, HERE, ROOT, BenchError, log, repo_paths
from .docblock import BLOCK_START, DOC, update_block
from .drive import write_rotating_lua, write_static_lua
from .render import render, render_latest_block
from .instructions import run_instructions
from .footprint import footprint_targets, meshguard_variants, reference_variants, run_footprint
from .run import bench_context, finish_workdir, run_rounds, stop_run
from .scenarios import build_scenarios, diag_scenarios
from .stats import evaluate, head_to_head, summarize
from .tokens import make_distinct_tokens
from .tools import (ensure_cryptography, ensure_rls_bin, ensure_trivial_dm, ensure_trivial_wasm, ensure_wrk,
                    machine_info, sha256_file)


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, 2 s per scenario (smoke run)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=2, help="seconds of measured load per scenario per round")
    ap.add_argument("--pairing", choices=("twin", "before", "none"), default="twin",
                    help="twin (default): each scenario runs at the same time as a passthrough proxy on the same "
                         "CPU, its overhead is the difference; before: a passthrough run right before each "
                         "scenario run; none: overheads from medians only")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load after a proxy starts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=4400,
                    help="distinct tokens for the *-distinct scenarios: each wrk thread must cycle more than "
                         "the verified-token cache holds (1024), whatever the other threads do")
    ap.add_argument("--only", default="", help="comma-separated scenario names (passthrough is always included)")
    ap.add_argument("--diag", action="store_true",
                    help="also price single host calls with variants of the trivial filter")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not pin the proxy to its own CPU (load generator and upstream on the others)")
    ap.add_argument("--no-rss", "--no-footprint", dest="no_rss", action="store_true",
                    help="skip the footprint measurement (RSS and configuration load time of fresh proxies)")
    ap.add_argument("--footprint-rounds", type=int, default=3,
                    help="rounds of the footprint measurement (every variant started afresh each round)")
    ap.add_argument("--footprint-concurrency", default="2,8",
                    help="the --concurrency values of the footprint measurement (comma-separated)")
    ap.add_argument("--footprint-only", action="store_true",
                    help="only the footprint measurement: no CPU scenario is loaded")
    ap.add_argument("--no-build", action="store_true", help="do not (re)build bench/trivial-filter nor the release rate limit service")
    ap.add_argument("--out", default=HERE, help="directory for results.md and results.json")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, Envoy logs)")
    ap.add_argument("--doc", "--readme", dest="doc", metavar="FILE", default=DOC,
                    help="file whose latest-run block a complete run rewrites (not with --quick, --only, "
                         "--diag, or a failed scenario); default docs/performance.md (--readme: the old name)")
    ap.add_argument("--no-doc", "--no-readme", dest="no_doc", action="store_true",
                    help="leave that file alone (--no-readme: the old name)")
    ap.add_argument("--instructions", action="store_true",
                    help="instead of CPU time: instructions per request under valgrind's callgrind, one scenario "
                         "at a time (default scenarios: passthrough, native-*, dm-*, dmb-*; --only narrows); "
                         "writes results-instructions.md/.json under --out, never the docs")
    ap.add_argument("--instructions-requests", type=int, default=3000,
                    help="about how many measured requests per scenario under callgrind (the count comes from wrk)")
    ap.add_argument("--instructions-warmup", type=int, default=5, help="seconds of unmeasured load under callgrind")
    ap.add_argument("--instructions-wasm", action="store_true",
                    help="with --instructions: also the wasm scenarios (mg-*, trivial-*; V8 under valgrind is slow)")
    ap.add_argument("--instructions-idle", type=int, default=10,
                    help="seconds of no load measured after each run under callgrind (0: none): the proxy's "
                         "instructions per second at rest, taken out of the net figures")
    ap.add_argument("--instructions-threads", type=int, default=1, help="wrk threads under callgrind")
    ap.add_argument("--instructions-connections", type=int, default=1, help="wrk connections under callgrind")
    ap.add_argument("--by-line", action="store_true",
                    help="with --instructions: also where the native module's instructions go, by meshguard "
                         "function and source line (callgrind --dump-instr=yes, addr2line); give MESHGUARD_NATIVE "
                         "a module with symbols (make native-profiling); writes results-by-line.md under --out")
    ap.add_argument("--instructions-timeout", type=int, default=None,
                    help="seconds a proxy under callgrind may take to be ready (default 120; 300 with a wasm filter)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 1
        args.footprint_rounds = 1
    if args.footprint_only:
        args.rounds, args.only, args.no_rss, args.tokens = 0, "passthrough", False, 1
    fp_concs = tuple(int(c) for c in args.footprint_concurrency.split(",") if c.strip())
    procs.set_pinning(not args.no_pin)
    if args.instructions:
        return run_instructions(args)

    envoy_bin = os.environ.get("ENVOY_BIN", "")
    if not envoy_bin or not os.access(envoy_bin, os.X_OK):
        raise BenchError(f"set ENVOY_BIN to the Envoy binary (got {envoy_bin!r}); `make bench` does it")
    mg_src = os.environ.get("MESHGUARD_WASM") or os.path.join(ROOT, "target/wasm32-wasip1/release/meshguard.wasm")
    if not os.path.exists(mg_src):
        raise BenchError(f"{mg_src} is missing: cargo build --release --target wasm32-wasip1 (or make build)")
    wrk = ensure_wrk()
    ensure_cryptography()
    trivial_src = ensure_trivial_wasm(args.no_build)
    if os.path.exists(os.environ.get("MESHGUARD_NATIVE", "")):
        ensure_trivial_dm(args.no_build)  # the dm-* rows' floor (dm-trivial, dm-rl-floor)

    workdir = tempfile.mkdtemp(prefix="meshguard-bench-")
    ok = False
    try:
        # Snapshot the modules: others may rebuild target/ while we run.
        mg_wasm = os.path.join(workdir, "meshguard.wasm")
        shutil.copyfile(mg_src, mg_wasm)
        trivial_wasm = os.path.join(workdir, "trivial_filter.wasm")
        shutil.copyfile(trivial_src, trivial_wasm)
        extra = {"wasm_size": os.path.getsize(mg_wasm), "wasm_sha256": sha256_file(mg_wasm),
                 "trivial_size": os.path.getsize(trivial_wasm), "wasm_source": mg_src}
        info = machine_info(envoy_bin)
        log(f"bench: Envoy {info['envoy_version']}, {info['nproc']} CPUs ({info['cpu_model']}), "
            f"meshguard.wasm {extra['wasm_size']:,} bytes, workdir {workdir}")

        with open(os.path.join(FIXTURES, "tokens.json")) as f:
            tokens_fixture = json.load(f)
        with open(os.path.join(FIXTURES, "jwks.json")) as f:
            fixture_jwks = json.load(f)
        t0 = time.monotonic()
        distinct = {alg: make_distinct_tokens(args.tokens, alg) for alg in ("RS256", "ES256")}
        log(f"bench: signed {args.tokens} distinct RS256 and ES256 tokens in {time.monotonic() - t0:.1f}s")

        scenarios = build_scenarios(mg_wasm, trivial_wasm, tokens_fixture, fixture_jwks, distinct)
        if args.diag:
            scenarios += diag_scenarios(trivial_wasm)
        if args.only:
            keep = set(args.only.split(",")) | {"passthrough"}
            if any(s.grpc for s in scenarios if s.name in keep):
                keep.add("grpc-passthrough")  # the gRPC scenarios' twin
            unknown = keep - {s.name for s in scenarios}
            if unknown:
                raise BenchError(f"unknown scenarios: {sorted(unknown)}")
            scenarios = [s for s in scenarios if s.name in keep]
        by_name = {s.name: s for s in scenarios}
        if any(sc.uses_rls for sc in scenarios):
            rls_bin, rls_kind = ensure_rls_bin(args.no_build)
            os.environ["MESHGUARD_RLS_BIN"] = rls_bin  # read by tests/e2e/rls.py
            extra["rls_bin"] = {"path": rls_bin, "kind": rls_kind}
        for sc in scenarios:
            path = os.path.join(workdir, f"wrk-{sc.name}.lua")
            sc.script = (write_rotating_lua(path, sc.tokens) if sc.tokens
                         else write_static_lua(path, sc.headers))

        up = procs.start(procs.envoy(envoy_bin, workdir, "upstream", upstream_bootstrap, concurrency=1,
                                     role="others"))
        ctx = bench_context(envoy_bin, workdir, wrk, scenarios, up)
        try:
            # One proxy per scenario, kept running for all rounds.
            comparisons = run_rounds(scenarios, by_name, args, ctx)
            for sc in scenarios:
                if sc.envoy:
                    sc.envoy.stop()
            if up.proc.poll() is not None:
                raise BenchError("the upstream Envoy died:\n" + up.log()[-4000:])
            if not args.no_rss and (args.footprint_only or not args.only) and args.footprint_rounds > 0:
                log("bench: footprint (fresh proxies: configuration load time, RSS at ready, after load, peak)")
                variants = (reference_variants(trivial_wasm)
                            + meshguard_variants(mg_wasm, fixture_jwks, tokens_fixture["valid_RS256"]))
                extra["footprint"] = run_footprint(variants, ctx, fp_concs, args.footprint_rounds)
                extra["footprint_concurrency"] = list(fp_concs)
        finally:
            stop_run(scenarios, ctx)

        summary = summarize(scenarios, by_name)
        foreign = noise.summarize(ctx.get("foreign_cpu_pct"))
        if foreign:
            extra["foreign_cpu_pct"] = foreign
            log(f"bench: other processes' CPU during the measured runs: median {foreign['median']:.1f}%, "
                f"max {foreign['max']:.1f}% of one CPU ({foreign['runs']} runs)"
                + (" -- NOISY: rerun on an idle machine" if noise.is_noisy(foreign) else ""))
        comp = head_to_head(comparisons)
        targets = evaluate(summary, comp)
        if extra.get("footprint"):
            targets += footprint_targets(extra["footprint"], extra["wasm_size"], fp_concs)
        if sha256_file(mg_src) != extra["wasm_sha256"]:
            extra["note"] = f"{mg_src} was rebuilt during the run; the results are for the snapshot taken at start"
        md = render(info, args, summary, scenarios, targets, extra, comp)
        print("\n" + md)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(md)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(repo_paths({"machine": info, "settings": vars(args), "extra": extra, "summary": summary,
                       "targets": targets, "comparisons": comp,
                       "scenarios": {s.name: {"desc": s.desc, "rounds": s.rounds, "paired_overhead_us": s.paired,
                                              "paired_rps_ratio": s.paired_rps,
                                              "load_times_s": s.load_times,
                                              "error": s.error} for s in scenarios}}), f, indent=1)
        log(f"bench: wrote {os.path.join(args.out, 'results.md')} and results.json")
        failed = [s.name for s in scenarios if s.error]
        if failed:
            log(f"bench: FAILED scenarios: {', '.join(failed)}")
            return 1
        if args.no_doc or args.quick or args.only or args.diag or args.footprint_only:
            log(f"bench: {args.doc} left alone (not a complete run, or --no-doc)")
        elif update_block(args.doc, render_latest_block(info, args, summary, scenarios, targets, extra, comp)):
            log(f"bench: wrote the latest-run block of {args.doc}")
        else:
            log(f"bench: {args.doc} has no latest-run block ({BLOCK_START}): left alone")
        ok = True
        return 0
    finally:
        finish_workdir(ok, args.keep, workdir, "configs and Envoy logs")
