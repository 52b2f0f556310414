"""The client library of the supervisor: what the engine uses to run containers.

It speaks containerd 1.6's v1 gRPC services, so it works with
dockyard-supervisor and with containerd alike. ``Client`` is the entry
point (``client``); the service wrappers return plain dataclasses
(``containers``, ``images``, ``content``, ``snapshots``, ``diff``,
``leases``, ``events``, ``introspection``, ``namespaces``, ``tasks``);
``cio`` gives tasks their stdio through FIFOs. ``oci`` builds runtime specs
(config.json) for containers with Docker's defaults; ``seccomp_default``
holds Docker's default seccomp profile.

Importing this package imports only the light modules; ``Client`` and the
rest load on first use, so the spec builders stay cheap to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dockyard.client.cio import IO, Config
    from dockyard.client.client import Client, Version
    from dockyard.client.container import Container
    from dockyard.client.containers import ContainerRecord, Runtime
    from dockyard.client.content import Info, Status, Writer
    from dockyard.client.events import Envelope, Subscription
    from dockyard.client.introspection import Plugin
    from dockyard.client.leases import Lease, Resource
    from dockyard.client.namespaces import Namespace
    from dockyard.client.snapshots import Kind, SnapshotInfo, Usage
    from dockyard.client.tasks import (
        ExitStatus,
        Metric,
        Process,
        ProcessInfo,
        ProcessState,
        Task,
        TaskStatus,
    )

_EXPORTS = {
    "Client": "client",
    "Version": "client",
    "Container": "container",
    "ContainerRecord": "containers",
    "Runtime": "containers",
    "Info": "content",
    "Status": "content",
    "Writer": "content",
    "Envelope": "events",
    "Subscription": "events",
    "Plugin": "introspection",
    "Lease": "leases",
    "Resource": "leases",
    "Namespace": "namespaces",
    "Kind": "snapshots",
    "SnapshotInfo": "snapshots",
    "Usage": "snapshots",
    "ExitStatus": "tasks",
    "Metric": "tasks",
    "Process": "tasks",
    "ProcessInfo": "tasks",
    "ProcessState": "tasks",
    "Task": "tasks",
    "TaskStatus": "tasks",
    "IO": "cio",
    "Config": "cio",
}

__all__ = [
    "IO",
    "Client",
    "Config",
    "Container",
    "ContainerRecord",
    "Envelope",
    "ExitStatus",
    "Info",
    "Kind",
    "Lease",
    "Metric",
    "Namespace",
    "Plugin",
    "Process",
    "ProcessInfo",
    "ProcessState",
    "Resource",
    "Runtime",
    "SnapshotInfo",
    "Status",
    "Subscription",
    "Task",
    "TaskStatus",
    "Usage",
    "Version",
    "Writer",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dockyard.client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dockyard.client.{module}"), name)
