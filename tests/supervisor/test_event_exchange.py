"""The event exchange in-process: slow subscribers, ordering, shutdown and filters.

containerd's exchange never holds a publisher up for a subscriber (each sink
has its own queue) and hands every subscriber the events in one order. Ours
bounds a subscriber's queue; past the bound the subscriber is ended with an
error rather than left with a stream that silently skipped events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

import pytest
from google.protobuf.message import Message

from dockyard.api import typeurl
from dockyard.api.events import image_pb2, task_pb2
from dockyard.supervisor import events
from dockyard.supervisor.events import Envelope, Exchange
from tests.compat import host

TIMEOUT = 10.0


def oom(cid: str) -> task_pb2.TaskOOM:
    return task_pb2.TaskOOM(container_id=cid)


def cid(env: Envelope) -> str:
    msg = typeurl.unpack(env.event)
    assert isinstance(msg, task_pb2.TaskOOM)
    return msg.container_id


class Reader:
    """A subscription read in a thread, as a gRPC handler reads one."""

    def __init__(self, stream: Iterator[Envelope]) -> None:
        self.stream = stream
        self.got: list[Envelope] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for env in self.stream:
                self.got.append(env)
        except BaseException as e:
            self.error = e

    def wait_for(self, n: int) -> None:
        host.wait_for(lambda: len(self.got) >= n, TIMEOUT, f"{n} events read")

    def join(self) -> None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the subscription did not end"


def subscribed(ex: Exchange, *filters: str, is_active: Callable[[], bool] = lambda: True) -> Reader:
    """A subscription read in a thread, once it is registered with the exchange."""
    before = len(ex._subscribers)
    reader = Reader(ex.subscribe(filters, is_active=is_active))
    host.wait_for(lambda: len(ex._subscribers) > before, TIMEOUT, "the subscription")
    return reader


def test_a_subscriber_that_stops_reading_is_ended_with_an_error_not_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events, "MAX_QUEUE", 4)
    ex = Exchange()
    stream = ex.subscribe()
    first: list[str] = []
    # the reader registers, takes one event and stops reading
    t = threading.Thread(target=lambda: first.append(cid(next(stream))), daemon=True)
    t.start()
    host.wait_for(lambda: bool(ex._subscribers), TIMEOUT, "the subscription")
    ex.publish("ns", "/t", oom("0"))
    t.join(TIMEOUT)
    assert first == ["0"]
    # the publisher is never held up, whatever the reader does
    for i in range(1, 20):
        ex.publish("ns", "/t", oom(str(i)))
    # the subscriber is let go at once (nothing more is kept for it) ...
    assert not ex._subscribers
    # ... and its reader gets what was queued, then an error: never a gap
    rest: list[str] = []
    with pytest.raises(events.SubscriberTooSlow):
        for env in stream:
            rest.append(cid(env))
    assert first + rest == [str(i) for i in range(5)]


def test_a_stalled_subscriber_does_not_hold_up_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "MAX_QUEUE", 4)
    ex = Exchange()
    stalled = ex.subscribe()
    t = threading.Thread(target=lambda: next(stalled, None), daemon=True)
    t.start()
    host.wait_for(lambda: bool(ex._subscribers), TIMEOUT, "the subscription")
    reader = subscribed(ex)
    ex.publish("ns", "/t", oom("x"))
    t.join(TIMEOUT)
    # the stalled one overflows and is let go; the other one reads on
    for i in range(100):
        ex.publish("ns", "/t", oom(str(i)))
        reader.wait_for(i + 2)
    ex.close()
    reader.join()
    assert reader.error is None
    assert [cid(e) for e in reader.got] == ["x", *map(str, range(100))]
    assert not ex._subscribers


def test_subscribers_see_concurrent_publishes_in_one_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two publishers at once: every subscriber gets their events in the same order."""
    second_done = threading.Event()
    made: list[int] = []
    real = events.matcher

    def slow_matcher(filters: Iterable[str]) -> events.Matcher:
        match = real(filters)
        index = len(made)
        made.append(index)

        def m(env: Envelope) -> bool:
            # the second subscriber takes its time over the first event:
            # the other publisher must not overtake it at one subscriber only
            if index == 1 and cid(env) == "one":
                second_done.wait(1.0)
            return match(env)

        return m

    monkeypatch.setattr(events, "matcher", slow_matcher)
    ex = Exchange()
    a = subscribed(ex)
    b = subscribed(ex)
    p1 = threading.Thread(target=lambda: ex.publish("ns", "/t", oom("one")))
    p1.start()
    time.sleep(0.2)  # the first publisher is at the second subscriber

    def second() -> None:
        ex.publish("ns", "/t", oom("two"))
        second_done.set()

    p2 = threading.Thread(target=second)
    p2.start()
    p1.join(TIMEOUT)
    p2.join(TIMEOUT)
    a.wait_for(2)
    b.wait_for(2)
    ex.close()
    assert [cid(e) for e in a.got] == [cid(e) for e in b.got]


