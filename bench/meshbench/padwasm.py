"""Pads a wasm module to a given size, to tell apart what a module's bytes cost from
what its code costs (issue #22, "Where the footprint goes"):

- `code`: never-called functions (integer arithmetic, loads and stores, ifs, loops,
  calls between themselves; ~1.5 KB each, like meshguard's average function):
  a host that compiles every function at load (V8 without Liftoff, as in Envoy)
  pays for them; a lazy one does not.
- `custom`: one custom section of zeros: only read and kept, never compiled.

Used by `bench/footprint.py --pad-trivial`: the trivial filter padded both ways
to meshguard's size, beside meshguard, in one run.
"""

import random


def _leb(b, i):
    r = s = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << s
        s += 7
        if x < 0x80:
            return r, i


def _uleb(n):
    out = bytearray()
    while True:
        x = n & 0x7F
        n >>= 7
        if n:
            out.append(x | 0x80)
        else:
            out.append(x)
            return bytes(out)


def _sleb(n):
    out = bytearray()
    while True:
        x = n & 0x7F
        n >>= 7
        if (n == 0 and not x & 0x40) or (n == -1 and x & 0x40):
            out.append(x)
            return bytes(out)
        out.append(x | 0x80)


def _sections(data):
    if data[:4] != b"\0asm":
        raise ValueError("not a wasm module")
    i, out = 8, []
    while i < len(data):
        sid = data[i]
        size, j = _leb(data, i + 1)
        out.append([sid, data[j:j + size]])
        i = j + size
    return out


def _vec_add(body, items):
    n, j = _leb(body, 0)
    return _uleb(n + len(items)) + body[j:] + b"".join(items)


def _imported_functions(body):
    n, j = _leb(body, 0)
    funcs = 0
    for _ in range(n):
        for _ in range(2):  # module, name
            ln, j = _leb(body, j)
            j += ln
        kind = body[j]
        j += 1
        if kind == 0:
            _, j = _leb(body, j)
            funcs += 1
        elif kind in (1, 2):  # table (reftype + limits), memory (limits)
            if kind == 1:
                j += 1
            flags, j = _leb(body, j)
            _, j = _leb(body, j)
            if flags & 1:
                _, j = _leb(body, j)
        elif kind == 3:
            j += 2
        else:
            raise ValueError(f"import kind {kind}")
    return funcs


def _body(rng, first, count, size):
    """One function (i32) -> i32 with 6 i32 locals, ~`size` bytes of code."""
    code = bytearray()
    get, set_, tee = b"\x20", b"\x21", b"\x22"
    while len(code) < size:
        k = rng.randrange(6)
        a, b, c = (_uleb(rng.randrange(7)) for _ in range(3))
        off = _uleb(rng.randrange(64) * 4)
        if k == 0:  # c = a + b
            code += get + a + get + b + b"\x6a" + set_ + c
        elif k == 1:  # c = load(a + off)
            code += get + a + b"\x28\x02" + off + set_ + c
        elif k == 2:  # store(a + off, b)
            code += get + a + get + b + b"\x36\x02" + off
        elif k == 3:  # if a { c = b * k } else { a = c ^ b }
            code += (get + a + b"\x04\x40" + get + b + b"\x41" + _sleb(rng.randrange(1000)) + b"\x6c" + set_ + c
                     + b"\x05" + get + c + get + b + b"\x73" + set_ + a + b"\x0b")
        elif k == 4:  # loop { a -= 1; if a == 0 break; b += a }
            code += (b"\x02\x40\x03\x40" + get + a + b"\x41\x01\x6b" + tee + a + b"\x45\x0d\x01"
                     + get + b + get + a + b"\x6a" + set_ + b + b"\x0c\x00\x0b\x0b")
        else:  # c = call(a)
            code += get + a + b"\x10" + _uleb(first + rng.randrange(count)) + set_ + c
    full = _uleb(1) + _uleb(6) + b"\x7f" + bytes(code) + get + b"\x00\x0b"
    return _uleb(len(full)) + full


def pad(data, target, mode, avg=1500, seed=22):
    """`data` (a module's bytes) grown to about `target` bytes; `mode` "code" or "custom"."""
    secs = _sections(data)
    grow = target - len(data)
    if grow <= 0:
        return data
    if mode == "custom":
        name = b"padding"
        payload = _uleb(len(name)) + name
        payload += bytes(max(grow - len(payload) - 6, 0))
        secs.append([0, payload])
    elif mode == "code":
        ids = {sid: body for sid, body in secs}
        if 3 not in ids or 10 not in ids or 1 not in ids:
            raise ValueError("module without type/function/code sections")
        ntypes, _ = _leb(ids[1], 0)
        first = (_imported_functions(ids[2]) if 2 in ids else 0) + _leb(ids[3], 0)[0]
        rng = random.Random(seed)
        count = max(1, grow // (avg * 3 // 2 + 24))  # callees: among the first `count` (all exist)
        bodies, total = [], 0
        while total + avg < grow - 8:
            bodies.append(_body(rng, first, count, rng.randrange(avg // 2, avg * 3 // 2)))
            total += len(bodies[-1]) + 2  # + its function-section entry
        count = len(bodies)
        for s in secs:
            if s[0] == 1:
                s[1] = _vec_add(s[1], [b"\x60\x01\x7f\x01\x7f"])
            elif s[0] == 3:
                s[1] = _vec_add(s[1], [_uleb(ntypes)] * count)
            elif s[0] == 10:
                s[1] = _vec_add(s[1], bodies)
    else:
        raise ValueError(f"pad mode {mode!r}")
    out = bytearray(data[:8])
    for sid, body in secs:
        out += bytes([sid]) + _uleb(len(body)) + body
    return bytes(out)
