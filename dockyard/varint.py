"""Protobuf's varints and length-delimited fields, written and read by hand.

The shim's message codec (``dockyard.shim.codec``) and ttrpc's envelopes
(``dockyard.ttrpc.wire``) both speak the wire format (protobuf's
encoding.md) without a protobuf runtime; this is what they share. It
imports nothing: the shim loads it on every start.
"""

# Wire types (encoding.md, "Message Structure"); groups (3, 4) are proto2-only.
VARINT = 0
FIXED64 = 1
LEN = 2
FIXED32 = 5

_MASK64 = (1 << 64) - 1


class DecodeError(ValueError):
    """The bytes are not a valid encoding of the message."""


def put_varint(out: bytearray, value: int) -> None:
    """Append ``value`` as a varint; a negative int32/int64 takes ten bytes (two's complement)."""
    value &= _MASK64
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def put_len(out: bytearray, number: int, data: bytes | bytearray) -> None:
    """Append field ``number`` as length-delimited (string, bytes, message, packed)."""
    key = number << 3 | LEN
    if key < 0x80:  # fields 1 to 15, nearly all: a one-byte key, without a call
        out.append(key)
    else:
        put_varint(out, key)
    put_varint(out, len(data))
    out += data


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos``, as an unsigned 64-bit value, and the position after it."""
    result = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")


def read_field(data: bytes, pos: int) -> tuple[int, int, int | bytes, int]:
    """The field at ``pos``: (number, wire type, value, the position after it).

    The value is an int for a varint and the raw bytes otherwise (a
    length-delimited payload, or the 8 or 4 bytes of a fixed field). Groups
    (wire types 3 and 4, proto2 only) are refused.
    """
    key, pos = read_varint(data, pos)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise DecodeError("field number 0")
    if wire == VARINT:
        return (number, wire, *read_varint(data, pos))
    if wire == LEN:
        size, pos = read_varint(data, pos)
    elif wire == FIXED64:
        size = 8
    elif wire == FIXED32:
        size = 4
    else:
        raise DecodeError(f"field {number} has unsupported wire type {wire}")
    if size > len(data) - pos:
        raise DecodeError(f"field {number} runs past the end")
    return number, wire, data[pos : pos + size], pos + size
