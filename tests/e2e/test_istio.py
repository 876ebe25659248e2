"""The Istio manifests are real: every Envoy fragment of the EnvoyFilter,
assembled into a bootstrap, passes `envoy --mode validate` with the built
module, and every WasmPlugin pluginConfig is a valid meshguard config."""

import copy
import json
import os

import yaml

import harness

ISTIO = os.path.join(harness.ROOT, "envoy", "istio")


def docs(name):
    with open(os.path.join(ISTIO, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def listener_with(http_filter, port):
    doc = harness.bootstrap("{}", harness.free_port(), port, harness.free_port())
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [http_filter, hcm["http_filters"][-1]]  # ours + router
    return doc


HARDENING = {"normalize_path": True, "merge_slashes": True, "strip_trailing_host_dot": True,
             "path_with_escaped_slashes_action": "REJECT_REQUEST",
             "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"}}


def merge_hardening(doc, patch):
    """Applies a NETWORK_FILTER MERGE patch to the bootstrap's connection
    manager, after checking it carries the whole hardening."""
    assert patch["patch"]["operation"] == "MERGE"
    assert patch["match"]["listener"]["filterChain"]["filter"]["name"] == \
        "envoy.filters.network.http_connection_manager"
    typed = patch["patch"]["value"]["typed_config"]
    assert {k: v for k, v in typed.items() if k != "@type"} == HARDENING
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert typed["@type"] == hcm["@type"]
    hcm.update({k: v for k, v in typed.items() if k != "@type"})


def test_shipped_envoy_configs_harden_the_ingress_listener():
    for name in ["envoy.yaml", os.path.join("docker", "envoy.yaml"), os.path.join("rls", "envoy.yaml")]:
        with open(os.path.join(harness.ROOT, "envoy", name)) as f:
            doc = yaml.safe_load(f)
        hcms = [flt["typed_config"] for lst in doc["static_resources"]["listeners"]
                for fc in lst["filter_chains"] for flt in fc["filters"]
                if flt["name"] == "envoy.filters.network.http_connection_manager"
                and any(h["name"] == "envoy.filters.http.wasm" for h in flt["typed_config"]["http_filters"])]
        assert hcms, name
        for hcm in hcms:
            for k, v in HARDENING.items():
                assert hcm.get(k) == v, (name, k)


def test_wasmplugin_hardening_validates_in_envoy(tmp_path):
    (ef,) = [d for d in docs("wasmplugin.yaml") if d["kind"] == "EnvoyFilter"]
    (patch,) = ef["spec"]["configPatches"]
    doc = harness.bootstrap("{}", harness.free_port(), harness.free_port(), harness.free_port())
    merge_hardening(doc, patch)
    code, out = harness.validate(doc, tmp_path)
    assert code == 0, out


def test_wasmplugin_configs_validate_in_envoy(tmp_path):
    plugins = [d for d in docs("wasmplugin.yaml") if d["kind"] == "WasmPlugin"]
    assert {p["metadata"]["name"] for p in plugins} == {"meshguard-authn", "meshguard-traffic"}
    for p in plugins:
        spec = p["spec"]
        cfg = spec["pluginConfig"]
        has_jwt = any("jwt" in r for r in cfg.get("routes", []))
        # JWT fails closed; the traffic plugin fails open on purpose.
        assert spec["failStrategy"] == ("FAIL_CLOSE" if has_jwt else "FAIL_OPEN"), p["metadata"]["name"]
        assert spec["url"].startswith("oci://")
        doc = harness.bootstrap(json.dumps(cfg), harness.free_port(), harness.free_port(), harness.free_port(),
                                extra_clusters=[harness.static_cluster("outbound|443||auth.example.com",
                                                                       harness.free_port())])
        code, out = harness.validate(doc, tmp_path)
        assert code == 0, out
        assert "meshguard: configuration loaded" in out, out


def test_serviceentry_provides_the_cluster_the_jwks_names():
    entries = [d for d in docs("wasmplugin.yaml") if d["kind"] == "ServiceEntry"]
    host, port = entries[0]["spec"]["hosts"][0], entries[0]["spec"]["ports"][0]["number"]
    authn = [d for d in docs("wasmplugin.yaml") if d["metadata"]["name"] == "meshguard-authn"][0]
    remote = authn["spec"]["pluginConfig"]["jwt_providers"]["corp"]["jwks"]["remote"]
    assert remote["cluster"] == f"outbound|{port}||{host}"


def test_envoyfilter_fragments_assemble_into_a_valid_bootstrap(tmp_path):
    (ef,) = docs("envoyfilter.yaml")
    patches = ef["spec"]["configPatches"]
    by_kind = {}
    for p in patches:
        by_kind.setdefault(p["applyTo"], []).append(p)
    (ext,) = by_kind["EXTENSION_CONFIG"]
    (flt,) = by_kind["HTTP_FILTER"]
    clusters = [c["patch"]["value"] for c in by_kind["CLUSTER"]]

    ext_value = copy.deepcopy(ext["patch"]["value"])
    # The HTTP filter refers to the extension config by name and type.
    disc = flt["patch"]["value"]["config_discovery"]
    assert flt["patch"]["value"]["name"] == ext_value["name"]
    assert ext_value["typed_config"]["@type"] in disc["type_urls"]
    assert flt["patch"]["operation"] == "INSERT_BEFORE"
    assert flt["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == "envoy.filters.http.router"

    typed = ext_value["typed_config"]
    typed["config"]["vm_config"]["code"]["local"]["filename"] = harness.wasm_path()
    cfg = json.loads(typed["config"]["configuration"]["value"])
    # The JWKS cluster of the meshguard config is the one the CLUSTER patch adds.
    assert cfg["jwt_providers"]["corp"]["jwks"]["remote"]["cluster"] in {c["name"] for c in clusters}

    doc = listener_with({"name": ext_value["name"], "typed_config": typed}, harness.free_port())
    doc["static_resources"]["clusters"].extend(clusters)
    # The hardening patch merges into the HTTP connection manager.
    (hardening,) = by_kind["NETWORK_FILTER"]
    merge_hardening(doc, hardening)
    code, out = harness.validate(doc, tmp_path)
    assert code == 0, out
    assert "meshguard: configuration loaded (1 routes)" in out, out


# ------------------------------------------------ TrafficExtension (Istio 1.30)

FAIL_STRATEGIES = {"FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"}
PHASES = {"AUTHN", "AUTHZ", "STATS"}


def test_trafficextension_manifests_are_well_formed():
    exts = docs("trafficextension.yaml")
    assert {e["metadata"]["name"] for e in exts} == {
        "meshguard-authn", "meshguard-traffic", "meshguard-traffic-waypoint"}
    for e in exts:
        name = e["metadata"]["name"]
        assert e["apiVersion"] == "extensions.istio.io/v1alpha1", name
        assert e["kind"] == "TrafficExtension", name
        spec = e["spec"]
        # Exactly one of selector / targetRefs; exactly one of wasm / lua.
        assert ("selector" in spec) != ("targetRefs" in spec), name
        assert "wasm" in spec and "lua" not in spec, name
        assert spec["phase"] in PHASES, name
        wasm = spec["wasm"]
        assert wasm["url"].startswith("oci://"), name
        assert wasm["failStrategy"] in FAIL_STRATEGIES, name
        # WasmPlugin's top-level fields live under `wasm:` here.
        for moved in ("url", "pluginConfig", "failStrategy", "imagePullPolicy"):
            assert moved not in spec, (name, moved)
        has_jwt = any("jwt" in r for r in wasm["pluginConfig"].get("routes", []))
        if has_jwt:
            assert wasm["failStrategy"] == "FAIL_CLOSE", name
    (waypoint,) = [e for e in exts if "targetRefs" in e["spec"]]
    (ref,) = waypoint["spec"]["targetRefs"]
    assert ref["kind"] == "Service" and ref["group"] == "" and ref["name"], ref


def test_trafficextension_matches_the_wasmplugin_it_supersedes():
    plugins = {d["metadata"]["name"]: d["spec"] for d in docs("wasmplugin.yaml")
               if d["kind"] == "WasmPlugin"}
    exts = {e["metadata"]["name"]: e["spec"] for e in docs("trafficextension.yaml")}
    for name, p in plugins.items():
        t = exts[name]
        assert (t["phase"], t["priority"]) == (p["phase"], p["priority"]), name
        assert t["selector"] == p["selector"], name
        assert t["wasm"]["url"] == p["url"] and t["wasm"]["failStrategy"] == p["failStrategy"], name
        cfg = dict(t["wasm"]["pluginConfig"])
        cfg.pop("observability", None)  # TrafficExtension's authn plugin also publishes claims
        assert cfg == p["pluginConfig"], name


def test_trafficextension_configs_validate_in_envoy(tmp_path):
    for e in docs("trafficextension.yaml"):
        cfg = e["spec"]["wasm"]["pluginConfig"]
        doc = harness.bootstrap(json.dumps(cfg), harness.free_port(), harness.free_port(), harness.free_port(),
                                extra_clusters=[harness.static_cluster("outbound|443||auth.example.com",
                                                                       harness.free_port())])
        code, out = harness.validate(doc, tmp_path)
        assert code == 0, (e["metadata"]["name"], out)
        assert "meshguard: configuration loaded" in out, out
