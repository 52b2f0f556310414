"""containerd.services.namespaces.v1.Namespaces: create, list, label and remove
namespaces; removal is refused while anything is left in one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from google.protobuf import empty_pb2

from dockyard.api import topics
from dockyard.api.events import namespace_pb2 as events
from dockyard.api.services.namespaces.v1 import namespace_pb2 as pb
from dockyard.api.services.namespaces.v1 import namespace_pb2_grpc
from dockyard.identifiers import validate_identifier
from dockyard.supervisor.grpcutil import rpc

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor


class NamespacesService(namespace_pb2_grpc.NamespacesServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.meta = sup.metadata

    @rpc
    def Get(
        self, request: pb.GetNamespaceRequest, context: grpc.ServicerContext
    ) -> pb.GetNamespaceResponse:
        validate_identifier("namespace", request.name)
        # containerd answers a namespace it does not know with no labels
        labels = self.meta.namespace_labels(request.name)
        return pb.GetNamespaceResponse(namespace=pb.Namespace(name=request.name, labels=labels))

    @rpc
    def List(
        self, request: pb.ListNamespacesRequest, context: grpc.ServicerContext
    ) -> pb.ListNamespacesResponse:
        return pb.ListNamespacesResponse(
            namespaces=[pb.Namespace(name=n, labels=lb) for n, lb in self.meta.list_namespaces()]
        )

    @rpc
    def Create(
        self, request: pb.CreateNamespaceRequest, context: grpc.ServicerContext
    ) -> pb.CreateNamespaceResponse:
        ns = request.namespace
        labels = dict(ns.labels)
        self.meta.create_namespace(ns.name, labels)  # checks the name and labels
        self.sup.events.publish(
            ns.name, topics.NAMESPACE_CREATE, events.NamespaceCreate(name=ns.name, labels=labels)
        )
        # answered with what was written, not with the row read back
        return pb.CreateNamespaceResponse(namespace=pb.Namespace(name=ns.name, labels=labels))

    @rpc
    def Update(
        self, request: pb.UpdateNamespaceRequest, context: grpc.ServicerContext
    ) -> pb.UpdateNamespaceResponse:
        ns = request.namespace
        labels = self.meta.update_namespace_labels(
            ns.name, ns.labels, list(request.update_mask.paths)
        )
        self.sup.events.publish(
            ns.name, topics.NAMESPACE_UPDATE, events.NamespaceUpdate(name=ns.name, labels=labels)
        )
        return pb.UpdateNamespaceResponse(namespace=pb.Namespace(name=ns.name, labels=labels))

    @rpc
    def Delete(
        self, request: pb.DeleteNamespaceRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self.meta.delete_namespace(request.name)
        self.sup.events.publish(
            request.name, topics.NAMESPACE_DELETE, events.NamespaceDelete(name=request.name)
        )
        return empty_pb2.Empty()


def register(server: grpc.Server, sup: Supervisor) -> None:
    namespace_pb2_grpc.add_NamespacesServicer_to_server(NamespacesService(sup), server)
    sup.add_plugin("io.containerd.grpc.v1", "namespaces")
