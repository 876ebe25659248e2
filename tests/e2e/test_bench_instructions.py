"""`bench.py --instructions` (bench/meshbench/instructions.py) without valgrind: its reading of a
callgrind out file (a hand-written dump with two objects and known totals,
tests/fixtures/callgrind/two-objects.out), the per-request report, and the wrapper script that
starts Envoy under valgrind with the process id callgrind_control needs."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from meshbench import cli, instructions, procs  # noqa: E402
from meshbench.common import BenchError  # noqa: E402
from meshbench.instructions import object_matcher, parse_callgrind  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "callgrind", "two-objects.out")
ENVOY, MODULE = "/opt/envoy/bin/envoy", "/opt/module/libmod.so"
HOOK = "envoy_dynamic_module_on_http_filter_request_headers"


def test_self_cost_per_object_and_function_and_the_totals():
    prof = parse_callgrind(FIXTURE)
    assert prof.events == ["Ir"]
    assert prof.totals == 1280
    # Envoy: 100 + 50 (+2) + 30 (*) in fn 1, 400 in fn 3, 280 in the callback; the call's 700 is
    # inclusive cost, not fn 1's own.
    assert dict(prof.objects) == {ENVOY: 860, MODULE: 420}
    assert prof.self_total() == prof.totals
    # The hook's lines in two source files (inlining: fi=/fe=) are one function.
    assert prof.functions[(MODULE, HOOK)] == 300 + 100 + 20
    assert prof.functions[(MODULE, "mod::helper=with::equals")] == 0  # a cost line with no count
    assert prof.functions[(ENVOY, "0x0000000000a0b0c0")] == 180
    assert prof.calls[(ENVOY, "0x0000000000a0b0c0", MODULE, HOOK)] == [10, 700]
    assert prof.calls[(MODULE, HOOK, ENVOY, "envoy_dynamic_module_callback_http_get_headers")] == [10, 280]


def test_the_module_share_self_and_inside_its_hooks():
    prof = parse_callgrind(FIXTURE)
    mod = object_matcher(MODULE)
    assert prof.object_self(mod) == 420
    assert prof.entries(mod) == (10, 700)  # the hook's 420 and the callback's 280
    assert not prof.reentries(mod)
    assert prof.object_self(object_matcher("/opt/module/other.so")) == 0


def test_a_re_entered_module_is_flagged(tmp_path):
    # The callback calls back into the module (a local reply running a response hook inside it).
    text = open(FIXTURE).read().replace(
        "fn=(4)\n0 280\n",
        "fn=(4)\n0 200\ncob=(2)\ncfn=(6) envoy_dynamic_module_on_http_filter_response_headers\ncalls=10 0\n0 80\n"
        "ob=(2)\nfn=(6)\n0 80\n")
    p = tmp_path / "reentrant.out"
    p.write_text(text)
    prof = parse_callgrind(str(p))
    mod = object_matcher(MODULE)
    assert prof.reentries(mod)
    assert prof.object_self(mod) == 500
    assert prof.entries(mod) == (20, 780)  # the nested hook counted twice: an upper bound


def test_other_positions_and_events_and_a_symlinked_module(tmp_path):
    p = tmp_path / "instr.out"
    p.write_text("events: Dr Ir\npositions: instr line\nob=(1) " + str(tmp_path / "real.so") +
                 "\nfn=(1) f\n0x10 3 5 7\n+4 * 1 2\n-2 -1 0\ntotals: 1 9\n")
    (tmp_path / "real.so").write_text("")
    os.symlink(tmp_path / "real.so", tmp_path / "link.so")
    prof = parse_callgrind(str(p))
    assert prof.totals == 9
    assert prof.object_self(object_matcher(str(tmp_path / "link.so"))) == 7 + 2 + 0


@pytest.mark.parametrize("text, why", [
    ("events: Ir\nfn=(1) f\ncalls=1 0\n0 5\n", "calls= without cfn="),
    ("events: Ir\nfn=(3)\n0 5\n", "used before it is defined"),
    ("fn=(1) f\n0 5\n", "before `events:`"),
    ("events: Dr\nfn=(1) f\n0 5\n", "no Ir among"),
    ("events: Ir\nfn=(1) f\n0 5\nwhat is this\n", "cannot read this line"),
])
def test_a_broken_file_is_a_clear_error(tmp_path, text, why):
    p = tmp_path / "bad.out"
    p.write_text(text)
    with pytest.raises(BenchError, match=why):
        parse_callgrind(str(p))


def test_the_report_comparisons_and_targets():
    res = {"passthrough": {"desc": "p", "requests": 100, "ir_per_req": 150_000.0},
           "native-ratelimit": {"desc": "n", "requests": 100, "ir_per_req": 158_400.0},
           "dm-ratelimit-noheaders": {"desc": "d", "requests": 100, "ir_per_req": 171_100.0,
                                      "module": {"self_per_req": 5_000.0, "entries_per_req": 20_000.0,
                                                 "reentrant": True}},
           "native-cache-hit": {"desc": "c", "error": "boom"}}
    comp = instructions.comparisons(res)
    row = [c for c in comp if (c["a"], c["b"]) == ("native-ratelimit", "dm-ratelimit-noheaders")][0]
    assert row["diff"] == pytest.approx(12_700.0) and row["module_diff"] == pytest.approx(5_000.0)
    assert not any("native-cache-hit" in (c["a"], c["b"]) for c in comp)
    targets = instructions.target_rows(res)
    assert [(t["b"], t["holds"]) for t in targets] == [("dm-ratelimit-noheaders", False)]
    info = {"date": "d", "git": "g", "envoy_version": "e", "nproc": 2, "cpu_model": "c", "kernel": "k"}
    args = cli.build_parser().parse_args(["--instructions"])
    md = instructions.render_instructions(info, "valgrind-3.19.0", args, res, comp, targets, 60)
    assert "| dm-ratelimit-noheaders | 100 | 171.1k | - | - | +21.1k | 5.0k | 20.0k * |" in md
    assert "| native-cache-hit | FAILED |" in md
    assert "| +12.7k | 1.080 | +12.7k | no |" in md
    # Net of the idle rate: 300 instructions/s over a 10 s window is 30 per request of 100 requests.
    res["native-ratelimit"].update(idle_ir_per_s=300.0, elapsed_s=10.0, net_ir_per_req=158_400.0 - 30.0)
    t = instructions.target_rows(res)[0]
    assert t["diff"] == pytest.approx(12_730.0) and t["whole_diff"] == pytest.approx(12_700.0)


def test_the_wrapper_keeps_the_process_id_and_passes_envoys_arguments(tmp_path):
    # valgrind's place: a program printing its pid and arguments; `exec` makes it the process started.
    wrapper = [sys.executable, "-c", "import os, sys; print(os.getpid(), sys.argv[1:])", "--tool=x y"]
    script = procs.wrapper_script(str(tmp_path), "t", wrapper, "/path/to/envoy")
    p = subprocess.Popen([script, "-c", "cfg 1.json"], stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=30)
    assert out.strip() == f"{p.pid} ['--tool=x y', '/path/to/envoy', '-c', 'cfg 1.json']"


def test_the_options():
    args = cli.build_parser().parse_args(["--instructions"])
    assert (args.instructions, args.instructions_requests, args.instructions_wasm) == (True, 3000, False)
    assert (args.instructions_threads, args.instructions_connections) == (1, 1)


def test_wasm_code_is_the_anonymous_code_not_envoys_unnamed_functions(tmp_path):
    # `???` holds V8's generated code (anonymous memory) and also the parts of Envoy's stripped
    # binary valgrind could not name: only the former is the wasm module's.
    p = tmp_path / "wasm.out"
    p.write_text("events: Ir\nob=(1) ???\nfn=(1) 0x0000000006000010\n0 40\n"
                 "fn=(2) 0x00003e8800001000\n0 25\ncfn=(3) malloc\ncalls=2 0\n0 9\nfn=(3)\n0 9\ntotals: 74\n")
    prof = parse_callgrind(str(p))
    maps = [(0x2186000, 0x62ec000, ENVOY)]
    jit = instructions.anonymous_code_matcher(maps)
    assert prof.object_self(jit) == 25
    assert prof.entries(jit) == (0, 0)
    assert prof.object_self(lambda ob, fn: ob == "???") == 74


def test_results_name_repository_paths_relative_to_its_root():
    """A results file records where things were without the machine's folders."""
    from meshbench.common import ROOT, repo_paths
    inside = os.path.join(ROOT, "target", "release", "libmeshguard.so")
    got = repo_paths({"a": [inside, "/usr/bin/wrk", 3], "b": {"c": ROOT + "-other/x"}})
    assert got == {"a": [os.path.join("target", "release", "libmeshguard.so"), "/usr/bin/wrk", 3],
                   "b": {"c": ROOT + "-other/x"}}
