#!/usr/bin/env python3
"""A/B of two wasm filters (two modules, two configurations, or both) as twins.

Both proxies (`--concurrency 1`) run on the same CPU and are loaded at the
same moments, each by its own wrk, for several rounds (order alternated);
the result is B minus A in proxy CPU per request, with its spread. On these
shared machines a difference of separate runs drifts by +-20 us; between
twins it is stable to about +-1-3 us, enough to see one host call.

    ENVOY_BIN=... .venv/bin/python bench/ab.py \\
        --a-wasm old.wasm --b-wasm target/wasm32-wasip1/release/meshguard.wasm \\
        --a-config '{"routes": [...]}' [--b-config ...] [--header 'authorization: Bearer ...'] \\
        [--rounds 8] [--perf]

`--perf` also samples both proxies with `perf record` (frame pointers) and
splits each one's CPU per request into: time in wasm code (V8's JIT code),
time in host calls made from wasm (Envoy code under a wasm frame), and time
outside wasm (Envoy, kernel, libraries). Envoy is stripped, so this is the
finest split available without symbols; stacks that perf cannot unwind
through the wasm-to-host wrappers land in "outside".
"""

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from meshbench import procs  # noqa: E402
from meshbench.bootstraps import upstream_bootstrap, wasm_filter  # noqa: E402
from meshbench.common import BenchError  # noqa: E402
from meshbench.drive import write_rotating_lua, write_static_lua  # noqa: E402
from meshbench.run import measure_many, start_scenario  # noqa: E402
from meshbench.scenarios import Scenario  # noqa: E402
from meshbench.tokens import make_distinct_tokens  # noqa: E402
from meshbench.tools import ensure_cryptography, ensure_wrk  # noqa: E402

SAMPLE_HZ = 2000


