"""What happens when the Wasm VM fails, with the setting meshguard ships
(`fail_open: false`) and with the alternative.

A VM failure cannot be provoked in meshguard itself (it has no panics on
traffic by design), so this test builds, byte by byte, the smallest
proxy-wasm module whose request callback traps, and runs it in the exact
filter configuration meshguard uses. It shows Envoy's behaviour that
docs/operations.md documents: fail closed = 503 and the upstream untouched; fail open =
the request passes without the filter."""

import os

import harness


def leb(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def section(sid, payload):
    return bytes([sid]) + leb(len(payload)) + payload


def vec(items):
    return leb(len(items)) + b"".join(items)


def name(s):
    return leb(len(s)) + s.encode()


def trapping_module():
    I32 = 0x7F
    types = [
        b"\x60" + vec([]) + vec([]),                       # 0: () -> ()
        b"\x60" + vec([bytes([I32])] * 2) + vec([bytes([I32])]),  # 1: (i32,i32) -> i32
        b"\x60" + vec([bytes([I32])] * 2) + vec([]),        # 2: (i32,i32) -> ()
        b"\x60" + vec([bytes([I32])] * 3) + vec([bytes([I32])]),  # 3: (i32,i32,i32) -> i32
        b"\x60" + vec([bytes([I32])]) + vec([bytes([I32])]),       # 4: (i32) -> i32
    ]
    funcs = [0, 1, 1, 2, 3, 4]
    bodies = [
        b"\x0b",                    # abi version marker: nothing
        b"\x41\x01\x0b",            # on_vm_start: i32.const 1
        b"\x41\x01\x0b",            # on_configure: i32.const 1
        b"\x0b",                    # on_context_create
        b"\x00\x0b",                # on_request_headers: unreachable (trap)
        b"\x41\x80\x08\x0b",        # on_memory_allocate: i32.const 1024
    ]
    exports = [
        ("proxy_abi_version_0_2_1", 0, 0), ("proxy_on_vm_start", 0, 1), ("proxy_on_configure", 0, 2),
        ("proxy_on_context_create", 0, 3), ("proxy_on_request_headers", 0, 4),
        ("proxy_on_memory_allocate", 0, 5), ("memory", 2, 0),
    ]
    code = [leb(len(b"\x00" + body)) + b"\x00" + body for body in bodies]
    return (b"\x00asm\x01\x00\x00\x00"
            + section(1, vec(types))
            + section(3, vec([leb(f) for f in funcs]))
            + section(5, vec([b"\x00" + leb(1)]))
            + section(7, vec([name(n) + bytes([kind]) + leb(idx) for n, kind, idx in exports]))
            + section(10, vec(code)))


def envoy_with(tmp_path, upstream, fail_open):
    path = os.path.join(str(tmp_path), "trap.wasm")
    with open(path, "wb") as f:
        f.write(trapping_module())
    e = harness.Envoy(tmp_path, "{}", upstream.port, concurrency=1, fail_open=fail_open)
    filt = e.doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    filt["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = path
    return e.start()


def test_vm_failure_fails_closed_with_the_shipped_setting(tmp_path, upstream):
    e = envoy_with(tmp_path, upstream, fail_open=False)
    try:
        statuses = [e.request("/")[0] for _ in range(3)]
        assert statuses == [503, 503, 503], statuses
        assert upstream.hits == 0
    finally:
        e.stop()


def test_vm_failure_with_fail_open_lets_traffic_through(tmp_path, upstream):
    e = envoy_with(tmp_path, upstream, fail_open=True)
    try:
        statuses = [e.request("/")[0] for _ in range(3)]
        assert statuses == [200, 200, 200], statuses
        assert upstream.hits == 3
    finally:
        e.stop()
