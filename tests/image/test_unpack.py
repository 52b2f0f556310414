"""Unpacking an image from the content store into snapshots (and a plain dir)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.errors import InvalidArgument
from dockyard.image.content import ContentStore
from dockyard.image.snapshots import Snapshotter, new
from dockyard.image.unpack import chain_ids, unpack, unpack_to_dir
from dockyard.spec.image import MediaType, parse_manifest
from dockyard.spec.mount import mount_all, unmount_all


def _tar(entries: list[tuple[str, bytes | None]]) -> bytes:
    """A layer tar: (name, content) files, (name/, None) directories."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in entries:
            ti = tarfile.TarInfo(name.rstrip("/"))
            ti.mtime = 1_700_000_000
            if data is None:
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                t.addfile(ti)
            else:
                ti.size = len(data)
                ti.mode = 0o644
                t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _put(store: ContentStore, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with store.writer(f"test-{digest}", expected=digest, total=len(data)) as w:
        w.write(data)
        w.commit(len(data), digest)
    return digest


def build_image(store: ContentStore, *, bad_diff_id: bool = False) -> bytes:
    """Two layers: the second deletes a file and makes a directory opaque."""
    l1 = _tar(
        [
            ("etc/", None),
            ("etc/hostname", b"base\n"),
            ("etc/gone", b"deleted by layer 2\n"),
            ("data/", None),
            ("data/old", b"hidden by the opaque dir\n"),
        ]
    )
    l2 = _tar(
        [
            ("etc/.wh.gone", b""),
            ("data/", None),
            ("data/.wh..wh..opq", b""),
            ("data/new", b"layer 2\n"),
            ("etc/hostname", b"top\n"),
        ]
    )
    layers = []
    diff_ids = []
    for raw in (l1, l2):
        gz = gzip.compress(raw, mtime=0)
        layers.append(
            {"mediaType": MediaType.OCI_LAYER_GZIP, "digest": _put(store, gz), "size": len(gz)}
        )
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
    if bad_diff_id:
        diff_ids[1] = "sha256:" + "0" * 64
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MediaType.OCI_MANIFEST,
            "config": {
                "mediaType": MediaType.OCI_CONFIG,
                "digest": _put(store, config),
                "size": len(config),
            },
            "layers": layers,
        }
    ).encode()
    _put(store, manifest)
    return manifest


def check_rootfs(root: Path) -> None:
    assert (root / "etc" / "hostname").read_text() == "top\n"
    assert not (root / "etc" / "gone").exists()
    assert sorted(os.listdir(root / "data")) == ["new"]


@pytest.fixture(params=["overlayfs", "native"])
def snapshotter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Snapshotter]:
    s = new(request.param, str(tmp_path / "snapshots"))
    try:
        yield s
    finally:
        s.close()


def test_unpack_into_snapshots(tmp_path: Path, snapshotter: Snapshotter) -> None:
    store = ContentStore(str(tmp_path / "content"))
    manifest = parse_manifest(build_image(store))
    top = unpack(store, snapshotter, manifest)
    config = json.loads(store.read_bytes(manifest.config.digest))
    assert top == chain_ids(config["rootfs"]["diff_ids"])[-1]
    assert [i.name for i in snapshotter.walk() if i.kind == "committed"].count(top) == 1
    # a second unpack finds both layers there
    assert unpack(store, snapshotter, manifest) == top
    target = tmp_path / "mnt"
    target.mkdir()
    mounts = snapshotter.view("view", top)
    mount_all(mounts, str(target))
    try:
        check_rootfs(target)
    finally:
        unmount_all(str(target))
        snapshotter.remove("view")


def test_unpack_refuses_a_wrong_diff_id(tmp_path: Path, snapshotter: Snapshotter) -> None:
    store = ContentStore(str(tmp_path / "content"))
    manifest = parse_manifest(build_image(store, bad_diff_id=True))
    with pytest.raises(InvalidArgument, match="diff_id"):
        unpack(store, snapshotter, manifest)
    # the first layer stays committed; the bad one left no snapshot behind
    names = [i.name for i in snapshotter.walk()]
    assert len(names) == 1 and not any("extract" in n for n in names)


def test_unpack_to_dir(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path / "content"))
    manifest = parse_manifest(build_image(store))
    root = tmp_path / "rootfs"
    root.mkdir()
    unpack_to_dir(store, manifest, str(root))
    check_rootfs(root)


def test_chain_ids() -> None:
    a, b, c = ("sha256:" + x * 64 for x in "abc")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()  # the chain, not b
    assert chain_ids([a, b, c]) == [a, ab, abc]
