"""Namespaced content over the image library's one content store.

containerd keeps one store of blobs for the whole daemon and, in its
metadata, a record of which namespace has which blob, with that namespace's
own labels and times (``metadata/content.go``). Each namespace sees only
the blobs it committed. This module does the same over ``ContentStore``:

- a ``content`` table in ``metadata.db``: (namespace, digest) -> size,
  labels, created, updated. The backend store's own labels are not used.
- ingests of namespace ``ns`` are the backend's ingests named ``ns/<ref>``;
  a namespace lists, reads and aborts only its own.
- "shared" content: a write whose expected digest the backend already holds
  (committed in another namespace) stores nothing; its commit only adds the
  record. So one image pulled into two namespaces is stored once, and the
  second pull transfers nothing.
- what is written under a lease (``containerd-lease``) is added to it: the
  ingest when the write opens, the blob at commit (and the ingest taken off).
- an ``ingests`` table says when an ingest that no lease holds may be
  aborted by garbage collection, as containerd's ``expireat``: an ingest
  opened without a lease 24 hours after it was (last) opened, one opened
  under a lease at once, when that lease is gone.

A blob leaves the backend only through garbage collection, once no
namespace has a record of it (``dockyard.supervisor.gc``). Every commit
holds the gc lock shared from the backend commit until its record and lease
entry are written, so a collection never sees a blob in between.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime

from dockyard.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from dockyard.fieldpaths import update_labels
from dockyard.filters import matcher
from dockyard.image.content import (
    BlobReader,
    ContentStore,
    Info,
    Status,
    Writer,
    info_getter,
    status_getter,
    validate_labels,
)
from dockyard.image.gc import gc_lock
from dockyard.image.leases import LeaseStore, Resource
from dockyard.spec.image import parse_digest
from dockyard.unixtime import from_unix_nanos

SCHEMA = """
CREATE TABLE IF NOT EXISTS content (
    namespace TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    PRIMARY KEY (namespace, digest)
);
CREATE TABLE IF NOT EXISTS ingests (
    namespace TEXT NOT NULL,
    ref TEXT NOT NULL,
    expires INTEGER NOT NULL,  -- ns since the epoch; 0: when no lease holds it
    PRIMARY KEY (namespace, ref)
);
"""

# How long an ingest opened without a lease is kept (containerd's expireat).
INGEST_EXPIRY_NS = 24 * 3600 * 1_000_000_000


class OutOfRange(InvalidArgument):
    """A read or write offset past what there is (gRPC OUT_OF_RANGE, as containerd)."""

    grpc_code = "OUT_OF_RANGE"


def _info(digest: str, size: int, labels: str, created: int, updated: int) -> Info:
    """A row of the ``content`` table (its columns in order) as an ``Info``."""
    return Info(
        digest, size, from_unix_nanos(created), from_unix_nanos(updated), json.loads(labels)
    )


def check_digest(digest: str, what: str = "digest") -> str:
    parse_digest(digest, what)
    return digest


def backend_ref(namespace: str, ref: str) -> str:
    """The backend ingest of ``ref`` in ``namespace``."""
    return f"{namespace}/{ref}"


class NamespacedContent:
    """The content of every namespace: records in ``db_path`` over ``backend``."""

    def __init__(
        self, backend: ContentStore, db_path: str, leases: LeaseStore, gc_root: str
    ) -> None:
        self.backend = backend
        self.leases = leases
        self.gc_root = gc_root
        # one connection shared by the worker threads, every use under the lock
        self.db = sqlite3.connect(
            db_path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self.lock = threading.RLock()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # -- records -------------------------------------------------------------

    def _row(self, ns: str, digest: str) -> tuple[int, str, int, int] | None:
        with self.lock:
            row = self.db.execute(
                "SELECT size, labels, created, updated FROM content"
                " WHERE namespace = ? AND digest = ?",
                (ns, digest),
            ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]), int(row[2]), int(row[3]))

    def has(self, ns: str, digest: str) -> bool:
        return self._row(ns, digest) is not None

    def info(self, ns: str, digest: str) -> Info:
        check_digest(digest)
        row = self._row(ns, digest)
        if row is None:
            raise NotFound(f"content {digest}: not found")
        return _info(digest, *row)

    def walk(self, ns: str, filters: list[str]) -> Iterator[Info]:
        match = matcher(filters)
        with self.lock:
            rows = self.db.execute(
                "SELECT digest, size, labels, created, updated FROM content"
                " WHERE namespace = ? ORDER BY digest",
                (ns,),
            ).fetchall()
        for row in rows:
            info = _info(*row)
            if match(info_getter(info)):
                yield info

    def walk_all(self) -> Iterator[tuple[str, Info]]:
        """Every record of every namespace (for garbage collection)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT namespace, digest, size, labels, created, updated FROM content"
            ).fetchall()
        for ns, *row in rows:
            yield ns, _info(*row)

    def update(self, ns: str, digest: str, labels: Mapping[str, str], paths: list[str]) -> Info:
        check_digest(digest)
        with self.lock:
            old = self.info(ns, digest)
            new = update_labels(old.labels, labels, paths, f"content {digest}")
            now = time.time_ns()
            self.db.execute(
                "UPDATE content SET labels = ?, updated = ? WHERE namespace = ? AND digest = ?",
                (json.dumps(new, sort_keys=True), now, ns, digest),
            )
        return Info(digest, old.size, old.created_at, from_unix_nanos(now), new)

    def remove(self, ns: str, digest: str) -> None:
        """Take ``digest`` out of ``ns`` (the blob goes with the next gc if no one else has it)."""
        check_digest(digest)
        with self.lock:
            cur = self.db.execute(
                "DELETE FROM content WHERE namespace = ? AND digest = ?", (ns, digest)
            )
        if cur.rowcount == 0:
            raise NotFound(f"content {digest}: not found")

    def _insert(self, ns: str, digest: str, size: int, labels: Mapping[str, str]) -> None:
        now = time.time_ns()
        with self.lock:
            try:
                self.db.execute(
                    "INSERT INTO content VALUES (?, ?, ?, ?, ?, ?)",
                    (ns, digest, size, json.dumps(dict(labels), sort_keys=True), now, now),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"content {digest}: already exists") from None

    def in_use(self, ns: str) -> list[str]:
        """What content ``ns`` still has (a namespace with any is not removed)."""
        with self.lock:
            row = self.db.execute("SELECT 1 FROM content WHERE namespace = ? LIMIT 1", (ns,))
            found = row.fetchone() is not None
        if found or self.statuses(ns, []):
            return ["content"]
        return []

    def open(self, ns: str, digest: str) -> BlobReader:
        self.info(ns, digest)
        return self.backend.open(digest)

    # -- ingests -------------------------------------------------------------

    @staticmethod
    def _local(ns: str, st: Status) -> Status:
        """The backend's ``<ns>/<ref>`` ingest as ``ref`` of ``ns``."""
        return dataclasses.replace(st, ref=st.ref[len(ns) + 1 :])

    def status(self, ns: str, ref: str) -> Status:
        try:
            return self._local(ns, self.backend.status(backend_ref(ns, ref)))
        except NotFound:
            raise NotFound(f"ingest {ref!r}: not found") from None

    def statuses(self, ns: str, filters: list[str]) -> list[Status]:
        match = matcher(filters)
        prefix = ns + "/"
        out = []
        for st in self.backend.statuses():
            if st.ref.startswith(prefix):
                local = self._local(ns, st)
                if match(status_getter(local)):
                    out.append(local)
        return out

    def abort(self, ns: str, ref: str, lease: str | None = None) -> None:
        try:
            self.backend.abort(backend_ref(ns, ref))
        except NotFound:
            raise NotFound(f"ingest {ref!r}: not found") from None
        self._forget_ingest(ns, ref)
        if lease:
            self._unlease(ns, lease, Resource("ingests", ref))

    # -- ingests' expiry ------------------------------------------------------

    def _note_ingest(self, ns: str, ref: str, leased: bool) -> None:
        """An ingest was opened: without a lease it may go 24 hours from now
        (each unleased open moves that on); under one, once no lease holds it."""
        with self.lock:
            if leased:
                self.db.execute(
                    "INSERT OR IGNORE INTO ingests (namespace, ref, expires) VALUES (?, ?, 0)",
                    (ns, ref),
                )
            else:
                self.db.execute(
                    "INSERT INTO ingests (namespace, ref, expires) VALUES (?, ?, ?)"
                    " ON CONFLICT (namespace, ref) DO UPDATE SET expires = excluded.expires",
                    (ns, ref, time.time_ns() + INGEST_EXPIRY_NS),
                )

    def _forget_ingest(self, ns: str, ref: str) -> None:
        with self.lock:
            self.db.execute("DELETE FROM ingests WHERE namespace = ? AND ref = ?", (ns, ref))

    def ingest_expiries(self) -> dict[str, datetime]:
        """Backend ingest -> from when garbage collection may abort it (if no
        lease holds it); records of ingests the backend no longer has are dropped."""
        with self.lock:
            rows = self.db.execute("SELECT namespace, ref, expires FROM ingests").fetchall()
        # listed after the records were read: a record is made once its backend
        # ingest exists, so a live ingest of any record read is in the list
        live = {st.ref for st in self.backend.statuses()}
        out: dict[str, datetime] = {}
        for ns, ref, expires in rows:
            name = backend_ref(ns, ref)
            if name in live:
                out[name] = from_unix_nanos(int(expires))
            else:
                self._forget_ingest(ns, ref)
        return out

    def _unlease(self, ns: str, lease: str, res: Resource) -> None:
        with contextlib.suppress(NotFound):
            self.leases.delete_resource(ns, lease, res)

    def writer(
        self, ns: str, ref: str, *, total: int = 0, expected: str = "", lease: str | None = None
    ) -> NamespacedWriter:
        """Open (or resume) the ingest ``ref`` of ``ns``; see the module docstring.

        ``AlreadyExists`` when ``ns`` already has ``expected`` (added to the
        lease all the same, as containerd does, so the caller's lease keeps it).
        """
        if not ref:
            raise InvalidArgument("write: ref must not be empty")
        if total < 0:
            raise InvalidArgument(f"write {ref!r}: total must not be negative")
        if expected:
            check_digest(expected, f"write {ref!r}: expected")
            if self.has(ns, expected):
                if lease:
                    self.leases.add_resource(ns, lease, Resource("content", expected))
                raise AlreadyExists(f"content {expected}: already exists")
        backend: Writer | None = None
        shared_size = self._shared_size(expected, total)
        if shared_size is None:
            try:
                backend = self.backend.writer(
                    backend_ref(ns, ref), expected=expected or None, total=total or None
                )
            except AlreadyExists:
                # stored for another namespace (since the check above, or with
                # another size: then this write's commit finds the mismatch)
                shared_size = self._shared_size(expected, total)
                if shared_size is None:
                    backend = self.backend.writer(backend_ref(ns, ref), total=total or None)
        try:
            if lease:
                self.leases.add_resource(ns, lease, Resource("ingests", ref))
            if backend is not None:
                self._note_ingest(ns, ref, leased=bool(lease))
        except BaseException:
            if backend is not None:
                backend.close()
            raise
        return NamespacedWriter(self, ns, ref, backend, expected, shared_size or 0, lease)

    def _shared_size(self, expected: str, total: int) -> int | None:
        """The size of ``expected`` if the backend has it and ``total`` agrees."""
        if not expected:
            return None
        try:
            size = self.backend.info(expected).size
        except NotFound:
            return None
        # a size that disagrees is the caller's error, found at its commit
        return size if total in (0, size) else None


