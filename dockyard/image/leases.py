"""Leases: what a client is still working on, kept from garbage collection.

containerd's model (``docs/garbage-collection.md``, ``api/services/leases/v1``)
as a plain class over the same SQLite database as the image records. A lease
belongs to a namespace and has an id, labels and a creation time; it may
expire (the ``containerd.io/gc.expire`` label, an RFC 3339 time, as in
containerd). Resources are attached to it by type and id:

    ``content``               a blob digest
    ``snapshots/<snapshotter>`` a snapshot key as the snapshotter knows it
                              (namespace prefix included: ``default/sha256:...``)
    ``ingests``               a content ingest ref

While a lease lives and has not expired, the garbage collector keeps what it
holds (and, unless it is labelled ``containerd.io/gc.flat``, what those hold
through their ``gc.ref`` labels). An expired lease is deleted by the next gc.

API summary::

    store = LeaseStore("<root>/metadata.db")
    l = store.create(ns, labels={...}, expire=timedelta(hours=1))  # random id
    store.get(ns, id), store.list(ns), store.walk_all(), store.delete(ns, id)
    store.add_resource(ns, id, Resource("content", digest))
    store.delete_resource(ns, id, res), store.resources(ns, id)

    with lease(store, ns) as held:      # deleted on exit; 24 h expiry if we die first
        held.add_content(d); held.add_snapshot("overlayfs", key); held.add_ingest(ref)
"""

from __future__ import annotations

import builtins
import contextlib
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from dockyard.errors import AlreadyExists, InvalidArgument, NotFound
from dockyard.image.content import validate_labels
from dockyard.image.sqlite import Store
from dockyard.spec.image import parse_digest
from dockyard.unixtime import from_unix_nanos

EXPIRE_LABEL = "containerd.io/gc.expire"
FLAT_LABEL = "containerd.io/gc.flat"
DEFAULT_EXPIRE = timedelta(hours=24)
"""What ``lease()`` gives a lease, so that one left by a killed process goes away."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    created INTEGER NOT NULL,
    PRIMARY KEY (namespace, id)
);
CREATE TABLE IF NOT EXISTS lease_resources (
    namespace TEXT NOT NULL,
    lease TEXT NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (namespace, lease, type, id)
);
"""

# containerd takes any lease id (its clients make them as "<nanoseconds>-<base64url>",
# which may end in '-' or '_'): printable, no spaces, not too long.
_ID = re.compile(r"[!-~]{1,256}\Z")
_FRACTION = re.compile(r"(\.\d{6})\d+")


@dataclass(frozen=True)
class Resource:
    """A resource a lease holds: ``leases.proto``'s ``Resource`` (type and id)."""

    type: str
    id: str

    def check(self) -> None:
        if not self.id:
            raise InvalidArgument(f"lease resource {self.type!r}: empty id")
        if self.type == "content":
            parse_digest(self.id, "lease resource content")
        elif self.type == "ingests":
            pass
        elif self.type.startswith("snapshots/"):
            if not self.type[len("snapshots/") :]:
                raise InvalidArgument("lease resource snapshots/: no snapshotter named")
        else:
            raise InvalidArgument(
                f"lease resource type {self.type!r}: want content, ingests or snapshots/<name>"
            )

    @property
    def snapshotter(self) -> str:
        """The snapshotter of a ``snapshots/<name>`` resource, else ""."""
        return self.type[len("snapshots/") :] if self.type.startswith("snapshots/") else ""


def parse_time(value: str) -> datetime | None:
    """An RFC 3339 time (Go's nanoseconds allowed); None if it does not parse."""
    text = _FRACTION.sub(r"\1", value.strip())
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Lease:
    id: str
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None

    @property
    def expires_at(self) -> datetime | None:
        """When the lease expires; None if never (or the label does not parse, as containerd)."""
        value = self.labels.get(EXPIRE_LABEL)
        return parse_time(value) if value else None

    def expired(self, now: datetime | None = None) -> bool:
        expires = self.expires_at
        return expires is not None and expires <= (now or datetime.now(UTC))

    @property
    def flat(self) -> bool:
        return bool(self.labels.get(FLAT_LABEL))


