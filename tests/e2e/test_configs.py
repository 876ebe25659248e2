"""The shipped Envoy configurations are valid for Envoy 1.40 with meshguard,
they carry the documented example, and Envoy refuses bad meshguard configs
with the one-line error of the contract."""

import glob
import json
import os
import re

import pytest
import yaml

import harness

ROOT = harness.ROOT


def meshguard_configs(doc):
    """Every meshguard configuration string inside an Envoy config document."""
    out = []

    def walk(node):
        if isinstance(node, dict):
            cfg = node.get("config")
            if isinstance(cfg, dict) and cfg.get("root_id") == "meshguard":
                out.append(cfg["configuration"]["value"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    return out


def load_yaml(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return yaml.safe_load(f)


def example(name):
    with open(os.path.join(ROOT, "examples", name)) as f:
        return json.load(f)


def test_demo_envoy_yaml_validates_and_embeds_the_demo_example(tmp_path):
    code, out = harness.validate(os.path.join(ROOT, "envoy/envoy.yaml"), ROOT)
    assert code == 0, out
    assert "meshguard: configuration loaded (4 routes)" in out
    configs = meshguard_configs(load_yaml("envoy/envoy.yaml"))
    assert [json.loads(c) for c in configs] == [example("demo.json")]


def test_rls_envoy_yaml_validates_and_embeds_the_global_example(tmp_path):
    code, out = harness.validate(os.path.join(ROOT, "envoy/rls/envoy.yaml"), ROOT)
    assert code == 0, out
    doc = load_yaml("envoy/rls/envoy.yaml")
    assert [json.loads(c) for c in meshguard_configs(doc)] == [example("global-ratelimit.json")]
    cluster = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "ratelimit")
    opts = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in opts["explicit_http_config"], "gRPC needs HTTP/2"


def test_docker_compose_envoy_config_validates(tmp_path):
    doc = load_yaml("envoy/docker/envoy.yaml")
    assert [json.loads(c) for c in meshguard_configs(doc)] == [example("demo.json")]
    # The container path of the module is replaced by the local build.
    text = json.dumps(doc).replace("/etc/envoy/meshguard.wasm", harness.wasm_path())
    code, out = harness.validate(json.loads(text), tmp_path)
    assert code == 0, out
    code, out = harness.validate(os.path.join(ROOT, "envoy/docker/upstream.yaml"), tmp_path)
    assert code == 0, out


def test_docker_compose_mounts_what_exists():
    compose = load_yaml("envoy/docker-compose.yaml")
    envoy = compose["services"]["envoy"]
    assert envoy["image"] == "envoyproxy/envoy:v1.40.0"
    mounts = dict(v.rsplit(":", 2)[:2] for v in envoy["volumes"])
    assert mounts["./docker/envoy.yaml"] == "/etc/envoy/envoy.yaml"
    assert mounts["../target/wasm32-wasip1/release/meshguard.wasm"] == "/etc/envoy/meshguard.wasm"
    assert os.path.exists(os.path.join(ROOT, "envoy/docker/envoy.yaml"))
    assert "/etc/envoy/envoy.yaml" in envoy["command"]
    up = compose["services"]["upstream"]
    assert any(v.startswith("./docker/upstream.yaml:") for v in up["volumes"])
    # The Envoy config reaches the upstream service by its compose name.
    assert '"address": "upstream"' in json.dumps(load_yaml("envoy/docker/envoy.yaml")).replace(": ", ": ")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "examples", "*.json"))),
                         ids=os.path.basename)
def test_every_example_loads_in_envoy(path, tmp_path):
    with open(path) as f:
        cfg = f.read()
    doc = harness.bootstrap(cfg, harness.free_port(), harness.free_port(), harness.free_port(),
                            extra_clusters=[harness.static_cluster("idp", harness.free_port())])
    code, out = harness.validate(doc, tmp_path)
    assert code == 0, out
    assert "meshguard: configuration loaded" in out


BAD = [
    ('{"routes": [{"name": "a", "rate_limit": [{"capacity": 0, "refill_interval": "1s"}]}]}',
     "meshguard: invalid config at routes[0].rate_limit[0].capacity: "
     "expected an integer from 1 to 1000000000, got 0"),
    ('{"routes": [{"name": "a", "rate_limit": [{"capcity": 5}]}]}',
     "meshguard: invalid config at routes[0].rate_limit[0].capcity: unknown key `capcity`"),
    ('{"routes": [{"name": "a"}, {"name": "a"}]}',
     'meshguard: invalid config at routes[1].name: expected a route name used only once'),
    ('{"routes": [{"name": "a", "rate_limit": [{"capacity": 5, "refill_interval": "soon"}]}]}',
     'meshguard: invalid config at routes[0].rate_limit[0].refill_interval: '
     'expected a duration string like "250ms"'),
    ("not json", "meshguard: invalid config: expected a JSON object"),
    ('{"metrics_flush_interval": "1m"}',
     'meshguard: invalid config at metrics_flush_interval: expected a duration from "0s" '
     '(every increment at once) to "10s", got \"1m\"'),
    ('{"routes": [{"name": "a", "match": ["/api/"], "rate_limit": [{"capacity": 5, "refill_interval": "1s"}]}]}',
     "meshguard: invalid config at routes[0].match: expected an object, got an array"),
    # A member named twice: refused, never "the last one wins" (the route
    # would run without its JWT check).
    ('{"routes": [{"name": "a", "jwt": {"providers": ["p"]}, "jwt": null}]}',
     'meshguard: invalid config at routes[0]: duplicate member "jwt" at line 1 column %d'
     % (len('{"routes": [{"name": "a", "jwt": {"providers": ["p"]}, "jwt"'))),
    ('{"routes": [], "\\u0072outes": [{"name": "a"}]}',
     'meshguard: invalid config: duplicate member "routes" at line 1 column %d'
     % (len('{"routes": [], "\\u0072outes"'))),
]


@pytest.mark.parametrize("cfg,line", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_envoy_refuses_bad_configs_with_one_clear_line(cfg, line, tmp_path):
    doc = harness.bootstrap(cfg, harness.free_port(), harness.free_port(), harness.free_port())
    code, out = harness.validate(doc, tmp_path)
    assert code != 0, out
    errors = [l for l in out.splitlines() if "meshguard: invalid config" in l]
    assert len(errors) >= 1, out
    assert line in errors[0], errors[0]
    assert re.search(r"\]\[(error|critical)\]", errors[0]), errors[0]


def test_a_running_envoy_refuses_to_start_with_a_bad_config(tmp_path, upstream):
    e = harness.Envoy(tmp_path, '{"routes": [{"name": 1}]}', upstream.port)
    with pytest.raises(RuntimeError) as err:
        e.start(timeout=30)
    assert "meshguard: invalid config at routes[0].name: expected a string, got integer `1`" in str(err.value)
    e.stop()


# The module's size is guarded in one place: test_footprint.py.


def test_documented_jwt_example_works_as_documented(envoy, upstream):
    """The JWT example of docs/configuration.md: examples/jwt.json and the
    token shown there."""
    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        token = re.search(r"^TOKEN=(\S+)$", f.read(), re.M).group(1)
    e = envoy(example("jwt.json"))
    s, _, _ = e.request("/orders", headers={"authorization": f"Bearer {token}"})
    assert s == 200
    _, path, headers = upstream.requests[-1]
    assert headers["x-user"] == "user-1" and headers["x-org"] == "acme"
    assert "authorization" not in headers
    s, h, _ = e.request("/orders")
    assert s == 401 and h["www-authenticate"] == 'Bearer realm="orders"'
