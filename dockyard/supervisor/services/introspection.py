"""containerd.services.introspection.v1.Introspection: the plugin list and the
server's uuid (kept in the root, so it survives restarts)."""

from __future__ import annotations

import functools
import os
import uuid
from typing import TYPE_CHECKING

import grpc
from google.protobuf import empty_pb2

from dockyard.api.services.introspection.v1 import introspection_pb2 as pb
from dockyard.api.services.introspection.v1 import introspection_pb2_grpc
from dockyard.api.types import platform_pb2
from dockyard.atomicfile import replace_file
from dockyard.filters import matcher
from dockyard.spec.image import host_platform
from dockyard.supervisor.daemon import Plugin
from dockyard.supervisor.grpcutil import rpc

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor


def _server_uuid(root: str) -> str:
    path = os.path.join(root, "uuid")
    try:
        with open(path) as f:
            value = f.read().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = str(uuid.uuid4())
    replace_file(path, value.encode())
    return value


def _field(p: Plugin, path: list[str]) -> str | None:
    if path == ["type"]:
        return p.type
    if path == ["id"]:
        return p.id
    if path and path[0] == "capabilities":
        return ",".join(p.capabilities)
    return None


class IntrospectionService(introspection_pb2_grpc.IntrospectionServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.uuid = _server_uuid(sup.config.root)

    @rpc
    def Plugins(
        self, request: pb.PluginsRequest, context: grpc.ServicerContext
    ) -> pb.PluginsResponse:
        match = matcher(request.filters)
        plat = host_platform()
        here = platform_pb2.Platform(
            os=plat.os, architecture=plat.architecture, variant=plat.variant or ""
        )
        out = []
        for p in self.sup.plugins:
            if not match(functools.partial(_field, p)):
                continue
            out.append(
                pb.Plugin(
                    type=p.type,
                    id=p.id,
                    requires=p.requires,
                    platforms=[here],
                    exports=p.exports,
                    capabilities=p.capabilities,
                )
            )
        return pb.PluginsResponse(plugins=out)

    @rpc
    def Server(self, request: empty_pb2.Empty, context: grpc.ServicerContext) -> pb.ServerResponse:
        return pb.ServerResponse(uuid=self.uuid)


def register(server: grpc.Server, sup: Supervisor) -> None:
    introspection_pb2_grpc.add_IntrospectionServicer_to_server(IntrospectionService(sup), server)
    sup.add_plugin("io.containerd.grpc.v1", "introspection")
