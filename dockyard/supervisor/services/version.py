"""containerd.services.version.v1.Version: what ``ctr version`` prints."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from google.protobuf import empty_pb2

import dockyard
from dockyard.api.services.version.v1 import version_pb2, version_pb2_grpc
from dockyard.supervisor.grpcutil import rpc

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor

# The revision is this package's version too: there is no VCS stamp in a wheel.
VERSION = dockyard.__version__


class VersionService(version_pb2_grpc.VersionServicer):
    @rpc
    def Version(
        self, request: empty_pb2.Empty, context: grpc.ServicerContext
    ) -> version_pb2.VersionResponse:
        return version_pb2.VersionResponse(version=f"dockyard-{VERSION}", revision=VERSION)


def register(server: grpc.Server, sup: Supervisor) -> None:
    version_pb2_grpc.add_VersionServicer_to_server(VersionService(), server)
    sup.add_plugin("io.containerd.grpc.v1", "version")
