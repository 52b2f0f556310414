"""Pull from a real registry (Debian's docker-registry on 127.0.0.1) and unpack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dockyard.errors import InvalidArgument, NotFound
from dockyard.image.content import ContentStore
from dockyard.image.images import ImageStore
from dockyard.image.pull import pull
from dockyard.image.registry import Registry
from dockyard.image.snapshots import new
from dockyard.image.unpack import unpack_to_dir
from dockyard.spec.image import MediaType, parse_manifest
from dockyard.spec.mount import mount_all, unmount_all
from tests.image.registry_fixture import (  # noqa: F401 -- fixtures
    FaultProxy,
    RegistryServer,
    fault_proxy,
    plain_registry,
)
from tests.image.test_unpack import build_image, check_rootfs


def push_image(server: RegistryServer, tmp_path: Path, repo: str, tag: str) -> str:
    """Build the two-layer test image locally and push it; return the manifest digest."""
    src = ContentStore(str(tmp_path / "src"))
    data = build_image(src)
    manifest = parse_manifest(data)
    reg = Registry(server.host)
    try:
        for d in [manifest.config, *manifest.layers]:
            reg.push_blob(repo, d.digest, d.size, src.read_bytes(d.digest))
        return reg.push_manifest(repo, tag, data, MediaType.OCI_MANIFEST)
    finally:
        reg.close()


def test_pull_and_unpack(plain_registry: RegistryServer, tmp_path: Path) -> None:  # noqa: F811
    digest = push_image(plain_registry, tmp_path, "test/two-layers", "v1")
    content = ContentStore(str(tmp_path / "content"))
    images = ImageStore(str(tmp_path / "metadata.db"))
    snaps = new("overlayfs", str(tmp_path / "snapshots"))
    try:
        name = f"{plain_registry.host}/test/two-layers:v1"
        result = pull(name, content=content, images=images, snapshotter=snaps)
        assert result.image.name == name
        assert result.image.target.digest == digest
        assert images.get("default", name).target.digest == digest
        for d in [result.manifest.config, *result.manifest.layers]:
            assert content.exists(d.digest)
        target = tmp_path / "mnt"
        target.mkdir()
        mount_all(snaps.view("v", result.chain_id), str(target))
        try:
            check_rootfs(target)
        finally:
            unmount_all(str(target))
            snaps.remove("v")
        # a second pull has nothing to fetch and finds the snapshots
        again = pull(name, content=content, images=images, snapshotter=snaps)
        assert again.chain_id == result.chain_id
        # by digest, and into a plain directory
        pinned = f"{plain_registry.host}/test/two-layers@{digest}"
        res = pull(pinned, content=content, images=images)
        root = tmp_path / "rootfs"
        root.mkdir()
        unpack_to_dir(content, res.manifest, str(root))
        check_rootfs(root)
    finally:
        snaps.close()
        images.close()


def test_pull_resumes_an_interrupted_ingest(
    plain_registry: RegistryServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Half a layer already in the ingest (a pull killed earlier): the next pull completes."""
    push_image(plain_registry, tmp_path, "test/resume", "v1")
    content = ContentStore(str(tmp_path / "content"))
    images = ImageStore(str(tmp_path / "metadata.db"))
    src = ContentStore(str(tmp_path / "src2"))
    manifest = parse_manifest(build_image(src))
    layer = manifest.layers[0]
    blob = src.read_bytes(layer.digest)
    w = content.writer(f"blob-{layer.digest}", expected=layer.digest, total=layer.size)
    w.write(blob[: len(blob) // 2])
    w.close()
    try:
        res = pull(f"{plain_registry.host}/test/resume:v1", content=content, images=images)
        assert content.exists(layer.digest)
        assert content.read_bytes(layer.digest) == blob
        assert not content.statuses()
        assert json.loads(content.read_bytes(res.manifest.config.digest))["os"] == "linux"
    finally:
        images.close()


def test_pull_of_a_missing_tag_is_a_clear_error(
    plain_registry: RegistryServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    content = ContentStore(str(tmp_path / "content"))
    images = ImageStore(str(tmp_path / "metadata.db"))
    try:
        with pytest.raises(NotFound, match="nope"):
            pull(f"{plain_registry.host}/test/nope:v9", content=content, images=images)
        assert images.list("default") == []
        assert list(content.walk()) == []
        assert content.statuses() == []
    finally:
        images.close()


def test_a_corrupt_layer_fails_the_pull_and_leaves_no_snapshot(
    plain_registry: RegistryServer,  # noqa: F811
    fault_proxy: FaultProxy,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Layers unpack while later ones download: a corrupt one stops it all cleanly."""
    push_image(plain_registry, tmp_path, "test/corrupt", "v1")
    src = ContentStore(str(tmp_path / "src3"))
    manifest = parse_manifest(build_image(src))
    fault_proxy.corrupt.add(manifest.layers[1].digest)
    content = ContentStore(str(tmp_path / "content"))
    images = ImageStore(str(tmp_path / "metadata.db"))
    snaps = new("overlayfs", str(tmp_path / "snapshots"))
    try:
        with pytest.raises(InvalidArgument):
            pull(
                f"127.0.0.1:{fault_proxy.port}/test/corrupt:v1",
                content=content,
                images=images,
                snapshotter=snaps,
            )
        assert not content.exists(manifest.layers[1].digest)
        assert images.list("default") == []
        kinds = [i.kind for i in snaps.walk()]
        assert "active" not in kinds, kinds  # no half-made extract snapshot
    finally:
        snaps.close()
        images.close()
