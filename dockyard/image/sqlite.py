"""One SQLite connection per thread to one database file.

The image and lease records are used by the supervisor's gRPC worker
threads at once. A single connection cannot be shared: the statements of
two threads would land in one transaction (``BEGIN IMMEDIATE`` ...
``COMMIT`` of the lease store). Each thread gets its own connection, in
autocommit mode with a busy timeout, and SQLite's locking orders the writers
(WAL mode, set by the store on its first connection).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator


class Connections:
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # check_same_thread=False only so that close() may run on any thread
            db = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for db in conns:
            db.close()
        self._local = threading.local()


class Store:
    """A record store in one SQLite file (WAL; safe across processes and threads)."""

    def __init__(self, path: str, schema: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._conns = Connections(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(schema)

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection (the supervisor's worker threads share the store)."""
        return self._conns.get()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction on this thread's connection, the database
        locked from its start; rolled back if the block raises."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self._conns.close()