class LeaseStore(Store):
    """Leases in ``<root>/metadata.db`` (WAL; safe across processes)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, SCHEMA)

    @staticmethod
    def _check(namespace: str, lease_id: str) -> None:
        if not namespace:
            raise InvalidArgument("namespace is required")
        if not _ID.match(lease_id or ""):
            raise InvalidArgument(
                f"lease id {lease_id!r}: want 1 to 256 printable characters, no spaces"
            )

    def create(
        self,
        namespace: str,
        lease_id: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        expire: datetime | timedelta | None = None,
    ) -> Lease:
        """A new lease (a random id unless given); ``expire`` sets ``containerd.io/gc.expire``."""
        lease_id = lease_id or f"{time.time_ns()}-{secrets.token_hex(4)}"
        self._check(namespace, lease_id)
        all_labels = dict(labels or {})
        if expire is not None:
            when = datetime.now(UTC) + expire if isinstance(expire, timedelta) else expire
            all_labels[EXPIRE_LABEL] = format_time(when)
        validate_labels(all_labels)
        try:
            self.db.execute(
                "INSERT INTO leases VALUES (?, ?, ?, ?)",
                (namespace, lease_id, json.dumps(all_labels), time.time_ns()),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(
                f"lease {lease_id!r} already exists in namespace {namespace!r}"
            ) from None
        return self.get(namespace, lease_id)

    def get(self, namespace: str, lease_id: str) -> Lease:
        row = self.db.execute(
            "SELECT id, labels, created FROM leases WHERE namespace = ? AND id = ?",
            (namespace, lease_id),
        ).fetchone()
        if row is None:
            raise NotFound(f"lease {lease_id!r} not found in namespace {namespace!r}")
        return _lease(row)

    def list(self, namespace: str) -> list[Lease]:
        rows = self.db.execute(
            "SELECT id, labels, created FROM leases WHERE namespace = ? ORDER BY created, id",
            (namespace,),
        ).fetchall()
        return [_lease(r) for r in rows]

    def walk_all(self) -> Iterator[tuple[str, Lease]]:
        """Every lease of every namespace (for garbage collection)."""
        rows = self.db.execute(
            "SELECT namespace, id, labels, created FROM leases ORDER BY namespace, created"
        ).fetchall()
        for row in rows:
            yield row[0], _lease(row[1:])

    def delete(self, namespace: str, lease_id: str) -> None:
        """Delete a lease and its resource list (the resources themselves go with gc)."""
        with self._transaction():
            cur = self.db.execute(
                "DELETE FROM leases WHERE namespace = ? AND id = ?", (namespace, lease_id)
            )
            if cur.rowcount == 0:
                raise NotFound(f"lease {lease_id!r} not found in namespace {namespace!r}")
            self.db.execute(
                "DELETE FROM lease_resources WHERE namespace = ? AND lease = ?",
                (namespace, lease_id),
            )

    def add_resource(self, namespace: str, lease_id: str, resource: Resource) -> None:
        """Attach ``resource`` to the lease (again is fine); ``NotFound`` without the lease."""
        resource.check()
        with self._transaction():
            self.get(namespace, lease_id)
            self.db.execute(
                "INSERT OR IGNORE INTO lease_resources VALUES (?, ?, ?, ?)",
                (namespace, lease_id, resource.type, resource.id),
            )

    def delete_resource(self, namespace: str, lease_id: str, resource: Resource) -> None:
        with self._transaction():
            self.get(namespace, lease_id)
            self.db.execute(
                "DELETE FROM lease_resources"
                " WHERE namespace = ? AND lease = ? AND type = ? AND id = ?",
                (namespace, lease_id, resource.type, resource.id),
            )

    def resources(self, namespace: str, lease_id: str) -> builtins.list[Resource]:
        self.get(namespace, lease_id)
        rows = self.db.execute(
            "SELECT type, id FROM lease_resources WHERE namespace = ? AND lease = ?"
            " ORDER BY type, id",
            (namespace, lease_id),
        ).fetchall()
        return [Resource(t, i) for t, i in rows]


def _lease(row: tuple[str, str, int]) -> Lease:
    lease_id, labels, created = row
    return Lease(lease_id, json.loads(labels), from_unix_nanos(created))


class HeldLease:
    """A lease held by ``lease()``: attach what the work creates before anything refers to it."""

    def __init__(self, store: LeaseStore, namespace: str, held: Lease) -> None:
        self.store = store
        self.namespace = namespace
        self.lease = held

    @property
    def id(self) -> str:
        return self.lease.id

    def add(self, resource: Resource) -> None:
        self.store.add_resource(self.namespace, self.id, resource)

    def add_content(self, digest: str) -> None:
        self.add(Resource("content", digest))

    def add_snapshot(self, snapshotter: str, key: str) -> None:
        self.add(Resource(f"snapshots/{snapshotter}", key))

    def add_ingest(self, ref: str) -> None:
        self.add(Resource("ingests", ref))


@contextlib.contextmanager
def lease(
    store: LeaseStore,
    namespace: str,
    *,
    expire: timedelta | None = DEFAULT_EXPIRE,
    labels: Mapping[str, str] | None = None,
) -> Iterator[HeldLease]:
    """A lease for the duration of the block, deleted on exit (containerd's ``WithLease``).

    It expires after ``expire`` anyway (24 hours), so a process killed inside
    the block does not keep its resources forever.
    """
    held = store.create(namespace, labels=labels, expire=expire)
    try:
        yield HeldLease(store, namespace, held)
    finally:
        with contextlib.suppress(NotFound):
            store.delete(namespace, held.id)
