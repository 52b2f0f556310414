"""The shape of runc's ``events --stats`` data (runc types/events.go).

Fields runc marks ``omitempty`` are left out when zero, so that the JSON
matches what runc prints for the same cgroup.
"""

from __future__ import annotations

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
