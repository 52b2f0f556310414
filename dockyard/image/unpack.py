"""Unpacking an image: its layers into snapshots, or into a plain directory.

Each layer becomes a committed snapshot named by its *chain ID* (image-spec
config.md "Layer ChainID"), on top of the previous layer's, so images that
share a base share its snapshots. The layer is applied straight into the
snapshot's own directory (an overlay upperdir, with overlayfs whiteouts; or
the native snapshotter's full copy, with whiteouts applied), never through
a mount. Its uncompressed digest must equal the config's ``rootfs.diff_ids``
entry, or the snapshot is discarded.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable

from dockyard.errors import InvalidArgument, NotFound
from dockyard.image.archive import apply_layer
from dockyard.image.archive.apply import Whiteouts
from dockyard.image.content import ContentStore
from dockyard.image.snapshots import Snapshotter
from dockyard.spec.image import (
    MAX_CONFIG_SIZE,
    Descriptor,
    Manifest,
    layer_compression,
    parse_image_config,
)
from dockyard.spec.mount import Mount

# containerd's label on a compressed layer blob: its diff ID (the uncompressed
# digest), set by whoever applies or writes the layer so later unpacks know it.
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"

# A layer's unpack reports (index, count, diff_id) when it starts.
Progress = Callable[[int, int, str], None]


def chain_ids(diff_ids: list[str]) -> list[str]:
    """ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def _diff_ids(store: ContentStore, manifest: Manifest) -> list[str]:
    """The config's ``rootfs.diff_ids``, one per layer of ``manifest``."""
    data = store.read_bytes(manifest.config.digest, max_size=MAX_CONFIG_SIZE)
    diff_ids = list(parse_image_config(data).rootfs.diff_ids)
    if len(diff_ids) != len(manifest.layers):
        raise InvalidArgument(
            f"image config has {len(diff_ids)} diff_ids but the manifest {len(manifest.layers)}"
            " layers"
        )
    return diff_ids


def _apply(
    store: ContentStore,
    i: int,
    layer: Descriptor,
    diff_id: str,
    target: str,
    whiteouts: Whiteouts,
    parents: list[str],
) -> None:
    """Apply layer ``i`` into ``target``; its uncompressed digest must be ``diff_id``."""
    with store.open(layer.digest) as blob:
        result = apply_layer(
            target,
            blob,
            whiteouts=whiteouts,
            compression=layer_compression(layer.media_type) or "none",
            parents=parents,
        )
    if result.diff_id != diff_id:
        raise InvalidArgument(
            f"layer {i} ({layer.digest}): uncompressed digest {result.diff_id} does not"
            f" match the config's diff_id {diff_id}"
        )


def _apply_dir(mounts: list[Mount]) -> tuple[str, Whiteouts, list[str]]:
    """Where to apply a layer for these mounts: (dir, whiteout mode, lower dirs)."""
    if len(mounts) != 1:
        raise InvalidArgument(f"cannot unpack into {len(mounts)} mounts")
    m = mounts[0]
    if m.type == "bind":
        return m.source, "direct", []
    if m.type == "overlay":
        opts = dict(o.split("=", 1) for o in m.options if "=" in o)
        upper = opts.get("upperdir")
        if not upper:
            raise InvalidArgument("cannot unpack into a read-only overlay (no upperdir)")
        lowers = [d for d in opts.get("lowerdir", "").split(":") if d]
        return upper, "overlay", lowers
    raise InvalidArgument(f"cannot unpack into a {m.type!r} mount")


def unpack(
    store: ContentStore,
    snapshotter: Snapshotter,
    manifest: Manifest,
    *,
    key_prefix: str = "",
    progress: Progress | None = None,
    wait: Callable[[Descriptor], None] | None = None,
) -> str:
    """Make sure every layer of ``manifest`` is a committed snapshot; return the top chain ID.

    ``key_prefix`` namespaces the snapshot names (the supervisor passes the
    namespace). Layers already unpacked are skipped. ``wait(layer)`` is
    called before a layer is read: a pull that is still fetching blocks there
    until that layer's blob is committed (unpacking while fetching).
    """
    diff_ids = _diff_ids(store, manifest)
    parent = ""
    chains = chain_ids(diff_ids)
    for i, (layer, diff_id, chain) in enumerate(
        zip(manifest.layers, diff_ids, chains, strict=True)
    ):
        name = key_prefix + chain
        try:
            snapshotter.stat(name)
            parent = name
            continue
        except NotFound:
            pass
        if wait is not None:
            wait(layer)
        if progress:
            progress(i, len(diff_ids), diff_id)
        key = f"{key_prefix}extract-{uuid.uuid4().hex}-{chain}"
        mounts = snapshotter.prepare(key, parent, labels={"dockyard.io/snapshot.ref": chain})
        try:
            _apply(store, i, layer, diff_id, *_apply_dir(mounts))
            snapshotter.commit(name, key)
        except BaseException:
            try:
                snapshotter.remove(key)
            except NotFound:
                pass
            raise
        parent = name
    return parent


def unpack_to_dir(store: ContentStore, manifest: Manifest, target: str) -> None:
    """Apply every layer, bottom up, straight into ``target`` (a plain rootfs)."""
    diff_ids = _diff_ids(store, manifest)
    for i, (layer, diff_id) in enumerate(zip(manifest.layers, diff_ids, strict=True)):
        _apply(store, i, layer, diff_id, target, "direct", [])
