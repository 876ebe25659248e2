"""`make oci`'s image in a real OCI registry (Debian's docker-registry, the
CNCF distribution server, on 127.0.0.1): the compat image is pushed and read
back by tag, and Envoy loads meshguard straight from the registry (the raw
module pushed as a Wasm OCI artifact layer, fetched by Envoy's remote code
source with its sha256)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request

import pytest

import harness

REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def registry(tmp_path):
    if not os.path.exists(REGISTRY):
        raise RuntimeError("docker-registry is missing: run `make e2e` (it installs Debian's docker-registry)")
    port = harness.free_port()
    cfg = tmp_path / "registry.yml"
    cfg.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        "log:\n  level: warn\n")
    log = open(tmp_path / "registry.log", "w")
    proc = subprocess.Popen([REGISTRY, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    end = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(base + "/v2/", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            if proc.poll() is not None or time.time() > end:
                raise RuntimeError((tmp_path / "registry.log").read_text())
            time.sleep(0.05)
    yield base, port
    proc.terminate()
    proc.wait(timeout=10)


def http(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, dict(r.headers), r.read()


def push_blob(base, repo, blob):
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    status, headers, _ = http("POST", f"{base}/v2/{repo}/blobs/uploads/", b"")
    assert status == 202
    location = headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    status, _, _ = http("PUT", f"{location}{sep}digest={digest}", blob,
                        {"Content-Type": "application/octet-stream"})
    assert status == 201
    return digest


def push_manifest(base, repo, tag, manifest_bytes):
    status, _, _ = http("PUT", f"{base}/v2/{repo}/manifests/{tag}", manifest_bytes, {"Content-Type": MANIFEST})
    assert status == 201


def test_push_compat_image_and_envoy_loads_meshguard_from_the_registry(registry, tmp_path, upstream):
    base, port = registry
    out = tmp_path / "img.tar"
    subprocess.run([sys.executable, os.path.join(harness.ROOT, "oci", "build.py"), harness.wasm_path(),
                    str(out), "0.1.0"], check=True, capture_output=True)
    with tarfile.open(out) as t:
        files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}

    # 1. The compat image, exactly as `make oci` built it.
    index = json.loads(files["index.json"])
    manifest_blob = files["blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]]
    manifest = json.loads(manifest_blob)
    for d in [manifest["config"]] + manifest["layers"]:
        push_blob(base, "meshguard", files["blobs/sha256/" + d["digest"].split(":")[1]])
    push_manifest(base, "meshguard", "0.1.0", manifest_blob)
    _, _, got = http("GET", f"{base}/v2/meshguard/manifests/0.1.0", headers={"Accept": MANIFEST})
    assert json.loads(got)["layers"][0]["digest"] == manifest["layers"][0]["digest"]

    # 2. The module as a Wasm OCI artifact (raw layer), which Envoy can fetch.
    with open(harness.wasm_path(), "rb") as f:
        wasm = f.read()
    config = b"{}"
    wasm_digest = push_blob(base, "meshguard-module", wasm)
    config_digest = push_blob(base, "meshguard-module", config)
    push_manifest(base, "meshguard-module", "0.1.0", json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.module.wasm.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.module.wasm.content.layer.v1+wasm",
                    "digest": wasm_digest, "size": len(wasm)}],
    }).encode())

    cfg = {"routes": [{"name": "api", "match": {"path_prefix": "/"},
                       "rate_limit": [{"name": "all", "capacity": 1, "refill_interval": "1h"}]}]}
    e = harness.Envoy(tmp_path, cfg, upstream.port, concurrency=1,
                      extra_clusters=[harness.static_cluster("registry", port)])
    code = e.doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["http_filters"][0]["typed_config"]["config"]["vm_config"]["code"]
    code.clear()
    code["remote"] = {
        "http_uri": {"uri": f"{base}/v2/meshguard-module/blobs/{wasm_digest}",
                     "cluster": "registry", "timeout": "10s"},
        "sha256": wasm_digest.split(":")[1],
        "retry_policy": {"num_retries": 3},
    }
    e.start()
    try:
        assert e.request("/")[0] == 200
        assert e.request("/")[0] == 429  # meshguard, loaded from the registry, enforces the limit
        assert "meshguard: configuration loaded (1 routes)" in e.log()
    finally:
        e.stop()
