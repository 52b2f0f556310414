"""Image records: a name pointing at a target descriptor, per namespace.

containerd's images service model (api/services/images/v1/images.proto) as a
plain class over one SQLite database. Every record belongs to a namespace;
no call sees another namespace's images. The name is the full reference
(``docker.io/library/busybox:latest``); the target is the index or manifest.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from dockyard.errors import AlreadyExists, InvalidArgument, NotFound
from dockyard.fieldpaths import update_map
from dockyard.image.content import validate_labels
from dockyard.image.sqlite import Store
from dockyard.spec.image import Descriptor
from dockyard.unixtime import from_unix_nanos

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
)
"""


@dataclass
class Image:
    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ImageStore(Store):
    """Image records in ``<root>/metadata.db`` (WAL; safe across processes)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, SCHEMA)

    @staticmethod
    def _check(namespace: str, name: str) -> None:
        if not namespace:
            raise InvalidArgument("namespace is required")
        if not name:
            raise InvalidArgument("image name is required")

    def _row(self, row: tuple[str, str, str, int, int]) -> Image:
        name, target, labels, created, updated = row
        return Image(
            name,
            Descriptor.from_json(json.loads(target)),
            json.loads(labels),
            from_unix_nanos(created),
            from_unix_nanos(updated),
        )

    def get(self, namespace: str, name: str) -> Image:
        self._check(namespace, name)
        row = self.db.execute(
            "SELECT name, target, labels, created, updated FROM images"
            " WHERE namespace = ? AND name = ?",
            (namespace, name),
        ).fetchone()
        if row is None:
            raise NotFound(f"image {name!r} not found in namespace {namespace!r}")
        return self._row(row)

    def list(self, namespace: str) -> list[Image]:
        rows = self.db.execute(
            "SELECT name, target, labels, created, updated FROM images"
            " WHERE namespace = ? ORDER BY name",
            (namespace,),
        ).fetchall()
        return [self._row(r) for r in rows]

    def walk_all(self) -> Iterator[tuple[str, Image]]:
        """Every image of every namespace (for garbage collection)."""
        rows = self.db.execute(
            "SELECT namespace, name, target, labels, created, updated FROM images"
        ).fetchall()
        for row in rows:
            yield row[0], self._row(row[1:])

    def create(self, namespace: str, image: Image) -> Image:
        self._check(namespace, image.name)
        now = time.time_ns()
        try:
            self.db.execute(
                "INSERT INTO images VALUES (?, ?, ?, ?, ?, ?)",
                (
                    namespace,
                    image.name,
                    json.dumps(image.target.to_json()),
                    json.dumps(image.labels),
                    now,
                    now,
                ),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(
                f"image {image.name!r} already exists in namespace {namespace!r}"
            ) from None
        return self.get(namespace, image.name)

    def put(self, namespace: str, image: Image) -> Image:
        """Create, or point an existing name at a new target (a pull, a tag)."""
        try:
            return self.create(namespace, image)
        except AlreadyExists:
            return self.update(namespace, image)

    def update(
        self, namespace: str, image: Image, fieldpaths: Sequence[str] | None = None
    ) -> Image:
        """containerd's image update: ``fieldpaths`` (default: target and labels)
        of ``target``, ``labels``, ``labels.<key>``, ``annotations``,
        ``annotations.<key>`` (the target's) are taken from ``image``, the rest
        kept; a label or annotation left empty is removed, as containerd
        writes them. The updated record."""
        self._check(namespace, image.name)
        db = self.db
        # one read, in the write's transaction: no other update lands in between,
        # and what is returned is what was written without reading it back
        with self._transaction():
            row = db.execute(
                "SELECT target, labels, created FROM images WHERE namespace = ? AND name = ?",
                (namespace, image.name),
            ).fetchone()
            if row is None:
                raise NotFound(f"image {image.name!r} not found in namespace {namespace!r}")
            target = Descriptor.from_json(json.loads(row[0]))
            labels: dict[str, str] = json.loads(row[1])
            annotations = dict(target.annotations)
            for p in fieldpaths or ["target", "labels"]:
                if p == "target":
                    target = image.target
                    annotations = dict(image.target.annotations)
                elif update_map(annotations, image.target.annotations, p, "annotations"):
                    pass
                elif not update_map(labels, image.labels, p, "labels"):
                    raise InvalidArgument(
                        f"image {image.name!r}: cannot update field {p!r} (labels,"
                        " labels.<key>, target, annotations, annotations.<key>)"
                    )
            labels = {k: v for k, v in labels.items() if v}
            validate_labels(labels)
            target = dataclasses.replace(
                target, annotations={k: v for k, v in annotations.items() if v}
            )
            now = time.time_ns()
            db.execute(
                "UPDATE images SET target = ?, labels = ?, updated = ?"
                " WHERE namespace = ? AND name = ?",
                (json.dumps(target.to_json()), json.dumps(labels), now, namespace, image.name),
            )
        return Image(image.name, target, labels, from_unix_nanos(row[2]), from_unix_nanos(now))

    def delete(self, namespace: str, name: str) -> None:
        self._check(namespace, name)
        cur = self.db.execute(
            "DELETE FROM images WHERE namespace = ? AND name = ?", (namespace, name)
        )
        if cur.rowcount == 0:
            raise NotFound(f"image {name!r} not found in namespace {namespace!r}")
