"""containerd's filter syntax (its ``filters`` package), for every list call.

A filter string is selectors joined by ``,``; all of them must hold. A list
of filter strings is a set of alternatives: any one matching is enough.

    selector  = fieldpath [ operator value ]
    fieldpath = field { "." field }          field: [A-Za-z0-9_]+ or "quoted"
    operator  = "==" | "!=" | "~="           (none: the field is present)
    value     = a run of characters up to "," or a space, or "quoted";
                after "~=" also /quoted/ or |quoted| (a regular expression)

The empty string matches everything (as in containerd: ``ctr content active``
sends one). Quoted strings take Go's escapes (``\\n``, ``\\"``, ``\\x41``, ...); inside
``/.../`` and ``|...|`` an unknown escape is kept as written, so regular
expressions like ``/^a\\d+$/`` mean what they say. Examples::

    labels."containerd.io/gc.root"
    name==docker.io/library/busybox:latest,labels.env!=prod
    digest~=^sha512:

Each caller says what its objects' fields are with a ``Getter``: a function
from a field path to the value, or None when the field is absent (the
``adaptor`` of containerd). ``labels.<key>`` paths are joined back with dots,
as containerd does: ``labels.a.b`` is the label ``a.b``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from dockyard.errors import InvalidArgument

Getter = Callable[[list[str]], str | None]
Matcher = Callable[[Getter], bool]

_FIELD = re.compile(r"[A-Za-z0-9_]+")
_OPERATOR = re.compile(r"==|!=|~=")
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}
_NUMERIC_ESCAPES = {"x": (16, 2), "u": (16, 4), "U": (16, 8)}


@dataclass(frozen=True)
class Condition:
    """One selector: a field path, an operator ("" = present) and a value."""

    path: tuple[str, ...]
    op: str
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, get: Getter) -> bool:
        have = get(list(self.path))
        if self.op == "":
            return have is not None
        if self.op == "==":
            return have == self.value
        if self.op == "!=":
            return have != self.value
        assert self.regex is not None
        return have is not None and self.regex.search(have) is not None


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> InvalidArgument:
        return InvalidArgument(f"filter {self.text!r}: {what} at offset {self.pos}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def quoted(self, alternatives: bool) -> str:
        quote = self.text[self.pos]
        if quote != '"' and not (alternatives and quote in "/|"):
            raise self.fail(f"unexpected {quote!r}")
        out: list[str] = []
        i = self.pos + 1
        while True:
            if i >= len(self.text) or self.text[i] == "\n":
                raise self.fail("quoted string not terminated")
            ch = self.text[i]
            if ch == quote:
                self.pos = i + 1
                return "".join(out)
            if ch != "\\":
                out.append(ch)
                i += 1
                continue
            i += 1
            esc = self.text[i] if i < len(self.text) else ""
            if esc == quote:
                out.append(quote)
                i += 1
            elif esc in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[esc])
                i += 1
            elif esc in _NUMERIC_ESCAPES or esc in "01234567":
                base, width = _NUMERIC_ESCAPES.get(esc, (8, 3))
                start = i if base == 8 else i + 1
                digits = self.text[start : start + width]
                try:
                    if len(digits) != width:
                        raise ValueError
                    out.append(chr(int(digits, base)))
                except ValueError:
                    self.pos = i
                    raise self.fail(f"bad numeric escape \\{esc}") from None
                i = start + width
            elif quote in "/|" and esc:
                out.append("\\" + esc)  # a regular expression's own escape
                i += 1
            else:
                self.pos = i
                raise self.fail(f"bad escape \\{esc}")

    def field(self) -> str:
        if self.peek() == '"':
            return self.quoted(False)
        m = _FIELD.match(self.text, self.pos)
        if not m:
            raise self.fail("expected a field name")
        self.pos = m.end()
        return m.group(0)

    def value(self, regex: bool) -> str:
        ch = self.peek()
        if ch == '"' or (regex and ch in "/|"):
            return self.quoted(regex)
        start = self.pos
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "," or c.isspace():
                break
            self.pos += 1
        if self.pos == start:
            raise self.fail("expected a value")
        return self.text[start : self.pos]

    def condition(self) -> Condition:
        path = [self.field()]
        while self.peek() == ".":
            self.pos += 1
            path.append(self.field())
        self.skip_space()
        m = _OPERATOR.match(self.text, self.pos)
        if not m:
            if self.peek() not in ("", ","):
                raise self.fail("expected an operator (==, != or ~=)")
            return Condition(tuple(path), "", "")
        op = m.group(0)
        self.pos = m.end()
        value = self.value(op == "~=")
        regex = None
        if op == "~=":
            try:
                regex = re.compile(value)
            except re.error as e:
                raise self.fail(f"bad regular expression {value!r}: {e}") from None
        return Condition(tuple(path), op, value, regex)

    def parse(self) -> list[Condition]:
        if not self.text:
            return []  # containerd: the empty filter matches everything
        out = [self.condition()]
        while True:
            ch = self.peek()
            if ch == "":
                return out
            if ch != ",":
                raise self.fail(f"unexpected {ch!r}")
            self.pos += 1
            out.append(self.condition())


def parse_filter(text: str) -> list[Condition]:
    """One filter string: conditions joined by ``,`` (all must hold)."""
    return _Parser(text).parse()


def matcher(filters: Iterable[str]) -> Matcher:
    """A predicate over getters: true if any filter matches (all, when there is none)."""
    parsed = [parse_filter(f) for f in filters]
    if not parsed:
        return lambda get: True
    return lambda get: any(all(c.matches(get) for c in conds) for conds in parsed)


def map_field(m: Mapping[str, str], path: list[str]) -> str | None:
    """A ``labels.<key>`` style lookup: the rest of the path, joined with dots, as the key."""
    if not path:
        return None
    return m.get(".".join(path))
