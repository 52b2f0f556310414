"""The daemons the client library is proven against, and clean namespaces on them.

``daemon`` is module-scoped and parametrized: every test of the client runs
once against the reference (a private containerd 1.6) and once against
dockyard-supervisor, each with every path under one temp dir. A test gets a
``ns`` of its own: a ``Client`` in a fresh namespace, whose teardown removes
whatever the test left there (tasks, containers, images, leases, snapshots,
blobs, ingests) and then the namespace.

``shim`` says which shim runs the tasks: containerd's runc shim (with runc)
for both daemons, and dockyard's shim too against the supervisor, when it is
installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message

from dockyard.api.runc.options import oci_pb2
from dockyard.client.client import Client
from dockyard.client.container import Container
from dockyard.client.snapshots import DEFAULT_SNAPSHOTTER
from dockyard.errors import DockyardError, NotFound
from dockyard.image.images import Image
from tests.compat import host
from tests.compat.daemons import private_containerd
from tests.images import ImageArchive, build_image_archive
from tests.supervisor.conftest import daemon_env, private_supervisor

RUNC_SHIM = "io.containerd.runc.v2"
DOCKYARD_SHIM = "io.containerd.dockyard.v2"
DOCKYARD_SHIM_BINARY = "containerd-shim-dockyard-v2"


@dataclass
class Daemon:
    """A running daemon the tests talk to through the client."""

    kind: str  # "containerd" or "supervisor"
    address: str
    base: Path
    image: ImageArchive
    log: Path
    namespaces: list[str] = field(default_factory=list)

    @property
    def fifo_root(self) -> str:
        return str(self.base / "fifo")

    def log_tail(self) -> str:
        return host.tail(self.log, 60)


@dataclass(frozen=True)
class Shim:
    """How tasks are run: the shim's runtime name and its options."""

    name: str
    options: Message

    @property
    def id(self) -> str:
        return "dockyard" if self.name == DOCKYARD_SHIM else "runc"


def _containerd(tmp: pytest.TempPathFactory) -> Iterator[Daemon]:
    # our shim on PATH: the same tests run it under the reference daemon too
    with private_containerd(tmp.mktemp("cl-ctrd"), env=daemon_env()) as ctrd:
        daemon = Daemon("containerd", ctrd.address, ctrd.base, ctrd.image, ctrd.log)
        try:
            yield daemon
        finally:
            _remove_cgroups(daemon)


def _supervisor(tmp: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp.mktemp("cl-sup")
    image = build_image_archive(tmp.mktemp("cl-img") / "busybox.tar")
    namespaces: list[str] = []
    try:
        with private_supervisor(base, "cl-" + uuid.uuid4().hex[:8], image) as sup:
            yield Daemon("supervisor", sup.address, base, sup.image, sup.log, namespaces)
    finally:
        # the tests' namespaces' cgroups, once the supervisor and its shims are gone
        for ns in namespaces:
            host.remove_cgroups(ns)


def _remove_cgroups(daemon: Daemon) -> None:
    for ns in daemon.namespaces:
        host.remove_cgroups(ns)


@pytest.fixture(scope="module", params=["containerd", "supervisor"])
def daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    start = _containerd if request.param == "containerd" else _supervisor
    yield from start(tmp_path_factory)


def shim_params() -> list[Any]:
    return [pytest.param("runc", id="runc"), pytest.param("dockyard", id="dockyard-shim")]


@pytest.fixture(params=shim_params())
def shim(daemon: Daemon, request: pytest.FixtureRequest) -> Shim:
    root = str(daemon.base / f"runtime-root-{request.param}")
    if request.param == "runc":
        runc = shutil.which("runc")
        if runc is None:
            pytest.skip("runc is not installed")
        return Shim(RUNC_SHIM, oci_pb2.Options(binary_name=runc, root=root))
    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), DOCKYARD_SHIM_BINARY)):
        pytest.skip(f"{DOCKYARD_SHIM_BINARY} is not installed")
    # no binary name: the shim runs its own default, dockyard-runtime
    return Shim(DOCKYARD_SHIM, oci_pb2.Options(root=root))


@pytest.fixture
def ns(daemon: Daemon) -> Iterator[Client]:
    """A client in a namespace of the test's own; emptied and deleted after."""
    name = "cl-" + uuid.uuid4().hex[:10]
    daemon.namespaces.append(name)
    client = Client(daemon.address, name)
    try:
        yield client
    finally:
        try:
            empty_namespace(client)
            with contextlib.suppress(NotFound):
                client.namespaces.delete(name)
        finally:
            client.close()
            host.remove_cgroups(name)


@pytest.fixture
def image(ns: Client, daemon: Daemon) -> Image:
    """The daemon's busybox archive imported into the test's namespace."""
    [made] = ns.import_image(str(daemon.image.path))
    return made


def spec_for(client: Client, image: Image, cid: str, args: list[str], **kw: Any) -> dict[str, Any]:
    """Docker's default spec for the image, in a cgroup the teardown finds by namespace."""
    return client.docker_spec(
        image, cid, args=args, cgroups_path=f"/{client.namespace}/{cid}", **kw
    )


def empty_namespace(client: Client, snapshotter: str = DEFAULT_SNAPSHOTTER) -> None:
    """Remove everything in the client's namespace, whatever state it is in."""
    for record in client.containers.list():
        Container(client, record.id).remove(host.TEARDOWN_TIMEOUT)
    images = client.images.list()
    for i, image in enumerate(images):
        with contextlib.suppress(NotFound):
            client.images.delete(image.name, sync=i == len(images) - 1)
    for lease in client.leases.list():
        with contextlib.suppress(NotFound):
            client.leases.delete(lease.id, sync=True)
    sn = client.snapshots(snapshotter)
    for _ in range(20):  # children before their parents
        infos = sn.list()
        if not infos:
            break
        parents = {i.parent for i in infos}
        for info in infos:
            if info.name not in parents:
                with contextlib.suppress(DockyardError):
                    sn.remove(info.name)
    for status in client.content.list_statuses():
        with contextlib.suppress(NotFound):
            client.content.abort(status.ref)
    for blob in client.content.list():
        with contextlib.suppress(NotFound):
            client.content.delete(blob.digest)
