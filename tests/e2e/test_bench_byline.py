"""`bench.py --instructions --by-line` (bench/meshbench/byline.py) without valgrind: reading a
callgrind dump's instruction addresses (absolute, relative and repeated positions, calls out of
the module charged to the calling address), mapping them to meshguard's source through
addr2line's inline chains (a stand-in addr2line here), and the checks that make a misread
dump an error instead of a wrong table."""

import os
import stat
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from meshbench import cli  # noqa: E402
from meshbench.byline import attribute, by_line, parse_addresses, render_by_line, symbolise  # noqa: E402
from meshbench.common import BenchError  # noqa: E402
from meshbench.instructions import object_matcher, parse_callgrind  # noqa: E402

ENVOY = "/opt/envoy/bin/envoy"

DUMP = """# callgrind format
version: 1
positions: instr line
events: Ir
ob=(1) {envoy}
fn=(1) 0x0000000000a0b0c0
0x500000 0 100
cob=(2) {module}
cfn=(2) envoy_dynamic_module_on_http_filter_request_headers
calls=10 0x1000 0
0x500004 0 700
ob=(2)
fn=(2)
0x1000 12 300
+4 +1 100
* * 20
-0x2 0 5
cob=(1)
cfn=(3) envoy_dynamic_module_callback_http_get_headers
calls=10 0x600000 0
+0x10 16 280
cob=(3) /lib/libc.so.6
cfn=(4) memcpy
calls=20 0x700000 0
0x1020 17 40
fn=(5) core::str::converts::from_utf8
0x2000 0 55
ob=(1)
fn=(3)
0x600000 0 280
totals: 1180
"""


def write_dump(tmp_path, module):
    p = tmp_path / "instr.out"
    p.write_text(DUMP.format(envoy=ENVOY, module=module))
    return str(p)


