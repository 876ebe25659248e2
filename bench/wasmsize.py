#!/usr/bin/env python3
"""Code size of a wasm module by crate and by function (no external tool).

    python3 bench/wasmsize.py MODULE.wasm [--crates N] [--functions N] [--match TEXT]

Function names come from the module's `name` section: the shipped module is
stripped, so build one with names into a separate target directory, e.g.

    CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR=target/sized \\
        cargo build --release --target wasm32-wasip1
    wasm-opt -O3 --debuginfo ... (as the Makefile) target/sized/.../meshguard.wasm -o sized.wasm

(`--debuginfo`/`-g` keeps the names through wasm-opt). A function is
charged to the crate of the first path in its demangled name (for
`<A as B>::f`, A's crate): a monomorphised serde visitor of a meshguard
type counts as meshguard, a generic wrapper as its own crate.
"""

import argparse
import collections
import re
import sys


def leb(b, i):
    r = s = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << s
        s += 7
        if x < 0x80:
            return r, i


def read_module(data):
    """(section sizes by id/name, [code body sizes], {function index: name}, imported function count)."""
    if data[:4] != b"\0asm":
        raise ValueError("not a wasm module")
    i, imports, code, names, sections = 8, 0, [], {}, collections.Counter()
    while i < len(data):
        sid = data[i]
        size, i = leb(data, i + 1)
        body = data[i:i + size]
        label = str(sid)
        if sid == 2:  # imports: count the functions
            n, j = leb(body, 0)
            for _ in range(n):
                ln, j = leb(body, j)
                j += ln
                ln, j = leb(body, j)
                j += ln
                kind = body[j]
                j += 1
                if kind == 0:
                    _, j = leb(body, j)
                    imports += 1
                elif kind == 1:  # table: reftype, limits
                    j += 1
                    fl, j = leb(body, j)
                    _, j = leb(body, j)
                    if fl & 1:
                        _, j = leb(body, j)
                elif kind == 2:  # memory: limits
                    fl, j = leb(body, j)
                    _, j = leb(body, j)
                    if fl & 1:
                        _, j = leb(body, j)
                elif kind == 3:  # global: valtype, mut
                    j += 2
        elif sid == 10:
            n, j = leb(body, 0)
            for _ in range(n):
                ln, j = leb(body, j)
                code.append(ln)
                j += ln
        elif sid == 0:
            ln, j = leb(body, 0)
            label = "custom:" + body[j:j + ln].decode(errors="replace")
            nm = body[j:j + ln]
            j += ln
            if nm == b"name":
                while j < len(body):
                    sub = body[j]
                    sl, j = leb(body, j + 1)
                    if sub == 1:
                        k = j
                        n, k = leb(body, k)
                        for _ in range(n):
                            idx, k = leb(body, k)
                            ln, k = leb(body, k)
                            names[idx] = body[k:k + ln].decode(errors="replace")
                            k += ln
                    j += sl
        sections[label] += size
        i += size
    return sections, code, names, imports


LEGACY_ESCAPES = {"$LT$": "<", "$GT$": ">", "$u20$": " ", "$RF$": "&", "$BP$": "*", "$C$": ",", "$SP$": "@",
                  "$u7b$": "{", "$u7d$": "}", "$u5b$": "[", "$u5d$": "]", "$u27$": "'", "$u3b$": ";",
                  "$u22$": '"', "$u7e$": "~", "$LP$": "(", "$RP$": ")"}


def demangle(name):
    """Rust's legacy mangling (`_ZN...17h<hash>E`) to a readable path (hash dropped); v0 names
    (`_R...`) are left as they are but for their first crate name."""
    if name.startswith("_ZN") and name.endswith("E"):
        i, parts = 3, []
        body = name[:-1]
        while i < len(body) and body[i].isdigit():
            j = i
            while body[j].isdigit():
                j += 1
            n = int(body[i:j])
            part = body[j:j + n]
            i = j + n
            if re.fullmatch(r"h[0-9a-f]{16}", part):
                continue
            if part.startswith("_$"):
                part = part[1:]
            for k, v in LEGACY_ESCAPES.items():
                part = part.replace(k, v)
            parts.append(part.replace("..", "::"))
        return "::".join(parts) if parts else name
    if name.startswith("_R"):
        m = re.search(r"C(?:s[0-9A-Za-z]*_)?\d+([A-Za-z_][A-Za-z0-9_]*)", name)
        if m:
            return f"{m.group(1)}::<v0 {name[:40]}>"
    return name


def crate_of(name):
    s = name.lstrip("<&*")
    s = re.sub(r"^(mut |const |dyn |impl )+", "", s)
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", s)
    return m.group(1) if m else "(other: " + s[:24] + ")"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("module")
    ap.add_argument("--crates", type=int, default=25)
    ap.add_argument("--functions", type=int, default=25)
    ap.add_argument("--match", default="", help="only sum the functions whose name contains this")
    args = ap.parse_args(argv)
    with open(args.module, "rb") as f:
        data = f.read()
    sections, code, names, imports = read_module(data)
    if not names:
        print("no name section: build with CARGO_PROFILE_RELEASE_STRIP=false (see --help)", file=sys.stderr)
    print(f"module {len(data):,} bytes; code section {sum(code):,} bytes in {len(code):,} functions")
    print("sections: " + ", ".join(f"{k} {v:,}" for k, v in sections.most_common()))
    funcs = [(sz, demangle(names.get(k + imports, f"f{k + imports}"))) for k, sz in enumerate(code)]
    if args.match:
        sel = [(sz, nm) for sz, nm in funcs if args.match in nm]
        print(f"functions matching {args.match!r}: {len(sel)}, {sum(sz for sz, _ in sel):,} bytes")
    by = collections.Counter()
    for sz, nm in funcs:
        by[crate_of(nm)] += sz
    print(f"\n{'bytes':>9}  crate")
    for c, s in by.most_common(args.crates):
        print(f"{s:9,}  {c}")
    print(f"\n{'bytes':>9}  function")
    for sz, nm in sorted(funcs, reverse=True)[:args.functions]:
        print(f"{sz:9,}  {nm[:160]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
