"""`make bench` rewrites the latest-run block of docs/performance.md
(bench/meshbench/docblock.py `update_block`): only between its markers,
never without them."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from meshbench import cli, docblock, noise, render  # noqa: E402
from meshbench.docblock import BLOCK_END, BLOCK_START  # noqa: E402
from meshbench.scenarios import Scenario  # noqa: E402


def test_the_block_between_the_markers_is_replaced_and_nothing_else(tmp_path):
    p = tmp_path / "README.md"
    p.write_text(f"# t\n\nbefore\n{BLOCK_START}\nold table\n{BLOCK_END}\nafter\n")
    block = f"{BLOCK_START}\nnew table\n{BLOCK_END}"
    assert docblock.update_block(str(p), block)
    assert p.read_text() == f"# t\n\nbefore\n{block}\nafter\n"
    # Again: idempotent (the markers are still there, once).
    assert docblock.update_block(str(p), block)
    assert p.read_text() == f"# t\n\nbefore\n{block}\nafter\n"


def test_a_readme_without_markers_or_missing_is_left_alone(tmp_path):
    p = tmp_path / "README.md"
    p.write_text("# t\nno block here\n")
    assert not docblock.update_block(str(p), "x")
    assert p.read_text() == "# t\nno block here\n"
    p.write_text(f"{BLOCK_END}\nend before start\n{BLOCK_START}\n")
    assert not docblock.update_block(str(p), "x")
    assert p.read_text() == f"{BLOCK_END}\nend before start\n{BLOCK_START}\n"
    assert not docblock.update_block(str(tmp_path / "missing.md"), "x")


def test_the_performance_page_has_one_block_and_is_the_default_target():
    assert docblock.DOC == os.path.join(ROOT, "docs", "performance.md")
    text = open(docblock.DOC).read()
    assert text.count(BLOCK_START) == 1
    assert text.count(BLOCK_END) == 1
    assert text.index(BLOCK_START) < text.index(BLOCK_END)


def test_the_target_file_flags_and_their_old_names():
    parse = cli.build_parser().parse_args
    args = parse([])
    assert (args.doc, args.no_doc) == (docblock.DOC, False)
    assert parse(["--doc", "out-x.txt"]).doc == "out-x.txt"
    assert parse(["--readme", "out-y.txt"]).doc == "out-y.txt"  # the old name still works
    assert parse(["--no-doc"]).no_doc and parse(["--no-readme"]).no_doc


def test_the_block_shows_machine_scenarios_twins_and_targets():
    info = {"date": "2026-12-02 16:00 UTC", "git": "abc1234", "nproc": 2, "cpu_model": "Test CPU",
            "kernel": "6.1", "envoy_version": "x/1.40.0/Clean/RELEASE/BoringSSL"}

    class Args:
        threads, connections, rounds, duration = 2, 32, 5, 2

    pt = Scenario("passthrough", "no HTTP filter but the router", [])
    mg = Scenario("mg-nopolicy", "meshguard, one route, no policy", [])
    mg.paired = [11.0, 12.5, 13.0]
    gone = Scenario("mg-broken", "a scenario that failed", [])
    summary = {
        "passthrough": {"cpu_us_per_req": 60.0, "paired_overhead_us": 0.0, "rps": 7000.0, "p99_ms": 7.0},
        "mg-nopolicy": {"cpu_us_per_req": 72.5, "paired_overhead_us": 12.5, "rps": 6100.0, "p99_ms": 8.5},
    }
    comp = {"b - a": {"label": "no-policy vs trivial", "diff_us": -1.1, "min": -2.7, "max": 1.1}}
    targets = [{"target": "no-policy <= 1.2x trivial", "holds": True, "detail": "d1"},
               {"target": "cache HIT <= native", "holds": False, "detail": "d2"}]
    block = render.render_latest_block(info, Args, summary, [pt, mg, gone], targets, {"wasm_size": 846899}, comp)
    lines = block.split("\n")
    assert lines[0] == BLOCK_START and lines[-1] == BLOCK_END
    assert "2026-12-02 16:00 UTC, git abc1234; 2 CPUs (Test CPU)" in block
    assert "Envoy x/1.40.0/Clean/RELEASE/BoringSSL" in block and "846,899 bytes" in block
    assert "| mg-nopolicy | meshguard, one route, no policy | 72.5 | 12.5 [11..13] | 6100 | 8.50 |" in lines
    assert "| passthrough | no HTTP filter but the router | 60.0 | - | 7000 | 7.00 |" in lines
    assert not any(line.startswith("| mg-broken") for line in lines)
    assert "| no-policy vs trivial | -1.1 [-2.7..+1.1] |" in lines
    assert "| no-policy <= 1.2x trivial | yes | d1 |" in lines
    assert "| cache HIT <= native | **NO** | d2 |" in lines


def test_the_report_says_how_busy_the_machine_was_and_warns_when_it_was_shared():
    # A run beside other work reads its CPU figures too high: the report must say so.
    info = {"date": "2026-12-02 16:00 UTC", "git": "abc1234", "nproc": 2, "cpu_model": "Test CPU",
            "kernel": "6.1", "envoy_version": "x/1.40.0/Clean/RELEASE/BoringSSL"}

    class Args:
        threads, connections, rounds, duration, warmup, pairing = 2, 32, 5, 2, 2, "twin"

    pt = Scenario("passthrough", "no HTTP filter but the router", [])
    pt.rounds = [{"cpu_us_per_req": 45.0}]
    summary = {"passthrough": {"cpu_us_per_req": 45.0, "cpu_us_per_req_min": 45.0, "paired_overhead_us": 0.0,
                               "overhead_us": 0.0, "rps": 7000.0, "p50_ms": 2.0, "p99_ms": 7.0,
                               "upstream_fraction": 1.0}}
    base = {"wasm_size": 846899, "wasm_sha256": "0" * 64, "trivial_size": 121189}
    header = "- other processes' CPU during measured runs: median 2.5%, max {}% of one CPU (4 runs)"
    loud = "shared the machine with other work"

    def reports(max_pct):
        extra = dict(base, foreign_cpu_pct=noise.summarize([2.0, 3.0, 1.0, max_pct]))
        return (render.render(info, Args, summary, [pt], [], extra),
                render.render_latest_block(info, Args, summary, [pt], [], extra, {}))

    md, block = reports(noise.NOISY_PCT)  # at the threshold: said, not flagged
    assert header.format(f"{noise.NOISY_PCT:.1f}") in md.splitlines()
    assert loud not in md and loud not in block
    md, block = reports(57.0)
    assert header.format("57.0") in md.splitlines()
    for text in (md, block):
        warning = [line for line in text.splitlines() if loud in line]
        assert warning and "57%" in warning[0] and "inflated" in warning[0] and "idle machine" in warning[0]
    # Not measured (an older results.json's extra): no line at all.
    md = render.render(info, Args, summary, [pt], [], base)
    assert "other processes' CPU" not in md and loud not in md
    assert noise.summarize([]) is None and not noise.is_noisy(None)


def test_foreign_cpu_is_the_machine_minus_our_process_tree():
    # 2 s, the machine busy 300 ticks, ours 180: 120 ticks of others = 60% of one CPU at 100 Hz.
    tck = noise.CLK_TCK
    before, after = {"t": 10.0, "busy": 1000, "tree": 500}, {"t": 12.0, "busy": 1000 + 3 * tck, "tree": 500 + 1.8 * tck}
    assert abs(noise.foreign_pct(before, after) - 60.0) < 1e-9
    # Ours above the machine's (tick rounding): clamped at 0.
    assert noise.foreign_pct(before, dict(after, tree=500 + 3.1 * tck)) == 0.0
    # A child that ran and was waited for inside the window (wrk) is ours: its CPU, gone from
    # /proc, is in our cutime.
    t0 = noise.tree_ticks()
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                    "while time.process_time() - t < 0.5: pass"], check=True)
    assert noise.tree_ticks() - t0 >= 0.4 * tck
    assert noise.machine_busy_ticks() > 0
