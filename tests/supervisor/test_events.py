"""Forwarded events: the gRPC Forward and the ttrpc one shims call decode alike.

Both take an envelope made elsewhere and hand it on as it came (its own
namespace and timestamp), after containerd's exchange checks
(``validateEnvelope``): the namespace an identifier, the topic a path, the
timestamp set. The event itself is not required, and one that came
without goes on without. The two paths once disagreed: the gRPC one took
any non-empty namespace, put the epoch on an envelope without a timestamp
and refused one without an event; the ttrpc one put the time of arrival on
an envelope without a timestamp, and subscribers got an empty event for a
missing one.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, empty_pb2

from dockyard.api import typeurl
from dockyard.api.convert import to_timestamp
from dockyard.api.events import task_pb2 as task_events
from dockyard.api.services.events.v1 import events_pb2, events_pb2_grpc
from dockyard.api.services.ttrpc.events.v1 import events_pb2 as ttrpc_events_pb2
from dockyard.ttrpc import Client, Error
from tests.compat import host
from tests.images import ImageArchive
from tests.supervisor.conftest import Supervisor, private_supervisor
from tests.supervisor.taskutil import EventLog

TTRPC_SERVICE = "containerd.services.events.ttrpc.v1.Events"
WHEN = datetime(2020, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
SENT_AT = to_timestamp(WHEN)  # copied into each envelope made with it


def forward(sup: Supervisor, path: str, **envelope: Any) -> str | None:
    """Forward an envelope of these fields by ``path``: None, or the error's status code name."""
    if path == "grpc":
        with sup.channel() as ch:
            try:
                events_pb2_grpc.EventsStub(ch).Forward(
                    events_pb2.ForwardRequest(envelope=events_pb2.Envelope(**envelope)), timeout=10
                )
            except grpc.RpcError as e:
                call: Any = e
                return str(call.code().name)
        return None
    with Client(sup.address + ".ttrpc") as client:
        try:
            client.call_typed(
                TTRPC_SERVICE,
                "Forward",
                ttrpc_events_pb2.ForwardRequest(envelope=ttrpc_events_pb2.Envelope(**envelope)),
                empty_pb2.Empty,
                timeout=10,
            )
        except Error as e:
            return e.grpc_code
    return None


def oom(cid: str) -> any_pb2.Any:
    return typeurl.pack(task_events.TaskOOM(container_id=cid))


@pytest.fixture
def topic() -> str:
    return "/dockyard-test/forward-" + uuid.uuid4().hex[:12]


@pytest.fixture
def events(supervisor: Supervisor, topic: str) -> Iterator[EventLog]:
    log = EventLog(supervisor, f'topic=="{topic}"').start()
    try:
        yield log
    finally:
        log.close()


def received(events: EventLog, topic: str) -> events_pb2.Envelope:
    """The one envelope of ``topic`` the subscriber got."""
    host.wait_for(lambda: topic in events.topics(), 10, f"the envelope of {topic}")
    (env,) = [e for e in events.envelopes if e.topic == topic]
    return env


PATHS = pytest.mark.parametrize("path", ["grpc", "ttrpc"])


@PATHS
def test_an_envelope_is_passed_on_as_it_came(
    supervisor: Supervisor, events: EventLog, topic: str, path: str
) -> None:
    # another namespace than the fixture's: the envelope's own is kept
    sent = {"namespace": "elsewhere", "topic": topic, "timestamp": SENT_AT, "event": oom("a")}
    assert forward(supervisor, path, **sent) is None
    env = received(events, topic)
    assert env.timestamp.ToDatetime(tzinfo=UTC) == WHEN
    assert env.namespace == "elsewhere"
    assert env.event == oom("a")


@PATHS
def test_an_envelope_without_an_event_is_passed_on_without_one(
    supervisor: Supervisor, events: EventLog, topic: str, path: str
) -> None:
    ns = supervisor.namespace
    assert forward(supervisor, path, namespace=ns, topic=topic, timestamp=SENT_AT) is None
    assert not received(events, topic).HasField("event")


def test_an_event_published_without_an_event_goes_on_without_one(
    supervisor: Supervisor, events: EventLog, topic: str
) -> None:
    with supervisor.channel() as ch:
        events_pb2_grpc.EventsStub(ch).Publish(
            events_pb2.PublishRequest(topic=topic), metadata=supervisor.md(), timeout=10
        )
    env = received(events, topic)
    assert env.namespace == supervisor.namespace
    assert not env.HasField("event")


@PATHS
@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"namespace": ""}, id="no-namespace"),
        pytest.param({"namespace": "not an/identifier"}, id="bad-namespace"),
        pytest.param({"topic": "no-slash"}, id="bad-topic"),
        pytest.param({"timestamp": None}, id="no-timestamp"),
    ],
)
def test_a_bad_envelope_is_refused(
    supervisor: Supervisor, events: EventLog, topic: str, path: str, fields: dict[str, Any]
) -> None:
    good = {
        "namespace": supervisor.namespace,
        "topic": topic,
        "timestamp": SENT_AT,
        "event": oom("refused"),
    }
    assert forward(supervisor, path, **{**good, **fields}) == "INVALID_ARGUMENT"
    # the exchange forwards as it is called: had the bad one gone through,
    # it would be there before this one
    assert forward(supervisor, path, **{**good, "event": oom("after")}) is None
    assert received(events, topic).event == oom("after")


def test_a_bad_filter_is_refused_before_subscribing(supervisor: Supervisor) -> None:
    with supervisor.channel() as ch:
        stream = events_pb2_grpc.EventsStub(ch).Subscribe(
            events_pb2.SubscribeRequest(filters=['topic=="/ok"', "topic=="]), timeout=10
        )
        with pytest.raises(grpc.RpcError) as e:
            next(stream)
        call: Any = e.value
        assert call.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_stopping_the_supervisor_ends_its_subscriptions_cleanly(
    tmp_path_factory: pytest.TempPathFactory, busybox_archive: ImageArchive
) -> None:
    base = tmp_path_factory.mktemp("sup")
    with private_supervisor(base, "dy-" + uuid.uuid4().hex[:8], busybox_archive) as daemon:
        logs = [EventLog(daemon).start() for _ in range(3)]
        try:
            daemon.kill(signal.SIGTERM)
            for log in logs:
                assert log._thread is not None
                log._thread.join(10)
                assert not log._thread.is_alive(), "a subscription outlived the supervisor"
                # ended by the daemon, not cut off when its grace ran out
                assert log._stream.code() == grpc.StatusCode.OK
        finally:
            for log in logs:
                log.close()
