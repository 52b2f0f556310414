"""The shape of runc's ``events --stats`` data (runc types/events.go).

Fields runc marks ``omitempty`` are left out when zero, so that the JSON
matches what runc prints for the same cgroup.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def empty() -> dict[str, Any]:
    return {
        "cpu": {"usage": {"kernel": 0, "user": 0}, "throttling": {}},
        "cpuset": {},
        "memory": {
            "usage": memory_entry(0, 0, 0, 0),
            "swap": memory_entry(0, 0, 0, 0),
            "kernel": memory_entry(0, 0, 0, 0),
            "kernelTCP": memory_entry(0, 0, 0, 0),
        },
        "pids": {},
        "blkio": {},
        "hugetlb": {},
    }


def nonzero(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v}


def memory_entry(usage: int, max_usage: int, limit: int, failcnt: int) -> dict[str, int]:
    entry = {"limit": limit}
    if usage:
        entry["usage"] = usage
    if max_usage:
        entry["max"] = max_usage
    entry["failcnt"] = failcnt
    return entry


def blkio_entry(major: int, minor: int, op: str, value: int) -> dict[str, Any]:
    return nonzero({"major": major, "minor": minor, "op": op, "value": value})


def expand_list(text: str | None) -> list[int]:
    """``0-3,7`` -> [0, 1, 2, 3, 7]."""
    out: list[int] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            continue
    return out


def hugetlb_sizes(d: str, limit_suffix: str) -> list[str]:
    """The huge page sizes ("2MB", "1GB") a cgroup directory has limit files for.

    ``limit_suffix`` is the limit file's ending: ``limit_in_bytes`` (v1) or
    ``max`` (v2); the reserved-page variants (``hugetlb.2MB.rsvd.*``) are left out.
    """
    try:
        names = os.listdir(d)
    except OSError:
        return []
    prefix, suffix = "hugetlb.", "." + limit_suffix
    sizes = (
        n[len(prefix) : -len(suffix)] for n in names if n.startswith(prefix) and n.endswith(suffix)
    )
    return sorted(s for s in sizes if "." not in s)
