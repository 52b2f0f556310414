"""version, namespaces, containers, events and introspection with ctr and gRPC."""

from __future__ import annotations

import subprocess
import time
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, empty_pb2, field_mask_pb2

from dockyard.api import typeurl
from dockyard.api.events import container_pb2 as cevents
from dockyard.api.events import namespace_pb2 as nsevents
from dockyard.api.services.containers.v1 import containers_pb2 as cpb
from dockyard.api.services.containers.v1 import containers_pb2_grpc
from dockyard.api.services.events.v1 import events_pb2 as epb
from dockyard.api.services.events.v1 import events_pb2_grpc
from dockyard.api.services.introspection.v1 import introspection_pb2_grpc
from dockyard.api.services.namespaces.v1 import namespace_pb2 as npb
from dockyard.api.services.namespaces.v1 import namespace_pb2_grpc
from tests.compat import host
from tests.supervisor.conftest import Supervisor
from tests.supervisor.imageside import fails, new_namespace
from tests.supervisor.taskutil import EventLog

SPEC = typeurl.pack_json(typeurl.SPEC, {"ociVersion": "1.0.2", "process": {"args": ["true"]}})


def container(cid: str, **kw: Any) -> cpb.Container:
    return cpb.Container(
        id=cid,
        runtime=cpb.Container.Runtime(name="io.containerd.runc.v2"),
        spec=SPEC,
        **kw,
    )


def test_version(supervisor: Supervisor) -> None:
    out = supervisor.ctr("version").stdout
    assert "dockyard-" in out.split("Server:")[1]


