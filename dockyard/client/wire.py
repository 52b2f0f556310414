"""Conversions between the wire messages and the spec types the engine uses.

A descriptor is ``dockyard.spec.image.Descriptor`` and a mount is
``dockyard.spec.mount.Mount`` on this side. The descriptor's and the mount's
conversions are the API's own (``dockyard.api.convert``), shared with the
supervisor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf import any_pb2, field_mask_pb2
from google.protobuf.message import Message

from dockyard.api import typeurl
from dockyard.api.convert import (
    descriptor_from_proto,
    descriptor_to_proto,
    mount_from_proto,
    mount_to_proto,
)
from dockyard.api.types import mount_pb2
from dockyard.errors import NotFound
from dockyard.spec.mount import Mount

# the API's conversions are re-exported: the service wrappers import every conversion from here
__all__ = [
    "descriptor_from_proto",
    "descriptor_to_proto",
    "field_mask",
    "label_paths",
    "mount_from_proto",
    "mount_to_proto",
    "mounts_from_proto",
    "pack_any",
    "unpack_any",
]


def mounts_from_proto(msgs: Iterable[mount_pb2.Mount]) -> list[Mount]:
    return [mount_from_proto(m) for m in msgs]


def field_mask(paths: Iterable[str]) -> field_mask_pb2.FieldMask | None:
    """A field mask of ``paths``; None (no mask: every field) when there are none."""
    listed = list(paths)
    return field_mask_pb2.FieldMask(paths=listed) if listed else None


def label_paths(labels: Mapping[str, str]) -> list[str]:
    """The update-mask paths that set (or, with an empty value, remove) these labels."""
    return [f"labels.{key}" for key in labels]


def unpack_any(value: any_pb2.Any) -> Message | object:
    """The message (or JSON value) in ``value``; the Any itself for a type nobody knows."""
    try:
        return typeurl.unpack(value)
    except NotFound:
        return value


def pack_any(value: Message | any_pb2.Any) -> any_pb2.Any:
    return typeurl.pack(value)
