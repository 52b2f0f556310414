"""The records of one snapshotter, in one SQLite database under its root.

One row per snapshot: its numeric id (the name of its directory, never
reused), its key (the active key, or the name once committed), its kind, its
parent's id, labels, times, and the usage measured at commit. Keys and names
share one space, as in containerd.

The database runs in WAL mode with synchronous=FULL, so a committed
transaction survives a crash; writers take the lock up front
(``BEGIN IMMEDIATE``) and wait for each other, so several Snapshotter
instances (processes) can share one root.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dockyard.errors import AlreadyExists, FailedPrecondition, NotFound

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    key     TEXT NOT NULL UNIQUE,
    kind    TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
    parent  INTEGER REFERENCES snapshots(id),
    labels  TEXT NOT NULL DEFAULT '{}',
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    size    INTEGER,
    inodes  INTEGER
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""

_COLUMNS = "s.id, s.key, s.kind, s.parent, p.key, s.labels, s.created, s.updated, s.size, s.inodes"
_SELECT = f"SELECT {_COLUMNS} FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent"


@dataclass
class Record:
    id: int
    key: str
    kind: str
    parent_id: int | None
    parent: str  # the parent's name, "" for none
    labels: dict[str, str] = field(default_factory=dict)
    created: int = 0  # ns since the epoch
    updated: int = 0
    size: int | None = None  # usage measured at commit
    inodes: int | None = None


def _record(row: tuple[Any, ...]) -> Record:
    return Record(
        id=row[0],
        key=row[1],
        kind=row[2],
        parent_id=row[3],
        parent=row[4] or "",
        labels=json.loads(row[5]),
        created=row[6],
        updated=row[7],
        size=row[8],
        inodes=row[9],
    )


class MetaStore:
    """Snapshot records; every method runs in its own transaction unless inside ``write()``."""

    def __init__(self, path: str) -> None:
        self.path = path
        # autocommit mode: transactions are begun and ended here, explicitly
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._depth = 0
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self.write():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"snapshot metadata {path}: schema version {version} is newer than "
                    f"{SCHEMA_VERSION}"
                )
            if version == 0:
                # one statement at a time: executescript() would commit first
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def write(self) -> Iterator[None]:
        """One write transaction; the database lock is held from the start."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self._db.execute("ROLLBACK")
                raise
            self._depth = 0
            self._db.execute("COMMIT")

    # --- reads ---------------------------------------------------------------

    def find(self, key: str) -> Record | None:
        with self._lock:
            row = self._db.execute(f"{_SELECT} WHERE s.key = ?", (key,)).fetchone()
        return _record(row) if row else None

    def get(self, key: str) -> Record:
        rec = self.find(key)
        if rec is None:
            raise NotFound(f'snapshot "{key}": not found')
        return rec

    def all(self) -> list[Record]:
        with self._lock:
            rows = self._db.execute(f"{_SELECT} ORDER BY s.id").fetchall()
        return [_record(r) for r in rows]

    def chain(self, rec: Record) -> list[int]:
        """The ids of ``rec``'s parents, nearest first."""
        if rec.parent_id is None:
            return []
        with self._lock:
            rows = self._db.execute(
                """
                WITH RECURSIVE up(id, parent, depth) AS (
                    SELECT id, parent, 0 FROM snapshots WHERE id = ?
                    UNION ALL
                    SELECT s.id, s.parent, up.depth + 1
                    FROM snapshots s JOIN up ON s.id = up.parent
                )
                SELECT id FROM up ORDER BY depth
                """,
                (rec.parent_id,),
            ).fetchall()
        return [r[0] for r in rows]

    def has_children(self, rec: Record) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1", (rec.id,)
            ).fetchone()
        return row is not None

    # --- writes --------------------------------------------------------------

    def create(self, key: str, kind: str, parent: str, labels: dict[str, str]) -> Record:
        with self.write():
            if self.find(key) is not None:
                raise AlreadyExists(f'snapshot "{key}": already exists')
            parent_id = None
            if parent:
                p = self.find(parent)
                if p is None:
                    raise NotFound(f'snapshot "{key}": parent "{parent}": not found')
                if p.kind != "committed":
                    raise FailedPrecondition(
                        f'snapshot "{key}": parent "{parent}" is not committed'
                    )
                parent_id = p.id
            now = time.time_ns()
            cur = self._db.execute(
                "INSERT INTO snapshots (key, kind, parent, labels, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key, kind, parent_id, json.dumps(labels), now, now),
            )
            assert cur.lastrowid is not None
            return self.get(key)

    def commit(
        self, name: str, key: str, labels: dict[str, str] | None, size: int, inodes: int
    ) -> Record:
        with self.write():
            rec = self.get(key)
            if rec.kind != "active":
                raise FailedPrecondition(f'commit snapshot "{key}": not active ({rec.kind})')
            if self.find(name) is not None:
                raise AlreadyExists(f'commit snapshot "{key}": "{name}" already exists')
            self._db.execute(
                "UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, updated = ?,"
                " size = ?, inodes = ? WHERE id = ?",
                (
                    name,
                    json.dumps(rec.labels if labels is None else labels),
                    time.time_ns(),
                    size,
                    inodes,
                    rec.id,
                ),
            )
            return self.get(name)

    def remove(self, key: str) -> Record:
        with self.write():
            rec = self.get(key)
            if self.has_children(rec):
                raise FailedPrecondition(f'remove snapshot "{key}": has children')
            self._db.execute("DELETE FROM snapshots WHERE id = ?", (rec.id,))
            return rec

    def set_labels(self, key: str, labels: dict[str, str]) -> Record:
        with self.write():
            rec = self.get(key)
            self._db.execute(
                "UPDATE snapshots SET labels = ?, updated = ? WHERE id = ?",
                (json.dumps(labels), time.time_ns(), rec.id),
            )
            return self.get(key)

    def delete_ids(self, ids: list[int]) -> None:
        """Drop records whatever their children (cleanup's repair); children first."""
        with self.write():
            for i in ids:
                self._db.execute("DELETE FROM snapshots WHERE id = ?", (i,))
