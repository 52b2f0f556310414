"""containerd.services.snapshots.v1: one snapshotter's snapshots, by key.

A snapshot is *active* (prepared, writable, to be committed), a *view*
(read-only) or *committed* (immutable, a parent of others). ``prepare`` and
``view`` answer with the mounts that make the snapshot a filesystem; the
caller (or the shim, for a task's rootfs) mounts them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from dockyard.api.convert import from_timestamp
from dockyard.api.services.snapshots.v1 import snapshots_pb2 as pb
from dockyard.api.services.snapshots.v1 import snapshots_pb2_grpc
from dockyard.client.rpc import Connection
from dockyard.client.wire import field_mask, label_paths, mounts_from_proto
from dockyard.image.snapshots import Usage
from dockyard.spec.mount import Mount

DEFAULT_SNAPSHOTTER = "overlayfs"


class Kind(enum.StrEnum):
    UNKNOWN = "unknown"
    VIEW = "view"
    ACTIVE = "active"
    COMMITTED = "committed"


_KINDS = {
    pb.UNKNOWN: Kind.UNKNOWN,
    pb.VIEW: Kind.VIEW,
    pb.ACTIVE: Kind.ACTIVE,
    pb.COMMITTED: Kind.COMMITTED,
}
_TO_KIND = {v: k for k, v in _KINDS.items()}


@dataclass
class SnapshotInfo:
    name: str
    kind: Kind
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


def _info(msg: pb.Info) -> SnapshotInfo:
    return SnapshotInfo(
        name=msg.name,
        kind=_KINDS.get(msg.kind, Kind.UNKNOWN),
        parent=msg.parent,
        labels=dict(msg.labels),
        created_at=from_timestamp(msg.created_at),
        updated_at=from_timestamp(msg.updated_at),
    )


class SnapshotsService:
    """The snapshots of snapshotter ``name`` (``overlayfs``, ``native``)."""

    def __init__(self, conn: Connection, name: str = DEFAULT_SNAPSHOTTER) -> None:
        self._conn = conn
        self.name = name
        self._stub = conn.stub(snapshots_pb2_grpc.SnapshotsStub)

    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new active snapshot ``key`` on top of committed ``parent`` (none: empty)."""
        req = pb.PrepareSnapshotRequest(
            snapshotter=self.name, key=key, parent=parent, labels=labels or {}
        )
        return mounts_from_proto(self._conn.call(self._stub.Prepare, req).mounts)

    def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new read-only view ``key`` of committed ``parent``."""
        req = pb.ViewSnapshotRequest(
            snapshotter=self.name, key=key, parent=parent, labels=labels or {}
        )
        return mounts_from_proto(self._conn.call(self._stub.View, req).mounts)

    def mounts(self, key: str) -> list[Mount]:
        req = pb.MountsRequest(snapshotter=self.name, key=key)
        return mounts_from_proto(self._conn.call(self._stub.Mounts, req).mounts)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Commit active snapshot ``key`` as ``name``; ``key`` is gone after."""
        req = pb.CommitSnapshotRequest(
            snapshotter=self.name, name=name, key=key, labels=labels or {}
        )
        self._conn.call(self._stub.Commit, req)

    def remove(self, key: str) -> None:
        """Remove a snapshot; FailedPrecondition while others have it as parent."""
        self._conn.call(self._stub.Remove, pb.RemoveSnapshotRequest(snapshotter=self.name, key=key))

    def stat(self, key: str) -> SnapshotInfo:
        req = pb.StatSnapshotRequest(snapshotter=self.name, key=key)
        return _info(self._conn.call(self._stub.Stat, req).info)

    def update(self, info: SnapshotInfo, fields: Iterable[str] = ()) -> SnapshotInfo:
        """Update a snapshot's labels (only ``fields`` such as ``labels.<k>`` if given)."""
        msg = pb.Info(name=info.name, kind=_TO_KIND[info.kind], parent=info.parent)
        msg.labels.update(info.labels)
        req = pb.UpdateSnapshotRequest(
            snapshotter=self.name, info=msg, update_mask=field_mask(fields)
        )
        return _info(self._conn.call(self._stub.Update, req).info)

    def set_labels(self, key: str, labels: Mapping[str, str]) -> dict[str, str]:
        """Set these labels (an empty value removes one); the snapshot's labels after."""
        kept = {k: v for k, v in labels.items() if v}
        info = SnapshotInfo(name=key, kind=Kind.UNKNOWN, labels=kept)
        return self.update(info, label_paths(labels)).labels

    def list(self, *filters: str) -> list[SnapshotInfo]:
        """Snapshots matching any filter (``parent==...``, ``kind==committed``), or all."""
        req = pb.ListSnapshotsRequest(snapshotter=self.name, filters=list(filters))
        return [_info(i) for resp in self._conn.stream(self._stub.List, req) for i in resp.info]

    def usage(self, key: str) -> Usage:
        resp = self._conn.call(self._stub.Usage, pb.UsageRequest(snapshotter=self.name, key=key))
        return Usage(size=resp.size, inodes=resp.inodes)

    def cleanup(self) -> None:
        """Let the snapshotter free what no snapshot uses any more."""
        self._conn.call(self._stub.Cleanup, pb.CleanupRequest(snapshotter=self.name))
