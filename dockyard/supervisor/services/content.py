"""containerd.services.content.v1.Content: blobs by digest, per namespace, and their ingests.

An adapter over ``dockyard.supervisor.content.NamespacedContent``, with the
wire semantics of containerd's content server (``contentserver.go``):

- ``Write`` is one ingest per stream: the first message names the ref (and
  may give the total and the expected digest), which opens or resumes the
  ingest and holds it for the stream (another stream on the ref gets
  UNAVAILABLE and retries). Each message is answered: STAT reports;
  WRITE appends at ``offset`` (0 starts over, any other offset must be the
  current one, else OUT_OF_RANGE); COMMIT writes, verifies and commits, and
  ends the stream. A known expected digest answers ALREADY_EXISTS.
- ``Read`` streams ``size`` bytes from ``offset`` (to the end when ``size``
  is zero or too large); past the end is OUT_OF_RANGE.
- ``List`` sends its infos in batches of 100.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import grpc
from google.protobuf import empty_pb2

from dockyard.api import topics
from dockyard.api.convert import to_timestamp
from dockyard.api.events import content_pb2 as events
from dockyard.api.services.content.v1 import content_pb2 as pb
from dockyard.api.services.content.v1 import content_pb2_grpc
from dockyard.errors import AlreadyExists, DockyardError, InvalidArgument, NotFound
from dockyard.image.content import CHUNK, Info, Status
from dockyard.image.leases import Resource
from dockyard.supervisor.content import OutOfRange, check_digest
from dockyard.supervisor.grpcutil import batches, namespace, rpc
from dockyard.supervisor.services.leases import lease_of

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor


def info_message(info: Info) -> pb.Info:
    return pb.Info(
        digest=info.digest,
        size=info.size,
        created_at=to_timestamp(info.created_at),
        updated_at=to_timestamp(info.updated_at),
        labels=dict(info.labels),
    )


def _status_message(st: Status) -> pb.Status:
    return pb.Status(
        started_at=to_timestamp(st.started_at),
        updated_at=to_timestamp(st.updated_at),
        ref=st.ref,
        offset=st.offset,
        total=st.total or 0,
        expected=st.expected or "",
    )


class ContentService(content_pb2_grpc.ContentServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.store = sup.namespaced_content

    @rpc
    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoResponse:
        ns = namespace(context)
        return pb.InfoResponse(info=info_message(self.store.info(ns, request.digest)))

    @rpc
    def Update(self, request: pb.UpdateRequest, context: grpc.ServicerContext) -> pb.UpdateResponse:
        ns = namespace(context)
        info = self.store.update(
            ns, request.info.digest, dict(request.info.labels), list(request.update_mask.paths)
        )
        return pb.UpdateResponse(info=info_message(info))

    @rpc
    def List(
        self, request: pb.ListContentRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ListContentResponse]:
        ns = namespace(context)
        infos = (info_message(i) for i in self.store.walk(ns, list(request.filters)))
        for batch in batches(infos):
            yield pb.ListContentResponse(info=batch)

    @rpc
    def Delete(
        self, request: pb.DeleteContentRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        ns = namespace(context)
        self.store.remove(ns, request.digest)
        lease = lease_of(context)
        if lease:  # as containerd: the request's lease lets go of it too
            with contextlib.suppress(NotFound):
                self.sup.leases.delete_resource(ns, lease, Resource("content", request.digest))
        self.sup.events.publish(
            ns, topics.CONTENT_DELETE, events.ContentDelete(digest=request.digest)
        )
        self.sup.gc.schedule()
        return empty_pb2.Empty()

    @rpc
    def Read(
        self, request: pb.ReadContentRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ReadContentResponse]:
        ns = namespace(context)
        digest = check_digest(request.digest)
        with self.store.open(ns, digest) as blob:
            offset = max(request.offset, 0)
            if offset > blob.size:
                raise OutOfRange(
                    f"read {digest}: offset {offset} is past the blob's {blob.size} bytes"
                )
            size = request.size
            if size <= 0 or offset + size > blob.size:
                size = blob.size - offset
            end = offset + size
            while offset < end:
                data = blob.read_at(offset, min(CHUNK, end - offset))
                if not data:
                    break
                yield pb.ReadContentResponse(offset=offset, data=data)
                offset += len(data)

    @rpc
    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        ns = namespace(context)
        return pb.StatusResponse(status=_status_message(self.store.status(ns, request.ref)))

    @rpc
    def ListStatuses(
        self, request: pb.ListStatusesRequest, context: grpc.ServicerContext
    ) -> pb.ListStatusesResponse:
        ns = namespace(context)
        return pb.ListStatusesResponse(
            statuses=[_status_message(s) for s in self.store.statuses(ns, list(request.filters))]
        )

    @rpc
    def Write(
        self, requests: Iterable[pb.WriteContentRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.WriteContentResponse]:
        ns = namespace(context)
        it = iter(requests)
        req = next(it, None)
        if req is None:
            return
        ref = req.ref
        if not ref:
            raise InvalidArgument("write: the first message must have a ref")
        total, expected = req.total, req.expected
        self.sup.metadata.ensure_namespace(ns)
        w = self.store.writer(ns, ref, total=total, expected=expected, lease=lease_of(context))
        try:
            while True:
                st = w.status()
                resp = pb.WriteContentResponse(action=req.action, offset=st.offset)
                if req.total > 0:
                    total = req.total
                if req.action == pb.STAT:
                    resp.digest = w.digest()
                    resp.started_at.CopyFrom(to_timestamp(st.started_at))
                    resp.updated_at.CopyFrom(to_timestamp(st.updated_at))
                    resp.total = total
                elif req.action in (pb.WRITE, pb.COMMIT):
                    if req.offset > 0 and req.offset != st.offset:
                        raise OutOfRange(
                            f"write {ref!r}: offset {req.offset} is not the current offset"
                            f" {st.offset}"
                        )
                    if req.offset == 0 and st.offset > 0:
                        w.truncate(0)
                        resp.offset = 0
                    if req.data:
                        resp.offset += w.write(req.data)
                    resp.digest = w.digest()
                    if req.action == pb.COMMIT:
                        resp.digest = w.commit(total, expected, dict(req.labels))
                else:
                    raise InvalidArgument(f"write {ref!r}: unknown action {req.action}")
                yield resp
                if req.action == pb.COMMIT:
                    return
                req = next(it, None)
                if req is None:
                    return
                # the first message's expected digest was looked up by writer()
                if req.expected:
                    expected = req.expected
                    if self.store.has(ns, expected):
                        w.close()
                        with contextlib.suppress(DockyardError):
                            self.store.abort(ns, ref)
                        raise AlreadyExists(f"content {expected}: already exists")
        finally:
            w.close()

    @rpc
    def Abort(self, request: pb.AbortRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        ns = namespace(context)
        self.store.abort(ns, request.ref, lease_of(context))
        return empty_pb2.Empty()


def register(server: grpc.Server, sup: Supervisor) -> None:
    content_pb2_grpc.add_ContentServicer_to_server(ContentService(sup), server)
    sup.metadata.in_use_checks.append(sup.namespaced_content.in_use)
    sup.add_plugin("io.containerd.grpc.v1", "content")
