"""ttrpc on the wire: frames, and the protobuf envelope of requests and responses.

A frame (ttrpc's PROTOCOL.md, "Message Frame") is a 10-byte big-endian header
-- data length (uint32), stream id (uint32), message type (uint8), flags
(uint8) -- and then the data. The ttrpc that containerd 1.6 vendors (1.1) is
unary only: a client sends a request on an odd stream id and the server
answers with one response on the same id; it has no data frames or flags.

The data of a frame is a protobuf message, encoded here by hand so that the
per-container shim needs no protobuf runtime for it (field numbers from that
ttrpc's types.go):

    Request  { string service = 1; string method = 2; bytes payload = 3;
               int64 timeout_nano = 4; repeated KeyValue metadata = 5; }
    KeyValue { string key = 1; string value = 2; }
    Response { google.rpc.Status status = 1; bytes payload = 2; }
    google.rpc.Status { int32 code = 1; string message = 2; repeated Any details = 3; }
    google.protobuf.Any { string type_url = 1; bytes value = 2; }
"""

from __future__ import annotations

# The C module itself: socket.py would add some 4 ms (selectors, array, its
# enums) to every shim start, and what is used here is all in _socket.
import _socket
import struct

from dockyard.varint import (
    LEN,
    VARINT,
    DecodeError,
    put_len,
    put_varint,
    read_field,
)

HEADER = struct.Struct(">IIBB")
HEADER_SIZE = HEADER.size  # 10
# The largest frame data either side accepts (ttrpc's messageLengthMax).
MESSAGE_LENGTH_MAX = 4 << 20

TYPE_REQUEST = 1
TYPE_RESPONSE = 2


class Request:
    """A ttrpc request envelope; ``metadata`` keeps the pairs in wire order."""

    __slots__ = ("metadata", "method", "payload", "service", "timeout_nano")

    def __init__(
        self,
        service: str,
        method: str,
        payload: bytes = b"",
        timeout_nano: int = 0,
        metadata: list[tuple[str, str]] | None = None,
    ) -> None:
        self.service = service
        self.method = method
        self.payload = payload
        self.timeout_nano = timeout_nano
        self.metadata = metadata if metadata is not None else []