def attribute(data_path, pids_requests):
    """{name: Counter(category -> us/request)} from a perf.data of both proxies."""
    out = subprocess.run(["perf", "script", "-i", data_path, "-F", "pid,ip,dso"],
                         capture_output=True, text=True).stdout
    by_pid = {str(pid): name for name, (pid, _) in pids_requests.items()}
    counts = {name: collections.Counter() for name in pids_requests}
    cur, frames = None, []

    def flush():
        if cur not in by_pid or not frames:
            return
        kinds = [k for _, k in frames]
        if kinds[0] == "jit":
            cat = "wasm code"
        elif "jit" in kinds:
            cat = "host calls from wasm"
        else:
            cat = "outside wasm: " + kinds[0]
        counts[by_pid[cur]][cat] += 1

    for line in out.split("\n"):
        if not line.strip():
            flush()
            cur, frames = None, []
            continue
        if not line.startswith("\t"):
            cur = line.split()[0]
            continue
        parts = line.split(None, 1)
        dso = parts[1] if len(parts) > 1 else ""
        kind = ("jit" if "perf-" in dso else "envoy" if "envoy" in dso
                else "kernel" if "kernel" in dso else "lib")
        frames.append((parts[0], kind))
    flush()
    us_per_sample = 1e6 / SAMPLE_HZ
    return {name: {c: n * us_per_sample / max(1, pids_requests[name][1]) for c, n in cnt.items()}
            for name, cnt in counts.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a-wasm", required=True)
    ap.add_argument("--b-wasm", help="default: the A module")
    ap.add_argument("--a-config", required=True, help="plugin configuration (JSON text) of A")
    ap.add_argument("--b-config", help="default: A's")
    ap.add_argument("--root-id", default="meshguard")
    ap.add_argument("--header", action="append", default=[], help="'name: value' sent on every request")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--duration", type=int, default=3, help="seconds per round")
    ap.add_argument("--perf", action="store_true", help="split the CPU with perf (see above)")
    ap.add_argument("--distinct-tokens", choices=("RS256", "ES256", "PS256", "EdDSA"),
                    help="send 4400 distinct tokens of this algorithm, in order, continuing across rounds (as "
                         "bench.py's distinct-token scenarios); their key is added to every inline JWKS of both "
                         "configurations")
    ap.add_argument("--expect-upstream", choices=("all", "none"), default="all",
                    help="share of requests that must reach the upstream: all (default), or none (cache hits)")
    args = ap.parse_args()
    envoy_bin = os.environ.get("ENVOY_BIN", "")
    if not os.access(envoy_bin, os.X_OK):
        raise BenchError("set ENVOY_BIN to the Envoy binary")
    procs.set_pinning(True)
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    tokens = None
    if args.distinct_tokens:
        ensure_cryptography()
        jwk, tokens = make_distinct_tokens(4400, args.distinct_tokens)
        for attr in ("a_config", "b_config"):
            text = getattr(args, attr)
            if text:
                doc = json.loads(text)
                for prov in doc.get("jwt_providers", {}).values():
                    prov.get("jwks", {}).get("inline", {}).setdefault("keys", []).append(jwk)
                setattr(args, attr, json.dumps(doc))
    workdir = tempfile.mkdtemp(prefix="meshguard-ab-")
    up = procs.envoy(envoy_bin, workdir, "upstream", upstream_bootstrap, role="others")

    class Opts:
        warmup, threads, connections, duration = 2, 2, 32, args.duration

    sides = []
    try:
        procs.start(up)
        ctx = {"envoy_bin": envoy_bin, "workdir": workdir, "wrk": ensure_wrk(), "upstream": up}
        for name, wasm, conf in (("A", args.a_wasm, args.a_config),
                                 ("B", args.b_wasm or args.a_wasm, args.b_config or args.a_config)):
            sc = Scenario(name, name, [wasm_filter(args.root_id, os.path.abspath(wasm), args.root_id, conf)],
                            headers=headers, expect_upstream=args.expect_upstream, tokens=tokens)
            path = os.path.join(workdir, name + ".lua")
            sc.script = write_rotating_lua(path, tokens) if tokens else write_static_lua(path, sc.headers)
            start_scenario(sc, Opts, ctx)
            sides.append(sc)
        perf = None
        if args.perf:
            pids = ",".join(str(s.envoy.proc.pid) for s in sides)
            perf = subprocess.Popen(["perf", "record", "-F", str(SAMPLE_HZ), "-g", "-p", pids,
                                     "-o", os.path.join(workdir, "ab.data")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
        diffs, requests = [], {"A": 0, "B": 0}
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            res = dict(zip([s.name for s in order], measure_many([(s, True) for s in order], Opts, ctx)))
            d = res["B"]["cpu_us_per_req"] - res["A"]["cpu_us_per_req"]
            diffs.append(d)
            for k in requests:
                requests[k] += res[k]["requests"]
            print(f"round {r + 1}: A {res['A']['cpu_us_per_req']:.1f}  B {res['B']['cpu_us_per_req']:.1f}  "
                  f"B-A {d:+.1f} us/request", flush=True)
        spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        print(f"B - A: median {statistics.median(diffs):+.2f} us/request, mean {statistics.mean(diffs):+.2f}, "
              f"stdev {spread:.2f}, {len(diffs)} rounds")
        if perf:
            perf.send_signal(2)
            perf.wait()
            split = attribute(os.path.join(workdir, "ab.data"),
                              {s.name: (s.envoy.proc.pid, requests[s.name]) for s in sides})
            cats = sorted(set(split["A"]) | set(split["B"]))
            print(f"{'perf split, us/request':28s} {'A':>8s} {'B':>8s} {'B-A':>8s}")
            for c in cats + ["TOTAL"]:
                a = sum(split["A"].values()) if c == "TOTAL" else split["A"].get(c, 0.0)
                b = sum(split["B"].values()) if c == "TOTAL" else split["B"].get(c, 0.0)
                print(f"{c:28s} {a:8.2f} {b:8.2f} {b - a:+8.2f}")
        return 0
    finally:
        for s in sides:
            if s.envoy:
                s.envoy.stop()
        up.stop()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"ab: error: {e}", file=sys.stderr)
        sys.exit(2)