class NamespacedWriter:
    """One write session of a namespace (``NamespacedContent.writer``)."""

    def __init__(
        self,
        store: NamespacedContent,
        ns: str,
        ref: str,
        backend: Writer | None,
        expected: str,
        shared_size: int,
        lease: str | None,
    ) -> None:
        self.store = store
        self.ns = ns
        self.ref = ref
        self.backend = backend
        self.expected = expected
        self.shared_size = shared_size
        self.lease = lease
        self.started = datetime.now(UTC)

    def status(self) -> Status:
        if self.backend is None:
            return Status(
                self.ref,
                self.shared_size,
                self.shared_size,
                self.expected,
                self.started,
                self.started,
            )
        return NamespacedContent._local(self.ns, self.backend.status())

    def digest(self) -> str:
        return self.expected if self.backend is None else self.backend.digest()

    def _unshare(self) -> Writer:
        """Shared content is being written after all: start a real ingest."""
        if self.backend is None:
            self.backend = self.store.backend.writer(backend_ref(self.ns, self.ref))
            self.shared_size = 0
        return self.backend

    def write(self, data: bytes) -> int:
        if not data:
            return 0
        return self._unshare().write(data)

    def truncate(self, size: int) -> None:
        if self.backend is None and size == 0:
            self._unshare()
            return
        if self.backend is None:
            raise InvalidArgument(f"writer {self.ref!r}: truncate to {size}: only 0 is supported")
        self.backend.truncate(size)

    def commit(self, size: int, expected: str, labels: Mapping[str, str]) -> str:
        """Commit into the namespace; returns the digest.

        ``AlreadyExists`` if the namespace had it already (the ingest is gone
        all the same); size and digest mismatches as the backend reports them.
        """
        what = f"commit {self.ref!r}"
        if expected:
            check_digest(expected, f"{what}: expected")
        validate_labels(labels)
        ns = self.ns
        with gc_lock(self.store.gc_root, shared=True):
            if self.backend is None:
                if size and size != self.shared_size:
                    raise FailedPrecondition(
                        f"{what}: unexpected size: expected {size} bytes, have {self.shared_size}"
                    )
                if expected and expected != self.expected:
                    raise FailedPrecondition(
                        f"{what}: unexpected digest: expected {expected}, have {self.expected}"
                    )
                if not self.store.backend.exists(self.expected):
                    raise NotFound(
                        f"{what}: content {self.expected} was removed meanwhile; write it again"
                    )
                digest, actual_size = self.expected, self.shared_size
            else:
                written = self.backend.digest()
                try:
                    digest = self.backend.commit(size=size or None, expected=expected or None)
                except AlreadyExists:
                    # verified, and the backend has it already (another namespace)
                    digest = expected or self.expected or written
                except InvalidArgument as e:
                    # wrong size or digest: containerd's FAILED_PRECONDITION (the
                    # backend has removed the ingest: a retry starts clean)
                    raise FailedPrecondition(str(e)) from None
                actual_size = self.store.backend.info(digest).size
            exists = False
            try:
                self.store._insert(ns, digest, actual_size, labels)
            except AlreadyExists:
                exists = True
            self.store._forget_ingest(ns, self.ref)
            if self.lease:
                self.store._unlease(ns, self.lease, Resource("ingests", self.ref))
                self.store.leases.add_resource(ns, self.lease, Resource("content", digest))
        self.close()
        if exists:
            raise AlreadyExists(f"content {digest}: already exists")
        return digest

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