class Response:
    """A ttrpc response envelope, its status flattened into code, message and details."""

    __slots__ = ("code", "details", "message", "payload")

    def __init__(
        self,
        code: int = 0,
        message: str = "",
        payload: bytes = b"",
        details: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        self.code = code
        self.message = message
        self.payload = payload
        self.details = details


# --- encoding ---------------------------------------------------------------


def _put_bytes(out: bytearray, number: int, data: bytes) -> None:
    """A proto3 string/bytes field: omitted when empty, as Go's encoder does.

    (Embedded messages and repeated items go through put_len: always written.)
    """
    if data:
        put_len(out, number, data)


def _text(s: str) -> bytes:
    try:
        # surrogateescape: names that arrived as invalid UTF-8 go back out as they came.
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # other lone surrogates, from a handler's message say
        return s.encode("utf-8", "replace")


def encode_request(req: Request) -> bytes:
    out = bytearray()
    _put_bytes(out, 1, _text(req.service))
    _put_bytes(out, 2, _text(req.method))
    _put_bytes(out, 3, req.payload)
    if req.timeout_nano:
        out.append(4 << 3 | VARINT)  # the key, one byte
        put_varint(out, req.timeout_nano)
    for key, value in req.metadata:
        kv = bytearray()
        _put_bytes(kv, 1, _text(key))
        _put_bytes(kv, 2, _text(value))
        put_len(out, 5, kv)
    return bytes(out)


def encode_response(resp: Response) -> bytes:
    status = bytearray()
    if resp.code:
        status.append(1 << 3 | VARINT)  # the key, one byte
        put_varint(status, resp.code)
    _put_bytes(status, 2, _text(resp.message))
    for type_url, value in resp.details:
        any_ = bytearray()
        _put_bytes(any_, 1, _text(type_url))
        _put_bytes(any_, 2, value)
        put_len(status, 3, any_)
    out = bytearray()
    # Go's server always sets the status, an empty message for OK; so do we.
    put_len(out, 1, status)
    _put_bytes(out, 2, resp.payload)
    return bytes(out)


# --- decoding ---------------------------------------------------------------


def _fields(data: bytes, what: str) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field; unknown fields are kept for
    the caller to skip, as proto3 decoders must."""
    fields: list[tuple[int, int, int | bytes]] = []
    pos = 0
    end = len(data)
    try:
        while pos < end:
            number, wire_type, value, pos = read_field(data, pos)
            fields.append((number, wire_type, value))
    except DecodeError as e:
        raise DecodeError(f"{what}: {e}") from None
    return fields


def _expect(what: str, number: int, wire_type: int, want: int) -> None:
    if wire_type != want:
        raise DecodeError(f"{what}: field {number} has wire type {wire_type}, want {want}")


def _str(value: int | bytes) -> str:
    assert isinstance(value, bytes)
    return value.decode("utf-8", "surrogateescape")


def _bytes(value: int | bytes) -> bytes:
    assert isinstance(value, bytes)
    return value


def _int(value: int | bytes, bits: int) -> int:
    """A varint as a signed intN (int32 and int64 fields are two's complement)."""
    assert isinstance(value, int)
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def decode_request(data: bytes) -> Request:
    req = Request("", "")
    for number, wire_type, value in _fields(data, "request"):
        if number == 1:
            _expect("request", number, wire_type, LEN)
            req.service = _str(value)
        elif number == 2:
            _expect("request", number, wire_type, LEN)
            req.method = _str(value)
        elif number == 3:
            _expect("request", number, wire_type, LEN)
            req.payload = _bytes(value)
        elif number == 4:
            _expect("request", number, wire_type, VARINT)
            req.timeout_nano = _int(value, 64)
        elif number == 5:
            _expect("request", number, wire_type, LEN)
            key = val = ""
            for n, wt, v in _fields(_bytes(value), "request metadata"):
                if n in (1, 2):
                    _expect("request metadata", n, wt, LEN)
                    if n == 1:
                        key = _str(v)
                    else:
                        val = _str(v)
            req.metadata.append((key, val))
    return req


def decode_response(data: bytes) -> Response:
    resp = Response()
    for number, wire_type, value in _fields(data, "response"):
        if number == 1:
            _expect("response", number, wire_type, LEN)
            details: list[tuple[str, bytes]] = list(resp.details)
            for n, wt, v in _fields(_bytes(value), "response status"):
                if n == 1:
                    _expect("response status", n, wt, VARINT)
                    resp.code = _int(v, 32)
                elif n == 2:
                    _expect("response status", n, wt, LEN)
                    resp.message = _str(v)
                elif n == 3:
                    _expect("response status", n, wt, LEN)
                    type_url, any_value = "", b""
                    for an, awt, av in _fields(_bytes(v), "response status detail"):
                        if an in (1, 2):
                            _expect("response status detail", an, awt, LEN)
                            if an == 1:
                                type_url = _str(av)
                            else:
                                any_value = _bytes(av)
                    details.append((type_url, any_value))
            resp.details = tuple(details)
        elif number == 2:
            _expect("response", number, wire_type, LEN)
            resp.payload = _bytes(value)
    return resp


# --- frames -----------------------------------------------------------------


def frame(stream_id: int, message_type: int, data: bytes) -> bytes:
    """Header and data of one frame, ready to be written in one piece."""
    return HEADER.pack(len(data), stream_id, message_type, 0) + data


def _recv_exact(sock: _socket.socket, n: int) -> bytearray | None:
    """Exactly n bytes, or None if the stream ended first."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = sock.recv_into(view[got:])
        if r == 0:
            return None
        got += r
    return buf


def _discard(sock: _socket.socket, n: int) -> bool:
    chunk = bytearray(min(n, 1 << 16))
    while n > 0:
        r = sock.recv_into(chunk, min(n, len(chunk)))
        if r == 0:
            return False
        n -= r
    return True


def read_frame(sock: _socket.socket) -> tuple[int, int, int, int, bytes | None] | None:
    """The next frame as (stream id, type, flags, length, data), or None once the peer
    is gone.

    A frame longer than MESSAGE_LENGTH_MAX is read and dropped, and returned
    with data None, so the caller can answer its stream as Go's ttrpc does
    (RESOURCE_EXHAUSTED) and go on with the next frame.
    """
    header = _recv_exact(sock, HEADER_SIZE)
    if header is None:
        return None
    length, stream_id, message_type, flags = HEADER.unpack(header)
    if length > MESSAGE_LENGTH_MAX:
        if not _discard(sock, length):
            return None
        return stream_id, message_type, flags, length, None
    data = _recv_exact(sock, length) if length else bytearray()
    if data is None:
        return None
    return stream_id, message_type, flags, length, bytes(data)


def oversized_message(length: int) -> str:
    return f"message length {length} exceeds the maximum message size of {MESSAGE_LENGTH_MAX}"
