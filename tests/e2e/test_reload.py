"""Hot reload with Envoy's file-based LDS: a new meshguard config takes effect
without a restart, rate-limit and breaker state of unchanged routes survives
it, and a bad update is refused while the last good config keeps serving.
Also: the module logs its version at VM start, and the shipped failure
policy (fail_open: false) is what the configs use."""

import json
import os
import time

import harness


def listener_resource(config, upstream_port, listen_port):
    doc = harness.bootstrap(config, upstream_port, listen_port, harness.free_port())
    listener = doc["static_resources"]["listeners"][0]
    listener["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener"
    return {"resources": [listener]}


def write_atomically(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)  # Envoy watches the directory for moves


def wait_for(e, stat, at_least, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        if e.stat(stat, 0, settle=False) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"{stat} never reached {at_least}:\n{e.log()[-4000:]}")


def lds_envoy(tmp_path, upstream, config_text):
    """An Envoy (not started) whose listener comes from a watched LDS file,
    first written with meshguard configuration `config_text`; returns the
    Envoy and the file's path (rewrite it with `write_atomically`)."""
    lds_dir = tmp_path / "lds"
    lds_dir.mkdir()
    lds = str(lds_dir / "listeners.json")
    e = harness.Envoy(tmp_path, "{}", upstream.port, concurrency=2)
    write_atomically(lds, listener_resource(config_text, upstream.port, e.listen_port))
    del e.doc["static_resources"]["listeners"]
    e.doc["node"] = {"id": "meshguard-test", "cluster": "meshguard-test"}
    e.doc["dynamic_resources"] = {"lds_config": {"path_config_source": {
        "path": lds, "watched_directory": {"path": str(lds_dir)}}, "resource_api_version": "V3"}}
    return e, lds


def route(name, prefix, capacity):
    return {"name": name, "match": {"path_prefix": prefix},
            "rate_limit": [{"name": "all", "capacity": capacity, "refill_tokens": 1, "refill_interval": "1h"}]}


def test_hot_reload_keeps_state_and_refuses_bad_updates(tmp_path, upstream, request):
    cfg1 = {"routes": [route("api", "/api", 3),
                       {"name": "flaky", "match": {"path_prefix": "/flaky"},
                        "circuit_breaker": {"consecutive_failures": 2, "open_duration": "1h"}}]}
    e, lds = lds_envoy(tmp_path, upstream, json.dumps(cfg1))
    try:
        e.start()
        wait_for(e, "listener_manager.lds.update_success", 1)
        assert e.request("/api/1")[0] == 200
        assert e.request("/api/2")[0] == 200   # 1 token left
        upstream.behaviour = lambda m, p, h: (500 if p.startswith("/flaky") else 200, {}, b"x", 0)
        assert e.request("/flaky")[0] == 500
        assert e.request("/flaky")[0] == 500
        assert json.loads(e.request("/flaky")[2])["error"] == "circuit_open"

        # A good update: a new route, the old ones unchanged.
        cfg2 = {"routes": cfg1["routes"] + [route("new", "/new", 1)]}
        write_atomically(lds, listener_resource(json.dumps(cfg2), upstream.port, e.listen_port))
        wait_for(e, "listener_manager.lds.update_success", 2)
        # The new route is live...
        assert e.request("/new")[0] == 200
        assert e.request("/new")[0] == 429
        # ...and the old routes kept their state: one token left, breaker open.
        assert e.request("/api/3")[0] == 200
        assert e.request("/api/4")[0] == 429
        assert json.loads(e.request("/flaky")[2])["error"] == "circuit_open"
        hits_before = upstream.hits

        # A bad update is refused; the last good config keeps serving.
        bad = {"routes": [route("api", "/api", 0)]}
        write_atomically(lds, listener_resource(json.dumps(bad), upstream.port, e.listen_port))
        wait_for(e, "listener_manager.lds.update_rejected", 1)
        assert "meshguard: invalid config at routes[0].rate_limit[0].capacity" in e.log()
        assert e.request("/new")[0] == 429
        assert e.request("/api/5")[0] == 429
        s, h, _ = e.request("/other")
        assert s == 200
        assert upstream.hits == hits_before + 1
    finally:
        e.stop()
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            print(e.log()[-20000:])


def test_version_is_logged_at_vm_start(envoy, upstream):
    e = envoy({})
    lines = [l for l in e.log().splitlines() if "meshguard 0." in l and ") started" in l]
    assert lines, e.log()[-3000:]
    # "meshguard <version> (<git hash>) started"
    assert "(unknown)" not in lines[0] or not os.path.isdir(os.path.join(harness.ROOT, ".git"))


def test_shipped_configs_fail_closed():
    """The recommended failure policy is what we ship: fail_open false."""
    for rel in ["envoy/envoy.yaml", "envoy/docker/envoy.yaml", "envoy/istio/envoyfilter.yaml"]:
        with open(os.path.join(harness.ROOT, rel)) as f:
            text = f.read()
        assert "fail_open: false" in text, rel
