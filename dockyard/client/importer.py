"""Importing an image archive (OCI layout or docker-archive) through the daemon.

The archive is read here, by the image library's importer
(``dockyard.image.transfer``), whose every blob write goes to the daemon's
content service instead of a local store: each blob is checked against its
digest and size before any is committed, and a refused archive leaves
nothing. Then, as containerd's ``Client.Import``, the blobs are labelled so
that each image record keeps its whole tree from garbage collection, and the
records are created (or their targets updated). All of it runs under a
lease, so nothing is collected half-way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

from dockyard.client.content import Writer
from dockyard.client.image import label_children
from dockyard.errors import NotFound
from dockyard.image import transfer
from dockyard.image.content import ContentStore
from dockyard.image.images import Image, ImageStore
from dockyard.spec.image import Digester

if TYPE_CHECKING:
    from dockyard.client.client import Client


class _RemoteWriter:
    """The image library's ``Writer`` interface over a content ``Write`` stream.

    Like the local writer it hashes what it writes (in sha256): the importer
    takes a blob's digest from its writer. Each import ingest is new (a ref
    of its own), so what is written here is all the ingest holds.
    """

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._digester = Digester("sha256")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._digester.update(data)
        return self._writer.write(data)

    def digest(self) -> str:
        """The digest of what was written so far."""
        return self._digester.digest()

    def commit(
        self,
        size: int | None = None,
        expected: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        return self._writer.commit(size or 0, expected or "", labels)

    def close(self) -> None:
        self._writer.close()


class _RemoteContent:
    """What the importer uses of a ``ContentStore``: ingests, on the daemon."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def writer(
        self, ref: str, *, expected: str | None = None, total: int | None = None
    ) -> _RemoteWriter:
        return _RemoteWriter(
            self._client.content.writer(ref, total=total or 0, expected=expected or "")
        )

    def abort(self, ref: str) -> None:
        self._client.content.abort(ref)


class _Records:
    """What the importer uses of an ``ImageStore``: records are kept to be
    created once their blobs are labelled."""

    def __init__(self) -> None:
        self.images: list[Image] = []

    def put(self, namespace: str, image: Image) -> Image:
        self.images.append(image)
        return image


def import_image(client: Client, path: str, *, name: str | None = None) -> list[Image]:
    """Import the archive (a tar or a directory) at ``path``; the image records made.

    Names come from the archive (OCI ``io.containerd.image.name`` or
    ``org.opencontainers.image.ref.name`` annotations, docker RepoTags), or
    ``name``. A record of the same name is pointed at the new target.
    """
    records = _Records()
    with client.lease():
        transfer.import_archive(
            cast(ContentStore, _RemoteContent(client)),
            cast(ImageStore, records),
            client.namespace,
            path,
            name,
        )
        labelled: set[str] = set()
        for image in records.images:
            if image.target.digest not in labelled:
                label_children(client, image.target)
                labelled.add(image.target.digest)
        made = []
        for image in records.images:
            try:
                made.append(client.images.update(image, ["target"]))
            except NotFound:
                made.append(client.images.create(image))
    return made
