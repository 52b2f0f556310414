"""containerd.services.diff.v1: apply a layer onto mounts, or make one from two.

``apply`` unpacks the blob a descriptor names (tar, gzip or zstd, with OCI
whiteouts) onto the filesystem the mounts make, and answers with the
uncompressed layer's descriptor, whose digest is the layer's diff ID.
``diff`` writes the changes from ``lower`` to ``upper`` as a new blob.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf.message import Message

from dockyard.api.services.diff.v1 import diff_pb2 as pb
from dockyard.api.services.diff.v1 import diff_pb2_grpc
from dockyard.client.rpc import NO_TIMEOUT, Connection
from dockyard.client.wire import (
    descriptor_from_proto,
    descriptor_to_proto,
    mount_to_proto,
    pack_any,
)
from dockyard.spec.image import Descriptor
from dockyard.spec.mount import Mount


class DiffService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = conn.stub(diff_pb2_grpc.DiffStub)

    def apply(
        self,
        layer: Descriptor,
        mounts: Sequence[Mount],
        payloads: Mapping[str, Message] | None = None,
    ) -> Descriptor:
        """Apply blob ``layer`` onto ``mounts``; the applied (uncompressed) layer."""
        req = pb.ApplyRequest(
            diff=descriptor_to_proto(layer),
            mounts=[mount_to_proto(m) for m in mounts],
            payloads={k: pack_any(v) for k, v in (payloads or {}).items()},
        )
        # a layer of any size: no deadline
        resp = self._conn.call(self._stub.Apply, req, timeout=NO_TIMEOUT)
        return descriptor_from_proto(resp.applied)

    def diff(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        *,
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Descriptor:
        """The changes from ``lower`` to ``upper`` written as a blob (labelled ``labels``)."""
        req = pb.DiffRequest(
            left=[mount_to_proto(m) for m in lower],
            right=[mount_to_proto(m) for m in upper],
            media_type=media_type,
            ref=ref,
            labels=dict(labels or {}),
        )
        resp = self._conn.call(self._stub.Diff, req, timeout=NO_TIMEOUT)
        return descriptor_from_proto(resp.diff)
