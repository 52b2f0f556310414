"""containerd's update masks over map fields (labels, annotations, extensions).

An update request names the fields to change. For a map field ``labels``:
``labels`` replaces the whole map with the request's, and ``labels.<key>``
sets that one key from the request, or removes it when the request has no
such key. Every store and service applies them through ``update_map``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

V = TypeVar("V")


def update_map(out: dict[str, V], new: Mapping[str, V], path: str, field: str) -> bool:
    """Apply ``path`` to ``out`` if it is about the map ``field``; False if it is not."""
    if path == field:
        out.clear()
        out.update(new)
        return True
    prefix = field + "."
    if path.startswith(prefix):
        key = path[len(prefix) :]
        if key in new:
            out[key] = new[key]
        else:
            out.pop(key, None)
        return True
    return False
