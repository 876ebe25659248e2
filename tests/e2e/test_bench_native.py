"""The bench's native-module rows (#24), in miniature: with the native module
(`make native`) the bench builds the reference dynamic module
(bench/trivial-dm), checks every dm-* scenario acts (its stat counts, the
cache answers hits), runs the twins against the floors and Envoy's filters,
and reports #24's targets. No figure is asserted: timings on a shared
machine under a parallel test suite mean nothing."""

import os
import subprocess
import sys

import pytest

import harness

SCENARIOS = ["dm-trivial", "dm-rl-floor", "dm-ratelimit-noheaders", "native-ratelimit", "dm-cache-hit",
             "native-cache-hit"]


def test_the_bench_runs_the_native_module_its_floors_and_targets(tmp_path):
    native = harness.native_path()
    if not os.path.exists(native):
        pytest.fail(f"{native} is missing: build it with `make native`")
    out = tmp_path / "out"
    env = dict(os.environ, ENVOY_BIN=harness.envoy_bin(), MESHGUARD_WASM=harness.wasm_path(),
               MESHGUARD_NATIVE=native)
    env.pop("MESHGUARD_NATIVE_B", None)
    r = subprocess.run(
        [sys.executable, os.path.join(harness.ROOT, "bench", "bench.py"), "--quick", "--warmup", "0",
         "--duration", "1", "--no-rss", "--only", ",".join(SCENARIOS), "--out", str(out), "--no-doc"],
        env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    md = (out / "results.md").read_text()
    for name in ["passthrough"] + SCENARIOS:
        row = [line for line in md.splitlines() if line.startswith(f"| {name} |")]
        assert row and "FAILED" not in row[0], f"{name}: {row}"
    # The floor's twins ran, and the targets name #24's comparisons with the floor's figures.
    assert "(a = passthrough, b = dm-trivial)" in md
    assert "(a = dm-rl-floor, b = dm-ratelimit-noheaders)" in md
    assert "(a = native-cache-hit, b = dm-cache-hit)" in md
    target = [line for line in md.splitlines()
              if line.startswith("| native module: rate limit overhead <= local_ratelimit + 1 us |")]
    assert target and "dm-rl-floor" in target[0] and "over dm-rl-floor" in target[0], target
    assert "| native module: cache HIT CPU/request <= native cache HIT |" in md
