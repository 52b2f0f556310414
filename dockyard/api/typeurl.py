"""Type URLs of ``google.protobuf.Any`` values, the way containerd 1.6 writes them.

containerd 1.6 (through github.com/containerd/typeurl v1) names a protobuf
message by its bare full name: ``containerd.events.TaskExit``, not the
``type.googleapis.com/containerd.events.TaskExit`` that ``Any.Pack`` would
write, and it looks names up exactly, so a prefixed URL is not understood by
it. A few Go types that are not protobuf messages travel as JSON under URLs
registered by containerd's client and runtime packages: the OCI runtime
spec's ``Spec`` (a container's spec), ``Process`` (an exec),
``LinuxResources`` (a task update) and ``WindowsResources``; their URLs
are defined in ``dockyard.api.specurls``, for the shim, which needs them
without protobuf.

This module stays light: it needs protobuf only (no grpc, no json), and
imports a message's module only when an ``Any`` of that type is first
unpacked. (dockyard's shim does without it and without protobuf: it has
its own messages, ``dockyard.shim.messages``.)
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from dockyard import jsonio
from dockyard.api import specurls
from dockyard.errors import InvalidArgument, NotFound

_M = TypeVar("_M", bound=Message)

SPEC = specurls.SPEC
PROCESS = specurls.PROCESS
LINUX_RESOURCES = specurls.LINUX_RESOURCES
WINDOWS_RESOURCES = specurls.WINDOWS_RESOURCES
JSON_TYPE_URLS = specurls.JSON_TYPE_URLS

# Generated modules whose messages are carried in Any values: events, runtime
# options, process details, cgroup statistics. They are imported on the first
# unpack of a name the descriptor pool does not know yet.
MESSAGE_MODULES = (
    "dockyard.api.events.container_pb2",
    "dockyard.api.events.content_pb2",
    "dockyard.api.events.image_pb2",
    "dockyard.api.events.namespace_pb2",
    "dockyard.api.events.snapshot_pb2",
    "dockyard.api.events.task_pb2",
    "dockyard.api.runc.options.oci_pb2",
    "dockyard.api.runtime.linux.runctypes.runc_pb2",
    "dockyard.api.runtimeoptions.v1.api_pb2",
    "dockyard.api.cgroups.v1.metrics_pb2",
    "dockyard.api.cgroups.v2.metrics_pb2",
)

_modules_loaded = False


def type_url(msg: Message) -> str:
    """The type URL containerd gives ``msg``: its full proto name."""
    return msg.DESCRIPTOR.full_name


def pack(msg: Message) -> any_pb2.Any:
    """``msg`` in an Any under its containerd type URL; an Any is returned as is."""
    if isinstance(msg, any_pb2.Any):
        return msg
    return any_pb2.Any(type_url=type_url(msg), value=msg.SerializeToString())


def pack_json(url: str, obj: object) -> any_pb2.Any:
    """``obj`` as compact JSON in an Any named ``url`` (e.g. :data:`SPEC`)."""
    return any_pb2.Any(type_url=url, value=jsonio.dumps(obj).encode())


def message_class(url: str) -> type[Message]:
    """The generated class of the message named by ``url``.

    A URL with a host part (``type.googleapis.com/...``), as standard protobuf
    libraries write, is accepted too: the name is what follows the last slash.
    """
    global _modules_loaded
    name = url.rsplit("/", 1)[-1]
    pool = descriptor_pool.Default()
    try:
        desc = pool.FindMessageTypeByName(name)
    except KeyError:
        if _modules_loaded:
            raise NotFound(f"type url {url!r}: no such message type") from None
        for module in MESSAGE_MODULES:
            importlib.import_module(module)
        _modules_loaded = True
        return message_class(url)
    return message_factory.GetMessageClass(desc)


def unpack(value: any_pb2.Any) -> object:
    """The message in ``value``, or the decoded JSON for a JSON type URL.

    Raises NotFound for a type URL nobody registered, InvalidArgument for a
    value that does not decode.
    """
    url = value.type_url
    if url in JSON_TYPE_URLS:
        try:
            return jsonio.loads(value.value)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"decode {url}: {e}") from None
    cls = message_class(url)
    return _parse(cls, value)


def unpack_to(value: any_pb2.Any, cls: type[_M]) -> _M:
    """The message in ``value``, which must be of type ``cls``."""
    want = cls.DESCRIPTOR.full_name
    if value.type_url.rsplit("/", 1)[-1] != want:
        raise InvalidArgument(f"any of type {value.type_url!r} is not a {want}")
    return _parse(cls, value)


def _parse(cls: type[_M], value: any_pb2.Any) -> _M:
    msg = cls()
    try:
        msg.ParseFromString(value.value)
    except DecodeError as e:
        raise InvalidArgument(f"decode {value.type_url}: {e}") from None
    return msg
