#!/usr/bin/env python3
"""Builds the Istio-compatible Wasm OCI image of meshguard without Docker.

Layout ("compat" variant, what Istio's WasmPlugin and Envoy Gateway pull):
an OCI image whose single gzip layer holds `plugin.wasm`. Written as an OCI
image-layout tarball (oci-layout, index.json, blobs/sha256/...), which
`skopeo copy oci-archive:target/oci/meshguard-oci.tar docker://REGISTRY/meshguard:TAG`
or `crane push target/oci/meshguard-oci.tar REGISTRY/meshguard:TAG` push.
The output is reproducible: fixed timestamps and owners.

usage: build.py <plugin.wasm> <out.tar> <version>
"""

import gzip
import hashlib
import io
import json
import sys
import tarfile

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
EPOCH = 0


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = EPOCH
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build(wasm, version):
    layer_tar = tar_bytes([("plugin.wasm", wasm)])
    layer = gzip.compress(layer_tar, mtime=EPOCH)
    config = json.dumps({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {"Labels": {"org.opencontainers.image.title": "meshguard",
                              "org.opencontainers.image.version": version}},
        "rootfs": {"type": "layers", "diff_ids": [sha(layer_tar)]},
        "history": [{"created_by": "oci/build.py", "created": "1970-01-01T00:00:00Z"}],
    }, sort_keys=True, separators=(",", ":")).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": sha(layer), "size": len(layer),
                    "annotations": {"org.opencontainers.image.title": "plugin.wasm"}}],
        "annotations": {"org.opencontainers.image.title": "meshguard",
                        "org.opencontainers.image.version": version},
    }, sort_keys=True, separators=(",", ":")).encode()
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": MEDIA_MANIFEST, "digest": sha(manifest), "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": version}}],
    }, sort_keys=True, separators=(",", ":")).encode()
    files = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]
    for blob in (config, layer, manifest):
        files.append(("blobs/sha256/" + hashlib.sha256(blob).hexdigest(), blob))
    return tar_bytes(files)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    with open(sys.argv[1], "rb") as f:
        wasm = f.read()
    if wasm[:4] != b"\0asm":
        sys.exit(f"{sys.argv[1]} is not a wasm module")
    out = build(wasm, sys.argv[3])
    with open(sys.argv[2], "wb") as f:
        f.write(out)
    print(f"{sys.argv[2]}: {len(out)} bytes, plugin.wasm {len(wasm)} bytes, tag {sys.argv[3]}")


if __name__ == "__main__":
    main()
