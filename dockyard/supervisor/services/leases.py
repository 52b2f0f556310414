"""containerd.services.leases.v1.Leases: leases and the resources they hold.

A lease keeps what it holds from garbage collection until it is deleted or
expires (``containerd.io/gc.expire``). Clients also name a lease in the
``containerd-lease`` metadata of a request (containerd's ``leases.WithLease``):
the content, ingests and snapshots that request creates are then added to
it, which is how a pull keeps what it fetched before its image record
exists. ``lease_of`` reads that for the other services.

Resources are stored as clients name them (a snapshot by its key in the
namespace), which is what ``ListResources`` shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from google.protobuf import empty_pb2

from dockyard.api.convert import to_timestamp
from dockyard.api.services.leases.v1 import leases_pb2 as pb
from dockyard.api.services.leases.v1 import leases_pb2_grpc
from dockyard.filters import Getter, map_field, matcher
from dockyard.image.leases import Lease, Resource
from dockyard.supervisor.grpcutil import namespace, rpc

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor

LEASE_KEY = "containerd-lease"


def lease_of(context: grpc.ServicerContext) -> str | None:
    """The lease a request runs under, if it names one."""
    for key, value in context.invocation_metadata() or ():
        if key == LEASE_KEY and value:
            return str(value)
    return None


def _message(lease: Lease) -> pb.Lease:
    return pb.Lease(id=lease.id, created_at=to_timestamp(lease.created_at), labels=lease.labels)


def _resource(r: pb.Resource) -> Resource:
    return Resource(r.type, r.id)


class LeasesService(leases_pb2_grpc.LeasesServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.leases = sup.leases

    @rpc
    def Create(self, request: pb.CreateRequest, context: grpc.ServicerContext) -> pb.CreateResponse:
        ns = namespace(context)
        self.sup.metadata.ensure_namespace(ns)
        # an empty label is no label, as containerd stores them
        labels = {k: v for k, v in request.labels.items() if v}
        lease = self.leases.create(ns, request.id or None, labels=labels)
        return pb.CreateResponse(lease=_message(lease))

    @rpc
    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        ns = namespace(context)
        self.leases.delete(ns, request.id)
        if request.sync:
            self.sup.gc.collect()
        else:
            self.sup.gc.schedule()
        return empty_pb2.Empty()

    @rpc
    def List(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.ListResponse:
        ns = namespace(context)
        match = matcher(request.filters)

        def getter(lease: Lease) -> Getter:
            def get(path: list[str]) -> str | None:
                if path == ["id"]:
                    return lease.id
                if path[:1] == ["labels"]:
                    return map_field(lease.labels, path[1:])
                return None

            return get

        return pb.ListResponse(
            leases=[_message(le) for le in self.leases.list(ns) if match(getter(le))]
        )

    @rpc
    def AddResource(
        self, request: pb.AddResourceRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        ns = namespace(context)
        self.leases.add_resource(ns, request.id, _resource(request.resource))
        return empty_pb2.Empty()

    @rpc
    def DeleteResource(
        self, request: pb.DeleteResourceRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        ns = namespace(context)
        self.leases.delete_resource(ns, request.id, _resource(request.resource))
        self.sup.gc.schedule()
        return empty_pb2.Empty()

    @rpc
    def ListResources(
        self, request: pb.ListResourcesRequest, context: grpc.ServicerContext
    ) -> pb.ListResourcesResponse:
        ns = namespace(context)
        return pb.ListResourcesResponse(
            resources=[
                pb.Resource(id=r.id, type=r.type) for r in self.leases.resources(ns, request.id)
            ]
        )


def register(server: grpc.Server, sup: Supervisor) -> None:
    leases_pb2_grpc.add_LeasesServicer_to_server(LeasesService(sup), server)

    def drop_leases(ns: str) -> None:
        for held in sup.leases.list(ns):
            sup.leases.delete(ns, held.id)
        sup.gc.schedule()

    # Leases do not keep a namespace: they go with it (as in containerd).
    sup.metadata.on_namespace_delete.append(drop_leases)
    sup.add_plugin("io.containerd.lease.v1", "manager")
    sup.add_plugin("io.containerd.grpc.v1", "leases")
