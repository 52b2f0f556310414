"""Build a tiny busybox image as a tar archive, in Python, with no registry.

The archive is both an OCI image layout (``oci-layout``, ``index.json``,
``blobs/sha256/...``; image-spec ``image-layout.md``) and a docker-archive
(``manifest.json`` pointing at the same blobs), the way ``docker save`` has
written them since Docker 25. So ``ctr images import`` reads the OCI index and
``docker load`` reads ``manifest.json``, from one file.

The single layer is uncompressed, so its digest is also its diff ID.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
DEFAULT_REF = "docker.io/dockyard/busybox:test"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"

# A fixed time keeps the layer, and so every digest, reproducible.
EPOCH = 0
CREATED = "1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class ImageArchive:
    """Where the archive is, and what is in it."""

    path: Path
    ref: str  # fully qualified, as containerd names it
    docker_ref: str  # as docker shows it
    manifest_digest: str
    config_digest: str
    layer_digest: str


def go_arch() -> str:
    """The machine's architecture in the OCI (Go) spelling."""
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(m, m)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.mtime = EPOCH
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = EPOCH
    tar.addfile(info, io.BytesIO(data))


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    info.mode = 0o777
    info.mtime = EPOCH
    tar.addfile(info)


def busybox_layer(busybox: str = BUSYBOX) -> bytes:
    """An uncompressed layer: /bin/busybox, a symlink per applet, /etc/passwd and group."""
    applets = subprocess.run(
        [busybox, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "dev", "etc", "home", "proc", "root", "sys"):
            _add_dir(tar, d, 0o700 if d == "root" else 0o755)
        _add_dir(tar, "tmp", 0o1777)
        _add_file(tar, "bin/busybox", Path(busybox).read_bytes(), 0o755)
        for applet in sorted(set(applets) - {"busybox"}):
            _add_symlink(tar, f"bin/{applet}", "busybox")
        _add_file(
            tar,
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        )
        _add_file(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _docker_ref(ref: str) -> str:
    """``docker.io/library/x:t`` -> ``x:t``; ``docker.io/a/b:t`` -> ``a/b:t``."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def build_image_archive(dest: Path, ref: str = DEFAULT_REF) -> ImageArchive:
    """Write the busybox image archive to ``dest`` (a file path) and describe it."""
    layer = busybox_layer()
    layer_digest = _digest(layer)
    config = _json(
        {
            "architecture": go_arch(),
            "os": "linux",
            "created": CREATED,
            "config": {"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created": CREATED, "created_by": "busybox-static, applet links"}],
        }
    )
    config_digest = _digest(config)
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": MT_LAYER, "digest": layer_digest, "size": len(layer)}],
        }
    )
    manifest_digest = _digest(manifest)
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [
                {
                    "mediaType": MT_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "platform": {"architecture": go_arch(), "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }
    )
    docker_ref = _docker_ref(ref)

    def blob(d: str) -> str:
        return "blobs/sha256/" + d.split(":", 1)[1]

    docker_manifest = _json(
        [{"Config": blob(config_digest), "RepoTags": [docker_ref], "Layers": [blob(layer_digest)]}]
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            _add_dir(tar, d)
        _add_file(tar, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        for digest, data in (
            (layer_digest, layer),
            (config_digest, config),
            (manifest_digest, manifest),
        ):
            _add_file(tar, blob(digest), data)
        _add_file(tar, "index.json", index)
        _add_file(tar, "manifest.json", docker_manifest)
    return ImageArchive(dest, ref, docker_ref, manifest_digest, config_digest, layer_digest)
