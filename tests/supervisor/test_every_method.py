"""Every method of every service the supervisor serves, asked wrongly.

The methods are read from the generated descriptors of the v1 services, so
a method added later is covered without a change here. Each is called
through grpc's generic calls (no stub) with

- the empty request (every field at its default) in a new namespace,
- the empty request without the ``containerd-namespace`` metadata,
- the empty request with a namespace that is not an identifier,
- bytes that are not a protobuf message,
- for a request stream: a stream with no message at all,

and must answer OK or a code that says what was wrong (INVALID_ARGUMENT,
NOT_FOUND, ...) with a message, never UNKNOWN or INTERNAL (except for the
undecodable bytes, which grpc answers with INTERNAL itself). After each
call the daemon still serves, logged no error of its own, and nothing was
created: no namespace, container, task, lease, image, blob, ingest,
snapshot, mount or process.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

import dockyard.api.services
from dockyard.api.services.containers.v1 import containers_pb2 as cpb
from dockyard.api.services.containers.v1 import containers_pb2_grpc
from dockyard.api.services.content.v1 import content_pb2 as contentpb
from dockyard.api.services.content.v1 import content_pb2_grpc
from dockyard.api.services.images.v1 import images_pb2 as ipb
from dockyard.api.services.images.v1 import images_pb2_grpc
from dockyard.api.services.leases.v1 import leases_pb2 as lpb
from dockyard.api.services.leases.v1 import leases_pb2_grpc
from dockyard.api.services.namespaces.v1 import namespace_pb2 as npb
from dockyard.api.services.namespaces.v1 import namespace_pb2_grpc
from dockyard.api.services.snapshots.v1 import snapshots_pb2 as spb
from dockyard.api.services.snapshots.v1 import snapshots_pb2_grpc
from dockyard.api.services.tasks.v1 import tasks_pb2 as tpb
from dockyard.api.services.tasks.v1 import tasks_pb2_grpc
from dockyard.api.services.version.v1 import version_pb2_grpc
from dockyard.supervisor.config import SNAPSHOTTERS
from dockyard.supervisor.daemon import SERVICES
from tests.compat import host
from tests.supervisor.conftest import Supervisor
from tests.supervisor.imageside import (
    backend_blobs,
    backend_ingests,
    backend_snapshot_dirs,
    md,
    mounts_of,
)


def _descriptor_modules() -> list[Any]:
    """The generated ``*_pb2`` modules of the v1 services (``<service>/v1/<name>_pb2.py``)."""
    root = Path(dockyard.api.services.__file__).parent
    package = dockyard.api.services.__name__
    return [
        importlib.import_module(".".join([package, *path.relative_to(root).with_suffix("").parts]))
        for path in sorted(root.glob("*/v1/*_pb2.py"))
    ]


METHODS: list[MethodDescriptor] = [
    method
    for module in _descriptor_modules()
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
REQUEST_STREAMS = [m for m in METHODS if m.client_streaming]


def method_id(method: MethodDescriptor) -> str:
    return f"{method.containing_service.name}/{method.name}"


def path_of(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


# What needs no namespace, as in containerd: these services as a whole, and
# the events a shim forwards (the envelope names its namespace) or a client
# subscribes to (from every namespace).
NAMESPACE_FREE_SERVICES = {
    "containerd.services.version.v1.Version",
    "containerd.services.namespaces.v1.Namespaces",
    "containerd.services.introspection.v1.Introspection",
}
NAMESPACE_FREE_METHODS = {
    "/containerd.services.events.v1.Events/Forward",
    "/containerd.services.events.v1.Events/Subscribe",
}


def needs_namespace(method: MethodDescriptor) -> bool:
    return (
        method.containing_service.full_name not in NAMESPACE_FREE_SERVICES
        and path_of(method) not in NAMESPACE_FREE_METHODS
    )


# Streams that go on until the client ends them: asked with a short deadline,
# whose expiry is then the answer.
LONG_LIVED = {"/containerd.services.events.v1.Events/Subscribe"}
SHORT_DEADLINE = 1.0
# Any other call answers well within this; running into it is a hang.
DEADLINE = 30.0

# Codes that say what was wrong with a request. UNIMPLEMENTED is what the
# supervisor answers for what it does not do (checkpoints, other media types).
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNIMPLEMENTED,
}
# grpc's own answers for a method the server does not register or whose
# servicer does not implement it: never the supervisor's.
GRPC_UNIMPLEMENTED = {"Method not found!", "Method not implemented!"}

NOT_PROTOBUF = b"\xff\xff\xff"  # a field tag whose varint never ends
BAD_NAMESPACE = "../escape"


@dataclass
class Answer:
    code: grpc.StatusCode
    details: str
    responses: list[Message] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details!r}"


def empty_request(method: MethodDescriptor) -> bytes:
    return GetMessageClass(method.input_type)().SerializeToString()


def call(
    ch: grpc.Channel,
    method: MethodDescriptor,
    requests: list[bytes],
    metadata: list[tuple[str, str]],
) -> Answer:
    """``method`` with ``requests`` as they are on the wire (one, unless it takes a stream)."""
    response = GetMessageClass(method.output_type)
    timeout = SHORT_DEADLINE if path_of(method) in LONG_LIVED else DEADLINE
    kind = {
        (False, False): ch.unary_unary,
        (False, True): ch.unary_stream,
        (True, False): ch.stream_unary,
        (True, True): ch.stream_stream,
    }[method.client_streaming, method.server_streaming]
    callable_: Any = kind(path_of(method), response_deserializer=response.FromString)
    if method.client_streaming:
        request: Any = iter(requests)
    else:
        assert len(requests) == 1, requests
        request = requests[0]
    try:
        if method.server_streaming:
            responses = list(callable_(request, metadata=metadata, timeout=timeout))
        else:
            responses = [callable_(request, metadata=metadata, timeout=timeout)]
    except grpc.RpcError as e:
        err: Any = e
        return Answer(err.code(), err.details() or "")
    return Answer(grpc.StatusCode.OK, "", responses)


def check_answer(method: MethodDescriptor, answer: Answer) -> None:
    """OK, or a refusal with a message of the supervisor's; a deadline only for a long stream."""
    allowed = set(REFUSALS) | {grpc.StatusCode.OK}
    if path_of(method) in LONG_LIVED:
        allowed.add(grpc.StatusCode.DEADLINE_EXCEEDED)
    assert answer.code in allowed, f"{method_id(method)}: {answer}"
    if answer.code != grpc.StatusCode.OK:
        assert answer.details.strip(), f"{method_id(method)}: {answer.code.name} without a message"
        assert answer.details not in GRPC_UNIMPLEMENTED, f"{method_id(method)}: {answer}"


