#!/usr/bin/env python3
"""Footprint A/B: memory and configuration load time of meshguard modules,
beside passthrough and the trivial wasm filter, in one run.

    ENVOY_BIN=... .venv/bin/python bench/footprint.py A.wasm B.wasm [--rounds 3] [--concurrency 2,8]

Each module is loaded with meshguard no-policy and all-four-policies
configurations (`--scale`: also 10/100/1,000 routes and JWKS sizes); every
proxy is a fresh Envoy: start to /ready, VmRSS at ready, after `--load` s of
wrk, and VmHWM. Rounds alternate the order, the figures are medians, and
each module's difference to the first module is printed. The CPU side of an
A/B is `bench/ab.py` (twins). See bench/README.md.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from meshbench import procs  # noqa: E402
from meshbench import padwasm  # noqa: E402
from meshbench.bootstraps import upstream_bootstrap, wasm_filter  # noqa: E402
from meshbench.common import FIXTURES, BenchError, log  # noqa: E402
from meshbench.footprint import (Variant, footprint_table, meshguard_variants,  # noqa: E402
                                 reference_variants, run_footprint)
from meshbench.tools import ensure_trivial_wasm, ensure_wrk  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wasm", nargs="+", help="meshguard modules to compare (the first is the reference)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="2", help="comma-separated --concurrency values (default 2)")
    ap.add_argument("--load", type=float, default=1, help="seconds of wrk load before the RSS after load")
    ap.add_argument("--scale", action="store_true", help="also the route-count and JWKS-size variants")
    ap.add_argument("--no-refs", action="store_true", help="no passthrough / trivial filter variants")
    ap.add_argument("--no-build", action="store_true", help="do not (re)build bench/trivial-filter")
    ap.add_argument("--pad-trivial", action="store_true",
                    help="also the trivial filter padded to the first module's size with never-called "
                         "functions (trivial-padcode) and with a custom section (trivial-padcustom)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    envoy_bin = os.environ.get("ENVOY_BIN", "")
    if not envoy_bin or not os.access(envoy_bin, os.X_OK):
        raise BenchError("set ENVOY_BIN to the Envoy binary")
    concs = tuple(int(c) for c in args.concurrency.split(","))
    workdir = tempfile.mkdtemp(prefix="meshguard-footprint-")
    try:
        with open(os.path.join(FIXTURES, "tokens.json")) as f:
            token = json.load(f)["valid_RS256"]
        with open(os.path.join(FIXTURES, "jwks.json")) as f:
            jwks = json.load(f)
        trivial = None if args.no_refs and not args.pad_trivial else ensure_trivial_wasm(args.no_build)
        variants = [] if args.no_refs else reference_variants(trivial)
        if args.pad_trivial:
            with open(trivial, "rb") as f:
                small = f.read()
            target = os.path.getsize(args.wasm[0])
            for mode in ("code", "custom"):
                padded = os.path.join(workdir, f"trivial-pad{mode}.wasm")
                with open(padded, "wb") as f:
                    f.write(padwasm.pad(small, target, mode))
                log(f"footprint: trivial-pad{mode} = {os.path.getsize(padded):,} bytes")
                variants.append(Variant(f"trivial-pad{mode}", f"trivial filter padded to {target:,} bytes ({mode})",
                                        [wasm_filter("trivial", padded, "trivial", "")], headers={"x-api-key": "k1"}))
        sizes = {}
        for i, src in enumerate(args.wasm):
            label = f"m{i}"
            wasm = os.path.join(workdir, f"{label}.wasm")
            shutil.copyfile(src, wasm)  # a snapshot: others may rebuild target/ meanwhile
            sizes[label] = (src, os.path.getsize(wasm))
            log(f"footprint: {label} = {src} ({sizes[label][1]:,} bytes)")
            variants += meshguard_variants(wasm, jwks, token, label=label, scale=args.scale)
        up = procs.start(procs.envoy(envoy_bin, workdir, "upstream", upstream_bootstrap, role="others"))
        ctx = {"envoy_bin": envoy_bin, "workdir": workdir, "wrk": ensure_wrk(), "upstream": up}
        fp = run_footprint(variants, ctx, concs, args.rounds, args.load)
        up.stop()
        print()
        for label, (src, size) in sizes.items():
            print(f"- {label}: {src}, {size:,} bytes")
        print()
        print("\n".join(footprint_table(fp, concs)))
        for c in concs:
            for name, row in fp.items():
                if not name.startswith("m0-") or f"c{c}" not in row:
                    continue
                suffix = name[3:]
                for label in list(sizes)[1:]:
                    other = fp.get(f"{label}-{suffix}", {}).get(f"c{c}")
                    if other:
                        a = row[f"c{c}"]
                        print(f"c{c} {label}-{suffix} minus m0-{suffix}: RSS after load "
                              f"{(other['rss_loaded_kb'] - a['rss_loaded_kb']) / 1024:+.1f} MiB, peak "
                              f"{(other['hwm_kb'] - a['hwm_kb']) / 1024:+.1f} MiB, load "
                              f"{other['load_ms'] - a['load_ms']:+.0f} ms")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"modules": sizes, "footprint": fp}, f, indent=1)
        return 0
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"footprint: error: {e}", file=sys.stderr)
        sys.exit(2)
