"""containerd.services.containers.v1.Containers: container records (metadata
only: the tasks service runs them)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc
from google.protobuf import any_pb2, empty_pb2

from dockyard.api import topics
from dockyard.api.convert import to_timestamp
from dockyard.api.events import container_pb2 as events
from dockyard.api.services.containers.v1 import containers_pb2 as pb
from dockyard.api.services.containers.v1 import containers_pb2_grpc
from dockyard.errors import InvalidArgument
from dockyard.filters import map_field, matcher
from dockyard.supervisor.grpcutil import namespace, rpc, typed_any
from dockyard.supervisor.metadata import Container, Typed

if TYPE_CHECKING:
    from dockyard.supervisor.daemon import Supervisor


def _typed(value: any_pb2.Any) -> Typed:
    return Typed(value.type_url, value.value)


def from_message(m: pb.Container) -> Container:
    return Container(
        id=m.id,
        runtime=m.runtime.name,
        spec=_typed(m.spec),
        labels=dict(m.labels),
        image=m.image,
        runtime_options=_typed(m.runtime.options),
        snapshotter=m.snapshotter,
        snapshot_key=m.snapshot_key,
        extensions={k: _typed(v) for k, v in m.extensions.items()},
    )


def to_message(c: Container) -> pb.Container:
    return pb.Container(
        id=c.id,
        labels=c.labels,
        image=c.image,
        runtime=pb.Container.Runtime(name=c.runtime, options=typed_any(c.runtime_options)),
        spec=typed_any(c.spec),
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        created_at=to_timestamp(c.created_at),
        updated_at=to_timestamp(c.updated_at),
        extensions={
            k: any_pb2.Any(type_url=v.type_url, value=v.value) for k, v in c.extensions.items()
        },
    )


def _field(c: Container, path: list[str]) -> str | None:
    # the fields containerd's container filter adaptor knows
    if path == ["id"]:
        return c.id
    if path == ["image"]:
        return c.image
    if path in (["runtime"], ["runtime", "name"]):
        return c.runtime
    if path == ["snapshotter"]:
        return c.snapshotter
    if path[:1] == ["labels"]:
        return map_field(c.labels, path[1:])
    return None


def filtered(containers: list[Container], filters: list[str]) -> list[Container]:
    match = matcher(filters)
    return [c for c in containers if match(functools.partial(_field, c))]


class ContainersService(containers_pb2_grpc.ContainersServicer):
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.meta = sup.metadata

    @rpc
    def Get(
        self, request: pb.GetContainerRequest, context: grpc.ServicerContext
    ) -> pb.GetContainerResponse:
        ns = namespace(context)
        return pb.GetContainerResponse(
            container=to_message(self.meta.get_container(ns, request.id))
        )

    def _list(
        self, request: pb.ListContainersRequest, context: grpc.ServicerContext
    ) -> list[Container]:
        ns = namespace(context)
        return filtered(self.meta.list_containers(ns), list(request.filters))

    @rpc
    def List(
        self, request: pb.ListContainersRequest, context: grpc.ServicerContext
    ) -> pb.ListContainersResponse:
        return pb.ListContainersResponse(
            containers=[to_message(c) for c in self._list(request, context)]
        )

    @rpc
    def ListStream(
        self, request: pb.ListContainersRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ListContainerMessage]:
        for c in self._list(request, context):
            yield pb.ListContainerMessage(container=to_message(c))

    @rpc
    def Create(
        self, request: pb.CreateContainerRequest, context: grpc.ServicerContext
    ) -> pb.CreateContainerResponse:
        ns = namespace(context)
        record = from_message(request.container)
        # A client that names no runtime gets the supervisor's default
        # (--default-runtime); containerd's clients always name one.
        record.runtime = record.runtime or self.sup.config.default_runtime
        c = self.meta.create_container(ns, record)
        self.sup.events.publish(
            ns,
            topics.CONTAINER_CREATE,
            events.ContainerCreate(
                id=c.id,
                image=c.image,
                runtime=events.ContainerCreate.Runtime(
                    name=c.runtime, options=typed_any(c.runtime_options)
                ),
            ),
        )
        return pb.CreateContainerResponse(container=to_message(c))

    @rpc
    def Update(
        self, request: pb.UpdateContainerRequest, context: grpc.ServicerContext
    ) -> pb.UpdateContainerResponse:
        ns = namespace(context)
        if not request.container.id:
            raise InvalidArgument("update container: the container's id must be set")
        c = self.meta.update_container(
            ns, from_message(request.container), request.update_mask.paths
        )
        self.sup.events.publish(
            ns,
            topics.CONTAINER_UPDATE,
            events.ContainerUpdate(
                id=c.id, image=c.image, labels=c.labels, snapshot_key=c.snapshot_key
            ),
        )
        return pb.UpdateContainerResponse(container=to_message(c))

    @rpc
    def Delete(
        self, request: pb.DeleteContainerRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        ns = namespace(context)
        tasks = self.sup.tasks
        if tasks is None:
            self.meta.delete_container(ns, request.id)
        else:
            with tasks.without_task(ns, request.id):
                self.meta.delete_container(ns, request.id)
        self.sup.events.publish(ns, topics.CONTAINER_DELETE, events.ContainerDelete(id=request.id))
        self.sup.gc.schedule()
        return empty_pb2.Empty()


def register(server: grpc.Server, sup: Supervisor) -> None:
    containers_pb2_grpc.add_ContainersServicer_to_server(ContainersService(sup), server)
    sup.add_plugin("io.containerd.grpc.v1", "containers")
