"""containerd.services.events.v1.Events: publish, forward and subscribe."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from typing import TYPE_CHECKING

import grpc
from google.protobuf import empty_pb2

from dockyard.api.convert import to_timestamp
from dockyard.api.services.events.v1 import events_pb2 as pb
from dockyard.api.services.events.v1 import events_pb2_grpc
from dockyard.errors import InvalidArgument
from dockyard.supervisor.events import Envelope, matcher
from dockyard.supervisor.grpcutil import namespace, rpc

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor


def to_message(env: Envelope) -> pb.Envelope:
    return pb.Envelope(
        timestamp=to_timestamp(env.timestamp),
        namespace=env.namespace,
        topic=env.topic,
        event=env.event,
    )


def from_message(msg: pb.Envelope) -> Envelope:
    if not msg.namespace:
        raise InvalidArgument("forwarded event: envelope has no namespace")
    if not msg.HasField("event"):
        raise InvalidArgument(f"forwarded event {msg.topic!r}: envelope has no event")
    return Envelope(msg.timestamp.ToDatetime(tzinfo=UTC), msg.namespace, msg.topic, msg.event)


class EventsService(events_pb2_grpc.EventsServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    @rpc
    def Publish(self, request: pb.PublishRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        ns = namespace(context)
        if not request.HasField("event"):
            raise InvalidArgument(f"publish {request.topic!r}: no event")
        self.sup.events.publish(ns, request.topic, request.event)
        return empty_pb2.Empty()

    @rpc
    def Forward(self, request: pb.ForwardRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.sup.events.forward(from_message(request.envelope))
        return empty_pb2.Empty()

    @rpc
    def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Envelope]:
        filters = list(request.filters)
        matcher(filters)  # a bad filter is an error now, not a silent empty stream
        for env in self.sup.events.subscribe(filters, is_active=context.is_active):
            yield to_message(env)


def register(server: grpc.Server, sup: Supervisor) -> None:
    events_pb2_grpc.add_EventsServicer_to_server(EventsService(sup), server)
    sup.add_plugin("io.containerd.grpc.v1", "events")
