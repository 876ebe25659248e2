"""Proof that a meshguard VM never trapped: the Envoy log lines a wasm trap
or a Rust panic leaves, and Envoy's own wasm VM counters. Shared by the
hostile-input, fault and soak suites."""

import re

# What Envoy 1.40 (V8) logs when a proxy-wasm callback traps
# ("Function: proxy_on_request_headers failed: Uncaught RuntimeError:
# unreachable"), and meshguard's panic hook ("meshguard: panic: ...", the
# line a Rust panic leaves just before its trap).
TRAP_RE = re.compile(
    r"meshguard: panic:|panicked at|Function: proxy_on\w* failed|Uncaught RuntimeError"
    r"|wasm trap|Plugin configured to fail closed failed to load|VM failed")


def trap_lines(log_text):
    """Every log line that shows a trap or a panic (empty: none)."""
    return [l for l in log_text.splitlines() if TRAP_RE.search(l)]


def vm_stats(envoy):
    """Envoy's wasm VM counters (`wasm.envoy.wasm.runtime.v8.created` /
    `.active`): a trapped VM is replaced, which shows here as more created
    VMs than the configuration accounts for."""
    return {k: v for k, v in envoy.stats(settle=False).items()
            if k.startswith("wasm.envoy.wasm.runtime.")}


def assert_no_trap(envoy, vms_before=None):
    """No trap/panic line in the log; with `vms_before` (a `vm_stats` taken
    earlier), no VM was created since (a trapped VM being replaced would be)."""
    bad = trap_lines(envoy.log())
    assert not bad, "wasm trap or panic:\n" + "\n".join(bad[:20])
    if vms_before is not None:
        now = vm_stats(envoy)
        assert now.get("wasm.envoy.wasm.runtime.v8.created") == \
            vms_before.get("wasm.envoy.wasm.runtime.v8.created"), (vms_before, now)
