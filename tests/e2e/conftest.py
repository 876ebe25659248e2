"""Fixtures for the end-to-end suite: a counting upstream and Envoys that dump
their log when the test using them fails. Missing Envoy or wasm is an error
(with the command that fixes it), never a skip."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import rls  # noqa: E402


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

PROMETHEUS = ("Envoy 1.40 does not strip a dynamic module's metrics namespace in "
              "/stats/prometheus as it strips proxy-wasm's `wasmcustom`: natively the "
              "names are envoy_wasmcustom_meshguard_* (docs/native.md, \"Metrics\")")
NO_BATCH = ("natively counters reach Envoy at the end of every callback (no VM crossing "
            "to save): there is no metrics_flush_interval lag to observe")
NO_VM = ("fail_open is about a proxy-wasm VM that failed at runtime; a dynamic module "
         "has no VM (a configuration it refuses is rejected by Envoy at load)")

# file, or file::test (a prefix of the test's name: parametrised ids included)
NATIVE_DIFFERS = {
    "test_ratelimit.py::test_prometheus_names": PROMETHEUS,
    "test_observability.py::test_every_metric_the_dashboard_and_alerts_query_exists": PROMETHEUS,
    "test_metrics.py::test_other_features_counters_are_batched_too": NO_BATCH,
    "test_metrics.py::test_a_long_interval_holds_counts_until_the_tick_then_flushes_them_all": NO_BATCH,
    "test_failure_mode.py::test_vm_failure": NO_VM,
    "test_hostile.py::test_the_trap_check_sees_a_real_trap": NO_VM,
    "test_faults.py::test_fifty_reloads_under_load": (
        "drives ECDS with the proxy-wasm filter's type URL and checks V8's VM stats; "
        "native reloads are checked by test_dispatch.py::test_reloads_serve_the_newest_configuration_and_forget_deleted_ones"),
    "test_footprint.py::test_configuration_load_is_within_a_ratio_of_the_trivial_filters": (
        "compares loading meshguard.wasm with a trivial wasm filter in V8 (swaps the wasm "
        "filter's vm_config code)"),
    "test_registry.py::test_push_compat_image_and_envoy_loads_meshguard_from_the_registry": (
        "Envoy fetches meshguard.wasm from an OCI registry into the wasm filter's vm_config; "
        "a dynamic module is loaded from the proxy's file system only"),
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


# The test rate limit service (tests/e2e/rls.py) on its Redis, for the
# global, leased and usage-based limits' tests.

@pytest.fixture
def redis(tmp_path):
    r = rls.Redis(tmp_path).start()
    yield r
    r.stop()


@pytest.fixture
def rls_server(tmp_path, redis):
    """Factory: rls_server(limits, delay_ms=None) -> a started service on
    Redis (each call another instance sharing the same Redis)."""
    started = []

    def make(limits, delay_ms=None):
        s = rls.RlsServer(tmp_path, limits, redis_url=redis.url, delay_ms=delay_ms)
        started.append(s)
        return s.start()

    yield make
    for s in started:
        s.stop()
