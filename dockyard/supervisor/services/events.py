"""containerd.services.events.v1.Events: publish, forward and subscribe."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc
from google.protobuf import empty_pb2

from dockyard.api.convert import from_timestamp, to_timestamp
from dockyard.api.services.events.v1 import events_pb2 as pb
from dockyard.api.services.events.v1 import events_pb2_grpc
from dockyard.api.services.ttrpc.events.v1 import events_pb2 as ttrpc_events_pb2
from dockyard.errors import InvalidArgument
from dockyard.identifiers import validate_identifier
from dockyard.supervisor.events import Envelope, matcher, validate_topic
from dockyard.supervisor.grpcutil import namespace, rpc

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor


def to_message(env: Envelope) -> pb.Envelope:
    return pb.Envelope(
        timestamp=to_timestamp(env.timestamp),
        namespace=env.namespace,
        topic=env.topic,
        # an envelope forwarded without an event goes on without one, not with an empty Any
        event=env.event if env.event.ByteSize() else None,
    )


def from_message(msg: pb.Envelope | ttrpc_events_pb2.Envelope) -> Envelope:
    """A forwarded envelope, from either Forward (gRPC here, ttrpc from a shim), as it came.

    Its namespace, timestamp and event are kept, not the request's; it is
    checked as containerd's exchange checks one (``validateEnvelope``), in
    its order: the namespace is an identifier, the topic a path (checked
    again by ``Exchange.forward``), the timestamp set. The event is not
    required: containerd passes an envelope without one on.
    """
    what = f"forwarded event {msg.topic!r}"
    validate_identifier(f"{what}: namespace", msg.namespace)
    validate_topic(msg.topic)
    when = from_timestamp(msg.timestamp)
    if when is None:
        raise InvalidArgument(f"{what}: timestamp must be set")
    return Envelope(when, msg.namespace, msg.topic, msg.event)


class EventsService(events_pb2_grpc.EventsServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    @rpc
    def Publish(self, request: pb.PublishRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        # as containerd's exchange: the topic is checked, an event is not
        # required (one published without goes on without)
        self.sup.events.publish(namespace(context), request.topic, request.event)
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
