"""containerd's update masks over map fields (labels, annotations, extensions).

An update request names the fields to change. For a map field ``labels``:
``labels`` replaces the whole map with the request's, and ``labels.<key>``
sets that one key from the request, or removes it when the request has no
such key. Every store and service applies them through ``update_map``;
``update_labels`` is the whole update of a record whose only map is its labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from dockyard.errors import InvalidArgument
from dockyard.image.content import validate_labels

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


def update_labels(
    old: Mapping[str, str], new: Mapping[str, str], fieldpaths: list[str], what: str
) -> dict[str, str]:
    """containerd's label update: no paths or ``labels`` replace all of them,
    ``labels.<key>`` sets one (absent or empty: removed); anything else is refused."""
    if not fieldpaths:
        out = dict(new)
    else:
        out = dict(old)
        for path in fieldpaths:
            if not update_map(out, new, path, "labels"):
                raise InvalidArgument(
                    f"{what}: cannot update field {path!r} (labels, labels.<key>)"
                )
    # an empty value removes the label, as in containerd
    out = {k: v for k, v in out.items() if v}
    validate_labels(out)
    return out
