"""Fixtures for the end-to-end suite: a counting upstream and Envoys that dump
their log when the test using them fails. Missing Envoy or wasm is an error
(with the command that fixes it), never a skip."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402


def pytest_sessionstart(session):
    # Fail loudly and early, with the fix, if the real components are missing.
    harness.envoy_bin()
    harness.wasm_path()
    if harness.runtime() == "native" and not os.path.exists(harness.native_path()):
        raise RuntimeError(f"{harness.native_path()} is missing: build it with `make native`")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep


@pytest.fixture
def upstream():
    u = harness.Upstream()
    yield u
    u.stop()


@pytest.fixture
def envoy(request, tmp_path, upstream):
    """Factory: envoy(config, concurrency=2, **bootstrap kwargs) -> started Envoy."""
    started = []

    def make(config, concurrency=2, upstream_port=None, **kw):
        e = harness.Envoy(tmp_path, config, upstream_port or upstream.port, concurrency=concurrency, **kw)
        started.append(e)
        return e.start()

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for e in started:
        e.stop()
        if failed:
            sys.stderr.write(f"\n----- Envoy log ({e.log_path}) -----\n{e.log()[-20000:]}\n")


# ------------------------------------------------------------------ runtimes
# `MESHGUARD_RUNTIME=native` (`make test-native`) runs this suite against the
# Envoy dynamic module (docs/native.md). What the native module does not do,
# or does differently, is listed here with the reason; those tests are
# skipped natively with it (shown by `pytest -rs`), never silently.

CALLOUTS = ("calls to other services (JWKS fetch, rate limit service) are wasm-only: "
            "see docs/native.md, \"What is wasm-only\"")
FOREIGN = ("counts Envoy's proxy-wasm `verify_signature` foreign function; the native "
           "module verifies every algorithm with the same Rust crypto in process")

# file, or file::test (a prefix of the test's name: parametrised ids included)
NATIVE_DIFFERS = {
    "test_jwt.py::test_remote_jwks": CALLOUTS,
    "test_jwt.py::test_every_algorithm_is_accepted": FOREIGN,
    "test_jwt.py::test_native_ecdsa_refuses_bad_signatures": FOREIGN,
    "test_global_ratelimit.py": CALLOUTS,
    "test_ratelimit.py::test_prometheus_names": (
        "Envoy 1.40 does not strip a dynamic module's metrics namespace in "
        "/stats/prometheus as it strips proxy-wasm's `wasmcustom`: natively the "
        "names are envoy_wasmcustom_meshguard_* (docs/native.md, \"Metrics\")"),
}


def wasm_only(reason):
    """Marks a test the native module cannot pass, with the ABI reason."""
    return pytest.mark.skipif(harness.runtime() == "native", reason=f"wasm only: {reason}")


def pytest_collection_modifyitems(config, items):
    if harness.runtime() != "native":
        return
    for item in items:
        name = f"{os.path.basename(str(item.fspath))}::{item.name}"
        for key, reason in NATIVE_DIFFERS.items():
            if name.startswith(key if "::" in key else key + "::"):
                item.add_marker(wasm_only(reason))
                break
