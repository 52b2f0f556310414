"""Garbage collection of blobs, snapshots and ingests: mark from the roots, sweep the rest.

containerd's model (``docs/garbage-collection.md``). The roots are:

- every image record of every namespace: its target, and through it the
  whole graph (index -> manifests -> config and layers; children that are
  missing are fine), plus the snapshots unpacked from it: for each config's
  ``rootfs.diff_ids``, the snapshots ``<namespace>/<chainID>`` (unpack's
  names) in every snapshotter;
- what an unexpired lease holds (``leases.py``); expired leases are deleted;
- blobs and snapshots labelled ``containerd.io/gc.root`` (or ``dockyard.io/gc.root``);
- ``extra_roots``: what a caller knows is in use; ``mark_roots(marker)`` for
  what it knows per namespace (the supervisor's containers: their snapshots
  and labels).

From every kept resource the references in its labels are followed:
``containerd.io/gc.ref.content`` and ``containerd.io/gc.ref.content.<any>``
(or ``.../<any>``; a digest), ``containerd.io/gc.ref.snapshot.<snapshotter>`` (optionally
``.../<any>``; a key, tried in the referrer's namespace first). A kept
snapshot keeps its parent chain. A lease labelled ``containerd.io/gc.flat``
keeps what it lists but not what their labels refer to.

The sweep deletes every other blob, removes every other snapshot, children
before parents (active ones too: only a lease or a container keeps those),
and aborts ingests that no lease holds once they expire: ``ingest_age``
after their last write, or when the caller's ``ingest_expires`` says.

Namespaced content (the supervisor's, as containerd's metadata): with
``records`` (namespace -> blob, with that namespace's labels) a blob is kept
per namespace through that namespace's labels; a record nothing keeps is
removed, and a blob leaves the store once no namespace has a record of it.
Snapshot references from a namespace then mean that namespace's snapshots
only (``<namespace>/<key>``).

A gc must not run while a pull is between fetching and recording: pull and
unpack hold ``gc_lock(root, shared=True)`` and ``collect`` takes the same
lock exclusively, so it waits for them (and they for it).

API summary::

    with gc_lock(root, shared=True):            # around a pull: fetch, record, unpack
        ...
    report = collect(content, images, {"overlayfs": snapshotter}, leases,
                     dry_run=False, ingest_age=timedelta(hours=24),
                     extra_roots=[Resource("snapshots/overlayfs", key)])
    report.blobs, report.bytes, report.snapshots, report.ingests, report.leases
    collect(..., records=namespaced, mark_roots=lambda m: m.resource(res, namespace),
            ingest_ref=lambda namespace, ref: f"{namespace}/{ref}")   # the supervisor
    report.records                                  # (namespace, digest) taken out
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from dockyard.errors import DockyardError, FailedPrecondition, NotFound
from dockyard.image.content import ContentStore
from dockyard.image.content import Info as BlobInfo
from dockyard.image.images import ImageStore
from dockyard.image.leases import LeaseStore, Resource
from dockyard.image.snapshots import Info as SnapshotInfo
from dockyard.image.snapshots import Snapshotter
from dockyard.image.unpack import chain_ids
from dockyard.spec.image import MAX_MANIFEST_SIZE

ROOT_LABELS = ("containerd.io/gc.root", "dockyard.io/gc.root")
_REF_PREFIXES = ("containerd.io/gc.ref.", "dockyard.io/gc.ref.")
DEFAULT_INGEST_AGE = timedelta(hours=24)
LOCK_FILE = "gc.lock"


class GCLocked(FailedPrecondition):
    """The gc lock was not had in time; gRPC UNAVAILABLE, so a caller may retry."""

    grpc_code = "UNAVAILABLE"
    http_status = 503


@contextlib.contextmanager
def gc_lock(root: str, *, shared: bool = True, timeout: float | None = None) -> Iterator[None]:
    """Hold ``<root>/gc.lock``: shared for a pull or unpack, exclusive for a gc.

    Waits for the lock (forever, or ``timeout`` seconds, then ``GCLocked``).
    The lock is an ``flock(2)`` on a descriptor of our own, so it also works
    between threads of one process, and goes away with a killed process.
    """
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if timeout is None:
            fcntl.flock(fd, op)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, op | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        mode = "shared" if shared else "exclusive"
                        raise GCLocked(
                            f"gc lock {path}: not had ({mode}) within {timeout:g} s"
                        ) from None
                    time.sleep(0.02)
        yield
    finally:
        os.close(fd)


@dataclass
class Report:
    """What a gc removed (or, in a dry run, would remove)."""

    dry_run: bool = False
    blobs: list[str] = field(default_factory=list)
    records: list[tuple[str, str]] = field(default_factory=list)  # namespaced: (namespace, digest)
    bytes: int = 0
    snapshots: list[tuple[str, str]] = field(default_factory=list)  # (snapshotter, key)
    ingests: list[str] = field(default_factory=list)
    leases: list[tuple[str, str]] = field(default_factory=list)  # expired: (namespace, id)


def _namespace_of(key: str) -> str:
    ns, sep, _ = key.partition("/")
    return ns if sep else ""


def _label_refs(labels: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """``(kind, value)`` for each gc.ref label: kind "content" or a snapshotter's name."""
    for key, value in labels.items():
        if not value:
            continue
        for prefix in _REF_PREFIXES:
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            if rest == "content" or rest.startswith(("content.", "content/")):
                yield "content", value
            elif rest.startswith("snapshot."):
                snapshotter = rest[len("snapshot.") :].split("/", 1)[0]
                if snapshotter:
                    yield "snapshots/" + snapshotter, value


