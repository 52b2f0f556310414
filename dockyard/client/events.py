"""containerd.services.events.v1: publish events, and subscribe to them as an iterator.

A subscription gets every event of every namespace that matches any of its
filters (containerd's filter syntax: ``topic=="/tasks/exit"``,
``namespace==default,topic~="^/tasks/"``); no filter means all events.

A gRPC stream says nothing when the server has registered it, so an event
published right after ``subscribe`` returned may be missed. ``sync=True``
closes that gap: the subscription publishes a marker event on a private
topic until it comes back, so every event published after ``subscribe``
returns is seen. Markers are never handed to the caller.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from dockyard.api.convert import from_timestamp
from dockyard.api.services.events.v1 import events_pb2 as pb
from dockyard.api.services.events.v1 import events_pb2_grpc
from dockyard.client.rpc import Connection, from_grpc
from dockyard.client.wire import pack_any, unpack_any
from dockyard.errors import DockyardError, SystemFailure

SYNC_TOPIC_PREFIX = "/dockyard-client/sync/"
# How long ``sync`` waits for its marker before giving up (s), and how often
# it publishes another while waiting.
SYNC_TIMEOUT = 10.0
SYNC_INTERVAL = 0.05


@dataclass
class Envelope:
    """One event: ``event`` is the message unpacked (an ``Any`` if its type is unknown)."""

    timestamp: datetime | None
    namespace: str
    topic: str
    event: object


_CLOSED = object()


class Subscription:
    """Events as they come; iterate, or ``get(timeout)``; ``close()`` ends it.

    Events are read by a thread into a queue, so a slow consumer never holds
    up the daemon's stream, and a consumer can wait with a time limit.
    """

    def __init__(self, conn: Connection, filters: list[str], *, sync: bool = False) -> None:
        self._conn = conn
        stub = conn.stub(events_pb2_grpc.EventsStub)
        self._marker = SYNC_TOPIC_PREFIX + uuid.uuid4().hex if sync else ""
        sent = list(filters)
        if self._marker and sent:
            # filter strings are alternatives: the marker's is one more
            sent.append(f'topic=="{self._marker}"')
        self._queue: queue.Queue[object] = queue.Queue()
        self._ready = threading.Event()
        self._closing = False
        self._call = stub.Subscribe(pb.SubscribeRequest(filters=sent), metadata=conn.metadata())
        self._thread = threading.Thread(target=self._read, name="events", daemon=True)
        self._thread.start()
        if self._marker:
            try:
                self._sync(stub)
            except BaseException:
                self.close()
                raise

    def _sync(self, stub: events_pb2_grpc.EventsStub) -> None:
        marker = pack_any(empty_pb2.Empty())
        waited = 0.0
        while not self._ready.is_set():
            if waited >= SYNC_TIMEOUT:
                raise SystemFailure(
                    f"subscribe on {self._conn.address}: the subscription did not start"
                    f" within {SYNC_TIMEOUT:g}s"
                )
            self._conn.call(stub.Publish, pb.PublishRequest(topic=self._marker, event=marker))
            if self._ready.wait(SYNC_INTERVAL):
                break
            if not self._thread.is_alive():
                break  # the stream failed: the error is in the queue
            waited += SYNC_INTERVAL

    def _read(self) -> None:
        try:
            for msg in self._call:
                if self._marker and msg.topic == self._marker:
                    self._ready.set()
                    continue
                self._queue.put(
                    Envelope(
                        from_timestamp(msg.timestamp),
                        msg.namespace,
                        msg.topic,
                        unpack_any(msg.event),
                    )
                )
        except grpc.RpcError as e:
            if not self._closing:
                self._queue.put(from_grpc(e, f"subscribe on {self._conn.address}"))
        finally:
            self._queue.put(_CLOSED)

    def get(self, timeout: float | None = None) -> Envelope | None:
        """The next event; None once the subscription is closed.

        Raises TimeoutError if none came within ``timeout`` seconds, and the
        stream's error if it failed.
        """
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event within {timeout}s") from None
        if item is _CLOSED:
            self._queue.put(_CLOSED)  # every later get sees the end too
            return None
        if isinstance(item, DockyardError):
            self._queue.put(_CLOSED)
            raise item
        assert isinstance(item, Envelope)
        return item

    def __iter__(self) -> Iterator[Envelope]:
        while True:
            env = self.get()
            if env is None:
                return
            yield env

    def close(self) -> None:
        self._closing = True
        self._call.cancel()
        self._thread.join()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EventsService:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stub = conn.stub(events_pb2_grpc.EventsStub)

    def publish(self, topic: str, event: Message) -> None:
        """Publish ``event`` on ``topic`` (``/a/b``) in the client's namespace."""
        self._conn.call(self._stub.Publish, pb.PublishRequest(topic=topic, event=pack_any(event)))

    def subscribe(self, *filters: str, sync: bool = False) -> Subscription:
        """A subscription to the events matching any of ``filters`` (all, if none)."""
        return Subscription(self._conn, list(filters), sync=sync)
