"""Instructions per request under valgrind's callgrind (`bench.py --instructions`).

CPU time per request on a shared 2-core machine swings by several us between runs; the number of
instructions a proxy executes for the same requests does not (to within a few tenths of a
percent). Each selected scenario's proxy is started exactly as the timed run builds it (same
bootstrap, probes, wrk script with its headers or tokens) but under `valgrind --tool=callgrind`,
one scenario at a time: warm-up, `callgrind_control -z` (zero the counters), a measured wrk run of
about `--instructions-requests` requests (the count taken from wrk's output), `callgrind_control
-d` (dump), then the dump is read here (`parse_callgrind`) into

- the whole process's instructions per request (every thread, every object: Envoy, libc, the
  module), and
- the module's own: the instructions executed in the module's object (the .so of a dm-* scenario:
  its code only, not the Envoy callbacks it calls), and the hooks' inclusive cost (everything
  executed inside Envoy's calls into the module's object, the callbacks into Envoy included).
  For a wasm scenario the module has no object of its own: V8's generated code (the compiled
  module and V8's stubs) runs in anonymous memory, callgrind's object `???` at addresses outside
  every file mapping (Envoy's stripped binary has `???` functions too, inside its mapping).

Each run also measures the proxy at rest (`--instructions-idle` seconds, no load): its
instructions per second (timers, stats flushes) times the measured window's length come off the
net figure, which the comparisons use (valgrind's request rate follows the host's load).

Instructions are not time: cache misses, branch mispredictions, the kernel's work (system calls,
network) and waiting count for nothing here. Use it to see a change's effect deterministically."""

import glob
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict

from . import procs
from .bootstraps import upstream_bootstrap
from .byline import by_line, render_by_line
from .common import FIXTURES, RLS_TARGET, ROOT, BenchError, log, repo_paths
from .drive import finish_load, start_load, write_rotating_lua, write_static_lua
from .run import UPSTREAM_STAT, bench_context, boot_scenario, check_outcome, check_run, finish_workdir, stop_run
from .scenarios import COMPARISONS, build_scenarios
from .tokens import make_distinct_tokens
from .tools import (ensure_cryptography, ensure_trivial_dm, ensure_trivial_wasm, ensure_valgrind,
                    ensure_wrk, machine_info)

# The #24 targets, by instruction count: (Envoy's filter, meshguard's native module, label).
TARGETS = [
    ("native-ratelimit", "dm-ratelimit-noheaders", "native module: rate limit, no headers, vs local_ratelimit"),
    ("native-jwt-rs256-cache", "dm-jwt-rs256", "native module: JWT RS256 repeated token vs jwt_authn with cache"),
    ("native-cache-hit", "dm-cache-hit", "native module: cache HIT vs the cache filter"),
    ("native-jwt-rs256-distinct", "dm-jwt-rs256-distinct", "native module: distinct RS256 tokens vs jwt_authn"),
]

JIT_OBJECT = "???"  # callgrind's object for code in anonymous memory (V8's generated code)


# ----------------------------------------------------------------------------------- parsing
class Profile:
    """One callgrind dump, for one event (Ir): `totals`, self cost per object (`objects`) and per
    function (`functions`, keyed (object, function): a function split over several source files by
    inlining is one entry), and the calls between functions (`calls`, keyed (caller object, caller
    function, callee object, callee function) -> [count, inclusive cost])."""

    def __init__(self):
        self.events = []
        self.totals = None   # the file's `totals:` (or `summary:`) line
        self.objects = defaultdict(int)
        self.functions = defaultdict(int)
        self.calls = defaultdict(lambda: [0, 0])

    def self_total(self):
        return sum(self.objects.values())

    def object_self(self, match):
        """Self cost of the code `match(object, function)` accepts."""
        return sum(v for (ob, fn), v in self.functions.items() if match(ob, fn))

    def entries(self, match):
        """Calls from code outside what `match` accepts into code inside: (count, inclusive
        cost). A call into the module made while the module is already on the stack (a local reply
        sent from a hook runs the response hooks inside it) is counted twice: see `reentries`."""
        n = cost = 0
        for (ob, fn, cob, cfn), (count, incl) in self.calls.items():
            if not match(ob, fn) and match(cob, cfn):
                n += count
                cost += incl
        return n, cost

    def reentries(self, match):
        """Whether the module's code can be re-entered: a call into it from a function that the
        module's own calls out reach (by the call graph). Then `entries` counts nested hooks
        twice and is an upper bound."""
        graph = defaultdict(set)
        for (ob, fn, cob, cfn) in self.calls:
            graph[(ob, fn)].add((cob, cfn))
        seen, todo = set(), [callee for caller, callees in graph.items() if match(*caller)
                             for callee in callees if not match(*callee)]
        while todo:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            for callee in graph.get(node, ()):
                if match(*callee):
                    return True
                todo.append(callee)
        return False


