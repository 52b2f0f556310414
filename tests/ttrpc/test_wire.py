"""The hand-written envelope codec, checked against the protobuf runtime.

The envelope messages are declared here from ttrpc's field numbers and built
with protobuf's descriptor machinery, so each encoding is checked against an
independent encoder and decoder, in both directions.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from dockyard.ttrpc import wire

_I64 = descriptor_pb2.FieldDescriptorProto.TYPE_INT64
_I32 = descriptor_pb2.FieldDescriptorProto.TYPE_INT32
_STR = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
_MSG = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_OPT = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_REP = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED


def _messages() -> dict[str, Any]:
    f = descriptor_pb2.FileDescriptorProto(
        name="dockyard_test_ttrpc.proto", package="ttrpc", syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = f.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            fd = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                fd.type_name = type_name

    message("KeyValue", ("key", 1, _STR, _OPT, ""), ("value", 2, _STR, _OPT, ""))
    message(
        "Request",
        ("service", 1, _STR, _OPT, ""),
        ("method", 2, _STR, _OPT, ""),
        ("payload", 3, _BYTES, _OPT, ""),
        ("timeout_nano", 4, _I64, _OPT, ""),
        ("metadata", 5, _MSG, _REP, ".ttrpc.KeyValue"),
    )
    message("Any", ("type_url", 1, _STR, _OPT, ""), ("value", 2, _BYTES, _OPT, ""))
    message(
        "Status",
        ("code", 1, _I32, _OPT, ""),
        ("message", 2, _STR, _OPT, ""),
        ("details", 3, _MSG, _REP, ".ttrpc.Any"),
    )
    message(
        "Response",
        ("status", 1, _MSG, _OPT, ".ttrpc.Status"),
        ("payload", 2, _BYTES, _OPT, ""),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"ttrpc.{name}"))
        for name in ("Request", "Response", "KeyValue")
    }


PB = _messages()


def test_frame_header_is_big_endian_length_stream_type_flags() -> None:
    assert wire.frame(5, wire.TYPE_RESPONSE, b"abc") == (
        b"\x00\x00\x00\x03" + b"\x00\x00\x00\x05" + b"\x02" + b"\x00" + b"abc"
    )
    assert wire.HEADER_SIZE == 10
    assert wire.MESSAGE_LENGTH_MAX == 4 * 1024 * 1024


@pytest.mark.parametrize("timeout_nano", [0, 1, 1_500_000_000, -5, 2**63 - 1, -(2**63)])
def test_request_matches_protobuf_both_ways(timeout_nano: int) -> None:
    req = wire.Request(
        "containerd.task.v2.Task",
        "Wait",
        b"\x00\x01payload\xff",
        timeout_nano,
        [("containerd-namespace-ttrpc", "default"), ("k", ""), ("k", "é")],
    )
    ours = wire.encode_request(req)
    theirs = PB["Request"].FromString(ours)
    assert theirs.service == req.service
    assert theirs.method == req.method
    assert theirs.payload == req.payload
    assert theirs.timeout_nano == timeout_nano
    assert [(kv.key, kv.value) for kv in theirs.metadata] == req.metadata
    # Same bytes as protobuf's own (deterministic) encoding, and decoded back.
    assert ours == theirs.SerializeToString(deterministic=True)
    back = wire.decode_request(theirs.SerializeToString())
    assert (back.service, back.method, back.payload, back.timeout_nano, back.metadata) == (
        req.service,
        req.method,
        req.payload,
        req.timeout_nano,
        req.metadata,
    )


def test_empty_request_fields_are_omitted() -> None:
    assert wire.encode_request(wire.Request("", "")) == b""
    back = wire.decode_request(b"")
    assert (back.service, back.method, back.payload, back.timeout_nano) == ("", "", b"", 0)


@pytest.mark.parametrize("code", [0, 5, 12, 16, -1, 2**31 - 1, -(2**31)])
def test_response_matches_protobuf_both_ways(code: int) -> None:
    resp = wire.Response(
        code, "container not created: not found", b"\x08\x01", (("type/x", b"\x01\x02"),)
    )
    ours = wire.encode_response(resp)
    theirs = PB["Response"].FromString(ours)
    assert theirs.HasField("status")
    assert theirs.status.code == code
    assert theirs.status.message == resp.message
    assert [(d.type_url, d.value) for d in theirs.status.details] == list(resp.details)
    assert theirs.payload == resp.payload
    assert ours == theirs.SerializeToString(deterministic=True)
    back = wire.decode_response(theirs.SerializeToString())
    assert (back.code, back.message, back.payload, back.details) == (
        code,
        resp.message,
        resp.payload,
        resp.details,
    )


def test_ok_response_carries_an_empty_status_as_go_does() -> None:
    # Go's server always sets Status; for OK that is an empty embedded message.
    assert wire.encode_response(wire.Response(payload=b"x")) == b"\x0a\x00\x12\x01x"
    back = wire.decode_response(b"")  # and no status at all is OK too
    assert back.code == 0 and back.payload == b""


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    known = wire.encode_request(wire.Request("s", "m", b"p"))
    unknown = (
        b"\x30\x96\x01"  # field 6 varint
        b"\x39"
        + b"\x00" * 8  # field 7 fixed64
        + b"\x42\x03abc"  # field 8 bytes
        + b"\x4d"
        + b"\x00" * 4  # field 9 fixed32
    )
    back = wire.decode_request(unknown + known + unknown)
    assert (back.service, back.method, back.payload) == ("s", "m", b"p")


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05ab",  # length past the end
        b"\x20\xff\xff",  # truncated varint
        b"\x20" + b"\xff" * 10 + b"\x01",  # varint over 10 bytes
        b"\x08\x01",  # service (field 1) as a varint: wrong wire type
        b"\x0b",  # a group
        b"\x00\x01",  # field number 0
    ],
)
def test_malformed_requests_are_decode_errors(data: bytes) -> None:
    with pytest.raises(wire.DecodeError):
        wire.decode_request(data)