# -- what the daemon holds -----------------------------------------------------


def held_in(ch: grpc.Channel, ns: str) -> dict[str, Any]:
    """What namespace ``ns`` holds, by the services' own listings."""
    ask: dict[str, Any] = {"metadata": md(ns, lease=None), "timeout": DEADLINE}
    containers = containers_pb2_grpc.ContainersStub(ch).List(cpb.ListContainersRequest(), **ask)
    tasks = tasks_pb2_grpc.TasksStub(ch).List(tpb.ListTasksRequest(), **ask)
    images = images_pb2_grpc.ImagesStub(ch).List(ipb.ListImagesRequest(), **ask)
    leases = leases_pb2_grpc.LeasesStub(ch)
    content = content_pb2_grpc.ContentStub(ch)
    blobs = content.List(contentpb.ListContentRequest(), **ask)
    ingests = content.ListStatuses(contentpb.ListStatusesRequest(), **ask)
    snapshots = snapshots_pb2_grpc.SnapshotsStub(ch)
    return {
        "containers": sorted(c.id for c in containers.containers),
        "tasks": sorted(t.id for t in tasks.tasks),
        "images": sorted(i.name for i in images.images),
        "leases": {
            lease.id: sorted(
                (r.type, r.id)
                for r in leases.ListResources(
                    lpb.ListResourcesRequest(id=lease.id), **ask
                ).resources
            )
            for lease in leases.List(lpb.ListRequest(), **ask).leases
        },
        "content": sorted(i.digest for batch in blobs for i in batch.info),
        "ingests": sorted(s.ref for s in ingests.statuses),
        "snapshots": {
            sn: sorted(
                i.name
                for batch in snapshots.List(spb.ListSnapshotsRequest(snapshotter=sn), **ask)
                for i in batch.info
            )
            for sn in SNAPSHOTTERS
        },
    }


