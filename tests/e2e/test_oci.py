"""`make oci`'s image: an OCI image layout whose one layer holds plugin.wasm
(Istio's compat variant), with correct media types and digests, reproducible."""

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import harness

BUILD = os.path.join(harness.ROOT, "oci", "build.py")


def build(tmp_path, version="9.9.9"):
    out = os.path.join(str(tmp_path), f"img-{version}.tar")
    subprocess.run([sys.executable, BUILD, harness.wasm_path(), out, version], check=True,
                   capture_output=True, timeout=120)
    with open(out, "rb") as f:
        return f.read()


def members(data):
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


def test_layout_media_types_and_digests(tmp_path):
    files = members(build(tmp_path))
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, blob in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(blob).hexdigest() == name.rsplit("/", 1)[1], name
    index = json.loads(files["index.json"])
    (desc,) = index["manifests"]
    assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "9.9.9"
    manifest_blob = files["blobs/sha256/" + desc["digest"].split(":")[1]]
    assert len(manifest_blob) == desc["size"]
    manifest = json.loads(manifest_blob)
    assert manifest["schemaVersion"] == 2
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    config_blob = files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]]
    assert len(config_blob) == manifest["config"]["size"]
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    layer_blob = files["blobs/sha256/" + layer["digest"].split(":")[1]]
    assert len(layer_blob) == layer["size"]
    layer_tar = gzip.decompress(layer_blob)
    config = json.loads(config_blob)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]
    inner = members(layer_tar)
    assert list(inner) == ["plugin.wasm"]
    with open(harness.wasm_path(), "rb") as f:
        assert inner["plugin.wasm"] == f.read()


def test_image_is_reproducible(tmp_path):
    assert build(tmp_path, "1.0.0") == build(tmp_path / "..", "1.0.0")


def test_dockerfile_builds_the_same_layout():
    with open(os.path.join(harness.ROOT, "oci", "Dockerfile")) as f:
        lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    assert lines == ["FROM scratch", "COPY target/wasm32-wasip1/release/meshguard.wasm ./plugin.wasm"]
