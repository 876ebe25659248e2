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
