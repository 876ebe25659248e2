"""`make bench` rewrites the README's latest-run block (bench/bench.py
`update_readme`): only between its markers, never without them."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench  # noqa: E402


def test_the_block_between_the_markers_is_replaced_and_nothing_else(tmp_path):
    p = tmp_path / "README.md"
    p.write_text(f"# t\n\nbefore\n{bench.README_START}\nold table\n{bench.README_END}\nafter\n")
    block = f"{bench.README_START}\nnew table\n{bench.README_END}"
    assert bench.update_readme(str(p), block)
    assert p.read_text() == f"# t\n\nbefore\n{block}\nafter\n"
    # Again: idempotent (the markers are still there, once).
    assert bench.update_readme(str(p), block)
    assert p.read_text() == f"# t\n\nbefore\n{block}\nafter\n"


def test_a_readme_without_markers_or_missing_is_left_alone(tmp_path):
    p = tmp_path / "README.md"
    p.write_text("# t\nno block here\n")
    assert not bench.update_readme(str(p), "x")
    assert p.read_text() == "# t\nno block here\n"
    p.write_text(f"{bench.README_END}\nend before start\n{bench.README_START}\n")
    assert not bench.update_readme(str(p), "x")
    assert p.read_text() == f"{bench.README_END}\nend before start\n{bench.README_START}\n"
    assert not bench.update_readme(str(tmp_path / "missing.md"), "x")


def test_the_project_readme_has_one_block():
    text = open(os.path.join(ROOT, "README.md")).read()
    assert text.count(bench.README_START) == 1
    assert text.count(bench.README_END) == 1
    assert text.index(bench.README_START) < text.index(bench.README_END)


def test_the_block_shows_machine_scenarios_twins_and_targets():
    info = {"date": "2026-12-02 16:00 UTC", "git": "abc1234", "nproc": 2, "cpu_model": "Test CPU",
            "kernel": "6.1", "envoy_version": "x/1.40.0/Clean/RELEASE/BoringSSL"}

    class Args:
        threads, connections, rounds, duration = 2, 32, 5, 2

    pt = bench.Scenario("passthrough", "no HTTP filter but the router", [])
    mg = bench.Scenario("mg-nopolicy", "meshguard, one route, no policy", [])
    mg.paired = [11.0, 12.5, 13.0]
    gone = bench.Scenario("mg-broken", "a scenario that failed", [])
    summary = {
        "passthrough": {"cpu_us_per_req": 60.0, "paired_overhead_us": 0.0, "rps": 7000.0, "p99_ms": 7.0},
        "mg-nopolicy": {"cpu_us_per_req": 72.5, "paired_overhead_us": 12.5, "rps": 6100.0, "p99_ms": 8.5},
    }
    comp = {"b - a": {"label": "no-policy vs trivial", "diff_us": -1.1, "min": -2.7, "max": 1.1}}
    targets = [{"target": "no-policy <= 1.2x trivial", "holds": True, "detail": "d1"},
               {"target": "cache HIT <= native", "holds": False, "detail": "d2"}]
    block = bench.render_readme(info, Args, summary, [pt, mg, gone], targets, {"wasm_size": 846899}, comp)
    lines = block.split("\n")
    assert lines[0] == bench.README_START and lines[-1] == bench.README_END
    assert "2026-12-02 16:00 UTC, git abc1234; 2 CPUs (Test CPU)" in block
    assert "Envoy x/1.40.0/Clean/RELEASE/BoringSSL" in block and "846,899 bytes" in block
    assert "| mg-nopolicy | meshguard, one route, no policy | 72.5 | 12.5 [11..13] | 6100 | 8.50 |" in lines
    assert "| passthrough | no HTTP filter but the router | 60.0 | - | 7000 | 7.00 |" in lines
    assert not any(line.startswith("| mg-broken") for line in lines)
    assert "| no-policy vs trivial | -1.1 [-2.7..+1.1] |" in lines
    assert "| no-policy <= 1.2x trivial | yes | d1 |" in lines
    assert "| cache HIT <= native | **NO** | d2 |" in lines
