"""containerd.services.containers.v1: container records.

A record is metadata only: the runtime (shim) to run it with and its
options, the OCI runtime spec (JSON in an Any), the snapshotter and key of
its rootfs, the image it came from, labels and extensions. Nothing runs
until a task is made from it (see ``tasks``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import Message

from dockyard.api import typeurl
from dockyard.api.convert import from_timestamp
from dockyard.api.services.containers.v1 import containers_pb2 as pb
from dockyard.api.services.containers.v1 import containers_pb2_grpc
from dockyard.client.rpc import Connection
from dockyard.client.wire import field_mask, label_paths, pack_any, unpack_any
from dockyard.errors import InvalidArgument

RUNC_V2 = "io.containerd.runc.v2"


@dataclass
class Runtime:
    """The shim (``io.containerd.runc.v2``) and its options (e.g. runc's ``Options``)."""

    name: str = RUNC_V2
    options: Message | None = None


@dataclass
class ContainerRecord:
    """A container as the daemon records it; ``spec`` is the runtime spec as a dict."""

    id: str
    runtime: Runtime = field(default_factory=Runtime)
    spec: dict[str, Any] | None = None
    image: str = ""
    snapshotter: str = ""
    snapshot_key: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Message] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


def _spec_from_any(value: any_pb2.Any) -> dict[str, Any] | None:
    if not value.type_url:
        return None
    if value.type_url != typeurl.SPEC:
        raise InvalidArgument(f"container spec: unexpected type {value.type_url!r}")
    spec = typeurl.unpack(value)
    if not isinstance(spec, dict):
        raise InvalidArgument("container spec: not a JSON object")
    return spec


def _message(value: any_pb2.Any) -> Message:
    found = unpack_any(value)
    return found if isinstance(found, Message) else value


def record_from_proto(msg: pb.Container) -> ContainerRecord:
    options = msg.runtime.options if msg.runtime.HasField("options") else None
    return ContainerRecord(
        id=msg.id,
        runtime=Runtime(msg.runtime.name, _message(options) if options is not None else None),
        spec=_spec_from_any(msg.spec),
        image=msg.image,
        snapshotter=msg.snapshotter,
        snapshot_key=msg.snapshot_key,
        labels=dict(msg.labels),
        extensions={k: _message(v) for k, v in msg.extensions.items()},
        created_at=from_timestamp(msg.created_at),
        updated_at=from_timestamp(msg.updated_at),
    )


def record_to_proto(record: ContainerRecord) -> pb.Container:
    msg = pb.Container(
        id=record.id,
        labels=dict(record.labels),
        image=record.image,
        snapshotter=record.snapshotter,
        snapshot_key=record.snapshot_key,
    )
    msg.runtime.name = record.runtime.name
    if record.runtime.options is not None:
        msg.runtime.options.CopyFrom(pack_any(record.runtime.options))
    if record.spec is not None:
        msg.spec.CopyFrom(typeurl.pack_json(typeurl.SPEC, record.spec))
    for key, value in record.extensions.items():
        msg.extensions[key].CopyFrom(pack_any(value))
    return msg


class ContainersService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = conn.stub(containers_pb2_grpc.ContainersStub)

    def get(self, id: str) -> ContainerRecord:
        resp = self._conn.call(self._stub.Get, pb.GetContainerRequest(id=id))
        return record_from_proto(resp.container)

    def list(self, *filters: str) -> list[ContainerRecord]:
        """Records matching any filter (``id==...``, ``image==...``, ``labels."k"``), or all."""
        resp = self._conn.call(self._stub.List, pb.ListContainersRequest(filters=list(filters)))
        return [record_from_proto(c) for c in resp.containers]

    def create(self, record: ContainerRecord) -> ContainerRecord:
        req = pb.CreateContainerRequest(container=record_to_proto(record))
        return record_from_proto(self._conn.call(self._stub.Create, req).container)

    def update(self, record: ContainerRecord, fields: Iterable[str] = ()) -> ContainerRecord:
        """Replace the record's mutable fields (only ``fields`` if given: ``labels``,
        ``labels.<k>``, ``spec``, ``image``, ``snapshotkey``, ``extensions.<k>``, ...)."""
        req = pb.UpdateContainerRequest(
            container=record_to_proto(record), update_mask=field_mask(fields)
        )
        return record_from_proto(self._conn.call(self._stub.Update, req).container)

    def set_labels(self, id: str, labels: Mapping[str, str]) -> dict[str, str]:
        """Set these labels (an empty value removes one); the record's labels after."""
        record = ContainerRecord(id=id, labels={k: v for k, v in labels.items() if v})
        return self.update(record, label_paths(labels)).labels

    def delete(self, id: str) -> None:
        self._conn.call(self._stub.Delete, pb.DeleteContainerRequest(id=id))
