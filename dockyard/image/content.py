"""The content store: immutable blobs named by digest, written through an ingest area.

containerd's model (``docs/content-flow.md``, ``api/services/content/v1/content.proto``)
as a plain Python class; the supervisor's gRPC content service will adapt it.

On disk, under ``root``::

    blobs/<alg>/<hex>           committed blobs, read-only (0444), never partial
    labels/<alg>/<hex>.json     per blob: labels, created_at, updated_at
    ingest/<sha256(ref)>/       one active or interrupted write:
        lock                    flock(2)ed by the writer that owns the ref
        meta.json               ref, expected digest, total, started_at
        data                    the bytes written so far (mtime = updated_at)

API summary::

    store = ContentStore(root)
    with store.writer("layer-sha256:...", expected=dgst, total=n) as w:
        w.offset                # bytes already there (a resumed write continues)
        w.write(chunk) -> int
        w.digest(), w.status(), w.truncate(0)
        w.commit(size=None, expected=None, labels=None) -> digest
    store.exists(d), store.info(d) -> Info, store.path(d), store.delete(d)
    store.open(d) -> BlobReader (seekable file, .read_at(off, n), .size)
    store.read_bytes(d, max_size=None)
    store.update_labels(d, {"k": "v", "gone": ""}, replace=False) -> Info
    store.walk('labels."containerd.io/gc.root"', 'digest==sha256:...') -> Iterator[Info]
    store.statuses(*filters) -> list[Status]; store.status(ref); store.abort(ref)

Semantics, with containerd's where it has them:

- ``writer(ref)`` resumes an ingest left by a writer that closed or died
  (its data is hashed again, so the digest state is right); ``offset`` says
  where to continue. Only one writer holds a ref at a time, across threads
  and processes (``flock``); another gets ``IngestLocked`` ("ref locked"),
  which is gRPC UNAVAILABLE as in containerd, so a caller may retry. A dead
  writer's lock goes with its process.
- ``writer(ref, expected=d)`` when ``d`` is already committed raises
  ``AlreadyExists`` (nothing to fetch).
- ``commit`` checks the size (its ``size``, else the writer's ``total``) and
  the digest (its ``expected``, else the writer's), fsyncs, and renames the
  data into ``blobs/`` (atomic; a blob already there is kept). Outcomes:
  fewer bytes than the size: ``FailedPrecondition``, the ingest and the
  writer stay (write the rest, commit again); more bytes than the size or a
  digest mismatch: ``InvalidArgument`` naming expected and actual, and the
  ingest is removed, because a resumed write would only repeat the bad bytes
  (containerd keeps it; a retry here starts clean instead). A blob already
  present: ``AlreadyExists``, the ingest is removed.
- ``close()`` keeps the ingest for a later resume; ``abort(ref)`` removes it.
- A writer killed at any point (SIGKILL) leaves at most an ingest: blobs are
  only ever made by ``rename(2)`` of a complete, verified, fsynced file.
- Writes are streamed: nothing holds a whole blob in memory.

Filters (``walk``, ``statuses``) are containerd's (``dockyard.filters``).
Fields: ``digest``, ``size``, ``labels.<key>`` for blobs; ``ref``,
``expected``, ``total``, ``offset`` for ingests.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from dockyard.atomicfile import fsync_dir, replace_file
from dockyard.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SystemFailure,
)
from dockyard.filters import Getter, map_field, matcher
from dockyard.spec.image import DIGEST_ALGORITHMS, Digester, parse_digest

CHUNK = 1 << 20
"""Read size when hashing or copying blobs."""
MAX_LABEL_SIZE = 4096
"""Largest label key plus value, in bytes (containerd's limit)."""


class IngestLocked(FailedPrecondition):
    """Another writer holds the ref; containerd answers UNAVAILABLE so clients retry."""

    grpc_code = "UNAVAILABLE"
    http_status = 503


@dataclass(frozen=True)
class Info:
    """A committed blob: ``content.proto``'s ``Info``."""

    digest: str
    size: int
    created_at: datetime
    updated_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Status:
    """An ingest, active or interrupted: ``content.proto``'s ``Status``."""

    ref: str
    offset: int
    total: int | None
    expected: str | None
    started_at: datetime
    updated_at: datetime


def _time(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _hash_file(fd: int, algorithm: str) -> tuple[Digester, int]:
    """Hash an open file from its start, streamed; returns the digester and the size."""
    digester = Digester(algorithm)
    offset = 0
    while True:
        chunk = os.pread(fd, CHUNK, offset)
        if not chunk:
            return digester, offset
        digester.update(chunk)
        offset += len(chunk)


def validate_labels(labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"label key {key!r}: must be a non-empty string")
        if not isinstance(value, str):
            raise InvalidArgument(f"label {key!r}: value must be a string")
        size = len(key.encode()) + len(value.encode())
        if size > MAX_LABEL_SIZE:
            raise InvalidArgument(
                f"label {key!r}: key and value are {size} bytes, more than {MAX_LABEL_SIZE}"
            )


# ---------------------------------------------------------------------------
# the fields filters see (the syntax is dockyard.filters')


def info_getter(info: Info) -> Getter:
    def get(path: list[str]) -> str | None:
        if path == ["digest"]:
            return info.digest
        if path == ["size"]:
            return str(info.size)
        if path[:1] == ["labels"]:
            return map_field(info.labels, path[1:])
        return None

    return get


def status_getter(status: Status) -> Getter:
    def get(path: list[str]) -> str | None:
        if path == ["ref"]:
            return status.ref
        if path == ["expected"]:
            return status.expected
        if path == ["total"]:
            return None if status.total is None else str(status.total)
        if path == ["offset"]:
            return str(status.offset)
        return None

    return get


# ---------------------------------------------------------------------------


class BlobReader(io.FileIO):
    """A committed blob opened for reading: a seekable binary file plus ``read_at``."""

    def __init__(self, path: str, digest: str) -> None:
        super().__init__(path, "rb")
        self.digest = digest
        self.size = os.fstat(self.fileno()).st_size

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (pread: the file position is unchanged)."""
        return os.pread(self.fileno(), n, offset)


class Writer:
    """One ingest, held locked; made by ``ContentStore.writer``."""

    def __init__(
        self,
        store: ContentStore,
        ref: str,
        ingest_dir: str,
        lock_fd: int,
        data_fd: int,
        digester: Digester,
        offset: int,
        meta: dict[str, Any],
    ) -> None:
        self._store = store
        self.ref = ref
        self._dir = ingest_dir
        self._lock_fd: int | None = lock_fd
        self._fd: int | None = data_fd
        self._digester = digester
        self._offset = offset
        self._meta = meta

    # context manager: leaving the block closes (keeps the ingest), it never commits
    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @property
    def offset(self) -> int:
        """Bytes in the ingest so far: where the next ``write`` goes."""
        return self._offset

    @property
    def total(self) -> int | None:
        total = self._meta.get("total")
        return total if isinstance(total, int) else None

    @property
    def expected(self) -> str | None:
        expected = self._meta.get("expected")
        return expected if isinstance(expected, str) else None

    def _open_fd(self) -> int:
        if self._fd is None:
            raise FailedPrecondition(f"writer {self.ref!r}: closed")
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> int:
        fd = self._open_fd()
        try:
            _write_all(fd, data)
        except OSError as e:
            # what reached the file is unknown: hash it again from the start
            self._digester, self._offset = _hash_file(fd, self._digester.algorithm)
            os.lseek(fd, self._offset, os.SEEK_SET)
            raise SystemFailure(f"write ingest {self.ref!r}: {e.strerror or e}") from e
        self._digester.update(data)
        self._offset += len(data)
        return len(data)

    def digest(self) -> str:
        """The digest of what was written so far, in the writer's algorithm."""
        return self._digester.digest()

    def status(self) -> Status:
        fd = self._open_fd()
        st = os.fstat(fd)
        return Status(
            ref=self.ref,
            offset=self._offset,
            total=self.total,
            expected=self.expected,
            started_at=_time(float(self._meta.get("started_at", st.st_mtime))),
            updated_at=_time(st.st_mtime),
        )

    def truncate(self, size: int = 0) -> None:
        """Start the ingest over; only 0 is supported (as in containerd)."""
        if size != 0:
            raise InvalidArgument(f"writer {self.ref!r}: truncate to {size}: only 0 is supported")
        fd = self._open_fd()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        self._digester = Digester(self._digester.algorithm)
        self._offset = 0

    def commit(
        self,
        size: int | None = None,
        expected: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Verify, then move the data into ``blobs/``; returns the digest. See the module doc."""
        fd = self._open_fd()
        what = f"commit {self.ref!r}"
        want_size = size if size is not None else self.total
        want_digest = expected if expected is not None else self.expected
        if want_digest is not None:
            parse_digest(want_digest, f"{what}: expected")
        if labels:
            validate_labels(labels)
        try:
            os.fsync(fd)
            actual_size = os.fstat(fd).st_size
        except OSError as e:
            raise SystemFailure(f"{what}: sync data: {e.strerror or e}") from e
        if actual_size != self._offset:
            # only possible if someone wrote to the file behind our lock
            self._digester, self._offset = _hash_file(fd, self._digester.algorithm)
            actual_size = self._offset
        if want_size is not None and actual_size < want_size:
            raise FailedPrecondition(
                f"{what}: incomplete: {actual_size} of {want_size} bytes written"
            )
        if want_size is not None and actual_size > want_size:
            self._discard()
            raise InvalidArgument(
                f"{what}: unexpected size: expected {want_size} bytes, got {actual_size}"
            )
        algorithm = want_digest.partition(":")[0] if want_digest else self._digester.algorithm
        if algorithm == self._digester.algorithm:
            actual = self._digester.digest()
        else:
            actual = _hash_file(fd, algorithm)[0].digest()
        if want_digest is not None and actual != want_digest:
            self._discard()
            raise InvalidArgument(f"{what}: digest mismatch: expected {want_digest}, got {actual}")

        store = self._store
        target = store._blob_path(actual)
        if os.path.exists(target):
            self._discard()
            raise AlreadyExists(f"content {actual}: already exists")
        # rename(2) is atomic: the blob appears whole or not at all. Two
        # writers racing to commit the same verified bytes may both succeed.
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.fchmod(fd, 0o444)
            os.rename(os.path.join(self._dir, "data"), target)
        except OSError as e:
            raise SystemFailure(f"{what}: move into blobs: {e.strerror or e}") from e
        try:
            fsync_dir(os.path.dirname(target))
            now = time.time()
            store._write_labels(actual, dict(labels or {}), created_at=now, updated_at=now)
        finally:
            self._discard()
        return actual

    def _discard(self) -> None:
        """Remove the ingest (we hold its lock), then let go of the writer."""
        shutil.rmtree(self._dir, ignore_errors=True)
        self.close()

    def close(self) -> None:
        """Release the ref; the ingest stays for a later resume."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class ContentStore:
    """Blobs by digest under ``root``; see the module docstring."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        for sub in ("blobs", "ingest", "labels"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)

    # -- paths ---------------------------------------------------------------

    def _blob_path(self, digest: str) -> str:
        algorithm, encoded = parse_digest(digest)
        return os.path.join(self.root, "blobs", algorithm, encoded)

    def _labels_path(self, digest: str) -> str:
        algorithm, encoded = parse_digest(digest)
        return os.path.join(self.root, "labels", algorithm, encoded + ".json")

    def _ingest_dir(self, ref: str) -> str:
        return os.path.join(self.root, "ingest", hashlib.sha256(ref.encode()).hexdigest())

    # -- blobs ---------------------------------------------------------------

    def path(self, digest: str) -> str:
        """The file of a committed blob (read-only); ``NotFound`` if there is none."""
        p = self._blob_path(digest)
        if not os.path.isfile(p):
            raise NotFound(f"content {digest}: not found")
        return p

    def exists(self, digest: str) -> bool:
        return os.path.isfile(self._blob_path(digest))

    def info(self, digest: str) -> Info:
        p = self._blob_path(digest)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None
        meta = self._read_labels(digest)
        created = meta.get("created_at", st.st_mtime)
        return Info(
            digest=digest,
            size=st.st_size,
            created_at=_time(float(created)),
            updated_at=_time(float(meta.get("updated_at", created))),
            labels=dict(meta.get("labels") or {}),
        )

    def open(self, digest: str) -> BlobReader:
        try:
            return BlobReader(self._blob_path(digest), digest)
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None

    def read_bytes(self, digest: str, max_size: int | None = None) -> bytes:
        """A whole (small) blob, e.g. a manifest; ``InvalidArgument`` past ``max_size``."""
        with self.open(digest) as r:
            if max_size is not None and r.size > max_size:
                raise InvalidArgument(
                    f"content {digest}: {r.size} bytes is larger than the {max_size} byte limit"
                )
            return r.read()

    def delete(self, digest: str) -> None:
        try:
            os.unlink(self._blob_path(digest))
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._labels_path(digest))

    def update_labels(
        self, digest: str, labels: Mapping[str, str | None], *, replace: bool = False
    ) -> Info:
        """Set labels of a blob; an empty or None value removes that label.

        ``replace=True`` makes ``labels`` the whole set (containerd's update
        with the ``labels`` field path); otherwise they are merged in.
        """
        if not self.exists(digest):
            raise NotFound(f"content {digest}: not found")
        with self._labels_lock():
            meta = self._read_labels(digest)
            current: dict[str, str] = {} if replace else dict(meta.get("labels") or {})
            for key, value in labels.items():
                if value:
                    current[key] = value
                else:
                    current.pop(key, None)
            validate_labels(current)
            st_mtime = os.stat(self._blob_path(digest)).st_mtime
            self._write_labels(
                digest,
                current,
                created_at=float(meta.get("created_at", st_mtime)),
                updated_at=time.time(),
            )
        return self.info(digest)

    def walk(self, *filters: str) -> Iterator[Info]:
        """Every committed blob's ``Info`` that matches any of ``filters`` (all if none)."""
        match = matcher(filters)
        for digest in self._digests():
            try:
                info = self.info(digest)
            except (NotFound, InvalidArgument):
                continue  # deleted meanwhile, or a stray file
            if match(info_getter(info)):
                yield info

    def sizes(self) -> Iterator[tuple[str, int]]:
        """(digest, size) of every committed blob: ``walk`` without reading labels."""
        for digest in self._digests():
            try:
                st = os.stat(self._blob_path(digest))
            except (FileNotFoundError, InvalidArgument):
                continue  # deleted meanwhile, or a stray file
            yield digest, st.st_size

    def _digests(self) -> Iterator[str]:
        blobs = os.path.join(self.root, "blobs")
        for algorithm in sorted(os.listdir(blobs)):
            if algorithm not in DIGEST_ALGORITHMS:
                continue
            for encoded in sorted(os.listdir(os.path.join(blobs, algorithm))):
                yield f"{algorithm}:{encoded}"

    @contextlib.contextmanager
    def _labels_lock(self) -> Iterator[None]:
        fd = os.open(
            os.path.join(self.root, "labels", ".lock"),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
            0o600,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_labels(self, digest: str) -> dict[str, Any]:
        try:
            with open(self._labels_path(digest), "rb") as f:
                meta = json.load(f)
        except (FileNotFoundError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def _write_labels(
        self, digest: str, labels: dict[str, str], *, created_at: float, updated_at: float
    ) -> None:
        path = self._labels_path(digest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        body = {"created_at": created_at, "updated_at": updated_at, "labels": labels}
        replace_file(path, json.dumps(body, sort_keys=True).encode(), sync=True)

    # -- ingests -------------------------------------------------------------

    def _lock(self, ref: str, ingest_dir: str) -> int:
        """Create the ingest dir if needed and flock its lock file; the fd holds the lock."""
        lock_path = os.path.join(ingest_dir, "lock")
        for _ in range(100):
            os.makedirs(ingest_dir, exist_ok=True)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                continue  # the dir went away (a commit or abort): make it again
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise IngestLocked(f"ref {ref!r} locked: another writer holds it") from None
                raise SystemFailure(f"lock ingest {ref!r}: {e.strerror or e}") from e
            # the lock counts only if the file is still the one at lock_path
            try:
                if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
        raise SystemFailure(f"lock ingest {ref!r}: the ingest keeps being removed")

    def _read_meta(self, ingest_dir: str) -> dict[str, Any] | None:
        try:
            with open(os.path.join(ingest_dir, "meta.json"), "rb") as f:
                meta = json.load(f)
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return meta if isinstance(meta, dict) and isinstance(meta.get("ref"), str) else None

    def writer(self, ref: str, *, expected: str | None = None, total: int | None = None) -> Writer:
        """Open the ingest ``ref``, resuming what is there; see the module docstring."""
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("writer: ref must be a non-empty string")
        if expected is not None:
            parse_digest(expected, f"writer {ref!r}: expected")
            if self.exists(expected):
                raise AlreadyExists(f"content {expected}: already exists")
        if total is not None and (not isinstance(total, int) or total < 0):
            raise InvalidArgument(f"writer {ref!r}: total must be a non-negative integer")
        ingest_dir = self._ingest_dir(ref)
        lock_fd = self._lock(ref, ingest_dir)
        try:
            return self._open_ingest(ref, ingest_dir, lock_fd, expected, total)
        except BaseException:
            os.close(lock_fd)
            raise

    def _open_ingest(
        self, ref: str, ingest_dir: str, lock_fd: int, expected: str | None, total: int | None
    ) -> Writer:
        data_path = os.path.join(ingest_dir, "data")
        meta_path = os.path.join(ingest_dir, "meta.json")
        meta = self._read_meta(ingest_dir)
        if meta is not None and os.path.exists(data_path):
            if meta["ref"] != ref:
                raise SystemFailure(
                    f"writer {ref!r}: ingest {ingest_dir} belongs to ref {meta['ref']!r}"
                )
            had_total, had_expected = meta.get("total"), meta.get("expected")
            if total is not None and had_total is not None and total != had_total:
                raise InvalidArgument(
                    f"writer {ref!r}: total {total} differs from {had_total} of the ingest"
                    " (abort it to start over)"
                )
            if expected is not None and had_expected is not None and expected != had_expected:
                raise InvalidArgument(
                    f"writer {ref!r}: expected {expected} differs from {had_expected} of the"
                    " ingest (abort it to start over)"
                )
            if (total is not None and had_total is None) or (
                expected is not None and had_expected is None
            ):
                meta["total"] = had_total if had_total is not None else total
                meta["expected"] = had_expected if had_expected is not None else expected
                replace_file(meta_path, json.dumps(meta).encode(), sync=True)
            fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
            try:
                algorithm = self._algorithm(meta.get("expected"))
                digester, offset = _hash_file(fd, algorithm)
                os.lseek(fd, offset, os.SEEK_SET)
            except BaseException:
                os.close(fd)
                raise
            return Writer(self, ref, ingest_dir, lock_fd, fd, digester, offset, meta)

        # a new ingest; data first, meta.json last marks it complete
        fd = os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            meta = {"ref": ref, "expected": expected, "total": total, "started_at": time.time()}
            replace_file(meta_path, json.dumps(meta).encode(), sync=True)
        except BaseException:
            os.close(fd)
            raise
        return Writer(
            self, ref, ingest_dir, lock_fd, fd, Digester(self._algorithm(expected)), 0, meta
        )

    @staticmethod
    def _algorithm(expected: object) -> str:
        return expected.partition(":")[0] if isinstance(expected, str) and expected else "sha256"

    def _status_of(self, ingest_dir: str) -> Status | None:
        meta = self._read_meta(ingest_dir)
        if meta is None:
            return None
        try:
            st = os.stat(os.path.join(ingest_dir, "data"))
        except FileNotFoundError:
            return None
        total, expected = meta.get("total"), meta.get("expected")
        return Status(
            ref=meta["ref"],
            offset=st.st_size,
            total=total if isinstance(total, int) else None,
            expected=expected if isinstance(expected, str) else None,
            started_at=_time(float(meta.get("started_at", st.st_mtime))),
            updated_at=_time(st.st_mtime),
        )

    def status(self, ref: str) -> Status:
        """The ingest ``ref`` (active or interrupted); ``NotFound`` if there is none."""
        status = self._status_of(self._ingest_dir(ref))
        if status is None or status.ref != ref:
            raise NotFound(f"ingest {ref!r}: not found")
        return status

    def statuses(self, *filters: str) -> list[Status]:
        match = matcher(filters)
        base = os.path.join(self.root, "ingest")
        out = []
        for name in sorted(os.listdir(base)):
            status = self._status_of(os.path.join(base, name))
            if status is not None and match(status_getter(status)):
                out.append(status)
        return out

    def abort(self, ref: str) -> None:
        """Remove the ingest ``ref``; ``IngestLocked`` while a writer holds it."""
        ingest_dir = self._ingest_dir(ref)
        if not os.path.isdir(ingest_dir):
            raise NotFound(f"ingest {ref!r}: not found")
        fd = self._lock(ref, ingest_dir)
        try:
            shutil.rmtree(ingest_dir, ignore_errors=True)
        finally:
            os.close(fd)
