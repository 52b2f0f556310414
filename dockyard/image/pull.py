"""Pulling an image: resolve the name, fetch what is missing, record it, unpack.

The flow containerd's client uses (docs/content-flow.md): the target (index
or manifest) is resolved by name; the index is narrowed to this platform's
manifest; the manifest, config and layers go into the content store through
ingests named after their digests (so an interrupted pull resumes where it
stopped, and the next pull completes); the image record points the name at
the target; the layers are unpacked into snapshots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dockyard.errors import AlreadyExists, InvalidArgument
from dockyard.image import reference
from dockyard.image.content import ContentStore, Writer
from dockyard.image.images import Image, ImageStore
from dockyard.image.push import add_source
from dockyard.image.registry import BlobFetch, Registry
from dockyard.image.snapshots import Snapshotter
from dockyard.image.unpack import unpack
from dockyard.spec.image import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    Descriptor,
    Manifest,
    Platform,
    parse_index,
    parse_manifest,
    select_manifest,
)

BlobProgress = Callable[[str, int, int], None]


@dataclass
class PullResult:
    image: Image
    manifest: Manifest
    manifest_digest: str
    chain_id: str  # "" when not unpacked


def _store_bytes(content: ContentStore, digest: str, data: bytes) -> None:
    if content.exists(digest):
        return
    try:
        with content.writer(f"manifest-{digest}", expected=digest, total=len(data)) as w:
            w.truncate(0)
            w.write(data)
            w.commit(len(data), digest)
    except AlreadyExists:
        pass


def _fetch_manifest(
    reg: Registry, content: ContentStore, repo: str, desc: Descriptor
) -> tuple[bytes, str]:
    if content.exists(desc.digest):
        return content.read_bytes(desc.digest, max_size=MAX_MANIFEST_SIZE), desc.media_type
    data, media_type = reg.fetch_manifest(repo, desc.digest)
    _store_bytes(content, desc.digest, data)
    return data, media_type or desc.media_type


def fetch_blobs(
    reg: Registry,
    content: ContentStore,
    repo: str,
    blobs: list[Descriptor],
    progress: BlobProgress | None = None,
) -> None:
    """Fetch the blobs not yet in the store, resuming ingests, verifying each digest."""
    writers: list[tuple[Descriptor, Writer]] = []
    try:
        for d in blobs:
            if content.exists(d.digest):
                continue
            try:
                w = content.writer(f"blob-{d.digest}", expected=d.digest, total=d.size)
            except AlreadyExists:
                continue
            writers.append((d, w))
        fetches = [BlobFetch(d.digest, d.size, w, w.offset) for d, w in writers]
        reg.fetch_blobs(repo, fetches, progress=progress)
        for d, w in writers:
            try:
                w.commit(d.size, d.digest)
            except AlreadyExists:
                pass
    finally:
        for _, w in writers:
            w.close()


def pull(
    name: str,
    *,
    content: ContentStore,
    images: ImageStore,
    namespace: str = "default",
    snapshotter: Snapshotter | None = None,
    platform: Platform | None = None,
    registry: Registry | None = None,
    insecure: bool = False,
    ca_file: str | None = None,
    progress: BlobProgress | None = None,
    parallel: int = 3,
) -> PullResult:
    ref = reference.parse(name)
    reg = registry or Registry(ref.domain, insecure=insecure, ca_file=ca_file, parallel=parallel)
    try:
        resolved = reg.resolve(ref.path, ref.digest or ref.tag or "latest")
        target = Descriptor(
            media_type=resolved.media_type, digest=resolved.digest, size=resolved.size
        )
        data, media_type = _fetch_manifest(reg, content, ref.path, target)
        manifest_desc = target
        if media_type in INDEX_TYPES:
            index = parse_index(data, media_type)
            manifest_desc = select_manifest(index, platform)
            data, media_type = _fetch_manifest(reg, content, ref.path, manifest_desc)
            if media_type in INDEX_TYPES:
                raise InvalidArgument(f"pull {name}: nested indexes are not supported yet")
        if media_type not in MANIFEST_TYPES:
            raise InvalidArgument(f"pull {name}: unsupported manifest media type {media_type!r}")
        manifest = parse_manifest(data, media_type)
        chain = ""
        if snapshotter is None:
            fetch_blobs(reg, content, ref.path, [manifest.config, *manifest.layers], progress)
        else:
            fetch_blobs(reg, content, ref.path, [manifest.config], progress)
            chain = _fetch_and_unpack(
                reg, content, snapshotter, ref.path, manifest, namespace, progress
            )
    finally:
        if registry is None:
            reg.close()
    # where each blob came from, so that a push to this registry can mount it
    for d in {target.digest, manifest_desc.digest, manifest.config.digest}.union(
        layer.digest for layer in manifest.layers
    ):
        add_source(content, d, ref.domain, ref.path)
    image = images.put(namespace, Image(str(ref), target))
    return PullResult(image, manifest, manifest_desc.digest, chain)


def _fetch_and_unpack(
    reg: Registry,
    content: ContentStore,
    snapshotter: Snapshotter,
    repo: str,
    manifest: Manifest,
    namespace: str,
    progress: BlobProgress | None,
) -> str:
    """Fetch the layers ``reg.parallel`` at a time while unpacking them in order.

    Layer n is applied as soon as its blob is committed, while later layers
    are still downloading: the pull takes about max(fetch, unpack), not the sum.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    def fetch(d: Descriptor) -> None:
        fetch_blobs(reg, content, repo, [d], progress)

    with ThreadPoolExecutor(max_workers=reg.parallel, thread_name_prefix="layer") as pool:
        futures: dict[str, Future[None]] = {}
        for d in manifest.layers:
            if d.digest not in futures and not content.exists(d.digest):
                futures[d.digest] = pool.submit(fetch, d)

        def wait(layer: Descriptor) -> None:
            f = futures.get(layer.digest)
            if f is not None:
                f.result()

        try:
            chain = unpack(content, snapshotter, manifest, key_prefix=f"{namespace}/", wait=wait)
            for f in futures.values():  # layers whose snapshots already existed
                f.result()
        except BaseException:
            for f in futures.values():
                f.cancel()
            raise
    return chain