def test_namespaces_create_label_ls_rm(supervisor: Supervisor) -> None:
    ns = new_namespace()
    supervisor.ctr("namespaces", "create", ns, "team=a")
    assert ns in supervisor.ctr("namespaces", "ls", "--quiet").stdout.split()
    supervisor.ctr("namespaces", "label", ns, "team=b", "tier=x")
    line = next(
        x for x in supervisor.ctr("namespaces", "ls").stdout.splitlines() if x.startswith(ns)
    )
    assert "team=b" in line and "tier=x" in line
    # a label set to nothing is removed, as containerd's SetLabel does
    supervisor.ctr("namespaces", "label", ns, "tier=")
    line = next(
        x for x in supervisor.ctr("namespaces", "ls").stdout.splitlines() if x.startswith(ns)
    )
    assert "team=b" in line and "tier" not in line
    again = supervisor.ctr("namespaces", "create", ns, check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    supervisor.ctr("namespaces", "rm", ns)
    assert ns not in supervisor.ctr("namespaces", "ls", "--quiet").stdout.split()
    # ctr takes NOT_FOUND as done; the service itself says it
    with supervisor.channel() as ch, fails(grpc.StatusCode.NOT_FOUND, "not found"):
        namespace_pb2_grpc.NamespacesStub(ch).Delete(npb.DeleteNamespaceRequest(name=ns))


def test_namespace_with_containers_cannot_be_removed(supervisor: Supervisor) -> None:
    ns = new_namespace()
    with supervisor.channel() as ch:
        stub = containers_pb2_grpc.ContainersStub(ch)
        stub.Create(
            cpb.CreateContainerRequest(container=container("c1")), metadata=supervisor.md(ns)
        )
        busy = supervisor.ctr("namespaces", "rm", ns, check=False)
        assert busy.returncode != 0
        assert "must be empty" in busy.stderr and "containers" in busy.stderr
        supervisor.ctr("containers", "rm", "c1", namespace=ns)
    supervisor.ctr("namespaces", "rm", ns)


def test_a_namespace_with_only_a_lease_goes_and_takes_the_lease(supervisor: Supervisor) -> None:
    ns = new_namespace()
    supervisor.ctr("leases", "create", "--id", "held", namespace=ns)
    assert supervisor.ctr("leases", "ls", "-q", namespace=ns).stdout.split() == ["held"]
    supervisor.ctr("namespaces", "rm", ns)
    assert ns not in supervisor.ctr("namespaces", "ls", "--quiet").stdout.split()
    assert supervisor.ctr("leases", "ls", "-q", namespace=ns).stdout.split() == []


def test_bad_namespace_names(supervisor: Supervisor) -> None:
    with supervisor.channel() as ch:
        stub = namespace_pb2_grpc.NamespacesStub(ch)
        for bad in ("", "a b", "-x", "x" * 77, "a/b"):
            with fails(grpc.StatusCode.INVALID_ARGUMENT, "namespace"):
                stub.Create(npb.CreateNamespaceRequest(namespace=npb.Namespace(name=bad)))
        # containerd answers a namespace it does not know with no labels
        got = stub.Get(npb.GetNamespaceRequest(name="nosuchns")).namespace
        assert got.name == "nosuchns" and not got.labels
        with fails(grpc.StatusCode.INVALID_ARGUMENT, "identifier"):
            stub.Get(npb.GetNamespaceRequest(name="a b"))
        supervisor.ctr("namespaces", "create", supervisor.namespace, check=False)
        with fails(grpc.StatusCode.INVALID_ARGUMENT, "cannot update field"):
            stub.Update(
                npb.UpdateNamespaceRequest(
                    namespace=npb.Namespace(name=supervisor.namespace),
                    update_mask=field_mask_pb2.FieldMask(paths=["name"]),
                )
            )


def test_containers_crud_and_isolation(supervisor: Supervisor) -> None:
    ns, other = new_namespace(), new_namespace()
    with supervisor.channel() as ch:
        stub = containers_pb2_grpc.ContainersStub(ch)
        made = stub.Create(
            cpb.CreateContainerRequest(
                container=container(
                    "web", labels={"app": "a"}, image="docker.io/library/busybox:latest"
                )
            ),
            metadata=supervisor.md(ns),
        ).container
        assert made.created_at.seconds > 0 and made.updated_at == made.created_at
        stub.Create(
            cpb.CreateContainerRequest(container=container("db", labels={"app": "b"})),
            metadata=supervisor.md(ns),
        )
        # the other namespace sees none of them
        assert not stub.List(cpb.ListContainersRequest(), metadata=supervisor.md(other)).containers
        with fails(grpc.StatusCode.NOT_FOUND, "web"):
            stub.Get(cpb.GetContainerRequest(id="web"), metadata=supervisor.md(other))
        listed = stub.List(
            cpb.ListContainersRequest(filters=["labels.app==a"]), metadata=supervisor.md(ns)
        )
        assert [c.id for c in listed.containers] == ["web"]
        streamed = list(stub.ListStream(cpb.ListContainersRequest(), metadata=supervisor.md(ns)))
        assert sorted(m.container.id for m in streamed) == ["db", "web"]
        assert set(supervisor.ctr("containers", "ls", "--quiet", namespace=ns).stdout.split()) == {
            "db",
            "web",
        }
        # update one label; the rest stays
        upd = stub.Update(
            cpb.UpdateContainerRequest(
                container=cpb.Container(id="web", labels={"tier": "front"}),
                update_mask=field_mask_pb2.FieldMask(paths=["labels.tier"]),
            ),
            metadata=supervisor.md(ns),
        ).container
        assert dict(upd.labels) == {"app": "a", "tier": "front"}
        assert upd.image == "docker.io/library/busybox:latest"
        # runtime is immutable
        with fails(grpc.StatusCode.INVALID_ARGUMENT, "immutable"):
            stub.Update(
                cpb.UpdateContainerRequest(
                    container=cpb.Container(
                        id="web",
                        runtime=cpb.Container.Runtime(name="other"),
                        spec=SPEC,
                    )
                ),
                metadata=supervisor.md(ns),
            )
        with fails(grpc.StatusCode.ALREADY_EXISTS, "web"):
            stub.Create(
                cpb.CreateContainerRequest(container=container("web")), metadata=supervisor.md(ns)
            )
        for cid in ("web", "db"):
            stub.Delete(cpb.DeleteContainerRequest(id=cid), metadata=supervisor.md(ns))
        with fails(grpc.StatusCode.NOT_FOUND, "web"):
            stub.Delete(cpb.DeleteContainerRequest(id="web"), metadata=supervisor.md(ns))
    supervisor.ctr("namespaces", "rm", ns)


@pytest.mark.parametrize(
    "bad, code, match",
    [
        (
            cpb.Container(id="", runtime=cpb.Container.Runtime(name="r"), spec=SPEC),
            "INVALID_ARGUMENT",
            "empty",
        ),
        (
            cpb.Container(id="a b", runtime=cpb.Container.Runtime(name="r"), spec=SPEC),
            "INVALID_ARGUMENT",
            "identifier",
        ),
        (
            cpb.Container(id="x", runtime=cpb.Container.Runtime(name="r")),
            "INVALID_ARGUMENT",
            "spec",
        ),
        (
            cpb.Container(
                id="x", runtime=cpb.Container.Runtime(name="r"), spec=SPEC, snapshot_key="k"
            ),
            "INVALID_ARGUMENT",
            "snapshotter",
        ),
        (
            cpb.Container(
                id="x", runtime=cpb.Container.Runtime(name="r"), spec=SPEC, labels={"k": "v" * 5000}
            ),
            "INVALID_ARGUMENT",
            "label",
        ),
    ],
)
def test_bad_containers_are_refused(
    supervisor: Supervisor, bad: cpb.Container, code: str, match: str
) -> None:
    ns = new_namespace()
    with supervisor.channel() as ch:
        stub = containers_pb2_grpc.ContainersStub(ch)
        with fails(getattr(grpc.StatusCode, code), match):
            stub.Create(cpb.CreateContainerRequest(container=bad), metadata=supervisor.md(ns))
        # nothing was recorded, and the daemon still serves
        assert not stub.List(cpb.ListContainersRequest(), metadata=supervisor.md(ns)).containers


def test_a_container_without_a_runtime_gets_the_default_runtime(supervisor: Supervisor) -> None:
    ns = new_namespace()
    with supervisor.channel() as ch:
        stub = containers_pb2_grpc.ContainersStub(ch)
        made = stub.Create(
            cpb.CreateContainerRequest(container=cpb.Container(id="norun", spec=SPEC)),
            metadata=supervisor.md(ns),
        ).container
        try:
            # the fixture's supervisor runs with the default --default-runtime
            assert made.runtime.name == "io.containerd.dockyard.v2"
        finally:
            stub.Delete(cpb.DeleteContainerRequest(id="norun"), metadata=supervisor.md(ns))


def test_requests_without_namespace_fail_clearly(supervisor: Supervisor) -> None:
    with supervisor.channel() as ch:
        stub = containers_pb2_grpc.ContainersStub(ch)
        with fails(grpc.StatusCode.FAILED_PRECONDITION, "namespace is required"):
            stub.List(cpb.ListContainersRequest())
        with fails(grpc.StatusCode.INVALID_ARGUMENT, "filter"):
            stub.List(cpb.ListContainersRequest(filters=["labels.=="]), metadata=supervisor.md())
    supervisor.ctr("version")


def test_events_reach_subscribers_with_filters(supervisor: Supervisor) -> None:
    ns = new_namespace()
    proc = subprocess.Popen(
        ["ctr", "--address", supervisor.address, "events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with supervisor.channel() as ch:
            events = events_pb2_grpc.EventsStub(ch)
            stream = events.Subscribe(
                # one filter: both conditions hold (separate filters would be OR-ed)
                epb.SubscribeRequest(filters=[f'topic~="/namespaces/",namespace=={ns}'])
            )
            time.sleep(0.5)  # let both subscriptions register
            supervisor.ctr("namespaces", "create", ns)
            events.Publish(
                epb.PublishRequest(
                    topic="/custom/thing", event=typeurl.pack(nsevents.NamespaceUpdate(name=ns))
                ),
                metadata=supervisor.md(ns),
            )
            supervisor.ctr("namespaces", "rm", ns)
            got = []
            for env in stream:
                got.append((env.namespace, env.topic))
                if env.topic == "/namespaces/delete":
                    break
            stream.cancel()
            assert got == [(ns, "/namespaces/create"), (ns, "/namespaces/delete")]
            with fails(grpc.StatusCode.INVALID_ARGUMENT, "topic"):
                events.Publish(
                    epb.PublishRequest(topic="nope", event=any_pb2.Any(type_url="x")),
                    metadata=supervisor.md(ns),
                )
    finally:
        time.sleep(0.3)
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    # ctr decodes each event by its type URL, so these are printed in full
    assert "/namespaces/create" in out and ns in out
    assert "/custom/thing" in out


def test_events_filter_on_the_events_own_fields(supervisor: Supervisor) -> None:
    wanted, other = new_namespace(), new_namespace()
    with supervisor.channel() as ch:
        events = events_pb2_grpc.EventsStub(ch)
        # a field of the event itself (NamespaceCreate.name); an absent field never matches
        stream = events.Subscribe(
            epb.SubscribeRequest(filters=[f"event.name=={wanted}"]), timeout=10
        )
        nowhere = events.Subscribe(epb.SubscribeRequest(filters=["event.nosuch==x"]), timeout=5)
        time.sleep(0.5)  # let the subscriptions register
        try:
            for ns in (other, wanted):
                supervisor.ctr("namespaces", "create", ns)
                supervisor.ctr("namespaces", "rm", ns)
            env = next(iter(stream))
            assert (env.namespace, env.topic) == (wanted, "/namespaces/create")
            got = []
            with pytest.raises(grpc.RpcError) as err:
                for e in nowhere:  # until its deadline
                    got.append(e.topic)
            assert got == [] and err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            stream.cancel()


def test_introspection_lists_the_services(supervisor: Supervisor) -> None:
    out = supervisor.ctr("plugins", "ls").stdout
    for plugin in ("version", "namespaces", "containers", "events", "introspection"):
        assert plugin in out
    out = supervisor.ctr("plugins", "ls", "type==io.containerd.snapshotter.v1").stdout
    assert "overlayfs" in out and "containers" not in out
    with supervisor.channel() as ch:
        first = introspection_pb2_grpc.IntrospectionStub(ch).Server(empty_pb2.Empty()).uuid
    assert str(uuid.UUID(first)) == first
    # the uuid is kept in the root: the same after a restart
    supervisor.restart()
    with supervisor.channel() as ch:
        assert introspection_pb2_grpc.IntrospectionStub(ch).Server(empty_pb2.Empty()).uuid == first


def test_containers_and_namespaces_publish_their_events(supervisor: Supervisor) -> None:
    ns = new_namespace()
    log = EventLog(supervisor, f"namespace=={ns}").start()
    try:
        supervisor.ctr("namespaces", "create", ns, "team=a")
        supervisor.ctr("namespaces", "label", ns, "team=b")
        with supervisor.channel() as ch:
            stub = containers_pb2_grpc.ContainersStub(ch)
            stub.Create(
                cpb.CreateContainerRequest(container=container("ev", image="example.com/i:1")),
                metadata=supervisor.md(ns),
            )
            stub.Update(
                cpb.UpdateContainerRequest(
                    container=cpb.Container(id="ev", labels={"k": "v"}),
                    update_mask=field_mask_pb2.FieldMask(paths=["labels.k"]),
                ),
                metadata=supervisor.md(ns),
            )
            stub.Delete(cpb.DeleteContainerRequest(id="ev"), metadata=supervisor.md(ns))
        supervisor.ctr("namespaces", "rm", ns)
        want = [
            ("/namespaces/create", nsevents.NamespaceCreate(name=ns, labels={"team": "a"})),
            ("/namespaces/update", nsevents.NamespaceUpdate(name=ns, labels={"team": "b"})),
            (
                "/containers/create",
                cevents.ContainerCreate(
                    id="ev",
                    image="example.com/i:1",
                    runtime=cevents.ContainerCreate.Runtime(name="io.containerd.runc.v2"),
                ),
            ),
            (
                "/containers/update",
                cevents.ContainerUpdate(id="ev", image="example.com/i:1", labels={"k": "v"}),
            ),
            ("/containers/delete", cevents.ContainerDelete(id="ev")),
            ("/namespaces/delete", nsevents.NamespaceDelete(name=ns)),
        ]

        def ours() -> list[epb.Envelope]:
            return [e for e in list(log.envelopes) if e.topic != "/dockyard-test/ready"]

        host.wait_for(lambda: len(ours()) >= len(want), 10, "the events")
        assert [(e.topic, typeurl.unpack(e.event)) for e in ours()] == want
    finally:
        log.close()