_POS = re.compile(r"^(?:[+-]?\d+|\*|0x[0-9a-fA-F]+|[+-]0x[0-9a-fA-F]+)$")
# Name compression: one id space per kind (objects, source files, functions).
_NAMED = {"ob": "ob", "cob": "ob", "fn": "fn", "cfn": "fn",
          "fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl", "cfl": "fl"}


def parse_callgrind(path, event="Ir"):
    """Reads a callgrind out file (format 1, name compression, any `positions:`): see `Profile`.
    Self cost is every cost line outside a call; the cost line after `calls=` is the call's
    inclusive cost (not the caller's self cost)."""
    prof = Profile()
    names = {"ob": {}, "fl": {}, "fn": {}}
    npos, ev = 1, None
    ob = fn = None
    cob = cfn = None
    call = None  # the count of the call whose cost line comes next
    with open(path, errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            first = line.split(None, 1)[0]
            if _POS.match(first):  # a cost line: positions then event counts
                if ev is None:
                    raise BenchError(f"{path}:{lineno}: a cost line before `events:` names {event}")
                parts = line.split()
                vals = parts[npos:]
                cost = int(vals[ev]) if len(vals) > ev else 0
                if call is not None:
                    key = (ob, fn, cob if cob is not None else ob, cfn)
                    prof.calls[key][0] += call
                    prof.calls[key][1] += cost
                    call = cob = cfn = None
                else:
                    prof.objects[ob] += cost
                    prof.functions[(ob, fn)] += cost
                continue
            m = re.match(r"^([a-z]+)=(.*)$", line)
            if m and m.group(1) in _NAMED:
                key, val = m.group(1), m.group(2)
                space = names[_NAMED[key]]
                c = re.match(r"^\((\d+)\)(?: (.*))?$", val)
                if c:  # name compression: "(id) name" defines, "(id)" refers
                    if c.group(2) is not None:
                        space[c.group(1)] = c.group(2)
                    elif c.group(1) not in space:
                        raise BenchError(f"{path}:{lineno}: {key}=({c.group(1)}) used before it is defined")
                    val = space[c.group(1)]
                if key == "ob":
                    ob = val
                elif key == "fn":
                    fn = val
                elif key == "cob":
                    cob = val
                elif key == "cfn":
                    cfn = val
                continue  # fl/fi/fe/cfi/cfl: source files, not needed
            if m and m.group(1) == "calls":
                call = int(m.group(2).split()[0])
                if cfn is None:
                    raise BenchError(f"{path}:{lineno}: calls= without cfn=")
                continue
            if m:  # jump=, jcnd= (--collect-jumps) and others: no cost of their own
                continue
            h = re.match(r"^([a-z]+):\s*(.*)$", line)
            if h:
                key, val = h.group(1), h.group(2)
                if key == "events":
                    prof.events = val.split()
                    if event not in prof.events:
                        raise BenchError(f"{path}: no {event} among the events {prof.events}")
                    ev = prof.events.index(event)
                elif key == "positions":
                    npos = len(val.split())
                elif key in ("totals", "summary") and ev is not None:
                    vals = val.split()
                    total = int(vals[ev]) if len(vals) > ev else 0
                    if key == "totals" or prof.totals is None:
                        prof.totals = total
                continue
            raise BenchError(f"{path}:{lineno}: cannot read this line of a callgrind file: {line[:120]!r}")
    if prof.totals is None:
        prof.totals = prof.self_total()
    return prof


def object_matcher(path):
    """Accepts callgrind's object names of the file at `path` (valgrind names a mapped file by the
    path it was opened with, or the resolved one)."""
    want = {path, os.path.realpath(path)}
    return lambda ob, fn=None: ob is not None and (ob in want or os.path.realpath(ob) in want)


def read_maps(pid):
    """The file-backed mappings of a process: [(start, end, path)]."""
    out = []
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    out.append((start, end, parts[5].strip()))
    except OSError:
        pass
    return out


def anonymous_code_matcher(maps):
    """Accepts callgrind's functions without an object (`???`, named by their address) whose
    address is in no file-backed mapping of the process (`maps`: `read_maps` at dump time): code
    generated at run time, e.g. V8's. (Envoy's stripped binary also has `???` functions: those
    are inside its own mapping.)"""
    def match(ob, fn=None):
        if ob != JIT_OBJECT or not fn or not re.match(r"^0x[0-9a-fA-F]+$", fn):
            return False
        addr = int(fn, 16)
        return not any(start <= addr < end for start, end, _ in maps)
    return match


def module_share(prof, sc, maps):
    """The module's part of a profile: {"object", "self", "entries", "calls_in", "reentrant"}.
    dm-*: the module's .so; wasm: code in anonymous memory (V8's generated code: the compiled
    module and V8's stubs; `maps`: the process's mappings at dump time); otherwise none."""
    so = dm_object(sc)
    if so:
        match, name = object_matcher(so), so
    elif any(f["name"] == "envoy.filters.http.wasm" for f in sc.filters):
        match, name = anonymous_code_matcher(maps), "anonymous memory (V8's generated code)"
    else:
        return None
    n, incl = prof.entries(match)
    return {"object": name, "self": prof.object_self(match), "entries": incl, "calls_in": n,
            "reentrant": prof.reentries(match)}


def dm_object(sc):
    for f in sc.filters:
        if f["name"] == "envoy.filters.http.dynamic_modules":
            return f["typed_config"]["dynamic_module_config"]["module"]["local"]["filename"]
    return None


# ----------------------------------------------------------------------------------- running
def callgrind_control(option, pid):
    r = subprocess.run(["callgrind_control", option, str(pid)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise BenchError(f"callgrind_control {option} {pid} failed ({r.returncode}): "
                         f"{r.stdout[-1500:]}{r.stderr[-1500:]}")
    return r.stdout


def dump(pid, out_prefix, timeout=120):
    """`callgrind_control -d`, then the newest part it wrote (`<prefix>.<pid>.<n>`)."""
    before = set(glob.glob(f"{out_prefix}.{pid}.*"))
    callgrind_control("-d", pid)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        new = sorted(set(glob.glob(f"{out_prefix}.{pid}.*")) - before,
                     key=lambda p: int(p.rsplit(".", 1)[1]) if p.rsplit(".", 1)[1].isdigit() else -1)
        if new and not new[-1].endswith(".tmp"):
            # callgrind writes the file in one go; wait until its size settles and `totals:` is there.
            path = new[-1]
            size = -1
            while size != os.path.getsize(path):
                size = os.path.getsize(path)
                time.sleep(0.2)
            with open(path, "rb") as f:
                f.seek(max(0, size - 4096))
                if b"totals:" in f.read():
                    return path
        time.sleep(0.2)
    raise BenchError(f"callgrind wrote no dump for {pid} ({out_prefix}.{pid}.*) within {timeout}s")


def load(ctx, sc, duration, args):
    """One wrk (h2load) run against the scenario's proxy; the load generator is ended with the
    run's other processes if the bench stops during it."""
    proc = start_load(ctx, sc, sc.envoy.listen_port, sc.script, duration, args.instructions_threads,
                      args.instructions_connections, sc.token_cursor)
    procs.ALL_PROCS.append(proc)
    return finish_load(sc, proc, duration)


def advance(sc, res):
    if res.get("token_cursor") is not None:
        sc.token_cursor = res["token_cursor"]


def start_under_callgrind(sc, args, ctx):
    """The scenario's proxy as the timed run builds it, under callgrind, and its probes: the
    prefix of its callgrind out files."""
    prefix = os.path.join(ctx["workdir"], f"callgrind.{sc.name}")
    wrapper = [ctx["valgrind"], "--tool=callgrind", f"--callgrind-out-file={prefix}.%p"] + os.environ.get("MG_VG_EXTRA", "").split()
    if args.by_line:
        wrapper.append("--dump-instr=yes")
    wasm = any(f["name"] == "envoy.filters.http.wasm" for f in sc.filters)
    boot_scenario(sc, ctx, wrapper=wrapper, timeout=args.instructions_timeout or (300 if wasm else 120))
    return prefix


def measure_instructions(sc, args, ctx):
    """One scenario: start under callgrind, warm up, zero, load, dump, check, parse."""
    prefix = start_under_callgrind(sc, args, ctx)
    envoy = sc.envoy
    warm = load(ctx, sc, args.instructions_warmup, args)
    advance(sc, warm)
    rate = warm["requests"] / max(warm["elapsed_s"], 1e-9)
    duration = max(2, math.ceil(1.2 * args.instructions_requests / max(rate, 1.0)))  # the warm-up's rate can overshoot
    up0 = envoy.stat_now(UPSTREAM_STAT)
    rls = ctx.get("rls") if sc.uses_rls else None
    rls_mark = rls.mark() if rls else None
    pid = envoy.proc.pid  # valgrind's (the wrapper script exec'd it)
    callgrind_control("-z", pid)
    t0 = time.monotonic()
    res = load(ctx, sc, duration, args)
    path = dump(pid, prefix)
    elapsed = time.monotonic() - t0
    advance(sc, res)
    n = check_run(sc, res)
    upstream = (envoy.stat_now(UPSTREAM_STAT) - up0) / n
    check_outcome(sc, n, upstream, rls.since(rls_mark) if rls is not None else None)
    maps = read_maps(pid)
    idle = idle_rate(pid, prefix, args.instructions_idle) if args.instructions_idle > 0 else None
    t0 = time.monotonic()
    prof = parse_callgrind(path)
    parse_s = time.monotonic() - t0
    envoy.stop()
    share = module_share(prof, sc, maps)
    report = None
    so = dm_object(sc)
    if args.by_line and so:
        report = by_line(path, so, maps, n, ROOT, expected_self=share["self"] if share else None)
    out = {"desc": sc.desc, "requests": n, "rps": res["rps"], "duration_s": duration, "warmup_rps": rate,
           "ready_s": envoy.load_time_s, "upstream_fraction": upstream, "total_ir": prof.totals,
           "ir_per_req": prof.totals / n, "elapsed_s": elapsed, "idle_ir_per_s": idle,
           "net_ir_per_req": None if idle is None else (prof.totals - idle * elapsed) / n,
           "dump": os.path.basename(path), "dump_bytes": os.path.getsize(path), "parse_s": parse_s,
           "top_objects": [{"object": ob, "ir_per_req": v / n}
                           for ob, v in sorted(prof.objects.items(), key=lambda kv: -kv[1])[:6]]}
    if report:
        out["by_line"] = report
    if share:
        out["module"] = dict(share, self_per_req=share["self"] / n, entries_per_req=share["entries"] / n,
                             calls_in_per_req=share["calls_in"] / n)
    return out


def idle_rate(pid, prefix, seconds):
    """Instructions per second of the proxy with no load (timers, stats flushes): what the measured
    window's wall time adds whatever the requests; `net_ir_per_req` takes it out, so a proxy that
    valgrind ran at 180 req/s and one at 350 req/s compare on their requests alone."""
    callgrind_control("-z", pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    path = dump(pid, prefix)
    return parse_callgrind(path).totals / (time.monotonic() - t0)


def select(scenarios, args):
    """--only, else passthrough, native-*, dm-*, dmb-* (and with --instructions-wasm trivial-* and
    mg-*): the proxies that run Envoy's filters or a dynamic module."""
    names = [s.name for s in scenarios]
    if args.only:
        want = [n for n in args.only.split(",") if n]
        unknown = sorted(set(want) - set(names))
        if unknown:
            raise BenchError(f"unknown scenarios: {unknown}")
        if "passthrough" not in want:
            want.insert(0, "passthrough")
    else:
        prefixes = ("native-", "dm-", "dmb-") + (("mg-", "trivial-") if args.instructions_wasm else ())
        want = [n for n in names if n == "passthrough" or n.startswith(prefixes)]
    by_name = {s.name: s for s in scenarios}
    picked = [by_name[n] for n in want]
    if not args.instructions_wasm:
        wasm = [s.name for s in picked if any(f["name"] == "envoy.filters.http.wasm" for f in s.filters)]
        if wasm:
            raise BenchError(f"wasm scenarios {wasm} need --instructions-wasm (V8 under valgrind is slow)")
    return picked


def run_instructions(args):
    """`bench.py --instructions`: every selected scenario under callgrind, one at a time; the
    table, the comparisons and the #24 targets by instruction count into
    <out>/results-instructions.md and .json. Never touches docs/performance.md."""
    envoy_bin = os.environ.get("ENVOY_BIN", "")
    if not envoy_bin or not os.access(envoy_bin, os.X_OK):
        raise BenchError(f"set ENVOY_BIN to the Envoy binary (got {envoy_bin!r}); `make bench-instructions` does it")
    valgrind = ensure_valgrind()
    wrk = ensure_wrk()
    ensure_cryptography()
    native = os.environ.get("MESHGUARD_NATIVE", "")
    if os.path.exists(native):
        ensure_trivial_dm(args.no_build)
    elif not args.instructions_wasm:
        raise BenchError("set MESHGUARD_NATIVE to the native module (make native) for the dm-* scenarios, "
                         "or give --instructions-wasm")
    mg_src = os.environ.get("MESHGUARD_WASM", "")
    workdir = tempfile.mkdtemp(prefix="meshguard-instr-")
    ok = False
    try:
        mg_wasm = os.path.join(workdir, "meshguard.wasm")
        trivial_wasm = os.path.join(workdir, "trivial_filter.wasm")
        if args.instructions_wasm:
            if not os.path.exists(mg_src):
                raise BenchError(f"--instructions-wasm needs MESHGUARD_WASM (got {mg_src!r}): make build")
            shutil.copyfile(mg_src, mg_wasm)
            shutil.copyfile(ensure_trivial_wasm(args.no_build), trivial_wasm)
        with open(os.path.join(FIXTURES, "tokens.json")) as f:
            tokens_fixture = json.load(f)
        with open(os.path.join(FIXTURES, "jwks.json")) as f:
            fixture_jwks = json.load(f)
        distinct = {alg: make_distinct_tokens(args.tokens, alg) for alg in ("RS256", "ES256")}
        scenarios = select(build_scenarios(mg_wasm, trivial_wasm, tokens_fixture, fixture_jwks, distinct), args)
        # Under valgrind the proxy is the bottleneck: any build of the rate limit service keeps up.
        if not os.environ.get("MESHGUARD_RLS_BIN"):
            for kind in ("release", "debug"):
                b = os.path.join(RLS_TARGET, kind, "meshguard-test-rls")
                if os.path.exists(b):
                    os.environ["MESHGUARD_RLS_BIN"] = b
                    break
        if not os.environ.get("MESHGUARD_RLS_BIN") and not args.only:
            skipped = [s.name for s in scenarios if s.uses_rls]
            if skipped:
                log(f"bench: no rate limit service built (make rls): {', '.join(skipped)} left out")
                scenarios = [s for s in scenarios if not s.uses_rls]
        info = machine_info(envoy_bin)
        vg_version = subprocess.run([valgrind, "--version"], capture_output=True, text=True).stdout.strip()
        log(f"bench: instructions per request under {vg_version} callgrind, Envoy {info['envoy_version']}, "
            f"{len(scenarios)} scenarios one at a time, ~{args.instructions_requests} requests each; workdir {workdir}")
        for sc in scenarios:
            path = os.path.join(workdir, f"wrk-{sc.name}.lua")
            sc.script = write_rotating_lua(path, sc.tokens) if sc.tokens else write_static_lua(path, sc.headers)
        up = procs.start(procs.envoy(envoy_bin, workdir, "upstream", upstream_bootstrap, concurrency=1, role="others"))
        ctx = bench_context(envoy_bin, workdir, wrk, scenarios, up, rls_hint=" (make rls builds it)",
                            valgrind=valgrind)
        results = {}
        started = time.monotonic()
        try:
            for sc in scenarios:
                t0 = time.monotonic()
                try:
                    r = measure_instructions(sc, args, ctx)
                except BenchError as e:
                    sc.error = str(e)
                    results[sc.name] = {"desc": sc.desc, "error": sc.error}
                    log(f"\n!!!!! SCENARIO {sc.name} FAILED !!!!!\n{e}\n")
                    continue
                finally:
                    if sc.envoy:
                        sc.envoy.stop()
                results[sc.name] = r
                mod = r.get("module")
                log(f"bench: {sc.name:28s} {r['ir_per_req'] / 1e3:8.1f}k instr/req"
                    + ("" if r["net_ir_per_req"] is None else f" ({r['net_ir_per_req'] / 1e3:.1f}k net of "
                       f"{r['idle_ir_per_s'] / 1e3:.0f}k/s idle)")
                    + ("" if not mod else f"  module {mod['self_per_req'] / 1e3:6.1f}k self, "
                       f"{mod['entries_per_req'] / 1e3:6.1f}k in its hooks")
                    + f"  ({r['requests']} requests at {r['rps']:.0f} req/s, ready in {r['ready_s']:.0f}s, "
                    f"{time.monotonic() - t0:.0f}s in all)")
        finally:
            stop_run(scenarios, ctx)
        comp = comparisons(results)
        targets = target_rows(results)
        md = render_instructions(info, vg_version, args, results, comp, targets, time.monotonic() - started)
        print("\n" + md)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results-instructions.md"), "w") as f:
            f.write(md)
        by = [render_by_line(name, r["by_line"]) for name, r in results.items() if r.get("by_line")]
        if by:
            with open(os.path.join(args.out, "results-by-line.md"), "w") as f:
                f.write("# meshguard bench: the native module's instructions by line (callgrind)\n\n" + "\n".join(by))
            log(f"bench: wrote {os.path.join(args.out, 'results-by-line.md')}")
        with open(os.path.join(args.out, "results-instructions.json"), "w") as f:
            json.dump(repo_paths({"machine": info, "valgrind": vg_version, "settings": vars(args),
                                  "scenarios": results, "comparisons": comp, "targets": targets}), f, indent=1)
        log(f"bench: wrote {os.path.join(args.out, 'results-instructions.md')} and .json")
        failed = [n for n, r in results.items() if "error" in r]
        if failed:
            log(f"bench: FAILED scenarios: {', '.join(failed)}")
            return 1
        ok = True
        return 0
    finally:
        finish_workdir(ok, args.keep, workdir, "configs, Envoy logs and callgrind dumps")


# ----------------------------------------------------------------------------------- report
def _mod(r, key):
    m = r.get("module") if r else None
    return None if not m else m[key]


def net(r):
    """Instructions per request net of the idle rate when measured, else the whole figure."""
    return r["net_ir_per_req"] if r.get("net_ir_per_req") is not None else r["ir_per_req"]


def comparisons(results):
    """COMPARISONS whose two scenarios were measured: b minus a, instructions per request: the
    whole process, net of idle, and the module's object (self)."""
    out = []
    for a, b, label in COMPARISONS:
        ra, rb = results.get(a), results.get(b)
        if not ra or not rb or "error" in ra or "error" in rb:
            continue
        row = {"a": a, "b": b, "label": label, "diff": rb["ir_per_req"] - ra["ir_per_req"],
               "net_diff": net(rb) - net(ra)}
        ma, mb = _mod(ra, "self_per_req"), _mod(rb, "self_per_req")
        row["module_diff"] = None if ma is None and mb is None else (mb or 0) - (ma or 0)
        out.append(row)
    return out


def target_rows(results):
    """The #24 targets by instruction count (net of idle): the native module's proxy executes no
    more instructions per request than Envoy's own filter's."""
    out = []
    for a, b, label in TARGETS:
        ra, rb = results.get(a), results.get(b)
        if not ra or not rb or "error" in ra or "error" in rb:
            continue
        d = net(rb) - net(ra)
        out.append({"a": a, "b": b, "label": label, "diff": d, "ratio": net(rb) / net(ra),
                    "whole_diff": rb["ir_per_req"] - ra["ir_per_req"], "holds": d <= 0})
    return out


def k(x, signed=False):
    if x is None:
        return "-"
    return f"{x / 1e3:+.1f}k" if signed else f"{x / 1e3:.1f}k"


def render_instructions(info, vg_version, args, results, comp, targets, elapsed_s):
    pt = results.get("passthrough")
    pt = None if not pt or "error" in pt else net(pt)
    lines = [
        "# meshguard bench: instructions per request (callgrind)", "",
        f"{info['date']}, git {info['git']}, Envoy {info['envoy_version']}, {vg_version} "
        f"(`--tool=callgrind`), {info['nproc']} CPUs ({info['cpu_model']}), kernel {info['kernel']}. "
        f"Each proxy alone under callgrind (--concurrency 1), {args.instructions_warmup} s of warm-up, then "
        f"about {args.instructions_requests} requests (wrk -t{args.instructions_threads} "
        f"-c{args.instructions_connections}) between `callgrind_control -z` and `-d`, then "
        f"{args.instructions_idle} s with no load; {elapsed_s / 60:.0f} min in all.",
        "",
        "Instructions are not time: cache misses, branch mispredictions and the kernel's work (system calls, "
        "the network) are not counted. *whole*: every instruction of the proxy process (all threads and "
        "objects) between zero and dump, per request; *idle/s*: the same proxy's instructions per second with "
        "no load (timers, stats flushes); *net*: whole minus idle/s times the measured window's seconds, per "
        "request (what the comparisons use: valgrind's request rate varies with the host's load, the idle "
        "work per second does not); *- passthrough*: net minus passthrough's net; *module self*: executed "
        "in the module's own object (the dm-* .so; for wasm, code in anonymous memory: V8's); *in its "
        "hooks*: everything executed inside Envoy's calls into that code, Envoy callbacks included (an upper "
        "bound when the module is re-entered, marked *).", "",
        "| scenario | requests | whole | idle/s | net | - passthrough | module self | in its hooks | description |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | FAILED | | | | | | | {r['error'].splitlines()[0][:120]} |")
            continue
        m = r.get("module")
        hooks = "-" if not m else k(m["entries_per_req"]) + (" *" if m["reentrant"] else "")
        over = None if pt is None or name == "passthrough" else net(r) - pt
        lines.append(f"| {name} | {r['requests']} | {k(r['ir_per_req'])} | {k(r.get('idle_ir_per_s'))} | "
                     f"{k(r.get('net_ir_per_req'))} | {k(over, True)} | "
                     f"{k(_mod(r, 'self_per_req'))} | {hooks} | {r['desc']} |")
    if comp:
        lines += ["", "## Comparisons (b minus a, instructions per request)", "",
                  "| b - a | net | whole | module self | |", "|---|---:|---:|---:|---|"]
        for c in comp:
            lines.append(f"| {c['b']} - {c['a']} | {k(c['net_diff'], True)} | {k(c['diff'], True)} | "
                         f"{k(c['module_diff'], True)} | {c['label']} |")
    if targets:
        lines += ["", "## #24 targets by instruction count", "",
                  "The native module's proxy executes no more instructions per request (net) than Envoy's own "
                  "filter's (the timed rate limit target allows +1 us; not converted here).", "",
                  "| target | dm - native, net | dm / native | whole | holds by instruction count |",
                  "|---|---:|---:|---:|---|"]
        for t in targets:
            lines.append(f"| {t['label']} ({t['b']} vs {t['a']}) | {k(t['diff'], True)} | {t['ratio']:.3f} | "
                         f"{k(t['whole_diff'], True)} | {'yes' if t['holds'] else 'no'} |")
    return "\n".join(lines) + "\n"
