"""Conversions between API messages and dockyard's values, for both ends of the API.

The client library and the supervisor both turn protobuf's ``Timestamp``
into a ``datetime``, containerd's ``types.Descriptor`` into the image
library's ``Descriptor`` and containerd's ``types.Mount`` into
``dockyard.spec.mount.Mount``; this module is the one place that does it.

- Times are aware UTC datetimes. An unset Timestamp (zero: proto3 cannot
  tell it from the epoch) is ``None``, and ``None`` is sent as unset.
- containerd's ``Descriptor`` carries a media type, digest, size and
  annotations only: a descriptor's urls, platform and data do not travel.
  Checking a descriptor that came in a request is the receiver's business.
- A mount is its type, source, target and options, both ways; checking
  one that came in a request is the receiver's business too.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from dockyard.api.services.images.v1 import images_pb2
from dockyard.api.types import descriptor_pb2, mount_pb2
from dockyard.image.images import Image
from dockyard.spec.image import Descriptor
from dockyard.spec.mount import Mount


def to_timestamp(t: datetime | None) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    if t is not None:
        ts.FromDatetime(t.astimezone(UTC))
    return ts


def from_timestamp(ts: timestamp_pb2.Timestamp) -> datetime | None:
    """``ts`` as an aware UTC datetime; None when unset (zero)."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def now_timestamp() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def descriptor_to_proto(desc: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=desc.media_type,
        digest=desc.digest,
        size=desc.size,
        annotations=dict(desc.annotations),
    )


def descriptor_from_proto(msg: descriptor_pb2.Descriptor) -> Descriptor:
    return Descriptor(
        media_type=msg.media_type,
        digest=msg.digest,
        size=msg.size,
        annotations=dict(msg.annotations),
    )


def mount_to_proto(m: Mount) -> mount_pb2.Mount:
    return mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))


def mount_from_proto(msg: mount_pb2.Mount) -> Mount:
    return Mount(type=msg.type, source=msg.source, options=list(msg.options), target=msg.target)


def image_to_proto(image: Image) -> images_pb2.Image:
    """An image record as the images service sends it (times unset when unknown)."""
    return images_pb2.Image(
        name=image.name,
        labels=dict(image.labels),
        target=descriptor_to_proto(image.target),
        created_at=to_timestamp(image.created_at),
        updated_at=to_timestamp(image.updated_at),
    )


def image_from_proto(msg: images_pb2.Image) -> Image:
    return Image(
        name=msg.name,
        target=descriptor_from_proto(msg.target),
        labels=dict(msg.labels),
        created_at=from_timestamp(msg.created_at),
        updated_at=from_timestamp(msg.updated_at),
    )