def _is_root(labels: Mapping[str, str]) -> bool:
    return any(labels.get(k) for k in ROOT_LABELS)


BlobKey = tuple[str, str]
"""A blob as the marker knows it: (namespace, digest); the namespace is ""
when the store's blobs and labels are shared by every namespace."""


class BlobRecords(Protocol):
    """Which namespace has which blob, with its labels there (the supervisor's
    namespaced content, over the one backend store)."""

    def walk_all(self) -> Iterable[tuple[str, BlobInfo]]: ...

    def remove(self, namespace: str, digest: str) -> None: ...


class Marker:
    """The mark phase: everything reachable from the roots.

    ``namespaced``: blobs are looked up per namespace (``blobs`` keyed by
    (namespace, digest)) and a snapshot key ``k`` referred to from a
    namespace is that namespace's ``<namespace>/k`` only.
    """

    def __init__(
        self,
        content: ContentStore,
        blobs: Mapping[BlobKey, BlobInfo],
        snapshots: Mapping[str, Mapping[str, SnapshotInfo]],
        *,
        namespaced: bool = False,
    ) -> None:
        self.content = content
        self.blobs = blobs
        self.snapshots = snapshots
        self.namespaced = namespaced
        self.kept_blobs: set[BlobKey] = set()
        self.kept_snapshots: set[tuple[str, str]] = set()
        self._seen: set[tuple[str, str, str]] = set()
        self._followed: set[tuple[str, str]] = set()  # snapshots whose labels were followed
        # content nodes: (digest, namespace, role); role is "image" (an index or
        # a manifest: read it), "config" (read its diff_ids), "blob" (labels
        # only) or "flat" (keep, follow nothing)
        self._queue: deque[tuple[str, str, str]] = deque()

    # -- roots -------------------------------------------------------------

    def blob(self, digest: str, namespace: str = "", role: str = "blob") -> None:
        self._queue.append((digest, namespace, role))

    def snapshot(self, snapshotter: str, key: str, namespace: str = "", flat: bool = False) -> None:
        """Keep ``key`` and its parents. From a namespace, ``key`` is tried as
        ``<namespace>/<key>`` first (namespaced: only so); with no namespace
        it is the snapshotter's own key."""
        infos = self.snapshots.get(snapshotter)
        if not infos:
            return
        candidates = [key]
        if self.namespaced and namespace:
            candidates = [f"{namespace}/{key}"]
        elif namespace and not key.startswith(namespace + "/"):
            candidates.insert(0, f"{namespace}/{key}")
        for k in candidates:
            if k in infos:
                self._keep_snapshot(snapshotter, k, flat)
                return

    def resource(self, res: Resource, namespace: str = "", flat: bool = False) -> None:
        if res.type == "content":
            self.blob(res.id, namespace, "flat" if flat else "blob")
        elif res.snapshotter:
            self.snapshot(res.snapshotter, res.id, namespace, flat)

    def labels(self, labels: Mapping[str, str], namespace: str) -> None:
        for kind, value in _label_refs(labels):
            if kind == "content":
                self.blob(value, namespace)
            else:
                self.snapshot(kind[len("snapshots/") :], value, namespace)

    # -- the walk ----------------------------------------------------------

    def _keep_snapshot(self, snapshotter: str, key: str, flat: bool) -> None:
        infos = self.snapshots[snapshotter]
        while key:
            node = (snapshotter, key)
            info = infos.get(key)
            if info is None or (node in self.kept_snapshots and (flat or node in self._followed)):
                return
            self.kept_snapshots.add(node)
            if not flat:
                self._followed.add(node)
                self.labels(info.labels, _namespace_of(key))
            key = info.parent

    def run(self) -> None:
        while self._queue:
            node = self._queue.popleft()
            if node in self._seen:
                continue
            self._seen.add(node)
            digest, namespace, role = node
            key = (namespace if self.namespaced else "", digest)
            info = self.blobs.get(key)
            if info is None:
                continue  # a missing child: nothing to keep
            self.kept_blobs.add(key)
            if role == "flat":
                continue
            self.labels(info.labels, namespace)
            if role == "image":
                self._image(digest, namespace)
            elif role == "config":
                self._config(digest, namespace)

    def _json(self, digest: str) -> dict[str, object] | None:
        try:  # larger than a manifest may be: not one (read_bytes refuses it)
            obj = json.loads(self.content.read_bytes(digest, max_size=MAX_MANIFEST_SIZE))
        except (DockyardError, OSError, ValueError):
            return None
        return obj if isinstance(obj, dict) else None

    @staticmethod
    def _digests(value: object) -> Iterator[str]:
        items = value if isinstance(value, list) else [value]
        for d in items:
            if isinstance(d, dict) and isinstance(d.get("digest"), str):
                yield d["digest"]

    def _image(self, digest: str, namespace: str) -> None:
        """An index or a manifest, told apart by shape (some lack ``mediaType``)."""
        obj = self._json(digest)
        if obj is None:
            return
        for child in self._digests(obj.get("manifests")):
            self.blob(child, namespace, "image")
        for child in self._digests(obj.get("config")):
            self.blob(child, namespace, "config")
        for child in self._digests(obj.get("layers")):
            self.blob(child, namespace, "blob")

    def _config(self, digest: str, namespace: str) -> None:
        obj = self._json(digest)
        rootfs = obj.get("rootfs") if obj else None
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
            return
        prefix = f"{namespace}/" if namespace and not self.namespaced else ""
        for chain in chain_ids(diff_ids):
            for snapshotter in self.snapshots:
                self.snapshot(snapshotter, prefix + chain, namespace if self.namespaced else "")