def inventory(sup: Supervisor, ch: grpc.Channel) -> dict[str, Any]:
    """Everything a request could create: in every namespace, on disk, as a process."""
    listed = namespace_pb2_grpc.NamespacesStub(ch).List(
        npb.ListNamespacesRequest(), timeout=DEADLINE
    )
    namespaces = {n.name: dict(n.labels) for n in listed.namespaces}
    assert sup.proc is not None
    return {
        "namespaces": namespaces,
        "held": {name: held_in(ch, name) for name in namespaces},
        "blobs": backend_blobs(sup),
        "ingest dirs": backend_ingests(sup),
        "snapshot dirs": backend_snapshot_dirs(sup),
        "mounts": mounts_of(sup),
        # shims get the supervisor's address, under its base, on their command line:
        # a task method must not start one for a container that is not there
        "processes": sorted(set(host.pids_mentioning(f"{sup.base}/")) - {sup.proc.pid}),
    }


LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", re.MULTILINE)
# grpc's own record of a request it could not decode: one traceback, ending
# in protobuf's DecodeError
UNDECODABLE = re.compile(
    r"ERROR grpc\._common: Exception deserializing message!\nTraceback [^\n]*\n"
    r"(?:  [^\n]*\n)*google\.protobuf\.message\.DecodeError: [^\n]*\n*"
)


def errors_logged(text: str) -> list[str]:
    """The records of ``text`` (the supervisor's log) with an error or a traceback,
    but grpc's own record of an undecodable request."""
    starts = [m.start() for m in LOG_RECORD.finditer(text)]
    records = [text[a:b] for a, b in zip([0, *starts], [*starts, len(text)], strict=True)]
    return [
        r
        for r in records
        if (" ERROR " in r or " CRITICAL " in r or "Traceback" in r)
        and not UNDECODABLE.fullmatch(LOG_RECORD.sub("", r, count=1))
    ]


