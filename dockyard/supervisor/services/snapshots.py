"""containerd.services.snapshots.v1.Snapshots: each snapshotter's snapshots, per namespace.

Snapshot ``k`` of namespace ``ns`` is ``ns/k`` in the snapshotter
(``daemon.snapshot_key``, the names ``dockyard.image.unpack`` uses); the
namespace prefix never shows on the wire, in names, parents or errors. Rules
as containerd's metadata snapshotter (``metadata/snapshot.go``):

- ``Prepare``/``View`` refuse an existing key, and, when the labels name
  a target (``containerd.io/snapshot.ref``) that exists already, answer
  ALREADY_EXISTS so an unpack skips the layer;
- ``Commit`` takes the commit's labels (not the active snapshot's);
- under a lease (``containerd-lease``) a prepared or committed snapshot is
  added to it, and a committed or removed key is taken off it;
- ``Prepare``, ``Commit`` and ``Remove`` publish ``/snapshot/...`` events;
  a removal schedules garbage collection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc
from google.protobuf import empty_pb2

from dockyard.api import topics
from dockyard.api.convert import mount_to_proto, to_timestamp
from dockyard.api.events import snapshot_pb2 as events
from dockyard.api.services.snapshots.v1 import snapshots_pb2 as pb
from dockyard.api.services.snapshots.v1 import snapshots_pb2_grpc
from dockyard.api.types import mount_pb2
from dockyard.errors import AlreadyExists, DockyardError, InvalidArgument, NotFound
from dockyard.filters import matcher
from dockyard.image.content import validate_labels
from dockyard.image.gc import gc_lock
from dockyard.image.leases import Resource
from dockyard.image.snapshots import Info, Kind, Snapshotter, snapshot_getter
from dockyard.supervisor.daemon import snapshot_key
from dockyard.supervisor.grpcutil import batches, namespace, rpc
from dockyard.supervisor.services.leases import lease_of

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor

TARGET_LABEL = "containerd.io/snapshot.ref"
_KINDS = {Kind.VIEW: pb.VIEW, Kind.ACTIVE: pb.ACTIVE, Kind.COMMITTED: pb.COMMITTED}


class Namespaced:
    """One namespace's view of one snapshotter: keys without the ``ns/`` prefix."""

    def __init__(self, name: str, sn: Snapshotter, ns: str) -> None:
        self.name = name
        self.sn = sn
        self.ns = ns
        self.prefix = snapshot_key(ns, "")

    def key(self, key: str) -> str:
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        return snapshot_key(self.ns, key)

    def local(self, info: Info) -> Info:
        return Info(
            kind=info.kind,
            name=info.name[len(self.prefix) :],
            parent=info.parent[len(self.prefix) :] if info.parent else "",
            labels=info.labels,
            created=info.created,
            updated=info.updated,
        )

    def find(self, key: str) -> Info | None:
        try:
            return self.sn.stat(self.key(key))
        except NotFound:
            return None

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """The snapshotter's errors, with our namespace's prefix taken out of the keys."""
        try:
            yield
        except DockyardError as e:
            text = str(e).replace(f'"{self.prefix}', '"').replace(f"'{self.prefix}", "'")
            if text == str(e):
                raise
            try:
                local = type(e)(text)
            except TypeError:  # an error type made differently: keep it as it is
                raise e from None
            raise local from None

    def walk(self) -> Iterator[Info]:
        for info in self.sn.walk():
            if info.name.startswith(self.prefix):
                yield self.local(info)


def message(info: Info) -> pb.Info:
    return pb.Info(
        name=info.name,
        parent=info.parent,
        kind=_KINDS[info.kind],
        created_at=to_timestamp(info.created),
        updated_at=to_timestamp(info.updated),
        labels=info.labels,
    )