def _children_first(infos: Mapping[str, SnapshotInfo], keys: Iterable[str]) -> list[str]:
    """``keys`` ordered so that every snapshot comes before its parent."""
    depth: dict[str, int] = {}

    def depth_of(key: str) -> int:
        chain = []
        while key and key not in depth and key in infos:
            chain.append(key)
            key = infos[key].parent
        d = depth.get(key, -1) if key else -1
        for k in reversed(chain):
            d += 1
            depth[k] = d
        return d

    return sorted(keys, key=lambda k: (-depth_of(k), k))


def collect(
    content: ContentStore,
    images: ImageStore,
    snapshotters: Mapping[str, Snapshotter],
    leases: LeaseStore | None = None,
    *,
    dry_run: bool = False,
    ingest_age: timedelta = DEFAULT_INGEST_AGE,
    extra_roots: Iterable[Resource] = (),
    records: BlobRecords | None = None,
    mark_roots: Callable[[Marker], None] | None = None,
    ingest_ref: Callable[[str, str], str] | None = None,
    ingest_expires: Callable[[str], datetime | None] | None = None,
    root: str | None = None,
    lock: bool = True,
    lock_timeout: float | None = None,
    now: datetime | None = None,
) -> Report:
    """Mark from the roots and sweep the rest; see the module docstring.

    ``snapshotters`` maps each snapshotter's name (``overlayfs``, ``native``:
    the name ``gc.ref.snapshot.<name>`` labels and lease resources use) to it.
    ``root`` is the store's directory, whose ``gc.lock`` is held exclusively
    throughout (default: the content store's parent, the CLI's layout);
    ``lock=False`` is for a caller that already holds it.

    The supervisor's way (containerd's): ``records`` says which namespace has
    which blob, with its labels there; the marker is then namespaced, a
    record nothing keeps is removed, and a blob leaves ``content`` once no
    record is left. ``mark_roots(marker)`` marks what else is in use (the
    containers); ``ingest_ref(namespace, ref)`` names the backend ingest of a
    lease's ``ingests`` resource; ``ingest_expires(ref)`` says from when a
    backend ingest that no lease holds may go (containerd's: at once for
    one written under a lease, 24 hours after it was opened otherwise), or
    None when the caller does not know it (then ``ingest_age`` after its
    last write, as without the argument).
    """
    run = functools.partial(
        _collect,
        content,
        images,
        snapshotters,
        leases,
        dry_run=dry_run,
        ingest_age=ingest_age,
        extra_roots=extra_roots,
        records=records,
        mark_roots=mark_roots,
        ingest_ref=ingest_ref or (lambda namespace, ref: ref),
        ingest_expires=ingest_expires or (lambda ref: None),
        now=now or datetime.now(UTC),
    )
    if not lock:
        return run()
    lock_root = root if root is not None else os.path.dirname(os.path.abspath(content.root))
    with gc_lock(lock_root, shared=False, timeout=lock_timeout):
        return run()


