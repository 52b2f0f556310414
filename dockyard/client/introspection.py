"""containerd.services.introspection.v1: the daemon's plugins and its identity."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import empty_pb2

from dockyard.api.services.introspection.v1 import introspection_pb2 as pb
from dockyard.api.services.introspection.v1 import introspection_pb2_grpc
from dockyard.client.rpc import Connection


@dataclass
class Plugin:
    """A plugin of the daemon: ``type`` like ``io.containerd.snapshotter.v1``,
    ``id`` like ``overlayfs``; ``init_error`` says why it did not load, if so."""

    type: str
    id: str
    requires: list[str] = field(default_factory=list)
    platforms: list[str] = field(default_factory=list)
    exports: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)
    init_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.init_error is None


def _platform(p: object) -> str:
    os_ = getattr(p, "os", "")
    arch = getattr(p, "architecture", "")
    variant = getattr(p, "variant", "")
    return "/".join(x for x in (os_, arch, variant) if x)


def _from_proto(msg: pb.Plugin) -> Plugin:
    return Plugin(
        type=msg.type,
        id=msg.id,
        requires=list(msg.requires),
        platforms=[_platform(p) for p in msg.platforms],
        exports=dict(msg.exports),
        capabilities=list(msg.capabilities),
        init_error=(msg.init_err.message or "failed") if msg.HasField("init_err") else None,
    )


class IntrospectionService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = conn.stub(introspection_pb2_grpc.IntrospectionStub)

    def plugins(self, *filters: str) -> list[Plugin]:
        """The daemon's plugins, those matching any filter (``type==...,id==...``) if given."""
        resp = self._conn.call(self._stub.Plugins, pb.PluginsRequest(filters=list(filters)))
        return [_from_proto(p) for p in resp.plugins]

    def server_uuid(self) -> str:
        """The daemon's identity: a UUID kept across its restarts."""
        return str(self._conn.call(self._stub.Server, empty_pb2.Empty()).uuid)
