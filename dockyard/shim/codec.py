"""A small protobuf codec for the few messages the shim speaks.

The shim starts once per container and lives as long as it; the protobuf
runtime, with the parts of the standard library it pulls in (typing, re,
enum, datetime, pickle, ...), costs it about 3.5 MiB of private memory and
70 ms of start-up, several times what its own code costs. These messages
are plain proto3 (scalars, strings, bytes, nested and repeated messages, a
string map), so a codec of the wire format (protobuf's encoding.md) does:

    class Mount(Message):
        FULL_NAME = "containerd.types.Mount"
        type: str = field(1, STRING)
        options: list[str] = field(4, STRING, repeated=True)

Fields hold proto3 defaults until set; message fields are None when absent
(``HasField``). Unknown fields are skipped when decoding, as protobuf does.
Each message's numbers and types are checked against the generated
descriptors of dockyard.api by the tests.
"""

from __future__ import annotations

from dockyard.varint import (
    LEN,
    VARINT,
    DecodeError,
    put_len,
    put_varint,
    read_field,
    read_varint,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar, TypeVar

    _M = TypeVar("_M", bound="Message")

# Kinds of field.
STRING = "string"
BYTES = "bytes"
BOOL = "bool"
UINT = "uint"  # uint32, uint64 and enums: an unsigned varint
INT = "int"  # int32, int64: a two's complement varint
MESSAGE = "message"
MAP = "map"  # map<string, string>


class Field:
    __slots__ = ("cls", "kind", "name", "number", "repeated")

    def __init__(self, number: int, kind: str, cls: type[Message] | None, repeated: bool) -> None:
        self.number = number
        self.kind = kind
        self.cls = cls
        self.repeated = repeated
        self.name = ""

    def default(self) -> Any:
        if self.repeated:
            return []
        if self.kind == MAP:
            return {}
        if self.kind == MESSAGE:
            return None
        return _SCALAR_DEFAULTS[self.kind]


# proto3's zero value of each scalar kind (immutable: shared by every message)
_SCALAR_DEFAULTS: dict[str, Any] = {STRING: "", BYTES: b"", BOOL: False, UINT: 0, INT: 0}


def field(number: int, kind: str, cls: type[Message] | None = None, repeated: bool = False) -> Any:
    """Declare a field (its class attribute); an instance holds its value."""
    return Field(number, kind, cls, repeated)


# -- the wire format ---------------------------------------------------------------


def _scalar_varint(kind: str, value: Any) -> int:
    if kind == BOOL:
        return 1 if value else 0
    return int(value)


def _put_one(out: bytearray, f: Field, value: Any) -> None:
    if f.kind == STRING:
        put_len(out, f.number, value.encode())
    elif f.kind == BYTES:
        put_len(out, f.number, bytes(value))
    elif f.kind == MESSAGE:
        put_len(out, f.number, value.SerializeToString())
    else:
        put_varint(out, f.number << 3 | VARINT)
        put_varint(out, _scalar_varint(f.kind, value))


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class Message:
    """A proto3 message; subclasses declare FULL_NAME and their fields."""

    FULL_NAME: ClassVar[str] = ""
    _fields: ClassVar[tuple[Field, ...]] = ()
    _by_number: ClassVar[dict[int, Field]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls._collect()

    @classmethod
    def _collect(cls) -> None:
        """Index the Field attributes (again, after fields were added with setattr)."""
        found = []
        for name, value in list(vars(cls).items()):
            if isinstance(value, Field):
                value.name = name
                found.append(value)
        cls._fields = tuple(sorted(found, key=lambda f: f.number))
        cls._by_number = {f.number: f for f in cls._fields}

    def __init__(self, **values: Any) -> None:
        for f in self._fields:
            v = values.pop(f.name, None)
            if v is None:
                v = f.default()
            elif f.repeated:
                v = list(v)
            elif f.kind == MAP:
                v = dict(v)
            setattr(self, f.name, v)
        if values:
            raise TypeError(f"{type(self).__name__} has no field {next(iter(values))!r}")

    def HasField(self, name: str) -> bool:
        return getattr(self, name) is not None

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in self._fields)

    def __repr__(self) -> str:
        set_fields = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in self._fields
            if getattr(self, f.name) != f.default()
        )
        return f"{type(self).__name__}({set_fields})"

    def SerializeToString(self) -> bytes:
        out = bytearray()
        for f in self._fields:
            value = getattr(self, f.name)
            if f.repeated:
                if not value:
                    continue
                if f.kind in (UINT, INT, BOOL):
                    # proto3 packs repeated scalars
                    packed = bytearray()
                    for v in value:
                        put_varint(packed, _scalar_varint(f.kind, v))
                    put_len(out, f.number, packed)
                else:
                    for item in value:
                        _put_one(out, f, item)
            elif f.kind == MAP:
                for k, v in value.items():
                    entry = _MapEntry(key=str(k), value=str(v))
                    put_len(out, f.number, entry.SerializeToString())
            elif f.kind == MESSAGE:
                if value is not None:
                    _put_one(out, f, value)
            elif value:
                _put_one(out, f, value)
        return bytes(out)

    @classmethod
    def FromString(cls: type[_M], data: bytes) -> _M:
        msg = cls()
        msg._merge(bytes(data))
        return msg

    def _merge(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            number, wire, value, pos = read_field(data, pos)
            f = self._by_number.get(number)
            if f is not None:  # an unknown field is skipped
                self._set(f, wire, value)

    def _set(self, f: Field, wire: int, value: int | bytes) -> None:
        """Store a field as read_field read it: an int for a varint, else its
        bytes (no field of ours is fixed-width: those are refused)."""
        if f.kind in (UINT, INT, BOOL):
            values: list[int]
            if isinstance(value, int):
                values = [value]
            elif wire == LEN and f.repeated:
                values, pos = [], 0
                while pos < len(value):
                    v, pos = read_varint(value, pos)
                    values.append(v)
            else:
                raise DecodeError(f"field {f.name}: wrong wire type {wire}")
            converted: list[Any] = [
                bool(v) if f.kind == BOOL else _signed(v) if f.kind == INT else v for v in values
            ]
            if f.repeated:
                getattr(self, f.name).extend(converted)
            else:
                setattr(self, f.name, converted[-1])
            return
        if wire != LEN or isinstance(value, int):
            raise DecodeError(f"field {f.name}: wrong wire type {wire}")
        item: Any
        if f.kind == STRING:
            try:
                item = value.decode()
            except UnicodeDecodeError:
                raise DecodeError(f"field {f.name}: invalid UTF-8") from None
        elif f.kind == BYTES:
            item = value
        elif f.kind == MAP:
            entry = _MapEntry.FromString(value)
            getattr(self, f.name)[entry.key] = entry.value
            return
        else:
            assert f.cls is not None
            if not f.repeated and getattr(self, f.name) is not None:
                getattr(self, f.name)._merge(value)  # a repeated singular message merges
                return
            item = f.cls.FromString(value)
        if f.repeated:
            getattr(self, f.name).append(item)
        else:
            setattr(self, f.name, item)


class _MapEntry(Message):
    key: str = field(1, STRING)
    value: str = field(2, STRING)
