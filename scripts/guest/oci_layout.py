#!/usr/bin/env python3
"""Writes an OCI image layout with one gzip layer holding the given files, as container disks
and kernel-boot images are built. Files are owned by 107 (qemu in KubeVirt's images).
Usage: oci_layout.py OUT_DIR REFERENCE SRC:DEST [SRC:DEST ...]"""
import gzip, hashlib, io, json, os, sys, tarfile

out, ref, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)

def put(data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return digest

raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
    dirs = set()
    for pair in pairs:
        src, dest = pair.split(":", 1)
        dest = dest.strip("/")
        parts = dest.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                info = tarfile.TarInfo(d); info.type = tarfile.DIRTYPE; info.mode = 0o555
                info.uid = info.gid = 107; info.mtime = 0
                tar.addfile(info)
        info = tar.gettarinfo(src, arcname=dest)
        info.uid = info.gid = 107; info.uname = info.gname = ""; info.mode = 0o444; info.mtime = 0
        with open(src, "rb") as f:
            tar.addfile(info, f)
layer_tar = raw.getvalue()
layer = gzip.compress(layer_tar, mtime=0)
layer_digest = put(layer)
config = json.dumps({
    "architecture": "amd64", "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
}).encode()
config_digest = put(config)
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + config_digest, "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + layer_digest, "size": len(layer)}],
}).encode()
manifest_digest = put(manifest)
with open(os.path.join(out, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + manifest_digest,
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": ref}}]}, f)