class SnapshotsService(snapshots_pb2_grpc.SnapshotsServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def _view(self, name: str, context: grpc.ServicerContext) -> Namespaced:
        ns = namespace(context)
        if not name:
            raise InvalidArgument("snapshotter argument missing")
        if name not in self.sup.snapshotters:
            raise InvalidArgument(
                f"snapshotter {name!r}: not loaded ({', '.join(sorted(self.sup.snapshotters))})"
            )
        return Namespaced(name, self.sup.snapshotters[name], ns)

    def _lease(self, v: Namespaced, lease: str | None, key: str, add: bool) -> None:
        if not lease:
            return
        res = Resource(f"snapshots/{v.name}", key)
        if add:
            self.sup.leases.add_resource(v.ns, lease, res)
        else:
            with contextlib.suppress(NotFound):
                self.sup.leases.delete_resource(v.ns, lease, res)

    def _create(
        self,
        request: pb.PrepareSnapshotRequest | pb.ViewSnapshotRequest,
        context: grpc.ServicerContext,
        kind: Kind,
    ) -> tuple[Namespaced, list[mount_pb2.Mount]]:
        v = self._view(request.snapshotter, context)
        key, parent, labels = request.key, request.parent, dict(request.labels)
        validate_labels(labels)
        target = labels.get(TARGET_LABEL, "")
        if target and v.find(target) is not None:
            raise AlreadyExists(f"target snapshot {target!r}: already exists")
        if v.find(key) is not None:
            raise AlreadyExists(f"snapshot {key!r}: already exists")
        if parent and v.find(parent) is None:
            raise NotFound(f"parent snapshot {parent!r}: not found")
        lease = lease_of(context)
        self.sup.metadata.ensure_namespace(v.ns)
        create = v.sn.prepare if kind == Kind.ACTIVE else v.sn.view
        with gc_lock(self.sup.config.root, shared=True), v.errors():
            mounts = create(v.key(key), v.key(parent) if parent else "", labels)
            try:
                self._lease(v, lease, key, add=True)
            except BaseException:
                v.sn.remove(v.key(key))
                raise
        return v, [mount_to_proto(m) for m in mounts]

    @rpc
    def Prepare(
        self, request: pb.PrepareSnapshotRequest, context: grpc.ServicerContext
    ) -> pb.PrepareSnapshotResponse:
        v, mounts = self._create(request, context, Kind.ACTIVE)
        self.sup.events.publish(
            v.ns,
            topics.SNAPSHOT_PREPARE,
            events.SnapshotPrepare(key=request.key, parent=request.parent),
        )
        return pb.PrepareSnapshotResponse(mounts=mounts)

    @rpc
    def View(
        self, request: pb.ViewSnapshotRequest, context: grpc.ServicerContext
    ) -> pb.ViewSnapshotResponse:
        return pb.ViewSnapshotResponse(mounts=self._create(request, context, Kind.VIEW)[1])

    @rpc
    def Mounts(self, request: pb.MountsRequest, context: grpc.ServicerContext) -> pb.MountsResponse:
        v = self._view(request.snapshotter, context)
        with v.errors():
            return pb.MountsResponse(
                mounts=[mount_to_proto(m) for m in v.sn.mounts(v.key(request.key))]
            )

    @rpc
    def Commit(
        self, request: pb.CommitSnapshotRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        v = self._view(request.snapshotter, context)
        name, key, labels = request.name, request.key, dict(request.labels)
        validate_labels(labels)
        if v.find(name) is not None:
            raise AlreadyExists(f"snapshot {name!r}: already exists")
        if v.find(key) is None:
            raise NotFound(f"snapshot {key!r}: not found")
        lease = lease_of(context)
        with gc_lock(self.sup.config.root, shared=True), v.errors():
            v.sn.commit(v.key(name), v.key(key), labels)
            self._lease(v, lease, name, add=True)
            self._lease(v, lease, key, add=False)
        self.sup.events.publish(
            v.ns, topics.SNAPSHOT_COMMIT, events.SnapshotCommit(key=key, name=name)
        )
        return empty_pb2.Empty()

    @rpc
    def Remove(
        self, request: pb.RemoveSnapshotRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        v = self._view(request.snapshotter, context)
        with v.errors():
            v.sn.remove(v.key(request.key))
        self._lease(v, lease_of(context), request.key, add=False)
        self.sup.events.publish(
            v.ns, topics.SNAPSHOT_REMOVE, events.SnapshotRemove(key=request.key)
        )
        self.sup.gc.schedule()
        return empty_pb2.Empty()

    @rpc
    def Stat(
        self, request: pb.StatSnapshotRequest, context: grpc.ServicerContext
    ) -> pb.StatSnapshotResponse:
        v = self._view(request.snapshotter, context)
        with v.errors():
            return pb.StatSnapshotResponse(info=message(v.local(v.sn.stat(v.key(request.key)))))

    @rpc
    def Update(
        self, request: pb.UpdateSnapshotRequest, context: grpc.ServicerContext
    ) -> pb.UpdateSnapshotResponse:
        v = self._view(request.snapshotter, context)
        info = Info(
            kind=Kind.COMMITTED, name=v.key(request.info.name), labels=dict(request.info.labels)
        )
        with v.errors():
            updated = v.sn.update(info, list(request.update_mask.paths))
        return pb.UpdateSnapshotResponse(info=message(v.local(updated)))

    @rpc
    def List(
        self, request: pb.ListSnapshotsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ListSnapshotsResponse]:
        v = self._view(request.snapshotter, context)
        match = matcher(request.filters)
        infos = (message(i) for i in v.walk() if match(snapshot_getter(i)))
        for batch in batches(infos):
            yield pb.ListSnapshotsResponse(info=batch)

    @rpc
    def Usage(self, request: pb.UsageRequest, context: grpc.ServicerContext) -> pb.UsageResponse:
        v = self._view(request.snapshotter, context)
        with v.errors():
            u = v.sn.usage(v.key(request.key))
        return pb.UsageResponse(size=u.size, inodes=u.inodes)

    @rpc
    def Cleanup(self, request: pb.CleanupRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        v = self._view(request.snapshotter, context)
        v.sn.cleanup()
        return empty_pb2.Empty()


def in_use(sup: Supervisor, ns: str) -> list[str]:
    """The snapshotters that still have snapshots of ``ns``."""
    return [
        f"snapshots/{name}"
        for name, sn in sorted(sup.snapshotters.items())
        if next(Namespaced(name, sn, ns).walk(), None) is not None
    ]


def register(server: grpc.Server, sup: Supervisor) -> None:
    snapshots_pb2_grpc.add_SnapshotsServicer_to_server(SnapshotsService(sup), server)
    sup.metadata.in_use_checks.append(lambda ns: in_use(sup, ns))
    sup.add_plugin("io.containerd.grpc.v1", "snapshots")
