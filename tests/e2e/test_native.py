"""meshguard as an Envoy dynamic module (`make native`): it loads in the
shipped Envoy with its ABI version matched, passes traffic, and keeps one
policy state for all workers. The rest of the suite runs against it with
`MESHGUARD_RUNTIME=native` (`make test-native`)."""

import os
import re
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import harness

ABI_RS = os.path.join(harness.ROOT, "src", "native", "abi.rs")


def native_module():
    path = harness.native_path()
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: build it with `make native`")
    return path


@pytest.fixture
def native(monkeypatch):
    native_module()
    monkeypatch.setenv("MESHGUARD_RUNTIME", "native")


def route(limits, name="api", **extra):
    r = {"name": name, "match": {"path_prefix": "/"}, "rate_limit": limits}
    r.update(extra)
    return r


def test_every_declared_callback_exists_in_the_shipped_envoy():
    """Each Envoy function `src/native/abi.rs` declares is exported by the
    Envoy binary the tests use (a missing one would fail at the first call)."""
    declared = set(re.findall(r'"(envoy_dynamic_module_callback_[a-z_]+)"', open(ABI_RS).read()))
    assert len(declared) > 20
    out = subprocess.run(["nm", "-D", "--defined-only", harness.envoy_bin()],
                         capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert declared - exported == set()
    mod = subprocess.run(["nm", "-D", "--defined-only", native_module()],
                         capture_output=True, text=True, check=True).stdout
    assert "envoy_dynamic_module_on_program_init" in mod
    assert "envoy_dynamic_module_on_http_filter_config_new" in mod


def profile_sections(path):
    """The ELF sections of LLVM's profiling runtime (`__llvm_prf_cnts`, ...)
    in the shared library at `path`."""
    out = subprocess.run(["readelf", "-S", "-W", path], capture_output=True, text=True, check=True).stdout
    return sorted(set(re.findall(r"__llvm_prf_[a-z]+", out)))


def test_the_shipped_module_is_not_the_instrumented_training_build():
    """`make native` trains an instrumented build of the module (pgo/train.py)
    and ships the one compiled with its counts: a module still carrying the
    profiling runtime would count every branch and write profile files from
    users' Envoys at exit."""
    assert profile_sections(native_module()) == []
    trained = os.path.join(harness.ROOT, "target", "pgo", "gen")
    instrumented = [os.path.join(d, f) for d, _, files in os.walk(trained) for f in files
                    if f == "libmeshguard.so" and os.sep + "deps" + os.sep not in d + os.sep]
    for path in instrumented:  # the check itself sees the runtime where it is
        assert "__llvm_prf_cnts" in profile_sections(path), path


def test_loads_with_the_abi_version_matched_and_passes_traffic(native, envoy, upstream):
    e = envoy({"routes": []})
    assert e.request("/hello")[0] == 200
    assert upstream.hits == 1
    log = e.log()
    assert "Dynamic module ABI version v0.2.0 matched." in log, log[-3000:]
    assert "meshguard: configuration loaded (0 routes) by the native module" in log


def test_a_bad_configuration_is_refused_with_its_json_path(native, tmp_path, upstream):
    bad = {"routes": [{"name": "api", "match": {"path_prefix": "/"},
                       "rate_limit": [{"name": "x", "capacity": -1,
                                       "refill_tokens": 1, "refill_interval": "1s"}]}]}
    e = harness.Envoy(tmp_path, bad, upstream.port)
    with pytest.raises(harness.EnvoyError):
        e.start(timeout=20)
    e.stop()
    assert "routes[0].rate_limit[0].capacity" in e.log()


def test_rate_limit_is_exact_across_workers(native, envoy, upstream):
    """One bucket for every worker: the process-wide store's CAS."""
    e = envoy({"routes": [route([{"name": "all", "capacity": 40, "refill_tokens": 1,
                                  "refill_interval": "1h"}])]}, concurrency=4)
    barrier = threading.Barrier(40)

    def one(i):
        if i < 40:
            barrier.wait(timeout=30)
        return e.request(f"/x/{i}")[0]

    with ThreadPoolExecutor(max_workers=40) as pool:
        statuses = list(pool.map(one, range(160)))
    assert statuses.count(200) == 40, statuses
    assert statuses.count(429) == 120
    stats = e.stats()
    assert stats["wasmcustom.meshguard.ratelimit.api.all.allowed"] == 40
    assert stats["wasmcustom.meshguard.ratelimit.api.all.limited"] == 120


def test_the_native_demo_config_starts_and_applies_its_policies(native, tmp_path):
    """envoy/native.yaml (the demo with the native module) loads as shipped,
    with its ports and paths moved for the test."""
    import json
    import yaml
    text = open(os.path.join(harness.ROOT, "envoy", "native.yaml")).read()
    ports = {10000: harness.free_port(), 10001: harness.free_port(), 9901: harness.free_port()}
    for old, new in ports.items():
        text = text.replace(f"port_value: {old}", f"port_value: {new}")
    text = text.replace("target/release/libmeshguard.so", native_module())
    text = text.replace("target/native-access.log", str(tmp_path / "access.log"))
    doc = yaml.safe_load(text)
    filt = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["http_filters"][0]
    assert filt["name"] == "envoy.filters.http.dynamic_modules"
    demo = json.load(open(os.path.join(harness.ROOT, "examples", "demo.json")))
    assert json.loads(filt["typed_config"]["filter_config"]["value"]) == demo
    path = tmp_path / "native.yaml"
    path.write_text(json.dumps(doc))
    e = harness.EnvoyProcess(tmp_path, config_path=str(path), admin_port=ports[9901])
    e.listen_port = ports[10000]
    try:
        e.start()
        # /: 3 per client per 10 s; the 4th is refused.
        assert [e.request("/")[0] for _ in range(4)] == [200, 200, 200, 429]
        # /orders needs a token.
        assert e.request("/orders")[0] == 401
        # /catalog is cached.
        e.request("/catalog")
        h = e.request("/catalog")[1]
        assert "hit" in h.get("cache-status", ""), h
    finally:
        e.stop()
