"""Where a native module's instructions go, by meshguard function and source line
(`bench.py --instructions --by-line`).

The profile-guided build inlines nearly everything into the exported hooks, so callgrind's
per-function figures name little more than `envoy_dynamic_module_on_http_filter_request_headers`.
With `--dump-instr=yes` every cost line of a callgrind dump carries the address of its
instruction; `addr2line -i` on a module built with symbols (`make native-profiling`) turns an
address into its chain of inlined functions, innermost first. Summing each instruction's count
on the innermost frame that is meshguard's own source (`src/`, not the standard library's or a
crate's, which are reported under the meshguard line that inlined them) says which function and
which line of meshguard pays for it.

Two kinds of cost are counted per address:

- *self*: instructions executed at that address (the module's own code);
- *out*: the inclusive cost of calls made from that address into another object (Envoy's
  callbacks such as reading the headers, libc's malloc and memcpy), charged to the calling line.

The report's totals are checked against the dump's own per-object figures (`parse_callgrind`):
an address the parser misreads would show as a mismatch, not as a quietly wrong table."""

import os
import re
import subprocess
from collections import defaultdict

from .common import BenchError

_HEX_OR_DEC = re.compile(r"^([+-]?)(0x[0-9a-fA-F]+|\d+)$")


def _position(token, prev):
    """One position of a cost line: absolute (`0x1a2b`, `42`), relative to the previous line's
    (`+3`, `-0x10`) or the same (`*`)."""
    if token == "*":
        return prev
    m = _HEX_OR_DEC.match(token)
    if not m:
        raise BenchError(f"not a callgrind position: {token!r}")
    value = int(m.group(2), 0)
    if m.group(1) == "+":
        return prev + value
    if m.group(1) == "-":
        return prev - value
    return value


