"""Paths, constants shared by the modules, the error and the log line."""

import os

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # bench/
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "jwt")
TRIVIAL_DIR = os.path.join(HERE, "trivial-filter")
TRIVIAL_WASM = os.path.join(TRIVIAL_DIR, "target", "wasm32-wasip1", "release", "trivial_filter.wasm")
# The reference dynamic module (no-op hooks; `rl_floor`: a rate limit's minimal work), built with the
# native module's scenarios (MESHGUARD_NATIVE): the floor of the dm-* rows.
TRIVIAL_DM_DIR = os.path.join(HERE, "trivial-dm")
TRIVIAL_DM = os.path.join(TRIVIAL_DM_DIR, "target", "release", "libtrivial_dm.so")
# tests/e2e: harness.py (the Envoy wrapper shared with the e2e tests), rls.py (the test rate limit service)
E2E_DIR = os.path.join(ROOT, "tests", "e2e")
RLS_MANIFEST = os.path.join(ROOT, "tests", "rls-server", "Cargo.toml")
RLS_TARGET = os.path.join(ROOT, "target", "rls-server")  # where `make rls` builds (debug)
PATH = "/bench"
ISSUER = "https://issuer.test"
AUDIENCE = "api"
# Global rate limits: one rate limit service (tests/rls-server, in memory) for
# meshguard's global limit and Envoy's ratelimit filter alike.
RLS_CLUSTER = "ratelimit"
RLS_DOMAIN = "meshguard"
RLS_TIMEOUT = "1s"  # generous: load must not turn into failure-mode passes (those fail the scenario)
# The descriptor both sides send: route=bench, limit=all.
RLS_DESCRIPTOR = "{route=bench,limit=all}"
# 4e9 per 60 s: every request passes, and it fits the RLS proto's uint32 requests_per_unit.
RLS_LIMITS = [{"name": "bench-all", "namespace": RLS_DOMAIN, "max_value": 4000000000, "seconds": 60,
               "conditions": ["descriptors[0].route == 'bench'", "descriptors[0].limit == 'all'"]}]
NATIVE_RATE_LIMITS = [{"actions": [
    {"generic_key": {"descriptor_key": "route", "descriptor_value": "bench"}},
    {"generic_key": {"descriptor_key": "limit", "descriptor_value": "all"}}]}]


class BenchError(Exception):
    pass


def repo_paths(obj):
    """`obj` (JSON-like) with every string naming a path inside the repository made relative to
    its root: a results file records where things were without naming the machine's folders."""
    if isinstance(obj, dict):
        return {k: repo_paths(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [repo_paths(v) for v in obj]
    if isinstance(obj, str) and obj.startswith(ROOT + os.sep):
        return os.path.relpath(obj, ROOT)
    return obj


def log(msg):
    print(msg, flush=True)


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


# The gRPC scenarios: unary calls of one method, over HTTP/2 (h2c) on both sides of the proxy. The
# upstream answers each with a trailers-only OK (HTTP 200, grpc-status 0, no body): what a server
# sends for an empty answer, and no gRPC server process in the measurement.
GRPC_PATH = "/bench.v1.Bench/Call"
GRPC_MESSAGE = b"\x00\x00\x00\x00\x05hello"  # one length-prefixed message (5 bytes)
GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers"}
GRPC_STREAMS = 4  # concurrent streams per HTTP/2 connection (gRPC multiplexes)
