"""Working with an image through the daemon: its manifest and config, its
unpacking into snapshots, and a look at its root filesystem.

``unpack`` is the Go client's ``image.Unpack``: each layer is applied by the
diff service onto an active snapshot prepared on top of the previous
layer's, and committed under its *chain ID* (image-spec config.md), so
images sharing a base share its snapshots; a layer already unpacked is not
applied again. The applied layer's digest must be the config's diff ID.
Then, as containerd does, the layer blob is labelled
``containerd.io/uncompressed`` (its diff ID), and the config blob
``containerd.io/gc.ref.snapshot.<snapshotter>`` (the top chain ID), which is
what keeps the snapshots from garbage collection while the image exists.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dockyard.errors import AlreadyExists, InvalidArgument, NotFound, SystemFailure
from dockyard.image.images import Image
from dockyard.image.unpack import UNCOMPRESSED_LABEL, chain_ids
from dockyard.spec.image import (
    CONFIG_TYPES,
    INDEX_TYPES,
    LAYER_TYPES,
    MANIFEST_TYPES,
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageConfig,
    Manifest,
    Platform,
    parse_image_config,
    parse_index,
    parse_manifest,
    select_manifest,
)
from dockyard.spec.mount import mount_all, unmount_all

if TYPE_CHECKING:
    from dockyard.client.client import Client
    from dockyard.client.snapshots import SnapshotsService

SNAPSHOT_GC_LABEL = "containerd.io/gc.ref.snapshot."
CONTENT_GC_PREFIX = "containerd.io/gc.ref.content."
# Nested indexes deeper than this are refused (a loop of indexes, say).
MAX_INDEX_DEPTH = 8


@dataclass(frozen=True)
class Resolved:
    """An image resolved for one platform: its manifest and config."""

    manifest_descriptor: Descriptor
    manifest: Manifest
    config: ImageConfig

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.rootfs.diff_ids)

    @property
    def chain_id(self) -> str:
        """The chain ID of the top layer: the name of the committed rootfs snapshot."""
        ids = chain_ids(self.diff_ids)
        if not ids:
            raise InvalidArgument(f"image config {self.manifest.config.digest}: no layers")
        return ids[-1]


def _read_doc(client: Client, desc: Descriptor, limit: int) -> bytes:
    if desc.size > limit:
        raise InvalidArgument(f"{desc.digest}: {desc.size} bytes is larger than {limit}")
    return client.content.read_bytes(desc.digest, max_size=limit)


def resolve(client: Client, image: Image, platform: Platform | None = None) -> Resolved:
    """The manifest and config of ``image`` for ``platform`` (this host's if None)."""
    desc = image.target
    for _ in range(MAX_INDEX_DEPTH):
        if desc.media_type in INDEX_TYPES:
            index = parse_index(_read_doc(client, desc, MAX_MANIFEST_SIZE), desc.media_type)
            desc = select_manifest(index, platform)
            continue
        if desc.media_type not in MANIFEST_TYPES:
            raise InvalidArgument(
                f"image {image.name}: {desc.digest} is a {desc.media_type!r}, not a manifest"
            )
        manifest = parse_manifest(_read_doc(client, desc, MAX_MANIFEST_SIZE), desc.media_type)
        config = parse_image_config(_read_doc(client, manifest.config, MAX_CONFIG_SIZE))
        if len(config.rootfs.diff_ids) != len(manifest.layers):
            raise InvalidArgument(
                f"image {image.name}: {len(manifest.layers)} layers but"
                f" {len(config.rootfs.diff_ids)} diff IDs in its config"
            )
        return Resolved(desc, manifest, config)
    raise InvalidArgument(f"image {image.name}: indexes nested too deep")


def is_unpacked(client: Client, image: Image, snapshotter: str) -> bool:
    try:
        client.snapshots(snapshotter).stat(resolve(client, image).chain_id)
    except NotFound:
        return False
    return True


def _unique() -> str:
    return f"{time.time_ns() % 10**9}-{uuid.uuid4().hex[:6]}"


def unpack(
    client: Client,
    image: Image,
    snapshotter: str,
    platform: Platform | None = None,
    *,
    resolved: Resolved | None = None,
) -> str:
    """Unpack ``image`` into ``snapshotter``; the chain ID of its top layer.

    ``resolved``, the image already resolved for the platform, saves reading
    its manifest and config again.
    """
    with client.lease():
        if resolved is None:
            resolved = resolve(client, image, platform)
        diff_ids = resolved.diff_ids
        ids = chain_ids(diff_ids)
        if not ids:
            raise InvalidArgument(f"image {image.name}: no layers to unpack")
        sn = client.snapshots(snapshotter)
        parent = ""
        for layer, diff_id, chain_id in zip(resolved.manifest.layers, diff_ids, ids, strict=True):
            try:
                sn.stat(chain_id)
            except NotFound:
                if _apply_layer(client, sn, layer, diff_id, parent, chain_id):
                    # said once the diff ID is verified by the apply, as containerd does
                    client.content.set_labels(layer.digest, {UNCOMPRESSED_LABEL: diff_id})
            parent = chain_id
        client.content.set_labels(
            resolved.manifest.config.digest, {SNAPSHOT_GC_LABEL + snapshotter: ids[-1]}
        )
        return ids[-1]


def _apply_layer(
    client: Client,
    sn: SnapshotsService,
    layer: Descriptor,
    diff_id: str,
    parent: str,
    chain_id: str,
) -> bool:
    """Apply one layer as snapshot ``chain_id``; False if another got there first."""
    while True:
        key = f"extract-{_unique()} {chain_id}"  # containerd's UnpackKeyFormat
        try:
            mounts = sn.prepare(key, parent)
            break
        except AlreadyExists:
            continue  # that key is taken: another one
    try:
        applied = client.diff.apply(layer, mounts)
        if applied.digest != diff_id:
            raise InvalidArgument(
                f"layer {layer.digest}: applied content has diff ID {applied.digest},"
                f" the image config says {diff_id}"
            )
        sn.commit(chain_id, key)
    except AlreadyExists:
        _remove_quietly(sn, key)
        return False
    except BaseException:
        _remove_quietly(sn, key)
        raise
    return True


def _remove_quietly(sn: SnapshotsService, key: str) -> None:
    try:
        sn.remove(key)
    except NotFound:
        pass


@contextlib.contextmanager
def mounted_view(
    client: Client,
    image: Image,
    snapshotter: str,
    platform: Platform | None = None,
    *,
    resolved: Resolved | None = None,
) -> Iterator[str]:
    """The image's root filesystem, mounted read-only in a temporary directory.

    For reading the image's files (its /etc/passwd, to resolve a user), as
    the Go client's ``oci.WithUser`` mounts a view. The view snapshot, the
    mount and the directory are gone after the block. Needs root. ``resolved``
    as for ``unpack``.
    """
    if resolved is None:
        resolved = resolve(client, image, platform)
    chain_id = resolved.chain_id
    sn = client.snapshots(snapshotter)
    key = f"dockyard-client-view-{_unique()}"
    with client.lease():
        mounts = sn.view(key, chain_id)
        try:
            target = tempfile.mkdtemp(prefix="dockyard-view-")
            try:
                try:
                    mount_all(mounts, target)
                except OSError as e:
                    raise SystemFailure(
                        f"mount a view of {image.name} on {target}: {e.strerror or e}"
                    ) from None
                try:
                    yield target
                finally:
                    unmount_all(target)
            finally:
                os.rmdir(target)
        finally:
            _remove_quietly(sn, key)


def gc_label_key(media_type: str) -> str:
    """The label a parent blob refers to a child of this type with (containerd's
    ``images.ChildGCLabels``); a key ending in ``.`` is numbered."""
    if media_type in CONFIG_TYPES:
        return CONTENT_GC_PREFIX + "config"
    if media_type in MANIFEST_TYPES:
        return CONTENT_GC_PREFIX + "m."
    if media_type in LAYER_TYPES:
        return CONTENT_GC_PREFIX + "l."
    return CONTENT_GC_PREFIX


def children(client: Client, desc: Descriptor) -> list[Descriptor]:
    """What an index or manifest refers to (an index's entries that are present only)."""
    if desc.media_type in INDEX_TYPES:
        index = parse_index(_read_doc(client, desc, MAX_MANIFEST_SIZE), desc.media_type)
        present = []
        for child in index.manifests:
            try:
                client.content.info(child.digest)
            except NotFound:
                continue  # a platform that was not copied
            present.append(child)
        return present
    if desc.media_type in MANIFEST_TYPES:
        manifest = parse_manifest(_read_doc(client, desc, MAX_MANIFEST_SIZE), desc.media_type)
        return [manifest.config, *manifest.layers]
    return []


def label_children(client: Client, desc: Descriptor, depth: int = 0) -> None:
    """Label ``desc`` and everything below it with garbage-collection references
    to their children, as containerd's ``images.SetChildrenLabels`` does on import:
    then the image record alone keeps all of it."""
    if depth > MAX_INDEX_DEPTH:
        raise InvalidArgument(f"{desc.digest}: indexes nested too deep")
    found = children(client, desc)
    if not found:
        return
    labels: dict[str, str] = {}
    counts: dict[str, int] = {}
    for child in found:
        key = gc_label_key(child.media_type)
        n = counts.get(key, 0)
        counts[key] = n + 1
        if n > 0 or key.endswith("."):
            key = f"{key}{n}"
        labels[key] = child.digest
    client.content.set_labels(desc.digest, labels)
    for child in found:
        if child.media_type in INDEX_TYPES | MANIFEST_TYPES:
            label_children(client, child, depth + 1)