def parse_addresses(path, object_match, event="Ir"):
    """Self and out cost per instruction address of the code `object_match(ob)` accepts, from a
    callgrind dump written with `--dump-instr=yes`: ({addr: self}, {addr: out}, {addr: {callee:
    out}}), where callee is "object:function"."""
    self_cost, out_cost = defaultdict(int), defaultdict(int)
    callees = defaultdict(lambda: defaultdict(int))
    names = {"ob": {}, "fn": {}}
    kinds = {"ob": "ob", "cob": "ob", "fn": "fn", "cfn": "fn"}
    positions, ev = None, None
    ob = fn = cob = cfn = None
    in_call = False
    prev = []
    with open(path, errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            c0 = line[0]
            if c0.isdigit() or c0 in "+-*":
                if positions is None or ev is None:
                    raise BenchError(f"{path}:{lineno}: a cost line before `positions:`/`events:`")
                parts = line.split()
                pos = [_position(t, prev[i] if i < len(prev) else 0) for i, t in enumerate(parts[:positions])]
                prev = pos
                vals = parts[positions:]
                cost = int(vals[ev]) if len(vals) > ev else 0
                if in_call:
                    in_call = False
                    if object_match(ob) and not object_match(cob if cob is not None else ob):
                        out_cost[pos[0]] += cost
                        callees[pos[0]][f"{os.path.basename(cob or '?')}:{cfn}"] += cost
                    cob = cfn = None
                elif object_match(ob):
                    self_cost[pos[0]] += cost
                continue
            m = re.match(r"^([a-z]+)=(.*)$", line)
            if m:
                key, val = m.group(1), m.group(2)
                if key in kinds:
                    space = names[kinds[key]]
                    c = re.match(r"^\((\d+)\)(?: (.*))?$", val)
                    if c:
                        if c.group(2) is not None:
                            space[c.group(1)] = c.group(2)
                        val = space.get(c.group(1), val)
                    if key == "ob":
                        ob = val
                    elif key == "fn":
                        fn = val  # noqa: F841 (kept for reading the dump in a debugger)
                    elif key == "cob":
                        cob = val
                    else:
                        cfn = val
                elif key == "calls":
                    in_call = True
                continue
            h = re.match(r"^([a-z]+):\s*(.*)$", line)
            if h:
                if h.group(1) == "positions":
                    kinds_of = h.group(2).split()
                    if kinds_of[0] != "instr":
                        raise BenchError(f"{path}: positions `{h.group(2)}` have no instruction addresses: "
                                         f"run callgrind with --dump-instr=yes (bench.py --by-line does)")
                    positions = len(kinds_of)
                elif h.group(1) == "events":
                    evs = h.group(2).split()
                    if event not in evs:
                        raise BenchError(f"{path}: no {event} among the events {evs}")
                    ev = evs.index(event)
                continue
            raise BenchError(f"{path}:{lineno}: cannot read this line of a callgrind file: {line[:120]!r}")
    if positions is None:
        raise BenchError(f"{path}: no `positions:` line")
    return self_cost, out_cost, callees


def load_bias(maps, so):
    """Where the module's file starts in the process (its lowest mapping), to turn a run-time
    address into the address addr2line reads in the file; 0 when the dump's addresses are
    already file addresses."""
    want = {so, os.path.realpath(so)}
    starts = [start for start, _end, p in maps if p in want or os.path.realpath(p) in want]
    return min(starts) if starts else 0


def symbolise(so, addresses, addr2line="addr2line"):
    """{addr: [(function, file, line), ...] innermost first} for file addresses of `so`."""
    addresses = sorted(addresses)
    if not addresses:
        return {}
    text = "\n".join(hex(a) for a in addresses) + "\n"
    r = subprocess.run([addr2line, "-a", "-i", "-f", "-C", "-e", so], input=text, capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        raise BenchError(f"addr2line failed ({r.returncode}): {r.stderr[-500:]}")
    out, cur, lines = {}, None, r.stdout.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("0x"):
            cur = int(ln, 16)
            out[cur] = []
            i += 1
            continue
        fn_name = ln
        loc = lines[i + 1] if i + 1 < len(lines) else "??:0"
        i += 2
        file, _, lno = loc.rpartition(":")
        lno = lno.split()[0] if lno else "0"
        out[cur].append((fn_name, file, int(lno) if lno.isdigit() else 0))
    return out


def _own(file, root):
    """A path of meshguard's own source, relative to the repository; None otherwise."""
    for base in (root, os.path.realpath(root)):
        prefix = os.path.join(base, "src") + os.sep
        if file.startswith(prefix):
            return os.path.relpath(file, base)
    return None


def attribute(frames, root):
    """(meshguard function, "file:line") of the innermost own frame of an address' chain; the
    outermost frame's function when no frame is meshguard's."""
    for fn_name, file, line in frames:
        rel = _own(file, root)
        if rel:
            return _short(fn_name), f"{rel}:{line}"
    if frames:
        name = _short(frames[-1][0])
        return name, f"({name}: not meshguard's source)"
    return "(no symbol)", "(no symbol)"


def _short(name):
    """A demangled name without its generic arguments' paths, so lines group readably."""
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    return name if len(name) <= 110 else name[:107] + "..."


def by_line(dump_path, so, maps, requests, root, expected_self=None, top=40):
    """The report's data for one scenario: per meshguard function and per source line, self and
    out instructions per request, and the calls out by callee."""
    match = (lambda ob, want={so, os.path.realpath(so)}: ob is not None
             and (ob in want or os.path.realpath(ob) in want))
    self_cost, out_cost, callees = parse_addresses(dump_path, match)
    total_self = sum(self_cost.values())
    if expected_self is not None and total_self != expected_self:
        raise BenchError(f"{dump_path}: the by-address self cost of {so} ({total_self}) differs from the "
                         f"dump's per-function figure ({expected_self}): the positions were misread")
    addrs = set(self_cost) | set(out_cost)
    bias = load_bias(maps, so)
    size = os.path.getsize(so)
    # Addresses inside the file's size are file addresses already (callgrind's usual form).
    rebase = bias if addrs and min(addrs) >= bias and max(addrs) >= size else 0
    frames = symbolise(so, {a - rebase for a in addrs})
    fn_rows = defaultdict(lambda: [0, 0])
    line_rows = defaultdict(lambda: [0, 0, ""])
    callee_rows = defaultdict(lambda: defaultdict(int))
    for a in addrs:
        fn_name, where = attribute(frames.get(a - rebase, []), root)
        s, o = self_cost.get(a, 0), out_cost.get(a, 0)
        fn_rows[fn_name][0] += s
        fn_rows[fn_name][1] += o
        row = line_rows[where]
        row[0] += s
        row[1] += o
        row[2] = row[2] or fn_name
        for callee, v in callees.get(a, {}).items():
            callee_rows[callee][fn_name] += v
    n = max(requests, 1)

    def ranked(rows):
        return sorted(rows.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))

    return {
        "object": so, "requests": requests, "self_per_req": total_self / n,
        "out_per_req": sum(out_cost.values()) / n,
        "functions": [{"function": f, "self": v[0] / n, "out": v[1] / n} for f, v in ranked(fn_rows)[:top]],
        "lines": [{"line": w, "function": v[2], "self": v[0] / n, "out": v[1] / n}
                  for w, v in ranked(line_rows)[:top]],
        "callees": [{"callee": c, "per_req": sum(by.values()) / n,
                     "from": sorted(((f, v / n) for f, v in by.items()), key=lambda x: -x[1])[:3]}
                    for c, by in sorted(callee_rows.items(), key=lambda kv: -sum(kv[1].values()))[:top]],
    }


def render_by_line(name, report):
    """Markdown for one scenario's `by_line` report."""
    r = report
    lines = [f"## {name}: the module's instructions by meshguard function and line", "",
             f"{r['requests']} requests; per request {r['self_per_req']:.0f} instructions in the module's "
             f"own code (*self*) and {r['out_per_req']:.0f} in the calls it makes into Envoy and libc "
             f"(*out*, charged to the calling line). A frame is meshguard's when its file is under `src/`; "
             f"what the standard library or a crate inlined there counts for that meshguard line.", "",
             "| function | self | out |", "|---|---:|---:|"]
    lines += [f"| `{f['function']}` | {f['self']:.0f} | {f['out']:.0f} |" for f in r["functions"]]
    lines += ["", "| line | function | self | out |", "|---|---|---:|---:|"]
    lines += [f"| {x['line']} | `{x['function']}` | {x['self']:.0f} | {x['out']:.0f} |" for x in r["lines"]]
    lines += ["", "| called outside the module | per request | from |", "|---|---:|---|"]
    lines += [f"| `{c['callee'][:100]}` | {c['per_req']:.0f} | "
              + ", ".join(f"`{f}` {v:.0f}" for f, v in c["from"]) + " |" for c in r["callees"]]
    return "\n".join(lines) + "\n"
