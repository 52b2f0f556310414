"""JSON through the C accelerator alone, without importing the ``json`` package.

``import json`` pulls in ``re`` and ``enum`` (about 10 ms here), which the
per-container runtime and shim cannot afford on every start. The C scanner
and encoder in ``_json`` do the real work either way; this wires them up the
way ``json.decoder``/``json.encoder`` do for the compact, strict case. Errors
fall back to the ``json`` package so that messages keep line and column.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


class _Context:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_constant)
    memo: dict[str, str] = {}


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]
_WS = " \t\n\r"


def loads(data: str | bytes) -> Any:
    """Parse one JSON document; raises ``ValueError`` (json.JSONDecodeError) when invalid."""
    text = data.decode() if isinstance(data, bytes) else data
    start = len(text) - len(text.lstrip(_WS))
    try:
        obj, end = _scan(text, start)
    except (StopIteration, ValueError, SystemError):
        # the C scanner builds its error from json.decoder, which may not be
        # imported yet (then it fails with SystemError): let json report it
        end = -1
    if end < 0 or text[end:].strip(_WS):
        import json

        return json.loads(text)  # raises with the position of the problem
    return obj


def _unknown(o: Any) -> Any:
    raise TypeError(f"object of type {type(o).__name__} is not JSON serializable")


_encode = _json.make_encoder(
    {}, _unknown, _json.encode_basestring_ascii, None, ":", ",", False, False, False
)


def dumps(obj: Any) -> str:
    """Compact JSON (no spaces), ASCII-escaped, like ``json.dumps(obj, separators=(",", ":"))``."""
    return "".join(_encode(obj, 0))


def load_file(path: str) -> Any:
    with open(path, "rb") as f:
        return loads(f.read())


def dumps_indent(obj: Any, indent: str = "  ", _level: int = 0) -> str:
    """Indented JSON for people (``state``), same layout as ``json.dumps(indent=...)``."""
    pad = indent * (_level + 1)
    end = indent * _level
    if isinstance(obj, dict) and obj:
        items = (
            f"{pad}{dumps(str(k))}: {dumps_indent(v, indent, _level + 1)}" for k, v in obj.items()
        )
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(obj, list) and obj:
        items = (pad + dumps_indent(v, indent, _level + 1) for v in obj)
        return "[\n" + ",\n".join(items) + "\n" + end + "]"
    return dumps(obj)