def changes(before: Any, after: Any, where: str = "") -> list[str]:
    """Where two inventories differ, as ``path: before -> after``."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            change
            for key in sorted(before.keys() | after.keys())
            for change in changes(before.get(key), after.get(key), f"{where}/{key}")
        ]
    return [] if before == after else [f"{where}: {before!r} -> {after!r}"]


@pytest.fixture(scope="module")
def channel(supervisor: Supervisor) -> Iterator[grpc.Channel]:
    with supervisor.channel() as ch:
        yield ch


Unchanged = Callable[[], contextlib.AbstractContextManager[None]]


@pytest.fixture
def unchanged(supervisor: Supervisor, channel: grpc.Channel) -> Unchanged:
    """``with unchanged():`` after the block the daemon still serves, holds what it
    held before and logged no error (but grpc's for an undecodable request)."""

    @contextlib.contextmanager
    def watch() -> Iterator[None]:
        before = inventory(supervisor, channel)
        logged = supervisor.log.stat().st_size
        yield
        assert supervisor.proc is not None
        assert supervisor.proc.poll() is None, (
            f"the supervisor exited {supervisor.proc.returncode}:\n{host.tail(supervisor.log)}"
        )
        version = version_pb2_grpc.VersionStub(channel).Version(empty_pb2.Empty(), timeout=DEADLINE)
        assert version.version.startswith("dockyard-")
        after = inventory(supervisor, channel)
        assert after == before, "changed: " + "; ".join(changes(before, after))
        with supervisor.log.open("rb") as f:
            f.seek(logged)
            problems = errors_logged(f.read().decode(errors="replace"))
        assert not problems, "the supervisor logged:\n" + "\n".join(problems)

    return watch


Undo = Callable[[grpc.Channel, str, Answer], None]


def _drop_lease(ch: grpc.Channel, ns: str, answer: Answer) -> None:
    (created,) = answer.responses
    assert isinstance(created, lpb.CreateResponse)
    assert created.lease.id  # made up, as containerd's Create makes one up
    leases_pb2_grpc.LeasesStub(ch).Delete(
        lpb.DeleteRequest(id=created.lease.id, sync=True),
        metadata=md(ns, lease=None),
        timeout=DEADLINE,
    )
    namespace_pb2_grpc.NamespacesStub(ch).Delete(
        npb.DeleteNamespaceRequest(name=ns), timeout=DEADLINE
    )


# The empty requests that are good ones and create something (containerd
# makes up a lease id when none is given): what the test removes again.
CREATES: dict[str, Undo] = {
    "/containerd.services.leases.v1.Leases/Create": _drop_lease,
}


# -- the cases ---------------------------------------------------------------------

parametrize_methods = pytest.mark.parametrize("method", METHODS, ids=method_id)


def test_every_service_is_covered() -> None:
    """The descriptors found are those of the services the daemon registers
    (``containerd.services.<name>.v1``): a broken glob would make the tests vanish."""
    found = {m.containing_service.full_name.split(".")[2] for m in METHODS}
    assert found == set(SERVICES)


@parametrize_methods
def test_empty_request(
    method: MethodDescriptor,
    ns: str,
    channel: grpc.Channel,
    unchanged: Unchanged,
) -> None:
    with unchanged():
        answer = call(channel, method, [empty_request(method)], md(ns, lease=None))
        check_answer(method, answer)
        undo = CREATES.get(path_of(method))
        if undo is not None and answer.code == grpc.StatusCode.OK:
            undo(channel, ns, answer)


@parametrize_methods
def test_without_namespace(
    method: MethodDescriptor,
    channel: grpc.Channel,
    unchanged: Unchanged,
) -> None:
    with unchanged():
        answer = call(channel, method, [empty_request(method)], [])
        check_answer(method, answer)
    if needs_namespace(method):
        # containerd answers a missing namespace with FailedPrecondition; a
        # method that checks its own arguments first may refuse those instead
        assert answer.code in {
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.INVALID_ARGUMENT,
        }, f"{method_id(method)}: {answer}"
        if answer.code == grpc.StatusCode.FAILED_PRECONDITION:
            assert "namespace is required" in answer.details, answer


@parametrize_methods
def test_namespace_not_an_identifier(
    method: MethodDescriptor,
    channel: grpc.Channel,
    unchanged: Unchanged,
) -> None:
    with unchanged():
        answer = call(channel, method, [empty_request(method)], md(BAD_NAMESPACE, lease=None))
        check_answer(method, answer)
    if needs_namespace(method):
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, f"{method_id(method)}: {answer}"


@parametrize_methods
def test_request_not_protobuf(
    method: MethodDescriptor,
    ns: str,
    channel: grpc.Channel,
    unchanged: Unchanged,
) -> None:
    with unchanged():
        answer = call(channel, method, [NOT_PROTOBUF], md(ns, lease=None))
    # grpc's server answers a request it cannot decode with INTERNAL, as Go's does
    assert answer.code in {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.INVALID_ARGUMENT,
    }, f"{method_id(method)}: {answer}"
    assert answer.details.strip(), f"{method_id(method)}: {answer.code.name} without a message"


@pytest.mark.parametrize("method", REQUEST_STREAMS, ids=method_id)
def test_request_stream_without_messages(
    method: MethodDescriptor,
    ns: str,
    channel: grpc.Channel,
    unchanged: Unchanged,
) -> None:
    with unchanged():
        answer = call(channel, method, [], md(ns, lease=None))
        check_answer(method, answer)
