"""`make bench` rewrites the latest-run block of docs/performance.md
(bench/meshbench/docblock.py `update_block`): only between its markers,
never without them."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from meshbench import cli, docblock, render  # noqa: E402
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
