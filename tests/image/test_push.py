"""Push against Debian's docker-registry: blobs, then manifests, then the tag.

The pushed image is pulled back by digest with our client and inspected by
skopeo; a push to a second repository mounts the blobs it knows are there
(the distribution-source labels); a second push finds everything present.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.errors import NotFound
from dockyard.image.content import ContentStore
from dockyard.image.images import Image, ImageStore
from dockyard.image.pull import pull
from dockyard.image.push import push, source_label, sources
from dockyard.image.registry import Registry
from dockyard.image.transfer import import_archive
from tests.image.registry_fixture import RegistryServer, plain_registry  # noqa: F401
from tests.images import ImageArchive, build_image_archive

NS = "default"


class Store:
    def __init__(self, root: Path) -> None:
        self.content = ContentStore(root / "content")
        self.images = ImageStore(str(root / "metadata.db"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store")
    yield s
    s.images.close()


@pytest.fixture
def busybox(tmp_path: Path, store: Store) -> ImageArchive:
    archive = build_image_archive(tmp_path / "busybox.tar")
    import_archive(store.content, store.images, NS, str(archive.path))
    return archive


def tag(store: Store, source: str, name: str) -> None:
    img = store.images.get(NS, source)
    store.images.put(NS, Image(name, img.target))


def test_push_then_pull_back_by_digest(
    store: Store,
    busybox: ImageArchive,
    plain_registry: RegistryServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    name = f"{plain_registry.host}/pushed/busybox:1"
    tag(store, busybox.ref, name)
    seen: list[tuple[str, str]] = []
    result = push(name, store.content, store.images, NS, progress=lambda d, s: seen.append((d, s)))
    assert result.digest == busybox.manifest_digest
    assert result.blobs == {busybox.config_digest: "uploaded", busybox.layer_digest: "uploaded"}
    # blobs first, the tagged manifest last
    assert seen[-1] == (busybox.manifest_digest, "pushed")
    for d in (busybox.config_digest, busybox.layer_digest, busybox.manifest_digest):
        assert sources(store.content, d, plain_registry.host) == ["pushed/busybox"]

    other = Store(tmp_path / "other")
    try:
        by_digest = f"{plain_registry.host}/pushed/busybox@{busybox.manifest_digest}"
        res = pull(by_digest, content=other.content, images=other.images, namespace=NS)
        assert res.manifest_digest == busybox.manifest_digest
        assert other.content.read_bytes(busybox.layer_digest) == store.content.read_bytes(
            busybox.layer_digest
        )
        # pull records where the blobs came from, too
        info = other.content.info(busybox.layer_digest)
        assert info.labels[source_label(plain_registry.host)] == "pushed/busybox"
    finally:
        other.images.close()

    with Registry(plain_registry.host) as reg:
        assert reg.resolve("pushed/busybox", "1").digest == busybox.manifest_digest
    if shutil.which("skopeo"):
        out = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{name}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert json.loads(out)["Digest"] == busybox.manifest_digest

    # the same image to another repository: mounted, not uploaded
    second = f"{plain_registry.host}/mounted/busybox:2"
    tag(store, busybox.ref, second)
    result = push(second, store.content, store.images, NS)
    assert set(result.blobs.values()) == {"mounted"}
    assert sources(store.content, busybox.layer_digest, plain_registry.host) == [
        "pushed/busybox",
        "mounted/busybox",
    ]
    # again: everything is there
    result = push(second, store.content, store.images, NS)
    assert set(result.blobs.values()) == {"exists"}


def test_push_an_index_pushes_children_first(
    store: Store,
    busybox: ImageArchive,
    plain_registry: RegistryServer,  # noqa: F811
) -> None:
    from dockyard.spec.image import Descriptor, MediaType, digest_of

    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MediaType.OCI_INDEX,
            "manifests": [
                store.images.get(NS, busybox.ref).target.to_json(),
            ],
        }
    ).encode()
    digest = digest_of(index)
    with store.content.writer("index", expected=digest, total=len(index)) as w:
        w.write(index)
        w.commit()
    name = f"{plain_registry.host}/indexed/busybox:multi"
    store.images.put(NS, Image(name, Descriptor(MediaType.OCI_INDEX, digest, len(index))))
    result = push(name, store.content, store.images, NS)
    assert result.blobs[busybox.manifest_digest] == "pushed"
    with Registry(plain_registry.host) as reg:
        assert reg.resolve("indexed/busybox", "multi").digest == digest
        assert reg.resolve("indexed/busybox", busybox.manifest_digest).size > 0


def test_push_of_an_unknown_image_is_a_clear_error(
    store: Store,
    plain_registry: RegistryServer,  # noqa: F811
) -> None:
    with pytest.raises(NotFound, match="not found"):
        push(f"{plain_registry.host}/nothing/here:1", store.content, store.images, NS)


def test_cli_import_push_export(
    busybox: ImageArchive,
    plain_registry: RegistryServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    root = tmp_path / "cli-store"

    def tool(*args: str) -> str:
        p = subprocess.run(
            [sys.executable, "-m", "dockyard.image.cli", "--root", str(root), *args],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert p.returncode == 0, f"dockyard-image {' '.join(args)}: {p.stderr}"
        return p.stdout

    assert tool("import", str(busybox.path)).split() == [busybox.ref, busybox.manifest_digest]
    name = f"{plain_registry.host}/cli/busybox:1"
    tool("tag", busybox.ref, name)
    assert tool("push", name).split() == [name, busybox.manifest_digest]
    tool("export", str(tmp_path / "out.tar"), name)
    tool("export", "--format", "docker-archive", str(tmp_path / "saved.tar"), name)
    fresh = tmp_path / "fresh"
    root = fresh
    assert tool("import", str(tmp_path / "out.tar")).split() == [name, busybox.manifest_digest]
    assert tool("import", str(tmp_path / "saved.tar")).split()[0] == name
