"""The shim's own protobuf codec against the generated code of dockyard.api.

Every message of dockyard.shim.messages must have the name, field numbers,
types and cardinality of the generated message of the same full name, and
encode to bytes the protobuf runtime decodes to the same values (and back).
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor

from dockyard.api import typeurl
from dockyard.shim import codec, messages
from dockyard.shim.codec import Message

for module in (
    *typeurl.MESSAGE_MODULES,
    "dockyard.api.runtime.task.v2.shim_pb2",
    "dockyard.api.services.ttrpc.events.v1.events_pb2",
    "dockyard.api.types.task.task_pb2",
):
    importlib.import_module(module)
importlib.import_module("google.protobuf.empty_pb2")
importlib.import_module("google.protobuf.timestamp_pb2")

_KINDS = {
    FieldDescriptor.TYPE_STRING: codec.STRING,
    FieldDescriptor.TYPE_BYTES: codec.BYTES,
    FieldDescriptor.TYPE_BOOL: codec.BOOL,
    FieldDescriptor.TYPE_UINT32: codec.UINT,
    FieldDescriptor.TYPE_UINT64: codec.UINT,
    FieldDescriptor.TYPE_ENUM: codec.UINT,
    FieldDescriptor.TYPE_INT32: codec.INT,
    FieldDescriptor.TYPE_INT64: codec.INT,
    FieldDescriptor.TYPE_MESSAGE: codec.MESSAGE,
}

MESSAGES = sorted(
    (
        cls
        for cls in vars(messages).values()
        if isinstance(cls, type) and issubclass(cls, Message) and cls.FULL_NAME
    ),
    key=lambda c: c.FULL_NAME,
)


def generated(cls: type[Message]) -> Any:
    desc = descriptor_pool.Default().FindMessageTypeByName(cls.FULL_NAME)
    return message_factory.GetMessageClass(desc)


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.FULL_NAME)
def test_schema_matches_the_generated_descriptor(cls: type[Message]) -> None:
    desc = generated(cls).DESCRIPTOR
    theirs = {f.name: f for f in desc.fields}
    for f in cls._fields:
        assert f.name in theirs, f"{cls.FULL_NAME}.{f.name} is not in the .proto"
        g = theirs[f.name]
        assert f.number == g.number, f"{cls.FULL_NAME}.{f.name}: number"
        if g.message_type is not None and g.message_type.GetOptions().map_entry:
            assert f.kind == codec.MAP
            continue
        assert f.kind == _KINDS[g.type], f"{cls.FULL_NAME}.{f.name}: type"
        assert f.repeated == g.is_repeated, f"{cls.FULL_NAME}.{f.name}: repeated"
        if f.kind == codec.MESSAGE:
            assert f.cls is not None and g.message_type.full_name == f.cls.FULL_NAME
    # Fields left out are only those the shim never sets nor reads.
    missing = set(theirs) - {f.name for f in cls._fields}
    assert missing <= {"rdma", "network", "cgroup_stats", "memory_oom_control"}, missing


def _sample(cls: type[Message], depth: int = 0) -> Message:
    """A message with every field set to something other than its default."""
    values: dict[str, Any] = {}
    for f in cls._fields:
        if f.kind == codec.STRING:
            v: Any = f"{f.name}-é"
        elif f.kind == codec.BYTES:
            v = b"\x00\xff" + f.name.encode()
        elif f.kind == codec.BOOL:
            v = True
        elif f.kind == codec.UINT:
            v = (1 << 32) - 1 if f.number % 2 else f.number
        elif f.kind == codec.INT:
            v = -f.number if f.name != "nanos" else 999_999_999
        elif f.kind == codec.MAP:
            v = {"a": "1", "b": ""}
        else:
            assert f.cls is not None
            if depth > 3:
                continue
            v = _sample(f.cls, depth + 1)
        values[f.name] = [v, v] if f.repeated else v
    return cls(**values)


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.FULL_NAME)
def test_round_trip_through_the_protobuf_runtime(cls: type[Message]) -> None:
    ours = _sample(cls)
    data = ours.SerializeToString()
    theirs = generated(cls).FromString(data)
    # Byte for byte the runtime's own encoding (field order, packed repeated
    # scalars, defaults left out); but the runtime writes a map entry's empty
    # value, which we leave out as proto3 allows.
    if all(f.kind != codec.MAP for f in cls._fields):
        assert data == theirs.SerializeToString(deterministic=True)
    back = cls.FromString(theirs.SerializeToString())
    assert back == ours
    # Field by field for the scalars (the runtime's view of our bytes).
    for f in cls._fields:
        if f.kind not in (codec.MESSAGE, codec.MAP) and not f.repeated:
            assert getattr(theirs, f.name) == getattr(ours, f.name), f.name


def test_defaults_are_not_encoded_and_unknown_fields_are_skipped() -> None:
    assert messages.StateResponse().SerializeToString() == b""
    empty_time = messages.DeleteResponse(exited_at=messages.Timestamp())
    assert empty_time.SerializeToString() == b"\x1a\x00"  # present, if empty
    gen = generated(messages.CreateTaskRequest)(id="x", checkpoint="c")
    # ConnectRequest knows field 1 only: the rest is skipped, not an error.
    assert messages.ConnectRequest.FromString(gen.SerializeToString()).id == "x"


@pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\x08", b"\x0a\x02\xff\xfe", b"\x0b"])
def test_bad_bytes_are_a_decode_error(data: bytes) -> None:
    with pytest.raises(codec.DecodeError):
        messages.StateRequest.FromString(data)


def test_timestamps_and_any() -> None:
    ts = messages.Timestamp.from_ns(1_700_000_000_123_456_789)
    assert (ts.seconds, ts.nanos) == (1_700_000_000, 123_456_789)
    assert ts.to_ns() == 1_700_000_000_123_456_789
    assert messages.timestamp(0) is None
    packed = messages.pack(messages.TaskOOM(container_id="c"))
    assert packed.type_url == "containerd.events.TaskOOM"
    event: Any = typeurl.unpack(any_pb2.Any(type_url=packed.type_url, value=packed.value))
    assert event.container_id == "c"
    assert messages.PROCESS_URL == typeurl.PROCESS
    assert messages.LINUX_RESOURCES_URL == typeurl.LINUX_RESOURCES