def fake_addr2line(tmp_path, table):
    """An addr2line that answers `-a -i -f -C` from `table` {addr: [(fn, file:line), ...]}."""
    lines = ["#!/usr/bin/env python3", "import sys", f"T = {table!r}", "for a in sys.stdin.read().split():",
             "    print('0x%016x' % int(a, 16))",
             "    for fn, loc in T.get(int(a, 16), [('??', '??:0')]):",
             "        print(fn); print(loc)"]
    p = tmp_path / "addr2line"
    p.write_text("\n".join(lines) + "\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return str(p)


def test_addresses_self_and_out_cost(tmp_path):
    module = str(tmp_path / "libmod.so")
    path = write_dump(tmp_path, module)
    self_cost, out_cost, callees = parse_addresses(path, object_matcher(module))
    # 0x1000 300, +4 -> 0x1004 100, * -> 0x1004 20, -0x2 -> 0x1002 5; the from_utf8 function 55.
    assert dict(self_cost) == {0x1000: 300, 0x1004: 120, 0x1002: 5, 0x2000: 55}
    # The call to Envoy from +0x10 (0x1012) and to libc from 0x1020; Envoy's call into the
    # module is not the module's out cost.
    assert dict(out_cost) == {0x1012: 280, 0x1020: 40}
    assert dict(callees[0x1012]) == {"envoy:envoy_dynamic_module_callback_http_get_headers": 280}
    # The same self total as the per-function reading of the same dump.
    prof = parse_callgrind(path)
    assert sum(self_cost.values()) == prof.object_self(object_matcher(module)) == 480


def test_a_dump_without_addresses_is_a_clear_error(tmp_path):
    p = tmp_path / "lines.out"
    p.write_text("positions: line\nevents: Ir\nob=(1) x\nfn=(1) f\n0 5\n")
    with pytest.raises(BenchError, match="--dump-instr=yes"):
        parse_addresses(str(p), lambda ob: True)
    q = tmp_path / "garbled.out"
    q.write_text("positions: instr\nevents: Ir\nob=(1) x\nfn=(1) f\n+zz 5\n")
    with pytest.raises(BenchError, match="not a callgrind position"):
        parse_addresses(str(q), lambda ob: True)


def test_innermost_own_frame_names_the_line(tmp_path):
    src = os.path.join(ROOT, "src")
    frames = [("core::slice::memchr", "/rustc/abc/library/core/src/slice/memchr.rs", 40),
              ("meshguard::request::Request::path_only", os.path.join(src, "request.rs"), 360),
              ("meshguard::route::Routes::select", os.path.join(src, "route.rs"), 210)]
    assert attribute(frames, ROOT) == ("meshguard::request::Request::path_only", "src/request.rs:360")
    # No frame of meshguard's: the outermost function, on a row of its own.
    std_only = [("alloc::raw_vec::grow", "/rustc/abc/library/alloc/src/raw_vec.rs", 9),
                ("core::str::converts::from_utf8", "/rustc/abc/library/core/src/str/converts.rs", 88)]
    assert attribute(std_only, ROOT) == ("core::str::converts::from_utf8",
                                         "(core::str::converts::from_utf8: not meshguard's source)")
    assert attribute([], ROOT) == ("(no symbol)", "(no symbol)")


def test_the_report_by_function_line_and_callee(tmp_path):
    module = tmp_path / "libmod.so"
    module.write_bytes(b"\0" * 0x3000)  # file addresses: the dump's are below the file's size
    path = write_dump(tmp_path, str(module))
    src = os.path.join(ROOT, "src")
    hook = ("meshguard::native::hook", os.path.join(src, "native", "mod.rs") + ":50")
    table = {
        0x1000: [("meshguard::request::Request::set_pseudo", os.path.join(src, "request.rs") + ":320"), hook],
        0x1002: [hook],
        0x1004: [("core::ptr::copy", "/rustc/x/library/core/src/ptr/mod.rs:1"),
                 ("meshguard::request::Request::set_pseudo", os.path.join(src, "request.rs") + ":321"), hook],
        0x1012: [("meshguard::native::host::NativeHost::with_headers",
                  os.path.join(src, "native", "host.rs") + ":287"), hook],
        0x1020: [("meshguard::request::Headers::push_bytes", os.path.join(src, "request.rs") + ":124 (discriminator 2)"),
                 hook],
        0x2000: [("core::str::converts::from_utf8", "/rustc/x/library/core/src/str/converts.rs:88")],
    }
    a2l = fake_addr2line(tmp_path, table)
    assert symbolise(str(module), [0x1002], addr2line=a2l) == {0x1002: [("meshguard::native::hook",
                                                                        os.path.join(src, "native", "mod.rs"), 50)]}
    import meshbench.byline as bl
    orig = bl.symbolise
    bl.symbolise = lambda so, addrs: orig(so, addrs, addr2line=a2l)
    try:
        r = by_line(path, str(module), [], requests=10, root=ROOT, expected_self=480)
        with pytest.raises(BenchError, match="positions were misread"):
            by_line(path, str(module), [], requests=10, root=ROOT, expected_self=481)
    finally:
        bl.symbolise = orig
    fns = {f["function"]: (f["self"], f["out"]) for f in r["functions"]}
    assert fns["meshguard::request::Request::set_pseudo"] == (42.0, 0.0)  # (300 + 120) / 10
    assert fns["meshguard::native::host::NativeHost::with_headers"] == (0.0, 28.0)
    assert fns["meshguard::native::hook"] == (0.5, 0.0)
    assert fns["core::str::converts::from_utf8"] == (5.5, 0.0)
    lines = {x["line"]: (x["self"], x["out"]) for x in r["lines"]}
    assert lines["src/request.rs:320"] == (30.0, 0.0)
    assert lines["src/request.rs:321"] == (12.0, 0.0)
    assert lines["src/request.rs:124"] == (0.0, 4.0)
    assert r["self_per_req"] == 48.0 and r["out_per_req"] == 32.0
    assert r["callees"][0]["callee"] == "envoy:envoy_dynamic_module_callback_http_get_headers"
    assert r["callees"][0]["from"] == [("meshguard::native::host::NativeHost::with_headers", 28.0)]
    md = render_by_line("dm-x", r)
    assert "| src/request.rs:320 | `meshguard::request::Request::set_pseudo` | 30 | 0 |" in md
    assert "`libc.so.6:memcpy` | 4 |" in md


def test_the_option():
    args = cli.build_parser().parse_args(["--instructions", "--by-line"])
    assert args.by_line and args.instructions
    assert not cli.build_parser().parse_args(["--instructions"]).by_line
