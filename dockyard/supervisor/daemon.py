"""The supervisor daemon: its stores, its gRPC and ttrpc servers, its lifetime.

``Supervisor`` owns everything a service adapts (a service module gets it
in ``register(server, sup)``):

- ``content``: the image library's content store, ``<root>/content``;
- ``images``, ``leases``, ``metadata`` (namespaces, containers): tables of
  the one SQLite database ``<root>/metadata.db``;
- ``snapshotters``: by name, under ``<root>/snapshots/<name>``; a snapshot
  key ``k`` of namespace ``ns`` is ``ns/k`` in the snapshotter
  (``snapshot_key``), the names ``dockyard.image.unpack`` already uses;
- ``events``: the exchange every service publishes to;
- ``plugins``: what the introspection service lists.

Several supervisors run side by side when their root, state and address
differ; two on one root are refused (a lock in the root).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib
import logging
import os
import signal
import socket
import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from dockyard.errors import FailedPrecondition, NotFound, SystemFailure
from dockyard.image.content import ContentStore
from dockyard.image.images import ImageStore
from dockyard.image.leases import LeaseStore
from dockyard.image.snapshots import Snapshotter
from dockyard.image.snapshots import new as new_snapshotter
from dockyard.supervisor.config import SNAPSHOTTERS, Config
from dockyard.supervisor.content import NamespacedContent
from dockyard.supervisor.events import Exchange
from dockyard.supervisor.gc import Collector
from dockyard.supervisor.metadata import Metadata

log = logging.getLogger("dockyard.supervisor")

# The gRPC services, each a module of dockyard.supervisor.services with a
# ``register(server, supervisor)`` function, in registration order.
SERVICES = [
    "version",
    "namespaces",
    "events",
    "introspection",
    "containers",
    "tasks",
    "content",
    "images",
    "snapshots",
    "diff",
    "leases",
]

# containerd's default message limits (16 MiB each way).
MAX_MESSAGE = 16 << 20


@dataclass
class Plugin:
    """One entry of the introspection service's plugin list."""

    type: str
    id: str
    requires: list[str] = field(default_factory=list)
    exports: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)


def snapshot_key(namespace: str, key: str) -> str:
    """The snapshotter's own key for snapshot ``key`` of ``namespace``."""
    return f"{namespace}/{key}"


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        for d in (config.root, config.state):
            os.makedirs(d, mode=0o711, exist_ok=True)
        self._lock_fd = self._lock_root(config.root)
        self.content = ContentStore(os.path.join(config.root, "content"))
        db = os.path.join(config.root, "metadata.db")
        self.images = ImageStore(db)
        self.leases = LeaseStore(db)
        self.metadata = Metadata(db)
        self.namespaced_content = NamespacedContent(self.content, db, self.leases, config.root)
        self.snapshotters: dict[str, Snapshotter] = {}
        for name in SNAPSHOTTERS:
            try:
                self.snapshotters[name] = new_snapshotter(
                    name, os.path.join(config.root, "snapshots", name)
                )
            except Exception as e:  # overlayfs may be missing on a host: native remains
                log.warning("snapshotter %s unavailable: %s", name, e)
        if config.snapshotter not in self.snapshotters:
            raise FailedPrecondition(
                f"default snapshotter {config.snapshotter!r} is not available on this host"
            )
        self.events = Exchange()
        self.plugins: list[Plugin] = [
            Plugin("io.containerd.content.v1", "content"),
            Plugin("io.containerd.metadata.v1", "sqlite"),
        ]
        self.plugins += [Plugin("io.containerd.snapshotter.v1", name) for name in self.snapshotters]
        # Set by the tasks service: what must be stopped or kept at exit.
        self.tasks: Any = None
        self.server: grpc.Server | None = None
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()
        self._closers: list[Any] = []
        # garbage collection after deletions (services call gc.schedule/collect)
        self.gc = Collector(self)
        self.on_close(self.gc.close)

    @staticmethod
    def _lock_root(root: str) -> int:
        fd = os.open(os.path.join(root, "supervisor.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FailedPrecondition(
                f"root {root}: another supervisor is using it (its supervisor.lock is held)"
            ) from None
        return fd

    def snapshotter(self, name: str) -> Snapshotter:
        try:
            return self.snapshotters[name or self.config.snapshotter]
        except KeyError:
            raise NotFound(f"snapshotter {name!r}: not loaded") from None

    def add_plugin(self, type_: str, id_: str, **kw: Any) -> None:
        """List a plugin in introspection (each service names itself)."""
        self.plugins.append(Plugin(type_, id_, **kw))

    def on_close(self, closer: Any) -> None:
        """Call ``closer()`` when the daemon stops (servers, threads of a service)."""
        self._closers.append(closer)

    # -- serving --------------------------------------------------------------

    def build_server(self) -> grpc.Server:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=None,
        )
        for name in SERVICES:
            module = importlib.import_module(f"dockyard.supervisor.services.{name}")
            module.register(server, self)
        return server

    def start(self) -> None:
        """Bind the sockets and serve (returns at once; ``wait`` blocks)."""
        self.server = self.build_server()
        address = self.config.address
        os.makedirs(os.path.dirname(address), mode=0o711, exist_ok=True)
        remove_stale_socket(address)
        if self.server.add_insecure_port("unix:" + address) == 0:
            raise SystemFailure(f"listen on {address}: grpc could not bind the socket")
        self.server.start()
        os.chmod(address, 0o660)
        os.chown(address, 0, self.config.gid)
        log.info("serving on %s", address)

    def wait(self) -> None:
        """Serve until a stop is requested (a signal), then stop in this thread."""
        self._stop_requested.wait()
        self.stop()

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving; containers and their shims keep running (they outlive us)."""
        if self._stopped.is_set():
            return
        self.events.close()
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:
                log.exception("stopping %r", closer)
        if self.server is not None:
            self.server.stop(grace).wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.address)
        self.metadata.close()
        self.images.close()
        self.leases.close()
        self.namespaced_content.close()
        os.close(self._lock_fd)
        self._stopped.set()

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: object) -> None:
            log.info("signal %d: stopping", signum)
            self._stop_requested.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


def remove_stale_socket(path: str) -> None:
    """Remove a socket nobody serves any more; refuse to steal a live one."""
    if not os.path.exists(path):
        return
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SystemFailure(f"check socket {path}: {e.strerror}") from None
        os.unlink(path)
        return
    finally:
        s.close()
    raise FailedPrecondition(f"address {path}: another daemon is serving on it")
