"""The event exchange: publish, forward and subscribe, with containerd's topics.

Every envelope carries a timestamp, the namespace it happened in, a topic
(``/tasks/exit``, ``/images/create``, ...) and the event itself as a
protobuf ``Any`` with containerd's type URL. Subscribers pass containerd
filters over ``topic``, ``namespace`` and ``event.<field>``; any one filter
matching is enough (``docs`` of containerd's events service).

Each subscriber has its own bounded queue: publishers never wait on a
reader (tasks must not wait on a reader's terminal). A subscriber that falls
``MAX_QUEUE`` events behind is let go: it gets what was queued, then
RESOURCE_EXHAUSTED, rather than a stream that silently skipped events
(containerd's queues are unbounded; a stalled reader there grows the
daemon without end).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf import any_pb2
from google.protobuf.message import Message

from dockyard.api import typeurl
from dockyard.errors import DockyardError, InvalidArgument
from dockyard.filters import map_field as filters_map_field
from dockyard.filters import matcher as filters_matcher

# A subscriber's queue: one that falls further behind is ended.
MAX_QUEUE = 1024


class SubscriberTooSlow(DockyardError):
    """A subscriber fell ``MAX_QUEUE`` events behind and was let go."""

    grpc_code = "RESOURCE_EXHAUSTED"


@dataclass
class Envelope:
    timestamp: datetime
    namespace: str
    topic: str
    event: any_pb2.Any

    def field(self, path: list[str]) -> str | None:
        if path == ["topic"]:
            return self.topic
        if path == ["namespace"]:
            return self.namespace
        if path and path[0] == "event" and len(path) > 1:
            return _event_field(self.event, path[1:])
        return None


def _event_field(event: any_pb2.Any, path: list[str]) -> str | None:
    """An event's field as containerd's generated ``Field`` methods give it:
    a string when not empty, a bool as ``true``/``false``, a number as its
    digits, ``labels.<key>`` with the rest of the path joined by dots as the
    key; lists, maps and messages themselves are not fields."""
    try:
        msg = typeurl.unpack(event)
    except Exception:
        return None
    value: object = msg
    for i, name in enumerate(path):
        if not isinstance(value, Message) or name not in value.DESCRIPTOR.fields_by_name:
            return None
        fd = value.DESCRIPTOR.fields_by_name[name]
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            # a missing key is absent (indexing a protobuf map would add it)
            return filters_map_field(getattr(value, name), path[i + 1 :])
        if fd.is_repeated:
            return None
        if fd.message_type is not None and not value.HasField(name):
            return None  # an unset message: nothing under it (containerd's nil)
        value = getattr(value, name)
    if isinstance(value, Message):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or None
    return str(value)


def validate_topic(topic: str) -> str:
    """Topics are paths: a leading slash and at least one component, none of
    them empty (containerd's events.validateTopic)."""
    if not topic or not topic.startswith("/") or topic == "/":
        raise InvalidArgument(f"event topic {topic!r}: must start with '/' and name something")
    if any(part == "" for part in topic[1:].split("/")):
        raise InvalidArgument(f"event topic {topic!r}: empty path component")
    return topic


Matcher = Callable[[Envelope], bool]


def matcher(filters: Iterable[str]) -> Matcher:
    match = filters_matcher(filters)
    return lambda env: match(env.field)


@dataclass
class _Subscriber:
    match: Matcher
    queue: collections.deque[Envelope] = field(default_factory=collections.deque)
    cond: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False
    # fell MAX_QUEUE behind: no more events, an error after the queued ones
    overflowed: bool = False


class Exchange:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[_Subscriber] = []
        self._closed = False

    def publish(self, namespace: str, topic: str, event: Message | any_pb2.Any) -> Envelope:
        """Publish ``event`` (a message, packed with its type URL, or an Any)."""
        packed = event if isinstance(event, any_pb2.Any) else typeurl.pack(event)
        env = Envelope(datetime.now(UTC), namespace, topic, packed)
        self.forward(env)
        return env

    def forward(self, env: Envelope) -> None:
        """Hand an envelope to the subscribers as it is (its topic checked here, for every path)."""
        validate_topic(env.topic)
        # one envelope at a time, to every subscriber, under the lock: two
        # publishers at once must not reach two subscribers in two orders
        # (containerd's broadcaster hands each event to all its sinks in turn)
        with self._lock:
            for sub in list(self._subscribers):
                if sub.match(env):
                    with sub.cond:
                        if sub.overflowed:
                            continue
                        if len(sub.queue) >= MAX_QUEUE:
                            sub.overflowed = True
                            self._subscribers.remove(sub)
                        else:
                            sub.queue.append(env)
                        sub.cond.notify()

    def _remove(self, sub: _Subscriber) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def subscribe(
        self, filters: Iterable[str] = (), is_active: Callable[[], bool] = lambda: True
    ) -> Iterator[Envelope]:
        """Envelopes as they come, until ``is_active()`` turns false or ``close()``;
        SubscriberTooSlow after the queued ones when the reader fell too far behind."""
        sub = _Subscriber(matcher(filters))
        with self._lock:
            # one that comes after close() (a Subscribe while the daemon stops) ends now
            sub.closed = self._closed
            self._subscribers.append(sub)
        try:
            while True:
                with sub.cond:
                    while not sub.queue and not sub.overflowed and not sub.closed and is_active():
                        sub.cond.wait(timeout=1.0)
                    if sub.closed or (not sub.queue and not is_active()):
                        return
                    if not sub.queue:  # overflowed, and all it had is out
                        raise SubscriberTooSlow(
                            f"event subscriber fell {MAX_QUEUE} events behind: ended"
                        )
                    env = sub.queue.popleft()
                yield env
        finally:
            self._remove(sub)

    def close(self) -> None:
        """End every subscription (the daemon is stopping)."""
        with self._lock:
            self._closed = True
            subscribers = list(self._subscribers)
        for sub in subscribers:
            with sub.cond:
                sub.closed = True
                sub.cond.notify_all()
