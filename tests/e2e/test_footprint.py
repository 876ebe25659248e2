"""Footprint guards (issue #22): the module's size, and the configuration
load time (process start to /ready) of an Envoy loading meshguard as a
ratio to one loading the trivial wasm filter (bench/trivial-filter), both
measured in this run, alternately, so the machine's load cancels out.

The bounds are regression bounds, not the issue's targets (600 KB; load
<= 2x the trivial filter's): they hold with margin on a noisy 2-core host
running the suite in parallel and fail on a real regression (a module
grown by a tenth, e.g. cargo's module without wasm-opt; a start-up twice
as slow). Both can be tightened by
environment (to show the test fails, or for a quiet machine):
MESHGUARD_MAX_MODULE_BYTES, MESHGUARD_MAX_LOAD_RATIO."""

import os
import subprocess

import harness

# The module after `make build` (cargo, then wasm-opt): 917,460 bytes when
# this bound was set (docs/performance.md, "Footprint"); 934,672 with the
# observability features, 974,407 with the cache features added after them,
# 993,273 with the 304 refetch and purge by prefix / tag (#20; driftsort and
# serde_json::json! copies cut), 1,039,209 with usage-based cost and leased
# global limits (#23: about 25 and 21 KB of their own code; the bound was
# raised from 1,000,000 to 1,080,000 then), 982,558 with the hand-written
# configuration reader (#22: serde's derived visitors out of the module,
# -57 KB), 843,758 with ES256/ES384 verified by src/jwt/ecdsa.rs instead of
# the p256/p384 crates (#22: -143 KB; the bound was lowered from 1,002,000
# then). The bound is that plus ~2%: a guard against accidental growth, not
# the 600 KB target of #22 (docs/performance.md, "Footprint").
MAX_MODULE_BYTES = int(os.environ.get("MESHGUARD_MAX_MODULE_BYTES", "861000"))
# meshguard no-policy / trivial filter, the fastest of ROUNDS alternating
# starts each at --concurrency 2: 4-5.5x measured on the 2-core host, idle
# or loaded (V8 compiles the whole module with TurboFan before /ready; the
# trivial module is 121 KB). The fastest, not the median: another test
# running beside this one only ever adds time, and it adds more to the
# longer compile (a CI run with the suite's other worker busy: medians
# 2,029 vs 201 ms, 10x; fastest 1,009 vs 184 ms, 5.5x). A real regression
# slows every start, the fastest too.
MAX_LOAD_RATIO = float(os.environ.get("MESHGUARD_MAX_LOAD_RATIO", "8"))
ROUNDS = 5

TRIVIAL_DIR = os.path.join(harness.ROOT, "bench", "trivial-filter")
TRIVIAL_WASM = os.path.join(TRIVIAL_DIR, "target", "wasm32-wasip1", "release", "trivial_filter.wasm")


def trivial_wasm():
    """The bench's reference filter, built when missing (its own small workspace)."""
    if not os.path.exists(TRIVIAL_WASM):
        r = subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1", "-q"], cwd=TRIVIAL_DIR,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, "building bench/trivial-filter failed:\n" + r.stderr[-3000:]
    return TRIVIAL_WASM


def load_ms(tmp_path, upstream, wasm=None):
    """Start to /ready of an Envoy (--concurrency 2) with meshguard (one no-policy route), or with the
    trivial filter when `wasm` is given; checks it answers, stops it."""
    e = harness.Envoy(tmp_path, {"routes": [{"name": "r", "match": {"path_prefix": "/"}}]}, upstream.port,
                      concurrency=2)
    if wasm is not None:
        cfg = e.doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        wasm_cfg = cfg["http_filters"][0]["typed_config"]["config"]
        wasm_cfg.update(name="trivial", root_id="trivial")
        wasm_cfg["vm_config"].update(vm_id="trivial", code={"local": {"filename": wasm}})
        wasm_cfg["configuration"]["value"] = ""
    e.poll_s = 0.005
    try:
        e.start()
        status, _, _ = e.request("/")
        assert status == 200
        return e.load_time_s * 1000
    finally:
        e.stop()


def test_module_size_is_within_its_bound():
    size = os.path.getsize(harness.wasm_path())
    assert size <= MAX_MODULE_BYTES, (
        f"{harness.wasm_path()} is {size:,} bytes, over the bound of {MAX_MODULE_BYTES:,}: "
        "`python3 bench/wasmsize.py` on a build with names shows what grew")


def test_configuration_load_is_within_a_ratio_of_the_trivial_filters(tmp_path, upstream):
    trivial = trivial_wasm()
    mg, tr = [], []
    for i in range(ROUNDS):
        # Alternate which goes first: neither always meets the machine at the same moment.
        if i % 2:
            tr.append(load_ms(tmp_path, upstream, trivial))
            mg.append(load_ms(tmp_path, upstream))
        else:
            mg.append(load_ms(tmp_path, upstream))
            tr.append(load_ms(tmp_path, upstream, trivial))
    ratio = min(mg) / min(tr)
    detail = (f"meshguard {[round(x) for x in mg]} ms, trivial filter {[round(x) for x in tr]} ms: "
              f"fastest-start ratio {ratio:.2f}x (bound {MAX_LOAD_RATIO}x)")
    print(detail)
    assert ratio <= MAX_LOAD_RATIO, detail
