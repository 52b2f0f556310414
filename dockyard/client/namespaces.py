"""containerd.services.namespaces.v1: the namespaces every other record lives in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dockyard.api.services.namespaces.v1 import namespace_pb2 as pb
from dockyard.api.services.namespaces.v1 import namespace_pb2_grpc
from dockyard.client.rpc import Connection
from dockyard.client.wire import field_mask, label_paths


@dataclass
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


def _from_proto(msg: pb.Namespace) -> Namespace:
    return Namespace(msg.name, dict(msg.labels))


class NamespacesService:
    """Create, list, label and delete namespaces (no namespace metadata needed)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = conn.stub(namespace_pb2_grpc.NamespacesStub)

    def create(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        req = pb.CreateNamespaceRequest(namespace=pb.Namespace(name=name, labels=labels or {}))
        return _from_proto(self._conn.call(self._stub.Create, req).namespace)

    def get(self, name: str) -> Namespace:
        return _from_proto(
            self._conn.call(self._stub.Get, pb.GetNamespaceRequest(name=name)).namespace
        )

    def list(self, filter: str = "") -> list[Namespace]:
        resp = self._conn.call(self._stub.List, pb.ListNamespacesRequest(filter=filter))
        return [_from_proto(n) for n in resp.namespaces]

    def set_labels(self, name: str, labels: Mapping[str, str]) -> dict[str, str]:
        """Set these labels (an empty value removes one); the namespace's labels after."""
        req = pb.UpdateNamespaceRequest(
            namespace=pb.Namespace(name=name, labels={k: v for k, v in labels.items() if v}),
            update_mask=field_mask(label_paths(labels)),
        )
        self._conn.call(self._stub.Update, req)
        # containerd answers an update with an empty message: ask again
        return self.labels(name)

    def labels(self, name: str) -> dict[str, str]:
        return self.get(name).labels

    def delete(self, name: str) -> None:
        """Delete an empty namespace; FailedPrecondition while it holds anything."""
        self._conn.call(self._stub.Delete, pb.DeleteNamespaceRequest(name=name))
