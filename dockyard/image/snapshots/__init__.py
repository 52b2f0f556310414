"""Snapshotters, in containerd's model (docs/historical/design/snapshots.md).

A snapshot is a directory tree a container or a layer unpack works in. An
*active* snapshot (``prepare``) is writable; a *view* is read-only; ``commit``
turns an active snapshot into a *committed* one under a new name, which can
then be the parent of any number of others. Callers never see directories,
only the list of :class:`~dockyard.spec.mount.Mount` that makes the tree.

Keys are opaque strings, unique per snapshotter (committed names and active
keys share one space). Namespaces are the caller's business (a prefix).

On disk, under ``root``: ``metadata.db`` (the records, see ``metadata.py``)
and ``snapshots/<id>`` per snapshot. Every change is ordered so that a crash
at any point leaves at worst a directory with no record, which ``cleanup()``
removes:

- create (prepare/view): the tree is made in ``snapshots/new-<random>``
  (flock'ed while it is being filled); then, in one write transaction, the
  record is inserted and the directory renamed to ``snapshots/<id>``, and the
  transaction commits. A crash before the commit leaves ``new-*`` or an
  ``<id>`` without a record (an id whose insert rolled back can be given
  again: a stale directory found under it is removed first).
- commit: one transaction; the directory does not move.
- remove: the record is deleted and committed first, then the directory is
  renamed to ``snapshots/rm-<id>`` and deleted.

``cleanup()`` runs under the write lock, so no other instance is between a
rename and its commit: it removes directories with no record (``<id>``,
``rm-*``, unlocked ``new-*``), and records whose directory is gone, with
their descendants (whose content depended on them).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from dockyard.atomicfile import fsync_dir
from dockyard.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SystemFailure,
    Unsupported,
)
from dockyard.fieldpaths import update_labels
from dockyard.filters import Getter, map_field, matcher
from dockyard.image.snapshots.metadata import MetaStore, Record
from dockyard.spec.mount import Mount
from dockyard.unixtime import from_unix_nanos

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "Info",
    "InvalidArgument",
    "Kind",
    "NotFound",
    "Snapshotter",
    "Unsupported",
    "Usage",
    "disk_usage",
    "snapshot_getter",
]


class Kind(StrEnum):
    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"


@dataclass
class Info:
    """What ``stat`` tells about a snapshot (containerd's ``snapshots.Info``)."""

    kind: Kind
    name: str
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class Usage:
    """Disk used by a snapshot's own changes: bytes allocated and inodes (hardlinks once)."""

    size: int = 0
    inodes: int = 0


def _set_labels(labels: dict[str, str] | None) -> dict[str, str]:
    """The labels a snapshot keeps: an empty value is no label (containerd's rule)."""
    return {k: v for k, v in (labels or {}).items() if v}


def _info(rec: Record) -> Info:
    return Info(
        kind=Kind(rec.kind),
        name=rec.key,
        parent=rec.parent,
        labels=dict(rec.labels),
        created=from_unix_nanos(rec.created),
        updated=from_unix_nanos(rec.updated),
    )


def disk_usage(path: str) -> Usage:
    """Blocks and inodes under ``path`` (itself included), each inode counted once.

    Size is what the files occupy (``st_blocks * 512``), as containerd counts it.
    """
    seen: set[tuple[int, int]] = set()
    u = Usage()

    def add(st: os.stat_result) -> None:
        k = (st.st_dev, st.st_ino)
        if k not in seen:
            seen.add(k)
            u.inodes += 1
            u.size += st.st_blocks * 512

    try:
        add(os.lstat(path))
    except FileNotFoundError:
        return u
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                add(st)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
    return u


# --- filters (the syntax is dockyard.filters') ------------------------------


def snapshot_getter(info: Info) -> Getter:
    """The fields a snapshot filter sees: name, parent, kind, labels.<key>."""

    def get(path: list[str]) -> str | None:
        if path in (["name"], ["parent"], ["kind"]):
            return str(getattr(info, path[0]))
        if path[:1] == ["labels"]:
            return map_field(info.labels, path[1:])
        return None

    return get


# --- the common machinery ----------------------------------------------------


class Snapshotter:
    """The snapshotter interface, and the record/directory bookkeeping both kinds share.

    A subclass says how a snapshot's directory is filled (``_populate``), which
    part of it is its own (``_own_dir``) and how it is mounted (``_mounts``).
    """

    name = ""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.snapshots_dir = os.path.join(self.root, "snapshots")
        os.makedirs(self.snapshots_dir, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._meta = MetaStore(os.path.join(self.root, "metadata.db"))

    # --- the interface ---------------------------------------------------

    def prepare(
        self, key: str, parent: str = "", labels: dict[str, str] | None = None
    ) -> list[Mount]:
        """A new writable (active) snapshot on top of ``parent``; its mounts."""
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str = "", labels: dict[str, str] | None = None) -> list[Mount]:
        """A new read-only snapshot of ``parent``; its mounts. It cannot be committed."""
        return self._create(Kind.VIEW, key, parent, labels)

    def mounts(self, key: str) -> list[Mount]:
        rec = self._meta.get(key)
        if rec.kind == Kind.COMMITTED:
            raise FailedPrecondition(f'mounts of snapshot "{key}": committed, not active')
        return self._mounts(rec, self._meta.chain(rec))

    def commit(self, name: str, key: str, labels: dict[str, str] | None = None) -> None:
        """Turn the active snapshot ``key`` into the committed ``name`` (``key`` goes away).

        ``labels``, when given, replace the active snapshot's labels.
        """
        rec = self._meta.get(key)
        if rec.kind != Kind.ACTIVE:
            raise FailedPrecondition(f'commit snapshot "{key}": not active ({rec.kind})')
        u = disk_usage(self._own_dir(rec.id))
        self._meta.commit(
            name, key, None if labels is None else _set_labels(labels), u.size, u.inodes
        )

    def remove(self, key: str) -> None:
        """Remove a snapshot; refused (FailedPrecondition) while it has children."""
        rec = self._meta.remove(key)
        self._discard(str(rec.id))

    def stat(self, key: str) -> Info:
        return _info(self._meta.get(key))

    def update(self, info: Info, fieldpaths: Iterable[str] | None = None) -> Info:
        """Update labels of ``info.name``: all of them (no fieldpaths, or ``labels``),
        or the ones named ``labels.<key>`` (absent from ``info.labels`` or empty:
        deleted). Labels are checked as at creation; an empty value is no label."""
        paths = list(fieldpaths or [])
        with self._meta.write():
            rec = self._meta.get(info.name)
            labels = update_labels(rec.labels, info.labels, paths, f'update snapshot "{info.name}"')
            return _info(self._meta.set_labels(info.name, labels))

    def usage(self, key: str) -> Usage:
        rec = self._meta.get(key)
        if rec.kind == Kind.COMMITTED and rec.size is not None:
            return Usage(size=rec.size, inodes=rec.inodes or 0)
        return disk_usage(self._own_dir(rec.id))

    def walk(self, filters: Iterable[str] | None = None) -> Iterator[Info]:
        match = matcher(filters or [])
        for rec in self._meta.all():
            info = _info(rec)
            if match(snapshot_getter(info)):
                yield info

    def cleanup(self) -> None:
        """Repair after a crash: drop directories with no record and records with no directory."""
        doomed: list[str] = []
        with self._meta.write():
            records = self._meta.all()
            present = {
                rec.id
                for rec in records
                if os.path.isdir(os.path.join(self.snapshots_dir, str(rec.id)))
            }
            broken = {rec.id for rec in records if rec.id not in present}
            children: dict[int, list[int]] = {}
            for rec in records:
                if rec.parent_id is not None:
                    children.setdefault(rec.parent_id, []).append(rec.id)
            stack = list(broken)
            while stack:
                for c in children.get(stack.pop(), []):
                    if c not in broken:
                        broken.add(c)
                        stack.append(c)
            # children before parents (the parent column references the parent)
            self._meta.delete_ids(sorted(broken, reverse=True))
            kept = {rec.id for rec in records} - broken
            for name in os.listdir(self.snapshots_dir):
                path = os.path.join(self.snapshots_dir, name)
                if name.isdigit():
                    if int(name) in kept:
                        continue
                elif name.startswith("new-"):
                    if _in_use(path):
                        continue
                elif not name.startswith("rm-"):
                    continue
                doomed.append(self._hide(name))
        for path in doomed:
            _rmtree(path)

    def close(self) -> None:
        self._meta.close()

    def __enter__(self) -> Snapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- for the subclasses -------------------------------------------------

    def _populate(self, path: str, kind: Kind, parent: Record | None) -> None:
        raise NotImplementedError

    def _own_dir(self, sid: int) -> str:
        raise NotImplementedError

    def _mounts(self, rec: Record, chain: list[int]) -> list[Mount]:
        raise NotImplementedError

    def _dir(self, sid: int) -> str:
        return os.path.join(self.snapshots_dir, str(sid))

    # --- create and remove, crash-safe ----------------------------------------

    def _create(
        self, kind: Kind, key: str, parent: str, labels: dict[str, str] | None
    ) -> list[Mount]:
        if not key:
            raise InvalidArgument(f"{kind} snapshot: empty key")
        # Fail early (before any copying); checked again under the lock.
        if self._meta.find(key) is not None:
            raise AlreadyExists(f'{kind} snapshot "{key}": already exists')
        prec = self._meta.find(parent) if parent else None
        if parent and prec is None:
            raise NotFound(f'{kind} snapshot "{key}": parent "{parent}": not found')
        if prec is not None and prec.kind != Kind.COMMITTED:
            raise FailedPrecondition(f'{kind} snapshot "{key}": parent "{parent}" is not committed')
        tmp = tempfile.mkdtemp(prefix="new-", dir=self.snapshots_dir)
        lock = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        renamed = ""
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            os.chmod(tmp, 0o755)
            try:
                self._populate(tmp, kind, prec)
            except OSError as e:
                raise SystemFailure(f'{kind} snapshot "{key}": {e}') from e
            with self._meta.write():
                rec = self._meta.create(key, kind, parent, _set_labels(labels))
                final = self._dir(rec.id)
                if os.path.lexists(final):
                    # left by a crash before its record was committed; the id is ours now
                    _rmtree(self._hide(str(rec.id)))
                os.rename(tmp, final)
                try:
                    fsync_dir(self.snapshots_dir)
                    mounts = self._mounts(rec, self._meta.chain(rec))
                except BaseException:
                    os.rename(final, tmp)  # back, while the id is still ours
                    raise
                renamed = final
        except BaseException:
            # After a failed COMMIT the directory has no record: cleanup() takes it.
            if not renamed:
                _rmtree(tmp)
            raise
        finally:
            os.close(lock)
        return mounts

    def _hide(self, name: str) -> str:
        """Rename a directory out of the way (``rm-<name>``) and return its new path."""
        src = os.path.join(self.snapshots_dir, name)
        if name.startswith("rm-"):
            return src
        dst = tempfile.mkdtemp(prefix=f"rm-{name}-", dir=self.snapshots_dir)
        try:
            os.rename(src, dst)  # replaces the empty placeholder
        except FileNotFoundError:
            os.rmdir(dst)
            return ""
        return dst

    def _discard(self, name: str) -> None:
        path = self._hide(name)
        if path:
            _rmtree(path)


def _in_use(path: str) -> bool:
    """True if another create holds this new-* directory's lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _rmtree(path: str) -> None:
    if not path:
        return

    def onerror(func: object, p: str, exc: object) -> None:
        # a read-only directory (a copied image can have them) blocks its entries
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)


def new(kind: str, root: str) -> Snapshotter:
    """The snapshotter named ``kind`` ("overlayfs" or "native") on ``root``."""
    if kind in ("overlayfs", "overlay"):
        from dockyard.image.snapshots.overlay import OverlaySnapshotter

        return OverlaySnapshotter(root)
    if kind == "native":
        from dockyard.image.snapshots.native import NativeSnapshotter

        return NativeSnapshotter(root)
    raise InvalidArgument(f"snapshotter {kind!r}: unknown (overlayfs, native)")
