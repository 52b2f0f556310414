"""The client of a containerd-compatible daemon (dockyard-supervisor or containerd).

::

    with Client("/run/dockyard/supervisor.sock", namespace="engine") as client:
        [image] = client.import_image("busybox.tar")
        spec = client.docker_spec(image, "web", args=["echo", "hello"])
        container = client.new_container("web", image, spec=spec)
        out = io.BytesIO()
        task = container.new_task(cio.streams(stdout=out, fifo_root=...))
        task.start()
        status = task.wait()
        task.delete()            # out.getvalue() == b"hello\\n" from here on
        container.delete()

Every request carries the client's namespace (``containerd-namespace``) and,
inside ``with client.lease():``, the lease (``containerd-lease``) that keeps
what it makes from garbage collection until it is referenced. Failures are
dockyard's errors (``NotFound``, ``AlreadyExists``, ...), mapped once from
gRPC status codes in ``rpc.from_grpc``.

The service wrappers (``client.containers``, ``.images``, ``.content``,
``.snapshots(name)``, ``.diff``, ``.leases``, ``.events``,
``.introspection``, ``.namespaces``, ``.tasks``) are the services call for
call, with plain dataclasses; the methods here are what the Go client adds
on top: import, unpack, containers with their rootfs, tasks with stdio.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from dockyard.api.services.version.v1 import version_pb2_grpc
from dockyard.client import image as image_ops
from dockyard.client import importer, oci
from dockyard.client.container import Container
from dockyard.client.containers import RUNC_V2, ContainerRecord, ContainersService, Runtime
from dockyard.client.content import ContentService
from dockyard.client.diff import DiffService
from dockyard.client.events import EventsService
from dockyard.client.images import ImagesService
from dockyard.client.introspection import IntrospectionService
from dockyard.client.leases import DEFAULT_EXPIRE, Lease, LeasesService
from dockyard.client.namespaces import NamespacesService
from dockyard.client.rpc import Connection
from dockyard.client.snapshots import DEFAULT_SNAPSHOTTER, SnapshotsService
from dockyard.client.tasks import TasksService
from dockyard.errors import InvalidArgument, NotFound
from dockyard.image.images import Image
from dockyard.spec.image import ImageConfig, Platform

DEFAULT_TIMEOUT = 60.0
# containerd's client gives up dialling after this long (its defaults.DefaultDialTimeout).
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Version:
    version: str
    revision: str


class Client:
    """A connection to the daemon at unix socket ``address``, working in ``namespace``.

    ``timeout`` bounds each unary request (seconds; None: no bound); waits,
    subscriptions, blob streams and layer applies are never cut short. The
    constructor waits up to ``connect_timeout`` for the daemon to answer.
    """

    def __init__(
        self,
        address: str,
        namespace: str = "default",
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        _conn: Connection | None = None,
    ) -> None:
        if not namespace:
            raise InvalidArgument("client: namespace must not be empty")
        self._conn = _conn or Connection(address, namespace, timeout)
        if _conn is None:
            try:
                self._conn.wait_ready(connect_timeout)
            except BaseException:
                self._conn.close()
                raise
        conn = self._conn
        self.containers = ContainersService(conn)
        self.images = ImagesService(conn)
        self.content = ContentService(conn)
        self.diff = DiffService(conn)
        self.events = EventsService(conn)
        self.introspection = IntrospectionService(conn)
        self.leases = LeasesService(conn)
        self.namespaces = NamespacesService(conn)
        self.tasks = TasksService(conn)

    # -- the connection

    @property
    def address(self) -> str:
        return self._conn.address

    @property
    def namespace(self) -> str:
        return self._conn.namespace

    def with_namespace(self, namespace: str) -> Client:
        """This client in another namespace, on the same connection (closed with this one)."""
        if not namespace:
            raise InvalidArgument("client: namespace must not be empty")
        return Client(self.address, namespace, _conn=self._conn.view(namespace))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def version(self) -> Version:
        stub = self._conn.stub(version_pb2_grpc.VersionStub)
        resp = self._conn.call(stub.Version, empty_pb2.Empty())
        return Version(resp.version, resp.revision)

    def server_uuid(self) -> str:
        return self.introspection.server_uuid()

    def snapshots(self, snapshotter: str = DEFAULT_SNAPSHOTTER) -> SnapshotsService:
        return SnapshotsService(self._conn, snapshotter)

    # -- leases

    @property
    def current_lease(self) -> str | None:
        """The lease this thread's requests carry, if any."""
        return self._conn.lease_var.get()

    @contextlib.contextmanager
    def lease(
        self,
        *,
        labels: Mapping[str, str] | None = None,
        expire: timedelta | None = DEFAULT_EXPIRE,
    ) -> Iterator[str]:
        """Run the block's requests under a lease, made now and deleted after
        (the Go client's ``WithLease``): what they make is kept until
        referenced. Inside another such block, that lease is used and kept."""
        current = self._conn.lease_var.get()
        if current:
            yield current
            return
        made: Lease = self.leases.create(labels=labels, expire=expire)
        token = self._conn.lease_var.set(made.id)
        try:
            yield made.id
        finally:
            self._conn.lease_var.reset(token)
            try:
                self.leases.delete(made.id)
            except NotFound:
                pass

    @contextlib.contextmanager
    def use_lease(self, lease_id: str) -> Iterator[str]:
        """Run the block's requests under an existing lease (not deleted after)."""
        token = self._conn.lease_var.set(lease_id)
        try:
            yield lease_id
        finally:
            self._conn.lease_var.reset(token)

    # -- images

    def get_image(self, image: Image | str) -> Image:
        return image if isinstance(image, Image) else self.images.get(image)

    def import_image(self, path: str, *, name: str | None = None) -> list[Image]:
        """Import an OCI layout or docker-archive (tar or directory); the image records."""
        return importer.import_image(self, path, name=name)

    def unpack(
        self,
        image: Image | str,
        snapshotter: str = DEFAULT_SNAPSHOTTER,
        *,
        platform: Platform | None = None,
    ) -> str:
        """Unpack the image's layers as committed snapshots; the top chain ID."""
        return image_ops.unpack(self, self.get_image(image), snapshotter, platform)

    def is_unpacked(self, image: Image | str, snapshotter: str = DEFAULT_SNAPSHOTTER) -> bool:
        return image_ops.is_unpacked(self, self.get_image(image), snapshotter)

    def image_config(self, image: Image | str, platform: Platform | None = None) -> ImageConfig:
        """The image's config for the platform (this host's if None)."""
        return image_ops.resolve(self, self.get_image(image), platform).config

    def docker_spec(
        self,
        image: Image | str,
        container_id: str,
        *,
        snapshotter: str = DEFAULT_SNAPSHOTTER,
        **options: Any,
    ) -> dict[str, Any]:
        """The runtime spec dockerd would write for ``docker run`` of the image
        (``oci.docker_default_spec``; ``options`` are its keywords). The image
        is unpacked if need be, and a view of it mounted a moment to read its
        users; the rootfs is ``rootfs`` in the bundle, where the shim mounts it."""
        img = self.get_image(image)
        resolved = image_ops.resolve(self, img)
        image_ops.unpack(self, img, snapshotter, resolved=resolved)
        return self._spec_of_unpacked(img, resolved, container_id, snapshotter, **options)

    def _spec_of_unpacked(
        self,
        img: Image,
        resolved: image_ops.Resolved,
        container_id: str,
        snapshotter: str,
        **options: Any,
    ) -> dict[str, Any]:
        with image_ops.mounted_view(self, img, snapshotter, resolved=resolved) as rootfs:
            return oci.docker_default_spec(
                rootfs=rootfs,
                root_path="rootfs",
                image_config=resolved.config,
                container_id=container_id,
                **options,
            )

    # -- containers

    def new_container(
        self,
        id: str,
        image: Image | str | None = None,
        *,
        spec: Mapping[str, Any] | None = None,
        snapshotter: str = DEFAULT_SNAPSHOTTER,
        snapshot_key: str | None = None,
        readonly: bool = False,
        runtime: str = RUNC_V2,
        runtime_options: Message | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Container:
        """Record container ``id``: with an image, its rootfs is a new snapshot
        (key ``snapshot_key``, by default the id) on the unpacked image, a
        read-only view if ``readonly``; ``spec`` defaults to ``docker_spec``."""
        with self.lease():
            key = ""
            name = ""
            if image is not None:
                img = self.get_image(image)
                name = img.name
                resolved = image_ops.resolve(self, img)
                top = image_ops.unpack(self, img, snapshotter, resolved=resolved)
                if spec is None:
                    spec = self._spec_of_unpacked(img, resolved, id, snapshotter)
                key = snapshot_key or id
                sn = self.snapshots(snapshotter)
                if readonly:
                    sn.view(key, top)
                else:
                    sn.prepare(key, top)
            elif spec is None:
                raise InvalidArgument(f"new container {id!r}: no image and no spec")
            record = ContainerRecord(
                id=id,
                runtime=Runtime(runtime, runtime_options),
                spec=dict(spec),
                image=name,
                snapshotter=snapshotter if key else "",
                snapshot_key=key,
                labels=dict(labels or {}),
            )
            try:
                self.containers.create(record)
            except BaseException:
                if key:
                    try:
                        self.snapshots(snapshotter).remove(key)
                    except NotFound:
                        pass
                raise
        return Container(self, id)

    def load_container(self, id: str) -> Container:
        """The handle of an existing container (NotFound if there is none)."""
        self.containers.get(id)
        return Container(self, id)

    def list_containers(self, *filters: str) -> list[Container]:
        return [Container(self, r.id) for r in self.containers.list(*filters)]

    @contextlib.contextmanager
    def container(
        self,
        id: str,
        image: Image | str | None = None,
        *,
        remove_timeout: float | None = None,
        **kwargs: Any,
    ) -> Iterator[Container]:
        """``new_container`` for the block; after it, the container is removed
        whatever state it is in (its task killed and deleted, its snapshot too;
        ``remove_timeout`` bounds the wait for the task to die)."""
        made = self.new_container(id, image, **kwargs)
        try:
            yield made
        finally:
            made.remove(remove_timeout)
