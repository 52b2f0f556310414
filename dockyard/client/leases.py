"""containerd.services.leases.v1: leases keep what a client is working on from
garbage collection until it is referenced by a record (or the lease ends).

A lease made by :meth:`LeasesService.create` without an id gets a random one
and, unless told otherwise, the ``containerd.io/gc.expire`` label 24 hours
ahead, as the Go client's ``WithLease`` default (``leases.WithRandomID``,
``leases.WithExpiration(24h)``): a client that dies leaves nothing forever.
"""

from __future__ import annotations

import base64
import builtins
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from dockyard.api.convert import from_timestamp
from dockyard.api.services.leases.v1 import leases_pb2 as pb
from dockyard.api.services.leases.v1 import leases_pb2_grpc
from dockyard.client.rpc import Connection

# A lease and a resource are the image library's types, as an image record
# is: the client and the lease store share them, and the expiry label.
from dockyard.image.leases import DEFAULT_EXPIRE, EXPIRE_LABEL, Lease, Resource, format_time

__all__ = ["DEFAULT_EXPIRE", "Lease", "LeasesService", "Resource", "random_id"]


def random_id() -> str:
    """A lease id like the Go client's: the time and random bytes, URL-safe."""
    raw = time.time_ns().to_bytes(8, "big") + os.urandom(8)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _from_proto(msg: pb.Lease) -> Lease:
    return Lease(msg.id, dict(msg.labels), from_timestamp(msg.created_at))


class LeasesService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = conn.stub(leases_pb2_grpc.LeasesStub)

    def create(
        self,
        id: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        expire: timedelta | None = DEFAULT_EXPIRE,
    ) -> Lease:
        """A new lease (random id if none given), ending after ``expire`` if not None."""
        all_labels = dict(labels or {})
        if expire is not None and EXPIRE_LABEL not in all_labels:
            all_labels[EXPIRE_LABEL] = format_time(datetime.now(UTC) + expire)
        req = pb.CreateRequest(id=id or random_id(), labels=all_labels)
        return _from_proto(self._conn.call(self._stub.Create, req).lease)

    def delete(self, id: str, *, sync: bool = False) -> None:
        """End a lease; with ``sync`` the daemon collects garbage before answering."""
        self._conn.call(self._stub.Delete, pb.DeleteRequest(id=id, sync=sync))

    def list(self, *filters: str) -> list[Lease]:
        resp = self._conn.call(self._stub.List, pb.ListRequest(filters=list(filters)))
        return [_from_proto(lease) for lease in resp.leases]

    def add_resource(self, id: str, resource: Resource) -> None:
        req = pb.AddResourceRequest(id=id, resource=pb.Resource(id=resource.id, type=resource.type))
        self._conn.call(self._stub.AddResource, req)

    def delete_resource(self, id: str, resource: Resource) -> None:
        req = pb.DeleteResourceRequest(
            id=id, resource=pb.Resource(id=resource.id, type=resource.type)
        )
        self._conn.call(self._stub.DeleteResource, req)

    def list_resources(self, id: str) -> builtins.list[Resource]:
        resp = self._conn.call(self._stub.ListResources, pb.ListResourcesRequest(id=id))
        return [Resource(type=r.type, id=r.id) for r in resp.resources]