def test_a_subscription_after_close_ends_at_once() -> None:
    ex = Exchange()
    ex.close()
    reader = Reader(ex.subscribe())
    reader.join()
    assert reader.error is None
    assert not ex._subscribers


def test_close_ends_every_subscription_and_forgets_it() -> None:
    ex = Exchange()
    readers = [subscribed(ex) for _ in range(20)]
    ex.publish("ns", "/t", oom("x"))
    ex.close()
    for r in readers:
        r.join()
        assert r.error is None
    assert not ex._subscribers


def test_a_subscriber_gone_is_removed_without_an_event_to_wake_it() -> None:
    ex = Exchange()
    active = True
    r = subscribed(ex, is_active=lambda: active)
    active = False
    r.join()
    assert not ex._subscribers


def test_many_publishers_and_subscribers_each_in_order() -> None:
    """All (fewer than a queue holds) reach every subscriber in one order."""
    ex = Exchange()
    readers = [subscribed(ex) for _ in range(16)]

    def publisher(n: int) -> None:
        for i in range(100):
            ex.publish("ns", "/t", oom(f"{n}-{i}"))

    publishers = [threading.Thread(target=publisher, args=(n,)) for n in range(8)]
    for t in publishers:
        t.start()
    for t in publishers:
        t.join(TIMEOUT)
    for r in readers:
        r.wait_for(800)
    ex.close()
    first = [cid(e) for e in readers[0].got]
    for r in readers:
        r.join()
        assert [cid(e) for e in r.got] == first
    for n in range(8):
        mine = [c for c in first if c.startswith(f"{n}-")]
        assert mine == [f"{n}-{i}" for i in range(100)]


@pytest.mark.parametrize(
    ("event", "filter_", "matches"),
    [
        # strings: an empty one is absent, as containerd's generated Field says
        (task_pb2.TaskExit(container_id="c"), "event.id", False),
        (task_pb2.TaskExit(container_id="c", id="e"), "event.id", True),
        (task_pb2.TaskExit(container_id="c"), "event.container_id==c", True),
        # bools as Go prints them
        (task_pb2.TaskCreate(io=task_pb2.TaskIO(terminal=True)), "event.io.terminal==true", True),
        (task_pb2.TaskCreate(io=task_pb2.TaskIO(stdin="i")), "event.io.terminal==false", True),
        (task_pb2.TaskCreate(), "event.io.terminal", False),  # no io: nothing under it
        # labels: the rest of the path is the key, dots and all; a missing key is absent
        (image_pb2.ImageCreate(name="i", labels={"a.b": "1"}), "event.labels.a.b==1", True),
        (image_pb2.ImageCreate(name="i", labels={"a.b": "1"}), 'event.labels."a.b"==1', True),
        (image_pb2.ImageCreate(name="i", labels={"a.b": "1"}), "event.labels.nope", False),
        (image_pb2.ImageCreate(name="i", labels={"a": "1"}), "event.labels", False),
        # lists are not fields
        (task_pb2.TaskCreate(container_id="c"), "event.rootfs", False),
    ],
)
def test_event_fields_as_containerd_filters_see_them(
    event: Message, filter_: str, matches: bool
) -> None:
    env = Envelope(datetime.now(UTC), "ns", "/t", typeurl.pack(event))
    assert events.matcher([filter_])(env) is matches
