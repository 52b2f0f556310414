"""Pushing an image: blobs the registry lacks, then manifests (children first), then the tag.

The order of distribution-spec "Pushing": a manifest may only be put once
everything it names is in the repository, so configs and layers go first,
then each manifest by digest, and the image's target last under the tag.
A blob the registry already has (HEAD) is skipped; a blob known to be in
another repository of the same registry is mounted from there instead of
uploaded. Which repositories hold a blob is recorded on the blob as a
``dockyard.io/distribution.source.<host>`` label (a comma-separated list of
repositories), as containerd records ``containerd.io/distribution.source.<host>``;
pull and push both set it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dockyard.errors import InvalidArgument, NotFound
from dockyard.image import reference
from dockyard.image.content import ContentStore
from dockyard.image.images import ImageStore
from dockyard.image.registry import Registry
from dockyard.image.transfer import walk_image
from dockyard.spec.image import INDEX_TYPES, MAX_MANIFEST_SIZE, Descriptor, parse_index

SOURCE_LABEL_PREFIX = "dockyard.io/distribution.source."

PushProgress = Callable[[str, str], None]
"""Called with a digest and what happened to it: exists, mounted, uploaded, pushed."""


def source_label(host: str) -> str:
    return SOURCE_LABEL_PREFIX + host


def sources(content: ContentStore, digest: str, host: str) -> list[str]:
    """Repositories of ``host`` known to hold blob ``digest``."""
    try:
        value = content.info(digest).labels.get(source_label(host), "")
    except NotFound:
        return []
    return [r for r in value.split(",") if r]


def add_source(content: ContentStore, digest: str, host: str, repo: str) -> None:
    """Record that repository ``repo`` of ``host`` holds blob ``digest``."""
    known = sources(content, digest, host)
    if repo in known or not content.exists(digest):
        return
    content.update_labels(digest, {source_label(host): ",".join([*known, repo])})


@dataclass
class PushResult:
    name: str
    digest: str
    blobs: dict[str, str] = field(default_factory=dict)  # digest -> exists/mounted/uploaded


def push(
    name: str,
    content: ContentStore,
    images: ImageStore,
    namespace: str = "default",
    registry: Registry | None = None,
    insecure: bool = False,
    ca_file: str | None = None,
    progress: PushProgress | None = None,
) -> PushResult:
    """Push image ``name`` (a record in ``namespace``) to the registry its name says."""
    ref = reference.parse(name)
    image = images.get(namespace, str(ref))
    what = f"push {ref}"
    if ref.digest and ref.digest != image.target.digest:
        raise InvalidArgument(f"{what}: the image's target is {image.target.digest}")
    reg = registry or Registry(ref.domain, insecure=insecure, ca_file=ca_file)
    host, repo = ref.domain, ref.path
    result = PushResult(str(ref), image.target.digest)
    try:
        target_data = None
        for desc, data in walk_image(content, image.target):
            if data is not None and desc.digest == image.target.digest:
                target_data = data  # last, under the tag
                continue
            if data is not None:
                reg.push_manifest(repo, desc.digest, data, desc.media_type)
                state = "pushed"
            else:
                mount_from = [r for r in sources(content, desc.digest, host) if r != repo]
                with content.open(desc.digest) as blob:
                    state = reg.push_blob(repo, desc.digest, desc.size, blob, mount_from=mount_from)
            result.blobs[desc.digest] = state
            add_source(content, desc.digest, host, repo)
            if progress:
                progress(desc.digest, state)
        if target_data is None:  # a target that is neither a manifest nor an index
            target_data = content.read_bytes(image.target.digest, max_size=MAX_MANIFEST_SIZE)
        _check_index_children(reg, content, repo, image.target, target_data)
        reg.push_manifest(
            repo, ref.tag or image.target.digest, target_data, image.target.media_type
        )
        add_source(content, image.target.digest, host, repo)
        if progress:
            progress(image.target.digest, "pushed")
    finally:
        if registry is None:
            reg.close()
    return result


def _check_index_children(
    reg: Registry, content: ContentStore, repo: str, target: Descriptor, data: bytes
) -> None:
    """An index whose manifests are neither local nor in the repository cannot be pushed."""
    if target.media_type not in INDEX_TYPES:
        return
    for child in parse_index(data, target.media_type).manifests:
        if content.exists(child.digest):
            continue
        try:
            reg.resolve(repo, child.digest)
        except NotFound:
            raise NotFound(
                f"push index {target.digest}: manifest {child.digest} ({child.platform}) is"
                f" neither in the content store nor in {reg.host}/{repo}"
            ) from None
