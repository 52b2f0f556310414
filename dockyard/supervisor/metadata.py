"""Namespaces and container records, in the image library's ``metadata.db``.

One SQLite database holds every record of the supervisor: the image
library's ``images`` and ``leases`` tables, and these. Every record belongs
to one namespace; a namespace exists once it is created explicitly or once
anything is recorded in it (containerd creates its bucket on first write),
and it can be removed only when nothing is left in it.

A container record is containerd's ``containers.Container``: an id, labels,
the image name, the runtime (shim) name and its options, the OCI spec, the
snapshotter and snapshot key of its rootfs, and extensions. Typed values
(``Any``: spec, runtime options, extensions) are kept as their type URL and
bytes; this module needs no protobuf.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from dockyard import unixtime
from dockyard.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from dockyard.fieldpaths import update_labels, update_map
from dockyard.identifiers import validate_identifier
from dockyard.image.content import validate_labels
from dockyard.unixtime import from_unix_nanos, to_unix_nanos

SCHEMA = """
CREATE TABLE IF NOT EXISTS namespaces (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS containers (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    image TEXT NOT NULL DEFAULT '',
    runtime TEXT NOT NULL,
    runtime_options_type TEXT NOT NULL DEFAULT '',
    runtime_options BLOB,
    spec_type TEXT NOT NULL DEFAULT '',
    spec BLOB,
    snapshotter TEXT NOT NULL DEFAULT '',
    snapshot_key TEXT NOT NULL DEFAULT '',
    extensions TEXT NOT NULL DEFAULT '{}',
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    PRIMARY KEY (namespace, id)
);
"""


@dataclass(frozen=True)
class Typed:
    """A protobuf ``Any`` kept as it came: type URL and serialized value."""

    type_url: str = ""
    value: bytes = b""

    def __bool__(self) -> bool:
        return bool(self.type_url or self.value)


@dataclass
class Container:
    id: str
    runtime: str
    spec: Typed = field(default_factory=Typed)
    labels: dict[str, str] = field(default_factory=dict)
    image: str = ""
    runtime_options: Typed = field(default_factory=Typed)
    snapshotter: str = ""
    snapshot_key: str = ""
    extensions: dict[str, Typed] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


def _validate_container(c: Container) -> None:
    validate_identifier("container", c.id)
    validate_labels(c.labels)
    if not c.runtime:
        raise InvalidArgument(f"container {c.id!r}: must specify a runtime name")
    if not c.spec:
        raise InvalidArgument(f"container {c.id!r}: the spec must be set")
    if c.snapshot_key and not c.snapshotter:
        raise InvalidArgument(
            f"container {c.id!r}: the snapshotter must be set if the snapshot key is"
        )
    for name, ext in c.extensions.items():
        if not name or not ext.type_url:
            raise InvalidArgument(f"container {c.id!r}: extension {name!r} has no type")


# Who else keeps records in a namespace: callables (namespace -> names of
# what is still there) the daemon adds for images, leases, content, snapshots.
InUseCheck = Callable[[str], list[str]]


class Metadata:
    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # One connection, shared by the gRPC worker threads under a lock:
        # the writes are small and SQLite serialises writers anyway.
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self.lock = threading.RLock()
        self.in_use_checks: list[InUseCheck] = [self._containers_in]
        # What else goes with a namespace (its leases: containerd drops the
        # whole namespace bucket, leases included, once the data is gone).
        self.on_namespace_delete: list[Callable[[str], None]] = []

    def close(self) -> None:
        self.db.close()

    # -- namespaces ---------------------------------------------------------

    def ensure_namespace(self, name: str) -> None:
        """Record ``name`` as existing (every write into a namespace calls this)."""
        validate_identifier("namespace", name)
        with self.lock:
            self.db.execute("INSERT OR IGNORE INTO namespaces (name) VALUES (?)", (name,))

    def create_namespace(self, name: str, labels: dict[str, str]) -> None:
        validate_identifier("namespace", name)
        validate_labels(labels)
        with self.lock:
            try:
                self.db.execute(
                    "INSERT INTO namespaces (name, labels) VALUES (?, ?)",
                    (name, json.dumps(labels, sort_keys=True)),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"namespace {name!r}: already exists") from None

    def namespace_labels(self, name: str) -> dict[str, str]:
        """The labels of ``name``; none for a namespace that does not exist
        (containerd's Get answers so)."""
        try:
            return self.get_namespace(name)
        except NotFound:
            return {}

    def get_namespace(self, name: str) -> dict[str, str]:
        with self.lock:
            row = self.db.execute(
                "SELECT labels FROM namespaces WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            raise NotFound(f"namespace {name!r}: not found")
        labels: dict[str, str] = json.loads(row[0])
        return labels

    def list_namespaces(self) -> list[tuple[str, dict[str, str]]]:
        with self.lock:
            rows = self.db.execute("SELECT name, labels FROM namespaces ORDER BY name").fetchall()
        return [(name, json.loads(labels)) for name, labels in rows]

    def update_namespace_labels(
        self, name: str, labels: Mapping[str, str], fieldpaths: list[str]
    ) -> dict[str, str]:
        """containerd's label update of a namespace (``fieldpaths`` as
        ``fieldpaths.update_labels`` takes them), read and written under the
        lock, so two updates at once cannot lose a label; the new labels."""
        with self.lock:
            new = update_labels(self.get_namespace(name), labels, fieldpaths, f"namespace {name!r}")
            self.db.execute(
                "UPDATE namespaces SET labels = ? WHERE name = ?",
                (json.dumps(new, sort_keys=True), name),
            )
        return new

    def delete_namespace(self, name: str) -> None:
        with self.lock:
            self.get_namespace(name)
            left = [what for check in self.in_use_checks for what in check(name)]
            if left:
                raise FailedPrecondition(
                    f"namespace {name!r} must be empty, but it still has {', '.join(left)}"
                )
            self.db.execute("DELETE FROM namespaces WHERE name = ?", (name,))
        for hook in self.on_namespace_delete:
            hook(name)

    def _containers_in(self, ns: str) -> list[str]:
        row = self.db.execute("SELECT 1 FROM containers WHERE namespace = ? LIMIT 1", (ns,))
        return ["containers"] if row.fetchone() else []

    # -- containers ---------------------------------------------------------

    _COLUMNS = (
        "id, labels, image, runtime, runtime_options_type, runtime_options, spec_type, spec,"
        " snapshotter, snapshot_key, extensions, created, updated"
    )

    @staticmethod
    def _row(row: tuple[Any, ...]) -> Container:
        (cid, labels, image, runtime, opt_t, opt_v, spec_t, spec_v, snap, key, ext, cr, up) = row
        extensions = {
            name: Typed(t, bytes.fromhex(v)) for name, (t, v) in json.loads(str(ext)).items()
        }
        return Container(
            id=str(cid),
            runtime=str(runtime),
            spec=Typed(str(spec_t), bytes(spec_v or b"")),
            labels=json.loads(str(labels)),
            image=str(image),
            runtime_options=Typed(str(opt_t), bytes(opt_v or b"")),
            snapshotter=str(snap),
            snapshot_key=str(key),
            extensions=extensions,
            created_at=from_unix_nanos(int(cr)),
            updated_at=from_unix_nanos(int(up)),
        )

    def get_container(self, ns: str, cid: str) -> Container:
        with self.lock:
            row = self.db.execute(
                f"SELECT {self._COLUMNS} FROM containers WHERE namespace = ? AND id = ?",
                (ns, cid),
            ).fetchone()
        if row is None:
            raise NotFound(f"container {cid!r}: not found")
        return self._row(row)

    def list_containers(self, ns: str) -> list[Container]:
        with self.lock:
            rows = self.db.execute(
                f"SELECT {self._COLUMNS} FROM containers WHERE namespace = ? ORDER BY id", (ns,)
            ).fetchall()
        return [self._row(r) for r in rows]

    def all_containers(self) -> list[tuple[str, Container]]:
        with self.lock:
            rows = self.db.execute(
                f"SELECT namespace, {self._COLUMNS} FROM containers ORDER BY namespace, id"
            ).fetchall()
        return [(str(r[0]), self._row(r[1:])) for r in rows]

    def _write(self, ns: str, c: Container, *, insert: bool) -> None:
        ext = json.dumps({k: [v.type_url, v.value.hex()] for k, v in c.extensions.items()})
        assert c.created_at is not None and c.updated_at is not None
        values = (
            json.dumps(c.labels, sort_keys=True),
            c.image,
            c.runtime,
            c.runtime_options.type_url,
            c.runtime_options.value,
            c.spec.type_url,
            c.spec.value,
            c.snapshotter,
            c.snapshot_key,
            ext,
            to_unix_nanos(c.created_at),
            to_unix_nanos(c.updated_at),
        )
        if insert:
            self.db.execute(
                "INSERT INTO containers (labels, image, runtime, runtime_options_type,"
                " runtime_options, spec_type, spec, snapshotter, snapshot_key, extensions,"
                " created, updated, namespace, id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (*values, ns, c.id),
            )
        else:
            self.db.execute(
                "UPDATE containers SET labels=?, image=?, runtime=?, runtime_options_type=?,"
                " runtime_options=?, spec_type=?, spec=?, snapshotter=?, snapshot_key=?,"
                " extensions=?, created=?, updated=? WHERE namespace=? AND id=?",
                (*values, ns, c.id),
            )

    def create_container(self, ns: str, c: Container) -> Container:
        _validate_container(c)
        now = unixtime.now()
        c = replace(c, created_at=now, updated_at=now)
        with self.lock:
            self.ensure_namespace(ns)
            try:
                self._write(ns, c, insert=True)
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"container {c.id!r}: already exists") from None
        return c

    def update_container(self, ns: str, new: Container, fieldpaths: Iterable[str]) -> Container:
        """containerd's update rules: with no field paths, labels, spec, extensions, image
        and snapshot key are replaced and runtime/snapshotter must not change."""
        paths = list(fieldpaths)
        with self.lock:
            old = self.get_container(ns, new.id)
            out = replace(old, labels=dict(old.labels), extensions=dict(old.extensions))
            if not paths:
                if new.snapshotter != old.snapshotter:
                    raise InvalidArgument(f"container {new.id!r}: snapshotter is immutable")
                if new.runtime != old.runtime:
                    raise InvalidArgument(f"container {new.id!r}: runtime name is immutable")
                paths = ["labels", "spec", "extensions", "image", "snapshotkey"]
            for path in paths:
                if update_map(out.labels, new.labels, path, "labels") or update_map(
                    out.extensions, new.extensions, path, "extensions"
                ):
                    pass
                elif path == "spec":
                    out.spec = new.spec
                elif path == "image":
                    out.image = new.image
                elif path == "snapshotkey":
                    out.snapshot_key = new.snapshot_key
                elif path == "runtime":
                    raise InvalidArgument(f"container {new.id!r}: runtime name is immutable")
                else:
                    raise InvalidArgument(
                        f"container {new.id!r}: cannot update field {path!r} "
                        "(labels, labels.<key>, spec, extensions, extensions.<key>, image, "
                        "snapshotkey)"
                    )
            out.updated_at = unixtime.now()
            _validate_container(out)
            self._write(ns, out, insert=False)
        return out

    def delete_container(self, ns: str, cid: str) -> Container:
        with self.lock:
            c = self.get_container(ns, cid)
            self.db.execute("DELETE FROM containers WHERE namespace = ? AND id = ?", (ns, cid))
        return c