def _collect(
    content: ContentStore,
    images: ImageStore,
    snapshotters: Mapping[str, Snapshotter],
    leases: LeaseStore | None,
    *,
    dry_run: bool,
    ingest_age: timedelta,
    extra_roots: Iterable[Resource],
    records: BlobRecords | None,
    mark_roots: Callable[[Marker], None] | None,
    ingest_ref: Callable[[str, str], str],
    ingest_expires: Callable[[str], datetime | None],
    now: datetime,
) -> Report:
    report = Report(dry_run=dry_run)
    blobs: dict[BlobKey, BlobInfo]
    if records is None:
        blobs = {("", info.digest): info for info in content.walk()}
    else:
        blobs = {(ns, info.digest): info for ns, info in records.walk_all()}
    snapshots = {name: {i.name: i for i in s.walk()} for name, s in snapshotters.items()}
    mark = Marker(content, blobs, snapshots, namespaced=records is not None)

    for namespace, image in images.walk_all():
        mark.blob(image.target.digest, namespace, "image")
        mark.labels(image.labels, namespace)

    leased_ingests: set[str] = set()
    if leases is not None:
        for namespace, held in leases.walk_all():
            if held.expired(now):
                report.leases.append((namespace, held.id))
                continue
            try:
                held_resources = leases.resources(namespace, held.id)
            except NotFound:
                continue  # deleted since it was listed: it holds nothing any more
            for res in held_resources:
                if res.type == "ingests":
                    leased_ingests.add(ingest_ref(namespace, res.id))
                else:
                    mark.resource(res, namespace, flat=held.flat)

    for (namespace, digest), info in blobs.items():
        if _is_root(info.labels):
            mark.blob(digest, namespace)
    for name, infos in snapshots.items():
        for key, snap in infos.items():
            if _is_root(snap.labels):
                mark.snapshot(name, key)
    for res in extra_roots:
        if res.type == "ingests":
            leased_ingests.add(res.id)
        else:
            mark.resource(res)
    if mark_roots is not None:
        mark_roots(mark)
    mark.run()

    # -- sweep -------------------------------------------------------------
    # digest -> size, as the walk of the store found them (a digest's size cannot change)
    doomed_blobs: dict[str, int]
    if records is None:
        doomed_blobs = {d: blobs[(ns, d)].size for ns, d in set(blobs) - mark.kept_blobs}
    else:
        for namespace, digest in sorted(set(blobs) - mark.kept_blobs):
            if not dry_run:
                with contextlib.suppress(NotFound):
                    records.remove(namespace, digest)
            report.records.append((namespace, digest))
        # a blob stays while any namespace keeps its record
        kept = {digest for _, digest in mark.kept_blobs}
        doomed_blobs = {d: size for d, size in content.sizes() if d not in kept}
    for digest, size in sorted(doomed_blobs.items()):
        # A blob deleted by someone else since the walk is not reported by a real run
        # (delete says NotFound); a dry run reports what the walk found, what a gc would
        # have removed then: checking again would only narrow a race it cannot close.
        if not dry_run:
            try:
                content.delete(digest)
            except NotFound:
                continue
        report.blobs.append(digest)
        report.bytes += size

    for name, infos in snapshots.items():
        doomed = [k for k in infos if (name, k) not in mark.kept_snapshots]
        for key in _children_first(infos, doomed):
            if not dry_run:
                try:
                    snapshotters[name].remove(key)
                except NotFound:
                    continue
                except FailedPrecondition:
                    continue  # a child appeared meanwhile (not under the gc lock): keep it
            report.snapshots.append((name, key))

    for status in content.statuses():
        expires = ingest_expires(status.ref)
        if expires is None:
            expires = status.updated_at + ingest_age
        if status.ref in leased_ingests or expires > now:
            continue
        if not dry_run:
            try:
                content.abort(status.ref)
            except (NotFound, FailedPrecondition):
                continue  # gone, or a writer holds it: it is in use
        report.ingests.append(status.ref)

    if leases is not None and not dry_run:
        for namespace, lease_id in report.leases:
            with contextlib.suppress(NotFound):
                leases.delete(namespace, lease_id)
    return report
