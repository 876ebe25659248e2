"""`make bench` itself, in real Envoys, in miniature: one 1-second round of
the scenarios whose set-up can go wrong (the floors must send the same bytes
as meshguard, the native keyed limit must be keyed, cache scenarios must be
hits: each scenario's probe checks it before any load), so CI runs the
benchmark's machinery and not only its report writer. No figure is asserted:
timings on a shared machine under a parallel test suite mean nothing."""

import json
import os
import subprocess
import sys

import harness

SCENARIOS = [
    "trivial-wasm", "trivial-rl-floor", "trivial-rl-floor-noheaders", "trivial-breaker-floor",
    "trivial-reply", "trivial-hit-floor", "mg-nopolicy", "mg-ratelimit", "mg-ratelimit-noheaders",
    "mg-ratelimit-key", "native-ratelimit-key", "mg-breaker", "mg-cache-hit", "native-cache-hit",
    "mg-routes-first", "mg-routes-last",
    "grpc-passthrough", "mg-grpc-ratelimit",
]


def test_the_bench_runs_its_scenarios_checks_them_and_reports(tmp_path):
    doc = tmp_path / "performance.md"
    block = "# t\n<!-- bench:latest:start (written by make bench: bench/bench.py) -->\nold\n<!-- bench:latest:end -->\n"
    doc.write_text(block)
    out = tmp_path / "out"
    env = dict(os.environ, ENVOY_BIN=harness.envoy_bin(), MESHGUARD_WASM=harness.wasm_path())
    r = subprocess.run(
        [sys.executable, os.path.join(harness.ROOT, "bench", "bench.py"), "--quick", "--warmup", "0",
         "--duration", "1", "--no-rss", "--only", ",".join(SCENARIOS), "--out", str(out),
         "--doc", str(doc)],
        env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    md = (out / "results.md").read_text()
    for name in ["passthrough"] + SCENARIOS:
        row = [line for line in md.splitlines() if line.startswith(f"| {name} |")]
        assert row and "FAILED" not in row[0], f"{name}: {row}"
    # The twins against the floors ran, and the targets say what they compare.
    assert "(a = trivial-rl-floor, b = mg-ratelimit)" in md
    assert "(a = trivial-breaker-floor, b = mg-breaker)" in md
    assert "(a = trivial-hit-floor, b = mg-cache-hit)" in md
    assert "(a = native-ratelimit-key, b = mg-ratelimit-key)" in md
    assert "(a = mg-routes-first, b = mg-routes-last)" in md
    assert "| 1,000th route costs <= the first + 1 us |" in md
    assert "(a = grpc-passthrough, b = mg-grpc-ratelimit)" in md
    assert "| rate limit (default: IETF RateLimit headers) overhead <= no-policy + 3 us |" in md
    assert "meshguard" in md and "over that floor" in md
    # The machine's other work during the measured runs is reported (its size is not asserted: the
    # suite shares the machine), one value per measured window, on every run's result too.
    assert "- other processes' CPU during measured runs: median " in md
    report = json.loads((out / "results.json").read_text())
    foreign = report["extra"]["foreign_cpu_pct"]
    assert foreign["runs"] >= len(SCENARIOS) - 1 and 0 <= foreign["median"] <= foreign["max"], foreign
    assert all("foreign_cpu_pct" in r for s in report["scenarios"].values() for r in s["rounds"])
    # A partial run (--only) leaves the block alone.
    assert doc.read_text() == block
    assert f"{doc} left alone" in r.stderr + r.stdout
