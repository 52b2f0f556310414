"""containerd's identifier rule (its ``identifiers`` package), for every layer.

Namespaces, containers, tasks and exec processes are named by identifiers:
letters and digits in runs separated by single '.', '_' or '-', at most 76
characters. They name files and directories, so the rule is also a path
check. No ``re``: the shim checks ids on its start-up path.
"""

from __future__ import annotations

from dockyard.errors import InvalidArgument

MAX_IDENTIFIER = 76
_SEPARATORS = "._-"


def _alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def is_identifier(value: str) -> bool:
    if not value or len(value) > MAX_IDENTIFIER:
        return False
    if not (_alnum(value[0]) and _alnum(value[-1])):
        return False
    previous_separator = False
    for c in value:
        if c in _SEPARATORS:
            if previous_separator:
                return False
            previous_separator = True
        elif _alnum(c):
            previous_separator = False
        else:
            return False
    return True


def validate_identifier(kind: str, value: str) -> str:
    """``value`` if it is a valid identifier, else InvalidArgument naming ``kind``."""
    if is_identifier(value):
        return value
    if not value:
        raise InvalidArgument(f"{kind}: identifier must not be empty")
    if len(value) > MAX_IDENTIFIER:
        raise InvalidArgument(
            f"{kind} {value[:20]!r}...: identifier is longer than {MAX_IDENTIFIER} characters"
        )
    raise InvalidArgument(
        f"{kind} {value!r}: identifier must be letters and digits separated by '.', '_' or '-'"
    )
